// The live weights of one agent: a shared base model plus the agent's current adapter version.
// Each request pins the version it started on (acquire/release); a swap is one assignment, so a
// request in flight finishes on its version while the next one gets the new; an old adapter is
// freed when its last request ends. A new adapter is loaded and checked before the swap, so a bad
// checkpoint never replaces a good one.
//
// Each version also keeps the KV caches its replies ended with (PrefixStore), so the next turn of
// a chat prefills only what is new; they go when the version is swapped out.
import type { LoraAdapter } from "../lora/adapter.js";
import { loadAdapter } from "../lora/peft.js";
import type { KVCache } from "../model/decoder.js";
import type { LoadedModel } from "../model/load.js";
import { PrefixStore, type PrefixStats } from "../model/prefix-cache.js";

/** Bytes of keys and values an agent keeps for reuse by later requests (kiln serve --prefix-cache-mb). */
export const DEFAULT_PREFIX_CACHE_BYTES = 128 * 2 ** 20;

interface Slot {
  version: string | null;
  adapter: LoraAdapter | undefined;
  leases: number;
  retired: boolean;
  prefixes: PrefixStore;
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
  release(): void;
}

export class LiveModel {
  readonly fingerprint: string;
  readonly prefixStats: PrefixStats = { hits: 0, misses: 0, reusedTokens: 0 };
  private prefixBudget = DEFAULT_PREFIX_CACHE_BYTES;
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
    return {
      version: slot.version,
      adapter: slot.adapter,
      prefix: (ids) => (slot.retired ? undefined : slot.prefixes.take(ids)),
      keep: (cache, tokens, prompt) => {
        if (slot.retired) cache.dispose();
        else slot.prefixes.put(cache, tokens, prompt);
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
