// `npm run bench`: kiln's prefill, decode and bake-step speed beside PyTorch's on the same shapes,
// in the same run (the machine is shared and noisy, so only side-by-side ratios mean much).
// Writes nothing; paste the printed table into docs/benchmarks.md with the date and machine.
import { spawnSync } from "node:child_process";
import os from "node:os";
import path from "node:path";
import { backendInfo, initBackend, tf } from "../src/tensor/backend.js";
import { parseConfig, parameterCount, type ModelConfig } from "../src/model/config.js";
import { Decoder } from "../src/model/decoder.js";
import { KVCache } from "../src/model/kv-cache.js";
import { PrefixStore } from "../src/model/prefix-cache.js";
import { LoraAdapter, type LoraTarget } from "../src/lora/adapter.js";
import type { KlMode } from "../src/bake/kl.js";
import { prepareDecoderForTraining } from "../src/bake/trainer.js";
import { LoraAdam } from "../src/bake/optimizer.js";
import { PACKAGE_ROOT } from "../src/model/resolve.js";
import { OPENBLAS_DEFAULTS, sizeOutputPool } from "../src/tensor/native.js";
import { flagValue, median, oneBakeStep, randomDecoder } from "./bench-support.js";

/** OpenBLAS variables the user set before kiln filled in its defaults (those pass to PyTorch too). */
const userOpenblasEnv = new Set(Object.keys(OPENBLAS_DEFAULTS).filter((name) => process.env[name] !== undefined));

interface Shape {
  name: string;
  hidden: number;
  layers: number;
  heads: number;
  kv_heads: number;
  ffn: number;
  vocab: number;
  tied: boolean;
  head_dim: number;
}

const SHAPES: Shape[] = [
  { name: "tiny", hidden: 64, layers: 2, heads: 4, kv_heads: 2, ffn: 176, vocab: 320, tied: true, head_dim: 16 },
  // the embedded default model's shape (models/kiln-mini): what `npm start` and a first agent run on
  { name: "kiln-mini shape", hidden: 256, layers: 6, heads: 8, kv_heads: 4, ffn: 704, vocab: 2048, tied: true, head_dim: 32 },
  { name: "SmolLM2-135M shape", hidden: 576, layers: 30, heads: 9, kv_heads: 3, ffn: 1536, vocab: 49152, tied: true, head_dim: 64 },
];
const PREFILL = 128;
const DECODE = 32;
/** --long-context N: also decode after an N-token prompt on the 135M shape (0: not) */
const longContext = Number(flagValue("--long-context") ?? 2000);
if (!Number.isInteger(longContext) || longContext < 0) throw new Error(`--long-context takes a number of tokens (0: none), got ${flagValue("--long-context")}`);
const LONG_DECODE = 16;
/** --bake-batch N: the bake step's rows (2 by default, issue 7's shape; a bake's own default batchSize is 8) */
const bakeBatch = Number(flagValue("--bake-batch") ?? 2);
if (!Number.isInteger(bakeBatch) || bakeBatch < 1) throw new Error(`--bake-batch takes a number of rows, at least 1, got ${flagValue("--bake-batch")}`);
const BAKE = { batch: bakeBatch, seq: 128, prompt_len: 64, rank: 8, alpha: 16, targets: ["q_proj", "k_proj", "v_proj", "o_proj"] as LoraTarget[] };
const args = new Set(process.argv.slice(2));
const quick = args.has("--quick");
/** --profile: also print the kernels one full-KL bake step spends its time in (tf.profile) */
const profile = args.has("--profile");
/** --kiln-only: skip PyTorch (for profiling; the ratios need both) */
const kilnOnly = args.has("--kiln-only");
/** --chat-only: only the multi-turn chat table (prefix cache) */
const chatOnly = args.has("--chat-only");
/** --only tiny|kiln-mini|135m: one shape (a part of its name) */
const only = flagValue("--only");
/** --torch-device cuda: PyTorch on the GPU (beside kiln's webgpu backend on a machine with one) */
const torchDevice = flagValue("--torch-device") ?? "cpu";
/** --python PATH: the Python that has torch (default /usr/bin/python3, Debian's) */
const python = flagValue("--python") ?? "/usr/bin/python3";

const REPEATS = quick ? 1 : 3;

function configOf(s: Shape): ModelConfig {
  return parseConfig({
    architectures: ["LlamaForCausalLM"],
    hidden_size: s.hidden,
    intermediate_size: s.ffn,
    num_hidden_layers: s.layers,
    num_attention_heads: s.heads,
    num_key_value_heads: s.kv_heads,
    head_dim: s.head_dim,
    vocab_size: s.vocab,
    tie_word_embeddings: s.tied,
    max_position_embeddings: Math.max(2048, longContext + LONG_DECODE),
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
  });
}



function randomIds(B: number, T: number, vocab: number, seed: number): number[][] {
  let s = seed;
  return Array.from({ length: B }, () => Array.from({ length: T }, () => (s = (s * 1103515245 + 12345) % 2 ** 31) % vocab));
}

async function timeIt(fn: () => Promise<void> | void, repeats: number): Promise<number> {
  await fn(); // warm-up: kernels compiled, buffers allocated
  const times: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const t0 = performance.now();
    await fn();
    times.push((performance.now() - t0) / 1000);
  }
  return median(times);
}

/**
 * Seconds `steps` greedy single-token steps take after a prompt of `ids` (a fresh untimed prefill
 * each time, one pass as PyTorch's), the median of `repeats` after a warm-up.
 */
async function decodeSeconds(decoder: Decoder, ids: number[][], steps: number, repeats: number): Promise<number> {
  const times: number[] = [];
  for (let r = 0; r <= repeats; r++) {
    const cache = new KVCache(1);
    let logits = tf.tidy(() => decoder.forward({ ids }, { cache, logitsFrom: ids[0]!.length - 1 }));
    const t0 = performance.now();
    for (let i = 0; i < steps; i++) {
      const best = tf.tidy(() => logits.reshape([-1]).argMax());
      const next = (await best.data())[0]!;
      best.dispose();
      logits.dispose();
      logits = tf.tidy(() => decoder.forward({ ids: [[next]] }, { cache }));
    }
    await logits.data();
    logits.dispose();
    cache.dispose();
    if (r > 0) times.push((performance.now() - t0) / 1000);
  }
  return median(times);
}

/** Decode tok/s after a prompt of `context` tokens: a long chat, where each step reads the whole KV cache. */
async function benchLongKiln(shape: Shape, context: number): Promise<number> {
  const c = configOf(shape);
  const decoder = randomDecoder(c);
  sizeOutputPool("serve");
  const seconds = await decodeSeconds(decoder, randomIds(1, context, c.vocabSize, 13), LONG_DECODE, 1);
  decoder.dispose();
  return LONG_DECODE / seconds;
}

async function benchKiln(shape: Shape) {
  const c = configOf(shape);
  const decoder = randomDecoder(c);
  const ids = randomIds(1, PREFILL, c.vocabSize, 7);
  sizeOutputPool("serve"); // as a server runs prefill and decode
  const prefillS = await timeIt(async () => {
    const cache = new KVCache(1);
    const logits = tf.tidy(() => decoder.forward({ ids }, { cache, logitsFrom: PREFILL - 1 }));
    await logits.data(); // asynchronous reads, as generation does (webgpu has no synchronous one in Node)
    logits.dispose();
    cache.dispose();
  }, REPEATS);
  const decodeS = await decodeSeconds(decoder, ids, DECODE, REPEATS);
  if (profile) {
    const cache = new KVCache(1);
    const prefill = await tf.profile(() => tf.tidy(() => decoder.forward({ ids }, { cache, logitsFrom: PREFILL - 1 })));
    printProfile(shape.name, `a ${PREFILL}-token prefill`, prefill, `${(prefillS * 1000).toFixed(1)} ms unprofiled`);
    tf.dispose(prefill.result);
    const t0 = performance.now();
    const info = await tf.profile(() => tf.tidy(() => decoder.forward({ ids: [[1]] }, { cache })));
    const wall = performance.now() - t0;
    printProfile(shape.name, "one decode step", info, `${wall.toFixed(1)} ms wall under the profiler, ${((decodeS / DECODE) * 1000).toFixed(1)} ms unprofiled`);
    tf.dispose(info.result);
    cache.dispose();
  }

  const base = { parameters: parameterCount(c), prefill_tok_s: PREFILL / prefillS, decode_tok_s: DECODE / decodeS };
  // bake step: teacher forward (base, no grad) -> cached full-vocab targets; student LoRA forward,
  // KL at the reply positions, backward, Adam on LoRA parameters only.
  sizeOutputPool("bake"); // as kiln's bake worker does
  const fastBackward = prepareDecoderForTraining(decoder);
  const fp = "bench";
  const adapter = LoraAdapter.create(c, { r: BAKE.rank, alpha: BAKE.alpha, dropout: 0, targetModules: BAKE.targets, useRslora: false }, fp, 3);
  const optimizer = new LoraAdam({ learningRate: 1e-4, clipNorm: 1 }); // as the trainer steps
  const bakeIds = randomIds(BAKE.batch, BAKE.seq, c.vocabSize, 11);
  const R = BAKE.seq - BAKE.prompt_len;
  const bakeStep = (mode: KlMode) => () => oneBakeStep(decoder, adapter, optimizer, bakeIds, BAKE.prompt_len, mode);
  const stepS = await timeIt(bakeStep({ kind: "full" }), quick ? 1 : 2);
  if (profile) printProfile(shape.name, "one bake step", await tf.profile(bakeStep({ kind: "full" })));
  const topkStepS = await timeIt(bakeStep({ kind: "topk", k: 20 }), quick ? 1 : 2);
  optimizer.dispose();
  adapter.dispose();
  decoder.dispose();
  return {
    ...base,
    bake_step_s: stepS,
    bake_tok_s: (BAKE.batch * R) / stepS,
    bake_topk_step_s: topkStepS,
    // the process's peak so far: this shape's, as the shapes run smallest first
    peak_rss_mb: process.resourceUsage().maxRSS / 1024,
    fastBackward,
  };
}

const CHAT = { turns: 8, userTokens: 48, replyTokens: 16 };
/**
 * The trimmed chat: the next prompt holds each reply without its last TRIMMED tokens and with two
 * other tokens in their place, as a reply cut by a stop sequence, stripped by the chat template or
 * closed by an end-of-turn rendered differently comes back: the kept cache covers the whole prompt
 * and the reply's start, not its end.
 */
const TRIMMED = 3;

/**
 * A multi-turn chat as a server sees it: every turn sends the whole conversation again. Time to
 * the first token of each turn with a full prefill, and continuing from the KV cache the last
 * reply ended with (src/model/prefix-cache.ts), side by side on the same weights.
 */
async function benchChat(
  shape: Shape,
  trimmed = false,
): Promise<{ turn: number; prompt: number; reused: number; fullMs: number; cachedMs: number; takeMs: number; keptMb: number; entries: number }[]> {
  const c = configOf(shape);
  const decoder = randomDecoder(c);
  sizeOutputPool("serve");
  const store = new PrefixStore(c.slidingWindows, () => 512 * 2 ** 20, { hits: 0, misses: 0, reusedTokens: 0 });
  const firstToken = async (ids: number[], cache: KVCache, from: number) => {
    const logits = tf.tidy(() => decoder.forward({ ids: [ids.slice(from)] }, { cache, logitsFrom: ids.length - from - 1 }));
    const next = tf.tidy(() => logits.reshape([-1]).argMax());
    const token = (await next.data())[0]!;
    logits.dispose();
    next.dispose();
    return token;
  };
  const rows = [];
  let conversation: number[] = [];
  const warm = new KVCache(1);
  await firstToken(randomIds(1, CHAT.turns * (CHAT.userTokens + CHAT.replyTokens), c.vocabSize, 99)[0]!, warm, 0); // kernels and buffers ready
  warm.dispose();
  for (let turn = 1; turn <= CHAT.turns; turn++) {
    const prompt = [...conversation, ...randomIds(1, CHAT.userTokens, c.vocabSize, 100 + turn)[0]!];
    const t = performance.now();
    const kept = store.take(prompt);
    const takeMs = performance.now() - t;
    const reused = kept?.length ?? 0;
    // three of each, alternating (the machine is noisy); a continued run starts from a copy of the
    // kept cache, as the store hands over when a conversation goes on, so each starts the same
    const full: number[] = [];
    const continued: number[] = [];
    for (let r = 0; r < 3; r++) {
      const fresh = new KVCache(1);
      let t0 = performance.now();
      await firstToken(prompt, fresh, 0);
      full.push(performance.now() - t0);
      fresh.dispose();
      const copy = kept?.cache.prefix(reused, c.slidingWindows) ?? new KVCache(1);
      t0 = performance.now();
      await firstToken(prompt, copy, reused);
      continued.push(performance.now() - t0);
      copy.dispose();
    }
    // the turn itself: its reply decoded on the kept cache, which goes back to the store
    const cache = kept?.cache ?? new KVCache(1);
    let token = await firstToken(prompt, cache, reused);
    const reply: number[] = [];
    for (let i = 0; i < CHAT.replyTokens; i++) {
      reply.push(token);
      token = await firstToken([token], cache, 0);
    }
    store.put(cache, [...prompt, ...reply], prompt.length);
    rows.push({ turn, prompt: prompt.length, reused, fullMs: median(full), cachedMs: median(continued), takeMs, keptMb: store.bytes / 2 ** 20, entries: store.size });
    // the two stand-ins are tokens the reply did not end with, so the shared start stops before them
    conversation = trimmed ? [...prompt, ...reply.slice(0, -TRIMMED), (reply.at(-1)! + 1) % c.vocabSize, (reply.at(-1)! + 2) % c.vocabSize] : [...prompt, ...reply];
  }
  store.dispose();
  decoder.dispose();
  return rows;
}

/** Kernel time of one profiled run, by kernel, largest first. */
function printProfile(name: string, what: string, info: Awaited<ReturnType<typeof tf.profile>>, note = ""): void {
  const by = new Map<string, { ms: number; calls: number }>();
  for (const k of info.kernels) {
    const e = by.get(k.name) ?? { ms: 0, calls: 0 };
    e.ms += k.kernelTimeMs as number;
    e.calls++;
    by.set(k.name, e);
  }
  const total = [...by.values()].reduce((s, e) => s + e.ms, 0);
  console.error(`\n${name}: ${what}, ${info.kernels.length} kernels, ${(total / 1000).toFixed(3)} s in kernels${note ? ` (${note})` : ""}`);
  const print = (m: Map<string, { ms: number; calls: number }>, n: number) => {
    for (const [k, e] of [...m.entries()].sort((a, b) => b[1].ms - a[1].ms).slice(0, n)) {
      console.error(`  ${k.padEnd(22)} ${String(e.calls).padStart(6)} calls ${(e.ms / 1000).toFixed(3).padStart(8)} s ${((100 * e.ms) / total).toFixed(1).padStart(5)}%`);
    }
  };
  print(by, 25);
  // the matmuls by operand shapes: big GEMMs run at BLAS speed, small ones pay per-call costs
  const mm = new Map<string, { ms: number; calls: number }>();
  for (const k of info.kernels.filter((k) => k.name === "BatchMatMul")) {
    const key = k.inputShapes.map((s) => `[${s}]`).join("x");
    const e = mm.get(key) ?? { ms: 0, calls: 0 };
    e.ms += k.kernelTimeMs as number;
    e.calls++;
    mm.set(key, e);
  }
  console.error("  BatchMatMul by operand shapes:");
  print(mm, 15);
}

/** PyTorch's numbers for `shape` (tools/bench_torch.md); `over` replaces config keys (bake: null skips the bake). */
function benchTorch(shape: Shape, topk: number | null = null, over: Record<string, unknown> = {}): Record<string, number> | { error: string } {
  const has = spawnSync(python, ["-c", "import torch"], { encoding: "utf8" });
  if (has.error) return { error: `cannot run ${python} (${has.error.message}); --python names the Python that has torch` };
  if (has.status !== 0) return { error: "torch is not installed (apt-get install python3-torch libopenblas0-pthread)" };
  const cfg = { ...shape, prefill_tokens: PREFILL, decode_tokens: DECODE, batch: 1, bake: { ...BAKE, steps: quick ? 1 : 2, topk }, device: torchDevice, threads: os.cpus().length, repeats: REPEATS, ...over };
  const env = { ...process.env };
  // Set machine-wide for old OpenBLAS builds; they slow a current one. Unset for this command only.
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  // PyTorch runs with OpenBLAS's own defaults, not the ones kiln sets for itself
  for (const name of Object.keys(OPENBLAS_DEFAULTS)) if (!userOpenblasEnv.has(name)) delete env[name];
  const r = spawnSync(python, [path.join(PACKAGE_ROOT, "tools", "bench_torch.py"), JSON.stringify(cfg)], { encoding: "utf8", env, maxBuffer: 1 << 24 });
  const line = r.stdout.trim().split("\n").pop() ?? "";
  try {
    return JSON.parse(line);
  } catch {
    return { error: `bench_torch.py failed: ${r.stderr.trim().split("\n").pop()}` };
  }
}

const info = await initBackend();
const fmt = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? "n/a" : x >= 100 ? x.toFixed(0) : x.toFixed(2));
const ratio = (a: number | undefined, b: number | undefined) => (a && b ? `${(a / b).toFixed(2)}x` : "n/a");
console.log(`# kiln bench — ${new Date().toISOString()} — ${os.cpus()[0]?.model ?? "cpu"} x${os.cpus().length}, backend ${info.name} (${info.device ?? `${info.threads} thread(s)`}); PyTorch on ${torchDevice}`);
console.log(`prefill ${PREFILL} tokens, decode ${DECODE} tokens (batch 1${longContext ? `; and ${LONG_DECODE} after a ${longContext}-token prompt` : ""}); bake step = LoRA r${BAKE.rank} on ${BAKE.targets.join("/")}, batch ${BAKE.batch}, seq ${BAKE.seq}, ${BAKE.seq - BAKE.prompt_len} reply tokens, full-vocab KL`);
console.log("");
if (!chatOnly) console.log("| shape | params | metric | kiln | PyTorch | kiln / PyTorch |");
if (!chatOnly) console.log("|---|---|---|---|---|---|");
for (const shape of SHAPES.filter((s) => !chatOnly && (!only || s.name.toLowerCase().includes(only.toLowerCase())))) {
  const k = await benchKiln(shape);
  const t = (kilnOnly ? { error: "skipped (--kiln-only)" } : benchTorch(shape)) as Record<string, number> & { error?: string };
  const tTopk = (kilnOnly ? {} : benchTorch(shape, 20)) as Record<string, number>;
  t.bake_topk_step_s = tTopk.bake_step_s!;
  const rows: [string, number, number | undefined, boolean][] = [
    ["prefill tok/s", k.prefill_tok_s, t.prefill_tok_s, true],
    ["decode tok/s", k.decode_tok_s, t.decode_tok_s, true],
    ["bake step s", k.bake_step_s, t.bake_step_s, false],
    ["bake reply tok/s", k.bake_tok_s, t.bake_tok_s, true],
    ["bake step s, top-20 KL", k.bake_topk_step_s, t.bake_topk_step_s, false],
    ["peak RSS MB (whole run)", k.peak_rss_mb, t.peak_rss_mb, false],
  ];
  if (longContext > 0 && shape.layers > 2) {
    const tLong = (kilnOnly ? {} : benchTorch(shape, null, { prefill_tokens: longContext, decode_tokens: LONG_DECODE, bake: null, repeats: 1 })) as Record<string, number>;
    rows.splice(2, 0, [`decode tok/s after ${longContext} tokens`, await benchLongKiln(shape, longContext), tLong.decode_tok_s, true]);
  }
  for (const [metric, kv, tv, higherIsBetter] of rows) {
    const better = metric.startsWith("peak") ? "memory" : "speed";
    console.log(`| ${shape.name} | ${(k.parameters / 1e6).toFixed(1)}M | ${metric} | ${fmt(kv)} | ${fmt(tv)} | ${higherIsBetter ? ratio(kv, tv) : ratio(tv, kv)} ${better} |`);
  }
  if (!k.fastBackward && info.name === "wasm") console.log(`<!-- ${shape.name}: too large for the transposed training copies on wasm's 4 GB heap; slow backward path -->`);
  if (t.error) console.log(`\nPyTorch: ${t.error}`);
  else console.log(`<!-- torch ${t.torch}, ${t.device_name ? `${t.device_name}, peak GPU memory ${fmt(t.peak_gpu_mb)} MB` : `BLAS ${t.blas}, ${t.threads} threads`} -->`);
}

console.log("");
console.log(`## Multi-turn chat: time to first token, full prefill vs continuing from the kept KV cache (${CHAT.turns} turns, ${CHAT.userTokens} user + ${CHAT.replyTokens} reply tokens each)`);
console.log("");
for (const trimmed of [false, true]) {
  if (trimmed) {
    console.log("");
    console.log(`### Each reply sent back trimmed: its last ${TRIMMED} tokens replaced by 2 others (a stop sequence, the template's end of turn)`);
    console.log("");
  }
  console.log("| shape | turn | prompt tokens | reused | full prefill ms | continued ms | speedup | take ms | kept MB | entries |");
  console.log("|---|---|---|---|---|---|---|---|---|---|");
  for (const shape of SHAPES.filter((s) => !only || s.name.toLowerCase().includes(only.toLowerCase()))) {
    for (const r of await benchChat(shape, trimmed)) {
      console.log(`| ${shape.name} | ${r.turn} | ${r.prompt} | ${r.reused} | ${fmt(r.fullMs)} | ${fmt(r.cachedMs)} | ${ratio(r.fullMs, r.cachedMs)} | ${fmt(r.takeMs)} | ${fmt(r.keptMb)} | ${r.entries} |`);
    }
  }
}
