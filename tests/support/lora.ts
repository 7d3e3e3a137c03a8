// What the LoRA tests share: logits of a few fixed token rows, read asynchronously (so the same
// checks run on every backend, webgpu too), the largest difference between two runs, and an
// adapter made to change the model.
import { tf } from "../../src/tensor/backend.js";
import type { AdapterHook, Decoder } from "../../src/model/decoder.js";
import type { LoraAdapter } from "../../src/lora/adapter.js";

export const IDS = [
  [5, 80, 200, 17, 33, 260, 9, 101],
  [316, 117, 115, 276, 10, 72, 301, 111],
];

export async function logits(decoder: Decoder, adapter?: AdapterHook): Promise<Float32Array> {
  const out = tf.tidy(() => decoder.forward({ ids: IDS }, { adapter }));
  const values = (await out.data()) as Float32Array;
  out.dispose();
  return values;
}

export function maxDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** Gives B random values so the adapter actually changes the model. */
export function randomizeB(adapter: LoraAdapter, seed: number): void {
  let s = seed;
  for (const { B } of adapter.modules.values()) B.assign(tf.randomNormal(B.shape, 0, 0.05, "float32", s++));
}
