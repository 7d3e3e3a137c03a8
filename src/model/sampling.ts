// Token choice from one row of logits: greedy, or temperature + top-k + top-p with a seeded PRNG
// so the same seed gives the same text.

/** mulberry32: small, fast, and good enough for sampling; state is one 32-bit integer. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface SamplerSettings {
  /** 0 means greedy */
  temperature: number;
  /** keep the k most likely tokens; 0 keeps all */
  topK: number;
  /** keep the smallest set whose probability reaches p; 1 keeps all */
  topP: number;
}

export function argmax(logits: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
  return best;
}

export function sampleToken(logits: Float32Array, s: SamplerSettings, random: () => number): number {
  if (s.temperature <= 0) return argmax(logits);
  const V = logits.length;
  let order = Array.from({ length: V }, (_, i) => i);
  order.sort((a, b) => logits[b]! - logits[a]!);
  if (s.topK > 0 && s.topK < V) order = order.slice(0, s.topK);
  const max = logits[order[0]!]!;
  const probs = order.map((i) => Math.exp((logits[i]! - max) / s.temperature));
  const total = probs.reduce((a, b) => a + b, 0);
  let keep = probs.length;
  if (s.topP < 1) {
    let cum = 0;
    for (let j = 0; j < probs.length; j++) {
      cum += probs[j]! / total;
      if (cum >= s.topP) {
        keep = j + 1;
        break;
      }
    }
  }
  const kept = probs.slice(0, keep);
  const keptTotal = kept.reduce((a, b) => a + b, 0);
  let r = random() * keptTotal;
  let last = 0; // the last token with any probability
  for (let j = 0; j < keep; j++) {
    if (kept[j]! > 0) last = j;
    r -= kept[j]!;
    if (r <= 0) return order[j]!;
  }
  // rounding left r above 0: never fall through to a token with no probability (a masked one)
  return order[last]!;
}
