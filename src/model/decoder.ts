// The Llama-family decoder (Llama 2/3, SmolLM2, TinyLlama, Mistral, Qwen2, Qwen3), top to bottom.
//
//   ids -> embed -> N x [ x + attn(rmsnorm(x)) ; x + mlp(rmsnorm(x)) ] -> rmsnorm -> lm_head -> logits
//
// Weights keep the Hugging Face names so LoRA adapters are keyed by the module names PEFT writes,
// but Linear weights are stored transposed, [in, out] (HF stores [out, in]): tfjs-wasm's matMul
// with transposeB copies the whole matrix on every call, which made prefill 10x slower. Tied
// models get an explicit transposed lm_head.weight for the same reason. Every projection goes
// through `linear`, which is where an adapter adds its low-rank update.
import { tf } from "../tensor/backend.js";
import { attention, fusedOn, LORA_LINEAR, loraLinear, rmsNorm, rope, swiglu } from "../tensor/fused.js";
import type { ModelConfig } from "./config.js";
import type { KVCache } from "./kv-cache.js";

/** Adds a low-rank update to a projection's output; null where the module has no adapter. */
export interface AdapterHook {
  delta(module: string, x: tf.Tensor2D): tf.Tensor2D | null;
  /**
   * The module's LoRA factors when its delta is exactly scale * (x a^T) b^T (one adapter, no
   * dropout): the decoder then runs the layer and its adapter as one fused kernel.
   */
  factors?(module: string): { a: tf.Tensor2D; b: tf.Tensor2D; scale: number } | undefined;
}

export interface ForwardInput {
  /** token ids, [B][T], rows of equal length (left-pad for batches) */
  ids: number[][];
  /** 1 for real tokens, 0 for padding, [B][T]; all ones when omitted */
  mask?: number[][];
}

export interface ForwardOptions {
  cache?: KVCache;
  adapter?: AdapterHook;
  /** return logits only for positions >= logitsFrom (saves the [T, vocab] matmul on prompts) */
  logitsFrom?: number;
}

/** The names and shapes a checkpoint must provide for this config. */
export function expectedWeights(c: ModelConfig): Map<string, number[]> {
  const w = new Map<string, number[]>();
  const qOut = c.numHeads * c.headDim;
  const kvOut = c.numKvHeads * c.headDim;
  w.set("model.embed_tokens.weight", [c.vocabSize, c.hiddenSize]);
  for (let i = 0; i < c.numLayers; i++) {
    const p = `model.layers.${i}`;
    w.set(`${p}.input_layernorm.weight`, [c.hiddenSize]);
    w.set(`${p}.self_attn.q_proj.weight`, [qOut, c.hiddenSize]);
    w.set(`${p}.self_attn.k_proj.weight`, [kvOut, c.hiddenSize]);
    w.set(`${p}.self_attn.v_proj.weight`, [kvOut, c.hiddenSize]);
    w.set(`${p}.self_attn.o_proj.weight`, [c.hiddenSize, qOut]);
    if (c.qkvBias) {
      w.set(`${p}.self_attn.q_proj.bias`, [qOut]);
      w.set(`${p}.self_attn.k_proj.bias`, [kvOut]);
      w.set(`${p}.self_attn.v_proj.bias`, [kvOut]);
    }
    if (c.oBias) w.set(`${p}.self_attn.o_proj.bias`, [c.hiddenSize]);
    if (c.qkNorm) {
      w.set(`${p}.self_attn.q_norm.weight`, [c.headDim]);
      w.set(`${p}.self_attn.k_norm.weight`, [c.headDim]);
    }
    w.set(`${p}.post_attention_layernorm.weight`, [c.hiddenSize]);
    w.set(`${p}.mlp.gate_proj.weight`, [c.intermediateSize, c.hiddenSize]);
    w.set(`${p}.mlp.up_proj.weight`, [c.intermediateSize, c.hiddenSize]);
    w.set(`${p}.mlp.down_proj.weight`, [c.hiddenSize, c.intermediateSize]);
    if (c.mlpBias) {
      w.set(`${p}.mlp.gate_proj.bias`, [c.intermediateSize]);
      w.set(`${p}.mlp.up_proj.bias`, [c.intermediateSize]);
      w.set(`${p}.mlp.down_proj.bias`, [c.hiddenSize]);
    }
  }
  w.set("model.norm.weight", [c.hiddenSize]);
  if (!c.tieWordEmbeddings) w.set("lm_head.weight", [c.vocabSize, c.hiddenSize]);
  return w;
}

/** The projection modules LoRA can target, with [in, out] features, for layer i. */
export function projectionShapes(c: ModelConfig): Record<string, { inFeatures: number; outFeatures: number; prefix: string }> {
  const qOut = c.numHeads * c.headDim;
  const kvOut = c.numKvHeads * c.headDim;
  return {
    q_proj: { inFeatures: c.hiddenSize, outFeatures: qOut, prefix: "self_attn" },
    k_proj: { inFeatures: c.hiddenSize, outFeatures: kvOut, prefix: "self_attn" },
    v_proj: { inFeatures: c.hiddenSize, outFeatures: kvOut, prefix: "self_attn" },
    o_proj: { inFeatures: qOut, outFeatures: c.hiddenSize, prefix: "self_attn" },
    gate_proj: { inFeatures: c.hiddenSize, outFeatures: c.intermediateSize, prefix: "mlp" },
    up_proj: { inFeatures: c.hiddenSize, outFeatures: c.intermediateSize, prefix: "mlp" },
    down_proj: { inFeatures: c.intermediateSize, outFeatures: c.hiddenSize, prefix: "mlp" },
  };
}

/** RoPE inverse frequencies, with Llama 3's long-context rescaling when configured. */
export function ropeInverseFrequencies(c: ModelConfig): Float64Array {
  const half = c.headDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / Math.pow(c.ropeTheta, (2 * i) / c.headDim);
  const s = c.ropeScaling;
  if (!s) return inv;
  const lowWavelen = s.originalMaxPositions / s.lowFreqFactor;
  const highWavelen = s.originalMaxPositions / s.highFreqFactor;
  for (let i = 0; i < half; i++) {
    const wavelen = (2 * Math.PI) / inv[i]!;
    if (wavelen > lowWavelen) inv[i] = inv[i]! / s.factor;
    else if (wavelen >= highWavelen) {
      const smooth = (s.originalMaxPositions / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
      inv[i] = (1 - smooth) * (inv[i]! / s.factor) + smooth * inv[i]!;
    }
  }
  return inv;
}

const MASKED = -1e9; // finite, so a row with every key masked (left padding) gives no NaN

/** Linear layers (HF [out, in]) that kiln stores as [in, out]. */
export function isLinearWeight(name: string): boolean {
  return name.endsWith("_proj.weight") || name === "lm_head.weight";
}

export class Decoder {
  readonly invFreq: Float64Array;

  /** `weights` in kiln layout (see the top of this file); see fromHuggingFace for HF layout. */
  constructor(
    readonly config: ModelConfig,
    readonly weights: Map<string, tf.Tensor>,
  ) {
    this.invFreq = ropeInverseFrequencies(config);
  }

  /** Takes ownership of HF-layout weights: Linear weights are transposed and the originals freed. */
  static fromHuggingFace(config: ModelConfig, hf: Map<string, tf.Tensor>): Decoder {
    const weights = new Map<string, tf.Tensor>();
    for (const [name, t] of hf) {
      if (isLinearWeight(name)) {
        weights.set(name, tf.transpose(t)); // [out, in] -> [in, out]
        t.dispose();
      } else weights.set(name, t);
    }
    if (config.tieWordEmbeddings) weights.set("lm_head.weight", tf.transpose(weights.get("model.embed_tokens.weight")!)); // [H, V]
    return new Decoder(config, weights);
  }

  /** [out, in] copies of the Linear weights, made by prepareForTraining(). */
  private transposed: Map<string, tf.Tensor2D> | undefined;

  /**
   * Backpropagating through x @ W needs dy @ W^T, and tfjs-wasm's transposed matMul is an order
   * of magnitude slower than a plain one. Training keeps an [out, in] copy of each frozen Linear
   * weight so the backward pass runs plain matMuls too (memory for speed; only bakes pay it).
   */
  prepareForTraining(): void {
    if (this.transposed || fusedOn(LORA_LINEAR)) return; // native kernels read W transposed at full speed
    this.transposed = new Map();
    for (const [name, t] of this.weights) {
      if (isLinearWeight(name)) this.transposed.set(name, tf.transpose(t) as tf.Tensor2D);
    }
  }

  dispose(): void {
    for (const t of [...this.weights.values(), ...(this.transposed?.values() ?? [])]) t.dispose();
    this.weights.clear();
    this.transposed = undefined;
  }

  /** x @ W for a frozen W [in, out]; the gradient flows to x only. x: [N, in] -> [N, out] */
  private frozenMatMul(x: tf.Tensor2D, name: string): tf.Tensor2D {
    const w = this.w(name) as tf.Tensor2D;
    const wT = this.transposed?.get(name);
    if (!wT) return tf.matMul(x, w);
    const f = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => ({
      value: tf.matMul(args[0] as tf.Tensor2D, w),
      gradFunc: (dy: tf.Tensor | tf.Tensor[]) => tf.matMul(dy as tf.Tensor2D, wT), // [N, out] @ [out, in]
    }));
    return f(x) as tf.Tensor2D;
  }

  private w(name: string): tf.Tensor {
    const t = this.weights.get(name);
    if (!t) throw new Error(`weight ${name} is not loaded`);
    return t;
  }

  /** x @ W (+ b) (+ adapter delta), W stored [in, out]. x: [N, in] -> [N, out] */
  private linear(module: string, x: tf.Tensor2D, adapter?: AdapterHook): tf.Tensor2D {
    const bias = this.weights.get(`${module}.bias`);
    const f = !bias && fusedOn(LORA_LINEAR) ? adapter?.factors?.(module) : undefined;
    if (f) return loraLinear(x, this.w(`${module}.weight`) as tf.Tensor2D, f.a, f.b, f.scale);
    let y: tf.Tensor2D = this.frozenMatMul(x, `${module}.weight`);
    if (bias) y = tf.add(y, bias as tf.Tensor1D);
    const d = adapter?.delta(module, x);
    return d ? tf.add(y, d) : y;
  }

  private rmsNorm(x: tf.Tensor, weightName: string): tf.Tensor {
    return rmsNorm(x, this.w(weightName), this.config.rmsNormEps);
  }

  /** cos and sin tables for the given positions, [B, T, 1, headDim] (rotate_half layout). */
  private ropeTables(positions: number[][]): { cos: tf.Tensor4D; sin: tf.Tensor4D } {
    const B = positions.length;
    const T = positions[0]!.length;
    const hd = this.config.headDim;
    const half = hd / 2;
    const cos = new Float32Array(B * T * hd);
    const sin = new Float32Array(B * T * hd);
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < T; t++) {
        const p = positions[b]![t]!;
        const base = (b * T + t) * hd;
        for (let i = 0; i < half; i++) {
          const angle = p * this.invFreq[i]!;
          cos[base + i] = cos[base + i + half] = Math.cos(angle);
          sin[base + i] = sin[base + i + half] = Math.sin(angle);
        }
      }
    }
    return { cos: tf.tensor4d(cos, [B, T, 1, hd]), sin: tf.tensor4d(sin, [B, T, 1, hd]) };
  }

  /**
   * Additive attention mask [B, T, S - from]: causal over absolute key positions, padding keys
   * masked, and, with a window, only the `window` most recent keys (the query's own included)
   * visible. Positions here are cache slots, padding included, as transformers' masks count them;
   * `from` is the first slot the layer still keeps.
   */
  private attentionMask(keyMask: number[][], T: number, window: number | null, from: number): tf.Tensor3D {
    const B = keyMask.length;
    const S = keyMask[0]!.length;
    const kept = S - from;
    const past = S - T;
    const m = new Float32Array(B * T * kept);
    for (let b = 0; b < B; b++) {
      const row = keyMask[b]!;
      for (let t = 0; t < T; t++) {
        const q = past + t;
        const base = (b * T + t) * kept;
        for (let s = from; s < S; s++) {
          const visible = s <= q && row[s] === 1 && (window === null || q - s < window);
          if (!visible) m[base + s - from] = MASKED;
        }
      }
    }
    return tf.tensor3d(m, [B, T, kept]);
  }

  /**
   * One pass over new tokens. Returns logits [B, T', vocab] for positions >= logitsFrom.
   * With a cache, the tokens continue the cached sequence and the cache is extended in place
   * (call inside tf.tidy; the cache's tensors are kept and the old ones released).
   */
  forward(input: ForwardInput, opts: ForwardOptions = {}): tf.Tensor3D {
    const c = this.config;
    const { ids } = input;
    const B = ids.length;
    const T = ids[0]!.length;
    const newMask = input.mask ?? ids.map((row) => row.map(() => 1));
    const cache = opts.cache;
    const pastMask = cache ? cache.mask : ids.map(() => [] as number[]);
    const keyMask = pastMask.map((row, b) => [...row, ...newMask[b]!]);
    // Position of a token = number of real tokens before it in its row (as HF does with left padding).
    const positions = keyMask.map((row) => {
      const out: number[] = [];
      let seen = 0;
      for (let s = 0; s < row.length; s++) {
        if (s >= row.length - T) out.push(row[s] ? seen : 0);
        seen += row[s]!;
      }
      return out;
    });
    const { cos, sin } = this.ropeTables(positions);
    // One mask per distinct window and kept range: full-attention layers share one, sliding layers another.
    const masks = new Map<string, tf.Tensor3D>();
    const maskFor = (window: number | null, from: number): tf.Tensor3D => {
      const key = `${window}:${from}`;
      let m = masks.get(key);
      if (!m) masks.set(key, (m = this.attentionMask(keyMask, T, window, from)));
      return m;
    };
    const scale = 1 / Math.sqrt(c.headDim);

    let x = tf.gather(this.w("model.embed_tokens.weight"), tf.tensor2d(ids, [B, T], "int32")) as tf.Tensor3D; // [B, T, H]
    for (let l = 0; l < c.numLayers; l++) {
      const p = `model.layers.${l}`;
      // --- attention ---
      const h = this.rmsNorm(x, `${p}.input_layernorm.weight`).reshape([B * T, c.hiddenSize]) as tf.Tensor2D; // [B*T, H]
      let q = this.linear(`${p}.self_attn.q_proj`, h, opts.adapter).reshape([B, T, c.numHeads, c.headDim]) as tf.Tensor4D; // [B, T, nHeads, hd]
      let k = this.linear(`${p}.self_attn.k_proj`, h, opts.adapter).reshape([B, T, c.numKvHeads, c.headDim]) as tf.Tensor4D; // [B, T, nKv, hd]
      const v = this.linear(`${p}.self_attn.v_proj`, h, opts.adapter).reshape([B, T, c.numKvHeads, c.headDim]) as tf.Tensor4D; // [B, T, nKv, hd]
      if (c.qkNorm) {
        q = this.rmsNorm(q, `${p}.self_attn.q_norm.weight`) as tf.Tensor4D;
        k = this.rmsNorm(k, `${p}.self_attn.k_norm.weight`) as tf.Tensor4D;
      }
      q = rope(q, cos, sin);
      k = rope(k, cos, sin);
      // Without a cache, attention reads K and V as the projections give them; the cache keeps
      // them head-major, where a new token's keys append as one block per head.
      const window = c.slidingWindows[l] ?? null;
      const { keys, values, from } = cache ? cache.append(l, k, v, window) : { keys: k, values: v, from: 0 }; // [B, nKv, capacity, hd] with a cache, else [B, T, nKv, hd]
      const ctx = attention(q, keys, values, maskFor(window, from), scale, cache !== undefined).reshape([B * T, c.numHeads * c.headDim]) as tf.Tensor2D; // [B*T, nHeads*hd]
      const attnOut = this.linear(`${p}.self_attn.o_proj`, ctx, opts.adapter).reshape([B, T, c.hiddenSize]); // [B, T, H]
      x = tf.add(x, attnOut);
      // --- SwiGLU MLP ---
      const h2 = this.rmsNorm(x, `${p}.post_attention_layernorm.weight`).reshape([B * T, c.hiddenSize]) as tf.Tensor2D; // [B*T, H]
      const gate = this.linear(`${p}.mlp.gate_proj`, h2, opts.adapter);
      const up = this.linear(`${p}.mlp.up_proj`, h2, opts.adapter);
      const down = this.linear(`${p}.mlp.down_proj`, swiglu(gate, up) as tf.Tensor2D, opts.adapter);
      x = tf.add(x, down.reshape([B, T, c.hiddenSize]));
    }
    if (cache) cache.mask = keyMask;

    const from = opts.logitsFrom ?? 0;
    const Tout = T - from;
    if (Tout === 0) return tf.zeros([B, 0, c.vocabSize]); // the cache's extension alone (a prompt's chunk before its last)
    if (from > 0) x = tf.slice(x, [0, from, 0], [B, Tout, c.hiddenSize]); // [B, T', H]
    const normed = this.rmsNorm(x, "model.norm.weight").reshape([B * Tout, c.hiddenSize]) as tf.Tensor2D; // [B*T', H]
    return this.frozenMatMul(normed, "lm_head.weight").reshape([B, Tout, c.vocabSize]); // [B, T', V]
  }
}
