// The GGUF export checked in llama.cpp itself (a tool, not CI: node-llama-cpp is not a dependency).
// It writes a small Llama-architecture model as a base GGUF (as convert_hf_to_gguf.py would: q/k
// rows permuted, tokenizer in the metadata), an adapter for it the way `kiln versions export
// --format gguf` writes one, loads both with node-llama-cpp, and compares llama.cpp's next-token
// probabilities with kiln's, for the base alone and with the adapter. A wrong tensor name, shape,
// orientation, scale or q/k permutation shows as a large difference with the adapter only.
//
//   npm i --no-save node-llama-cpp@3.21.1     (its prebuilt llama.cpp comes from the npm registry)
//   npm run build && node dist/tools/gguf_check.js [model dir, default tests/fixtures/models/llama]
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { initBackend, tf } from "../src/tensor/backend.js";
import { loadModel, weightFiles, type LoadedModel } from "../src/model/load.js";
import { readHeader, readTensors } from "../src/model/safetensors.js";
import { PACKAGE_ROOT } from "../src/model/resolve.js";
import { LoraAdapter, LORA_TARGETS } from "../src/lora/adapter.js";
import { saveAdapter } from "../src/lora/peft.js";
import { exportAdapter } from "../src/lora/export.js";
import { encodeGguf, ggufArchitecture, GGUF_TENSORS, permuteRopeRows, type GgufTensor, type GgufValue } from "../src/lora/gguf.js";

/** The base model as a GGUF llama.cpp loads: llama.cpp's tensor names and hyperparameter keys. */
function baseGguf(model: LoadedModel): Buffer {
  const c = model.config;
  const arch = ggufArchitecture(c);
  if (arch.name !== "llama") throw new Error(`this check writes Llama-architecture bases only, not ${c.architecture}`);
  const tensors: GgufTensor[] = [];
  const global: Record<string, string> = { "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight" };
  for (const file of new Set(weightFiles(model.dir).values())) {
    for (const [name, { shape, data }] of readTensors(readHeader(file))) {
      if (name === "lm_head.weight" && c.tieWordEmbeddings) continue;
      const m = /^model\.layers\.(\d+)\.(?:self_attn|mlp)?\.?(\w+)\.weight$/.exec(name);
      let gguf = global[name];
      let values = data;
      if (m) {
        const [, layer, module] = m;
        const norms: Record<string, string> = { input_layernorm: "attn_norm", post_attention_layernorm: "ffn_norm" };
        const short = norms[module!] ?? GGUF_TENSORS[module as (typeof LORA_TARGETS)[number]];
        if (!short) throw new Error(`no llama.cpp name for ${name}`);
        gguf = `blk.${layer}.${short}.weight`;
        if (module === "q_proj" || module === "k_proj") values = permuteRopeRows(data, shape[0]!, shape[1]!, module === "q_proj" ? c.numHeads : c.numKvHeads);
      }
      if (!gguf) throw new Error(`no llama.cpp name for ${name}`);
      tensors.push({ name: gguf, shape, data: values });
    }
  }
  // the tokenizer as gguf-py writes a byte-level BPE one (gpt2): tokens by id, types, merges
  const tok = JSON.parse(readFileSync(path.join(model.dir, "tokenizer.json"), "utf8")) as {
    model: { vocab: Record<string, number>; merges: (string | [string, string])[] };
    added_tokens?: { id: number; content: string }[];
  };
  const tokens: string[] = Array(c.vocabSize).fill("");
  const types: number[] = Array(c.vocabSize).fill(1); // NORMAL
  for (const [text, id] of Object.entries(tok.model.vocab)) tokens[id] = text;
  for (const a of tok.added_tokens ?? []) [tokens[a.id], types[a.id]] = [a.content, 3]; // CONTROL
  tokens.forEach((t, i) => !t && ([tokens[i], types[i]] = [`[PAD${i}]`, 5])); // UNUSED
  const u32 = (value: number): GgufValue => ({ type: "u32", value });
  const f32 = (value: number): GgufValue => ({ type: "f32", value });
  const metadata: [string, GgufValue][] = [
    ["general.architecture", { type: "string", value: "llama" }],
    ["general.type", { type: "string", value: "model" }],
    ["general.name", { type: "string", value: path.basename(model.dir) }],
    ["llama.context_length", u32(c.maxPositions)],
    ["llama.embedding_length", u32(c.hiddenSize)],
    ["llama.block_count", u32(c.numLayers)],
    ["llama.feed_forward_length", u32(c.intermediateSize)],
    ["llama.attention.head_count", u32(c.numHeads)],
    ["llama.attention.head_count_kv", u32(c.numKvHeads)],
    ["llama.attention.key_length", u32(c.headDim)],
    ["llama.attention.value_length", u32(c.headDim)],
    ["llama.rope.dimension_count", u32(c.headDim)],
    ["llama.rope.freq_base", f32(c.ropeTheta)],
    ["llama.attention.layer_norm_rms_epsilon", f32(c.rmsNormEps)],
    ["llama.vocab_size", u32(c.vocabSize)],
    ["general.file_type", u32(0)],
    ["tokenizer.ggml.model", { type: "string", value: "gpt2" }],
    ["tokenizer.ggml.pre", { type: "string", value: "default" }],
    ["tokenizer.ggml.tokens", { type: "string[]", value: tokens }],
    ["tokenizer.ggml.token_type", { type: "i32[]", value: types }],
    ["tokenizer.ggml.merges", { type: "string[]", value: tok.model.merges.map((m) => (Array.isArray(m) ? m.join(" ") : m)) }],
    ["tokenizer.ggml.eos_token_id", u32(model.eosTokenIds[0] ?? 0)],
  ];
  return encodeGguf(metadata, tensors, "F32");
}

function softmax(logits: Float32Array): Float64Array {
  const max = Math.max(...logits);
  const e = Float64Array.from(logits, (x) => Math.exp(x - max));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / sum);
}

/** kiln's next-token probabilities after `ids`. */
async function kilnNext(model: LoadedModel, ids: number[], adapter?: LoraAdapter): Promise<Float64Array> {
  const out = tf.tidy(() => model.decoder.forward({ ids: [ids] }, { adapter }));
  const all = (await out.data()) as Float32Array;
  out.dispose();
  return softmax(all.subarray((ids.length - 1) * model.config.vocabSize));
}

interface NodeLlamaCpp {
  getLlama(o: { gpu: false; build: "never" }): Promise<{
    loadModel(o: { modelPath: string }): Promise<{
      createContext(o: { contextSize: number; lora?: { adapters: { filePath: string }[] } }): Promise<{
        getSequence(): { evaluateWithMetadata(tokens: number[], m: { probabilities: true }, o: { temperature: 0 }): AsyncGenerator<{ probabilities: Map<number, number> }> };
        dispose(): Promise<void>;
      }>;
      dispose(): Promise<void>;
    }>;
  }>;
}

/** llama.cpp's next-token probabilities after `ids`. */
async function llamaNext(llama: Awaited<ReturnType<NodeLlamaCpp["getLlama"]>>, modelPath: string, ids: number[], vocab: number, lora?: string): Promise<Float64Array> {
  const m = await llama.loadModel({ modelPath });
  const ctx = await m.createContext({ contextSize: 64, ...(lora ? { lora: { adapters: [{ filePath: lora }] } } : {}) });
  try {
    const first = await ctx.getSequence().evaluateWithMetadata(ids, { probabilities: true }, { temperature: 0 }).next();
    const p = new Float64Array(vocab);
    for (const [token, prob] of (first.value as { probabilities: Map<number, number> }).probabilities) p[token] = prob;
    return p;
  } finally {
    await ctx.dispose();
    await m.dispose();
  }
}

const maxDiff = (a: Float64Array, b: Float64Array) => a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i]!)), 0);

await initBackend();
const dir = path.resolve(process.argv[2] ?? path.join(PACKAGE_ROOT, "tests", "fixtures", "models", "llama"));
const spec = process.env.NODE_LLAMA_CPP ?? "node-llama-cpp";
const { getLlama } = (await import(spec).catch((err: Error) => {
  throw new Error(`${spec} is not installed (npm i --no-save node-llama-cpp@3.21.1, or NODE_LLAMA_CPP=<its folder>): ${err.message}`);
})) as NodeLlamaCpp;
const model = loadModel(dir);
const work = mkdtempSync(path.join(os.tmpdir(), "kiln-gguf-check-"));
try {
  const adapter = LoraAdapter.create(model.config, { r: 4, alpha: 8, dropout: 0, targetModules: [...LORA_TARGETS], useRslora: true }, model.fingerprint, 1);
  for (const [i, { B }] of [...adapter.modules.values()].entries()) B.assign(tf.randomNormal(B.shape, 0, 0.2, "float32", 100 + i));
  await saveAdapter(path.join(work, "v0001"), adapter, model.dir);
  await exportAdapter({ adapterDir: path.join(work, "v0001"), model, name: "check" }, path.join(work, "adapter.gguf"), { format: "gguf" });
  writeFileSync(path.join(work, "base.gguf"), baseGguf(model));

  const llama = await getLlama({ gpu: false, build: "never" });
  const ids = [5, 80, 200, 17, 33, 260, 9, 101, 44, 120];
  const base = [await kilnNext(model, ids), await llamaNext(llama, path.join(work, "base.gguf"), ids, model.config.vocabSize)] as const;
  const tuned = [await kilnNext(model, ids, adapter), await llamaNext(llama, path.join(work, "base.gguf"), ids, model.config.vocabSize, path.join(work, "adapter.gguf"))] as const;
  const report = {
    model: dir,
    baseKilnVsLlamaCpp: maxDiff(...base),
    adapterKilnVsLlamaCpp: maxDiff(...tuned),
    adapterMovesKiln: maxDiff(base[0], tuned[0]),
    adapterMovesLlamaCpp: maxDiff(base[1], tuned[1]),
  };
  process.stdout.write(JSON.stringify(report, null, 2) + "\n");
  adapter.dispose();
  // agreement well inside what the adapter changes, on the base and with the adapter
  const ok = report.baseKilnVsLlamaCpp < 1e-3 && report.adapterKilnVsLlamaCpp < 1e-3 && report.adapterMovesKiln > 1e-2;
  process.stdout.write(ok ? "llama.cpp reads the GGUF adapter as kiln applies it\n" : "MISMATCH\n");
  process.exitCode = ok ? 0 : 1;
} finally {
  model.dispose();
  rmSync(work, { recursive: true });
}
