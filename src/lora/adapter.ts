// LoRA: y = W x + (alpha / r) * B A x, with A [r, in] random and B [out, r] zero, so a new adapter
// starts as the identity. Adapters are keyed by name and several can live beside one base model;
// serving applies them unmerged (a swap is a pointer change), and merging is a separate step.
import { createHash } from "node:crypto";
import { tf } from "../tensor/backend.js";
import type { ModelConfig } from "../model/config.js";
import { projectionShapes, type AdapterHook } from "../model/decoder.js";

export const LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] as const;
export type LoraTarget = (typeof LORA_TARGETS)[number];

export interface LoraSettings {
  r: number;
  alpha: number;
  dropout: number;
  targetModules: LoraTarget[];
  /** scale by alpha / sqrt(r) instead of alpha / r */
  useRslora: boolean;
}

export const DEFAULT_LORA: LoraSettings = {
  r: 8,
  alpha: 16,
  dropout: 0,
  targetModules: ["q_proj", "k_proj", "v_proj", "o_proj"],
  useRslora: false,
};

export interface LoraPair {
  /** [r, in] */
  A: tf.Variable;
  /** [out, r] */
  B: tf.Variable;
}

/** A variable that owns its data: the initial tensor is released, not leaked. */
export function ownedVariable(initial: tf.Tensor): tf.Variable {
  const v = tf.variable(initial);
  initial.dispose();
  return v;
}

/**
 * A fingerprint of the base weights an adapter was trained on: config shape + the first 4096
 * values of the token embeddings (`embed`: their host data, row-major; LoadedModel.fingerprint).
 */
export function baseFingerprint(config: ModelConfig, embed: Float32Array): string {
  const sample = embed.subarray(0, Math.min(4096, embed.length));
  const h = createHash("sha256");
  h.update(JSON.stringify([config.architecture, config.hiddenSize, config.numLayers, config.numHeads, config.numKvHeads, config.vocabSize]));
  h.update(Buffer.from(sample.buffer, sample.byteOffset, sample.byteLength));
  return h.digest("hex").slice(0, 16);
}



export class LoraAdapter implements AdapterHook {
  /** module name (e.g. model.layers.0.self_attn.q_proj) -> its A and B */
  readonly modules = new Map<string, LoraPair>();
  readonly scaling: number;
  /** dropout applies only while training */
  training = false;
  /** the base model's layer count, so a save can tell whether every layer is adapted */
  numLayers: number | undefined;

  constructor(
    readonly settings: LoraSettings,
    readonly baseModelFingerprint: string,
  ) {
    this.scaling = settings.useRslora ? settings.alpha / Math.sqrt(settings.r) : settings.alpha / settings.r;
  }

  /** Fresh adapter: A ~ kaiming-uniform (as PEFT), B = 0, on every target of every layer. */
  static create(config: ModelConfig, settings: LoraSettings, fingerprint: string, seed = 0): LoraAdapter {
    const adapter = new LoraAdapter(settings, fingerprint);
    adapter.numLayers = config.numLayers;
    const shapes = projectionShapes(config);
    let s = seed;
    for (let l = 0; l < config.numLayers; l++) {
      for (const target of settings.targetModules) {
        const { inFeatures, outFeatures, prefix } = shapes[target]!;
        const bound = 1 / Math.sqrt(inFeatures);
        adapter.modules.set(`model.layers.${l}.${prefix}.${target}`, {
          A: ownedVariable(tf.randomUniform([settings.r, inFeatures], -bound, bound, "float32", s++)),
          B: ownedVariable(tf.zeros([outFeatures, settings.r])),
        });
      }
    }
    return adapter;
  }

  /** A trainable copy (e.g. the next version of a rolling chain starts from the live one). */
  clone(): LoraAdapter {
    const copy = new LoraAdapter(this.settings, this.baseModelFingerprint);
    copy.numLayers = this.numLayers;
    for (const [name, { A, B }] of this.modules) {
      copy.modules.set(name, { A: ownedVariable(A.clone()), B: ownedVariable(B.clone()) });
    }
    return copy;
  }

  delta(module: string, x: tf.Tensor2D): tf.Tensor2D | null {
    const pair = this.modules.get(module);
    if (!pair) return null;
    const input = this.training && this.settings.dropout > 0 ? tf.dropout(x, this.settings.dropout) : x;
    const down = tf.matMul(input, pair.A as tf.Tensor2D, false, true); // [N, r]
    return tf.matMul(down, tf.mul(pair.B, this.scaling) as tf.Tensor2D, false, true); // [N, out]; scaling B [out, r] costs less than scaling the output
  }

  factors(module: string): { a: tf.Tensor2D; b: tf.Tensor2D; scale: number } | undefined {
    const pair = this.modules.get(module);
    if (!pair || (this.training && this.settings.dropout > 0)) return undefined;
    return { a: pair.A as tf.Tensor2D, b: pair.B as tf.Tensor2D, scale: this.scaling };
  }

  variables(): tf.Variable[] {
    return [...this.modules.values()].flatMap(({ A, B }) => [A, B]);
  }

  parameterCount(): number {
    return this.variables().reduce((n, v) => n + v.size, 0);
  }

  /** scaling * B @ A for one module, [out, in]: what merging adds to W. */
  deltaWeight(module: string): tf.Tensor2D {
    const pair = this.modules.get(module);
    if (!pair) throw new Error(`adapter has no module ${module}`);
    return tf.tidy(() => tf.matMul(pair.B as tf.Tensor2D, pair.A as tf.Tensor2D).mul(this.scaling));
  }

  /** Plain copies of every A and B, e.g. to keep the best epoch while training continues. */
  async snapshot(): Promise<Map<string, { A: Float32Array; B: Float32Array }>> {
    const out = new Map<string, { A: Float32Array; B: Float32Array }>();
    for (const [name, { A, B }] of this.modules) {
      const [a, b] = await Promise.all([A.data(), B.data()]);
      out.set(name, { A: (a as Float32Array).slice(), B: (b as Float32Array).slice() });
    }
    return out;
  }

  restore(snapshot: Map<string, { A: Float32Array; B: Float32Array }>): void {
    for (const [name, { A, B }] of this.modules) {
      const s = snapshot.get(name);
      if (!s) throw new Error(`snapshot lacks module ${name}`);
      tf.tidy(() => {
        A.assign(tf.tensor(s.A, A.shape));
        B.assign(tf.tensor(s.B, B.shape));
      });
    }
  }

  dispose(): void {
    for (const v of this.variables()) v.dispose();
    this.modules.clear();
  }
}

/** Several adapters applied together (their deltas add), e.g. a persona beside a news adapter. */
export class AdapterStack implements AdapterHook {
  constructor(readonly adapters: AdapterHook[]) {}
  delta(module: string, x: tf.Tensor2D): tf.Tensor2D | null {
    let sum: tf.Tensor2D | null = null;
    for (const a of this.adapters) {
      const d = a.delta(module, x);
      if (d) sum = sum ? tf.add(sum, d) : d;
    }
    return sum;
  }
}

/**
 * Adapters by name beside one base model, like PEFT's named adapters: add several, choose which
 * are active, or disable them all to get the base model back.
 */
export class AdapterRegistry {
  private readonly byName = new Map<string, LoraAdapter>();
  private active: string[] = [];

  add(name: string, adapter: LoraAdapter): void {
    if (this.byName.has(name)) throw new Error(`an adapter named "${name}" is already loaded`);
    this.byName.set(name, adapter);
  }

  get(name: string): LoraAdapter {
    const a = this.byName.get(name);
    if (!a) throw new Error(`no adapter named "${name}" (loaded: ${[...this.byName.keys()].join(", ") || "none"})`);
    return a;
  }

  names(): string[] {
    return [...this.byName.keys()];
  }

  setActive(...names: string[]): void {
    for (const n of names) this.get(n);
    this.active = names;
  }

  disable(): void {
    this.active = [];
  }

  /** The hook for the decoder: undefined when no adapter is active (the base model). */
  hook(): AdapterHook | undefined {
    if (this.active.length === 0) return undefined;
    if (this.active.length === 1) return this.get(this.active[0]!);
    return new AdapterStack(this.active.map((n) => this.get(n)));
  }

  remove(name: string): void {
    this.get(name).dispose();
    this.byName.delete(name);
    this.active = this.active.filter((n) => n !== name);
  }
}

/**
 * Fuses adapters into new base weights (W + scaling * B A) and returns a new weight map in the
 * decoder's layout (Linear weights [in, out]); the original map is untouched so serving can keep
 * using it unmerged.
 */
export function mergeAdapters(weights: Map<string, tf.Tensor>, adapters: LoraAdapter[]): Map<string, tf.Tensor> {
  return shiftByAdapters(weights, adapters, 1);
}

/** The inverse of mergeAdapters: W - scaling * B A, as a new weight map. */
export function unmergeAdapters(weights: Map<string, tf.Tensor>, adapters: LoraAdapter[]): Map<string, tf.Tensor> {
  return shiftByAdapters(weights, adapters, -1);
}

function shiftByAdapters(weights: Map<string, tf.Tensor>, adapters: LoraAdapter[], sign: 1 | -1): Map<string, tf.Tensor> {
  const merged = new Map<string, tf.Tensor>();
  for (const [name, w] of weights) merged.set(name, w.clone());
  for (const adapter of adapters) {
    for (const module of adapter.modules.keys()) {
      const key = `${module}.weight`;
      const base = merged.get(key);
      if (!base) throw new Error(`cannot merge: base has no ${key}`);
      const d = tf.tidy(() => adapter.deltaWeight(module).transpose()); // [in, out], the decoder's layout
      merged.set(key, sign > 0 ? tf.add(base, d) : tf.sub(base, d));
      base.dispose();
      d.dispose();
    }
  }
  return merged;
}
