// What the benchmark scripts share: reading a flag's value, a median, and a decoder of a given
// shape with random weights (the benches time shapes, not trained models).
import { tf } from "../src/tensor/backend.js";
import type { ModelConfig } from "../src/model/config.js";
import { Decoder, expectedWeights } from "../src/model/decoder.js";
import type { LoraAdapter } from "../src/lora/adapter.js";
import type { LoraAdam } from "../src/bake/optimizer.js";
import { disposeTargets, klSum, stackTargets, teacherTargets, type KlMode } from "../src/bake/kl.js";

export function flagValue(name: string): string | undefined {
  return process.argv.find((_, i) => process.argv[i - 1] === name);
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** Seeded normal weights (std 0.02), norms at one: the same decoder every run. */
export function randomDecoder(c: ModelConfig): Decoder {
  const weights = new Map<string, tf.Tensor>();
  let seed = 1;
  for (const [name, shape] of expectedWeights(c)) weights.set(name, name.endsWith("norm.weight") ? tf.ones(shape) : tf.randomNormal(shape, 0, 0.02, "float32", seed++));
  return Decoder.fromHuggingFace(c, weights);
}

/**
 * One bake step as the trainer runs it: teacher forward (base, no grad) -> cached targets; student
 * LoRA forward, KL at the positions from promptLen on, backward, Adam on the LoRA parameters.
 */
export async function oneBakeStep(
  decoder: Decoder,
  adapter: LoraAdapter,
  optimizer: LoraAdam,
  ids: number[][],
  promptLen: number,
  mode: KlMode,
  /** called once the teacher's targets are read and stacked, before the student's pass */
  onTeacherDone?: () => void,
): Promise<void> {
  const [B, V, R] = [ids.length, decoder.config.vocabSize, ids[0]!.length - promptLen];
  // the LM head on the R positions from promptLen on, as PyTorch's step computes it (the
  // trainer's trajectories end one token early for the same effect: src/bake/trajectories.ts)
  const teacher = tf.tidy(() => decoder.forward({ ids }, { logitsFrom: promptLen })); // [B, R, V]
  // as computeTeacherTargets does: slice inside tidy, read the targets outside it (tidy walks
  // what it returns, and a multi-million-element array takes seconds to walk)
  const targets = [];
  for (let b = 0; b < B; b++) {
    const row = tf.tidy(() => teacher.slice([b, 0, 0], [1, R, V]).reshape([R, V]) as tf.Tensor2D); // [R, V]
    targets.push(await teacherTargets(row, mode));
    row.dispose();
  }
  teacher.dispose();
  const batch = stackTargets(targets, targets.map(() => R), R, V, mode);
  onTeacherDone?.();
  const loss = tf.tidy(() => {
    const { value, grads } = tf.variableGrads(() => {
      const logits = decoder.forward({ ids }, { adapter, logitsFrom: promptLen }) as tf.Tensor3D; // [B, R, V]
      return klSum(logits, batch).div(B) as tf.Scalar;
    }, adapter.variables());
    optimizer.apply(adapter.variables(), grads);
    return value;
  });
  await loss.data();
  loss.dispose();
  disposeTargets(batch);
}
