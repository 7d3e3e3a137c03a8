// Fused operations the decoder uses: one kernel where a backend registers one (kiln's native
// backend does, src/tensor/native.ts), the same math composed of tfjs ops everywhere else.
// Both paths are checked against each other in tests/native.test.ts.
import { tf } from "./backend.js";

export const RMS_NORM = "KilnRmsNorm";
export const RMS_NORM_GRAD = "KilnRmsNormGrad";
export const SWIGLU = "KilnSwiGLU";
export const SWIGLU_GRAD = "KilnSwiGLUGrad";
export const KL_ROWS = "KilnKlRows";
export const KL_ROWS_GRAD = "KilnKlRowsGrad";
export const LORA_LINEAR = "KilnLoraLinear";
export const LORA_LINEAR_GRAD = "KilnLoraLinearGrad";
export const ROPE = "KilnRope";
export const LOG_SOFTMAX = "KilnLogSoftmax";
export const ATTENTION = "KilnAttention";
export const ATTENTION_GRAD = "KilnAttentionGrad";
export const KL_TOPK_ROWS = "KilnKlTopKRows";
export const KL_TOPK_ROWS_GRAD = "KilnKlTopKRowsGrad";
export const SUM_OF_SQUARES = "KilnSumOfSquares";
export const ADAM_STEP = "KilnAdamStep";
export const KV_APPEND = "KilnKvAppend";

/** The least student mass the top-K KL takes a log of for the teacher's tail (and its targets' floor). */
export const KL_TAIL_FLOOR = 1e-12;

export function fusedOn(kernel: string): boolean {
  return tf.getKernel(kernel, tf.getBackend()) !== undefined;
}

const allFloat32 = (...ts: tf.Tensor[]) => ts.every((t) => t.dtype === "float32");

/** x * rsqrt(mean(x^2, -1) + eps) * weight; x: [..., H], weight: [H] */
export function rmsNorm(x: tf.Tensor, weight: tf.Tensor, eps: number): tf.Tensor {
  const H = x.shape.at(-1);
  if (fusedOn(RMS_NORM) && x.dtype === "float32" && weight.dtype === "float32" && weight.shape.length === 1 && weight.shape[0] === H) {
    return tf.engine().runKernel(RMS_NORM, { x, weight }, { eps } as unknown as tf.NamedAttrMap) as tf.Tensor;
  }
  const variance = tf.mean(tf.square(x), -1, true); // [..., 1]
  return tf.mul(tf.mul(x, tf.rsqrt(tf.add(variance, eps))), weight);
}

/** silu(gate) * up, the SwiGLU MLP's gating; gate, up: [N, F] */
export function swiglu(gate: tf.Tensor, up: tf.Tensor): tf.Tensor {
  if (fusedOn(SWIGLU) && gate.dtype === "float32" && up.dtype === "float32" && tf.util.arraysEqual(gate.shape, up.shape)) {
    return tf.engine().runKernel(SWIGLU, { gate, up }) as tf.Tensor;
  }
  return tf.mul(tf.mul(gate, tf.sigmoid(gate)), up);
}

/**
 * KL(teacher || student) per position: sum over the vocabulary of p * (log p - log q), with
 * q = softmax(logits). logits, teacherLogProbs: [..., V] -> [...]. Gradient to logits only (the
 * teacher is fixed): dy * (q - p).
 */
export function klPerPosition(logits: tf.Tensor, teacherLogProbs: tf.Tensor): tf.Tensor {
  if (fusedOn(KL_ROWS) && logits.dtype === "float32" && teacherLogProbs.dtype === "float32" && tf.util.arraysEqual(logits.shape, teacherLogProbs.shape)) {
    return tf.engine().runKernel(KL_ROWS, { logits, teacherLogProbs }) as tf.Tensor;
  }
  const logq = tf.logSoftmax(logits, -1);
  return tf.sum(tf.mul(tf.exp(teacherLogProbs), tf.sub(teacherLogProbs, logq)), -1);
}

/**
 * KL(teacher || student) per position against the teacher's top K tokens and the rest of its
 * mass: sum_k p_k (log p_k - log q_k) + p_t (log p_t - log max(1 - sum_k q_k, KL_TAIL_FLOOR)),
 * q = softmax(logits). logits: [B, R, V]; topLogProbs: [B, R, K]; flatIndices: [B*R*K] ids into
 * the flattened logits, distinct within a position; tailLogProb: [B, R] (log p_t) -> [B, R].
 * Gradient to the logits only (the teacher is fixed).
 */
export function klTopKPerPosition(logits: tf.Tensor3D, topLogProbs: tf.Tensor3D, flatIndices: tf.Tensor1D, tailLogProb: tf.Tensor2D): tf.Tensor2D {
  if (fusedOn(KL_TOPK_ROWS) && allFloat32(logits, topLogProbs, tailLogProb) && flatIndices.dtype === "int32") {
    return tf.engine().runKernel(KL_TOPK_ROWS, { logits, topLogProbs, flatIndices, tailLogProb }) as tf.Tensor2D;
  }
  const [B, R, K] = topLogProbs.shape;
  const logq = logSoftmax(logits); // [B, R, V]
  const logqTop = gatherFlat(logq.reshape([-1]), flatIndices).reshape([B, R, K]); // [B, R, K]
  const qTail = tf.log(tf.maximum(tf.sub(1, tf.sum(tf.exp(logqTop), -1)), KL_TAIL_FLOOR)); // [B, R]
  const top = tf.sum(tf.mul(tf.exp(topLogProbs), tf.sub(topLogProbs, logqTop)), -1); // [B, R]
  return tf.add(top, tf.mul(tf.exp(tailLogProb), tf.sub(tailLogProb, qTail))) as tf.Tensor2D;
}

/**
 * x[idx] with a gradient that scatters back. tf.gather's own gradient needs UnsortedSegmentSum,
 * which the wasm backend lacks; the top-K ids are distinct, so a scatter is exact.
 */
function gatherFlat(x: tf.Tensor, idx: tf.Tensor1D): tf.Tensor {
  const f = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const input = args[0] as tf.Tensor;
    return {
      value: tf.gather(input, idx),
      gradFunc: (dy: tf.Tensor | tf.Tensor[]) => tf.scatterND(idx.reshape([-1, 1]), dy as tf.Tensor, input.shape),
    };
  });
  return f(x);
}

/**
 * A frozen linear layer with a LoRA adapter: x @ w + scale * (x @ a^T) @ b^T.
 * x: [N, in], w: [in, out] (kiln's layout), a: [r, in], b: [out, r] -> [N, out]. The gradient
 * flows to x, a and b (w is frozen).
 */
export function loraLinear(x: tf.Tensor2D, w: tf.Tensor2D, a: tf.Tensor2D, b: tf.Tensor2D, scale: number): tf.Tensor2D {
  if (fusedOn(LORA_LINEAR) && allFloat32(x, w, a, b)) {
    return tf.engine().runKernel(LORA_LINEAR, { x, w, a, b }, { scale } as unknown as tf.NamedAttrMap) as tf.Tensor2D;
  }
  return tf.add(tf.matMul(x, w), tf.matMul(tf.matMul(x, a, false, true), tf.mul(b, scale), false, true));
}

/**
 * Rotary embedding, rotate_half layout: x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1].
 * x: [B, T, heads, hd]; cos, sin: [B, T, 1, hd] with sin[i] = sin[i + hd/2] (one angle per pair).
 */
export function rope(x: tf.Tensor4D, cos: tf.Tensor4D, sin: tf.Tensor4D): tf.Tensor4D {
  if (fusedOn(ROPE) && allFloat32(x, cos, sin)) {
    return tf.engine().runKernel(ROPE, { x, cos, sin }, { sign: 1 } as unknown as tf.NamedAttrMap) as tf.Tensor4D;
  }
  const [B, T, H, hd] = x.shape;
  const rotated = tf.matMul(x.reshape([B * T * H, hd]) as tf.Tensor2D, rotateHalfMatrix(hd)).reshape([B, T, H, hd]); // [B, T, heads, hd]
  return tf.add(tf.mul(x, cos), tf.mul(rotated, sin));
}

const rotations = new Map<number, tf.Tensor2D>();

/**
 * R with (x @ R) = rotate_half(x): R[i + half][i] = -1, R[i][i + half] = 1. A matmul with a
 * constant matrix is one fast kernel where split + neg + concat were slow on the CPU backends.
 */
function rotateHalfMatrix(hd: number): tf.Tensor2D {
  let r = rotations.get(hd);
  if (!r || r.isDisposed) {
    const half = hd / 2;
    const m = new Float32Array(hd * hd);
    for (let i = 0; i < half; i++) {
      m[(i + half) * hd + i] = -1;
      m[i * hd + i + half] = 1;
    }
    r = tf.keep(tf.tensor2d(m, [hd, hd]));
    rotations.set(hd, r);
  }
  return r;
}

/**
 * Grouped-query attention: softmax(q k^T * scale + mask) v, query head h reading KV head
 * floor(h / (heads / kvHeads)). q: [B, T, heads, hd]; k, v: [B, S, kvHeads, hd] as the
 * projections give them, or [B, kvHeads, capacity, hd] with `kvHeadMajor` (the KV cache's
 * storage, its first S slots read); mask: [B, T, S], additive, shared by the heads
 * -> [B, T, heads, hd].
 */
export function attention(q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D, mask: tf.Tensor3D, scale: number, kvHeadMajor: boolean): tf.Tensor4D {
  if (fusedOn(ATTENTION) && allFloat32(q, k, v, mask)) {
    const [out] = tf.engine().runKernel(ATTENTION, { q, k, v, mask }, { scale, kvHeadMajor } as unknown as tf.NamedAttrMap) as unknown as tf.Tensor4D[];
    return out!;
  }
  const [B, T, heads, hd] = q.shape;
  const S = mask.shape[2];
  // a KV cache's storage may hold slots past the S in use (KVCache)
  const used = (t: tf.Tensor4D) => (t.shape[2] > S ? (tf.slice(t, [0, 0, 0, 0], [-1, -1, S, -1]) as tf.Tensor4D) : t); // [B, nKv, S, hd]
  const keys = kvHeadMajor ? used(k) : (tf.transpose(k, [0, 2, 1, 3]) as tf.Tensor4D); // [B, nKv, S, hd]
  const values = kvHeadMajor ? used(v) : (tf.transpose(v, [0, 2, 1, 3]) as tf.Tensor4D); // [B, nKv, S, hd]
  const nKv = keys.shape[1];
  const groups = heads / nKv;
  // The `groups` query heads that share a KV head are stacked along the query axis, so K and V
  // are not copied per query head.
  const qg = tf
    .transpose(q.reshape([B, T, nKv, groups, hd]), [0, 2, 3, 1, 4]) // [B, nKv, groups, T, hd]
    .reshape([B, nKv, groups * T, hd]) as tf.Tensor4D; // [B, nKv, groups*T, hd]
  const scores = tf.matMul(qg, keys, false, true).reshape([B, heads, T, S]) as tf.Tensor4D; // [B, heads, T, S]
  const probs = tf
    .softmax(tf.add(tf.mul(scores, scale), mask.reshape([B, 1, T, S])), -1) // mask as [B, 1, T, S]: the same for every head
    .reshape([B, nKv, groups * T, S]) as tf.Tensor4D; // [B, nKv, groups*T, S]
  return tf
    .matMul(probs, values) // [B, nKv, groups*T, hd]
    .reshape([B, nKv, groups, T, hd]) // [B, nKv, groups, T, hd]
    .transpose([0, 3, 1, 2, 4]) // [B, T, nKv, groups, hd]
    .reshape([B, T, heads, hd]); // [B, T, heads, hd]
}

/**
 * New keys or values appended to the KV cache's head-major layout: past [B, kvHeads, S0, hd]
 * (none at first), x [B, T, kvHeads, hd] as the projection gives it -> [B, kvHeads, S0 + T, hd].
 * One copy where a backend fuses it (a transpose and a concat otherwise). Inference only.
 */
export function appendHeadMajor(past: tf.Tensor4D | undefined, x: tf.Tensor4D): tf.Tensor4D {
  // (not with an empty operand: webgpu cannot bind a zero-size buffer, and the invalid dispatch
  // drops its whole command buffer, earlier kernels' results included)
  if (past && past.size > 0 && x.size > 0 && fusedOn(KV_APPEND) && allFloat32(past, x)) return tf.engine().runKernel(KV_APPEND, { past, x }) as tf.Tensor4D;
  const added = tf.transpose(x, [0, 2, 1, 3]) as tf.Tensor4D; // [B, kvHeads, T, hd]
  return past ? tf.concat([past, added], 2) : added;
}

/**
 * Writes into a KV cache's storage in place, on a backend whose tensors are plain arrays (kiln's
 * native backend). tfjs tensors are immutable to everyone else: only storage a KVCache allocated
 * itself and never handed out is written, so no other tensor can see a write.
 */
export interface KvSlots {
  /** x [B, T, kvHeads, hd] into slots [at, at + T) of store [B, kvHeads, capacity, hd] */
  write(store: tf.Tensor4D, x: tf.Tensor4D, at: number): void;
  /** slots [from, from + n) of src into slots [0, n) of dst, both [B, kvHeads, *, hd] (dst may be src) */
  move(src: tf.Tensor4D, dst: tf.Tensor4D, from: number, n: number): void;
}

const kvSlotWriters = new Map<string, KvSlots>();

export function registerKvSlots(backend: string, slots: KvSlots): void {
  kvSlotWriters.set(backend, slots);
}

/** The active backend's in-place KV writer; undefined where each append makes new tensors. */
export function kvSlotsInPlace(): KvSlots | undefined {
  return kvSlotWriters.get(tf.getBackend());
}

/** log(softmax(x)) over the last axis (tfjs composes it of six kernels); x: [..., V]. */
export function logSoftmax(x: tf.Tensor): tf.Tensor {
  if (fusedOn(LOG_SOFTMAX) && allFloat32(x)) return tf.engine().runKernel(LOG_SOFTMAX, { x }) as tf.Tensor;
  return tf.logSoftmax(x, -1);
}

/** The sum of the squares of every element of every tensor: a scalar (a gradient norm's square). */
export function sumOfSquares(all: tf.Tensor[]): tf.Scalar {
  const ts = all.filter((t) => t.size > 0); // an empty tensor adds nothing, and a kernel cannot bind it (see appendHeadMajor)
  if (ts.length && fusedOn(SUM_OF_SQUARES) && allFloat32(...ts)) {
    return tf.engine().runKernel(SUM_OF_SQUARES, Object.fromEntries(ts.map((t, i) => [`t${i}`, t]))) as tf.Scalar;
  }
  // summed pairwise: tfjs-webgpu's AddN binds every input at once, past WebGPU's 8 storage buffers a shader
  return ts.map((t) => tf.sum(tf.square(t))).reduce((a, b) => tf.add(a, b), tf.scalar(0)) as tf.Scalar;
}

export interface AdamStep {
  learningRate: number;
  beta1: number;
  beta2: number;
  epsilon: number;
  /** the bias corrections 1 - beta1^t and 1 - beta2^t of this step t */
  c1: number;
  c2: number;
  /** the gradient is scaled by clipNorm / (norm + 1e-6) where norm > clipNorm; 0 = no clip */
  clipNorm: number;
}

/**
 * One Adam step of a parameter: m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
 * value - lr (m / c1) / (sqrt(v / c2) + eps), g the gradient after the global-norm clip.
 * moments: [2, ...value.shape] (m then v; zeros at first); norm: the global gradient norm, a
 * scalar. Returns the new value and the new moments. Fused where a backend registers it (tfjs
 * runs about a dozen kernels per parameter, and a bake has hundreds of small LoRA factors).
 */
export function adamStep(value: tf.Tensor, grad: tf.Tensor, moments: tf.Tensor, norm: tf.Scalar, step: AdamStep): [tf.Tensor, tf.Tensor] {
  if (fusedOn(ADAM_STEP) && allFloat32(value, grad, moments, norm)) {
    return tf.engine().runKernel(ADAM_STEP, { value, grad, moments, norm }, step as unknown as tf.NamedAttrMap) as unknown as [tf.Tensor, tf.Tensor];
  }
  return tf.tidy(() => {
    const { learningRate: lr, beta1: b1, beta2: b2, epsilon, c1, c2, clipNorm } = step;
    const g = clipNorm > 0 ? tf.mul(grad, tf.where(tf.greater(norm, clipNorm), tf.div(clipNorm, tf.add(norm, 1e-6)), tf.onesLike(norm))) : grad;
    const [m0, v0] = tf.unstack(moments) as [tf.Tensor, tf.Tensor];
    const m = tf.add(tf.mul(m0, b1), tf.mul(g, 1 - b1));
    const v = tf.add(tf.mul(v0, b2), tf.mul(tf.square(g), 1 - b2));
    const next = tf.sub(value, tf.div(tf.mul(tf.div(m, c1), lr), tf.add(tf.sqrt(tf.div(v, c2)), epsilon)));
    return [next, tf.stack([m, v])];
  });
}

tf.registerGradient({
  kernelName: LOG_SOFTMAX,
  outputsToSave: [true],
  gradFunc: (dy, saved) => {
    const [y] = saved as [tf.Tensor];
    return { x: () => tf.sub(dy as tf.Tensor, tf.mul(tf.exp(y), tf.sum(dy as tf.Tensor, -1, true))) };
  },
});

tf.registerGradient({
  kernelName: LORA_LINEAR,
  inputsToSave: ["x", "w", "a", "b"],
  gradFunc: (dy, saved, attrs) => {
    const [x, w, a, b] = saved as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor];
    const [dx, da, db] = tf.engine().runKernel(LORA_LINEAR_GRAD, { dy: dy as tf.Tensor, x, w, a, b }, attrs) as unknown as [tf.Tensor, tf.Tensor, tf.Tensor];
    return { x: () => dx, w: () => tf.zerosLike(w), a: () => da, b: () => db };
  },
});

tf.registerGradient({
  kernelName: ROPE,
  inputsToSave: ["cos", "sin"],
  gradFunc: (dy, saved, attrs) => {
    const [cos, sin] = saved as [tf.Tensor, tf.Tensor];
    const sign = (attrs as unknown as { sign: number }).sign;
    return {
      // the rotation's transpose: the same kernel with the sine negated
      x: () => tf.engine().runKernel(ROPE, { x: dy as tf.Tensor, cos, sin }, { sign: -sign } as unknown as tf.NamedAttrMap) as tf.Tensor,
      cos: () => tf.zerosLike(cos),
      sin: () => tf.zerosLike(sin),
    };
  },
});


tf.registerGradient({
  kernelName: ATTENTION,
  inputsToSave: ["q", "k", "v", "mask"],
  outputsToSave: [false, true],
  gradFunc: (dy, saved, attrs) => {
    const [q, k, v, mask, probs] = saved as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor];
    const dout = Array.isArray(dy) ? dy[0]! : dy; // the probabilities are internal: no gradient flows into them
    const [dq, dk, dv] = tf.engine().runKernel(ATTENTION_GRAD, { dout, q, k, v, probs }, attrs) as unknown as [tf.Tensor, tf.Tensor, tf.Tensor];
    return { q: () => dq, k: () => dk, v: () => dv, mask: () => tf.zerosLike(mask) };
  },
});

tf.registerGradient({
  kernelName: KL_TOPK_ROWS,
  inputsToSave: ["logits", "topLogProbs", "flatIndices", "tailLogProb"],
  gradFunc: (dy, saved) => {
    const [logits, topLogProbs, flatIndices, tailLogProb] = saved as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor];
    const constant = (t: tf.Tensor) => () => tf.zerosLike(t); // the teacher's targets; never asked for in a bake
    return {
      logits: () => tf.engine().runKernel(KL_TOPK_ROWS_GRAD, { dy: dy as tf.Tensor, logits, topLogProbs, flatIndices, tailLogProb }) as tf.Tensor,
      topLogProbs: constant(topLogProbs),
      flatIndices: constant(flatIndices),
      tailLogProb: constant(tailLogProb),
    };
  },
});

tf.registerGradient({
  kernelName: KL_ROWS,
  inputsToSave: ["logits", "teacherLogProbs"],
  gradFunc: (dy, saved) => {
    const [logits, teacherLogProbs] = saved as [tf.Tensor, tf.Tensor];
    return {
      logits: () => tf.engine().runKernel(KL_ROWS_GRAD, { dy: dy as tf.Tensor, logits, teacherLogProbs }) as tf.Tensor,
      teacherLogProbs: () => tf.zerosLike(teacherLogProbs), // targets are constants; never asked for in a bake
    };
  },
});

// The gradients: one grad kernel computes both inputs' gradients in one pass, run once, eagerly
// (tfjs calls each input's closure separately; the engine disposes the one nobody asked for).
tf.registerGradient({
  kernelName: RMS_NORM,
  inputsToSave: ["x", "weight"],
  gradFunc: (dy, saved, attrs) => {
    const [x, weight] = saved as [tf.Tensor, tf.Tensor];
    const [dx, dw] = tf.engine().runKernel(RMS_NORM_GRAD, { dy: dy as tf.Tensor, x, weight }, attrs) as unknown as [tf.Tensor, tf.Tensor];
    return { x: () => dx, weight: () => dw };
  },
});

tf.registerGradient({
  kernelName: SWIGLU,
  inputsToSave: ["gate", "up"],
  gradFunc: (dy, saved) => {
    const [gate, up] = saved as [tf.Tensor, tf.Tensor];
    const [dg, du] = tf.engine().runKernel(SWIGLU_GRAD, { dy: dy as tf.Tensor, gate, up }) as unknown as [tf.Tensor, tf.Tensor];
    return { gate: () => dg, up: () => du };
  },
});
