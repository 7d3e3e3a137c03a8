// Exporting a version: PEFT read back by kiln's reader, GGUF read back by an independent parser
// (@huggingface/gguf) with llama.cpp's q/k permutation checked against a computation of its own,
// a merged model that gives the adapter's logits, the CLI end to end, and the refusals.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { cpSync, existsSync, mkdirSync, mkdtempSync, openSync, closeSync, readFileSync, readdirSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { gguf } from "@huggingface/gguf";
import { initBackend, tf } from "../src/tensor/backend.js";
import { loadModel, type LoadedModel } from "../src/model/load.js";
import { halfToFloat, readHeader, readRawTensor, readTensors } from "../src/model/safetensors.js";
import { LoraAdapter, type LoraSettings } from "../src/lora/adapter.js";
import { loadAdapter, saveAdapter } from "../src/lora/peft.js";
import { baseModelName, exportAdapter, type ExportSource } from "../src/lora/export.js";
import { Runtime } from "../src/runtime/runtime.js";
import { createServer } from "../src/server/index.js";
import { FAST_BAKE, writeTestAgent } from "./support/agent.js";
import { fixtureDir, repoRoot } from "./support/paths.js";
import { logits, maxDiff, randomizeB } from "./support/lora.js";

await initBackend();

const ALL: LoraSettings = { r: 4, alpha: 8, dropout: 0, targetModules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], useRslora: false };
/**
 * Runs `fn` with a fixture model and an adapter of `settings` stored as a version would be (B
 * random, so it changes the model), then frees both and removes the folder.
 */
async function withStored(fixture: string, settings: LoraSettings, seed: number, fn: (model: LoadedModel, adapter: LoraAdapter, dir: string) => Promise<void>): Promise<void> {
  const model = loadModel(fixtureDir(fixture));
  const adapter = LoraAdapter.create(model.config, settings, model.fingerprint, seed);
  randomizeB(adapter, seed);
  const dir = path.join(mkdtempSync(path.join(os.tmpdir(), "kiln-export-src-")), "v0001");
  try {
    await saveAdapter(dir, adapter, model.dir);
    await fn(model, adapter, dir);
  } finally {
    adapter.dispose();
    model.dispose();
    rmSync(path.dirname(dir), { recursive: true });
  }
}

const source = (model: LoadedModel, adapterDir: string): ExportSource => ({ adapterDir, model, name: "tester-v0001" });

/** Every file of a folder with its sha256: what "untouched" means. */
function hashes(dir: string): Record<string, string> {
  return Object.fromEntries(readdirSync(dir).map((f) => [f, createHash("sha256").update(readFileSync(path.join(dir, f))).digest("hex")]));
}

/**
 * llama.cpp's LlamaModel.permute written as numpy does it (reshape to [heads, 2, headDim/2, r],
 * swap axes 1 and 2, reshape back), with tfjs: independent of kiln's index arithmetic.
 */
function permutedByReshape(b: Float32Array, rows: number, r: number, heads: number): Float32Array {
  return tf.tidy(() => tf.tensor(b, [rows, r]).reshape([heads, 2, rows / heads / 2, r]).transpose([0, 2, 1, 3]).reshape([rows, r]).dataSync() as Float32Array);
}

/** The GGUF as an independent parser reads it, with each tensor's values read at its offset. */
async function readGguf(file: string) {
  const parsed = await gguf(file, { allowLocalFile: true, typedMetadata: true });
  const bytes = readFileSync(file);
  const values = (info: (typeof parsed.tensorInfos)[number]): Float32Array => {
    const n = info.shape.reduce((a, b) => a * Number(b), 1);
    const at = Number(parsed.tensorDataOffset + info.offset);
    const copy = new Uint8Array(bytes.subarray(at, at + n * (info.dtype === 0 ? 4 : 2))); // aligned copy
    return info.dtype === 0 ? new Float32Array(copy.buffer) : Float32Array.from(new Uint16Array(copy.buffer), halfToFloat);
  };
  return { ...parsed, values };
}

for (const [fixture, arch, permuted] of [
  ["llama", "llama", true],
  ["mistral", "llama", true],
  ["qwen2", "qwen2", false],
] as const) {
  test(`${fixture}: a GGUF export is what llama.cpp's converter writes, read back by @huggingface/gguf`, async () => {
    const settings = { ...ALL, useRslora: fixture === "mistral" };
    await withStored(fixture, settings, 3, async (model, adapter, dir) => {
      const out = path.join(path.dirname(dir), "adapter.gguf");
      const before = hashes(dir);
      const r = await exportAdapter(source(model, dir), out, { format: "gguf" });
      assert.deepEqual(r.files, [out]);
      assert.deepEqual(hashes(dir), before, "the stored adapter is only read");
      const g = await readGguf(out);
      const meta = g.typedMetadata as unknown as Record<string, { value: unknown; type: number }>;
      assert.equal(meta.version!.value, 3);
      assert.equal(meta["general.architecture"]!.value, arch);
      assert.equal(meta["general.type"]!.value, "adapter");
      assert.equal(meta["adapter.type"]!.value, "lora");
      assert.equal(meta["general.name"]!.value, "tester-v0001");
      assert.equal(meta["adapter.lora.alpha"]!.type, 6, "alpha is a FLOAT32, as llama.cpp reads it");
      // llama.cpp scales by alpha / r: rsLoRA's alpha / sqrt(r) needs alpha * sqrt(r) in the file
      const alpha = meta["adapter.lora.alpha"]!.value as number;
      assert.ok(Math.abs(alpha / settings.r - adapter.scaling) < 1e-6, `alpha ${alpha} gives scale ${alpha / settings.r}, the adapter's is ${adapter.scaling}`);
      assert.equal(Number(g.tensorDataOffset) % 32, 0);

      const c = model.config;
      const expected = new Map<string, { shape: number[]; data: Float32Array }>();
      let permutedSeen = 0;
      const names = { q_proj: "attn_q", k_proj: "attn_k", v_proj: "attn_v", o_proj: "attn_output", gate_proj: "ffn_gate", up_proj: "ffn_up", down_proj: "ffn_down" } as const;
      for (const [module, { A, B }] of await adapter.snapshot()) {
        const [, layer, kind] = /^model\.layers\.(\d+)\.\w+\.(\w+)$/.exec(module)!;
        const [rows, inFeatures] = [B.length / settings.r, A.length / settings.r];
        const heads = kind === "q_proj" ? c.numHeads : c.numKvHeads;
        const b = permuted && (kind === "q_proj" || kind === "k_proj") ? permutedByReshape(B, rows, settings.r, heads) : B;
        if (b !== B) {
          assert.ok(maxDiff(b, B) > 0, `the permutation of ${module} moves rows`);
          permutedSeen++;
        }
        const base = `blk.${layer}.${names[kind as keyof typeof names]}.weight`;
        // ggml's ne is numpy's shape reversed: lora_a [in, r], lora_b [r, out]
        expected.set(`${base}.lora_a`, { shape: [inFeatures, settings.r], data: A });
        expected.set(`${base}.lora_b`, { shape: [settings.r, rows], data: b });
      }
      assert.deepEqual(new Set(g.tensorInfos.map((t) => t.name)), new Set(expected.keys()));
      for (const info of g.tensorInfos) {
        const want = expected.get(info.name)!;
        assert.equal(info.dtype, 0, `${info.name} is F32`);
        assert.equal(Number(info.offset) % 32, 0);
        assert.deepEqual(info.shape.map(Number), want.shape, info.name);
        assert.deepEqual(g.values(info), want.data, `${info.name} holds the adapter's values`);
      }
      assert.equal(permutedSeen, permuted ? 2 * c.numLayers : 0, permuted ? "q and k lora_b are permuted on every layer" : "qwen2 is not permuted");

      // F16, llama.cpp's converter's --outtype f16
      const half = path.join(path.dirname(dir), "adapter-f16.gguf");
      await exportAdapter(source(model, dir), half, { format: "gguf", ggufType: "F16" });
      const h = await readGguf(half);
      assert.equal((h.typedMetadata as unknown as Record<string, { value: unknown }>)["general.file_type"]!.value, 1);
      for (const info of h.tensorInfos) {
        assert.equal(info.dtype, 1, `${info.name} is F16`);
        const want = expected.get(info.name)!.data;
        const got = h.values(info);
        for (let i = 0; i < want.length; i++) assert.ok(Math.abs(got[i]! - want[i]!) <= Math.abs(want[i]!) * 1e-3 + 1e-7, `${info.name}[${i}]`);
      }
    });
  });
}

test("a PEFT export reads back with identical tensors and names its base model as other tools find it", async () => {
  await withStored("llama", { ...ALL, useRslora: true }, 5, async (model, adapter, dir) => {
    const out = path.join(path.dirname(dir), "peft");
    const r = await exportAdapter(source(model, dir), out, { format: "peft" });
    assert.deepEqual(readdirSync(out).sort(), ["adapter_config.json", "adapter_model.safetensors"]);
    const config = JSON.parse(readFileSync(path.join(out, "adapter_config.json"), "utf8"));
    assert.equal(config.base_model_name_or_path, model.dir);
    assert.equal(r.baseModel, model.dir);
    assert.equal(config.use_rslora, true);
    const back = loadAdapter(out, model.config, model.fingerprint);
    assert.deepEqual(await back.snapshot(), await adapter.snapshot());
    assert.equal(back.scaling, adapter.scaling);
    back.dispose();
    // a model pulled from the hub is named by its repo id, which PEFT and vLLM can fetch
    assert.equal(baseModelName("/home/u/.cache/kiln/hub/models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots/12fd25f77366fa6b3b4b768ec3050bf629380bac"), "HuggingFaceTB/SmolLM2-135M-Instruct");
  });
});

// F32 fixtures (mistral's in two shards with an index): the merged weights are exact up to float32
// rounding (F16 and BF16 bases are below)
for (const fixture of ["llama", "mistral"]) {
  test(`${fixture}: a merged export is a model kiln loads with the adapter's logits, its other files copied`, async () => {
    await withStored(fixture, ALL, 7, async (model, adapter, dir) => {
      const out = path.join(path.dirname(dir), "merged");
      const base = await logits(model.decoder);
      const unmerged = await logits(model.decoder, adapter);
      await exportAdapter(source(model, dir), out, { format: "merged" });
      for (const f of readdirSync(model.dir)) assert.ok(existsSync(path.join(out, f)), `${f} is in the merged folder`); // shards and index too
      assert.deepEqual(readFileSync(path.join(out, "config.json")), readFileSync(path.join(model.dir, "config.json")));
      const merged = loadModel(out);
      try {
        const got = await logits(merged.decoder);
        assert.ok(maxDiff(got, unmerged) < 1e-4, `merged vs base + adapter: ${maxDiff(got, unmerged)}`);
        assert.ok(maxDiff(got, base) > 1e-3, "the merged model is not the base");
        assert.equal(merged.fingerprint, model.fingerprint, "embeddings are not adapted: the same base fingerprint");
      } finally {
        merged.dispose();
      }
    });
  });
}

for (const [fixture, dtype, step] of [
  ["qwen2", "F16", 2 ** -11],
  ["qwen3", "BF16", 2 ** -8],
] as const) {
  test(`${fixture}: a merged export keeps each weight's dtype: ${dtype} stays ${dtype} (W + delta rounded once), untouched tensors byte for byte`, async () => {
    await withStored(fixture, { ...ALL, targetModules: ["q_proj", "down_proj"] }, 9, async (model, adapter, dir) => {
      const out = path.join(path.dirname(dir), "merged");
      await exportAdapter(source(model, dir), out, { format: "merged" });
      const merged = readHeader(path.join(out, "model.safetensors"));
      const base = readHeader(path.join(model.dir, "model.safetensors"));
      for (const [name, e] of merged.tensors) assert.equal(e.dtype, base.tensors.get(name)!.dtype, name);
      assert.equal(merged.tensors.get("model.layers.0.self_attn.q_proj.weight")!.dtype, dtype);
      const fd = openSync(path.join(out, "model.safetensors"), "r");
      const bfd = openSync(path.join(model.dir, "model.safetensors"), "r");
      const raw = (h: typeof base, f: number, name: string) => readRawTensor(h, `model.layers.0.${name}.weight`, f);
      assert.deepEqual(raw(merged, fd, "self_attn.v_proj"), raw(base, bfd, "self_attn.v_proj"), "an unadapted weight is copied as it was");
      assert.notDeepEqual(raw(merged, fd, "self_attn.q_proj"), raw(base, bfd, "self_attn.q_proj"));
      closeSync(fd);
      closeSync(bfd);
      // each merged value is W + delta rounded once: within half a step of the dtype (relative; F16 subnormals absolute)
      const w = readTensors(base, ["model.layers.1.mlp.down_proj.weight"]).get("model.layers.1.mlp.down_proj.weight")!.data;
      const m = readTensors(merged, ["model.layers.1.mlp.down_proj.weight"]).get("model.layers.1.mlp.down_proj.weight")!.data;
      const d = adapter.deltaWeight("model.layers.1.mlp.down_proj");
      const delta = d.dataSync() as Float32Array;
      d.dispose();
      for (let i = 0; i < w.length; i++) assert.ok(Math.abs(m[i]! - (w[i]! + delta[i]!)) <= Math.abs(w[i]! + delta[i]!) * step + 2 ** -25, `down_proj[${i}]`);
      const loaded = loadModel(out);
      assert.ok(maxDiff(await logits(loaded.decoder), await logits(model.decoder)) > 1e-3, "the merged model is not the base");
      loaded.dispose();
    });
  });
}

test("refusals: a destination in use, an architecture llama.cpp's converter cannot take, a corrupt version, the stored version itself", async () => {
  await withStored("llama", ALL, 11, async (model, adapter, dir) => {
    const root = path.dirname(dir);
    // a folder that is not an export is never written over, --force or not
    const precious = path.join(root, "precious");
    mkdirSync(precious);
    writeFileSync(path.join(precious, "notes.txt"), "important");
    for (const format of ["peft", "merged"] as const) {
      for (const force of [false, true]) {
        await assert.rejects(exportAdapter(source(model, dir), precious, { format, force }), /precious: is a folder that is not a .* and is not empty; kiln will not replace it/);
      }
    }
    assert.deepEqual(readdirSync(precious), ["notes.txt"]);
    // an earlier export is replaced only with --force
    const peft = path.join(root, "peft");
    await exportAdapter(source(model, dir), peft, { format: "peft" });
    await assert.rejects(exportAdapter(source(model, dir), peft, { format: "peft" }), /peft: already holds an adapter; pass --force to replace it/);
    await exportAdapter(source(model, dir), peft, { format: "peft", force: true });
    const file = path.join(root, "a.gguf");
    await exportAdapter(source(model, dir), file, { format: "gguf" });
    await assert.rejects(exportAdapter(source(model, dir), file, { format: "gguf" }), /a\.gguf: already exists; pass --force to replace it/);
    await exportAdapter(source(model, dir), file, { format: "gguf", force: true });
    await assert.rejects(exportAdapter(source(model, dir), precious, { format: "gguf" }), /is a folder; give the path of the \.gguf file to write/);

    // the stored version and the base model are never written into, nor replaced
    const before = hashes(dir);
    await assert.rejects(exportAdapter(source(model, dir), path.join(dir, "inside"), { format: "peft" }), /is or holds the stored version/);
    await assert.rejects(exportAdapter(source(model, dir), dir, { format: "peft", force: true }), /is or holds the stored version/);
    await assert.rejects(exportAdapter(source(model, dir), model.dir, { format: "merged", force: true }), /is or holds the base model/);
    assert.deepEqual(hashes(dir), before);

    // an architecture the GGUF mapping does not know is named
    const other = { ...model, config: { ...model.config, architecture: "GemmaForCausalLM" } } as unknown as LoadedModel;
    await assert.rejects(exportAdapter(source(other, dir), path.join(root, "g.gguf"), { format: "gguf" }), /GGUF export does not support GemmaForCausalLM/);

    // a corrupt stored file is named, and nothing is written
    const broken = path.join(root, "broken");
    cpSync(dir, broken, { recursive: true });
    truncateSync(path.join(broken, "adapter_model.safetensors"), 100);
    for (const format of ["peft", "gguf", "merged"] as const) {
      const to = path.join(root, `from-broken-${format}`);
      await assert.rejects(exportAdapter(source(model, broken), to, { format }), /broken\/adapter_model\.safetensors: /);
      assert.ok(!existsSync(to), `${format}: nothing written`);
    }
    assert.deepEqual(readdirSync(root).filter((f) => f.includes(".tmp-")), [], "no temp files left");
  });
});

test("a GGUF export with --force replaces only an earlier GGUF: a ledger or any other file is never written over; a missing folder is made", async () => {
  await withStored("llama", ALL, 12, async (model, _adapter, dir) => {
    const root = path.dirname(dir);
    // an agent's ledger beside its versions: `--to .../ledger.json --force` once wrote the GGUF over it
    const ledger = path.join(root, "ledger.json");
    writeFileSync(ledger, '{"schema":1,"live":"v0001","items":[]}');
    for (const force of [false, true]) {
      await assert.rejects(exportAdapter(source(model, dir), ledger, { format: "gguf", force }), /ledger\.json: already exists and is not a GGUF file; kiln will not replace it/);
    }
    assert.equal(readFileSync(ledger, "utf8"), '{"schema":1,"live":"v0001","items":[]}');
    // a file too short to hold the magic is not a GGUF either
    const tiny = path.join(root, "tiny.gguf");
    writeFileSync(tiny, "GG");
    await assert.rejects(exportAdapter(source(model, dir), tiny, { format: "gguf", force: true }), /not a GGUF file/);
    // a GGUF export's folder is made as a PEFT export's is, not failed with ENOENT on a temp file
    const nested = path.join(root, "new", "folder", "a.gguf");
    await exportAdapter(source(model, dir), nested, { format: "gguf" });
    await exportAdapter(source(model, dir), nested, { format: "gguf", force: true }); // an earlier GGUF is replaced
    assert.equal(readFileSync(nested).subarray(0, 4).toString("latin1"), "GGUF");
  });
});

test("kiln versions export and the admin API: by version id or live, beside the agent's state; unknown versions and base are named", async () => {
  const all = { ...FAST_BAKE, lora: { ...FAST_BAKE.lora, targetModules: ALL.targetModules } };
  const { dir, file } = writeTestAgent({ bake: { probesPerItem: 1, checkProbes: false, openQuestions: ["hello"], settings: all } });
  try {
    const runtime = await Runtime.fromFiles(file);
    try {
      const agent = runtime.agent("tester");
      await assert.rejects(agent.exportVersion("live", path.join(dir, "x"), { format: "peft" }), /tester is live on the base model: there is no adapter to export/);
      await agent.remember("The lighthouse keeper is Mira Tolle.");
      const baked = await agent.bake("test");
      assert.equal(baked.version, "v0001", baked.reasons.join("; "));
      await assert.rejects(agent.exportVersion("v0042", path.join(dir, "x"), { format: "peft" }), /no version v0042 \(known: v0001\)/);
      await assert.rejects(agent.exportVersion("base", path.join(dir, "x"), { format: "peft" }), /base is the base model itself, with no adapter to export/);

      // the admin API: peft and gguf onto the server's disk; merged is left to the CLI, beside the server
      const server = await createServer(runtime, { port: 0 });
      try {
        const post = async (id: string, body: unknown) => {
          const res = await fetch(`${server.url}/admin/agents/tester/versions/${id}/export`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
          return { status: res.status, body: (await res.json()) as Record<string, unknown> & { error?: { message: string } } };
        };
        const ok = await post("live", { to: path.join(dir, "api.gguf"), format: "gguf", ggufType: "f16" });
        assert.equal(ok.status, 201, JSON.stringify(ok.body));
        assert.equal(ok.body.version, "v0001");
        assert.ok((await gguf(path.join(dir, "api.gguf"), { allowLocalFile: true })).tensorInfos.every((t) => t.dtype === 1), "F16 tensors");
        const kept = await post("live", { to: path.join(dir, "api.gguf"), format: "gguf" });
        assert.equal(kept.status, 409, "an earlier export is kept without force");
        assert.match(kept.body.error!.message, /api\.gguf: already exists; send "force": true to replace it/, "the API's field, not the CLI's --force");
        assert.equal((await post("v0009", { to: path.join(dir, "y") })).status, 404);
        assert.match((await post("v0001", { to: "relative/dir" })).body.error!.message, /to must be an absolute path on the server/);
        assert.match((await post("v0001", { to: path.join(dir, "m"), format: "merged" })).body.error!.message, /format must be peft or gguf/);
      } finally {
        await server.close();
      }
    } finally {
      await runtime.stop();
    }
    const stored = path.join(dir, "home", "v0001");
    const before = hashes(stored);
    const main = path.join(repoRoot(), "dist", "src", "cli", "main.js");
    const kiln = (...args: string[]) => spawnSync(process.execPath, [main, "versions", "export", "tester", ...args, "--agents", file, "--json"], { encoding: "utf8", timeout: 180_000 });
    const g = kiln("live", "--format", "gguf", "--to", path.join(dir, "tester.gguf"));
    assert.equal(g.status, 0, g.stderr);
    const result = JSON.parse(g.stdout);
    assert.equal(result.version, "v0001");
    assert.equal(result.format, "gguf");
    const parsed = await gguf(path.join(dir, "tester.gguf"), { allowLocalFile: true });
    assert.equal((parsed.metadata as unknown as Record<string, unknown>)["general.name"], "tester-v0001");
    assert.equal(parsed.tensorInfos.length, 2 * 7 * 2, "two layers, seven modules, A and B");

    const m = kiln("v0001", "--format", "merged", "--to", path.join(dir, "merged"));
    assert.equal(m.status, 0, m.stderr);
    const p = kiln("v0001", "--to", path.join(dir, "merged"));
    assert.equal(p.status, 1);
    assert.match(p.stderr, /merged: is a folder that is not a PEFT adapter \(no adapter_config\.json\)/);
    const missing = kiln("v0001");
    assert.match(missing.stderr, /give where to write the export with --to <path>/);
    assert.deepEqual(hashes(stored), before, "the stored version is only read");
  } finally {
    rmSync(dir, { recursive: true });
  }
});
