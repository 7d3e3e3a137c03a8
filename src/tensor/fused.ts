// Fused operations the decoder uses: one kernel where a backend registers one (kiln's native
// backend does, src/tensor/native.ts), the same math composed of tfjs ops everywhere else.
// Both paths are checked against each other in tests/native.test.ts.
import { tf } from "./backend.js";

export const RMS_NORM = "KilnRmsNorm";
export const RMS_NORM_GRAD = "KilnRmsNormGrad";
export const SWIGLU = "KilnSwiGLU";
export const SWIGLU_GRAD = "KilnSwiGLUGrad";

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
