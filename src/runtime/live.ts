// The live weights of one agent: a shared base model plus the agent's current adapter version.
// Each request pins the version it started on (acquire/release); a swap is one assignment, so a
// request in flight finishes on its version while the next one gets the new; an old adapter is
// freed when its last request ends. A new adapter is loaded and checked before the swap, so a bad
// checkpoint never replaces a good one.
import type { LoraAdapter } from "../lora/adapter.js";
import { loadAdapter } from "../lora/peft.js";
import type { LoadedModel } from "../model/load.js";

interface Slot {
  version: string | null;
  adapter: LoraAdapter | undefined;
  leases: number;
  retired: boolean;
}

export interface Lease {
  version: string | null;
  adapter: LoraAdapter | undefined;
  release(): void;
}

export class LiveModel {
  private current: Slot = { version: null, adapter: undefined, leases: 0, retired: false };
  private readonly slots = new Set<Slot>([this.current]);
  readonly fingerprint: string;

  constructor(readonly model: LoadedModel) {
    this.fingerprint = model.fingerprint;
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
    this.current = { version, adapter, leases: 0, retired: false };
    this.slots.add(this.current);
    previous.retired = true;
    this.collect(previous);
  }

  private collect(slot: Slot): void {
    if (slot.retired && slot.leases === 0) {
      slot.adapter?.dispose();
      slot.adapter = undefined;
      this.slots.delete(slot);
    }
  }

  dispose(): void {
    for (const s of this.slots) s.adapter?.dispose();
    this.slots.clear();
  }
}
