// Adam for LoRA factors, with the global gradient-norm clip folded in. tf.train.adam runs about a
// dozen small kernels per variable and the clip one synchronous read per gradient; a bake has
// hundreds of small A and B factors, so on the CPU backends (whose tensors are plain arrays in
// this process) one pass over each variable's numbers replaces all of them. On other backends
// (GPU) the same update runs as tensor ops that read nothing back: one fused kernel a variable
// where the backend has one (webgpu: src/tensor/webgpu.ts).
import { tf } from "../tensor/backend.js";
import { adamStep, sumOfSquares, type AdamStep } from "../tensor/fused.js";

export interface AdamSettings {
  learningRate: number;
  beta1?: number;
  beta2?: number;
  /** tfjs's default: the backend's epsilon (1e-7 for float32) */
  epsilon?: number;
  /** clip the gradients' global L2 norm to this before the update; 0 = no clip */
  clipNorm?: number;
  /** update on the host arrays (default: where the backend keeps tensors in this process) */
  host?: boolean;
}

/** Backends whose tensor data lives in this process as typed arrays: reading it costs nothing. */
const HOST_BACKENDS = new Set(["native", "cpu", "wasm"]);

function gradientOf(v: tf.Variable, grads: tf.NamedTensorMap): tf.Tensor {
  const t = grads[v.name];
  if (!t) throw new Error(`no gradient for ${v.name}`);
  return t;
}

export class LoraAdam {
  private readonly beta1: number;
  private readonly beta2: number;
  private readonly epsilon: number;
  private readonly moments = new Map<string, { m: Float32Array; v: Float32Array }>();
  private step = 0;
  /** the tensor path's moments by variable: [2, ...shape], m then v */
  private readonly tensorMoments = new Map<string, tf.Tensor>();

  constructor(private readonly s: AdamSettings) {
    this.beta1 = s.beta1 ?? 0.9;
    this.beta2 = s.beta2 ?? 0.999;
    this.epsilon = s.epsilon ?? tf.backend().epsilon();
  }

  /** One update of `variables` (by name) from `grads`; the gradients are not disposed. */
  apply(variables: tf.Variable[], grads: tf.NamedTensorMap): void {
    if (!(this.s.host ?? HOST_BACKENDS.has(tf.getBackend()))) return this.applyWithTensors(variables, grads);
    const g = variables.map((v) => gradientOf(v, grads).dataSync() as Float32Array);
    let sq = 0;
    for (const a of g) for (let i = 0; i < a.length; i++) sq += a[i]! * a[i]!;
    const norm = Math.sqrt(sq);
    const clip = this.s.clipNorm && norm > this.s.clipNorm ? this.s.clipNorm / (norm + 1e-6) : 1;
    const { beta1: b1, beta2: b2, c1, c2, learningRate: lr } = this.nextStep();
    variables.forEach((variable, k) => {
      const grad = g[k]!;
      const value = variable.dataSync() as Float32Array;
      let mv = this.moments.get(variable.name);
      if (!mv) this.moments.set(variable.name, (mv = { m: new Float32Array(value.length), v: new Float32Array(value.length) }));
      const { m, v } = mv;
      // A new array, not an update in place: a cloned adapter shares its parent's arrays.
      const next = new Float32Array(value.length);
      for (let i = 0; i < value.length; i++) {
        const gi = grad[i]! * clip;
        m[i] = b1 * m[i]! + (1 - b1) * gi;
        v[i] = b2 * v[i]! + (1 - b2) * gi * gi;
        next[i] = value[i]! - (lr * (m[i]! / c1)) / (Math.sqrt(v[i]! / c2) + this.epsilon);
      }
      tf.tidy(() => variable.assign(tf.tensor(next, variable.shape, "float32")));
    });
  }

  /** The settings of the next step, its bias corrections included. */
  private nextStep(): AdamStep {
    this.step++;
    return {
      learningRate: this.s.learningRate,
      beta1: this.beta1,
      beta2: this.beta2,
      epsilon: this.epsilon,
      c1: 1 - this.beta1 ** this.step,
      c2: 1 - this.beta2 ** this.step,
      clipNorm: this.s.clipNorm ?? 0,
    };
  }

  private applyWithTensors(variables: tf.Variable[], grads: tf.NamedTensorMap): void {
    const step = this.nextStep();
    tf.tidy(() => {
      const g = variables.map((v) => gradientOf(v, grads));
      // on the device, without reading the norm back: a read would stall the queue (and
      // tfjs-webgpu has no synchronous read in Node)
      const norm = step.clipNorm ? (tf.sqrt(sumOfSquares(g)) as tf.Scalar) : tf.scalar(0);
      variables.forEach((variable, k) => {
        const old = this.tensorMoments.get(variable.name);
        const [next, moments] = adamStep(variable, g[k]!, old ?? tf.zeros([2, ...variable.shape]), norm, step);
        variable.assign(next);
        old?.dispose();
        this.tensorMoments.set(variable.name, tf.keep(moments));
      });
    });
  }

  dispose(): void {
    this.moments.clear();
    for (const t of this.tensorMoments.values()) t.dispose();
    this.tensorMoments.clear();
  }
}
