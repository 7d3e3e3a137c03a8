// Exporting a stored adapter in the formats other tools read:
//   peft    a PEFT directory (adapter_config.json + adapter_model.safetensors) for PEFT and vLLM,
//           base_model_name_or_path naming the base as they can find it
//   gguf    a llama.cpp LoRA adapter file (src/lora/gguf.ts) for `llama-cli --lora`
//   merged  a Hugging Face model directory with the adapter fused into the weights (W + s B A),
//           for transformers, kiln or any converter, with no adapter support needed
// The stored adapter is only read (and checked whole, as serving would load it, before anything is
// written); every export is written beside its destination and renamed into place.
import { copyFileSync, existsSync, openSync, closeSync, readdirSync, readSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import type { LoadedModel } from "../model/load.js";
import { weightFiles } from "../model/load.js";
import { repoIdOfSnapshot } from "../model/hub.js";
import { fromFloat32, readHeader, readRawTensor, readTensors, writeSafetensorsFrom, type DType, type TensorToWrite } from "../model/safetensors.js";
import type { LoraAdapter } from "./adapter.js";
import { writeGgufAdapter, ggufArchitecture, type GgufDType } from "./gguf.js";
import { AdapterFileError, checkAdapterTarget, checkFolderTarget, loadAdapter, saveAdapter, writeFolderAtomically } from "./peft.js";

export const EXPORT_FORMATS = ["peft", "gguf", "merged"] as const;
export type ExportFormat = (typeof EXPORT_FORMATS)[number];

export interface ExportOptions {
  format: ExportFormat;
  /** replace an earlier export at the destination (never anything else) */
  force?: boolean;
  /** GGUF tensor type: F32 (llama.cpp's converter's default) or F16 */
  ggufType?: GgufDType;
}

export interface ExportSource {
  /** the stored PEFT directory; never written */
  adapterDir: string;
  /** the base model the adapter was baked on */
  model: Pick<LoadedModel, "dir" | "config" | "fingerprint" | "eosTokenIds">;
  /** what the export calls itself (GGUF general.name) */
  name: string;
}

export interface ExportResult {
  format: ExportFormat;
  path: string;
  /** the base model as the export names it (a hub repo id, else the model's folder) */
  baseModel: string;
  files: string[];
  bytes: number;
}

/** A hub repo id for a pulled model (what PEFT, vLLM and llama.cpp's converter can fetch), else the absolute folder. */
export function baseModelName(modelDir: string): string {
  return repoIdOfSnapshot(modelDir) ?? path.resolve(modelDir);
}

const isWithin = (child: string, parent: string) => {
  const rel = path.relative(parent, child);
  return rel === "" || (!rel.startsWith("..") && !path.isAbsolute(rel));
};

/**
 * Refuses, before anything is read or written, a destination that holds something other than an
 * earlier export of this format (or one at all, without `force`), and one that is, holds or lies
 * inside the stored adapter or the base model: --force must never delete either.
 */
function checkDestination(to: string, source: ExportSource, opts: ExportOptions): void {
  for (const [dir, what] of [
    [source.adapterDir, "the stored version"],
    [source.model.dir, "the base model"],
  ] as const) {
    const protectedDir = path.resolve(dir);
    if (isWithin(to, protectedDir) || isWithin(protectedDir, to)) throw new AdapterFileError(to, `is or holds ${what} (${protectedDir}); export somewhere else`);
  }
  if (opts.format === "peft") checkAdapterTarget(to, !!opts.force);
  else if (opts.format === "merged") checkFolderTarget(to, !!opts.force, "config.json", "model directory", "a model");
  else if (existsSync(to)) {
    if (statSync(to).isDirectory()) throw new AdapterFileError(to, "is a folder; give the path of the .gguf file to write");
    // --force replaces an earlier GGUF export, never another file (an agent's ledger.json, a weight file)
    if (!isGguf(to)) throw new AdapterFileError(to, "already exists and is not a GGUF file; kiln will not replace it: choose a new file name");
    if (!opts.force) throw new AdapterFileError(to, "already exists; pass --force to replace it");
  }
}

/** Whether a file starts with GGUF's magic bytes. */
function isGguf(file: string): boolean {
  const head = Buffer.alloc(4);
  const fd = openSync(file, "r");
  try {
    return readSync(fd, head, 0, 4, 0) === 4 && head.toString("latin1") === "GGUF";
  } finally {
    closeSync(fd);
  }
}

/** Writes the adapter stored at `source.adapterDir` to `to` in `opts.format`. */
export async function exportAdapter(source: ExportSource, to: string, opts: ExportOptions): Promise<ExportResult> {
  const target = path.resolve(to);
  if (opts.format === "gguf") ggufArchitecture(source.model.config); // an architecture llama.cpp cannot take is named first
  checkDestination(target, source, opts);
  // Checks the stored files whole (names the file that is broken) and that they fit this base.
  const adapter = loadAdapter(source.adapterDir, source.model.config, source.model.fingerprint);
  const baseModel = baseModelName(source.model.dir);
  try {
    if (opts.format === "peft") await saveAdapter(target, adapter, baseModel);
    else if (opts.format === "gguf") await writeGgufAdapter(target, adapter, source.model.config, { name: source.name, dtype: opts.ggufType });
    else await writeFolderAtomically(target, (tmp) => writeMerged(tmp, adapter, source.model));
  } finally {
    adapter.dispose();
  }
  const files = opts.format === "gguf" ? [target] : readdirSync(target).map((f) => path.join(target, f));
  return { format: opts.format, path: target, baseModel, files, bytes: files.reduce((n, f) => n + statSync(f).size, 0) };
}

/** Weights, and only weights: anything else in the base model's folder is copied as it is. */
const WEIGHT_FILE = /\.(safetensors|bin|pt|pth|ckpt|gguf|onnx|h5|msgpack)$/;

/**
 * The base model's folder with the adapter fused in. Every weight file keeps its name, tensors and
 * dtype: an adapted weight is W + scaling * B A computed in float32 and stored in W's own dtype
 * (an F32 base stays exact; F16/BF16 round to nearest even, as PEFT's merge_and_unload in that
 * dtype does); every other tensor is copied byte for byte. Shard index, config, tokenizer and
 * generation config are copied, so the folder loads wherever the base did.
 */
async function writeMerged(tmp: string, adapter: LoraAdapter, model: ExportSource["model"]): Promise<void> {
  const unmerged = new Set(adapter.modules.keys());
  for (const file of new Set(weightFiles(model.dir).values())) {
    const header = readHeader(file);
    // the deltas of this file's adapted weights, read asynchronously before the synchronous write
    const deltas = new Map<string, Float32Array>();
    for (const name of header.tensors.keys()) {
      const module = name.replace(/\.weight$/, "");
      if (name === module || !adapter.modules.has(module)) continue;
      const d = adapter.deltaWeight(module); // [out, in], the HF layout
      deltas.set(name, (await d.data()) as Float32Array);
      d.dispose();
      unmerged.delete(module);
    }
    const fd = openSync(file, "r");
    try {
      const tensors = new Map<string, TensorToWrite>();
      for (const [name, e] of header.tensors) {
        const delta = deltas.get(name);
        const bytes = delta
          ? () => {
              const w = readTensors(header, [name]).get(name)!.data;
              if (w.length !== delta.length) throw new AdapterFileError(file, `tensor "${name}" has ${w.length} values but the adapter's delta has ${delta.length}`);
              for (let i = 0; i < w.length; i++) w[i]! += delta[i]!;
              return fromFloat32(e.dtype as DType, w);
            }
          : () => readRawTensor(header, name, fd);
        tensors.set(name, { dtype: e.dtype, shape: e.shape, bytes });
      }
      writeSafetensorsFrom(path.join(tmp, path.basename(file)), tensors, { ...header.metadata, format: "pt" });
    } finally {
      closeSync(fd);
    }
  }
  if (unmerged.size) throw new AdapterFileError(model.dir, `has no weight for the adapted module ${[...unmerged][0]}`);
  for (const f of readdirSync(model.dir)) {
    const from = path.join(model.dir, f);
    if (!WEIGHT_FILE.test(f) && statSync(from).isFile()) copyFileSync(from, path.join(tmp, f)); // follows a hub cache's links to their blobs
  }
  if (!existsSync(path.join(tmp, "generation_config.json"))) {
    writeFileSync(path.join(tmp, "generation_config.json"), JSON.stringify({ _from_model_config: true, eos_token_id: model.eosTokenIds }, null, 2) + "\n");
  }
}
