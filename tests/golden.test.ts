// Golden outputs: the TypeScript decoder against an independent PyTorch implementation
// (tools/fixtures/make_fixtures.py) on tiny random models of every supported architecture.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { initBackend, tf } from "../src/tensor/backend.js";
import { loadModel } from "../src/model/load.js";
import { generate } from "../src/model/generate.js";
import { FIXTURE_NAMES, fixtureDir } from "./support/paths.js";

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
