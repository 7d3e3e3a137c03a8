// The prompt-baking objective: forward KL(teacher || student) at every reply position, the first
// reply token included. The teacher's distributions are computed once per trajectory and cached
// (the teacher does not change during a bake), either over the full vocabulary or as its top-K
// with a tail bucket, which is an exact KL between two (K+1)-way distributions and needs
// K+1 numbers per position instead of V.
//
// The on-policy objective (trainer.ts, objective "on-policy") scores the student's own replies with
// the reverse KL(student || teacher) instead, over the full vocabulary only: see reverseKlPerPosition.
import { tf } from "../tensor/backend.js";
import { KL_TAIL_FLOOR, klPerPosition, klTopKPerPosition, logSoftmax } from "../tensor/fused.js";

export type TeacherTargets =
  | { kind: "full"; /** [R, V] log-probabilities */ logProbs: Float32Array }
  | {
      kind: "topk";
      /** [R, K] token ids */ indices: Int32Array;
      /** [R, K] log-probabilities of those tokens */ logProbs: Float32Array;
      /** [R] log of the probability mass outside the top K */ tailLogProb: Float32Array;
    };

export type KlMode = { kind: "full" } | { kind: "topk"; k: number };

/** forward: KL(teacher || student), the paper's; reverse: KL(student || teacher), the on-policy objective's */
export type KlDirection = "forward" | "reverse";


/**
 * Turns teacher logits for R reply positions, [R, V], into cached targets (host arrays). The
 * reads are asynchronous: a GPU backend keeps working meanwhile, and tfjs-webgpu in Node has no
 * synchronous read at all.
 */
export async function teacherTargets(logits: tf.Tensor2D, mode: KlMode): Promise<TeacherTargets> {
  // Read the data outside tf.tidy: tidy walks whatever it returns looking for tensors, and
  // walking a multi-million-element typed array took seconds.
  if (mode.kind === "full") {
    const logp = tf.tidy(() => logSoftmax(logits)); // [R, V]
    const logProbs = (await logp.data()) as Float32Array;
    logp.dispose();
    return { kind: "full", logProbs };
  }
  const [values, indices, tail] = tf.tidy(() => {
    const top = tf.topk(logSoftmax(logits), mode.k); // [R, K]
    const inTop = tf.sum(tf.exp(top.values), -1); // [R]
    return [top.values, top.indices, tf.log(tf.maximum(tf.sub(1, inTop), KL_TAIL_FLOOR))]; // tail: [R]
  });
  const [top, ids, rest] = await Promise.all([values.data(), indices.data(), tail.data()]);
  tf.dispose([values, indices, tail]);
  return { kind: "topk", indices: ids as Int32Array, logProbs: top as Float32Array, tailLogProb: rest as Float32Array };
}

/** A batch of targets padded to R positions per row, as tensors for the loss. */
export interface TargetBatch {
  mode: KlMode;
  /** full: [B, R, V]; topk: [B, R, K] */
  logProbs: tf.Tensor3D;
  /** topk only: [B*R*K] ids into the flattened [B*R*V] student log-probs */
  flatIndices?: tf.Tensor1D;
  /** topk only: [B, R] */
  tailLogProb?: tf.Tensor2D;
  /** [B, R], 1 at real reply positions */
  mask: tf.Tensor2D;
  tokens: number;
}

export function stackTargets(targets: TeacherTargets[], lengths: number[], R: number, vocab: number, mode: KlMode): TargetBatch {
  const B = targets.length;
  const width = mode.kind === "full" ? vocab : mode.k;
  const logProbs = new Float32Array(B * R * width);
  const flat = mode.kind === "topk" ? new Int32Array(B * R * width) : undefined;
  const tail = mode.kind === "topk" ? new Float32Array(B * R).fill(Math.log(KL_TAIL_FLOOR)) : undefined;
  const mask = new Float32Array(B * R);
  let tokens = 0;
  targets.forEach((t, b) => {
    const n = lengths[b]!;
    logProbs.set(t.logProbs.subarray(0, n * width), b * R * width);
    if (t.kind === "topk") {
      // Index the student's flattened log-probs directly: gathering through a flat index has a
      // gradient on every backend.
      // Padded positions point at their own row's first K ids (masked out of the loss, but
      // distinct ids inside their row, as the fused kernel requires).
      for (let j = 0; j < R * width; j++) flat![b * R * width + j] = (b * R + Math.floor(j / width)) * vocab + (j < n * width ? t.indices[j]! : j % width);
      tail!.set(t.tailLogProb.subarray(0, n), b * R);
    }
    mask.fill(1, b * R, b * R + n);
    tokens += n;
  });
  return {
    mode,
    logProbs: tf.tensor3d(logProbs, [B, R, width]),
    flatIndices: flat ? tf.tensor1d(flat, "int32") : undefined,
    tailLogProb: tail ? tf.tensor2d(tail, [B, R]) : undefined,
    mask: tf.tensor2d(mask, [B, R]),
    tokens,
  };
}

export function disposeTargets(t: TargetBatch): void {
  t.logProbs.dispose();
  t.flatIndices?.dispose();
  t.tailLogProb?.dispose();
  t.mask.dispose();
}

/**
 * Reverse KL(student || teacher) per position: sum over the vocabulary of q * (log q - log p),
 * q = softmax(logits). logits, teacherLogProbs: [..., V] -> [...]. Mode-seeking: it weighs the
 * teacher's log-probability of every token where the student puts mass, which is why it needs the
 * teacher's full distribution (a top-K target has no log p outside its K tokens).
 * Gradient to the logits, through tfjs's autodiff: q * ((log q - log p) - KL).
 */
export function reverseKlPerPosition(logits: tf.Tensor, teacherLogProbs: tf.Tensor): tf.Tensor {
  const logq = logSoftmax(logits); // [..., V]
  return tf.sum(tf.mul(tf.exp(logq), tf.sub(logq, teacherLogProbs)), -1);
}

/**
 * Summed KL over real reply positions, [scalar]; divide by B for the paper's loss and by the
 * token count for KL per token. studentLogits: [B, R, V].
 */
export function klSum(studentLogits: tf.Tensor3D, t: TargetBatch, direction: KlDirection = "forward"): tf.Scalar {
  if (direction === "reverse" && t.mode.kind !== "full") throw new Error("the reverse KL needs the teacher's full distribution (kl: full)");
  const perPosition = // [B, R]
    direction === "reverse"
      ? reverseKlPerPosition(studentLogits, t.logProbs)
      : t.mode.kind === "full"
        ? klPerPosition(studentLogits, t.logProbs)
        : klTopKPerPosition(studentLogits, t.logProbs, t.flatIndices!, t.tailLogProb!);
  return tf.sum(tf.mul(perPosition, t.mask));
}
