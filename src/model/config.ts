// config.json -> a normalised ModelConfig. One schema for the Llama family; the architecture
// decides the few switches (biases, q/k norms) the decoder needs.
import { readFileSync, existsSync, statSync } from "node:fs";
import path from "node:path";
import { z } from "zod";

export const SUPPORTED_ARCHITECTURES = [
  "LlamaForCausalLM",
  "MistralForCausalLM",
  "Qwen2ForCausalLM",
  "Qwen3ForCausalLM",
] as const;
export type Architecture = (typeof SUPPORTED_ARCHITECTURES)[number];

const RopeScaling = z
  .object({
    rope_type: z.string().optional(),
    type: z.string().optional(),
    factor: z.number().optional(),
    low_freq_factor: z.number().optional(),
    high_freq_factor: z.number().optional(),
    original_max_position_embeddings: z.number().optional(),
  })
  .passthrough();

const RawConfig = z
  .object({
    architectures: z.array(z.string()).min(1),
    hidden_size: z.number().int().positive(),
    intermediate_size: z.number().int().positive(),
    num_hidden_layers: z.number().int().positive(),
    num_attention_heads: z.number().int().positive(),
    num_key_value_heads: z.number().int().positive().nullish(),
    head_dim: z.number().int().positive().nullish(),
    vocab_size: z.number().int().positive(),
    rms_norm_eps: z.number().positive().default(1e-6),
    rope_theta: z.number().positive().default(10000),
    rope_scaling: RopeScaling.nullish(),
    // transformers >= 5 writes rope_theta and the scaling together here, and drops both fields above
    rope_parameters: RopeScaling.extend({ rope_theta: z.number().positive().optional(), partial_rotary_factor: z.number().optional() }).nullish(),
    partial_rotary_factor: z.number().nullish(),
    max_position_embeddings: z.number().int().positive().optional(),
    tie_word_embeddings: z.boolean().default(false),
    attention_bias: z.boolean().optional(),
    mlp_bias: z.boolean().optional(),
    quantization_config: z.object({ quant_method: z.string().optional() }).passthrough().nullish(),
    sliding_window: z.number().int().positive().nullish(),
    use_sliding_window: z.boolean().nullish(),
    max_window_layers: z.number().int().nonnegative().nullish(),
    layer_types: z.array(z.string()).nullish(),
    hidden_act: z.string().default("silu"),
    model_type: z.string().optional(),
    bos_token_id: z.union([z.number(), z.array(z.number())]).nullish(),
    eos_token_id: z.union([z.number(), z.array(z.number())]).nullish(),
    torch_dtype: z.string().nullish(),
  })
  .passthrough();

export interface ModelConfig {
  architecture: Architecture;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: { factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositions: number } | null;
  maxPositions: number;
  tieWordEmbeddings: boolean;
  /** bias on q/k/v projections (Qwen2, or attention_bias) */
  qkvBias: boolean;
  /** bias on o_proj (attention_bias in Llama) */
  oBias: boolean;
  /** bias on gate/up/down projections (mlp_bias in Llama) */
  mlpBias: boolean;
  /** per-head RMSNorm on q and k before RoPE (Qwen3) */
  qkNorm: boolean;
  /**
   * Per layer: how many keys (itself included) a query attends to, the most recent ones, or null
   * for full causal attention. Mistral slides on every layer; Qwen2/Qwen3 only where
   * use_sliding_window and max_window_layers / layer_types say so.
   */
  slidingWindows: (number | null)[];
  eosTokenIds: number[];
  bosTokenId: number | null;
}

export class ModelConfigError extends Error {
  constructor(file: string, problem: string) {
    super(`${file}: ${problem}`);
    this.name = "ModelConfigError";
  }
}

function ids(v: number | number[] | null | undefined): number[] {
  return v == null ? [] : Array.isArray(v) ? v : [v];
}

/**
 * Whether `v` is a token id of a vocabulary of `vocabSize`: an end-of-turn id that is none never
 * matches (replies run to max_tokens), and a padding id past the vocabulary fails a bake's lookup.
 */
export function isTokenId(v: unknown, vocabSize: number): v is number {
  return Number.isInteger(v) && (v as number) >= 0 && (v as number) < vocabSize;
}

/**
 * What each architecture's transformers config class assumes for a field config.json leaves out
 * (configuration_llama.py, _mistral.py, _qwen2.py, _qwen3.py). They differ, and borrowing one
 * class's default for another loads a different model: a Qwen3 config without head_dim means 128,
 * not hidden_size / num_attention_heads. "derived" is hidden_size / num_attention_heads for
 * head_dim and num_attention_heads for num_key_value_heads (what every class does with null).
 */
const ARCHITECTURE_DEFAULTS: Record<
  Architecture,
  { modelType: string; headDim: number | "derived"; numKvHeads: number | "derived"; maxPositions: number; slidingWindow: number | null; maxWindowLayers: number | null }
> = {
  LlamaForCausalLM: { modelType: "llama", headDim: "derived", numKvHeads: "derived", maxPositions: 2048, slidingWindow: null, maxWindowLayers: null },
  MistralForCausalLM: { modelType: "mistral", headDim: "derived", numKvHeads: 8, maxPositions: 4096 * 32, slidingWindow: 4096, maxWindowLayers: null },
  Qwen2ForCausalLM: { modelType: "qwen2", headDim: "derived", numKvHeads: 32, maxPositions: 32768, slidingWindow: 4096, maxWindowLayers: 28 },
  Qwen3ForCausalLM: { modelType: "qwen3", headDim: 128, numKvHeads: 32, maxPositions: 32768, slidingWindow: 4096, maxWindowLayers: 28 },
};

type Raw = z.infer<typeof RawConfig>;

/**
 * Which layers slide, and by how much, as transformers decides it:
 * - Llama has no sliding window (a sliding_window field is ignored);
 * - Mistral slides on every layer whenever sliding_window is set (4096 when the field is absent,
 *   none when null); it has no use_sliding_window switch and ignores layer_types;
 * - Qwen2/Qwen3 slide only with use_sliding_window true (then sliding_window, default 4096, null
 *   meaning none), and only on the layers layer_types marks "sliding_attention", or, without
 *   layer_types, on layers numbered max_window_layers (default 28) and up.
 */
function slidingWindows(c: Raw, architecture: Architecture, numLayers: number, file: string): (number | null)[] {
  const defaults = ARCHITECTURE_DEFAULTS[architecture];
  const configured = c.sliding_window === undefined ? defaults.slidingWindow : c.sliding_window;
  if (architecture === "LlamaForCausalLM") return Array(numLayers).fill(null);
  if (architecture === "MistralForCausalLM") return Array(numLayers).fill(configured);
  const window = c.use_sliding_window === true ? configured : null;
  if (c.layer_types) {
    if (c.layer_types.length !== numLayers) {
      throw new ModelConfigError(file, `layer_types lists ${c.layer_types.length} layers but num_hidden_layers is ${numLayers}`);
    }
    return c.layer_types.map((type, i) => {
      if (type === "full_attention") return null;
      if (type !== "sliding_attention") throw new ModelConfigError(file, `layer_types[${i}] is ${type}; kiln runs full_attention and sliding_attention layers only`);
      // transformers refuses this too (create_sliding_window_causal_mask finds no window)
      if (window === null) throw new ModelConfigError(file, `layer_types[${i}] is sliding_attention but ${c.use_sliding_window === true ? "sliding_window is null" : "use_sliding_window is not true"}, so the layer has no window`);
      return window;
    });
  }
  if (window === null) return Array(numLayers).fill(null);
  const from = c.max_window_layers === undefined ? defaults.maxWindowLayers! : c.max_window_layers;
  if (from === null) throw new ModelConfigError(file, "use_sliding_window is true but max_window_layers is null, so which layers slide is undefined");
  return Array.from({ length: numLayers }, (_, i) => (i >= from ? window : null));
}

export function parseConfig(json: unknown, file = "config.json"): ModelConfig {
  const parsed = RawConfig.safeParse(json);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; ");
    throw new ModelConfigError(file, `not a usable model config (${issues})`);
  }
  const c = parsed.data;
  const arch = c.architectures[0]!;
  if (c.quantization_config) {
    // Their weights are packed integers under other names (qweight, scales...): say so, rather than "tensor missing".
    throw new ModelConfigError(file, `quantization_config says the checkpoint is quantized (${c.quantization_config.quant_method ?? "no quant_method"}); kiln reads unquantized F32, F16 or BF16 weights`);
  }
  if (!(SUPPORTED_ARCHITECTURES as readonly string[]).includes(arch)) {
    throw new ModelConfigError(file, `architecture ${arch} is not supported; kiln runs ${SUPPORTED_ARCHITECTURES.join(", ")}`);
  }
  const architecture = arch as Architecture;
  const defaults = ARCHITECTURE_DEFAULTS[architecture];
  // transformers picks the config class (and so every default below) by model_type, and
  // AutoModelForCausalLM the model class by it too; kiln goes by architectures. When they name
  // different families the two would build different models.
  if (c.model_type !== undefined && c.model_type !== defaults.modelType) {
    throw new ModelConfigError(file, `model_type ${c.model_type} does not match architectures ${arch} (model_type ${defaults.modelType})`);
  }
  if (c.hidden_act !== "silu") throw new ModelConfigError(file, `hidden_act ${c.hidden_act} is not supported (only silu)`);
  // as generation_config.json's are checked (src/model/load.ts)
  const eos = ids(c.eos_token_id);
  if (!eos.every((id) => isTokenId(id, c.vocab_size))) {
    throw new ModelConfigError(file, `eos_token_id is ${JSON.stringify(c.eos_token_id)}, not a token id (a whole number below vocab_size ${c.vocab_size}) or a list of them`);
  }
  const numKvHeads = c.num_key_value_heads ?? (c.num_key_value_heads === undefined && defaults.numKvHeads !== "derived" ? defaults.numKvHeads : c.num_attention_heads);
  if (c.num_attention_heads % numKvHeads !== 0) {
    const which = c.num_key_value_heads === undefined ? ` (absent, so ${arch}'s default)` : "";
    throw new ModelConfigError(file, `num_attention_heads ${c.num_attention_heads} is not a multiple of num_key_value_heads ${numKvHeads}${which}`);
  }
  if (c.head_dim === null && defaults.headDim !== "derived") {
    // Qwen3Config declares head_dim an int (default 128): null fails there, so do not guess.
    throw new ModelConfigError(file, `head_dim is null; ${arch} needs a number (transformers' default ${defaults.headDim} applies only when the field is absent)`);
  }
  const headDim = c.head_dim ?? (c.head_dim === undefined && defaults.headDim !== "derived" ? defaults.headDim : c.hidden_size / c.num_attention_heads);
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) {
    const from = c.head_dim == null && defaults.headDim === "derived" ? ` (hidden_size ${c.hidden_size} / num_attention_heads ${c.num_attention_heads}, as head_dim is ${c.head_dim === null ? "null" : "absent"})` : "";
    throw new ModelConfigError(file, `head_dim ${headDim}${from} must be an even integer`);
  }

  // A per-layer-type rope_parameters ({full_attention: {...}, sliding_attention: {...}}) belongs to
  // architectures kiln does not run; the Llama family has one set.
  const rp = c.rope_parameters;
  if (rp && Object.values(rp).some((v) => v !== null && typeof v === "object")) {
    throw new ModelConfigError(file, "rope_parameters per layer type is not supported (one set for all layers only)");
  }
  const partial = rp?.partial_rotary_factor ?? c.partial_rotary_factor;
  if (partial != null && partial !== 1) throw new ModelConfigError(file, `partial_rotary_factor ${partial} is not supported (only 1)`);
  const ropeTheta = rp?.rope_theta ?? c.rope_theta;
  let ropeScaling: ModelConfig["ropeScaling"] = null;
  const rs = rp ?? c.rope_scaling;
  if (rs) {
    const field = rp ? "rope_parameters" : "rope_scaling";
    const kind = rs.rope_type ?? rs.type;
    if (kind === "llama3") {
      // transformers requires all four (its llama3 validation names the missing keys): a guessed
      // factor or original context would rescale RoPE differently from the model's training.
      const missing = (["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"] as const).filter((k) => rs[k] == null);
      if (missing.length) throw new ModelConfigError(file, `${field} of type llama3 lacks ${missing.join(", ")}`);
      ropeScaling = {
        factor: rs.factor!,
        lowFreqFactor: rs.low_freq_factor!,
        highFreqFactor: rs.high_freq_factor!,
        originalMaxPositions: rs.original_max_position_embeddings!,
      };
    } else if (kind !== "default") {
      throw new ModelConfigError(file, kind === undefined ? `${field} has no rope_type` : `${field} type ${kind} is not supported (only llama3)`);
    }
  }
  return {
    architecture,
    hiddenSize: c.hidden_size,
    intermediateSize: c.intermediate_size,
    numLayers: c.num_hidden_layers,
    numHeads: c.num_attention_heads,
    numKvHeads,
    headDim,
    vocabSize: c.vocab_size,
    rmsNormEps: c.rms_norm_eps,
    ropeTheta,
    ropeScaling,
    maxPositions: c.max_position_embeddings ?? defaults.maxPositions,
    tieWordEmbeddings: c.tie_word_embeddings,
    // Qwen2 always has q/k/v biases and never an o_proj bias; Llama and Qwen3 (whose attention is
    // Llama's) put attention_bias on all four; Mistral's projections never have biases.
    qkvBias: architecture === "Qwen2ForCausalLM" || (architecture !== "MistralForCausalLM" && c.attention_bias === true),
    oBias: (architecture === "LlamaForCausalLM" || architecture === "Qwen3ForCausalLM") && c.attention_bias === true,
    mlpBias: architecture === "LlamaForCausalLM" && c.mlp_bias === true,
    qkNorm: architecture === "Qwen3ForCausalLM",
    slidingWindows: slidingWindows(c, architecture, c.num_hidden_layers, file),
    eosTokenIds: eos,
    bosTokenId: ids(c.bos_token_id)[0] ?? null,
  };
}

export function readConfig(dir: string): ModelConfig {
  const file = path.join(dir, "config.json");
  if (!existsSync(dir)) throw new ModelConfigError(dir, "no such directory");
  if (!statSync(dir).isDirectory()) throw new ModelConfigError(dir, `is a file; pass the model's directory (${path.dirname(dir)}?)`);
  if (!existsSync(file)) throw new ModelConfigError(dir, "not a model directory: config.json is missing");
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, "utf8"));
  } catch (err) {
    throw new ModelConfigError(file, `is not valid JSON (${(err as Error).message})`);
  }
  return parseConfig(json, file);
}

/** Parameter count from the config alone (for info output and memory estimates). */
export function parameterCount(c: ModelConfig): number {
  const q = c.hiddenSize * c.numHeads * c.headDim;
  const kv = 2 * c.hiddenSize * c.numKvHeads * c.headDim;
  const o = c.numHeads * c.headDim * c.hiddenSize;
  const mlp = 3 * c.hiddenSize * c.intermediateSize + (c.mlpBias ? 2 * c.intermediateSize + c.hiddenSize : 0);
  const bias = (c.qkvBias ? (c.numHeads + 2 * c.numKvHeads) * c.headDim : 0) + (c.oBias ? c.hiddenSize : 0);
  const norms = 2 * c.hiddenSize + (c.qkNorm ? 2 * c.headDim : 0);
  const layer = q + kv + o + mlp + bias + norms;
  const embed = c.vocabSize * c.hiddenSize;
  return embed * (c.tieWordEmbeddings ? 1 : 2) + c.numLayers * layer + c.hiddenSize;
}
