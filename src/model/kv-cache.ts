// The decoder's KV cache: every layer's keys and values of the tokens seen so far, so a new
// token attends to them without running them again.
import { tf } from "../tensor/backend.js";
import { appendHeadMajor, kvSlotsInPlace } from "../tensor/fused.js";

/** Slots a storage grows by at least: a decode step would otherwise grow it every few tokens. */
const GROW_SLOTS = 128;

/** Slots [start, start + n) of keys or values [B, nKv, *, hd] (a copy). */
function slots(t: tf.Tensor4D, start: number, n: number): tf.Tensor4D {
  return tf.slice(t, [0, 0, start, 0], [-1, -1, n, -1]) as tf.Tensor4D; // [B, nKv, n, hd]
}

/**
 * Keys and values for every layer, plus which key positions are real (1) or padding (0).
 * The decoder appends to it on each call; generation owns and disposes it.
 *
 * A layer's keys and values live in storage [B, nKv, capacity, hd] whose first `held(l)` slots
 * are in use. Where the backend lets kiln write its arrays (native), a new token's keys are
 * written into the storage's spare slots and the storage grows by a quarter when full: appending
 * by concat copied the whole cache every token (138 MB a step at 3,000 tokens on the 135M shape).
 * Elsewhere (webgpu, wasm) each append makes new tensors holding exactly the slots in use.
 *
 * A sliding-window layer keeps only the slots a later query can still see, and `slack` more, so
 * its memory and attention cost stop growing at the window plus slack; `dropped` counts the slots
 * it has let go (written in place, it lets them go when its storage is full: until then they are
 * masked like any slot outside the window).
 */
export class KVCache {
  private keys: (tf.Tensor4D | undefined)[] = []; // per layer [B, nKv, capacity, hd]: slots dropped[l] .. length - 1 first
  private values: (tf.Tensor4D | undefined)[] = []; // per layer, as keys
  dropped: number[] = []; // per layer: leading slots no longer kept
  /** Storage this cache allocated itself: the only tensors it writes in place. */
  private readonly owned = new WeakSet<tf.Tensor4D>();
  /**
   * Slots a sliding layer keeps past those its window needs, so the cache can still be cut back
   * that far and continued (truncate, prefix): a kept reply whose end comes back trimmed (a stop
   * sequence's tail, the template's end of turn) would otherwise be refused whole once the
   * conversation outgrew the window. The extra keys are masked, so the outputs do not change.
   */
  slack = 0;
  mask: number[][]; // [B][S], every slot since the start
  constructor(batch: number) {
    this.mask = Array.from({ length: batch }, () => []);
  }
  get length(): number {
    return this.mask[0]?.length ?? 0;
  }
  /** Layers that have been run (some may hold no slots: see prefix). */
  get layers(): number {
    return this.keys.length;
  }
  /** Slots layer l holds: those since dropped[l]. */
  held(l: number): number {
    return this.length - (this.dropped[l] ?? 0);
  }
  /** The tensors held, storage and spare slots included (a layer a prefix left empty holds none). */
  get tensors(): tf.Tensor4D[] {
    return [...this.keys, ...this.values].filter((t): t is tf.Tensor4D => t !== undefined);
  }
  /** Bytes the keys and values take (float32), spare slots included. */
  get bytes(): number {
    return this.tensors.reduce((n, t) => n + t.size * 4, 0);
  }
  /**
   * Layer l's keys and values, [B, nKv, held(l), hd] each: the storage itself where it has no
   * spare slots, a copy otherwise (so call inside tf.tidy, do not dispose them, and read them
   * before the cache's next append); undefined where the layer holds none.
   */
  layer(l: number): { keys: tf.Tensor4D; values: tf.Tensor4D } | undefined {
    const [keys, values] = [this.keys[l], this.values[l]];
    if (!keys || !values) return undefined;
    const held = this.held(l);
    const used = (t: tf.Tensor4D) => (t.shape[2] === held ? t : slots(t, 0, held)); // [B, nKv, held, hd]
    return { keys: used(keys), values: used(values) };
  }
  /**
   * Layer l now holds these [B, nKv, S - dropped, hd] as slots dropped .. S - 1 (the cache takes
   * them over: they are never written in place, a write goes to storage the cache makes itself).
   */
  setLayer(l: number, keys: tf.Tensor4D, values: tf.Tensor4D, dropped = 0): void {
    if (this.keys[l] !== keys) this.keys[l]?.dispose();
    if (this.values[l] !== values) this.values[l]?.dispose();
    [this.keys[l], this.values[l], this.dropped[l]] = [keys, values, dropped];
    this.owned.delete(keys);
    this.owned.delete(values);
  }

  /**
   * Appends a layer's new keys and values k, v [B, T, nKv, hd] (as the projections give them)
   * after the cache's `length` slots; `window` is the layer's sliding window (null: none).
   * Returns what attention reads: keys and values [B, nKv, capacity, hd] holding slots
   * `from` .. length + T - 1 first (the mask covers those). Call inside tf.tidy: the cache keeps
   * its own tensors. Inference only: storage written in place has no gradient.
   */
  append(l: number, k: tf.Tensor4D, v: tf.Tensor4D, window: number | null): { keys: tf.Tensor4D; values: tf.Tensor4D; from: number } {
    const T = k.shape[1];
    const from = this.dropped[l] ?? 0;
    const S = this.length + T; // slots once these are in
    // The next query sits at slot S, so a window layer's later queries see slots S - window + 1
    // on; `slack` more are kept so the cache can be cut back and continued.
    const keepFrom = window === null ? from : Math.max(from, S - window + 1 - this.slack);
    const inPlace = kvSlotsInPlace();
    if (!inPlace || T === 0) {
      const past = this.layer(l);
      const keys = appendHeadMajor(past?.keys, k); // [B, nKv, S - from, hd]
      const values = appendHeadMajor(past?.values, v); // [B, nKv, S - from, hd]
      const drop = keepFrom - from;
      const kept = (t: tf.Tensor4D) => tf.keep(drop > 0 ? slots(t, drop, S - keepFrom) : t); // [B, nKv, S - keepFrom, hd]
      this.setLayer(l, kept(keys), kept(values), keepFrom);
      return { keys, values, from };
    }
    let held = this.held(l);
    const capacity = this.owned.has(this.keys[l]!) ? this.keys[l]!.shape[2] : 0; // storage taken over is copied before a write
    if (held + T > capacity) {
      // full: a window layer lets go of what it no longer needs, and the storage grows if that
      // does not leave a quarter of it free. This chunk's first query, at slot `length`, still
      // sees slots length - window + 1 on (so a long chunk's own first slots stay, masked, until
      // the next time).
      const drop = window === null ? 0 : Math.max(0, Math.min(keepFrom, this.length - window + 1) - from);
      const keep = held - drop;
      const needed = keep + T;
      const grown = needed > 0.75 * capacity ? needed + Math.max(GROW_SLOTS, Math.ceil(needed / 4)) : capacity;
      for (const store of [this.keys, this.values]) {
        const old = store[l];
        let next = old!;
        if (grown !== capacity) {
          const [B, , nKv, hd] = k.shape; // [B, T, nKv, hd]
          next = tf.keep(tf.zeros([B, nKv, grown, hd])); // [B, nKv, grown, hd]
          this.owned.add(next);
        }
        if (old && keep > 0) inPlace.move(old, next, drop, keep);
        if (next !== old) old?.dispose();
        store[l] = next;
      }
      this.dropped[l] = from + drop;
      held = keep;
    }
    inPlace.write(this.keys[l]!, k, held);
    inPlace.write(this.values[l]!, v, held);
    return { keys: this.keys[l]!, values: this.values[l]!, from: this.dropped[l]! };
  }
  /**
   * Storage fitted to the slots a next query can see (sliding layers let go of the rest, `slack`
   * aside; a copy where anything changes): for a cache kept aside, as the prefix cache keeps a
   * conversation's, whose room to grow would only take memory (`windows` as
   * ModelConfig.slidingWindows has them).
   */
  compact(windows: readonly (number | null)[]): void {
    for (let l = 0; l < this.layers; l++) {
      const [keys, values] = [this.keys[l], this.values[l]];
      if (!keys || !values) continue;
      const from = this.dropped[l] ?? 0;
      const window = windows[l] ?? null;
      const keepFrom = Math.min(this.length, window === null ? from : Math.max(from, this.length - window + 1 - this.slack));
      if (keepFrom === this.length) {
        // nothing a next query sees: the next call starts this layer afresh, as after prefix()
        this.emptyLayer(l);
        this.dropped[l] = keepFrom;
        continue;
      }
      if (keepFrom === from && keys.shape[2] === this.held(l)) continue;
      const n = this.length - keepFrom;
      this.setLayer(l, slots(keys, keepFrom - from, n), slots(values, keepFrom - from, n), keepFrom); // [B, nKv, length - keepFrom, hd]
    }
  }
  /**
   * A new cache holding this one's first `length` slots (copies; this one is unchanged), or
   * undefined where a sliding layer has let go of a slot that the next query, at slot `length`,
   * could still see (`windows` as ModelConfig.slidingWindows has them).
   */
  prefix(length: number, windows: readonly (number | null)[]): KVCache | undefined {
    if (!this.keepsStart(length, windows)) return undefined;
    const out = new KVCache(this.mask.length);
    out.slack = this.slack;
    out.mask = this.mask.map((row) => row.slice(0, length));
    for (let l = 0; l < this.layers; l++) {
      const from = this.dropped[l] ?? 0;
      out.dropped[l] = from;
      if (length === from) continue; // nothing of this layer is left: the next call starts it afresh
      out.setLayer(l, slots(this.keys[l]!, 0, length - from), slots(this.values[l]!, 0, length - from), from); // [B, nKv, length - from, hd]
    }
    return out;
  }
  /**
   * Cuts this cache to its first `length` slots in place, as prefix() would copy them, and frees
   * the rest; false (unchanged) where prefix() would refuse. For a cache no one else will continue
   * past `length`: the original need not stay, so it is not kept beside a copy.
   */
  truncate(length: number, windows: readonly (number | null)[]): boolean {
    if (!this.keepsStart(length, windows)) return false;
    if (length === this.length) return true;
    this.mask = this.mask.map((row) => row.slice(0, length));
    for (let l = 0; l < this.layers; l++) {
      const from = this.dropped[l] ?? 0;
      const [keys, values] = [this.keys[l]!, this.values[l]!];
      if (length === from) {
        // nothing of this layer is left: the next call starts it afresh, as after prefix()
        this.emptyLayer(l);
      } else if (!this.owned.has(keys)) {
        // tfjs has no view of a tensor's leading slots: the kept part is sliced out, the old freed
        this.setLayer(l, slots(keys, 0, length - from), slots(values, 0, length - from), from); // [B, nKv, length - from, hd]
      }
      // (storage written in place keeps its slots past `length` as spare: the next write covers them)
    }
    return true;
  }
  /** Frees layer l's keys and values: it holds none. */
  private emptyLayer(l: number): void {
    this.keys[l]?.dispose();
    this.values[l]?.dispose();
    delete this.keys[l];
    delete this.values[l];
  }
  /**
   * Whether the first `length` slots can be continued: every sliding layer still holds the slots
   * a query at slot `length` sees (a layer that let go of one cannot get it back).
   */
  private keepsStart(length: number, windows: readonly (number | null)[]): boolean {
    if (length < 1 || length > this.length) return false;
    for (const [l, from] of this.dropped.entries()) {
      const window = windows[l] ?? null;
      if (from > 0 && (window === null || from > length - window + 1)) return false;
    }
    return true;
  }
  dispose(): void {
    for (const t of this.tensors) t.dispose();
    this.keys = [];
    this.values = [];
    this.dropped = [];
  }
}
