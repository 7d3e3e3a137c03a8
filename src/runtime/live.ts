// The live weights of one agent: a shared base model plus the agent's current adapter version.
// Each request pins the version it started on (acquire/release); a swap is one assignment, so a
// request in flight finishes on its version while the next one gets the new; an old adapter is
// freed when its last request ends. A new adapter is loaded and checked before the swap, so a bad
// checkpoint never replaces a good one.
//
// Each version also keeps the KV caches its replies ended with (PrefixStore), so the next turn of
// a chat prefills only what is new; they go when the version is swapped out.
//
// With batchRows > 1 (kiln serve --batch), each version also has one DecodeBatcher: concurrent
// replies on that version are decoded in one forward pass per token. Its adapter is the version's
// own, so a reply never joins a batch on other weights.
import type { LoraAdapter } from "../lora/adapter.js";
import { loadAdapter } from "../lora/peft.js";
import { batchable, DecodeBatcher, type RowOptions } from "../model/batch.js";
import type { KVCache } from "../model/kv-cache.js";
import { streamGenerate, type GenerationChunk, type GenerationResult } from "../model/generate.js";
import type { LoadedModel } from "../model/load.js";
import { PrefixStore, type PrefixStats } from "../model/prefix-cache.js";

/**
 * Replies decoded together when `kiln serve --batch` is not given: on a GPU a decode step is
 * bound by dispatching its kernels, so 32 rows cost 1.17x one row on an H200 (docs/benchmarks.md,
 * session 13); on two CPU cores 4 rows cost 2-2.5x one, and kiln-mini served no more batched.
 */
export function defaultBatchRows(backend: { gpu: boolean }): number {
  return backend.gpu ? 16 : 1;
}

/**
 * Replies `kiln serve` runs at once for `batch` rows. A model with sliding-window layers decodes
 * each reply alone (batchable), and replies decoded apart at the same time cost a step each per
 * token (on a GPU, bound by dispatch, 16 at once would each be about 16 times slower, for no more
 * tokens served), so with such a model on the server they run one at a time: the queue is the
 * server's, across its agents.
 */
export function concurrentReplies(batch: number, models: readonly LoadedModel[]): number {
  return models.every(batchable) ? batch : 1;
}

/**
 * The name of the base model (no adapter) wherever kiln names the weights that are live or that
 * answered, in the HTTP API and in --json output alike: a client compares it, prints it or puts
 * it in a label (metrics) without a case for null. In memory and in the ledger it is null.
 */
export const BASE_VERSION = "base";

export function versionName(version: string | null): string {
  return version ?? BASE_VERSION;
}

/** Bytes of keys and values an agent keeps for reuse by later requests (kiln serve --prefix-cache-mb). */
export const DEFAULT_PREFIX_CACHE_BYTES = 128 * 2 ** 20;

interface Slot {
  version: string | null;
  adapter: LoraAdapter | undefined;
  leases: number;
  retired: boolean;
  prefixes: PrefixStore;
  batcher?: DecodeBatcher;
}

export interface Lease {
  version: string | null;
  adapter: LoraAdapter | undefined;
  /** A cache holding the start of `ids` on these weights, if one is kept (the caller owns it). */
  prefix(ids: readonly number[]): { cache: KVCache; length: number } | undefined;
  /**
   * Hands a reply's cache back for later requests on these weights (disposed if they are gone):
   * it holds `tokens`, the first `prompt` of them the request's prompt (see PrefixStore.put).
   */
  keep(cache: KVCache, tokens: number[], prompt?: number): void;
  /**
   * A reply to one prompt on these weights, continuing a kept prefix cache and keeping the cache
   * it ends with: decoded with the version's other replies in flight when batchRows > 1, else
   * alone (streamGenerate).
   */
  generate(ids: number[], opts?: RowOptions): AsyncGenerator<GenerationChunk, GenerationResult[]>;
  release(): void;
}

export class LiveModel {
  readonly fingerprint: string;
  readonly prefixStats: PrefixStats = { hits: 0, misses: 0, reusedTokens: 0 };
  private prefixBudget = DEFAULT_PREFIX_CACHE_BYTES;
  private rows = 1;
  private current: Slot;
  private readonly slots: Set<Slot>;

  constructor(readonly model: LoadedModel) {
    this.fingerprint = model.fingerprint;
    this.current = this.slot(null, undefined);
    this.slots = new Set([this.current]);
  }

  /** Bytes of KV caches kept for reuse; 0 keeps none. */
  get prefixCacheBytes(): number {
    return this.prefixBudget;
  }

  set prefixCacheBytes(bytes: number) {
    if (!(bytes >= 0)) throw new Error(`the prefix cache size must be 0 or more bytes (got ${bytes})`);
    this.prefixBudget = bytes;
    this.current.prefixes.fit();
  }

  /**
   * The most replies decoded in one forward pass (1: each alone). Models with sliding-window
   * layers always decode alone (see batchable).
   */
  get batchRows(): number {
    return this.rows;
  }

  set batchRows(n: number) {
    if (!(Number.isInteger(n) && n >= 1)) throw new Error(`a batch must be a whole number of rows, at least 1 (got ${n})`);
    this.rows = n;
  }

  /** The batcher of the live version (undefined until a batched reply ran on it). */
  get batcher(): DecodeBatcher | undefined {
    return this.current.batcher;
  }

  /** Bytes of KV caches kept now. */
  get prefixCacheHeld(): number {
    return this.current.prefixes.bytes;
  }

  /** Tensors of the KV caches kept now (a share of the process's tensor count). */
  get prefixCacheTensors(): number {
    return this.current.prefixes.tensors;
  }

  /** Conversations whose KV caches are kept now. */
  get prefixCacheEntries(): number {
    return this.current.prefixes.size;
  }

  get version(): string | null {
    return this.current.version;
  }

  /** Versions still held in memory (the live one and any with requests in flight). */
  get resident(): (string | null)[] {
    return [...this.slots].map((s) => s.version);
  }

  acquire(): Lease {
    const slot = this.current;
    slot.leases++;
    let released = false;
    const prefix = (ids: readonly number[]) => (slot.retired ? undefined : slot.prefixes.take(ids));
    const keep = (cache: KVCache, tokens: number[], prompt?: number) => {
      if (slot.retired) cache.dispose();
      else slot.prefixes.put(cache, tokens, prompt);
    };
    return {
      version: slot.version,
      adapter: slot.adapter,
      prefix,
      keep,
      generate: (ids, opts = {}) => {
        const kept = prefix(ids);
        if (this.rows > 1 && batchable(this.model)) {
          // a batcher made for fewer rows is replaced for new replies; the old one ends with its own
          if (slot.batcher?.maxRows !== this.rows) slot.batcher = new DecodeBatcher(this.model, this.rows, slot.adapter);
          return slot.batcher.generate(ids, { ...opts, prefix: kept, onCache: keep });
        }
        return streamGenerate(this.model, [ids], { ...opts, adapter: slot.adapter, prefix: kept, onCache: keep });
      },
      release: () => {
        if (released) return;
        released = true;
        slot.leases--;
        this.collect(slot);
      },
    };
  }

  /** Loads `dir` (null = the base model) and makes it live. Throws, changing nothing, on a bad adapter. */
  swapTo(version: string | null, dir: string | null): void {
    const adapter = dir ? loadAdapter(dir, this.model.config, this.fingerprint) : undefined;
    const previous = this.current;
    this.current = this.slot(version, adapter);
    this.slots.add(this.current);
    previous.retired = true;
    previous.prefixes.dispose(); // no new request will ask those weights
    this.collect(previous);
  }

  private slot(version: string | null, adapter: LoraAdapter | undefined): Slot {
    return { version, adapter, leases: 0, retired: false, prefixes: new PrefixStore(this.model.config.slidingWindows, () => this.prefixBudget, this.prefixStats) };
  }

  private collect(slot: Slot): void {
    if (slot.retired && slot.leases === 0) {
      slot.adapter?.dispose();
      slot.adapter = undefined;
      this.slots.delete(slot);
    }
  }

  dispose(): void {
    for (const s of this.slots) {
      s.retired = true; // a reply still in flight neither takes nor keeps a cache here
      s.adapter?.dispose();
      s.adapter = undefined; // its last lease's release must not free it again
      s.prefixes.dispose();
    }
    this.slots.clear();
  }
}
