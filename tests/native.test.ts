// The native backend's kernels (OpenBLAS matmul, C elementwise/softmax/transpose/unary, block
// copies for slice/pad/gather) against tfjs's reference cpu kernels on awkward shapes.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { Worker } from "node:worker_threads";
import { bakePoolMb, nativeAddonPath, registerNativeBackend, sizeOutputPool } from "../src/tensor/native.js";
import { logSoftmax } from "../src/tensor/fused.js";
import { checkAttention, checkKlRows, close, r, checkLoraLinear, checkManyRows, checkRmsNormAndSwiglu, checkRope, checkWideRows } from "./support/fused-checks.js";

registerNativeBackend(2);

async function both(f: () => tf.Tensor): Promise<[Float32Array, Float32Array, number[]]> {
  await tf.setBackend("native");
  const n = tf.tidy(f);
  const nv = n.dataSync() as Float32Array;
  const shape = n.shape;
  n.dispose();
  await tf.setBackend("cpu");
  const c = tf.tidy(f);
  const cv = c.dataSync() as Float32Array;
  assert.deepEqual(c.shape, shape, "same output shape");
  c.dispose();
  return [nv, cv, shape];
}


test("batched matmul with transposes and a broadcast batch", async () => {
  for (const [ta, tb] of [[false, false], [true, false], [false, true], [true, true]] as const) {
    const [n, c] = await both(() => tf.matMul(r(ta ? [2, 3, 7, 5] : [2, 3, 5, 7], 1), r(tb ? [2, 3, 4, 7] : [2, 3, 7, 4], 2), ta, tb));
    close(n, c, 1e-4);
  }
  // one row or one column (decode's matrix-vector products, run by sgemv)
  for (const [ta, tb] of [[false, false], [true, false], [false, true], [true, true]] as const) {
    close(...((await both(() => tf.matMul(r(ta ? [7, 1] : [1, 7], 40), r(tb ? [9, 7] : [7, 9], 41), ta, tb))).slice(0, 2) as [Float32Array, Float32Array]), 1e-4);
    close(...((await both(() => tf.matMul(r(ta ? [7, 6] : [6, 7], 42), r(tb ? [1, 7] : [7, 1], 43), ta, tb))).slice(0, 2) as [Float32Array, Float32Array]), 1e-4);
    close(...((await both(() => tf.matMul(r(ta ? [3, 7, 1] : [3, 1, 7], 44), r(tb ? [3, 9, 7] : [3, 7, 9], 45), ta, tb))).slice(0, 2) as [Float32Array, Float32Array]), 1e-4);
  }
  // row blocks against one matrix (folded into one sgemm), with and without a transposed B
  for (const [bShape, tb] of [[[7, 4], false], [[4, 7], true], [[1, 7, 4], false], [[1, 4, 7], true]] as const) {
    const [n, c] = await both(() => tf.matMul(r([6, 5, 7], 3), r([...bShape], 4), false, tb));
    close(n, c, 1e-4);
  }
});

test("softmax and log-softmax over values far apart (masked, underflowing, -Infinity, NaN) equal tfjs's", async () => {
  // kiln's own vector exp: 0 below its floor, NaN through, rows of every width (tails under 8)
  const rows = [
    [0, -1e9, -100, -87.4, -86.4, -20, 5, 1e-3, -1e9, -1e9, 3, -50, -88],
    [-1e9, -1e9, -1e9, -1e9, -1e9, -1e9, -1e9, -1e9, -1e9, -1e9, -1e9, -1e9, -1e9],
    [1, 2, -Infinity, 4, -Infinity, 6, 7, 8, 9, 10, 11, 12, -Infinity],
    [1, 2, NaN, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
    [NaN, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
    [-Infinity, -Infinity, -Infinity, -Infinity, -Infinity, -Infinity, -Infinity, -Infinity, -Infinity, -Infinity, -Infinity, -Infinity, -Infinity],
    [80, -80, 40, 0, 87, -87, 86, -86, 88, -88, 89, -89, 0],
  ];
  for (const width of [13, 8, 3]) {
    for (const op of [(x: tf.Tensor) => tf.softmax(x), (x: tf.Tensor) => logSoftmax(x)]) {
      const [n, c] = await both(() => op(tf.tensor2d(rows.map((row) => row.slice(0, width)))));
      for (let i = 0; i < c.length; i++) {
        if (Number.isNaN(c[i]!)) assert.ok(Number.isNaN(n[i]!), `at ${i}: ${n[i]} where tfjs gives NaN`);
        else if (!Number.isFinite(c[i]!)) assert.equal(n[i], c[i], `at ${i}`);
        else assert.ok(Math.abs(n[i]! - c[i]!) <= 1e-6 * (1 + Math.abs(c[i]!)), `at ${i}: ${n[i]} vs ${c[i]}`);
      }
    }
  }
});

test("binary ops broadcast like numpy, scalars stay scalars", async () => {
  const cases: [number[], number[]][] = [[[2, 3, 4], [4]], [[2, 1, 4], [3, 1]], [[5], [2, 3, 5]], [[], [3]], [[], []], [[2, 3, 1, 4], [2, 3, 6, 4]]];
  for (const [as, bs] of cases) {
    for (const op of [tf.add, tf.sub, tf.mul, tf.div]) {
      const [n, c] = await both(() => op(r(as, 5), tf.add(r(bs, 6), 3)));
      close(n, c);
    }
  }
});

test("softmax, transpose, unary ops, slice, pad, concat and row gather", async () => {
  close(...(await both(() => tf.softmax(r([3, 4, 50], 7)))).slice(0, 2) as [Float32Array, Float32Array]);
  close(...(await both(() => tf.transpose(r([2, 3, 4, 5], 8), [0, 2, 3, 1]))).slice(0, 2) as [Float32Array, Float32Array]);
  for (const op of [tf.exp, tf.neg, tf.sigmoid, tf.square]) close(...(await both(() => op(r([7, 9], 9)))).slice(0, 2) as [Float32Array, Float32Array]);
  for (const op of [tf.log, tf.rsqrt]) close(...(await both(() => op(tf.abs(r([7, 9], 10))))).slice(0, 2) as [Float32Array, Float32Array]);
  close(...(await both(() => tf.slice(r([2, 5, 6], 11), [1, 1, 2], [1, 3, -1]))).slice(0, 2) as [Float32Array, Float32Array]);
  close(...(await both(() => tf.pad(r([2, 3], 12), [[1, 0], [2, 3]]))).slice(0, 2) as [Float32Array, Float32Array]);
  close(...(await both(() => tf.pad(r([2, 3], 12), [[1, 0], [2, 3]], 1.5))).slice(0, 2) as [Float32Array, Float32Array]);
  for (const axis of [0, 1, 2, -1]) close(...(await both(() => tf.concat([r([2, 3, 4], 33), r([2, 3, 4], 34), r([2, 3, 4], 35)], axis))).slice(0, 2) as [Float32Array, Float32Array]);
  close(...(await both(() => tf.concat([r([1, 3, 5, 4], 36), r([1, 3, 1, 4], 37)], 2))).slice(0, 2) as [Float32Array, Float32Array]);
  close(...(await both(() => tf.gather(r([10, 4], 13), tf.tensor2d([[3, 0], [9, 3]], [2, 2], "int32")))).slice(0, 2) as [Float32Array, Float32Array]);
});

test("gradients through the native kernels equal the reference", async () => {
  const f = () => {
    const x = r([2, 3, 8], 14);
    const w = r([8, 5], 15);
    return tf.grad((t: tf.Tensor) => tf.sum(tf.logSoftmax(tf.matMul(t.reshape([6, 8]), w).slice([1, 0], [4, 5]))))(x);
  };
  close(...(await both(f)).slice(0, 2) as [Float32Array, Float32Array], 1e-4);
});

test("sum, mean and max over any contiguous run of axes, kept or dropped", async () => {
  const x = () => r([2, 3, 4, 5], 14);
  const axes: (number | number[])[] = [-1, 3, [2, 3], 0, [0, 1], 1, [1, 2], [0, 1, 2, 3], [-2, -1]];
  for (const axis of axes) {
    for (const keep of [false, true]) {
      close(...((await both(() => tf.sum(x(), axis, keep))).slice(0, 2) as [Float32Array, Float32Array]), 1e-5);
      close(...((await both(() => tf.mean(x(), axis, keep))).slice(0, 2) as [Float32Array, Float32Array]), 1e-5);
      close(...((await both(() => tf.max(x(), axis, keep))).slice(0, 2) as [Float32Array, Float32Array]), 0);
      const withNaN = () => tf.where(tf.greater(x(), 1.5), tf.fill([2, 3, 4, 5], NaN), x());
      const [nm, cm] = await both(() => tf.max(withNaN(), axis, keep));
      assert.deepEqual([...nm].map(Number.isNaN), [...cm].map(Number.isNaN), "NaN propagates through max as in tfjs");
    }
  }
  // non-contiguous axes go to tfjs's own kernel
  close(...((await both(() => tf.sum(x(), [0, 2]))).slice(0, 2) as [Float32Array, Float32Array]), 1e-5);
});

test("fused RMSNorm and SwiGLU equal the composed ops, values and gradients", () => checkRmsNormAndSwiglu("native"));

test("fused KL per position equals logSoftmax composed, value and gradient (masked rows get none)", () => checkKlRows("native"));

test("fused LoRA linear and RoPE equal the composed ops, values and gradients", async () => {
  await checkLoraLinear("native");
  await checkRope("native");
});

test("fused RMSNorm's and LoRA's weight gradients over many rows equal the composed ops", () => checkManyRows("native"));

test("fused attention equals the composed ops, values and gradients, both K/V layouts, grouped heads", () => checkAttention("native"));

test("row kernels large enough to be split across threads equal the reference", async () => {
  await checkWideRows("native");
  close(...((await both(() => tf.softmax(r([64, 1024], 50)))).slice(0, 2) as [Float32Array, Float32Array]));
  for (const [as, bs] of [[[256, 200], [256, 200]], [[64, 32, 48], [32, 1]], [[48], [64, 32, 48]], [[2, 1, 128, 64], [2, 9, 128, 1]]] as const) {
    for (const op of [tf.add, tf.sub, tf.mul, tf.div]) close(...((await both(() => op(r([...as], 62), tf.add(r([...bs], 63), 3)))).slice(0, 2) as [Float32Array, Float32Array]));
  }
  close(...((await both(() => tf.transpose(r([8, 64, 9, 16], 64), [0, 2, 1, 3]))).slice(0, 2) as [Float32Array, Float32Array]));
  close(...((await both(() => tf.transpose(r([2, 128, 3, 3, 64], 65), [0, 2, 3, 1, 4]))).slice(0, 2) as [Float32Array, Float32Array]));
});

test("threaded kernels called from several threads at once (Node workers sharing the addon) each get their own result", async () => {
  // The addon keeps its worker threads between calls for one caller at a time; a caller that finds
  // them busy splits its rows over threads of its own. Each caller here computes RoPE on a million
  // values (split across threads) with its own inputs, over and over, and checks every result.
  const source = `
    const { parentPort, workerData } = require("node:worker_threads");
    const blas = require(workerData.addon);
    blas.setThreads(2);
    const [rows, heads, hd] = [4096, 4, 64];
    const x = new Float32Array(rows * heads * hd).map((_, i) => Math.sin(i * 0.37 + workerData.seed));
    const c = new Float32Array(rows * hd).map((_, i) => Math.cos(i * 0.11 + workerData.seed));
    const s = new Float32Array(rows * hd).map((_, i) => Math.sin(i * 0.23 - workerData.seed));
    const want = new Float32Array(x.length);
    const half = hd / 2;
    for (let t = 0; t < rows; t++) for (let h = 0; h < heads; h++) for (let i = 0; i < hd; i++) {
      const at = (t * heads + h) * hd;
      const rotated = i < half ? -x[at + i + half] : x[at + i - half];
      want[at + i] = x[at + i] * c[t * hd + i] + rotated * s[t * hd + i];
    }
    let worst = 0;
    const y = new Float32Array(x.length);
    for (let n = 0; n < 40; n++) {
      y.fill(NaN);
      blas.rope(x, c, s, rows, heads, hd, 1, y);
      for (let i = 0; i < y.length; i++) worst = Math.max(worst, Math.abs(y[i] - want[i]) || (y[i] === want[i] ? 0 : Infinity));
    }
    parentPort.postMessage(worst);
  `;
  const results = await Promise.all(
    [1, 2, 3].map(
      (seed) =>
        new Promise<number>((resolve, reject) => {
          const w = new Worker(source, { eval: true, workerData: { addon: nativeAddonPath(), seed } });
          w.once("message", resolve);
          w.once("error", reject);
        }),
    ),
  );
  for (const worst of results) assert.ok(worst < 1e-5, `a caller's RoPE is off by ${worst}`);
});

test("reused output arrays never change a live tensor, a view of one, or an array handed out", async () => {
  await tf.setBackend("native");
  const big = [64, 512]; // above the pool's minimum size
  const fresh = (seed: number) => tf.add(r(big, seed), 1); // a native kernel's output
  // an array read out with dataSync is the tensor's own array: it must not be reused
  const a = fresh(81);
  const read = a.dataSync() as Float32Array;
  const readCopy = read.slice();
  a.dispose();
  // views: split/unstack slice through tfjs's own kernels, which return subarrays of the input
  const b = fresh(82);
  const parts = tf.split(b, 2, 0);
  const rows = tf.unstack(b.reshape([8, 8, 512]));
  const partsCopy = parts.map((p) => p.dataSync().slice());
  const rowsCopy = rows.map((p) => p.dataSync().slice());
  const reshaped = b.reshape([512, 64]); // shares b's data
  const reshapedCopy = reshaped.dataSync().slice();
  b.dispose();
  // churn: many outputs of the same size, each disposed, so the pool hands arrays back out
  const backend = tf.backend() as unknown as { pool: { take(n: number): Float32Array } };
  for (let i = 0; i < 20; i++) tf.tidy(() => tf.mul(fresh(90 + i), 3)).dispose();
  assert.deepEqual(read, readCopy, "an array handed out by dataSync stays as it was");
  parts.forEach((p, i) => assert.deepEqual(p.dataSync(), partsCopy[i]));
  rows.forEach((p, i) => assert.deepEqual(p.dataSync(), rowsCopy[i]));
  assert.deepEqual(reshaped.dataSync(), reshapedCopy);
  // the pool does reuse: an array released by a disposed tensor comes back
  const c = fresh(120);
  const cValues = (tf.backend() as unknown as { data: { get(id: object): { values: Float32Array } } }).data.get(c.dataId).values;
  c.dispose();
  assert.equal(backend.pool.take(64 * 512), cValues, "a disposed output's array is reused");
  tf.dispose([...parts, ...rows, reshaped]);
  await tf.setBackend("cpu");
});

test("a bake's output pool is sized by its model: 256 MB for the embedded 5M model, 2 GB for a 135M one; KILN_OUTPUT_POOL_MB still rules", async () => {
  await tf.setBackend("native");
  const pool = (tf.backend() as unknown as { pool: { capBytes: number } }).pool;
  const saved = pool.capBytes;
  const env = process.env.KILN_OUTPUT_POOL_MB;
  try {
    delete process.env.KILN_OUTPUT_POOL_MB;
    assert.deepEqual([bakePoolMb(4 * 5.1e6), bakePoolMb(4 * 50e6), bakePoolMb(4 * 134.5e6)], [256, 1526, 2048]);
    sizeOutputPool("bake", 4 * 5.1e6);
    assert.equal(pool.capBytes, 256 * 1024 * 1024);
    sizeOutputPool("bake");
    assert.equal(pool.capBytes, 2048 * 1024 * 1024, "without a model's size: the most a bake keeps");
    process.env.KILN_OUTPUT_POOL_MB = "64";
    sizeOutputPool("bake", 4 * 134.5e6);
    assert.equal(pool.capBytes, 64 * 1024 * 1024);
  } finally {
    if (env === undefined) delete process.env.KILN_OUTPUT_POOL_MB;
    else process.env.KILN_OUTPUT_POOL_MB = env;
    pool.capBytes = saved;
  }
});

test("the output pool keeps at most its cap, dropping the sizes unused longest", async () => {
  await tf.setBackend("native");
  const pool = (tf.backend() as unknown as { pool: { capBytes: number; take(n: number): Float32Array } }).pool;
  const valuesOf = (t: tf.Tensor) => (tf.backend() as unknown as { data: { get(id: object): { values: Float32Array } } }).data.get(t.dataId).values;
  const saved = pool.capBytes;
  const [small, large] = [1 << 15, 1 << 17]; // floats
  pool.capBytes = 2 * small * 4;
  const make = (n: number) => tf.add(tf.ones([n]), 1);
  const a = make(small);
  const b = make(small);
  const [va, vb] = [valuesOf(a), valuesOf(b)];
  tf.dispose([a, b]); // the pool is full: two small arrays
  const c = make(large); // one large array alone exceeds the cap: not kept, nothing evicted
  c.dispose();
  const d = make(small / 2); // needs room: one small array goes
  const vd = valuesOf(d);
  d.dispose();
  const got = [pool.take(small), pool.take(small)];
  assert.equal(got.filter((x) => x === va || x === vb).length, 1, "one of the two small arrays was evicted");
  assert.equal(pool.take(small / 2), vd, "the newest size stays");
  pool.capBytes = saved;
  const { sizeOutputPool, OUTPUT_POOL_MB } = await import("../src/tensor/native.js");
  sizeOutputPool("bake");
  assert.equal(pool.capBytes, OUTPUT_POOL_MB.bake * 1024 * 1024);
  sizeOutputPool("serve");
  assert.equal(pool.capBytes, OUTPUT_POOL_MB.serve * 1024 * 1024);
  await tf.setBackend("cpu");
});

test("kernels overwrite every element of a reused output array (recycled arrays hold NaN here)", async () => {
  const { loraLinear, attention } = await import("../src/tensor/fused.js");
  await tf.setBackend("native");
  const backend = tf.backend() as unknown as { pool: { take(n: number): Float32Array; release(v: Float32Array): void; stored(v: Float32Array): void } };
  // poison the pool: arrays of the sizes the products below need, full of NaN
  const poison = (n: number) => {
    for (let i = 0; i < 3; i++) {
      const a = backend.pool.take(n);
      a.fill(NaN);
      backend.pool.stored(a); // as if it had backed one tensor
      backend.pool.release(a);
    }
  };
  const finite = (t: tf.Tensor, what: string) => assert.ok((t.dataSync() as Float32Array).every(Number.isFinite), what);
  poison(1 * 1 << 15);
  finite(tf.matMul(tf.ones([1, 64]), tf.ones([64, 1 << 15])), "one-row product (sgemv)");
  poison(256 * 128);
  finite(tf.matMul(tf.ones([256, 64]), tf.ones([64, 128])), "product");
  poison(256 * 128);
  finite(tf.matMul(tf.ones([256, 0]), tf.ones([0, 128])), "empty inner dimension: zeros");
  poison(128 * 256);
  const lora = loraLinear(tf.ones([128, 64]) as tf.Tensor2D, tf.ones([64, 256]) as tf.Tensor2D, tf.ones([0, 64]) as tf.Tensor2D, tf.ones([256, 0]) as tf.Tensor2D, 2);
  finite(lora, "LoRA of rank 0");
  poison(2 * 8 * 4 * 256);
  poison(2 * 4 * 8 * 8);
  const q = tf.ones([2, 8, 4, 256]) as tf.Tensor4D;
  finite(attention(q, tf.ones([2, 8, 2, 256]) as tf.Tensor4D, tf.ones([2, 8, 2, 256]) as tf.Tensor4D, tf.zeros([2, 8, 8]) as tf.Tensor3D, 0.1, false), "attention");
  await tf.setBackend("cpu");
});

test("batched matmul broadcasts batch dims like tfjs, and an empty batch is empty", async () => {
  for (const [as, bs] of [
    [[1, 1, 4, 5], [3, 5, 6]],
    [[2, 3, 4, 5], [5, 6]],
    [[0, 4, 5], [0, 5, 6]],
  ] as const) {
    const [n, c, shape] = await both(() => tf.matMul(r([...as], 91), r([...bs], 92)));
    close(n, c);
    assert.ok(shape.length === Math.max(as.length, bs.length));
  }
});

test("native top-K equals tfjs's, ties included (lower index first), on rows large enough to thread", async () => {
  const ties = () => tf.round(tf.mul(r([3, 50], 95), 2)); // few distinct values: many ties
  for (const [f, k] of [
    [ties, 1],
    [ties, 7],
    [ties, 50],
    [() => r([64, 4096], 96), 20],
  ] as const) {
    for (const part of [0, 1]) {
      const [n, c] = await both(() => tf.topk(f(), k)[part === 0 ? "values" : "indices"].cast("float32"));
      assert.deepEqual(n, c, `top-${k} ${part === 0 ? "values" : "indices"}`);
    }
  }
});

test("fused top-K KL equals the composed ops through klSum, value and gradient, padded positions included", async () => {
  const { teacherTargets, stackTargets, klSum, disposeTargets } = await import("../src/bake/kl.js");
  const [R, V, K] = [5, 300, 8];
  // the targets are computed on each backend in turn, then the loss on the same backend
  const mode = { kind: "topk", k: K } as const;
  const targetsOn = async (backend: string) => {
    await tf.setBackend(backend);
    return Promise.all([97, 98].map((seed) => teacherTargets(tf.mul(r([R, V], seed), 3) as tf.Tensor2D, mode)));
  };
  const perBackend = { native: await targetsOn("native"), cpu: await targetsOn("cpu") };
  const f = () => {
    const targets = perBackend[tf.getBackend() as "native" | "cpu"];
    const batch = stackTargets(targets, [R, 3], R, V, mode); // the second row has 2 padded positions
    const student = r([2, R, V], 99);
    const [g] = tf.grads((s: tf.Tensor) => klSum(s as tf.Tensor3D, batch))([student]);
    const out = tf.concat([klSum(student as tf.Tensor3D, batch).reshape([1]), g!.flatten()]);
    disposeTargets(batch);
    return out;
  };
  const [n, c] = await both(f);
  close(n, c, 1e-4);
  assert.ok(n.some((x, i) => i > 0 && x !== 0), "the gradient is not all zeros");
});

test("a few rows through a weight (batched decode) equal the reference, and a row's result does not depend on the rows beside it", async () => {
  await tf.setBackend("native");
  // rows 2-8 (past 4, a second pass over the weight), widths with a short last chunk, and one
  // big enough to split across threads (an LM head)
  for (const [K, N] of [[576, 1536 + 7], [64, 128], [576, 49152]] as const) {
    const w = r([K, N], 70);
    for (const M of [2, 3, 4, 5, 8]) {
      const x = r([M, K], 71 + M);
      const [n, c] = await both(() => tf.matMul(x, w));
      close(n, c, 1e-4);
      await tf.setBackend("native");
      // each row's sums run over k in one order whatever rows share the product: a batched row's
      // logits do not change as other rows join or leave the batch
      const together = tf.matMul(x, w).dataSync() as Float32Array;
      for (let m = 0; m < M; m++) {
        const pair = tf.tidy(() => tf.matMul(tf.concat([tf.slice(x, [m, 0], [1, K]), tf.slice(x, [(m + 1) % M, 0], [1, K])]), w)).dataSync() as Float32Array; // [2, N]
        assert.deepEqual(together.subarray(m * N, (m + 1) * N), pair.subarray(0, N), `row ${m} of ${M} (${K}x${N})`);
      }
      x.dispose();
    }
    w.dispose();
  }
});

test("the KV cache written in place (native) gives the logits of appending by concat (cpu), as its storage grows and sliding layers let slots go", async () => {
  const { loadModel } = await import("../src/model/load.js");
  const { Decoder } = await import("../src/model/decoder.js");
  const { KVCache } = await import("../src/model/kv-cache.js");
  const { fixtureDir } = await import("./support/paths.js");
  await tf.setBackend("native");
  const llama = loadModel(fixtureDir("llama"));
  const weights = [...llama.decoder.weights].map(([name, t]) => [name, (t.dataSync() as Float32Array).slice(), t.shape] as const);
  const config = { ...llama.config, slidingWindows: llama.config.slidingWindows.map((w, l) => (l % 2 ? 24 : w)) }; // every other layer slides
  llama.dispose();
  const ids = Array.from({ length: 320 }, (_, i) => (i * 37 + 11) % config.vocabSize);
  const kept = new Map<string, boolean>(); // per backend: whether a step kept the cache's own tensors
  const f = () => {
    const decoder = new Decoder(config, new Map(weights.map(([name, values, shape]) => [name, tf.tensor(values, shape)])));
    const cache = new KVCache(2);
    const steps: tf.Tensor[] = [];
    // two rows: a 20-token prompt, then a token a step with a 7-token chunk now and then, well
    // past the storage's first capacity (20 + 128 slots), so it grows, and the sliding layers
    // let go of slots when it is full
    for (let t = 0; t < ids.length; ) {
      const n = t === 0 ? 20 : t % 50 === 0 ? 7 : 1;
      steps.push(decoder.forward({ ids: [ids.slice(t, t + n), ids.slice(t, t + n).reverse()] }, { cache, logitsFrom: n - 1 }).reshape([-1])); // [2 * V]
      t += n;
    }
    const before = cache.tensors;
    decoder.forward({ ids: [[1], [2]] }, { cache });
    kept.set(tf.getBackend(), cache.tensors.every((t, i) => t === before[i]));
    assert.ok(Math.min(...cache.dropped.filter((_, l) => l % 2)) > 0, `the sliding layers let slots go (${cache.dropped})`);
    cache.dispose();
    return tf.concat(steps);
  };
  const [n, c] = await both(f);
  close(n, c, 1e-4);
  assert.deepEqual(Object.fromEntries(kept), { native: true, cpu: false }, "a step writes into the storage in place on native only");
});
