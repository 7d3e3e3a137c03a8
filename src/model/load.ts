// Loads a Hugging Face model directory: config, weights (single or sharded safetensors,
// F32/F16/BF16), tokenizer, chat template and generation config.
import { existsSync, readFileSync, readdirSync } from "node:fs";
import path from "node:path";
import { tf } from "../tensor/backend.js";
import { isTokenId, readConfig, type ModelConfig } from "./config.js";
import { Decoder, expectedWeights } from "./decoder.js";
import { readHeader, readTensors, SafetensorsError, type SafetensorsHeader } from "./safetensors.js";
import { ChatTokenizer } from "./tokenizer.js";
import { baseFingerprint } from "../lora/adapter.js";

export interface LoadedModel {
  dir: string;
  config: ModelConfig;
  decoder: Decoder;
  tokenizer: ChatTokenizer;
  /** end-of-turn ids from generation_config.json, config.json and the tokenizer */
  eosTokenIds: number[];
  /** which base weights these are (baseFingerprint), taken from the file's data as it loads */
  fingerprint: string;
  dispose(): void;
}

export class ModelLoadError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ModelLoadError";
  }
}

/** Which safetensors file holds each tensor ("*" for a single model.safetensors). */
export function weightFiles(dir: string): Map<string, string> {
  const index = path.join(dir, "model.safetensors.index.json");
  if (existsSync(index)) {
    let weightMap: Record<string, string>;
    try {
      weightMap = JSON.parse(readFileSync(index, "utf8")).weight_map;
    } catch (err) {
      throw new ModelLoadError(`${index}: ${(err as Error).message}`);
    }
    if (!weightMap || typeof weightMap !== "object") throw new ModelLoadError(`${index}: no weight_map`);
    for (const [name, file] of Object.entries(weightMap)) {
      // shards sit beside the index (the Hub's layout); a path out of the folder is not a shard
      if (typeof file !== "string" || path.basename(file) !== file) throw new ModelLoadError(`${index}: weight_map sends "${name}" to ${JSON.stringify(file)}, which is not a file beside the index`);
    }
    return new Map(Object.entries(weightMap).map(([name, file]) => [name, path.join(dir, file)]));
  }
  const single = path.join(dir, "model.safetensors");
  if (existsSync(single)) return new Map([["*", single]]);
  const others = readdirSync(dir).filter((f) => /\.(bin|pt|pth|gguf|onnx)$/.test(f));
  throw new ModelLoadError(
    `${dir}: no model.safetensors or model.safetensors.index.json` +
      (others.length ? ` (found ${others.join(", ")}; kiln reads safetensors only)` : ""),
  );
}

function readGenerationConfig(dir: string, vocabSize: number): { eos: number[]; pad?: number } {
  const file = path.join(dir, "generation_config.json");
  if (!existsSync(file)) return { eos: [] };
  let g: Record<string, unknown>;
  try {
    g = JSON.parse(readFileSync(file, "utf8"));
  } catch (err) {
    throw new ModelLoadError(`${file}: is not valid JSON (${(err as Error).message})`);
  }
  if (typeof g !== "object" || g === null || Array.isArray(g)) throw new ModelLoadError(`${file}: holds ${JSON.stringify(g)}, not a JSON object`);
  // An id that is no token ("2" as a string, past the vocabulary) was taken as is (see isTokenId).
  const token = (v: unknown) => isTokenId(v, vocabSize);
  const eos = g.eos_token_id == null ? [] : Array.isArray(g.eos_token_id) ? g.eos_token_id : [g.eos_token_id];
  if (!eos.every(token)) throw new ModelLoadError(`${file}: eos_token_id is ${JSON.stringify(g.eos_token_id)}, not a token id (a whole number below vocab_size ${vocabSize}) or a list of them`);
  if (g.pad_token_id != null && !token(g.pad_token_id)) throw new ModelLoadError(`${file}: pad_token_id is ${JSON.stringify(g.pad_token_id)}, not a token id (a whole number below vocab_size ${vocabSize})`);
  return { eos: eos as number[], pad: g.pad_token_id == null ? undefined : (g.pad_token_id as number) };
}

/** Reads and checks every tensor the config asks for; errors name the file and the tensor. */
export function loadWeights(dir: string, config: ModelConfig, onRead?: (name: string, data: Float32Array) => void): Map<string, tf.Tensor> {
  const expected = expectedWeights(config);
  const files = weightFiles(dir);
  const headers = new Map<string, SafetensorsHeader>();
  const header = (file: string): SafetensorsHeader => {
    let h = headers.get(file);
    if (!h) {
      if (!existsSync(file)) throw new ModelLoadError(`${file}: listed in the weight map but missing`);
      h = readHeader(file);
      headers.set(file, h);
    }
    return h;
  };
  // Group tensor names by the file that holds them, checking names and shapes before reading data.
  const byFile = new Map<string, string[]>();
  for (const [name, shape] of expected) {
    const file = files.get(name) ?? files.get("*");
    if (!file) throw new ModelLoadError(`${dir}: tensor "${name}" is not in the weight map`);
    const entry = header(file).tensors.get(name);
    if (!entry) throw new ModelLoadError(`${file}: tensor "${name}" is missing`);
    if (entry.shape.join(",") !== shape.join(",")) {
      throw new ModelLoadError(`${file}: tensor "${name}" has shape [${entry.shape}] but config.json implies [${shape}] (${shapeFields(name, config)})`);
    }
    byFile.set(file, [...(byFile.get(file) ?? []), name]);
  }
  checkNoStrayTensors(dir, config, files, expected, header);
  const weights = new Map<string, tf.Tensor>();
  try {
    for (const [file, names] of byFile) {
      for (const [name, t] of readTensors(header(file), names)) {
        // A damaged file (flipped bits, a bad conversion) can hold NaN or infinity: the model then
        // answers garbage, or nothing, with no error anywhere. (x - x is NaN for both.)
        const d = t.data;
        for (let i = 0; i < d.length; i++) {
          if (d[i]! - d[i]! !== 0) throw new ModelLoadError(`${file}: tensor "${name}" holds NaN or infinite values (at index ${i}): a damaged or badly converted checkpoint`);
        }
        onRead?.(name, t.data);
        weights.set(name, tf.tensor(t.data, t.shape, "float32"));
      }
    }
  } catch (err) {
    for (const t of weights.values()) t.dispose();
    if (err instanceof SafetensorsError) throw new ModelLoadError(err.message);
    throw err;
  }
  return weights;
}

/**
 * The config fields behind a tensor's expected shape, with the values kiln read (some are the
 * architecture's defaults for fields config.json leaves out), so a shape mismatch says which
 * field to check.
 */
function shapeFields(name: string, c: ModelConfig): string {
  const module = /([a-z_]+)\.(weight|bias)$/.exec(name)?.[1] ?? "";
  const heads = `num_attention_heads ${c.numHeads} x head_dim ${c.headDim}`;
  const kv = `num_key_value_heads ${c.numKvHeads} x head_dim ${c.headDim}`;
  const hidden = `hidden_size ${c.hiddenSize}`;
  const inter = `intermediate_size ${c.intermediateSize}`;
  const fields: Record<string, string> = {
    embed_tokens: `vocab_size ${c.vocabSize}, ${hidden}`,
    lm_head: `vocab_size ${c.vocabSize}, ${hidden}`,
    q_proj: `${heads}, ${hidden}`,
    k_proj: `${kv}, ${hidden}`,
    v_proj: `${kv}, ${hidden}`,
    o_proj: `${hidden}, ${heads}`,
    q_norm: `head_dim ${c.headDim}`,
    k_norm: `head_dim ${c.headDim}`,
    gate_proj: `${inter}, ${hidden}`,
    up_proj: `${inter}, ${hidden}`,
    down_proj: `${hidden}, ${inter}`,
  };
  return fields[module] ?? hidden; // the layer norms
}

/** Tensors a checkpoint may hold that the decoder rightly ignores. */
function ignorable(name: string, config: ModelConfig): boolean {
  // RoPE tables older transformers saved as buffers; kiln recomputes them from the config.
  if (name.endsWith(".rotary_emb.inv_freq")) return true;
  // With tied embeddings transformers uses embed_tokens as the head whatever lm_head holds.
  return name === "lm_head.weight" && config.tieWordEmbeddings;
}

/**
 * A tensor the config does not account for means config and weights disagree (more layers than
 * num_hidden_layers, biases without attention_bias / mlp_bias): running on would silently compute
 * another model, so refuse, naming the tensor and the likely config field.
 */
function checkNoStrayTensors(
  dir: string,
  config: ModelConfig,
  files: Map<string, string>,
  expected: Map<string, number[]>,
  header: (file: string) => SafetensorsHeader,
): void {
  const single = files.get("*");
  const names = single ? [...header(single).tensors.keys()] : [...files.keys()];
  const stray = names.filter((n) => !expected.has(n) && !ignorable(n, config));
  if (stray.length === 0) return;
  const first = stray[0]!;
  const layer = /^model\.layers\.(\d+)\./.exec(first);
  const hint =
    layer && Number(layer[1]) >= config.numLayers
      ? `: layer ${layer[1]}, but config.json says num_hidden_layers ${config.numLayers}`
      : first.endsWith(".bias")
        ? ": a bias config.json does not ask for (check attention_bias / mlp_bias)"
        : "";
  const more = stray.length > 1 ? ` (and ${stray.length - 1} more)` : "";
  throw new ModelLoadError(`${single ?? path.join(dir, "model.safetensors.index.json")}: tensor "${first}" is not part of the model config.json describes${hint}${more}`);
}

export function loadModel(dir: string): LoadedModel {
  const resolved = path.resolve(dir);
  const config = readConfig(resolved);
  const generation = readGenerationConfig(resolved, config.vocabSize);
  const tokenizer = ChatTokenizer.fromDirectory(resolved, [...generation.eos, ...config.eosTokenIds], generation.pad);
  // The fingerprint is hashed from host data: reading it back from a GPU backend would stall,
  // and tfjs-webgpu in Node cannot read synchronously at all.
  let fingerprint = "";
  const weights = loadWeights(resolved, config, (name, data) => {
    if (name === "model.embed_tokens.weight") fingerprint = baseFingerprint(config, data);
  });
  const decoder = Decoder.fromHuggingFace(config, weights);
  return {
    dir: resolved,
    config,
    decoder,
    tokenizer,
    eosTokenIds: tokenizer.eosTokenIds,
    fingerprint,
    dispose() {
      decoder.dispose();
    },
  };
}
