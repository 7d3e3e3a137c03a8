// PEFT LoRA directories: adapter_config.json + adapter_model.safetensors, with PEFT's key names
// (base_model.model.<module>.lora_A.weight [r, in], .lora_B.weight [out, r]) so PEFT, vLLM and
// llama.cpp's converter read what kiln writes, and kiln reads what they write.
import { createHash } from "node:crypto";
import { closeSync, existsSync, openSync, readdirSync, readFileSync, readSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { z } from "zod";
import { tf } from "../tensor/backend.js";
import type { ModelConfig } from "../model/config.js";
import { projectionShapes } from "../model/decoder.js";
import { readHeader, readTensors, writeSafetensors, SafetensorsError } from "../model/safetensors.js";
import { LORA_TARGETS, LoraAdapter, ownedVariable, type LoraSettings, type LoraTarget } from "./adapter.js";
import { makeDirs } from "../files.js";

export const ADAPTER_CONFIG = "adapter_config.json";
export const ADAPTER_WEIGHTS = "adapter_model.safetensors";
const PEFT_PREFIX = "base_model.model.";
const FINGERPRINT_KEY = "kiln.base_fingerprint";
/**
 * sha256 of the data section, which kiln writes with every adapter: a flipped bit in a factor
 * loads as a finite number, so without it a damaged version went live and answered otherwise,
 * with no error anywhere.
 */
const DATA_SHA256_KEY = "kiln.data_sha256";

export class AdapterFileError extends Error {
  constructor(where: string, problem: string) {
    super(`${where}: ${problem}`);
    this.name = "AdapterFileError";
  }
}

/** An adapter whose safetensors name another base model's fingerprint than the one loading it: whole, not damaged. */
export class BaseModelMismatch extends AdapterFileError {
  constructor(
    where: string,
    readonly trainedOn: string,
    readonly fingerprint: string,
  ) {
    super(where, `was trained on a different base model (fingerprint ${trainedOn}, this model is ${fingerprint})`);
    this.name = "BaseModelMismatch";
  }
}

const AdapterConfigSchema = z
  .object({
    peft_type: z.literal("LORA"),
    r: z.number().int().positive(),
    lora_alpha: z.number().positive(),
    lora_dropout: z.number().min(0).max(1).default(0),
    // (null is PEFT's "the default for this model type", which PEFT resolves before it saves: kiln
    // does not guess it; it said only "Invalid input")
    target_modules: z.union([z.array(z.string()), z.string()], {
      error: "must name the adapted modules, as a list of names (q_proj, ...) or a regex string; null (PEFT's default for the model type) is not read",
    }),
    use_rslora: z.boolean().default(false),
    use_dora: z.boolean().default(false),
    fan_in_fan_out: z.boolean().default(false),
    bias: z.string().default("none"),
    base_model_name_or_path: z.string().nullish(),
    rank_pattern: z.record(z.string(), z.number()).default({}),
    alpha_pattern: z.record(z.string(), z.number()).default({}),
    layers_to_transform: z.union([z.number().int(), z.array(z.number().int())]).nullish(),
    layers_pattern: z.union([z.string(), z.array(z.string())]).nullish(),
    exclude_modules: z.union([z.string(), z.array(z.string())]).nullish(),
    modules_to_save: z.array(z.string()).nullish(),
    lora_bias: z.boolean().default(false),
    trainable_token_indices: z.unknown().nullish(),
  })
  .passthrough();

/** The adapter_config.json PEFT writes for a causal-LM LoRA; `targetModules` defaults to the settings'. */
export function peftConfig(settings: LoraSettings, baseModel: string, targetModules: string[] = settings.targetModules): Record<string, unknown> {
  return {
    peft_type: "LORA",
    task_type: "CAUSAL_LM",
    base_model_name_or_path: baseModel,
    r: settings.r,
    lora_alpha: settings.alpha,
    lora_dropout: settings.dropout,
    target_modules: targetModules,
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
  checkFolderTarget(dir, replace, ADAPTER_CONFIG, "PEFT adapter", "an adapter");
}

/**
 * The rule of checkAdapterTarget for any folder kiln writes whole: new or empty, or, with
 * `replace`, one that `marker` shows holds what kiln would write there (`what`, `holding`).
 */
export function checkFolderTarget(dir: string, replace: boolean, marker: string, what: string, holding: string): void {
  if (!existsSync(dir)) return;
  if (!statSync(dir).isDirectory()) throw new AdapterFileError(dir, `exists and is not a folder; choose a new folder for the ${what}`);
  const entries = readdirSync(dir);
  if (entries.length === 0) return;
  if (entries.includes("manifest.json")) throw new AdapterFileError(dir, "is a version an agent owns (it has manifest.json); write into a new folder");
  if (!entries.includes(marker)) throw new AdapterFileError(dir, `is a folder that is not a ${what} (no ${marker}) and is not empty; kiln will not replace it: choose a new folder`);
  if (!replace) throw new AdapterFileError(dir, `already holds ${holding}; pass --force to replace it`);
}

/**
 * Fills a sibling temp folder and renames it into place (replacing what was there), so a reader
 * never sees half a folder and a failure leaves the old one as it was.
 */
export async function writeFolderAtomically(dir: string, fill: (tmp: string) => void | Promise<void>): Promise<void> {
  const target = path.resolve(dir);
  const tmp = `${target}.tmp-${process.pid}-${Date.now()}`;
  makeDirs(tmp);
  try {
    await fill(tmp);
    if (existsSync(target)) rmSync(target, { recursive: true });
    renameSync(tmp, target);
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
}

/** Writes the adapter into `dir` atomically (writeFolderAtomically). */
export async function saveAdapter(dir: string, adapter: LoraAdapter, baseModel: string, extraFiles: Record<string, string> = {}): Promise<void> {
  const target = path.resolve(dir);
  // read every factor before touching the disk (asynchronously: the device keeps working)
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [module, { A, B }] of adapter.modules) {
    tensors.set(`${PEFT_PREFIX}${module}.lora_A.weight`, { shape: A.shape, data: (await A.data()) as Float32Array });
    tensors.set(`${PEFT_PREFIX}${module}.lora_B.weight`, { shape: B.shape, data: (await B.data()) as Float32Array });
  }
  checkAdapterTarget(target, true);
  // Short names ("q_proj") when every layer has each adapted kind, as PEFT writes them; otherwise
  // (an adapter loaded with layers_to_transform, say) the exact module names, which PEFT matches
  // one by one, so that PEFT and kiln read back exactly these modules.
  const names = [...adapter.modules.keys()];
  const kinds = LORA_TARGETS.filter((t) => names.some((m) => m.endsWith(`.${t}`)));
  const layers = adapter.numLayers ?? 1 + Math.max(...names.map((m) => Number(/^model\.layers\.(\d+)\./.exec(m)?.[1] ?? 0)));
  const targetModules = names.length === kinds.length * layers ? kinds : names;
  await writeFolderAtomically(target, (tmp) => {
    writeFileSync(path.join(tmp, ADAPTER_CONFIG), JSON.stringify(peftConfig(adapter.settings, baseModel, targetModules), null, 2) + "\n");
    // the data section holds the tensors in name order (encodeHeader)
    const sha = createHash("sha256");
    for (const name of [...tensors.keys()].sort()) {
      const d = tensors.get(name)!.data;
      sha.update(new Uint8Array(d.buffer, d.byteOffset, d.byteLength));
    }
    writeSafetensors(path.join(tmp, ADAPTER_WEIGHTS), tensors, { format: "pt", [FINGERPRINT_KEY]: adapter.baseModelFingerprint, [DATA_SHA256_KEY]: sha.digest("hex") });
    for (const [name, text] of Object.entries(extraFiles)) writeFileSync(path.join(tmp, name), text);
  });
}

type AdapterConfig = z.infer<typeof AdapterConfigSchema>;

/** Reads and validates adapter_config.json, refusing what kiln cannot apply exactly. */
function readAdapterConfig(dir: string): { file: string; c: AdapterConfig } {
  const file = path.join(dir, ADAPTER_CONFIG);
  if (!existsSync(dir)) throw new AdapterFileError(dir, "no such adapter folder");
  if (!statSync(dir).isDirectory()) throw new AdapterFileError(dir, `a file, not an adapter folder: name the folder that holds ${ADAPTER_CONFIG} and adapter_model.safetensors`);
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
  // fan_in_fan_out is for GPT-2's Conv1D; on nn.Linear, which every kiln target is, PEFT resets it
  // to false and reads the usual [r, in] / [out, r] factors, so kiln does the same.
  if (Object.keys(c.rank_pattern).length || Object.keys(c.alpha_pattern).length) {
    throw new AdapterFileError(file, "per-module rank_pattern / alpha_pattern are not supported");
  }
  if (c.modules_to_save?.length) {
    throw new AdapterFileError(file, `modules_to_save (${c.modules_to_save.join(", ")}) replaces whole modules, which kiln cannot apply; only LoRA factors are supported`);
  }
  if (c.trainable_token_indices != null) throw new AdapterFileError(file, "trainable_token_indices (trained embedding rows) are not supported");
  if (c.lora_bias) throw new AdapterFileError(file, "lora_bias (a bias on lora_B) is not supported");
  return { file, c };
}

/**
 * The base model's modules this adapter targets, by PEFT's rules (check_target_module_exists):
 * a string is a regular expression the whole module name must match ("all-linear" is every
 * projection); a list entry matches a module of that name or ending in "." + entry, narrowed by
 * layers_to_transform; exclude_modules removes modules either way.
 */
function targetedModules(config: ModelConfig, c: AdapterConfig, file: string): string[] {
  const shapes = projectionShapes(config);
  const candidates: string[] = [];
  for (let l = 0; l < config.numLayers; l++) for (const t of LORA_TARGETS) candidates.push(`model.layers.${l}.${shapes[t]!.prefix}.${t}`);
  // modules PEFT can adapt and kiln cannot: matching one is an error, not a silent skip
  const unsupported = ["model.embed_tokens", "lm_head"];

  const regex = (pattern: string, field: string): RegExp => {
    try {
      return new RegExp(`^(?:${pattern})$`); // Python's re.fullmatch
    } catch (err) {
      throw new AdapterFileError(file, `${field} ${JSON.stringify(pattern)} is not a regular expression kiln can read (${(err as Error).message})`);
    }
  };
  const excluded = (key: string): boolean => {
    const ex = c.exclude_modules;
    if (!ex) return false;
    if (typeof ex === "string") return regex(ex, "exclude_modules").test(key);
    return ex.some((e) => key === e || key.endsWith(`.${e}`));
  };
  const layerIndexes = c.layers_to_transform == null ? null : Array.isArray(c.layers_to_transform) ? c.layers_to_transform : [c.layers_to_transform];
  const patterns = c.layers_pattern == null || c.layers_pattern.length === 0 ? null : Array.isArray(c.layers_pattern) ? c.layers_pattern : [c.layers_pattern];
  const inLayers = (key: string): boolean => {
    if (!layerIndexes || layerIndexes.length === 0) return true;
    // the first numbered segment, e.g. the 3 of model.layers.3.self_attn.q_proj
    const m = patterns ? patterns.map((p) => new RegExp(`^.*?\\.${p}\\.(\\d+)\\.`).exec(key)).find((x) => x) : /^.*?\.[^.]*\.(\d+)\./.exec(key);
    return !!m && layerIndexes.includes(Number(m[1]));
  };

  const t = c.target_modules;
  let matches: (key: string) => boolean;
  if (t === "all-linear") matches = (key) => candidates.includes(key);
  else if (typeof t === "string") {
    const re = regex(t, "target_modules");
    matches = (key) => re.test(key);
  } else {
    for (const entry of t) {
      const hit = [...candidates, ...unsupported].some((key) => key === entry || key.endsWith(`.${entry}`));
      if (!hit) throw new AdapterFileError(file, `target module ${entry} is not supported (kiln targets ${LORA_TARGETS.join(", ")})`);
    }
    matches = (key) => t.some((entry) => key === entry || key.endsWith(`.${entry}`)) && inLayers(key);
  }
  const bad = unsupported.find((key) => matches(key) && !excluded(key));
  if (bad) throw new AdapterFileError(file, `target_modules selects ${bad}, which kiln cannot adapt (kiln targets ${LORA_TARGETS.join(", ")})`);
  const modules = candidates.filter((key) => matches(key) && !excluded(key));
  if (modules.length === 0) throw new AdapterFileError(file, `target_modules ${JSON.stringify(t)} selects no module of this ${config.architecture}`);
  return modules;
}

function settingsOf(c: AdapterConfig, modules: string[]): LoraSettings {
  const kinds = LORA_TARGETS.filter((t) => modules.some((m) => m.endsWith(`.${t}`)));
  return { r: c.r, alpha: c.lora_alpha, dropout: c.lora_dropout, targetModules: kinds, useRslora: c.use_rslora };
}

/** Reads just the settings of a PEFT directory (validated); `targetModules` are the kinds of module it adapts. */
export function readAdapterSettings(dir: string, config: ModelConfig): LoraSettings {
  const { file, c } = readAdapterConfig(dir);
  return settingsOf(c, targetedModules(config, c, file));
}

/**
 * Loads a PEFT directory for this base model. Everything is checked before any variable is made,
 * so a bad file leaves the caller's model exactly as it was.
 */
export function loadAdapter(dir: string, config: ModelConfig, fingerprint: string): LoraAdapter {
  const { file: configFile, c } = readAdapterConfig(dir);
  const file = path.join(dir, ADAPTER_WEIGHTS);
  if (!existsSync(file)) throw new AdapterFileError(dir, `${ADAPTER_WEIGHTS} is missing`);
  let header;
  try {
    header = readHeader(file);
  } catch (err) {
    throw new AdapterFileError(file, err instanceof SafetensorsError ? err.message.replace(`${file}: `, "") : String(err));
  }
  // (before the modules are matched to this model: another architecture's adapter is this, not a missing module)
  const trainedOn = header.metadata[FINGERPRINT_KEY];
  if (trainedOn && trainedOn !== fingerprint) throw new BaseModelMismatch(dir, trainedOn, fingerprint);
  const modules = targetedModules(config, c, configFile);
  const settings = settingsOf(c, modules);
  const shapes = projectionShapes(config);
  const expected = new Map<string, number[]>();
  for (const module of modules) {
    const { inFeatures, outFeatures } = shapes[module.slice(module.lastIndexOf(".") + 1)]!;
    expected.set(`${PEFT_PREFIX}${module}.lora_A.weight`, [settings.r, inFeatures]);
    expected.set(`${PEFT_PREFIX}${module}.lora_B.weight`, [outFeatures, settings.r]);
  }
  // PEFT sometimes writes the adapter name into the key (".lora_A.default.weight"): accept both.
  const stored = (key: string) => (header.tensors.has(key) ? key : key.replace(/\.weight$/, ".default.weight"));
  for (const [key, shape] of expected) {
    const entry = header.tensors.get(stored(key));
    if (!entry) throw new AdapterFileError(file, `tensor "${key}" is missing (is this adapter for another architecture?)`);
    if (entry.shape.join(",") !== shape.join(",")) {
      const why = entry.shape[key.includes(".lora_A.") ? 0 : 1] !== settings.r ? `rank ${settings.r} in ${ADAPTER_CONFIG}` : "this base model";
      throw new AdapterFileError(file, `tensor "${key}" has shape [${entry.shape}] but ${why} needs [${shape}] (adapter made for another base model?)`);
    }
  }
  // A tensor kiln would not apply (modules_to_save copies, biases bias "all" trained, DoRA magnitudes, factors for
  // modules the config does not target) would make kiln compute another model than PEFT does.
  const used = new Set([...expected.keys()].map(stored));
  const stray = [...header.tensors.keys()].filter((k) => !used.has(k));
  if (stray.length) {
    throw new AdapterFileError(file, `tensor "${stray[0]}" is not a LoRA factor of a module ${ADAPTER_CONFIG} targets; kiln would ignore it${stray.length > 1 ? ` (and ${stray.length - 1} more)` : ""}`);
  }
  let data;
  try {
    data = readTensors(header, used);
  } catch (err) {
    throw new AdapterFileError(file, (err as Error).message);
  }
  for (const [key, { data: values }] of data) {
    if (!values.every(Number.isFinite)) throw new AdapterFileError(file, `tensor "${key}" holds NaN or infinite values`);
  }
  const written = header.metadata[DATA_SHA256_KEY];
  if (written !== undefined) {
    const now = dataSha256(file, header.dataStart);
    if (now !== written) throw new AdapterFileError(file, `its tensor data does not match the sha256 kiln wrote with it (${written}, now ${now}): the file was damaged or changed after it was written`);
  }
  const adapter = new LoraAdapter(settings, trainedOn ?? fingerprint);
  adapter.numLayers = config.numLayers;
  for (const module of modules) {
    const a = data.get(stored(`${PEFT_PREFIX}${module}.lora_A.weight`))!;
    const b = data.get(stored(`${PEFT_PREFIX}${module}.lora_B.weight`))!;
    adapter.modules.set(module, { A: ownedVariable(tf.tensor(a.data, a.shape)), B: ownedVariable(tf.tensor(b.data, b.shape)) });
  }
  return adapter;
}

function dataSha256(file: string, from: number): string {
  const sha = createHash("sha256");
  const buf = Buffer.alloc(1 << 20);
  const fd = openSync(file, "r");
  try {
    for (let at = from, n; (n = readSync(fd, buf, 0, buf.length, at)) > 0; at += n) sha.update(buf.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return sha.digest("hex");
}
