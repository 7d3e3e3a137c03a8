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

function fusedOn(kernel: string): boolean {
  return tf.getKernel(kernel, tf.getBackend()) !== undefined;
}

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
