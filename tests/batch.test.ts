// Batched decoding (src/model/batch.ts): replies decoded together give every request the tokens it
// gets alone (different prompt lengths, rows joining mid-way, a stop string, an abort, a JSON
// constraint), free every tensor, keep each reply on the weights its lease holds across a swap,
// and still leave their caches to the prefix cache.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { initBackend, tf } from "../src/tensor/backend.js";
import { loadModel, type LoadedModel } from "../src/model/load.js";
import { resolveModelDir } from "../src/model/resolve.js";
import { generate, streamGenerate, type GenerationChunk, type GenerationResult } from "../src/model/generate.js";
import { DecodeBatcher, PREFILL_CHUNK, type RowOptions } from "../src/model/batch.js";
import { constrainToJson, JsonMatcher, tokenTexts } from "../src/model/json-constraint.js";
import { LoraAdapter } from "../src/lora/adapter.js";
import { saveAdapter } from "../src/lora/peft.js";
import { concurrentReplies, defaultBatchRows, LiveModel } from "../src/runtime/live.js";
import { fixtureDir } from "./support/paths.js";

await initBackend();
const mini = loadModel(resolveModelDir(undefined));
const ask = (content: string) => mini.tokenizer.applyChatTemplate([{ role: "user", content }]);
const vocab = tokenTexts(mini.tokenizer, mini.config.vocabSize);
const schema = { type: "object", properties: { city: { type: "string" }, people: { type: "integer" } }, required: ["city", "people"] };
const jsonOpts = (): RowOptions => ({ maxTokens: 40, temperature: 0, constrain: constrainToJson(vocab, mini.tokenizer.eosTokenIds, JsonMatcher.of(schema)) });

/** Runs one stream to its end, returning its chunks and result; `each` sees every chunk. */
async function drain(it: AsyncGenerator<GenerationChunk, GenerationResult[]>, each?: (n: number) => void): Promise<{ chunks: GenerationChunk[]; result: GenerationResult }> {
  const chunks: GenerationChunk[] = [];
  for (;;) {
    const r = await it.next();
    if (r.done) return { chunks, result: r.value[0]! };
    chunks.push(r.value);
    each?.(chunks.length);
  }
}

test("replies decoded together get the greedy tokens each gets alone", async () => {
  const prompts = [
    ask("Where is the ferry?"),
    ask("Tell me a long story about the town, the river, the bridge and the people who live near the old mill by the water."),
    ask("Hi"),
    ask("Tell me about the town, the river and the bridge."),
    ask("Answer in JSON: which city has the port, and how many people live there?"),
    ask("Write about the harbour and the boats and the ferry"),
  ];
  assert.ok(new Set(prompts.map((p) => p.length)).size >= 5, "prompts of different lengths");
  // a stop string from the middle of row 3's reply alone, so that it ends there
  const [plain3] = await generate(mini, [prompts[3]!], { maxTokens: 24, temperature: 0 });
  const stop = plain3!.text.slice(Math.floor(plain3!.text.length / 2)).trim().slice(0, 4);
  assert.ok(stop.length >= 2, `a stop string from ${JSON.stringify(plain3!.text)}`);
  const options: (() => RowOptions)[] = [
    () => ({ maxTokens: 24, temperature: 0 }),
    () => ({ maxTokens: 32, temperature: 0 }),
    () => ({ maxTokens: 16, temperature: 0 }),
    () => ({ maxTokens: 24, temperature: 0, stopStrings: [stop] }),
    jsonOpts,
    () => ({ maxTokens: 24, temperature: 0 }),
  ];
  const alone: { chunks: GenerationChunk[]; result: GenerationResult }[] = [];
  for (const [i, p] of prompts.entries()) alone.push(await drain(streamGenerate(mini, [p], options[i]!())));
  assert.equal(alone[3]!.result.finishReason, "stop", "the stop string ends row 3 alone");
  assert.ok(alone[3]!.result.tokens.length < 24);
  assert.ok(alone[4]!.result.text.startsWith("{") && JsonMatcher.of(schema).feed(alone[4]!.result.text), `row 4 alone follows the schema: ${alone[4]!.result.text}`);

  const before = tf.memory().numTensors;
  const batcher = new DecodeBatcher(mini, 8);
  const abort = new AbortController();
  const runs = new Map<number, Promise<{ chunks: GenerationChunk[]; result: GenerationResult }>>();
  const run = (i: number, extra: RowOptions = {}, each?: (n: number) => void) => runs.set(i, drain(batcher.generate(prompts[i]!, { ...options[i]!(), ...extra }), each));
  // rows 0, 1 and 5 start together; 2, 3 and 4 join while row 1 decodes; 5 is aborted after 6 chunks
  run(0);
  run(1, {}, (n) => {
    if (n === 3) run(2);
    if (n === 5) run(3);
    if (n === 7) run(4);
  });
  run(5, { signal: abort.signal }, (n) => {
    if (n === 6) abort.abort();
  });
  await runs.get(1);
  assert.equal(runs.size, 6, "every row started");
  const together = new Map<number, { chunks: GenerationChunk[]; result: GenerationResult }>();
  for (const [i, r] of runs) together.set(i, await r);

  for (const i of [0, 1, 2, 3, 4]) {
    assert.deepEqual(together.get(i)!.result.tokens, alone[i]!.result.tokens, `row ${i}: the same tokens as alone`);
    assert.equal(together.get(i)!.result.text, alone[i]!.result.text, `row ${i}: the same text`);
    assert.equal(together.get(i)!.result.finishReason, alone[i]!.result.finishReason, `row ${i}: the same finish`);
    assert.equal(together.get(i)!.chunks.map((c) => c.text).join(""), together.get(i)!.result.text, `row ${i}: its chunks join to its text`);
  }
  const aborted = together.get(5)!.result;
  assert.equal(aborted.finishReason, "abort");
  assert.ok(aborted.tokens.length >= 6 && aborted.tokens.length < alone[5]!.result.tokens.length, `aborted after ${aborted.tokens.length} tokens`);
  assert.deepEqual(aborted.tokens, alone[5]!.result.tokens.slice(0, aborted.tokens.length), "the aborted row's tokens are the start of its reply alone");
  assert.ok(batcher.stats.widest >= 3, `rows were decoded together (widest batch ${batcher.stats.widest})`);
  assert.ok(batcher.stats.rowSteps > batcher.stats.steps, "fewer forward passes than rows fed");
  assert.equal(batcher.size, 0);
  assert.equal(tf.memory().numTensors, before, "no tensor is left behind");
});

test("a consumer that stops reading leaves the batch and frees its rows' tensors", async () => {
  const before = tf.memory().numTensors;
  const batcher = new DecodeBatcher(mini, 4);
  const left = batcher.generate(ask("Where is the ferry?"), { maxTokens: 30, temperature: 0 });
  const stays = drain(batcher.generate(ask("Describe the harbour."), { maxTokens: 20, temperature: 0 }));
  for (let i = 0; i < 4; i++) await left.next();
  await left.return([]); // as Runtime.chat does when a client goes away
  const { result } = await stays;
  const [alone] = await generate(mini, [ask("Describe the harbour.")], { maxTokens: 20, temperature: 0 });
  assert.deepEqual(result.tokens, alone!.tokens);
  assert.equal(batcher.size, 0);
  assert.equal(tf.memory().numTensors, before, "no tensor is left behind");
});

test("batched replies leave their caches to the prefix cache, and the next turn continues from one", async () => {
  const live = new LiveModel(mini);
  live.batchRows = 4;
  const first = [ask("Where is the ferry?"), ask("Tell me about the bridge over the river.")];
  const leases = first.map(() => live.acquire());
  const replies = await Promise.all(first.map((p, i) => drain(leases[i]!.generate(p, { maxTokens: 12, temperature: 0 }))));
  for (const l of leases) l.release();
  assert.ok(live.batcher!.stats.widest >= 2, "the two replies were decoded together");
  assert.equal(live.prefixCacheEntries, 2, "each batched reply's cache is kept");
  // the next turn of the first chat: its prompt starts with what the first reply's cache holds
  const next = mini.tokenizer.applyChatTemplate([
    { role: "user", content: "Where is the ferry?" },
    { role: "assistant", content: replies[0]!.result.text },
    { role: "user", content: "And when does it leave?" },
  ]);
  const hits = live.prefixStats.hits;
  const lease = live.acquire();
  const { result } = await drain(lease.generate(next, { maxTokens: 12, temperature: 0 }));
  lease.release();
  assert.equal(live.prefixStats.hits, hits + 1, "the next turn continued from a kept cache");
  const [alone] = await generate(mini, [next], { maxTokens: 12, temperature: 0 });
  assert.deepEqual(result.tokens, alone!.tokens, "and answers as a full prefill does");
  live.dispose();
});

test("a swap during a batched decode: each reply finishes on the version its lease holds, never batched with the other's", async () => {
  const model = loadModel(fixtureDir("llama"));
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-batch-"));
  const settings = { r: 4, alpha: 8, dropout: 0, useRslora: false, targetModules: ["q_proj", "v_proj", "down_proj"] as ("q_proj" | "v_proj" | "down_proj")[] };
  for (const [name, seed] of [["v0001", 1], ["v0002", 2]] as const) {
    const a = LoraAdapter.create(model.config, settings, model.fingerprint, seed);
    for (const { B } of a.modules.values()) B.assign(tf.randomNormal(B.shape, 0, 0.3, "float32", seed * 100));
    await saveAdapter(path.join(dir, name), a, model.dir);
    a.dispose();
  }
  const prompts = [
    model.tokenizer.applyChatTemplate([{ role: "user", content: "the quick brown fox" }]),
    model.tokenizer.applyChatTemplate([{ role: "user", content: "jumps over the lazy dog again and again" }]),
  ];
  const aloneOn = async (version: string) => {
    const probe = new LiveModel(model);
    probe.swapTo(version, path.join(dir, version));
    const lease = probe.acquire();
    const out = await generate(model, prompts, { maxTokens: 12, temperature: 0, adapter: lease.adapter });
    lease.release();
    probe.dispose();
    return out.map((r) => r.tokens);
  };
  const onV1 = await aloneOn("v0001");
  const onV2 = await aloneOn("v0002");
  assert.notDeepEqual(onV1, onV2, "the two versions must answer differently for the test to mean anything");

  const live = new LiveModel(model);
  live.batchRows = 4;
  live.swapTo("v0001", path.join(dir, "v0001"));
  const v1 = [live.acquire(), live.acquire()];
  const oldBatcher = () => live.batcher!;
  let later: Promise<{ chunks: GenerationChunk[]; result: GenerationResult }[]> | undefined;
  let v2: ReturnType<LiveModel["acquire"]>[] = [];
  let batcherV1: DecodeBatcher | undefined;
  const early = Promise.all(
    prompts.map((p, i) =>
      drain(v1[i]!.generate(p, { maxTokens: 12, temperature: 0 }), (n) => {
        if (i === 0 && n === 3) {
          // swapped while both v0001 replies decode: the next two replies run on v0002
          batcherV1 = oldBatcher();
          live.swapTo("v0002", path.join(dir, "v0002"));
          v2 = [live.acquire(), live.acquire()];
          later = Promise.all(prompts.map((q, j) => drain(v2[j]!.generate(q, { maxTokens: 12, temperature: 0 }))));
        }
      }),
    ),
  );
  const got1 = await early;
  const got2 = await later!;
  assert.deepEqual(got1.map((g) => g.result.tokens), onV1, "the replies started on v0001 finished on it");
  assert.deepEqual(got2.map((g) => g.result.tokens), onV2, "the replies after the swap ran on v0002");
  assert.notEqual(live.batcher, batcherV1, "v0002 has its own batcher");
  assert.equal(batcherV1!.stats.widest, 2, "v0001's replies were decoded together, and only they");
  assert.equal(live.batcher!.stats.widest, 2);
  assert.deepEqual(live.resident.sort(), ["v0001", "v0002"], "v0001 stays resident while its leases are held");
  for (const l of [...v1, ...v2]) l.release();
  assert.deepEqual(live.resident, ["v0002"]);
  live.dispose();
  model.dispose();
  rmSync(dir, { recursive: true });
});

test("a long prompt joins in chunks: the replies already streaming decode between them, and it gets the tokens it gets alone", async () => {
  const chunk = 64; // (PREFILL_CHUNK is 256: kiln-mini's 512 positions hold too few of those)
  assert.equal(new DecodeBatcher(mini, 2).prefillChunk, PREFILL_CHUNK);
  const long = ask(`Tell me everything about ${Array.from({ length: 25 }, (_, i) => `the ${["ferry", "harbour", "mill", "bridge", "river"][i % 5]} of town ${i}`).join(", ")}.`);
  assert.ok(long.length > 2 * chunk && long.length + 8 <= mini.config.maxPositions, `a prompt of more than two chunks (${long.length} tokens)`);
  const [alone] = await generate(mini, [long], { maxTokens: 8, temperature: 0 });
  const batcher = new DecodeBatcher(mini, 2, undefined, chunk);
  const calls: string[] = [];
  const forward = mini.decoder.forward;
  mini.decoder.forward = function (input, opts) {
    calls.push(input.ids.length === 1 && input.ids[0]!.length > 1 ? `prefill ${input.ids[0]!.length}` : `step ${input.ids.length}`);
    return forward.call(this, input, opts);
  };
  try {
    let started!: () => void;
    const streaming = new Promise<void>((resolve) => (started = resolve));
    const a = drain(batcher.generate(ask("Where is the ferry?"), { maxTokens: 60, temperature: 0 }), (n) => n === 2 && started());
    await streaming;
    const b = await drain(batcher.generate(long, { maxTokens: 8, temperature: 0 }));
    await a;
    assert.deepEqual(b.result.tokens, alone!.tokens, "the same greedy reply as alone");
  } finally {
    mini.decoder.forward = forward;
  }
  const chunks = calls.map((c, i) => [c, i] as const).filter(([c]) => c.startsWith("prefill ")).slice(1); // the long prompt's (the first is the short one's)
  const parts = Math.ceil(long.length / chunk);
  assert.deepEqual(chunks.map(([c]) => c), [...Array(parts - 1).fill(`prefill ${chunk}`), `prefill ${long.length - (parts - 1) * chunk}`]);
  const steps = calls.slice(chunks[0]![1], chunks.at(-1)![1]).filter((c) => c.startsWith("step"));
  assert.ok(steps.length >= 2, `the streaming reply decoded between the chunks: ${calls.join(", ")}`);
});

test("kiln serve batches by default on a GPU backend only: there a step costs about the same for 32 rows as for one", () => {
  assert.equal(defaultBatchRows({ gpu: true }), 16);
  assert.equal(defaultBatchRows({ gpu: false }), 1, "on two CPU cores 4 rows cost 2-2.5x one");
});

test("kiln serve runs one reply at a time where a model on it has sliding-window layers: those decode alone, whatever --batch says", () => {
  const model = (slidingWindows: (number | null)[]) => ({ config: { slidingWindows } }) as unknown as LoadedModel;
  assert.equal(concurrentReplies(16, [model([null, null])]), 16);
  assert.equal(concurrentReplies(16, [model([null, null]), model([4096, 4096])]), 1, "16 replies each decoded alone at once: 16 full steps per token");
  assert.equal(concurrentReplies(1, [model([null])]), 1);
});
