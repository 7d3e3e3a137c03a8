// What the benchmark scripts share: reading a flag's value, a median, and a decoder of a given
// shape with random weights (the benches time shapes, not trained models).
import { tf } from "../src/tensor/backend.js";
import type { ModelConfig } from "../src/model/config.js";
import { Decoder, expectedWeights } from "../src/model/decoder.js";

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
