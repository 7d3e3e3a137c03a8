// Batched decoding of concurrent requests on one set of weights (kiln serve --batch). Each request
// prefills alone (continuing a kept prefix cache where there is one), a chunk of its prompt at a
// time with the batch's steps in between, then joins the running batch
// at the next step boundary: one forward pass per step feeds every row its last token. A row
// leaves when it ends (end-of-turn or stop id, stop string, max tokens, abort, its consumer gone),
// and its own KV cache is cut back out of the batch's for the prefix cache (onCache).
//
// Why: a decode step on a CPU reads every weight once whatever the rows, so N requests decoded
// apart cost N passes over the weights per token and together about one (docs/benchmarks.md has
// the numbers). Rows of different lengths share one cache by left padding: padded slots are
// masked, and the decoder counts a token's position in real tokens only, so every row sees the
// positions it would alone. Rows on other weights (an adapter version swapped in meanwhile) never
// join: LiveModel keeps one batcher per version.
import { tf } from "../tensor/backend.js";
import type { AdapterHook } from "./decoder.js";
import { KVCache } from "./kv-cache.js";
import { KEPT_SLACK } from "./prefix-cache.js";
import type { LoadedModel } from "./load.js";
import { sampleToken, seededRandom, type SamplerSettings } from "./sampling.js";
import {
  release,
  streamGenerate,
  visibleText,
  yieldToEventLoop,
  type GenerateOptions,
  type GenerationChunk,
  type GenerationResult,
  type RowState,
} from "./generate.js";

/** A request's settings: those of streamGenerate for one prompt; the weights are the batcher's. */
export type RowOptions = Omit<GenerateOptions, "adapter">;

interface Row {
  prompt: number[];
  opts: RowOptions;
  settings: SamplerSettings;
  random: () => number;
  stopIds: Set<number>;
  stops: string[];
  maxTokens: number;
  state: RowState;
  /** the tokens its cache holds: after its left padding in the batch's cache */
  held: number[];
  /** the token to feed at the next step (the last one sampled) */
  next: number;
  /** slack of its own cache, restored on the cache cut back out (see KVCache.slack) */
  slack: number;
  /** its own cache, from its prefill until it joins the batch */
  own: KVCache | null;
  chunks: GenerationChunk[];
  wake: (() => void) | null;
  /** set once it has left: no more chunks come */
  finished: boolean;
  /** its consumer went away while a step was running: it leaves when the step ends */
  leaving: boolean;
  error?: unknown;
}

/**
 * Prompt tokens a joining request prefills per forward pass: the batch decodes a step between its
 * chunks. Large enough that a chunk's matmuls stay efficient; a 135M model reads 256 tokens in
 * about a third of a second on two CPU cores.
 */
export const PREFILL_CHUNK = 256;

/** Whether the batcher can serve this model: sliding-window layers drop slots per cache, which rows do not share. */
export function batchable(model: LoadedModel): boolean {
  return model.config.slidingWindows.every((w) => w === null);
}

export class DecodeBatcher {
  /** rows in the batch, in the order of the batch cache's rows */
  private rows: Row[] = [];
  /** rows prefilled and waiting for the next step boundary (or for a free row) */
  private joining: Row[] = [];
  private cache: KVCache | null = null;
  private running = false;
  /** a step's forward pass has run and its logits are being read: rows may not leave until it ends */
  private busy = false;
  /** steps run and rows fed, for tests and metrics */
  readonly stats = { steps: 0, rowSteps: 0, widest: 0 };

  constructor(
    readonly model: LoadedModel,
    /** the most rows decoded in one forward pass; more wait to join */
    readonly maxRows: number,
    readonly adapter?: AdapterHook,
    /** prompt tokens a joining request prefills per forward pass */
    readonly prefillChunk = PREFILL_CHUNK,
  ) {
    if (!(maxRows >= 1)) throw new Error(`a batch needs at least 1 row (got ${maxRows})`);
    if (!batchable(model)) throw new Error("batched decoding does not support sliding-window layers");
  }

  /** Rows decoding now and waiting to join. */
  get size(): number {
    return this.rows.length + this.joining.length;
  }

  /**
   * Generates a reply to one prompt as streamGenerate(model, [prompt], opts) would, on the
   * batcher's weights, decoded together with the other requests in flight.
   */
  async *generate(prompt: number[], opts: RowOptions = {}): AsyncGenerator<GenerationChunk, GenerationResult[]> {
    const maxTokens = opts.maxTokens ?? 128;
    // Nothing to decode (or nothing at all): streamGenerate's answers and errors, as they are.
    if (maxTokens <= 0 || prompt.length === 0) return yield* streamGenerate(this.model, [prompt], { ...opts, adapter: this.adapter });
    const c = this.model.config;
    const problem =
      opts.prefix && !(opts.prefix.length >= 1 && opts.prefix.length < prompt.length && opts.prefix.cache.length === opts.prefix.length)
        ? `the cached prefix (${opts.prefix.length} tokens, cache ${opts.prefix.cache.length}) must be a shorter start of the prompt (${prompt.length})`
        : prompt.length + maxTokens > c.maxPositions
          ? `prompt (${prompt.length} tokens) + maxTokens (${maxTokens}) exceeds the model's ${c.maxPositions} positions`
          : undefined;
    if (problem) {
      opts.prefix?.cache.dispose();
      throw new Error(`generate: ${problem}`);
    }
    const skip = opts.prefix?.length ?? 0;
    const row: Row = {
      prompt,
      opts,
      settings: { temperature: opts.temperature ?? 0, topK: opts.topK ?? 0, topP: opts.topP ?? 1 },
      random: seededRandom(opts.seed ?? Math.floor(Math.random() * 2 ** 32)),
      stopIds: new Set([...this.model.eosTokenIds, ...(opts.stopTokenIds ?? [])]),
      stops: (opts.stopStrings ?? []).filter((s) => s.length > 0),
      maxTokens,
      state: { tokens: [], text: "", emitted: 0, done: null },
      held: prompt.slice(0, skip),
      next: -1,
      slack: 0,
      own: opts.prefix?.cache ?? new KVCache(1),
      chunks: [],
      wake: null,
      finished: false,
      leaving: false,
    };
    // a cache that may be kept holds a little past its sliding windows, as streamGenerate's does
    if (opts.onCache && !opts.prefix) row.own!.slack = KEPT_SLACK;
    row.slack = row.own!.slack;
    try {
      if (opts.signal?.aborted) {
        // as streamGenerate: aborted before the first forward, nothing was generated
        row.state.done = "abort";
        this.leave(row, row.own);
      } else {
        const data = await this.prefill(row, prompt.slice(skip));
        if (data) this.advance(row, data);
        else row.state.done = "abort"; // between two chunks of its prompt
        if (row.state.done || row.error !== undefined) this.leave(row, row.own);
        else {
          this.joining.push(row);
          this.start();
        }
      }
      for (;;) {
        while (row.chunks.length) yield row.chunks.shift()!;
        if (row.finished) break;
        await new Promise<void>((resolve) => (row.wake = resolve));
      }
    } finally {
      // the consumer stopped early (a client gone): the row leaves, and its cache is kept as streamGenerate's is
      if (!row.finished) this.abandon(row);
    }
    if (row.error !== undefined) throw row.error;
    return [
      {
        tokens: row.state.tokens,
        text: row.state.text,
        finishReason: row.state.done ?? "length",
        promptTokens: prompt.length,
        ...(row.state.stopToken !== undefined ? { stopToken: row.state.stopToken } : {}),
      },
    ];
  }

  /**
   * A row's prompt into its own cache, prefillChunk tokens a forward pass, yielding to the event
   * loop between chunks so the batch decodes a step meanwhile (one pass over a long prompt held
   * every streaming reply for its whole length). Returns the last position's logits [V], or null
   * where the request was aborted between chunks (its cache then holds what was read).
   */
  private async prefill(row: Row, ids: number[]): Promise<Float32Array | null> {
    const V = this.model.config.vocabSize;
    try {
      for (let at = 0; ; at += this.prefillChunk) {
        const part = ids.slice(at, at + this.prefillChunk);
        const last = at + this.prefillChunk >= ids.length;
        const logits = tf.tidy(() => this.model.decoder.forward({ ids: [part] }, { cache: row.own!, adapter: this.adapter, logitsFrom: last ? part.length - 1 : part.length }).reshape([1, last ? V : 0])); // [1, V], or nothing before the last chunk
        row.held.push(...part);
        if (last) {
          const data = (await logits.data()) as Float32Array;
          logits.dispose();
          return data;
        }
        logits.dispose();
        await yieldToEventLoop();
        if (row.opts.signal?.aborted) return null;
      }
    } catch (err) {
      // a forward that failed part-way leaves the cache half-extended: it is not kept
      row.own?.dispose();
      row.own = null;
      row.finished = true;
      throw err;
    }
  }

  /** One row's next token from its logits [V], as streamGenerate picks and streams it. */
  private advance(row: Row, logits: Float32Array): void {
    const s = row.state;
    let token: number;
    try {
      const own = row.opts.constrain ? logits.slice() : logits;
      row.opts.constrain?.(own, s.tokens);
      token = sampleToken(own, row.settings, row.random);
    } catch (err) {
      row.error = err; // a constraint's dead end ends this row only
      return;
    }
    if (row.stopIds.has(token)) {
      s.done = "stop";
      s.stopToken = token;
      const held = release(s);
      if (held) row.chunks.push({ row: 0, token, text: held });
      return;
    }
    s.tokens.push(token);
    const seen = visibleText(this.model, s.tokens, row.stops);
    s.text = seen.text;
    if (seen.stopped) s.done = "stop";
    else if (s.tokens.length >= row.maxTokens) s.done = "length";
    const upTo = s.done ? s.text.length : seen.safe;
    const text = s.text.slice(s.emitted, upTo);
    s.emitted = Math.max(s.emitted, upTo);
    row.chunks.push({ row: 0, token, text });
    row.next = token;
  }

  private start(): void {
    if (this.running) return;
    this.running = true;
    void this.drive();
  }

  /** The decode loop: runs while any row decodes or waits to join. */
  private async drive(): Promise<void> {
    try {
      while (this.rows.length || this.joining.length) {
        this.admit();
        // an aborted row ends before the step, as streamGenerate checks its signal before each
        for (const r of this.rows) {
          if (r.opts.signal?.aborted && !r.state.done) {
            r.state.done = "abort";
            const held = release(r.state);
            if (held) r.chunks.push({ row: 0, token: r.state.tokens.at(-1)!, text: held });
          }
        }
        this.removeEnded();
        if (!this.rows.length) continue;
        await this.step();
        this.removeEnded();
        await yieldToEventLoop();
      }
    } catch (err) {
      // A failure outside a forward pass (joining or cutting caches): no row may wait forever for
      // a step that will not come, so each fails with it and every cache is freed.
      const rows = [...this.rows, ...this.joining];
      this.rows = [];
      this.joining = [];
      this.cache?.dispose();
      this.cache = null;
      for (const r of rows) {
        r.own?.dispose();
        r.own = null;
        r.error ??= err;
        this.finish(r);
      }
    } finally {
      this.running = false;
    }
  }

  /** One forward pass over every row's last token; each row then samples its next. */
  private async step(): Promise<void> {
    const B = this.rows.length;
    const V = this.model.config.vocabSize;
    const rows = [...this.rows];
    this.busy = true;
    let data: Float32Array;
    try {
      const logits = tf.tidy(() =>
        this.model.decoder.forward({ ids: rows.map((r) => [r.next]) }, { cache: this.cache!, adapter: this.adapter }).reshape([B, V]), // [B, V]
      );
      for (const r of rows) r.held.push(r.next);
      data = (await logits.data()) as Float32Array;
      logits.dispose();
    } catch (err) {
      // the cache may be half-extended: no row's cache is kept, and every row fails as it would alone
      this.cache?.dispose();
      this.cache = null;
      this.rows = [];
      for (const r of rows) {
        r.error = err;
        this.finish(r);
      }
      return;
    } finally {
      this.busy = false;
    }
    this.stats.steps++;
    this.stats.rowSteps += B;
    this.stats.widest = Math.max(this.stats.widest, B);
    for (const [b, r] of rows.entries()) {
      if (!r.leaving) this.advance(r, data.subarray(b * V, (b + 1) * V));
      this.notify(r);
    }
  }

  /** Moves rows waiting to join into the batch: their caches are left-padded to one length. */
  private admit(): void {
    const room = this.maxRows - this.rows.length;
    if (room <= 0 || !this.joining.length) return;
    const joiners = this.joining.splice(0, room);
    const parts: { cache: KVCache; rows: number }[] = [];
    if (this.cache) parts.push({ cache: this.cache, rows: this.rows.length });
    for (const r of joiners) parts.push({ cache: r.own!, rows: 1 });
    const L = Math.max(...parts.map((p) => p.cache.length));
    const layers = this.model.config.numLayers;
    const merged = new KVCache(this.rows.length + joiners.length);
    merged.mask = parts.flatMap((p) => p.cache.mask.map((m) => [...Array(L - m.length).fill(0), ...m]));
    for (let l = 0; l < layers; l++) {
      const [keys, values] = tf.tidy(() => {
        const pad = (t: tf.Tensor4D, length: number): tf.Tensor4D => {
          if (length === L) return t;
          const [n, kv, , hd] = t.shape;
          return tf.concat([tf.zeros([n, kv, L - length, hd]), t], 2); // [n, nKv, L, hd]: padded slots first, masked
        };
        const held = parts.map((p) => ({ ...p.cache.layer(l)!, length: p.cache.length }));
        return [
          tf.concat(held.map((p) => pad(p.keys, p.length)), 0) as tf.Tensor4D, // [B, nKv, L, hd]
          tf.concat(held.map((p) => pad(p.values, p.length)), 0) as tf.Tensor4D, // [B, nKv, L, hd]
        ];
      });
      merged.setLayer(l, keys, values);
    }
    for (const p of parts) p.cache.dispose();
    for (const r of joiners) r.own = null;
    this.cache = merged;
    this.rows.push(...joiners);
  }

  /** Takes out the rows that ended (or whose consumer left), handing each its own cache. */
  private removeEnded(): void {
    const gone = this.rows.filter((r) => r.state.done || r.leaving || r.error !== undefined);
    if (!gone.length) return;
    const cache = this.cache!;
    const keep: number[] = [];
    for (const [b, r] of this.rows.entries()) {
      if (!gone.includes(r)) keep.push(b);
      else this.leave(r, r.opts.onCache ? this.cut(cache, b, r) : undefined);
    }
    const kept = keep.map((b) => this.rows[b]!);
    this.rows = kept;
    if (!keep.length) {
      cache.dispose();
      this.cache = null;
      return;
    }
    // the padding every kept row has goes too: it only cost attention time
    const from = Math.min(...kept.map((r) => cache.length - r.held.length));
    const next = new KVCache(keep.length);
    next.mask = keep.map((b) => cache.mask[b]!.slice(from));
    for (let l = 0; l < cache.layers; l++) {
      const [keys, values] = tf.tidy(() => {
        const index = tf.tensor1d(keep, "int32");
        const pick = (t: tf.Tensor4D) => {
          const rows = keep.length === t.shape[0] ? t : (tf.gather(t, index, 0) as tf.Tensor4D); // [B', nKv, S, hd]
          return (from > 0 ? tf.slice(rows, [0, 0, from, 0], [-1, -1, -1, -1]) : rows.clone()) as tf.Tensor4D; // [B', nKv, S - from, hd]
        };
        const held = cache.layer(l)!;
        return [pick(held.keys), pick(held.values)];
      });
      next.setLayer(l, keys, values);
    }
    cache.dispose();
    this.cache = next;
  }

  /** Row b's own cache, its padding cut off: what it would hold had it run alone. */
  private cut(cache: KVCache, b: number, r: Row): KVCache {
    const pad = cache.length - r.held.length;
    const own = new KVCache(1);
    own.slack = r.slack;
    own.mask = [cache.mask[b]!.slice(pad)];
    for (let l = 0; l < cache.layers; l++) {
      const [keys, values] = tf.tidy(() => {
        const held = cache.layer(l)!;
        const row = (t: tf.Tensor4D) => tf.slice(t, [b, 0, pad, 0], [1, -1, -1, -1]) as tf.Tensor4D; // [1, nKv, held, hd]
        return [row(held.keys), row(held.values)];
      });
      own.setLayer(l, keys, values);
    }
    return own;
  }

  /** A row is done: its cache goes to onCache (or is freed) and its consumer is woken. */
  private leave(r: Row, cache: KVCache | null | undefined): void {
    r.own = null;
    if (cache) {
      if (r.opts.onCache) {
        try {
          r.opts.onCache(cache, r.held, r.prompt.length);
        } catch (err) {
          cache.dispose();
          r.error ??= err;
        }
      } else cache.dispose();
    }
    this.finish(r);
  }

  private finish(r: Row): void {
    r.finished = true;
    this.notify(r);
  }

  private notify(r: Row): void {
    const wake = r.wake;
    r.wake = null;
    wake?.();
  }

  /** The consumer stopped reading before the row ended. */
  private abandon(r: Row): void {
    const waiting = this.joining.indexOf(r);
    if (waiting >= 0) {
      this.joining.splice(waiting, 1);
      this.leave(r, r.own);
    } else if (this.rows.includes(r)) {
      r.leaving = true;
      // between steps it leaves now (its tensors freed as streamGenerate's would be); during a step, once the step ends
      if (!this.busy) this.removeEnded();
    } else this.finish(r);
  }
}
