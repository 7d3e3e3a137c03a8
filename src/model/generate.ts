// Batched, streaming generation with a KV cache. Prompts are left-padded into one batch; each row
// stops on its own (end-of-turn token, stop string, or max tokens) and the batch ends when all have.
import { tf } from "../tensor/backend.js";
import type { AdapterHook } from "./decoder.js";
import { KVCache } from "./kv-cache.js";
import { KEPT_SLACK } from "./prefix-cache.js";
import type { LoadedModel } from "./load.js";
import { sampleToken, seededRandom } from "./sampling.js";

export interface GenerateOptions {
  maxTokens?: number;
  /** 0 = greedy (the default) */
  temperature?: number;
  topK?: number;
  topP?: number;
  /** same seed, same prompts, same settings -> same tokens */
  seed?: number;
  /** extra stop ids; the model's end-of-turn ids always stop */
  stopTokenIds?: number[];
  stopStrings?: string[];
  signal?: AbortSignal;
  adapter?: AdapterHook;
  /**
   * Constrained decoding of one prompt: sets the logits of tokens that may not come next to
   * -Infinity, given the output so far (called before each token is sampled).
   */
  constrain?: (logits: Float32Array, tokens: readonly number[]) => void;
  /**
   * One prompt only: a KV cache holding the prompt's first `length` tokens (length < the
   * prompt's), so only the rest is prefilled. Generation owns it from here (see onCache).
   */
  prefix?: { cache: KVCache; length: number };
  /**
   * One prompt only: called once when generation ends (finished, aborted, returned early, or an
   * error after the cache was last extended, such as a constraint's dead end), with the KV cache
   * and the tokens it holds (the prompt and the reply's tokens that were fed back), which the
   * callee now owns, and how many of those tokens are the prompt. Where a forward pass failed
   * part-way the cache is disposed instead, as it is without onCache.
   */
  onCache?: (cache: KVCache, tokens: number[], prompt: number) => void;
}

export type FinishReason = "stop" | "length" | "abort";

export interface GenerationChunk {
  row: number;
  /** the token just sampled: not always one of the result's tokens (see `text`) */
  token: number;
  /**
   * New text since the previous chunk of this row (may be empty while a character is incomplete or
   * a stop string may be starting). A row's chunks join to its result's text: what was held back
   * comes with the end-of-turn token (or, on abort, with the row's last token again).
   */
  text: string;
}

export interface GenerationResult {
  tokens: number[];
  text: string;
  finishReason: FinishReason;
  promptTokens: number;
  /** the end-of-turn or stop id that ended the row, when one did */
  stopToken?: number;
}

export interface RowState {
  tokens: number[];
  text: string;
  emitted: number; // characters of `text` already streamed
  done: FinishReason | null;
  stopToken?: number;
}

/** Text of `tokens`, cut at the first stop string; also how much of it is safe to stream. */
export function visibleText(model: LoadedModel, tokens: number[], stops: string[]): { text: string; stopped: boolean; safe: number } {
  const full = model.tokenizer.decode(tokens);
  let cut = -1;
  for (const s of stops) {
    const at = full.indexOf(s);
    if (at >= 0 && (cut < 0 || at < cut)) cut = at;
  }
  if (cut >= 0) return { text: full.slice(0, cut), stopped: true, safe: cut };
  // Hold back a trailing partial character and anything that could still grow into a stop string.
  let safe = full.endsWith("\uFFFD") ? full.length - 1 : full.length;
  for (const s of stops) {
    for (let k = Math.min(s.length - 1, full.length); k > 0; k--) {
      if (full.endsWith(s.slice(0, k))) {
        safe = Math.min(safe, full.length - k);
        break;
      }
    }
  }
  return { text: full, stopped: false, safe };
}

/**
 * The text a row held back (a trailing partial character, the start of a stop string), now that
 * the row has ended and it can no longer change: the row's chunks then join to its final text.
 */
export function release(row: RowState): string {
  const held = row.text.slice(row.emitted);
  row.emitted = row.text.length;
  return held;
}

/**
 * One turn of the event loop. Model work is synchronous between awaits that resolve at once, so
 * without it timers, sockets, abort signals and a worker's "parent is gone" wait for the whole job.
 */
export function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

export async function* streamGenerate(
  model: LoadedModel,
  prompts: number[][],
  opts: GenerateOptions = {},
): AsyncGenerator<GenerationChunk, GenerationResult[]> {
  if (prompts.length === 0) {
    opts.prefix?.cache.dispose();
    return [];
  }
  const maxTokens = opts.maxTokens ?? 128;
  const settings = { temperature: opts.temperature ?? 0, topK: opts.topK ?? 0, topP: opts.topP ?? 1 };
  const random = seededRandom(opts.seed ?? Math.floor(Math.random() * 2 ** 32));
  const stopIds = new Set([...model.eosTokenIds, ...(opts.stopTokenIds ?? [])]);
  const stops = (opts.stopStrings ?? []).filter((s) => s.length > 0);
  const pad = model.tokenizer.padTokenId;
  const longest = Math.max(...prompts.map((p) => p.length));
  const problem =
    prompts.some((p) => p.length === 0)
      ? "a prompt has no tokens"
      : opts.constrain && prompts.length > 1
        ? "constrain applies to one prompt at a time"
        : (opts.prefix || opts.onCache) && prompts.length > 1
          ? "a cached prefix applies to one prompt at a time"
          : opts.prefix && !(opts.prefix.length >= 1 && opts.prefix.length < longest && opts.prefix.cache.length === opts.prefix.length)
            ? `the cached prefix (${opts.prefix.length} tokens, cache ${opts.prefix.cache.length}) must be a shorter start of the prompt (${longest})`
            : longest + maxTokens > model.config.maxPositions
              ? `prompt (${longest} tokens) + maxTokens (${maxTokens}) exceeds the model's ${model.config.maxPositions} positions`
              : undefined;
  if (problem) {
    opts.prefix?.cache.dispose();
    throw new Error(`generate: ${problem}`);
  }

  const rows: RowState[] = prompts.map(() => ({ tokens: [], text: "", emitted: 0, done: null }));
  const cache = opts.prefix?.cache ?? new KVCache(prompts.length);
  // a cache that may be kept holds a little past its sliding windows, so it can be cut back (see KEPT_SLACK)
  if (opts.onCache && !opts.prefix) cache.slack = KEPT_SLACK;
  const skip = opts.prefix?.length ?? 0;
  /** the tokens the cache holds, while it holds them all (a forward that throws may leave it half-extended) */
  let held: number[] | null = prompts.length === 1 ? prompts[0]!.slice(0, skip) : null;
  try {
    // Prefill: left-pad every prompt to the longest (after what the cache holds already).
    let ids = prompts.map((p) => [...Array(longest - p.length).fill(pad), ...p.slice(skip)]);
    let mask = prompts.map((p) => [...Array(longest - p.length).fill(0), ...p.slice(skip).map(() => 1)]);
    for (let step = 0; step < maxTokens; step++) {
      if (opts.signal?.aborted) {
        for (const [b, r] of rows.entries()) {
          if (r.done) continue;
          r.done = "abort";
          const held = release(r);
          if (held) yield { row: b, token: r.tokens.at(-1)!, text: held };
        }
        break;
      }
      const fed = held;
      held = null;
      const logits = tf.tidy(() => {
        const out = model.decoder.forward({ ids, mask }, { cache, adapter: opts.adapter, logitsFrom: ids[0]!.length - 1 });
        return out.reshape([prompts.length, model.config.vocabSize]); // [B, V]
      });
      if (fed) {
        fed.push(...ids[0]!);
        held = fed;
      }
      const data = (await logits.data()) as Float32Array;
      logits.dispose();
      const V = model.config.vocabSize;
      const next: number[] = [];
      for (let b = 0; b < rows.length; b++) {
        const row = rows[b]!;
        if (row.done) {
          next.push(pad);
          continue;
        }
        const rowLogits = opts.constrain ? data.slice(b * V, (b + 1) * V) : data.subarray(b * V, (b + 1) * V);
        opts.constrain?.(rowLogits, row.tokens);
        const token = sampleToken(rowLogits, settings, random);
        next.push(token);
        if (stopIds.has(token)) {
          row.done = "stop";
          row.stopToken = token;
          const held = release(row);
          if (held) yield { row: b, token, text: held };
          continue;
        }
        row.tokens.push(token);
        const seen = visibleText(model, row.tokens, stops);
        row.text = seen.text;
        if (seen.stopped) row.done = "stop";
        else if (row.tokens.length >= maxTokens) row.done = "length";
        const upTo = row.done ? row.text.length : seen.safe;
        const text = row.text.slice(row.emitted, upTo);
        row.emitted = Math.max(row.emitted, upTo);
        yield { row: b, token, text };
      }
      if (rows.every((r) => r.done)) break;
      await yieldToEventLoop();
      ids = next.map((t) => [t]);
      mask = rows.map((r, b) => [r.done && !stopIds.has(next[b]!) ? 0 : 1]);
    }
  } finally {
    if (opts.onCache && held) opts.onCache(cache, held, prompts[0]!.length);
    else cache.dispose();
  }
  return rows.map((r, b) => ({
    tokens: r.tokens,
    text: r.text,
    finishReason: r.done ?? "length",
    promptTokens: prompts[b]!.length,
    ...(r.stopToken !== undefined ? { stopToken: r.stopToken } : {}),
  }));
}

/** Runs generation to the end and returns one result per prompt. */
export async function generate(model: LoadedModel, prompts: number[][], opts: GenerateOptions = {}): Promise<GenerationResult[]> {
  const it = streamGenerate(model, prompts, opts);
  for (;;) {
    const r = await it.next();
    if (r.done) return r.value;
  }
}
