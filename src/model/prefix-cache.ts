// A multi-turn chat sends the whole conversation again on every turn, and prefilling it again
// costs more the longer the chat goes (seconds a turn on a CPU for a real model). The KV cache a
// reply ends with is kept, with the tokens it holds, and a later request whose prompt starts with
// some of those tokens continues from there: only the rest of its prompt is prefilled.
//
// A store belongs to one set of weights (LiveModel keeps one per version), so keys and values
// computed by other weights are never reused: vLLM served stale prefixes after an adapter reload
// (vllm #42125).
import type { KVCache } from "./kv-cache.js";

/** Shorter shared starts are prefilled again: copying the cache is not worth it for a few tokens. */
export const MIN_REUSED_TOKENS = 16;
/**
 * Conversations kept per weights version, whatever the bytes: a small model's caches are small,
 * and thousands of one-turn chats would otherwise fill the budget, each scanned on every request.
 */
export const MAX_ENTRIES = 32;
/**
 * Slots past its window a sliding layer of a cache that may be kept holds (KVCache.slack): a
 * reply's tail that comes back otherwise (a stop sequence's, an end of turn the template writes
 * its own way, a re-rendered tool call) is a few to a few dozen tokens. A cut further back than
 * this, past the window, is refused and the prompt prefilled whole. The cost is this many more
 * slots of keys and values per sliding layer, and attention over them (1.6% of a 4096 window).
 */
export const KEPT_SLACK = 64;

export interface PrefixStats {
  hits: number;
  misses: number;
  /** prompt tokens not prefilled because a cache held them */
  reusedTokens: number;
}

interface Entry {
  tokens: number[];
  /** how many of `tokens` were the request's prompt; the rest is its reply as generated */
  prompt: number;
  cache: KVCache;
  bytes: number;
  lastUsed: number;
}

export class PrefixStore {
  private entries: Entry[] = [];
  private clock = 0;

  constructor(
    private readonly windows: readonly (number | null)[],
    /** the most bytes of keys and values kept; read on every put, so it can change */
    private readonly budget: () => number,
    private readonly stats: PrefixStats,
  ) {}

  get bytes(): number {
    return this.entries.reduce((n, e) => n + e.bytes, 0);
  }

  get size(): number {
    return this.entries.length;
  }

  get tensors(): number {
    return this.entries.reduce((n, e) => n + e.cache.tensors.length, 0);
  }

  /**
   * A cache holding the longest start of `ids` any entry holds (at least one token is left to
   * prefill, for the next token's logits). An entry wholly reused is handed over (the reply
   * extends it and puts it back). So is one whose whole prompt `ids` starts with, cut to the
   * shared start: that is the next turn of its conversation, with the reply sent back other than
   * as generated (cut at a stop sequence, its leading space trimmed, closed or stripped by the
   * chat template, a tool call re-rendered), and no one will continue the reply as generated; a
   * copy would leave the old entry beside the new one, holding the conversation twice. A shorter
   * part of an entry (another chat sharing a start, the same prompt asked again) is copied, and
   * the entry stays for its own conversation.
   */
  take(ids: readonly number[]): { cache: KVCache; length: number } | undefined {
    if (this.budget() <= 0) {
      this.stats.misses++;
      return undefined;
    }
    let best: Entry | undefined;
    let length = 0;
    for (const e of this.entries) {
      const n = sharedStart(e.tokens, ids, ids.length - 1);
      if (n > length) [best, length] = [e, n];
    }
    if (best && length >= Math.min(MIN_REUSED_TOKENS, best.tokens.length)) {
      // cut in place: the rest is freed, not kept beside a copy (nothing to cut when all is shared)
      const handed = length >= best.prompt && best.cache.truncate(length, this.windows);
      const cache = handed ? best.cache : best.cache.prefix(length, this.windows);
      if (cache) {
        if (handed) this.entries.splice(this.entries.indexOf(best), 1);
        else best.lastUsed = ++this.clock;
        this.stats.hits++;
        this.stats.reusedTokens += length;
        return { cache, length };
      }
    }
    this.stats.misses++;
    return undefined;
  }

  /**
   * Keeps `cache` (holding `tokens`, of which the first `prompt` were the request's prompt),
   * dropping the least recently used entries past the budget or MAX_ENTRIES. Without `prompt`
   * all of `tokens` count as prompt: the entry is then cut for no one (see take).
   */
  put(cache: KVCache, tokens: number[], prompt = tokens.length): void {
    if (cache.length !== tokens.length || tokens.length < MIN_REUSED_TOKENS) {
      // a reply aborted before its first forward holds nothing worth keeping
      cache.dispose();
      return;
    }
    // An entry whose tokens are all the start of the new one is worth nothing more.
    for (const e of this.entries.filter((e) => e.tokens.length <= tokens.length && sharedStart(e.tokens, tokens, e.tokens.length) === e.tokens.length)) this.drop(e);
    // its room to grow would only take memory while it waits (the next append grows it again)
    cache.compact(this.windows);
    // a reply aborted before its first forward holds only part of its prompt: all of it is prompt,
    // so a request reusing it whole takes it (as take() hands over any entry reused whole)
    this.entries.push({ tokens, prompt: Math.min(prompt, tokens.length), cache, bytes: cache.bytes, lastUsed: ++this.clock });
    this.fit();
  }

  /** Drops the least recently used entries until the rest fit the budget and MAX_ENTRIES. */
  fit(): void {
    const budget = Math.max(0, this.budget());
    this.entries.sort((a, b) => a.lastUsed - b.lastUsed);
    while (this.entries.length && (this.bytes > budget || this.entries.length > MAX_ENTRIES)) this.drop(this.entries[0]!);
  }

  dispose(): void {
    for (const e of [...this.entries]) this.drop(e);
  }

  private drop(e: Entry): void {
    this.entries.splice(this.entries.indexOf(e), 1);
    e.cache.dispose();
  }
}

/** How many leading tokens `a` and `b` share, at most `limit`. */
function sharedStart(a: readonly number[], b: readonly number[], limit: number): number {
  const n = Math.min(a.length, b.length, limit);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}
