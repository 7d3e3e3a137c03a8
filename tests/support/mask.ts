// Driving a token mask with random logits, as a model's sampler would: what a mask lets through
// is what a model under it can write, whatever it was trained on.
import assert from "node:assert/strict";
import { seededRandom } from "../../src/model/sampling.js";

export interface MaskWalk {
  /** the tokens written (after `prefix`) */
  tokens: number[];
  /** whether an end-of-turn token ended the walk */
  ended: boolean;
}

/**
 * Greedy steps over random logits (seeded) through `mask`, from `prefix` (tokens as if already
 * written). `bias` adds to a token's logit (tokens that close things, or a walk writes one
 * endless string); end-of-turn tokens get `endLogit`, the likeliest, so the mask must keep them
 * out until the text may end. Checks at every step that some token is allowed and that allowed
 * tokens keep their logits.
 */
export function walkMask(
  mask: (logits: Float32Array, tokens: readonly number[]) => void,
  opts: { vocabSize: number; eos: number[]; seed: number; steps: number; prefix?: number[]; bias?: (id: number) => number; endLogit?: number },
): MaskWalk {
  const random = seededRandom(opts.seed);
  const prefix = opts.prefix ?? [];
  const tokens: number[] = [];
  for (let step = 0; step < opts.steps; step++) {
    const logits = Float32Array.from({ length: opts.vocabSize }, (_, id) => random() * 4 + (opts.bias?.(id) ?? 0));
    for (const id of opts.eos) logits[id] = opts.endLogit ?? 10;
    const before = logits.slice();
    mask(logits, [...prefix, ...tokens]);
    let best = 0;
    for (let i = 1; i < opts.vocabSize; i++) if (logits[i]! > logits[best]!) best = i;
    assert.ok(Number.isFinite(logits[best]!), "some token is always allowed");
    assert.equal(logits[best], before[best], "allowed tokens keep their logits");
    if (opts.eos.includes(best)) return { tokens, ended: true };
    tokens.push(best);
  }
  return { tokens, ended: false };
}
