// kiln's "native" backend: tfjs's cpu backend with its matrix multiplies handed to OpenBLAS
// (native/blas, a small Node-API addon), the heaviest elementwise, reduction, softmax, copy and
// transpose kernels in C, and the fused kernels of src/tensor/fused.ts (RMSNorm, SwiGLU, KL,
// log-softmax, RoPE, attention, top-K, a LoRA linear). Everything else stays in tfjs's
// JavaScript kernels, which are exact and well tested.
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as tf from "@tensorflow/tfjs";
import { MathBackendCPU } from "@tensorflow/tfjs-backend-cpu";
import {
  ATTENTION,
  ATTENTION_GRAD,
  KL_ROWS,
  KL_ROWS_GRAD,
  KL_TOPK_ROWS,
  KL_TOPK_ROWS_GRAD,
  type KvSlots,
  LOG_SOFTMAX,
  LORA_LINEAR,
  LORA_LINEAR_GRAD,
  registerKvSlots,
  RMS_NORM,
  RMS_NORM_GRAD,
  ROPE,
  SWIGLU,
  SWIGLU_GRAD,
} from "./fused.js";

interface BlasAddon {
  sgemm(transA: boolean, transB: boolean, M: number, N: number, K: number, A: Float32Array, B: Float32Array, C: Float32Array, batch: number, strideA: number, strideB: number): void;
  setThreads(n: number): void;
  getThreads(): number;
  config(): string;
  binary(op: number, a: Float32Array, aShape: number[], b: Float32Array, bShape: number[], out: Float32Array, outShape: number[]): void;
  softmax(x: Float32Array, out: Float32Array, rows: number, cols: number): void;
  logSoftmax(x: Float32Array, out: Float32Array, rows: number, cols: number): void;
  transpose(x: Float32Array, shape: number[], perm: number[], out: Float32Array): void;
  unary(op: number, x: Float32Array, out: Float32Array): void;
  reduce(op: number, x: Float32Array, outer: number, n: number, inner: number, out: Float32Array): void;
  rmsnorm(x: Float32Array, w: Float32Array, eps: number, rows: number, cols: number, y: Float32Array): void;
  rmsnormGrad(dy: Float32Array, x: Float32Array, w: Float32Array, eps: number, rows: number, cols: number, dx: Float32Array, dw: Float32Array): void;
  swiglu(gate: Float32Array, up: Float32Array, out: Float32Array): void;
  swigluGrad(dy: Float32Array, gate: Float32Array, up: Float32Array, dgate: Float32Array, dup: Float32Array): void;
  klRows(x: Float32Array, logp: Float32Array, rows: number, vocab: number, out: Float32Array): void;
  klRowsGrad(dy: Float32Array, x: Float32Array, logp: Float32Array, rows: number, vocab: number, dx: Float32Array): void;
  loraLinear(x: Float32Array, w: Float32Array, a: Float32Array, b: Float32Array, n: number, inF: number, outF: number, r: number, scale: number, y: Float32Array): void;
  loraLinearGrad(dy: Float32Array, x: Float32Array, w: Float32Array, a: Float32Array, b: Float32Array, n: number, inF: number, outF: number, r: number, scale: number, dx: Float32Array, da: Float32Array, db: Float32Array): void;
  rope(x: Float32Array, cos: Float32Array, sin: Float32Array, rows: number, heads: number, hd: number, sign: number, y: Float32Array): void;
  topk(x: Float32Array, rows: number, V: number, k: number, values: Float32Array, indices: Int32Array): void;
  klTopk(logits: Float32Array, topLogp: Float32Array, flat: Int32Array, tail: Float32Array, rows: number, V: number, K: number, out: Float32Array): void;
  klTopkGrad(dy: Float32Array, logits: Float32Array, topLogp: Float32Array, flat: Int32Array, tail: Float32Array, rows: number, V: number, K: number, dx: Float32Array): void;
  /** dims: [B, T, S, heads, kvHeads, hd, kvHeadMajor 0|1, cap] (cap: the slots k and v hold per head, >= S; more only head-major) */
  attention(q: Float32Array, k: Float32Array, v: Float32Array, mask: Float32Array, scale: number, dims: number[], out: Float32Array, probs: Float32Array): void;
  attentionGrad(dout: Float32Array, q: Float32Array, k: Float32Array, v: Float32Array, probs: Float32Array, scale: number, dims: number[], dq: Float32Array, dk: Float32Array, dv: Float32Array): void;
}

const ADDON = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "native", "blas", "build", "Release", "kiln_blas.node");

export function nativeAddonPath(): string {
  return ADDON;
}

let addon: BlasAddon | undefined;

/** Loads the addon; throws with the reason when it was not built. */
export function loadBlas(): BlasAddon {
  if (addon) return addon;
  if (!existsSync(ADDON)) throw new Error(`${ADDON} is missing: build it with npm run build:native (needs g++, make and libopenblas-dev)`);
  for (const [name, value] of Object.entries(OPENBLAS_DEFAULTS)) process.env[name] ??= value; // read once, as OpenBLAS loads
  addon = createRequire(import.meta.url)(ADDON) as BlasAddon;
  return addon;
}

/**
 * OpenBLAS settings kiln starts it with, unless the environment sets them. After a product its
 * worker thread spins for 2^28 cycles (~0.1 s) by default, holding the second core while kiln's
 * own threads (attention, softmax, KL) want it: the 135M bake step took 1.57-1.61 s at the default
 * and 1.45 s at 2^20 cycles, decode 27 tok/s either way (2^4 cut the bake step to 1.42-1.48 s but
 * decode to 23 tok/s: each small product then wakes a sleeping thread).
 */
export const OPENBLAS_DEFAULTS: Readonly<Record<string, string>> = { OPENBLAS_THREAD_TIMEOUT: "20" };

/**
 * The output arrays of kiln's kernels, reused once tfjs disposes their tensors. A bake step
 * allocates ~1.5 GB of outputs (135M shape); as fresh arrays each one is zeroed by V8, and
 * freeing them is left to the garbage collector, whose "external memory pressure" collections
 * took ~10% of a step. An array is reused only while nothing else can see it: it backs exactly
 * one tensor, was never read out (dataSync hands out the array itself) and no view of it backs
 * another tensor; anything else just leaves it to the collector.
 */
class OutputPool {
  private readonly free = new Map<number, Float32Array[]>();
  private readonly owners = new WeakMap<ArrayBuffer, { array: Float32Array; tensors: number; escaped: boolean }>();
  private bytes = 0;

  constructor(public capBytes: number) {}

  take(n: number): Float32Array {
    const list = n >= POOL_MIN_FLOATS ? this.free.get(n) : undefined;
    const a = list?.pop();
    if (a) {
      this.bytes -= a.byteLength;
      // most recently used sizes last: eviction takes the sizes unused longest
      this.free.delete(n);
      if (list!.length) this.free.set(n, list!);
    }
    const array = a ?? new Float32Array(n);
    if (n >= POOL_MIN_FLOATS) this.owners.set(array.buffer as ArrayBuffer, { array, tensors: 0, escaped: false });
    return array;
  }

  /** `values` now backs a tensor. */
  stored(values: unknown): void {
    // any view (of any element type) of a pooled buffer counts, not only the array itself
    const o = ArrayBuffer.isView(values) ? this.owners.get(values.buffer as ArrayBuffer) : undefined;
    if (o && (o.array !== values || ++o.tensors > 1)) o.escaped = true;
  }

  /** `values` was handed out of the backend. */
  escape(values: unknown): void {
    const o = ArrayBuffer.isView(values) ? this.owners.get(values.buffer as ArrayBuffer) : undefined;
    if (o) o.escaped = true;
  }

  /** The tensor `values` backed is gone. */
  release(values: unknown): void {
    if (!(values instanceof Float32Array)) return;
    const o = this.owners.get(values.buffer as ArrayBuffer);
    if (!o || o.escaped || o.array !== values || o.tensors !== 1) return;
    this.owners.delete(values.buffer as ArrayBuffer);
    if (values.byteLength > this.capBytes) return;
    this.evict(this.capBytes - values.byteLength);
    this.bytes += values.byteLength;
    const list = this.free.get(values.length);
    if (list) list.push(values);
    else this.free.set(values.length, [values]);
  }

  /** Drops the least recently used sizes until at most `bytes` are kept. */
  private evict(bytes: number): void {
    for (const [n, arrays] of this.free) {
      if (this.bytes <= bytes) break;
      while (arrays.length && this.bytes > bytes) this.bytes -= arrays.pop()!.byteLength;
      if (!arrays.length) this.free.delete(n);
    }
  }

  resize(capBytes: number): void {
    this.capBytes = capBytes;
    this.evict(capBytes);
  }

  clear(): void {
    this.free.clear();
    this.bytes = 0;
  }
}

/** Smaller arrays live in V8's heap, where allocation is cheap. */
const POOL_MIN_FLOATS = 1 << 14;
const MB = 1024 * 1024;

/**
 * The most the pool keeps for reuse, by the work a process does (KILN_OUTPUT_POOL_MB overrides).
 * A bake step's outputs come back every step: the 135M bench step took 1.91 s with no pool, 1.45
 * with 512 MB and 1.35 with 2 GB, at the same peak memory (docs/benchmarks.md). Serving sees
 * prompts of every length, whose sizes rarely repeat, so a long-lived server keeps less.
 */
export const OUTPUT_POOL_MB = { serve: 256, bake: 2048 } as const;

/**
 * A bake's pool, by its model's weights: at most 8 times their size (and at least 256 MB). On the
 * embedded 5M-parameter model the 2 GB pool filled with arrays of sizes that rarely came back
 * (batches of other lengths): `kiln demo` peaked at 2.95 GB resident against 0.91 GB with 256 MB,
 * for 64 against 71 s (0.64 GB and 78 s with none); a 135M model's step alone allocates 1.5 GB.
 */
export function bakePoolMb(weightBytes: number): number {
  return Math.min(OUTPUT_POOL_MB.bake, Math.max(256, Math.ceil((8 * weightBytes) / MB)));
}

/**
 * Sizes the native backend's output pool for `work` (bake workers call it, with their model's
 * weight bytes); other backends: nothing.
 */
export function sizeOutputPool(work: keyof typeof OUTPUT_POOL_MB, weightBytes?: number): void {
  const backend = tf.findBackend("native");
  const mb = work === "bake" && weightBytes !== undefined ? bakePoolMb(weightBytes) : OUTPUT_POOL_MB[work];
  if (backend instanceof NativeBackend) backend.pool.resize(poolCapMb(process.env.KILN_OUTPUT_POOL_MB, mb) * MB);
}

function poolCapMb(env: string | undefined, fallback: number): number {
  if (env === undefined || env === "") return fallback;
  const mb = Number(env);
  if (!Number.isFinite(mb) || mb < 0) throw new Error(`KILN_OUTPUT_POOL_MB must be a number of megabytes (0 turns the pool off), got "${env}"`);
  return mb;
}

/** tfjs's cpu backend, with kernel outputs reused through an OutputPool. */
class NativeBackend extends MathBackendCPU {
  readonly pool = new OutputPool(poolCapMb(process.env.KILN_OUTPUT_POOL_MB, OUTPUT_POOL_MB.serve) * MB);

  override write(values: tf.backend_util.BackendValues, shape: number[], dtype: tf.DataType): tf.DataId {
    this.pool.stored(values);
    return super.write(values, shape, dtype);
  }

  override move(dataId: tf.DataId, values: tf.backend_util.BackendValues, shape: number[], dtype: tf.DataType, refCount: number): void {
    this.pool.stored(values);
    super.move(dataId, values, shape, dtype, refCount);
  }

  override readSync(dataId: tf.DataId): tf.backend_util.BackendValues {
    if (this.data.has(dataId)) this.pool.escape(this.data.get(dataId).values);
    return super.readSync(dataId);
  }

  override disposeData(dataId: tf.DataId, force = false): boolean {
    const values = this.data.has(dataId) ? this.data.get(dataId).values : undefined;
    const gone = super.disposeData(dataId, force) && !this.data.has(dataId);
    if (gone && values) this.pool.release(values);
    return gone;
  }

  override dispose(): void {
    this.pool.clear();
    super.dispose();
  }
}

type CpuBackend = MathBackendCPU;

/** An output array for a kernel of `backend`: reused when it is kiln's native backend. Not zeroed. */
function output(backend: CpuBackend, n: number): Float32Array {
  return backend instanceof NativeBackend ? backend.pool.take(n) : new Float32Array(n);
}

function product(xs: readonly number[]): number {
  return xs.reduce((a, b) => a * b, 1);
}

function makeBatchMatMul(blas: BlasAddon, fallback: tf.KernelFunc): tf.KernelFunc {
  return (args) => {
    const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
    const { transposeA, transposeB } = args.attrs as { transposeA: boolean; transposeB: boolean };
    const backend = args.backend as CpuBackend;
    const aVals = backend.data.get(a.dataId).values;
    const bVals = backend.data.get(b.dataId).values;
    const aRank = a.shape.length;
    const bRank = b.shape.length;
    const aBatch = a.shape.slice(0, -2);
    const bBatch = b.shape.slice(0, -2);
    const batchA = product(aBatch);
    const batchB = product(bBatch);
    // One matrix against many, or many against as many: anything else (or non-float32) goes to
    // the reference kernel.
    const sameBatch = aBatch.length === bBatch.length && aBatch.every((d, i) => d === bBatch[i]);
    if (!(aVals instanceof Float32Array) || !(bVals instanceof Float32Array) || !(sameBatch || batchA === 1 || batchB === 1)) {
      return fallback(args);
    }
    const M = transposeA ? a.shape[aRank - 1]! : a.shape[aRank - 2]!;
    const K = transposeA ? a.shape[aRank - 2]! : a.shape[aRank - 1]!;
    const N = transposeB ? b.shape[bRank - 2]! : b.shape[bRank - 1]!;
    // numpy broadcasting of the batch dims: [1, 1, M, K] x [3, K, N] -> [1, 3, M, N]
    const rank = Math.max(aBatch.length, bBatch.length);
    const padded = (dims: number[]) => [...Array<number>(rank - dims.length).fill(1), ...dims];
    const outBatch = padded(aBatch).map((d, i) => (d === 1 ? padded(bBatch)[i]! : d));
    const batch = product(outBatch);
    const out = output(backend, batch * M * N);
    if (M > 0 && N > 0 && batch > 0) {
      if (K === 0) out.fill(0);
      // Many row blocks against one matrix are one taller matrix: a single, better-shaped sgemm.
      else if (batchB === 1 && !transposeA && batch > 1) blas.sgemm(false, transposeB, batch * M, N, K, aVals, bVals, out, 1, 0, 0);
      else blas.sgemm(transposeA, transposeB, M, N, K, aVals, bVals, out, batch, batchA === 1 ? 0 : M * K, batchB === 1 ? 0 : K * N);
    }
    return backend.makeTensorInfo([...outBatch, M, N], "float32", out);
  };
}

function float32(backend: CpuBackend, t: tf.TensorInfo): Float32Array | undefined {
  const v = backend.data.get(t.dataId).values;
  return t.dtype === "float32" && v instanceof Float32Array ? v : undefined;
}

/** Add, Sub, Multiply, RealDiv on float32 with numpy broadcasting (rank <= 8). */
function makeBinary(blas: BlasAddon, op: number, fallback: tf.KernelFunc): tf.KernelFunc {
  return (args) => {
    const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
    const backend = args.backend as CpuBackend;
    const av = float32(backend, a);
    const bv = float32(backend, b);
    const rank = Math.max(a.shape.length, b.shape.length, 1);
    if (!av || !bv || rank > 8) return fallback(args);
    const align = (s: number[]) => [...Array(rank - s.length).fill(1), ...s];
    const as = align(a.shape);
    const bs = align(b.shape);
    const out: number[] = [];
    for (let i = 0; i < rank; i++) {
      if (as[i] !== bs[i] && as[i] !== 1 && bs[i] !== 1) return fallback(args); // let tfjs say why
      out.push(as[i] === 1 ? bs[i]! : as[i]!);
    }
    const values = output(backend, product(out));
    if (values.length) blas.binary(op, av, as, bv, bs, values, out);
    // Scalars stay scalars: the output has the larger input's rank, not the padded one.
    return backend.makeTensorInfo(out.slice(rank - Math.max(a.shape.length, b.shape.length)), "float32", values);
  };
}

function makeSoftmax(blas: BlasAddon, fallback: tf.KernelFunc): tf.KernelFunc {
  return (args) => {
    const { logits } = args.inputs as { logits: tf.TensorInfo };
    const { dim } = args.attrs as { dim: number };
    const backend = args.backend as CpuBackend;
    const x = float32(backend, logits);
    const rank = logits.shape.length;
    if (!x || rank === 0 || (dim !== -1 && dim !== rank - 1)) return fallback(args);
    const cols = logits.shape[rank - 1]!;
    const out = output(backend, x.length);
    if (out.length) blas.softmax(x, out, x.length / cols, cols);
    return backend.makeTensorInfo(logits.shape, "float32", out);
  };
}

function makeTranspose(blas: BlasAddon, fallback: tf.KernelFunc): tf.KernelFunc {
  return (args) => {
    const { x } = args.inputs as { x: tf.TensorInfo };
    const { perm } = args.attrs as { perm: number[] };
    const backend = args.backend as CpuBackend;
    const v = float32(backend, x);
    if (!v || x.shape.length === 0 || x.shape.length > 8) return fallback(args);
    const out = output(backend, v.length);
    if (out.length) blas.transpose(v, x.shape, perm, out);
    return backend.makeTensorInfo(perm.map((p) => x.shape[p]!), "float32", out);
  };
}

/** Embedding lookups (rows of a matrix) as plain row copies; other gathers go to tfjs. */
function makeGather(fallback: tf.KernelFunc): tf.KernelFunc {
  return (args) => {
    const { x, indices } = args.inputs as { x: tf.TensorInfo; indices: tf.TensorInfo };
    const { axis, batchDims } = args.attrs as { axis: number; batchDims: number };
    const backend = args.backend as CpuBackend;
    const v = float32(backend, x);
    const ids = backend.data.get(indices.dataId).values;
    if (!v || x.shape.length !== 2 || axis !== 0 || batchDims !== 0 || !(ids instanceof Int32Array)) return fallback(args);
    const [rows, cols] = x.shape as [number, number];
    const out = output(backend, ids.length * cols);
    for (let i = 0; i < ids.length; i++) {
      const r = ids[i]!;
      if (r < 0 || r >= rows) return fallback(args); // tfjs reports the bad index
      out.set(v.subarray(r * cols, (r + 1) * cols), i * cols);
    }
    return backend.makeTensorInfo([...indices.shape, cols], "float32", out);
  };
}

function makeUnary(blas: BlasAddon, op: number, fallback: tf.KernelFunc): tf.KernelFunc {
  return (args) => {
    const { x } = args.inputs as { x: tf.TensorInfo };
    const backend = args.backend as CpuBackend;
    const v = float32(backend, x);
    if (!v) return fallback(args);
    const out = output(backend, v.length);
    blas.unary(op, v, out);
    return backend.makeTensorInfo(x.shape, "float32", out);
  };
}

/**
 * Copies the box [begin, begin + size) of x (row-major, shape `shape`) into, or out of, a dense
 * array, one contiguous innermost run at a time. tfjs's generic slice and pad index every element
 * through a buffer object, which took seconds on [B, T, vocab] logits.
 */
function copyBox(src: Float32Array, srcShape: number[], dst: Float32Array, dstShape: number[], begin: number[], size: number[], intoDst: boolean): void {
  const rank = size.length;
  const strides = (shape: number[]) => {
    const st = new Array<number>(rank).fill(1);
    for (let i = rank - 2; i >= 0; i--) st[i] = st[i + 1]! * shape[i + 1]!;
    return st;
  };
  const big = intoDst ? dstShape : srcShape; // the shape the box lives in
  const bigStride = strides(big);
  const smallStride = strides(size);
  const run = size[rank - 1]!;
  const count = size.reduce((a, b) => a * b, 1) / (run || 1);
  const idx = new Array<number>(rank).fill(0);
  for (let r = 0; r < count; r++) {
    let inBig = begin[rank - 1]!;
    let inSmall = 0;
    for (let d = 0; d < rank - 1; d++) {
      inBig += (idx[d]! + begin[d]!) * bigStride[d]!;
      inSmall += idx[d]! * smallStride[d]!;
    }
    if (intoDst) dst.set(src.subarray(inSmall, inSmall + run), inBig);
    else dst.set(src.subarray(inBig, inBig + run), inSmall);
    for (let d = rank - 2; d >= 0; d--) {
      if (++idx[d]! < size[d]!) break;
      idx[d] = 0;
    }
  }
}

function makeSlice(fallback: tf.KernelFunc): tf.KernelFunc {
  return (args) => {
    const { x } = args.inputs as { x: tf.TensorInfo };
    const attrs = args.attrs as { begin: number | number[]; size: number | number[] };
    const backend = args.backend as CpuBackend;
    const v = float32(backend, x);
    const rank = x.shape.length;
    if (!v || rank === 0 || !Array.isArray(attrs.begin) || !Array.isArray(attrs.size) || attrs.begin.length !== rank || attrs.size.length !== rank) return fallback(args);
    const begin = attrs.begin;
    const size = attrs.size.map((s, i) => (s === -1 ? x.shape[i]! - begin[i]! : s));
    if (size.some((s, i) => s < 0 || begin[i]! < 0 || begin[i]! + s > x.shape[i]!)) return fallback(args);
    const out = output(backend, size.reduce((a, b) => a * b, 1));
    if (out.length) copyBox(v, x.shape, out, size, begin, size, false);
    return backend.makeTensorInfo(size, "float32", out);
  };
}

/** Concatenation: each input's blocks after the axis copied whole (the KV cache grows by one every token). */
function makeConcat(fallback: tf.KernelFunc): tf.KernelFunc {
  return (args) => {
    const inputs = args.inputs as unknown as tf.TensorInfo[];
    const attrs = args.attrs as { axis: number | number[] };
    const backend = args.backend as CpuBackend;
    const first = inputs[0];
    const rank = first?.shape.length ?? 0;
    const given = Array.isArray(attrs.axis) ? attrs.axis[0]! : attrs.axis;
    const axis = given < 0 ? given + rank : given;
    const vals = inputs.map((t) => float32(backend, t));
    const fits = (t: tf.TensorInfo) => t.shape.length === rank && t.shape.every((d, i) => i === axis || d === first!.shape[i]);
    if (!first || rank === 0 || axis < 0 || axis >= rank || vals.some((v) => !v) || !inputs.every(fits)) return fallback(args);
    const outer = product(first.shape.slice(0, axis));
    const widths = inputs.map((t) => product(t.shape.slice(axis)));
    const row = widths.reduce((a, b) => a + b, 0);
    // not pooled: the KV cache grows by a token a call, so its sizes never come back
    const out = new Float32Array(outer * row);
    let offset = 0;
    inputs.forEach((_, k) => {
      const v = vals[k]!;
      const w = widths[k]!;
      for (let o = 0; o < outer; o++) out.set(v.subarray(o * w, (o + 1) * w), o * row + offset);
      offset += w;
    });
    const shape = first.shape.map((d, i) => (i === axis ? inputs.reduce((n, t) => n + t.shape[axis]!, 0) : d));
    return backend.makeTensorInfo(shape, "float32", out);
  };
}

/** Zero padding (the gradient of slice). */
function makePad(fallback: tf.KernelFunc): tf.KernelFunc {
  return (args) => {
    const { x } = args.inputs as { x: tf.TensorInfo };
    const { paddings, constantValue } = args.attrs as { paddings: [number, number][]; constantValue: number };
    const backend = args.backend as CpuBackend;
    const v = float32(backend, x);
    if (!v || x.shape.length === 0 || paddings.length !== x.shape.length) return fallback(args);
    const outShape = x.shape.map((d, i) => paddings[i]![0] + d + paddings[i]![1]);
    const out = output(backend, outShape.reduce((a, b) => a * b, 1));
    out.fill(constantValue); // a reused array holds old values
    if (v.length) copyBox(v, x.shape, out, outShape, paddings.map((p) => p[0]), x.shape, true);
    return backend.makeTensorInfo(outShape, "float32", out);
  };
}

/** The k largest entries of each last-axis row (the teacher's targets of a top-K bake). */
function makeTopK(blas: BlasAddon, fallback: tf.KernelFunc): tf.KernelFunc {
  return (args) => {
    const { x } = args.inputs as { x: tf.TensorInfo };
    const { k } = args.attrs as { k: number };
    const backend = args.backend as CpuBackend;
    const v = float32(backend, x);
    const V = x.shape.at(-1) ?? 0;
    if (!v || x.shape.length === 0 || !Number.isInteger(k) || k < 1 || k > V) return fallback(args); // tfjs says why
    const rows = v.length / V;
    const values = output(backend, rows * k);
    const indices = new Int32Array(rows * k);
    blas.topk(v, rows, V, k, values, indices);
    const shape = [...x.shape.slice(0, -1), k];
    return [backend.makeTensorInfo(shape, "float32", values), backend.makeTensorInfo(shape, "int32", indices)];
  };
}

/** Sum, Mean and Max over one contiguous run of axes (the decoder's only kind); others to tfjs. */
function makeReduce(blas: BlasAddon, op: number, fallback: tf.KernelFunc): tf.KernelFunc {
  return (args) => {
    const { x } = args.inputs as { x: tf.TensorInfo };
    const attrs = args.attrs as { axis?: number | number[]; reductionIndices?: number | number[]; keepDims: boolean };
    const axis = attrs.axis ?? attrs.reductionIndices ?? []; // Max names its axes reductionIndices
    const keepDims = attrs.keepDims;
    const backend = args.backend as CpuBackend;
    const v = float32(backend, x);
    const rank = x.shape.length;
    const axes = [...new Set((Array.isArray(axis) ? axis : [axis]).map((a) => (a < 0 ? a + rank : a)))].sort((a, b) => a - b);
    if (!v || !axes.length || axes.some((a, i) => a < 0 || a >= rank || (i > 0 && a !== axes[i - 1]! + 1))) return fallback(args);
    const [first, last] = [axes[0]!, axes.at(-1)!];
    const outer = product(x.shape.slice(0, first));
    const n = product(x.shape.slice(first, last + 1));
    const inner = product(x.shape.slice(last + 1));
    if (n === 0) return fallback(args);
    const out = output(backend, outer * inner);
    if (out.length) blas.reduce(op, v, outer, n, inner, out);
    const shape = keepDims ? x.shape.map((d, i) => (axes.includes(i) ? 1 : d)) : x.shape.filter((_, i) => !axes.includes(i));
    return backend.makeTensorInfo(shape, "float32", out);
  };
}

/** The fused kernels of src/tensor/fused.ts (inputs are float32: fused.ts checks before calling). */
function fusedKernels(blas: BlasAddon): Record<string, tf.KernelFunc> {
  const values = (backend: CpuBackend, t: tf.TensorInfo): Float32Array => {
    const v = float32(backend, t);
    if (!v) throw new Error(`kiln native: fused kernels take float32 tensors, got ${t.dtype}`);
    return v;
  };
  const int32s = (backend: CpuBackend, t: tf.TensorInfo): Int32Array => {
    const v = backend.data.get(t.dataId).values;
    if (!(v instanceof Int32Array)) throw new Error(`kiln native: expected int32 indices, got ${t.dtype}`);
    return v;
  };
  return {
    [RMS_NORM]: ({ inputs, backend, attrs }) => {
      const { x, weight } = inputs as { x: tf.TensorInfo; weight: tf.TensorInfo };
      const cpu = backend as CpuBackend;
      const cols = x.shape.at(-1)!;
      const rows = product(x.shape) / cols;
      const y = output(cpu, rows * cols);
      blas.rmsnorm(values(cpu, x), values(cpu, weight), (attrs as { eps: number }).eps, rows, cols, y);
      return cpu.makeTensorInfo(x.shape, "float32", y);
    },
    [RMS_NORM_GRAD]: ({ inputs, backend, attrs }) => {
      const { dy, x, weight } = inputs as { dy: tf.TensorInfo; x: tf.TensorInfo; weight: tf.TensorInfo };
      const cpu = backend as CpuBackend;
      const cols = x.shape.at(-1)!;
      const rows = product(x.shape) / cols;
      const dx = output(cpu, rows * cols);
      const dw = output(cpu, cols);
      blas.rmsnormGrad(values(cpu, dy), values(cpu, x), values(cpu, weight), (attrs as { eps: number }).eps, rows, cols, dx, dw);
      return [cpu.makeTensorInfo(x.shape, "float32", dx), cpu.makeTensorInfo(weight.shape, "float32", dw)];
    },
    [SWIGLU]: ({ inputs, backend }) => {
      const { gate, up } = inputs as { gate: tf.TensorInfo; up: tf.TensorInfo };
      const cpu = backend as CpuBackend;
      const out = output(cpu, product(gate.shape));
      blas.swiglu(values(cpu, gate), values(cpu, up), out);
      return cpu.makeTensorInfo(gate.shape, "float32", out);
    },
    [SWIGLU_GRAD]: ({ inputs, backend }) => {
      const { dy, gate, up } = inputs as { dy: tf.TensorInfo; gate: tf.TensorInfo; up: tf.TensorInfo };
      const cpu = backend as CpuBackend;
      const dg = output(cpu, product(gate.shape));
      const du = output(cpu, dg.length);
      blas.swigluGrad(values(cpu, dy), values(cpu, gate), values(cpu, up), dg, du);
      return [cpu.makeTensorInfo(gate.shape, "float32", dg), cpu.makeTensorInfo(up.shape, "float32", du)];
    },
    [KL_ROWS]: ({ inputs, backend }) => {
      const { logits, teacherLogProbs } = inputs as { logits: tf.TensorInfo; teacherLogProbs: tf.TensorInfo };
      const cpu = backend as CpuBackend;
      const V = logits.shape.at(-1)!;
      const out = output(cpu, product(logits.shape) / V);
      blas.klRows(values(cpu, logits), values(cpu, teacherLogProbs), out.length, V, out);
      return cpu.makeTensorInfo(logits.shape.slice(0, -1), "float32", out);
    },
    [KL_ROWS_GRAD]: ({ inputs, backend }) => {
      const { dy, logits, teacherLogProbs } = inputs as { dy: tf.TensorInfo; logits: tf.TensorInfo; teacherLogProbs: tf.TensorInfo };
      const cpu = backend as CpuBackend;
      const V = logits.shape.at(-1)!;
      const dx = output(cpu, product(logits.shape));
      blas.klRowsGrad(values(cpu, dy), values(cpu, logits), values(cpu, teacherLogProbs), dx.length / V, V, dx);
      return cpu.makeTensorInfo(logits.shape, "float32", dx);
    },
    [LORA_LINEAR]: ({ inputs, backend, attrs }) => {
      const { x, w, a, b } = inputs as { x: tf.TensorInfo; w: tf.TensorInfo; a: tf.TensorInfo; b: tf.TensorInfo };
      const cpu = backend as CpuBackend;
      const [n, inF] = x.shape as [number, number];
      const [r, outF] = [a.shape[0]!, w.shape[1]!];
      const y = output(cpu, n * outF);
      blas.loraLinear(values(cpu, x), values(cpu, w), values(cpu, a), values(cpu, b), n, inF, outF, r, (attrs as { scale: number }).scale, y);
      return cpu.makeTensorInfo([n, outF], "float32", y);
    },
    [LORA_LINEAR_GRAD]: ({ inputs, backend, attrs }) => {
      const { dy, x, w, a, b } = inputs as { dy: tf.TensorInfo; x: tf.TensorInfo; w: tf.TensorInfo; a: tf.TensorInfo; b: tf.TensorInfo };
      const cpu = backend as CpuBackend;
      const [n, inF] = x.shape as [number, number];
      const [r, outF] = [a.shape[0]!, w.shape[1]!];
      const dx = output(cpu, n * inF);
      const da = output(cpu, r * inF);
      const db = output(cpu, outF * r);
      blas.loraLinearGrad(values(cpu, dy), values(cpu, x), values(cpu, w), values(cpu, a), values(cpu, b), n, inF, outF, r, (attrs as { scale: number }).scale, dx, da, db);
      return [cpu.makeTensorInfo(x.shape, "float32", dx), cpu.makeTensorInfo(a.shape, "float32", da), cpu.makeTensorInfo(b.shape, "float32", db)];
    },
    [ROPE]: ({ inputs, backend, attrs }) => {
      const { x, cos, sin } = inputs as { x: tf.TensorInfo; cos: tf.TensorInfo; sin: tf.TensorInfo };
      const cpu = backend as CpuBackend;
      const [B, T, H, hd] = x.shape as [number, number, number, number];
      const y = output(cpu, B * T * H * hd);
      blas.rope(values(cpu, x), values(cpu, cos), values(cpu, sin), B * T, H, hd, (attrs as { sign: number }).sign, y);
      return cpu.makeTensorInfo(x.shape, "float32", y);
    },
    [LOG_SOFTMAX]: ({ inputs, backend }) => {
      const { x } = inputs as { x: tf.TensorInfo };
      const cpu = backend as CpuBackend;
      const V = x.shape.at(-1)!;
      const out = output(cpu, product(x.shape));
      if (out.length) blas.logSoftmax(values(cpu, x), out, out.length / V, V);
      return cpu.makeTensorInfo(x.shape, "float32", out);
    },
    [KL_TOPK_ROWS]: ({ inputs, backend }) => {
      const { logits, topLogProbs, flatIndices, tailLogProb } = inputs as Record<"logits" | "topLogProbs" | "flatIndices" | "tailLogProb", tf.TensorInfo>;
      const cpu = backend as CpuBackend;
      const V = logits.shape.at(-1)!;
      const out = output(cpu, product(tailLogProb.shape));
      blas.klTopk(values(cpu, logits), values(cpu, topLogProbs), int32s(cpu, flatIndices), values(cpu, tailLogProb), out.length, V, topLogProbs.shape.at(-1)!, out);
      return cpu.makeTensorInfo(tailLogProb.shape, "float32", out);
    },
    [KL_TOPK_ROWS_GRAD]: ({ inputs, backend }) => {
      const { dy, logits, topLogProbs, flatIndices, tailLogProb } = inputs as Record<"dy" | "logits" | "topLogProbs" | "flatIndices" | "tailLogProb", tf.TensorInfo>;
      const cpu = backend as CpuBackend;
      const V = logits.shape.at(-1)!;
      const dx = output(cpu, product(logits.shape));
      blas.klTopkGrad(values(cpu, dy), values(cpu, logits), values(cpu, topLogProbs), int32s(cpu, flatIndices), values(cpu, tailLogProb), dx.length / V, V, topLogProbs.shape.at(-1)!, dx);
      return cpu.makeTensorInfo(logits.shape, "float32", dx);
    },
    [ATTENTION]: ({ inputs, backend, attrs }) => {
      const { q, k, v, mask } = inputs as { q: tf.TensorInfo; k: tf.TensorInfo; v: tf.TensorInfo; mask: tf.TensorInfo };
      const cpu = backend as CpuBackend;
      const { scale, kvHeadMajor } = attrs as { scale: number; kvHeadMajor: boolean };
      const dims = attentionDims(q, k, kvHeadMajor, mask.shape[2]!);
      const [B, T, S, heads] = dims as [number, number, number, number];
      const out = output(cpu, product(q.shape));
      const probs = output(cpu, B * heads * T * S);
      blas.attention(values(cpu, q), values(cpu, k), values(cpu, v), values(cpu, mask), scale, dims, out, probs);
      return [cpu.makeTensorInfo(q.shape, "float32", out), cpu.makeTensorInfo([B, heads, T, S], "float32", probs)];
    },
    [ATTENTION_GRAD]: ({ inputs, backend, attrs }) => {
      const { dout, q, k, v, probs } = inputs as { dout: tf.TensorInfo; q: tf.TensorInfo; k: tf.TensorInfo; v: tf.TensorInfo; probs: tf.TensorInfo };
      const cpu = backend as CpuBackend;
      const { scale, kvHeadMajor } = attrs as { scale: number; kvHeadMajor: boolean };
      const dq = output(cpu, product(q.shape));
      const dk = output(cpu, product(k.shape));
      const dv = output(cpu, dk.length);
      blas.attentionGrad(values(cpu, dout), values(cpu, q), values(cpu, k), values(cpu, v), values(cpu, probs), scale, attentionDims(q, k, kvHeadMajor), dq, dk, dv);
      return [cpu.makeTensorInfo(q.shape, "float32", dq), cpu.makeTensorInfo(k.shape, "float32", dk), cpu.makeTensorInfo(v.shape, "float32", dv)];
    },
  };
}

/**
 * [B, T, S, heads, kvHeads, hd, kvHeadMajor, cap] of attention's q [B, T, heads, hd] and k, of
 * which the first S slots are read (a KV cache's storage holds more: KVCache).
 */
function attentionDims(q: tf.TensorInfo, k: tf.TensorInfo, kvHeadMajor: boolean, S?: number): number[] {
  const [B, T, heads, hd] = q.shape as [number, number, number, number];
  const [cap, kvHeads] = kvHeadMajor ? [k.shape[2]!, k.shape[1]!] : [k.shape[1]!, k.shape[2]!];
  return [B, T, S ?? cap, heads, kvHeads, hd, kvHeadMajor ? 1 : 0, cap];
}

/**
 * KVCache's writes into its own storage [B, kvHeads, capacity, hd]: array copies, one head's hd
 * floats (write) or run of slots (move) at a time, where appending by concat copied the whole
 * cache every token.
 */
function kvSlots(): KvSlots {
  const storage = (t: tf.Tensor): Float32Array => {
    const v = float32(tf.backend() as CpuBackend, t); // (kvSlotsInPlace hands this out only while native is the backend)
    if (!v) throw new Error(`kiln native: a KV cache holds float32 tensors, got ${t.dtype}`);
    return v;
  };
  return {
    write(store, x, at) {
      const [B, T, kvHeads, hd] = x.shape;
      const cap = store.shape[2];
      if (store.shape[0] !== B || store.shape[1] !== kvHeads || store.shape[3] !== hd || at < 0 || at + T > cap) {
        throw new Error(`kiln native: cannot write [${x.shape}] at slot ${at} of a KV store [${store.shape}]`);
      }
      const [dst, src] = [storage(store), storage(x)];
      for (let b = 0; b < B; b++)
        for (let t = 0; t < T; t++)
          for (let h = 0; h < kvHeads; h++) {
            const from = ((b * T + t) * kvHeads + h) * hd; // x [B, T, kvHeads, hd]
            dst.set(src.subarray(from, from + hd), ((b * kvHeads + h) * cap + at + t) * hd); // store [B, kvHeads, cap, hd]
          }
    },
    move(src, dst, from, n) {
      const [B, kvHeads, srcCap, hd] = src.shape;
      const dstCap = dst.shape[2];
      if (dst.shape[0] !== B || dst.shape[1] !== kvHeads || dst.shape[3] !== hd || from < 0 || from + n > srcCap || n > dstCap) {
        throw new Error(`kiln native: cannot move ${n} slots from slot ${from} of a KV store [${src.shape}] into [${dst.shape}]`);
      }
      const [s, d] = [storage(src), storage(dst)];
      for (let g = 0; g < B * kvHeads; g++) {
        const [at, to] = [(g * srcCap + from) * hd, g * dstCap * hd];
        // in place, each head's run moves toward its own start, below the next head's run
        if (s === d) d.copyWithin(to, at, at + n * hd);
        else d.set(s.subarray(at, at + n * hd), to);
      }
    },
  };
}

let registered = false;

/** Registers the "native" backend (idempotent). Throws if the addon is not built. */
export function registerNativeBackend(threads = os.cpus().length): BlasAddon {
  const blas = loadBlas();
  blas.setThreads(threads);
  if (registered) return blas;
  tf.registerBackend("native", () => new NativeBackend(), 1);
  const reference = (name: string) => tf.getKernel(name, "cpu")!.kernelFunc;
  const native: Record<string, tf.KernelFunc> = {
    BatchMatMul: makeBatchMatMul(blas, reference("BatchMatMul")),
    Add: makeBinary(blas, 0, reference("Add")),
    Sub: makeBinary(blas, 1, reference("Sub")),
    Multiply: makeBinary(blas, 2, reference("Multiply")),
    RealDiv: makeBinary(blas, 3, reference("RealDiv")),
    Softmax: makeSoftmax(blas, reference("Softmax")),
    Transpose: makeTranspose(blas, reference("Transpose")),
    GatherV2: makeGather(reference("GatherV2")),
    Slice: makeSlice(reference("Slice")),
    PadV2: makePad(reference("PadV2")),
    Concat: makeConcat(reference("Concat")),
    Exp: makeUnary(blas, 0, reference("Exp")),
    Log: makeUnary(blas, 1, reference("Log")),
    Neg: makeUnary(blas, 2, reference("Neg")),
    Sigmoid: makeUnary(blas, 3, reference("Sigmoid")),
    Rsqrt: makeUnary(blas, 4, reference("Rsqrt")),
    Square: makeUnary(blas, 5, reference("Square")),
    Sum: makeReduce(blas, 0, reference("Sum")),
    Mean: makeReduce(blas, 1, reference("Mean")),
    Max: makeReduce(blas, 2, reference("Max")),
    TopK: makeTopK(blas, reference("TopK")),
  };
  for (const k of tf.getKernelsForBackend("cpu")) {
    tf.registerKernel({ ...k, backendName: "native", kernelFunc: native[k.kernelName] ?? k.kernelFunc });
  }
  for (const [kernelName, kernelFunc] of Object.entries(fusedKernels(blas))) tf.registerKernel({ kernelName, backendName: "native", kernelFunc });
  registerKvSlots("native", kvSlots());
  registered = true;
  return blas;
}
