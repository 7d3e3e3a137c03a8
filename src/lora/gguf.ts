// llama.cpp LoRA adapters in GGUF: the file llama.cpp's convert_lora_to_gguf.py writes from a PEFT
// directory and `llama-cli --lora` (llama_adapter_lora_init in src/llama-adapter.cpp) loads.
//
// GGUF v3 (ggml's docs/gguf.md), all little-endian:
//   "GGUF", u32 version 3, u64 tensor count, u64 metadata count
//   metadata: key (u64 byte length + UTF-8), u32 value type, value (a string as a key is written)
//   tensor infos: name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset in the data section
//   zero padding to the alignment (general.alignment, 32 when absent), then each tensor's data,
//   padded to the alignment too (gguf-py's writer pads the last one as well).
// ggml's ne lists the fastest-varying dimension first: numpy's [rows, cols] is ne [cols, rows].
//
// What makes it an adapter (llama-adapter.cpp checks each): general.type "adapter",
// general.architecture the base model's llama.cpp name, adapter.type "lora", and
// adapter.lora.alpha (f32). Each adapted weight W gets two tensors named after llama.cpp's name
// for W: blk.N.attn_q.weight.lora_a holding PEFT's lora_A as it is ([r, in], ne [in, r]) and
// .lora_b holding lora_B ([out, r], ne [r, out]); llama.cpp checks a.ne[0] == W.ne[0] (in),
// b.ne[1] == W.ne[1] (out), a.ne[1] == b.ne[0] (r), and scales by alpha / r with r = b.ne[0]
// (llama_adapter_lora_weight::get_scale), not by PEFT's alpha / sqrt(r) for rsLoRA.
//
// Llama-architecture rope: llama.cpp's HF converter permutes the rows of q_proj and k_proj
// (LlamaModel.permute in convert_hf_to_gguf.py: each head's two halves interleaved, for ggml's
// rope that rotates adjacent pairs), and the LoRA converter runs the same modify_tensors on the
// pair, which permutes the rows of lora_B and leaves lora_A alone (LoraTorchTensor.permute). Qwen2
// and Qwen3 use NEOX rope in llama.cpp and are not permuted.
import { renameSync, writeFileSync } from "node:fs";
import path from "node:path";
import type { Architecture, ModelConfig } from "../model/config.js";
import { fromFloat32 } from "../model/safetensors.js";
import type { LoraAdapter, LoraTarget } from "./adapter.js";
import { makeDirs } from "../files.js";

/** How llama.cpp's converter takes each architecture kiln runs. */
const GGUF_ARCHITECTURES: Record<Architecture, { name: string; permuteQK: boolean }> = {
  LlamaForCausalLM: { name: "llama", permuteQK: true },
  MistralForCausalLM: { name: "llama", permuteQK: true }, // registered as LlamaModel by the converter
  Qwen2ForCausalLM: { name: "qwen2", permuteQK: false },
  Qwen3ForCausalLM: { name: "qwen3", permuteQK: false },
};

/** HF module name -> llama.cpp tensor name (gguf-py's TensorNameMap). */
export const GGUF_TENSORS: Record<LoraTarget, string> = {
  q_proj: "attn_q",
  k_proj: "attn_k",
  v_proj: "attn_v",
  o_proj: "attn_output",
  gate_proj: "ffn_gate",
  up_proj: "ffn_up",
  down_proj: "ffn_down",
};

export type GgufDType = "F32" | "F16";
const GGML_TYPE: Record<GgufDType, number> = { F32: 0, F16: 1 };
/** general.file_type: llama.cpp's LLAMA_FTYPE_ALL_F32 / MOSTLY_F16 */
const FILE_TYPE: Record<GgufDType, number> = { F32: 0, F16: 1 };
const ALIGNMENT = 32;

export type GgufValue =
  | { type: "string"; value: string }
  | { type: "u32"; value: number }
  | { type: "f32"; value: number }
  | { type: "string[]"; value: string[] }
  | { type: "i32[]"; value: number[] };
// gguf_type: UINT32 4, INT32 5, FLOAT32 6, STRING 8, ARRAY 9 (then the element type and a u64 count)
const VALUE_TYPE = { u32: 4, i32: 5, f32: 6, string: 8, array: 9 } as const;

export interface GgufTensor {
  name: string;
  /** row-major (numpy) shape; written reversed, as ggml's ne */
  shape: number[];
  data: Float32Array;
}

/** llama.cpp's name for the base model's architecture, or an error naming what it cannot take. */
export function ggufArchitecture(config: ModelConfig): { name: string; permuteQK: boolean } {
  const arch = GGUF_ARCHITECTURES[config.architecture];
  if (!arch) {
    throw new Error(`GGUF export does not support ${config.architecture}: kiln maps ${Object.keys(GGUF_ARCHITECTURES).join(", ")} to llama.cpp's architectures`);
  }
  return arch;
}

/**
 * LlamaModel.permute on the rows of a row-major [rows, cols] matrix: within each of `heads`
 * heads, row 2j+k of the result is row k*(headDim/2)+j of the input (the two rope halves
 * interleaved). For k_proj the converter passes the KV head count.
 */
export function permuteRopeRows(data: Float32Array, rows: number, cols: number, heads: number): Float32Array {
  const headDim = rows / heads;
  if (!Number.isInteger(headDim / 2)) throw new Error(`cannot permute ${rows} rows into ${heads} heads of an even size`);
  const half = headDim / 2;
  const out = new Float32Array(data.length);
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < half; j++) {
      for (let k = 0; k < 2; k++) {
        const from = h * headDim + k * half + j;
        const to = h * headDim + 2 * j + k;
        out.set(data.subarray(from * cols, (from + 1) * cols), to * cols);
      }
    }
  }
  return out;
}

/** The GGUF bytes of these metadata and tensors (tensors in the given order, each `dtype`). */
export function encodeGguf(metadata: [string, GgufValue][], tensors: GgufTensor[], dtype: GgufDType): Buffer {
  const parts: Buffer[] = [];
  const u32 = (n: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(n);
    parts.push(b);
  };
  const u64 = (n: number) => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(n));
    parts.push(b);
  };
  const str = (s: string) => {
    const b = Buffer.from(s, "utf8");
    u64(b.length);
    parts.push(b);
  };
  const padded = (n: number) => Math.ceil(n / ALIGNMENT) * ALIGNMENT;

  parts.push(Buffer.from("GGUF", "ascii"));
  u32(3);
  u64(tensors.length);
  u64(metadata.length);
  const i32 = (n: number) => {
    const b = Buffer.alloc(4);
    b.writeInt32LE(n);
    parts.push(b);
  };
  for (const [key, v] of metadata) {
    str(key);
    if (v.type === "string[]" || v.type === "i32[]") {
      u32(VALUE_TYPE.array);
      u32(v.type === "string[]" ? VALUE_TYPE.string : VALUE_TYPE.i32);
      u64(v.value.length);
      for (const x of v.value) typeof x === "string" ? str(x) : i32(x);
      continue;
    }
    u32(VALUE_TYPE[v.type]);
    if (v.type === "string") str(v.value);
    else if (v.type === "u32") u32(v.value);
    else {
      const b = Buffer.alloc(4);
      b.writeFloatLE(v.value);
      parts.push(b);
    }
  }
  const data = tensors.map((t) => {
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (n !== t.data.length) throw new Error(`tensor ${t.name}: shape [${t.shape}] needs ${n} values, got ${t.data.length}`);
    return fromFloat32(dtype, t.data);
  });
  let offset = 0;
  tensors.forEach((t, i) => {
    str(t.name);
    u32(t.shape.length);
    for (const d of [...t.shape].reverse()) u64(d);
    u32(GGML_TYPE[dtype]);
    u64(offset);
    offset += padded(data[i]!.byteLength);
  });
  const headerLength = parts.reduce((n, p) => n + p.length, 0);
  parts.push(Buffer.alloc(padded(headerLength) - headerLength));
  for (const d of data) {
    parts.push(Buffer.from(d.buffer, d.byteOffset, d.byteLength), Buffer.alloc(padded(d.byteLength) - d.byteLength));
  }
  return Buffer.concat(parts);
}

/**
 * The adapter as llama.cpp's converter would write it: tensors in layer order, q/k lora_B
 * permuted on Llama-architecture models, and an alpha that gives llama.cpp's alpha / r the
 * adapter's own scaling (alpha * sqrt(r) for rsLoRA).
 */
export async function ggufAdapterFile(adapter: LoraAdapter, config: ModelConfig, opts: { name: string; dtype?: GgufDType; metadata?: [string, GgufValue][] }): Promise<Buffer> {
  const arch = ggufArchitecture(config);
  const dtype = opts.dtype ?? "F32";
  const { r, alpha, useRslora } = adapter.settings;
  const tensors: GgufTensor[] = [];
  for (const [module, values] of await adapter.snapshot()) {
    const m = /^model\.layers\.(\d+)\.\w+\.(\w+)$/.exec(module);
    const target = m?.[2] as LoraTarget | undefined;
    if (!m || !target || !GGUF_TENSORS[target]) throw new Error(`module ${module} has no llama.cpp tensor name`);
    const { A, B } = adapter.modules.get(module)!;
    const [rows, rank] = B.shape as [number, number];
    const heads = target === "q_proj" ? config.numHeads : config.numKvHeads;
    const b = arch.permuteQK && (target === "q_proj" || target === "k_proj") ? permuteRopeRows(values.B, rows, rank, heads) : values.B;
    const base = `blk.${m[1]}.${GGUF_TENSORS[target]}.weight`;
    tensors.push({ name: `${base}.lora_a`, shape: A.shape, data: values.A }, { name: `${base}.lora_b`, shape: B.shape, data: b });
  }
  const metadata: [string, GgufValue][] = [
    ["general.architecture", { type: "string", value: arch.name }],
    ["general.type", { type: "string", value: "adapter" }],
    ["general.name", { type: "string", value: opts.name }],
    ["general.file_type", { type: "u32", value: FILE_TYPE[dtype] }],
    ["general.quantization_version", { type: "u32", value: 2 }],
    ["adapter.type", { type: "string", value: "lora" }],
    ["adapter.lora.alpha", { type: "f32", value: useRslora ? alpha * Math.sqrt(r) : alpha }],
    ...(opts.metadata ?? []),
  ];
  return encodeGguf(metadata, tensors, dtype);
}

/** Writes via a temp file and rename, so a crash never leaves half a file at `file`. */
export async function writeGgufAdapter(file: string, adapter: LoraAdapter, config: ModelConfig, opts: Parameters<typeof ggufAdapterFile>[2]): Promise<void> {
  const bytes = await ggufAdapterFile(adapter, config, opts);
  const tmp = `${file}.tmp-${process.pid}`;
  makeDirs(path.dirname(path.resolve(file))); // as a PEFT export makes its folder
  writeFileSync(tmp, bytes);
  renameSync(tmp, file);
}
