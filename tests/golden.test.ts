// Golden outputs: the TypeScript decoder against an independent PyTorch implementation
// (tools/fixtures/make_fixtures.py) on tiny random models of every supported architecture.
import { test } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { initBackend, tf } from "../src/tensor/backend.js";
import { loadModel } from "../src/model/load.js";
import { KVCache } from "../src/model/kv-cache.js";
import { generate } from "../src/model/generate.js";
import { writeSafetensors } from "../src/model/safetensors.js";
import { FIXTURE_NAMES, fixtureDir, repoRoot } from "./support/paths.js";

interface Reference {
  tokenizer_check: { text: string; ids: number[] };
  logits_check: { input_ids: number[][]; logits: number[][][] };
  greedy: { prompt_ids: number[]; max_new_tokens: number; output_ids: number[] };
  long_check: { input_ids: number[][]; last_logits: number[] };
}

function maxAbsDiff(a: number[], b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

await initBackend();

for (const name of FIXTURE_NAMES) {
  const dir = fixtureDir(name);
  const ref: Reference = JSON.parse(readFileSync(path.join(dir, "reference.json"), "utf8"));

  // Reads are asynchronous so these run on every backend (webgpu reads synchronously only in browsers).
  test(`${name}: full-sequence logits match PyTorch within 1e-4`, async () => {
    const model = loadModel(dir);
    try {
      const logits = tf.tidy(() => model.decoder.forward({ ids: ref.logits_check.input_ids }));
      const got = await logits.data();
      logits.dispose();
      const diff = maxAbsDiff(ref.logits_check.logits.flat(2), got);
      assert.ok(diff < 1e-4, `max |diff| ${diff}`);
    } finally {
      model.dispose();
    }
  });

  test(`${name}: last-position logits of a 60-token sequence (RoPE far out) match`, async () => {
    const model = loadModel(dir);
    try {
      const ids = ref.long_check.input_ids;
      const logits = tf.tidy(() => model.decoder.forward({ ids }, { logitsFrom: ids[0]!.length - 1 }));
      const diff = maxAbsDiff(ref.long_check.last_logits, await logits.data());
      logits.dispose();
      assert.ok(diff < 1e-4, `max |diff| ${diff}`);
    } finally {
      model.dispose();
    }
  });

  test(`${name}: greedy continuation with the KV cache equals PyTorch's`, async () => {
    const model = loadModel(dir);
    try {
      const [out] = await generate(model, [ref.greedy.prompt_ids], {
        maxTokens: ref.greedy.max_new_tokens,
        temperature: 0,
        stopTokenIds: [],
      });
      // The reference never stops early, so compare the tokens it produced up to any eos we honour.
      const expected = ref.greedy.output_ids;
      const cut = expected.findIndex((t) => model.eosTokenIds.includes(t));
      assert.deepEqual(out!.tokens, cut < 0 ? expected : expected.slice(0, cut));
    } finally {
      model.dispose();
    }
  });

  test(`${name}: tokenizer ids equal the Python byte-level BPE`, () => {
    const model = loadModel(dir);
    try {
      assert.deepEqual(model.tokenizer.encode(ref.tokenizer_check.text), ref.tokenizer_check.ids);
      assert.equal(model.tokenizer.decode(ref.tokenizer_check.ids, false), ref.tokenizer_check.text);
    } finally {
      model.dispose();
    }
  });
}

// Must equal CONFIG in tools/fixtures/make_v5_reference.py, which computed the reference logits.
const V5_CONFIG = {
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  hidden_size: 32,
  intermediate_size: 48,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 8,
  vocab_size: 319,
  rms_norm_eps: 1e-5,
  hidden_act: "silu",
  tie_word_embeddings: false,
  attention_bias: true,
  mlp_bias: true,
  // transformers >= 5: no top-level rope_theta / rope_scaling
  rope_parameters: { rope_type: "llama3", rope_theta: 20000.0, factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 128 },
  dtype: "float32",
};

/** The weights of make_v5_reference.py: tensor j from a 32-bit LCG seeded with j + 1, stored as float32. */
function v5Weights(): Map<string, { shape: number[]; data: Float32Array }> {
  const c = V5_CONFIG;
  const qOut = c.num_attention_heads * c.head_dim;
  const kvOut = c.num_key_value_heads * c.head_dim;
  const outIn: Record<string, [number, number]> = {
    "self_attn.q_proj": [qOut, c.hidden_size],
    "self_attn.k_proj": [kvOut, c.hidden_size],
    "self_attn.v_proj": [kvOut, c.hidden_size],
    "self_attn.o_proj": [c.hidden_size, qOut],
    "mlp.gate_proj": [c.intermediate_size, c.hidden_size],
    "mlp.up_proj": [c.intermediate_size, c.hidden_size],
    "mlp.down_proj": [c.hidden_size, c.intermediate_size],
  };
  const shapes: [string, number[]][] = [["model.embed_tokens.weight", [c.vocab_size, c.hidden_size]]];
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    shapes.push([`${p}input_layernorm.weight`, [c.hidden_size]], [`${p}post_attention_layernorm.weight`, [c.hidden_size]]);
    for (const [m, [out, inp]] of Object.entries(outIn)) shapes.push([`${p}${m}.weight`, [out, inp]], [`${p}${m}.bias`, [out]]);
  }
  shapes.push(["model.norm.weight", [c.hidden_size]], ["lm_head.weight", [c.vocab_size, c.hidden_size]]);
  return new Map(
    shapes.map(([name, shape], j) => {
      const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
      let state = j + 1;
      for (let i = 0; i < data.length; i++) {
        state = (Math.imul(state, 1664525) + 1013904223) >>> 0; // the 32-bit LCG, exactly as in Python
        const u = (state / 2 ** 32) * 2 - 1;
        data[i] = name.includes("norm") ? 1 + 0.2 * u : name.endsWith(".bias") ? 0.1 * u : 0.3 * u;
      }
      return [name, { shape, data }];
    }),
  );
}

test("a transformers 5 config (rope_parameters) with attention_bias and mlp_bias matches PyTorch", async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-v5-"));
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) copyFileSync(path.join(fixtureDir("llama"), f), path.join(dir, f));
  writeFileSync(path.join(dir, "config.json"), JSON.stringify(V5_CONFIG));
  writeSafetensors(path.join(dir, "model.safetensors"), v5Weights());
  const ref: { input_ids: number[][]; last_logits: number[][] } = JSON.parse(readFileSync(path.join(repoRoot(), "tests", "fixtures", "v5-bias-reference.json"), "utf8"));
  const model = loadModel(dir);
  try {
    assert.equal(model.config.ropeTheta, 20000);
    for (const [k, ids] of ref.input_ids.entries()) {
      const logits = tf.tidy(() => model.decoder.forward({ ids: [ids] }, { logitsFrom: ids.length - 1 }));
      const diff = maxAbsDiff(ref.last_logits[k]!, await logits.data());
      logits.dispose();
      assert.ok(diff < 1e-4, `sequence ${k}: max |diff| ${diff}`);
    }
  } finally {
    model.dispose();
    rmSync(dir, { recursive: true });
  }
});

// tools/fixtures/make_window_reference.py: models whose config.json leaves head_dim to the
// architecture's default or turns sliding-window attention on for some layers, with the logits a
// float64 PyTorch implementation of transformers' rules gives on 20 tokens, past every window.
interface WindowReference {
  input_ids: number[][];
  attention_mask: number[][];
  check_positions: number[];
  models: { name: string; config: Record<string, unknown>; tensors: [string, number[]][]; windows: (number | null)[]; logits: number[][][] }[];
}
const windowRef: WindowReference = JSON.parse(readFileSync(path.join(repoRoot(), "tests", "fixtures", "window-reference.json"), "utf8"));

/** make_window_reference.py's weight_values: tensor j from a 32-bit LCG seeded with j + 1, stored as float32. */
function windowWeights(tensors: [string, number[]][]): Map<string, { shape: number[]; data: Float32Array }> {
  return new Map(
    tensors.map(([name, shape], j) => {
      const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
      let state = j + 1;
      for (let i = 0; i < data.length; i++) {
        state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
        const u = (state / 2 ** 32) * 2 - 1;
        data[i] = name.includes("norm") ? 1 + 0.2 * u : name.endsWith(".bias") ? 0.1 * u : name === "model.embed_tokens.weight" ? 0.5 * u : (1.5 * u) / Math.sqrt(shape[1]!);
      }
      return [name, { shape, data }];
    }),
  );
}

/** The reference logits at the checked positions against kiln's [B, T, V] logits. */
function windowDiff(ref: number[][][], got: Float32Array, T: number, V: number, positions: number[]): number {
  let m = 0;
  for (const [b, row] of ref.entries()) {
    for (const [k, t] of positions.entries()) {
      const at = (b * T + t) * V;
      m = Math.max(m, maxAbsDiff(row[k]!, got.subarray(at, at + V)));
    }
  }
  return m;
}

for (const m of windowRef.models) {
  test(`${m.name}: config defaults and per-layer sliding windows match PyTorch past the window, in one pass and through the KV cache`, async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-window-"));
    for (const f of ["tokenizer.json", "tokenizer_config.json"]) copyFileSync(path.join(fixtureDir("llama"), f), path.join(dir, f));
    writeFileSync(path.join(dir, "config.json"), JSON.stringify(m.config));
    writeSafetensors(path.join(dir, "model.safetensors"), windowWeights(m.tensors));
    const model = loadModel(dir);
    try {
      assert.deepEqual(model.config.slidingWindows, m.windows);
      const { input_ids: ids, attention_mask: mask, check_positions: positions } = windowRef;
      const T = ids[0]!.length;
      const V = model.config.vocabSize;
      const full = tf.tidy(() => model.decoder.forward({ ids, mask }));
      const oneShot = windowDiff(m.logits, (await full.data()) as Float32Array, T, V, positions);
      full.dispose();
      assert.ok(oneShot < 1e-4, `one pass: max |diff| ${oneShot}`);

      // The same batch as a 9-token prefill, a 3-token chunk and then one token at a time: the window must count
      // the cached keys too. Each step's logits are the rows' logits at that slot.
      const cache = new KVCache(ids.length);
      const steps = new Float32Array(ids.length * T * V); // [B, T, V]
      const prefill = 9;
      try {
        for (let from = 0; from < T; ) {
          const to = from === 0 ? prefill : from === prefill ? from + 3 : from + 1; // one 3-token chunk after the window has slid
          const out = tf.tidy(() => model.decoder.forward({ ids: ids.map((r) => r.slice(from, to)), mask: mask.map((r) => r.slice(from, to)) }, { cache }));
          const data = (await out.data()) as Float32Array; // [B, to - from, V]
          out.dispose();
          for (let b = 0; b < ids.length; b++) steps.set(data.subarray(b * (to - from) * V, (b + 1) * (to - from) * V), (b * T + from) * V);
          from = to;
        }
        // Compacted, sliding layers keep only what a next query could see; full layers every slot.
        cache.compact(m.windows);
        const kept = Array.from({ length: cache.layers }, (_, l) => cache.held(l));
        assert.deepEqual(kept, m.windows.map((w) => (w === null ? T : w - 1)));
      } finally {
        cache.dispose();
      }
      const cached = windowDiff(m.logits, steps, T, V, positions);
      assert.ok(cached < 1e-4, `through the cache: max |diff| ${cached}`);
    } finally {
      model.dispose();
      rmSync(dir, { recursive: true });
    }
  });
}
