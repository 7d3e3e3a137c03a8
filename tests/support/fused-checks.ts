// The fused kernels of src/tensor/fused.ts against the same math composed of tfjs ops on the cpu
// backend (which registers no fused kernel): values and gradients, on awkward shapes. Shared by
// the native backend's tests (tests/native.test.ts) and the webgpu backend's (run in a child
// process by tests/webgpu.test.ts, since a process starts webgpu once).
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { ADAM_STEP, adamStep, appendHeadMajor, ATTENTION, attention, KL_ROWS, klPerPosition, KV_APPEND, LOG_SOFTMAX, logSoftmax, LORA_LINEAR, loraLinear, RMS_NORM, rmsNorm, ROPE, rope, SUM_OF_SQUARES, sumOfSquares, SWIGLU, swiglu } from "../../src/tensor/fused.js";

/** f's values on `backend`, then on the reference cpu backend (same seeds, same shapes). */
export async function onBoth(backend: string, f: () => tf.Tensor): Promise<[Float32Array, Float32Array]> {
  const run = async (name: string) => {
    await tf.setBackend(name);
    const t = tf.tidy(f);
    const v = (await t.data()) as Float32Array;
    const shape = t.shape;
    t.dispose();
    return { v, shape };
  };
  const fused = await run(backend);
  const cpu = await run("cpu");
  assert.deepEqual(fused.shape, cpu.shape, "same output shape");
  return [fused.v, cpu.v];
}

export function close(a: Float32Array, b: Float32Array, tol = 1e-5): void {
  assert.equal(a.length, b.length);
  for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i]! - b[i]!) <= tol * (1 + Math.abs(b[i]!)), `at ${i}: ${a[i]} vs ${b[i]}`);
}

/** onBoth and close in one */
export async function same(backend: string, f: () => tf.Tensor, tol = 1e-4): Promise<void> {
  close(...(await onBoth(backend, f)), tol);
}

export const r = (shape: number[], seed: number) => tf.randomNormal(shape, 0, 1, "float32", seed);

function assertFused(backend: string, ...kernels: string[]): void {
  for (const k of kernels) assert.ok(tf.getKernel(k, backend), `the ${backend} backend has ${k}`);
  assert.equal(tf.getKernel(kernels[0]!, "cpu"), undefined, "the cpu backend composes them");
}

export async function checkRmsNormAndSwiglu(backend: string): Promise<void> {
  assertFused(backend, RMS_NORM, SWIGLU);
  const w = () => tf.add(r([6], 15), 1);
  await same(backend, () => {
    const [gx, gw] = tf.grads((x: tf.Tensor, weight: tf.Tensor) => tf.sum(tf.mul(rmsNorm(x, weight, 1e-5), r([2, 5, 6], 16))))([r([2, 5, 6], 17), w()]);
    return tf.concat([rmsNorm(r([2, 5, 6], 17), w(), 1e-5).flatten(), gx!.flatten(), gw!.flatten()]);
  });
  await same(backend, () => {
    const [gg, gu] = tf.grads((g: tf.Tensor, u: tf.Tensor) => tf.sum(tf.mul(swiglu(g, u), r([4, 9], 18))))([r([4, 9], 19), r([4, 9], 20)]);
    return tf.concat([swiglu(r([4, 9], 19), r([4, 9], 20)).flatten(), gg!.flatten(), gu!.flatten()]);
  });
}

export async function checkKlRows(backend: string): Promise<void> {
  assertFused(backend, KL_ROWS);
  const teacher = () => tf.logSoftmax(tf.mul(r([2, 3, 50], 21), 3), -1);
  const mask = () => tf.tensor2d([[1, 1, 0], [1, 0, 0]]);
  await same(backend, () => {
    const [g] = tf.grads((s: tf.Tensor) => tf.sum(tf.mul(klPerPosition(s, teacher()), mask())))([tf.mul(r([2, 3, 50], 22), 2)]);
    return tf.concat([klPerPosition(tf.mul(r([2, 3, 50], 22), 2), teacher()).flatten(), g!.flatten()]);
  });
}

const ropeTables = (B: number, T: number, hd: number, seed: number) => {
  const angles = tf.mul(r([B, T, 1, hd / 2], seed), 3);
  const a = tf.concat([angles, angles], -1); // one angle per pair: [B, T, 1, hd]
  return [tf.cos(a), tf.sin(a)] as [tf.Tensor4D, tf.Tensor4D];
};

export async function checkRope(backend: string): Promise<void> {
  assertFused(backend, ROPE);
  await same(backend, () => {
    const [cos, sin] = ropeTables(2, 3, 8, 28);
    const [gx] = tf.grads((x: tf.Tensor) => tf.sum(tf.mul(rope(x as tf.Tensor4D, cos, sin), r([2, 3, 5, 8], 29))))([r([2, 3, 5, 8], 30)]);
    return tf.concat([rope(r([2, 3, 5, 8], 30) as tf.Tensor4D, cos, sin).flatten(), gx!.flatten()]);
  });
}

export async function checkLoraLinear(backend: string): Promise<void> {
  assertFused(backend, LORA_LINEAR);
  const r2 = (shape: number[], seed: number) => r(shape, seed) as tf.Tensor2D;
  await same(backend, () => {
    const w = r2([7, 5], 23);
    const probe = r([6, 5], 24);
    const [gx, ga, gb] = tf.grads((x: tf.Tensor, a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(loraLinear(x as tf.Tensor2D, w, a as tf.Tensor2D, b as tf.Tensor2D, 2.5), probe)))([
      r([6, 7], 25),
      r([3, 7], 26),
      r([5, 3], 27),
    ]);
    return tf.concat([loraLinear(r2([6, 7], 25), w, r2([3, 7], 26), r2([5, 3], 27), 2.5).flatten(), gx!.flatten(), ga!.flatten(), gb!.flatten()]);
  });
  // a few rows (webgpu's one-program path) with outputs over two workgroups and a rank above one;
  // and past the few rows, the three-program path, on the same wide shapes
  for (const N of [3, 17]) {
    await same(backend, () => loraLinear(r2([N, 70], 28), r2([70, 130], 29), r2([66, 70], 30), r2([130, 66], 31), 0.75), 1e-3);
  }
  // gradients at a bake's ranks (webgpu: a workgroup per row up to rank 32, an invocation per output
  // above) with rows, inputs and outputs past a workgroup's width and not multiples of it
  for (const rank of [8, 32, 33]) {
    await same(backend, () => {
      const w = r2([150, 70], 32);
      const probe = r([40, 70], 33);
      const [gx, ga, gb] = tf.grads((x: tf.Tensor, a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(loraLinear(x as tf.Tensor2D, w, a as tf.Tensor2D, b as tf.Tensor2D, 0.5), probe)))([
        r([40, 150], 34),
        r([rank, 150], 35),
        r([70, rank], 36),
      ]);
      return tf.concat([gx!.flatten(), ga!.flatten(), gb!.flatten()]);
    }, 1e-3);
  }
}

/** Fused attention against the composed ops: values and the gradients of q, k and v. */
async function checkAttentionShape(backend: string, B: number, T: number, S: number, heads: number, kvHeads: number, hd: number, kvHeadMajor: boolean): Promise<void> {
  const kvShape = kvHeadMajor ? [B, kvHeads, S, hd] : [B, S, kvHeads, hd];
  // causal over the last T of S keys, and the first key of batch entry 1 is padding
  const m = new Float32Array(B * T * S);
  for (let i = 0; i < m.length; i++) {
    const [b, t, s] = [Math.floor(i / (T * S)), Math.floor(i / S) % T, i % S];
    if (s > S - T + t || (b === 1 && s === 0)) m[i] = -1e9;
  }
  await same(backend, () => {
    const mask = tf.tensor3d(m, [B, T, S]);
    const probe = r([B, T, heads, hd], 71);
    const loss = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) => tf.sum(tf.mul(attention(q as tf.Tensor4D, k as tf.Tensor4D, v as tf.Tensor4D, mask, 0.2, kvHeadMajor), probe));
    const inputs = [r([B, T, heads, hd], 72), r(kvShape, 73), r(kvShape, 74)];
    const grads = tf.grads(loss)(inputs);
    const out = attention(inputs[0] as tf.Tensor4D, inputs[1] as tf.Tensor4D, inputs[2] as tf.Tensor4D, mask, 0.2, kvHeadMajor);
    return tf.concat([out.flatten(), ...grads.map((g) => g.flatten())]);
  });
}

export async function checkAttention(backend: string): Promise<void> {
  assertFused(backend, ATTENTION);
  for (const kvHeadMajor of [false, true]) {
    await checkAttentionShape(backend, 2, 5, 5, 4, 2, 8, kvHeadMajor); // training: queries are the keys
    await checkAttentionShape(backend, 2, 1, 6, 6, 3, 4, kvHeadMajor); // decode: one query, a cached past
    await checkAttentionShape(backend, 2, 3, 7, 2, 2, 4, kvHeadMajor); // one query head per KV head
  }
  // large enough to run a KV-head group per thread (native), past a workgroup's width (webgpu)
  await checkAttentionShape(backend, 2, 64, 64, 6, 2, 32, false);
  await checkAttentionShape(backend, 1, 8, 96, 4, 4, 32, true);
  // a prompt's query rows in blocks (native: 32 rows, each block's products over the keys its
  // rows see): a short last block, a prompt continuing 30 kept tokens (the 64-token case above has
  // the block with a row that sees no key: batch entry 1's first, its one key padding)
  await checkAttentionShape(backend, 2, 70, 100, 4, 2, 16, true);
  // decode on a long cache, a head width past whole 8-float blocks (native's own decode products)
  await checkAttentionShape(backend, 2, 1, 300, 9, 3, 67, true);
  // a KV cache's storage: 10 slots a head, of which the mask's 7 are read (the rest must not count)
  await same(backend, () => {
    const store = (seed: number) => tf.concat([r([2, 3, 7, 8], seed), tf.fill([2, 3, 3, 8], 1e4)], 2) as tf.Tensor4D; // [2, 3, 10, 8]
    return attention(r([2, 1, 6, 8], 75) as tf.Tensor4D, store(76), store(77), tf.zeros([2, 1, 7]) as tf.Tensor3D, 0.2, true);
  });
}

/** Rows wider than a workgroup or a thread's share, and a log-softmax's gradient. */
export async function checkWideRows(backend: string): Promise<void> {
  assertFused(backend, LOG_SOFTMAX, KL_ROWS, ROPE, SWIGLU);
  await same(backend, () => {
    const [g] = tf.grads((x: tf.Tensor) => tf.sum(tf.mul(logSoftmax(x), r([16, 4096], 59))))([r([16, 4096], 60)]);
    return tf.concat([logSoftmax(tf.mul(r([16, 4096], 60), 4)).flatten(), g!.flatten()]);
  });
  await same(backend, () => logSoftmax(r([3, 7], 61)), 1e-5);
  await same(backend, () => swiglu(r([256, 200], 51), r([256, 200], 52)));
  await same(backend, () => {
    const teacher = tf.logSoftmax(r([4, 8, 2048], 55), -1);
    const [g] = tf.grads((s: tf.Tensor) => tf.sum(klPerPosition(s, teacher)))([r([4, 8, 2048], 56)]);
    return tf.concat([klPerPosition(r([4, 8, 2048], 56), teacher).flatten(), g!.flatten()]);
  });
  await same(backend, () => {
    const [cos, sin] = ropeTables(2, 64, 64, 57);
    return rope(r([2, 64, 8, 64], 58) as tf.Tensor4D, cos, sin);
  });
}

/** The optimizer's kernels: a gradient norm over many tensors (more than one program's worth), and Adam steps clipped or not. */
export async function checkAdam(backend: string): Promise<void> {
  assertFused(backend, SUM_OF_SQUARES, ADAM_STEP);
  await same(backend, () => {
    const value = r([3, 5], 80);
    const grad = tf.mul(r([3, 5], 81), 4);
    const moments = tf.stack([r([3, 5], 82), tf.abs(r([3, 5], 83))]); // [2, 3, 5]: m, v
    const others = Array.from({ length: 12 }, (_, i) => r([i + 1, 3], 84 + i));
    const norm = tf.sqrt(sumOfSquares([grad, ...others])) as tf.Scalar;
    const out: tf.Tensor[] = [norm.reshape([1]), sumOfSquares([value]).reshape([1]), sumOfSquares([grad, tf.zeros([0, 3]), value]).reshape([1])];
    for (const clipNorm of [0, 1, 1e9]) {
      const [next, m] = adamStep(value, grad, moments, norm, { learningRate: 0.05, beta1: 0.9, beta2: 0.999, epsilon: 1e-7, c1: 1 - 0.9 ** 3, c2: 1 - 0.999 ** 3, clipNorm });
      assert.deepEqual(m.shape, [2, 3, 5]);
      out.push(next.flatten(), m.flatten());
    }
    return tf.concat(out);
  });
}

/** The KV cache's append: head-major past, new rows as the projection gives them. */
export async function checkKvAppend(backend: string): Promise<void> {
  assertFused(backend, KV_APPEND);
  await same(backend, () => appendHeadMajor(r([2, 3, 5, 4], 100) as tf.Tensor4D, r([2, 1, 3, 4], 101) as tf.Tensor4D), 1e-6); // decode: one new token
  await same(backend, () => appendHeadMajor(r([1, 2, 7, 8], 102) as tf.Tensor4D, r([1, 6, 2, 8], 103) as tf.Tensor4D), 1e-6); // a prompt continuing a kept prefix
  // nothing new, or nothing kept: an empty tensor must not be bound (it read as zeros)
  await same(backend, () => appendHeadMajor(r([1, 2, 3, 4], 104) as tf.Tensor4D, tf.zeros([1, 0, 2, 4]) as tf.Tensor4D), 1e-6);
  await same(backend, () => appendHeadMajor(tf.zeros([1, 2, 0, 4]) as tf.Tensor4D, r([1, 3, 2, 4], 105) as tf.Tensor4D), 1e-6);
}

/**
 * Weight gradients summed over many rows (webgpu adds them in chunks of rows; one long loop per
 * invocation stopped at 65,535 rows on Mesa's software renderer): RMSNorm's weight, LoRA's factors.
 */
export async function checkManyRows(backend: string): Promise<void> {
  assertFused(backend, RMS_NORM, LORA_LINEAR);
  await same(backend, () => {
    const [gx, gw] = tf.grads((x: tf.Tensor, w: tf.Tensor) => tf.sum(tf.mul(rmsNorm(x, w, 1e-6), r([70_001, 3], 110))))([r([70_001, 3], 111), tf.add(r([3], 112), 1)]);
    return tf.concat([gx!.flatten(), gw!.flatten()]);
  }, 2e-4);
  await same(backend, () => {
    const w = r([7, 5], 113) as tf.Tensor2D;
    const probe = r([5000, 5], 114);
    const [ga, gb] = tf.grads((a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(loraLinear(r([5000, 7], 115) as tf.Tensor2D, w, a as tf.Tensor2D, b as tf.Tensor2D, 0.5), probe)))([r([3, 7], 116), r([5, 3], 117)]);
    return tf.concat([ga!.flatten(), gb!.flatten()]);
  }, 2e-4);
}
