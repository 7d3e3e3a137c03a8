// PEFT LoRA directories: adapter_config.json + adapter_model.safetensors, with PEFT's key names
// (base_model.model.<module>.lora_A.weight [r, in], .lora_B.weight [out, r]) so PEFT, vLLM and
// llama.cpp's converter read what kiln writes, and kiln reads what they write.
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { z } from "zod";
import { tf } from "../tensor/backend.js";
import type { ModelConfig } from "../model/config.js";
import { projectionShapes } from "../model/decoder.js";
import { readHeader, readTensors, writeSafetensors, SafetensorsError } from "../model/safetensors.js";
import { LORA_TARGETS, LoraAdapter, ownedVariable, type LoraSettings, type LoraTarget } from "./adapter.js";

export const ADAPTER_CONFIG = "adapter_config.json";
export const ADAPTER_WEIGHTS = "adapter_model.safetensors";
const PEFT_PREFIX = "base_model.model.";
const FINGERPRINT_KEY = "kiln.base_fingerprint";

export class AdapterFileError extends Error {
  constructor(where: string, problem: string) {
    super(`${where}: ${problem}`);
    this.name = "AdapterFileError";
  }
}

const AdapterConfigSchema = z
  .object({
    peft_type: z.literal("LORA"),
    r: z.number().int().positive(),
    lora_alpha: z.number().positive(),
    lora_dropout: z.number().min(0).max(1).default(0),
    target_modules: z.union([z.array(z.string()), z.string()]),
    use_rslora: z.boolean().default(false),
    use_dora: z.boolean().default(false),
    fan_in_fan_out: z.boolean().default(false),
    bias: z.string().default("none"),
    base_model_name_or_path: z.string().nullish(),
    rank_pattern: z.record(z.string(), z.number()).default({}),
    alpha_pattern: z.record(z.string(), z.number()).default({}),
  })
  .passthrough();

/** The adapter_config.json PEFT writes for a causal-LM LoRA. */
export function peftConfig(settings: LoraSettings, baseModel: string): Record<string, unknown> {
  return {
    peft_type: "LORA",
    task_type: "CAUSAL_LM",
    base_model_name_or_path: baseModel,
    r: settings.r,
    lora_alpha: settings.alpha,
    lora_dropout: settings.dropout,
    target_modules: settings.targetModules,
    bias: "none",
    fan_in_fan_out: false,
    use_rslora: settings.useRslora,
    use_dora: false,
    modules_to_save: null,
    rank_pattern: {},
    alpha_pattern: {},
    inference_mode: true,
    init_lora_weights: true,
    layers_to_transform: null,
    layers_pattern: null,
    revision: null,
  };
}

/** Every tensor key an adapter with these settings has, derived from the HF module names. */
export function peftKeys(config: ModelConfig, settings: LoraSettings): string[] {
  const shapes = projectionShapes(config);
  const keys: string[] = [];
  for (let l = 0; l < config.numLayers; l++) {
    for (const t of settings.targetModules) {
      const module = `model.layers.${l}.${shapes[t]!.prefix}.${t}`;
      keys.push(`${PEFT_PREFIX}${module}.lora_A.weight`, `${PEFT_PREFIX}${module}.lora_B.weight`);
    }
  }
  return keys;
}

/**
 * Whether an adapter may be written to `dir`: a new or empty folder, or, with `replace`, one
 * that holds a PEFT adapter. Anything else is refused before a byte is written: a wrong --out
 * must never delete a user's folder, nor an agent's version (its manifest.json says whose).
 */
export function checkAdapterTarget(dir: string, replace: boolean): void {
  if (!existsSync(dir)) return;
  if (!statSync(dir).isDirectory()) throw new AdapterFileError(dir, "exists and is not a folder; choose a new folder for the adapter");
  const entries = readdirSync(dir);
  if (entries.length === 0) return;
  if (entries.includes("manifest.json")) throw new AdapterFileError(dir, "is a version an agent owns (it has manifest.json); bake into a new folder");
  if (!entries.includes(ADAPTER_CONFIG)) throw new AdapterFileError(dir, `is a folder that is not a PEFT adapter (no ${ADAPTER_CONFIG}) and is not empty; kiln will not replace it: choose a new folder`);
  if (!replace) throw new AdapterFileError(dir, "already holds an adapter; pass --force to replace it");
}

/**
 * Writes the adapter into `dir` atomically: everything goes into a sibling temp directory that
 * is renamed into place, so a reader never sees half an adapter.
 */
export async function saveAdapter(dir: string, adapter: LoraAdapter, baseModel: string, extraFiles: Record<string, string> = {}): Promise<void> {
  const target = path.resolve(dir);
  // read every factor before touching the disk (asynchronously: the device keeps working)
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [module, { A, B }] of adapter.modules) {
    tensors.set(`${PEFT_PREFIX}${module}.lora_A.weight`, { shape: A.shape, data: (await A.data()) as Float32Array });
    tensors.set(`${PEFT_PREFIX}${module}.lora_B.weight`, { shape: B.shape, data: (await B.data()) as Float32Array });
  }
  checkAdapterTarget(target, true);
  const tmp = `${target}.tmp-${process.pid}-${Date.now()}`;
  mkdirSync(tmp, { recursive: true });
  try {
    writeFileSync(path.join(tmp, ADAPTER_CONFIG), JSON.stringify(peftConfig(adapter.settings, baseModel), null, 2) + "\n");
    writeSafetensors(path.join(tmp, ADAPTER_WEIGHTS), tensors, { format: "pt", [FINGERPRINT_KEY]: adapter.baseModelFingerprint });
    for (const [name, text] of Object.entries(extraFiles)) writeFileSync(path.join(tmp, name), text);
    if (existsSync(target)) rmSync(target, { recursive: true });
    renameSync(tmp, target);
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
}

/** Reads just the settings of a PEFT directory (validated). */
export function readAdapterSettings(dir: string): LoraSettings {
  const file = path.join(dir, ADAPTER_CONFIG);
  if (!existsSync(file)) throw new AdapterFileError(dir, `not a PEFT adapter directory: ${ADAPTER_CONFIG} is missing`);
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, "utf8"));
  } catch (err) {
    throw new AdapterFileError(file, `is not valid JSON (${(err as Error).message})`);
  }
  const parsed = AdapterConfigSchema.safeParse(raw);
  if (!parsed.success) {
    throw new AdapterFileError(file, parsed.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; "));
  }
  const c = parsed.data;
  if (c.use_dora) throw new AdapterFileError(file, "DoRA adapters are not supported");
  if (c.fan_in_fan_out) throw new AdapterFileError(file, "fan_in_fan_out adapters (GPT-2 Conv1D) are not supported");
  if (Object.keys(c.rank_pattern).length || Object.keys(c.alpha_pattern).length) {
    throw new AdapterFileError(file, "per-module rank_pattern / alpha_pattern are not supported");
  }
  const targets = (typeof c.target_modules === "string" ? [c.target_modules] : c.target_modules).map((t) => t.split(".").pop()!);
  for (const t of targets) {
    if (!(LORA_TARGETS as readonly string[]).includes(t)) throw new AdapterFileError(file, `target module ${t} is not supported (kiln targets ${LORA_TARGETS.join(", ")})`);
  }
  return { r: c.r, alpha: c.lora_alpha, dropout: c.lora_dropout, targetModules: targets as LoraTarget[], useRslora: c.use_rslora };
}

/**
 * Loads a PEFT directory for this base model. Everything is checked before any variable is made,
 * so a bad file leaves the caller's model exactly as it was.
 */
export function loadAdapter(dir: string, config: ModelConfig, fingerprint: string): LoraAdapter {
  const settings = readAdapterSettings(dir);
  const file = path.join(dir, ADAPTER_WEIGHTS);
  if (!existsSync(file)) throw new AdapterFileError(dir, `${ADAPTER_WEIGHTS} is missing`);
  let header;
  try {
    header = readHeader(file);
  } catch (err) {
    throw new AdapterFileError(file, err instanceof SafetensorsError ? err.message.replace(`${file}: `, "") : String(err));
  }
  const trainedOn = header.metadata[FINGERPRINT_KEY];
  if (trainedOn && trainedOn !== fingerprint) {
    throw new AdapterFileError(dir, `was trained on a different base model (fingerprint ${trainedOn}, this model is ${fingerprint})`);
  }
  const shapes = projectionShapes(config);
  const expected = new Map<string, number[]>();
  for (let l = 0; l < config.numLayers; l++) {
    for (const t of settings.targetModules) {
      const { inFeatures, outFeatures, prefix } = shapes[t]!;
      const module = `model.layers.${l}.${prefix}.${t}`;
      expected.set(`${PEFT_PREFIX}${module}.lora_A.weight`, [settings.r, inFeatures]);
      expected.set(`${PEFT_PREFIX}${module}.lora_B.weight`, [outFeatures, settings.r]);
    }
  }
  for (const [key, shape] of expected) {
    // PEFT sometimes writes the adapter name into the key (".lora_A.default.weight"): accept both.
    const entry = header.tensors.get(key) ?? header.tensors.get(key.replace(/\.weight$/, ".default.weight"));
    if (!entry) throw new AdapterFileError(file, `tensor "${key}" is missing (is this adapter for another architecture?)`);
    if (entry.shape.join(",") !== shape.join(",")) {
      throw new AdapterFileError(file, `tensor "${key}" has shape [${entry.shape}] but this base model needs [${shape}] (adapter made for another base model?)`);
    }
  }
  let data;
  try {
    const names = [...expected.keys()].map((k) => (header.tensors.has(k) ? k : k.replace(/\.weight$/, ".default.weight")));
    data = readTensors(header, names);
  } catch (err) {
    throw new AdapterFileError(file, (err as Error).message);
  }
  const get = (key: string) => data.get(key) ?? data.get(key.replace(/\.weight$/, ".default.weight"))!;
  const adapter = new LoraAdapter(settings, trainedOn ?? fingerprint);
  for (const key of expected.keys()) {
    if (!key.endsWith(".lora_A.weight")) continue;
    const module = key.slice(PEFT_PREFIX.length, -".lora_A.weight".length);
    const a = get(key);
    const b = get(key.replace(".lora_A.", ".lora_B."));
    adapter.modules.set(module, { A: ownedVariable(tf.tensor(a.data, a.shape)), B: ownedVariable(tf.tensor(b.data, b.shape)) });
  }
  return adapter;
}
