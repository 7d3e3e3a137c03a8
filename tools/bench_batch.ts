// `node dist/tools/bench_batch.js [--only mini|135m] [--context 300] [--steps 16] [--batches 1,2,4]
// [--profile] [--bake-shape 1,32,16] [--serving] [--submit-batches 15,64,256]`: what one decode step (one new token per row on a KV cache of --context tokens)
// costs at each batch size, on the embedded kiln-mini and on a random SmolLM2-135M-shaped model;
// --profile adds the kernels one batch-1 step runs and their summed time (where the backend
// times kernels), and the kernels of one bake step (--bake-shape rows,tokens,prompt; 1,32,16 by
// default, 2,128,64 is npm run bench's), its time by kernel and its teacher part; --serving adds kiln-mini's serving path (DecodeBatcher: each request prefills,
// joins the batch, samples its own row) with as many requests at once as each batch size, against
// the same requests one at a time; --submit-batches 15,64,256 (webgpu) times a decode step and a
// bake step with tfjs-webgpu submitting every N dispatches, the Ns taking turns. Batched decoding (kiln serve
// --batch) pays off where a batch-B step costs well under B batch-1 steps; paste the table into
// docs/benchmarks.md with the date and machine.
import os from "node:os";
import { backendInfo, initBackend, tf } from "../src/tensor/backend.js";
import { parseConfig, type ModelConfig } from "../src/model/config.js";
import { Decoder } from "../src/model/decoder.js";
import { KVCache } from "../src/model/kv-cache.js";
import { loadModel, type LoadedModel } from "../src/model/load.js";
import { DecodeBatcher } from "../src/model/batch.js";
import { resolveModelDir } from "../src/model/resolve.js";
import { sizeOutputPool } from "../src/tensor/native.js";
import { flagValue, median, oneBakeStep, randomDecoder } from "./bench-support.js";
import { LoraAdapter, type LoraTarget } from "../src/lora/adapter.js";
import { LoraAdam } from "../src/bake/optimizer.js";
import { prepareDecoderForTraining } from "../src/bake/trainer.js";

const only = flagValue("--only");
const context = Number(flagValue("--context") ?? 300);
const steps = Number(flagValue("--steps") ?? 24);
// batch 1 is always measured: every other size is reported against it
const BATCHES = [...new Set([1, ...(flagValue("--batches") ?? "1,2,4").split(",").map(Number)])].sort((a, b) => a - b);
if (!BATCHES.every((B) => Number.isInteger(B) && B >= 1)) throw new Error(`--batches takes whole numbers of rows, at least 1 (got ${flagValue("--batches")})`);

function smolShape(): ModelConfig {
  // SmolLM2-135M's shape, as tools/bench.ts builds it
  return parseConfig({
    architectures: ["LlamaForCausalLM"],
    hidden_size: 576,
    intermediate_size: 1536,
    num_hidden_layers: 30,
    num_attention_heads: 9,
    num_key_value_heads: 3,
    head_dim: 64,
    vocab_size: 49152,
    tie_word_embeddings: true,
    max_position_embeddings: 2048,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
  });
}



/**
 * ms of one decode step at each batch size, after a prefill of `context` tokens per row. The
 * batch sizes take turns step by step (the machine is shared: load comes and goes), and both the
 * median and the fastest step are reported (the fastest is the least disturbed by other work).
 */
async function stepMs(decoder: Decoder): Promise<Map<number, { median: number; min: number }>> {
  const vocab = decoder.config.vocabSize;
  let s = 7;
  const runs = BATCHES.map((B) => {
    const ids = Array.from({ length: B }, () => Array.from({ length: context }, () => (s = (s * 1103515245 + 12345) % 2 ** 31) % vocab));
    return { B, ids, cache: new KVCache(B), times: [] as number[] };
  });
  for (const r of runs) {
    const first = tf.tidy(() => decoder.forward({ ids: r.ids }, { cache: r.cache, logitsFrom: context - 1 }));
    await first.data();
    first.dispose();
  }
  for (let i = 0; i <= steps; i++) {
    for (const r of runs) {
      const t0 = performance.now();
      // as generation reads logits: one [B, V] read per step
      // (a token of the row's prompt: past its end, around again, not undefined when --steps exceeds --context)
      const logits = tf.tidy(() => decoder.forward({ ids: r.ids.map((row, b) => [(row[i % context]! + b) % vocab]) }, { cache: r.cache }));
      await logits.data();
      logits.dispose();
      if (i > 0) r.times.push(performance.now() - t0); // the first step warms kernels for this shape
    }
  }
  for (const r of runs) r.cache.dispose();
  return new Map(runs.map((r) => [r.B, { median: median(r.times), min: Math.min(...r.times) }]));
}

/** "name count, ..." for the `n` most frequent names. */
function mostFrequent(names: Iterable<string>, n: number): string {
  const counts = new Map<string, number>();
  for (const name of names) counts.set(name, (counts.get(name) ?? 0) + 1);
  return [...counts].sort((a, b) => b[1] - a[1]).slice(0, n).map(([name, c]) => `${name} ${c}`).join(", ");
}

/** A KV cache holding a prompt of --context tokens, its first step's programs compiled. */
async function filledCache(decoder: Decoder): Promise<KVCache> {
  const cache = new KVCache(1);
  const warm = tf.tidy(() => decoder.forward({ ids: [Array.from({ length: context }, (_, i) => i % decoder.config.vocabSize)] }, { cache, logitsFrom: context - 1 }));
  await warm.data();
  warm.dispose();
  return cache;
}

// --bake-shape B,T,P: the bake step's rows, tokens a row and prompt tokens a row (the rest is the
// reply the KL covers); 2,128,64 is tools/bench.ts's
const bakeShape = (flagValue("--bake-shape") ?? "1,32,16").split(",").map(Number);
if (!(bakeShape.length === 3 && bakeShape.every((n) => Number.isInteger(n) && n >= 1) && bakeShape[2]! < bakeShape[1]!)) {
  throw new Error(`--bake-shape takes rows,tokens,prompt tokens (whole numbers, prompt shorter than tokens; got ${flagValue("--bake-shape")})`);
}
const [BAKE_ROWS, BAKE_TOKENS, BAKE_PROMPT] = bakeShape as [number, number, number];

/** tools/bench.ts's bake step at --bake-shape (by default batch 1, 32 tokens, 16 of them the reply; LoRA r8 on q/k/v/o, Adam). */
function bakeStepOf(decoder: Decoder, name: string): { step: (onTeacherDone?: () => void) => Promise<void>; dispose: () => void } {
  prepareDecoderForTraining(decoder);
  const adapter = LoraAdapter.create(decoder.config, STEP_ADAPTER, name, 3);
  const optimizer = new LoraAdam({ learningRate: 1e-4, clipNorm: 1 });
  const ids = Array.from({ length: BAKE_ROWS }, (_, b) => Array.from({ length: BAKE_TOKENS }, (_, i) => (i * 7919 + b * 104729) % decoder.config.vocabSize));
  return {
    step: (onTeacherDone) => oneBakeStep(decoder, adapter, optimizer, ids, BAKE_PROMPT, { kind: "full" }, onTeacherDone),
    dispose: () => {
      optimizer.dispose();
      adapter.dispose();
    },
  };
}

/**
 * GPU programs `f` dispatches on webgpu (tfjs's and kiln's: every runWebGPUProgram call), where a
 * kernel may dispatch none (Reshape, Identity) or several; "" on other backends.
 */
async function dispatches(f: () => Promise<void>): Promise<string> {
  const gpu = tf.backend() as unknown as { runWebGPUProgram?: (...args: unknown[]) => unknown };
  const run = gpu.runWebGPUProgram;
  if (backendInfo()?.name !== "webgpu" || !run) {
    await f();
    return "";
  }
  const programs: string[] = [];
  gpu.runWebGPUProgram = function (this: unknown, ...args: unknown[]) {
    const p = args[0] as { constructor: { name: string }; shaderKey?: string };
    programs.push(p.constructor.name === "Object" ? (p.shaderKey ?? "kiln") : p.constructor.name);
    return run.apply(this, args);
  };
  try {
    await f();
  } finally {
    gpu.runWebGPUProgram = run;
  }
  return `, ${programs.length} GPU programs dispatched (${mostFrequent(programs, 12)})`;
}

const STEP_ADAPTER = { r: 8, alpha: 16, dropout: 0, targetModules: ["q_proj", "k_proj", "v_proj", "o_proj"] as LoraTarget[], useRslora: false };

/** The GPU programs one batch-1 decode step with an adapter (r8 q/k/v/o) dispatches: how `kiln serve` decodes after a promotion. */
async function adapterStepPrograms(decoder: Decoder): Promise<string> {
  const adapter = LoraAdapter.create(decoder.config, STEP_ADAPTER, "step", 5);
  const cache = new KVCache(1);
  const step = async (token: number) => {
    const logits = tf.tidy(() => decoder.forward({ ids: [[token]] }, { cache, adapter }));
    await logits.data();
    logits.dispose();
  };
  await step(1); // (compiles)
  const counted = await dispatches(() => step(2));
  cache.dispose();
  adapter.dispose();
  return `one batch-1 step with an adapter (r8 q/k/v/o)${counted || ": (GPU programs are counted on webgpu)"}`;
}

/** The kernels one batch-1 decode step runs, their summed time and the step's wall time. */
async function profileStep(decoder: Decoder): Promise<string> {
  const cache = await filledCache(decoder);
  const t0 = performance.now();
  let logits: tf.Tensor | undefined;
  let counted = "";
  const p = await tf.profile(async () => {
    counted = await dispatches(async () => {
      logits = tf.tidy(() => decoder.forward({ ids: [[1]] }, { cache }));
      await logits.data();
    });
  });
  const wall = performance.now() - t0;
  logits?.dispose();
  cache.dispose();
  const top = mostFrequent(p.kernels.map((k) => k.name), 6);
  // (a backend that cannot time its kernels, webgpu without timestamp queries, reports zeros)
  return `one batch-1 step ${p.kernels.length} kernels${counted}, ${await slowestKernels(p.kernels, 8)}, ${wall.toFixed(1)} ms wall under the profiler; most run: ${top}`;
}

/** "name ms (count), ..." for the kernels with the most summed time (where the backend times them). */
async function slowestKernels(kernels: { name: string; kernelTimeMs: number | { error: string } | Promise<number | { error: string }> }[], n: number): Promise<string> {
  const times = await Promise.all(kernels.map((k) => k.kernelTimeMs));
  const byName = new Map<string, { ms: number; count: number }>();
  let total = 0;
  kernels.forEach((k, i) => {
    const t = times[i];
    if (typeof t !== "number" || !(t > 0)) return;
    total += t;
    const e = byName.get(k.name) ?? { ms: 0, count: 0 };
    e.ms += t;
    e.count++;
    byName.set(k.name, e);
  });
  if (total === 0) return "kernel times not available";
  const top = [...byName].sort((a, b) => b[1].ms - a[1].ms).slice(0, n);
  return `${total.toFixed(1)} ms in kernels; most time: ${top.map(([name, e]) => `${name} ${e.ms.toFixed(1)} ms (${e.count})`).join(", ")}`;
}

/** The kernels one bake step (bakeStepOf's) runs, where their time goes, and the step unprofiled: teacher part (to its targets read back) and the rest. */
async function profileBake(decoder: Decoder): Promise<string> {
  const { step, dispose } = bakeStepOf(decoder, "bench");
  await step(); // (the first run of a shape compiles its kernels on a GPU)
  const teacherMs: number[] = [];
  const stepMs: number[] = [];
  for (let i = 0; i < 3; i++) {
    const t0 = performance.now();
    let t1 = t0;
    await step(() => (t1 = performance.now()));
    teacherMs.push(t1 - t0);
    stepMs.push(performance.now() - t0);
  }
  const t0 = performance.now();
  let counted = "";
  const p = await tf.profile(async () => {
    counted = await dispatches(() => step());
  });
  const wall = performance.now() - t0;
  dispose();
  const top = mostFrequent(p.kernels.map((k) => k.name), 8);
  const shape = `B${BAKE_ROWS}, ${BAKE_TOKENS} tokens, ${BAKE_TOKENS - BAKE_PROMPT} reply`;
  return `one bake step (${shape}) ${median(stepMs).toFixed(1)} ms unprofiled (teacher to its targets ${median(teacherMs).toFixed(1)} ms, median of 3); ${p.kernels.length} kernels${counted}, ${wall.toFixed(1)} ms wall under the profiler; ${await slowestKernels(p.kernels, 10)}; most run: ${top}`;
}

/**
 * webgpu only: ms of one batch-1 decode step (cache of --context tokens) and of one bake step
 * (bakeStepOf's) with tfjs-webgpu submitting every N dispatches, each N taking its turn step by
 * step in one process so that load and GPU clocks fall on all of them alike.
 */
async function submitBatchMs(decoder: Decoder, sizes: number[], rounds: number): Promise<Map<number, { decode: number; bake: number }>> {
  const vocab = decoder.config.vocabSize;
  const cache = await filledCache(decoder);
  const bake = bakeStepOf(decoder, "submit");
  const times = new Map(sizes.map((n) => [n, { decode: [] as number[], bake: [] as number[] }]));
  const before = tf.env().get("WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE");
  for (let round = 0; round <= rounds; round++) {
    for (const n of sizes) {
      tf.env().set("WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE", n);
      let t0 = performance.now();
      const logits = tf.tidy(() => decoder.forward({ ids: [[(round * 17 + n) % vocab]] }, { cache }));
      await logits.data();
      logits.dispose();
      const decode = performance.now() - t0;
      t0 = performance.now();
      await bake.step();
      const baked = performance.now() - t0;
      if (round > 0) { // the first round compiles each shape's programs
        times.get(n)!.decode.push(decode);
        times.get(n)!.bake.push(baked);
      }
    }
  }
  tf.env().set("WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE", before);
  bake.dispose();
  cache.dispose();
  return new Map([...times].map(([n, t]) => [n, { decode: median(t.decode), bake: median(t.bake) }]));
}

/**
 * Tokens a second the serving path gives `concurrent` requests at once (sampled, each with its
 * seed, replies up to 48 tokens), and one at a time: the same requests, the same tokens.
 */
async function servingTokensPerSecond(model: LoadedModel, concurrent: number): Promise<{ together: number; alone: number; tokens: number }> {
  const prompts = Array.from({ length: concurrent }, (_, i) => model.tokenizer.encode(`Tell me the news from Hollowby, part ${i + 1}.`));
  const ask = async (batcher: DecodeBatcher, prompt: number[], seed: number) => {
    let n = 0;
    for await (const _chunk of batcher.generate(prompt, { maxTokens: 48, temperature: 0.7, seed })) n++; // a chunk per token
    return n;
  };
  const together = async () => {
    const batcher = new DecodeBatcher(model, concurrent);
    return Promise.all(prompts.map((p, i) => ask(batcher, p, i)));
  };
  await together(); // (the first run of a shape compiles its kernels on a GPU)
  let t0 = performance.now();
  const counts = await together();
  const batched = performance.now() - t0;
  const single = new DecodeBatcher(model, 1);
  t0 = performance.now();
  for (const [i, p] of prompts.entries()) await ask(single, p, i);
  const alone = performance.now() - t0;
  const total = counts.reduce((a, b) => a + b, 0);
  return { together: (total / batched) * 1000, alone: (total / alone) * 1000, tokens: total };
}

const info = await initBackend();
// --submit-batches 15,64,256: the first is the baseline the others are reported against
const submitBatches = flagValue("--submit-batches")?.split(",").map(Number);
if (submitBatches && (info.name !== "webgpu" || !submitBatches.every((n) => Number.isInteger(n) && n >= 1))) {
  throw new Error(`--submit-batches takes whole numbers of dispatches, at least 1, and the webgpu backend (got ${flagValue("--submit-batches")} on ${info.name})`);
}
sizeOutputPool("serve");
const models: { name: string; make: () => Decoder }[] = [
  { name: "kiln-mini", make: () => loadModel(resolveModelDir(undefined)).decoder },
  { name: "SmolLM2-135M shape (random)", make: () => randomDecoder(smolShape()) },
].filter((m) => !only || (only === "mini" ? m.name === "kiln-mini" : m.name.startsWith("SmolLM2")));

console.log(`backend ${backendInfo()?.name}, ${os.cpus().length} cores, load ${os.loadavg().map((l) => l.toFixed(2)).join(" ")}, context ${context}, ${steps} steps`);
console.log(`| model | batch | ms/step (median) | ms/step (fastest) | median vs batch 1 | fastest vs batch 1 |`);
console.log(`|---|---|---|---|---|---|`);
for (const m of models) {
  const decoder = m.make();
  const t = await stepMs(decoder);
  const base = t.get(1)!;
  for (const [B, { median, min }] of t) {
    console.log(`| ${m.name} | ${B} | ${median.toFixed(1)} | ${min.toFixed(1)} | ${(median / base.median).toFixed(2)}x | ${(min / base.min).toFixed(2)}x |`);
  }
  if (process.argv.includes("--profile")) console.log(`${m.name}: ${await profileStep(decoder)}\n${m.name}: ${await adapterStepPrograms(decoder)}\n${m.name}: ${await profileBake(decoder)}`);
  if (submitBatches) {
    const t = await submitBatchMs(decoder, submitBatches, steps);
    const base = t.get(submitBatches[0]!)!;
    console.log(`| ${m.name} | submit every | decode step ms | bake step ms | decode vs ${submitBatches[0]} | bake vs ${submitBatches[0]} |`);
    console.log(`|---|---|---|---|---|---|`);
    for (const [n, r] of t) console.log(`| ${m.name} | ${n} | ${r.decode.toFixed(1)} | ${r.bake.toFixed(1)} | ${(r.decode / base.decode).toFixed(2)}x | ${(r.bake / base.bake).toFixed(2)}x |`);
  }
  if (m.name !== "kiln-mini") decoder.dispose();
}
if (process.argv.includes("--serving")) {
  const mini = loadModel(resolveModelDir(undefined));
  console.log(`| kiln-mini, serving path | requests at once | tokens | tok/s together | tok/s one at a time | together / alone |`);
  console.log(`|---|---|---|---|---|---|`);
  for (const B of BATCHES) {
    const r = await servingTokensPerSecond(mini, B);
    console.log(`| kiln-mini, serving path | ${B} | ${r.tokens} | ${r.together.toFixed(1)} | ${r.alone.toFixed(1)} | ${(r.together / r.alone).toFixed(2)}x |`);
  }
  mini.dispose();
}
console.log(`load after: ${os.loadavg().map((l) => l.toFixed(2)).join(" ")}; backend ${info.name}`);
