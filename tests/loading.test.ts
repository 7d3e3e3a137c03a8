// Bad model directories get errors that name the file and the tensor, never a bare stack trace.
import { test } from "node:test";
import assert from "node:assert/strict";
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { initBackend } from "../src/tensor/backend.js";
import { loadModel } from "../src/model/load.js";
import { parseConfig } from "../src/model/config.js";
import { encodeSafetensors, readHeader, readTensors, halfToFloat } from "../src/model/safetensors.js";
import { fixtureDir } from "./support/paths.js";

await initBackend();

function copyOf(name: string): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-load-"));
  cpSync(fixtureDir(name), dir, { recursive: true });
  return dir;
}

function editJson(file: string, edit: (j: Record<string, unknown>) => void): void {
  const j = JSON.parse(readFileSync(file, "utf8"));
  edit(j);
  writeFileSync(file, JSON.stringify(j));
}

test("a directory that is not a model says config.json is missing", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-empty-"));
  assert.throws(() => loadModel(dir), /not a model directory: config.json is missing/);
  assert.throws(() => loadModel(path.join(dir, "nope")), /no such directory/);
  rmSync(dir, { recursive: true });
});

test("an unknown architecture is named, with the supported list", () => {
  const dir = copyOf("llama");
  editJson(path.join(dir, "config.json"), (j) => (j.architectures = ["GPT2LMHeadModel"]));
  assert.throws(() => loadModel(dir), /architecture GPT2LMHeadModel is not supported; kiln runs LlamaForCausalLM/);
  rmSync(dir, { recursive: true });
});

test("a config with a missing field names the field", () => {
  const dir = copyOf("llama");
  editJson(path.join(dir, "config.json"), (j) => delete j.hidden_size);
  assert.throws(() => loadModel(dir), /config\.json: not a usable model config \(hidden_size/);
  rmSync(dir, { recursive: true });
});

test("a misshapen tensor names the file, the tensor, both shapes and the config fields behind it", () => {
  const dir = copyOf("llama");
  editJson(path.join(dir, "config.json"), (j) => (j.intermediate_size = 100));
  assert.throws(() => loadModel(dir), /model\.safetensors: tensor "model\.layers\.0\.mlp\.gate_proj\.weight" has shape \[176,64\] but config\.json implies \[100,64\] \(intermediate_size 100, hidden_size 64\)/);
  rmSync(dir, { recursive: true });
});

test("a missing tensor is named", () => {
  const dir = copyOf("llama");
  editJson(path.join(dir, "config.json"), (j) => (j.tie_word_embeddings = false));
  assert.throws(() => loadModel(dir), /tensor "lm_head\.weight" is missing/);
  rmSync(dir, { recursive: true });
});

test("a truncated safetensors file is reported as truncated, naming the tensor", () => {
  const dir = copyOf("llama");
  const file = path.join(dir, "model.safetensors");
  truncateSync(file, statSync(file).size - 100);
  assert.throws(() => loadModel(dir), /model\.safetensors: tensor "[^"]+": data ends at byte \d+ but the file holds only \d+ data bytes \(truncated\?\)/);
  truncateSync(file, 5);
  assert.throws(() => loadModel(dir), /only 5 bytes: not a safetensors file/);
  rmSync(dir, { recursive: true });
});

test("a sharded model whose index names a missing shard says which", () => {
  const dir = copyOf("mistral");
  rmSync(path.join(dir, "model-00002-of-00002.safetensors"));
  assert.throws(() => loadModel(dir), /model-00002-of-00002\.safetensors: listed in the weight map but missing/);
  rmSync(dir, { recursive: true });
});

test("a directory with only PyTorch .bin weights says kiln reads safetensors", () => {
  const dir = copyOf("llama");
  rmSync(path.join(dir, "model.safetensors"));
  writeFileSync(path.join(dir, "pytorch_model.bin"), "x");
  assert.throws(() => loadModel(dir), /found pytorch_model\.bin; kiln reads safetensors only/);
  rmSync(dir, { recursive: true });
});

test("safetensors round-trips, with an 8-byte aligned header and metadata", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-st-"));
  const file = path.join(dir, "t.safetensors");
  const tensors = new Map([
    ["b", { shape: [2, 3], data: new Float32Array([1, 2, 3, 4, 5, 6]) }],
    ["a", { shape: [1], data: new Float32Array([-0.5]) }],
  ]);
  const bytes = encodeSafetensors(tensors, { format: "pt" });
  assert.equal(Number(bytes.readBigUInt64LE(0)) % 8, 0);
  writeFileSync(file, bytes);
  const header = readHeader(file);
  assert.deepEqual(header.metadata, { format: "pt" });
  const back = readTensors(header);
  assert.deepEqual([...back.get("b")!.data], [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(back.get("a")!.shape, [1]);
  rmSync(dir, { recursive: true });
});

test("half-precision decoding covers normals, subnormals and infinities", () => {
  assert.equal(halfToFloat(0x3c00), 1);
  assert.equal(halfToFloat(0xc000), -2);
  assert.equal(halfToFloat(0x0001), 2 ** -24);
  assert.equal(halfToFloat(0x7c00), Infinity);
  assert.ok(Number.isNaN(halfToFloat(0x7e00)));
});

/** A safetensors file with this header object and `dataLength` zero bytes of data. */
function rawSafetensors(header: unknown, dataLength: number): Buffer {
  const json = Buffer.from(JSON.stringify(header), "utf8");
  const out = Buffer.alloc(8 + json.length + dataLength);
  out.writeBigUInt64LE(BigInt(json.length), 0);
  json.copy(out, 8);
  return out;
}

test("safetensors headers whose offsets do not tile the data exactly are refused, naming the tensor", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-st-bad-"));
  const f32 = (shape: number[], data_offsets: number[]) => ({ dtype: "F32", shape, data_offsets });
  const cases: [unknown, number, RegExp][] = [
    [null, 0, /header is not a JSON object/],
    // a negative offset would read the header's own bytes as weights
    [{ a: f32([1], [-4, 0]) }, 8, /tensor "a": data_offsets \[-4,0\] are not two whole numbers >= 0/],
    [{ a: f32([2], [0, 8]), b: f32([2], [4, 12]) }, 12, /tensor "b": data_offsets \[4, 12\] overlap the previous tensor, which ends at 8/],
    [{ a: f32([1], [4, 8]) }, 8, /tensor "a": data_offsets start at 4, leaving a gap after byte 0/],
    [{ a: f32([-1, -2], [0, 8]) }, 8, /tensor "a": shape \[-1,-2\] is not a list of whole numbers >= 0/],
    [{ a: f32([1], [0, 4]) }, 40, /holds 36 bytes after the last tensor's data/],
  ];
  for (const [header, length, error] of cases) {
    const file = path.join(dir, "t.safetensors");
    writeFileSync(file, rawSafetensors(header, length));
    assert.throws(() => readHeader(file), error);
  }
  rmSync(dir, { recursive: true });
});

/** Rewrites a fixture's model.safetensors after `edit` changes its tensors. */
function editWeights(dir: string, edit: (t: Map<string, { shape: number[]; data: Float32Array }>) => void): void {
  const file = path.join(dir, "model.safetensors");
  const tensors = readTensors(readHeader(file));
  edit(tensors);
  writeFileSync(file, encodeSafetensors(tensors));
}

test("a weight holding NaN or infinity is refused, naming the file and the tensor, rather than answering garbage", () => {
  const dir = copyOf("llama");
  for (const bad of [NaN, Infinity, -Infinity]) {
    editWeights(dir, (t) => (t.get("model.layers.0.self_attn.k_proj.weight")!.data[5] = bad));
    assert.throws(() => loadModel(dir), /model\.safetensors: tensor "model\.layers\.0\.self_attn\.k_proj\.weight" holds NaN or infinite values \(at index 5\)/);
    editWeights(dir, (t) => (t.get("model.layers.0.self_attn.k_proj.weight")!.data[5] = 0.01));
  }
  loadModel(dir).dispose();
  rmSync(dir, { recursive: true });
});

test("tensors the config does not account for are refused: more layers, or biases it does not ask for", () => {
  const dir = copyOf("llama");
  editJson(path.join(dir, "config.json"), (j) => (j.num_hidden_layers = 1));
  assert.throws(() => loadModel(dir), /model\.safetensors: tensor "model\.layers\.1\.[^"]+" is not part of the model config\.json describes: layer 1, but config\.json says num_hidden_layers 1 \(and 8 more\)/);
  editJson(path.join(dir, "config.json"), (j) => (j.num_hidden_layers = 2));
  editWeights(dir, (t) => t.set("model.layers.0.mlp.up_proj.bias", { shape: [176], data: new Float32Array(176).fill(1) }));
  assert.throws(() => loadModel(dir), /tensor "model\.layers\.0\.mlp\.up_proj\.bias" is not part of the model config\.json describes: a bias config\.json does not ask for \(check attention_bias \/ mlp_bias\)/);
  // RoPE buffers older transformers saved, and a head the tie replaces, are harmless
  editWeights(dir, (t) => {
    t.delete("model.layers.0.mlp.up_proj.bias");
    t.set("model.layers.0.self_attn.rotary_emb.inv_freq", { shape: [8], data: new Float32Array(8) });
    t.set("lm_head.weight", { shape: [319, 64], data: new Float32Array(319 * 64) });
  });
  loadModel(dir).dispose();
  rmSync(dir, { recursive: true });
});

test("config shapes kiln cannot run are named: quantized, partial rotary, rope scaling without a type; a file is not a directory", () => {
  const dir = copyOf("llama");
  const config = path.join(dir, "config.json");
  const original = readFileSync(config, "utf8");
  const cases: [(j: Record<string, unknown>) => void, RegExp][] = [
    [(j) => (j.quantization_config = { quant_method: "gptq", bits: 4 }), /config\.json: quantization_config says the checkpoint is quantized \(gptq\); kiln reads unquantized/],
    [(j) => (j.rope_parameters = { rope_type: "default", rope_theta: 1e6, partial_rotary_factor: 0.5 }), /partial_rotary_factor 0\.5 is not supported/],
    [(j) => (j.rope_scaling = { factor: 2 }), /rope_scaling has no rope_type/],
    [(j) => (j.rope_parameters = { full_attention: { rope_theta: 1e6 }, sliding_attention: { rope_theta: 1e4 } }), /rope_parameters per layer type is not supported/],
  ];
  for (const [edit, error] of cases) {
    writeFileSync(config, original);
    editJson(config, edit);
    assert.throws(() => loadModel(dir), error);
  }
  assert.throws(() => loadModel(config), /config\.json: is a file; pass the model's directory/);
  rmSync(dir, { recursive: true });
});

test("a shard index may only name files beside it", () => {
  const dir = copyOf("mistral");
  editJson(path.join(dir, "model.safetensors.index.json"), (j) => ((j.weight_map as Record<string, string>)["model.norm.weight"] = "../elsewhere.safetensors"));
  assert.throws(() => loadModel(dir), /weight_map sends "model\.norm\.weight" to "\.\.\/elsewhere\.safetensors", which is not a file beside the index/);
  rmSync(dir, { recursive: true });
});

test("special tokens only in special_tokens_map.json still reach the template and the stop ids", () => {
  const dir = copyOf("llama");
  editJson(path.join(dir, "tokenizer_config.json"), (j) => {
    delete j.eos_token;
    delete j.pad_token;
    j.chat_template = "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}";
  });
  writeFileSync(path.join(dir, "generation_config.json"), "{}");
  editJson(path.join(dir, "config.json"), (j) => delete j.eos_token_id);
  writeFileSync(path.join(dir, "special_tokens_map.json"), JSON.stringify({ bos_token: "<|endoftext|>", eos_token: { content: "<|im_end|>" }, pad_token: "<|endoftext|>" }));
  const model = loadModel(dir);
  assert.equal(model.tokenizer.renderChat([{ role: "user", content: "hi" }]), "<|endoftext|>hi<|im_end|>");
  assert.deepEqual(model.eosTokenIds, [317]);
  assert.equal(model.tokenizer.padTokenId, 318);
  model.dispose();
  rmSync(dir, { recursive: true });
});

test("a chat template that does not parse names where it came from", () => {
  const dir = copyOf("qwen3");
  writeFileSync(path.join(dir, "chat_template.jinja"), "{% for m in messages %}{{ m.content }");
  assert.throws(() => loadModel(dir), /the chat template \(.*chat_template\.jinja\) does not parse/);
  rmSync(dir, { recursive: true });
});

// What transformers' config classes assume for a field config.json leaves out
// (configuration_llama.py, _mistral.py, _qwen2.py, _qwen3.py), not kiln's choices.
const TINY = { hidden_size: 64, intermediate_size: 96, num_hidden_layers: 30, num_attention_heads: 16, vocab_size: 100 };
const tiny = (arch: string, extra: Record<string, unknown> = {}) => parseConfig({ architectures: [arch], ...TINY, ...extra });

test("fields config.json leaves out take the architecture's transformers defaults", () => {
  // head_dim: Qwen3Config says 128; the others derive hidden_size / num_attention_heads (64 / 16)
  assert.equal(tiny("Qwen3ForCausalLM", { num_key_value_heads: 16 }).headDim, 128);
  for (const arch of ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"]) assert.equal(tiny(arch, { num_key_value_heads: 16 }).headDim, 4, arch);
  // num_key_value_heads: Llama copies the heads; Mistral assumes 8, Qwen2/Qwen3 32 (null copies the heads everywhere)
  assert.equal(tiny("LlamaForCausalLM").numKvHeads, 16);
  assert.equal(tiny("MistralForCausalLM").numKvHeads, 8);
  assert.equal(tiny("Qwen2ForCausalLM", { num_attention_heads: 32, head_dim: 2 }).numKvHeads, 32);
  assert.equal(tiny("Qwen3ForCausalLM", { num_key_value_heads: null }).numKvHeads, 16);
  assert.throws(() => tiny("Qwen3ForCausalLM"), /num_attention_heads 16 is not a multiple of num_key_value_heads 32 \(absent, so Qwen3ForCausalLM's default\)/);
  // max_position_embeddings
  assert.deepEqual(
    ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"].map((a) => tiny(a, { num_key_value_heads: 16 }).maxPositions),
    [2048, 131072, 32768, 32768],
  );
  // Mistral never has attention biases (its projections are bias=False whatever attention_bias says)
  const mistral = tiny("MistralForCausalLM", { attention_bias: true });
  assert.equal(mistral.qkvBias || mistral.oBias, false);
});

test("sliding windows: Mistral on every layer, Qwen2/Qwen3 only with use_sliding_window and from max_window_layers or per layer_types", () => {
  const kv = { num_key_value_heads: 16 };
  const windows = (arch: string, extra: Record<string, unknown>) => tiny(arch, { ...kv, ...extra }).slidingWindows;
  const every = <T,>(w: T): T[] => Array(30).fill(w);
  // Mistral: sliding_window absent means 4096, null none; use_sliding_window is not Mistral's and changes nothing
  assert.deepEqual(windows("MistralForCausalLM", {}), every(4096));
  assert.deepEqual(windows("MistralForCausalLM", { sliding_window: null }), every(null));
  assert.deepEqual(windows("MistralForCausalLM", { sliding_window: 512, use_sliding_window: false }), every(512));
  // Llama has no sliding window
  assert.deepEqual(windows("LlamaForCausalLM", { sliding_window: 512 }), every(null));
  for (const arch of ["Qwen2ForCausalLM", "Qwen3ForCausalLM"]) {
    // off unless use_sliding_window is true, whatever sliding_window says
    assert.deepEqual(windows(arch, { sliding_window: 512 }), every(null), arch);
    assert.deepEqual(windows(arch, { sliding_window: 512, use_sliding_window: false, max_window_layers: 0 }), every(null), arch);
    // on: layers numbered max_window_layers (default 28) and up, sliding_window defaulting to 4096
    assert.deepEqual(windows(arch, { use_sliding_window: true }), [...Array(28).fill(null), 4096, 4096], arch);
    assert.deepEqual(windows(arch, { use_sliding_window: true, sliding_window: 512, max_window_layers: 29 }), [...Array(29).fill(null), 512], arch);
    assert.deepEqual(windows(arch, { use_sliding_window: true, sliding_window: null }), every(null), arch);
    // layer_types, when given, decides alone
    const types = Array.from({ length: 30 }, (_, i) => (i % 2 ? "sliding_attention" : "full_attention"));
    assert.deepEqual(windows(arch, { use_sliding_window: true, sliding_window: 64, max_window_layers: 0, layer_types: types }), types.map((t) => (t === "full_attention" ? null : 64)), arch);
    assert.deepEqual(windows(arch, { layer_types: every("full_attention") }), every(null), arch);
  }
});

test("configs kiln would have to guess at are refused, naming the file and the field", () => {
  const kv = { num_key_value_heads: 16 };
  const types = (n: number, t = "full_attention") => Array(n).fill(t);
  const cases: [string, Record<string, unknown>, RegExp][] = [
    ["Qwen3ForCausalLM", { ...kv, head_dim: null }, /config\.json: head_dim is null; Qwen3ForCausalLM needs a number/],
    ["LlamaForCausalLM", { ...kv, model_type: "mistral" }, /config\.json: model_type mistral does not match architectures LlamaForCausalLM \(model_type llama\)/],
    ["Qwen2ForCausalLM", { ...kv, layer_types: types(29) }, /config\.json: layer_types lists 29 layers but num_hidden_layers is 30/],
    ["Qwen2ForCausalLM", { ...kv, layer_types: [...types(29), "chunked_attention"] }, /config\.json: layer_types\[29\] is chunked_attention; kiln runs full_attention and sliding_attention layers only/],
    ["Qwen3ForCausalLM", { ...kv, layer_types: [...types(29), "sliding_attention"] }, /config\.json: layer_types\[29\] is sliding_attention but use_sliding_window is not true/],
    ["Qwen2ForCausalLM", { ...kv, use_sliding_window: true, max_window_layers: null }, /config\.json: use_sliding_window is true but max_window_layers is null/],
    ["LlamaForCausalLM", { ...kv, rope_scaling: { rope_type: "llama3", factor: 8 } }, /config\.json: rope_scaling of type llama3 lacks low_freq_factor, high_freq_factor, original_max_position_embeddings/],
    ["LlamaForCausalLM", { ...kv, hidden_size: 60 }, /config\.json: head_dim 3\.75 \(hidden_size 60 \/ num_attention_heads 16, as head_dim is absent\) must be an even integer/],
    ["LlamaForCausalLM", { ...kv, quantization_config: { quant_method: "awq" } }, /config\.json: quantization_config says the checkpoint is quantized \(awq\)/],
  ];
  for (const [arch, extra, error] of cases) assert.throws(() => tiny(arch, extra), error, JSON.stringify(extra));
});

test("a Qwen3 directory whose config.json lacks head_dim is read with Qwen3's 128, so its 24-wide weights are refused", () => {
  const dir = copyOf("qwen3");
  editJson(path.join(dir, "config.json"), (j) => delete j.head_dim);
  assert.throws(() => loadModel(dir), /model\.safetensors: tensor "model\.layers\.0\.self_attn\.q_proj\.weight" has shape \[96,64\] but config\.json implies \[512,64\] \(num_attention_heads 4 x head_dim 128, hidden_size 64\)/);
  rmSync(dir, { recursive: true });
  // Llama, Mistral and Qwen2 derive it: 64 / 4 = 16, what their weights hold
  for (const name of ["llama", "mistral", "qwen2"]) {
    const d = copyOf(name);
    editJson(path.join(d, "config.json"), (j) => delete j.head_dim);
    const model = loadModel(d);
    assert.equal(model.config.headDim, 16, name);
    model.dispose();
    rmSync(d, { recursive: true });
  }
});

test("the chat template comes from chat_template.jinja, then tokenizer_config.json, then chat_template.json, as transformers reads them", () => {
  const dir = copyOf("llama"); // its tokenizer_config.json has a template
  const render = () => {
    const model = loadModel(dir);
    try {
      return model.tokenizer.renderChat([{ role: "user", content: "hi" }], false);
    } finally {
      model.dispose();
    }
  };
  const fromConfig = render();
  assert.match(fromConfig, /<\|im_start\|>user\nhi<\|im_end\|>/);
  // chat_template.json (a processor's file) does not override the tokenizer's own template...
  writeFileSync(path.join(dir, "chat_template.json"), JSON.stringify({ chat_template: "json:{{ messages[0].content }}" }));
  assert.equal(render(), fromConfig);
  // ...but is used when the tokenizer has none
  editJson(path.join(dir, "tokenizer_config.json"), (j) => delete j.chat_template);
  assert.equal(render(), "json:hi");
  // chat_template.jinja comes before both
  writeFileSync(path.join(dir, "chat_template.jinja"), "jinja:{{ messages[0].content }}");
  assert.equal(render(), "jinja:hi");
  rmSync(path.join(dir, "chat_template.jinja"));
  // named templates: the one called "default", as apply_chat_template picks it
  writeFileSync(path.join(dir, "chat_template.json"), JSON.stringify({ chat_template: [{ name: "tool_use", template: "tool" }, { name: "default", template: "default:{{ messages[0].content }}" }] }));
  assert.equal(render(), "default:hi");
  // and no guessing when none is called that, or when the file holds no template
  writeFileSync(path.join(dir, "chat_template.json"), JSON.stringify({ chat_template: [{ name: "tool_use", template: "tool" }] }));
  assert.throws(render, /chat_template\.json: chat_template holds named templates \(tool_use\) but none named "default"/);
  editJson(path.join(dir, "tokenizer_config.json"), (j) => (j.chat_template = { rag: "r", tool_use: "t" }));
  assert.throws(render, /tokenizer_config\.json: chat_template holds named templates \(rag, tool_use\) but none named "default"/);
  editJson(path.join(dir, "tokenizer_config.json"), (j) => delete j.chat_template);
  writeFileSync(path.join(dir, "chat_template.json"), JSON.stringify({ template: "x" }));
  assert.throws(render, /chat_template\.json: no chat_template field/);
  rmSync(dir, { recursive: true });
});

test("a tokenizer_config.json or special_tokens_map.json that is no JSON object is named, not tokenizer.json", () => {
  const dir = copyOf("llama");
  for (const name of ["tokenizer_config.json", "special_tokens_map.json"]) {
    const file = path.join(dir, name);
    const before = existsSync(file) ? readFileSync(file, "utf8") : null;
    writeFileSync(file, "[]");
    assert.throws(() => loadModel(dir), new RegExp(`${name.replace(".", "\\.")}: holds \\[\\], not a JSON object`));
    if (before === null) rmSync(file);
    else writeFileSync(file, before);
  }
  loadModel(dir).dispose();
  rmSync(dir, { recursive: true });
});

test("generation_config.json ids that are no token are refused naming the file and field", () => {
  const dir = copyOf("llama");
  const file = path.join(dir, "generation_config.json");
  // a string id stopped nothing (replies ran to max_tokens); a padding id past the vocabulary failed a bake's lookup
  for (const [g, message] of [
    [{ eos_token_id: "317" }, /generation_config\.json: eos_token_id is "317", not a token id \(a whole number below vocab_size 319\)/],
    [{ eos_token_id: [317, 4000] }, /generation_config\.json: eos_token_id is \[317,4000\], not a token id/],
    [{ eos_token_id: 317, pad_token_id: 319 }, /generation_config\.json: pad_token_id is 319, not a token id/],
    [[317], /generation_config\.json: holds \[317\], not a JSON object/],
  ] as const) {
    writeFileSync(file, JSON.stringify(g));
    assert.throws(() => loadModel(dir), message);
  }
  writeFileSync(file, JSON.stringify({ eos_token_id: 317, pad_token_id: null }));
  loadModel(dir).dispose();
  // config.json's own end-of-turn ids the same (they were taken as they were)
  editJson(path.join(dir, "config.json"), (j) => (j.eos_token_id = [317, 319]));
  assert.throws(() => loadModel(dir), /config\.json.*eos_token_id is \[317,319\], not a token id \(a whole number below vocab_size 319\)/);
  rmSync(dir, { recursive: true });
});
