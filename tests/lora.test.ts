// The LoRA property matrix, on every supported architecture: a fresh adapter is the identity,
// merged equals unmerged, training moves only adapter weights, a disabled adapter is the base
// model; and PEFT files round-trip with the key names PEFT itself uses.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, statSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { initBackend, tf } from "../src/tensor/backend.js";
import { loadModel, type LoadedModel } from "../src/model/load.js";
import { Decoder } from "../src/model/decoder.js";
import { AdapterRegistry, LoraAdapter, mergeAdapters, unmergeAdapters, type LoraSettings } from "../src/lora/adapter.js";
import { checkAdapterTarget, loadAdapter, peftKeys, saveAdapter } from "../src/lora/peft.js";
import { readHeader, readTensors, writeSafetensors } from "../src/model/safetensors.js";
import { FIXTURE_NAMES, fixtureDir } from "./support/paths.js";
import { IDS, logits, maxDiff, randomizeB } from "./support/lora.js";

await initBackend();

const ALL_TARGETS: LoraSettings = {
  r: 4,
  alpha: 8,
  dropout: 0,
  targetModules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
  useRslora: false,
};
function fingerprintOf(model: LoadedModel): string {
  return model.fingerprint;
}

for (const name of FIXTURE_NAMES) {
  test(`${name}: LoRA property matrix`, async (t) => {
    const model = loadModel(fixtureDir(name));
    const fp = fingerprintOf(model);
    const base = await logits(model.decoder);
    try {
      await t.test("B = 0 gives the base logits exactly", async () => {
        const adapter = LoraAdapter.create(model.config, ALL_TARGETS, fp, 1);
        assert.equal(maxDiff(await logits(model.decoder, adapter), base), 0);
        adapter.dispose();
      });

      await t.test("merged equals unmerged within 1e-5, and unmerge restores the base", async () => {
        const adapter = LoraAdapter.create(model.config, { ...ALL_TARGETS, useRslora: true }, fp, 2);
        randomizeB(adapter, 3);
        const unmerged = await logits(model.decoder, adapter);
        assert.ok(maxDiff(unmerged, base) > 1e-3, "the adapter should change the logits");
        const mergedWeights = mergeAdapters(model.decoder.weights, [adapter]);
        const merged = await logits(new Decoder(model.config, mergedWeights));
        assert.ok(maxDiff(merged, unmerged) < 1e-5, `merged vs unmerged ${maxDiff(merged, unmerged)}`);
        const restored = unmergeAdapters(mergedWeights, [adapter]);
        assert.ok(maxDiff(await logits(new Decoder(model.config, restored)), base) < 1e-5);
        for (const w of [...mergedWeights.values(), ...restored.values()]) w.dispose();
        adapter.dispose();
      });

      await t.test("a training step changes adapter weights only", async () => {
        const adapter = LoraAdapter.create(model.config, ALL_TARGETS, fp, 4);
        const baseBefore = new Map<string, Float32Array>();
        for (const [k, v] of model.decoder.weights) baseBefore.set(k, ((await v.data()) as Float32Array).slice());
        const adapterBefore = await adapter.snapshot();
        const optimizer = tf.train.adam(1e-2);
        tf.tidy(() => {
          const { grads } = tf.variableGrads(() => tf.mean(tf.square(model.decoder.forward({ ids: IDS }, { adapter }))) as tf.Scalar, adapter.variables());
          optimizer.applyGradients(grads as tf.NamedTensorMap as unknown as Record<string, tf.Variable>);
        });
        optimizer.dispose();
        for (const [k, v] of model.decoder.weights) assert.deepEqual(await v.data(), baseBefore.get(k), `base weight ${k} changed`);
        const after = await adapter.snapshot();
        let changed = 0;
        for (const [m, { B }] of after) if (maxDiff(B, adapterBefore.get(m)!.B) > 0) changed++;
        assert.equal(changed, adapter.modules.size, "every B should move");
        adapter.dispose();
      });

      await t.test("named adapters side by side; a disabled adapter gives the base model", async () => {
        const registry = new AdapterRegistry();
        const news = LoraAdapter.create(model.config, ALL_TARGETS, fp, 5);
        const persona = LoraAdapter.create(model.config, { ...ALL_TARGETS, targetModules: ["q_proj", "v_proj"] }, fp, 6);
        randomizeB(news, 7);
        randomizeB(persona, 8);
        registry.add("news", news);
        registry.add("persona", persona);
        registry.setActive("news");
        const withNews = await logits(model.decoder, registry.hook());
        registry.setActive("news", "persona");
        const withBoth = await logits(model.decoder, registry.hook());
        assert.ok(maxDiff(withNews, base) > 1e-3 && maxDiff(withBoth, withNews) > 1e-4);
        registry.disable();
        assert.equal(registry.hook(), undefined);
        assert.equal(maxDiff(await logits(model.decoder, registry.hook()), base), 0);
        assert.throws(() => registry.setActive("nope"), /no adapter named "nope" \(loaded: news, persona\)/);
        registry.remove("news");
        registry.remove("persona");
      });

      await t.test("PEFT directory round-trips with PEFT's key names and shapes", async () => {
        const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-peft-"));
        const out = path.join(dir, "adapter");
        const adapter = LoraAdapter.create(model.config, ALL_TARGETS, fp, 9);
        randomizeB(adapter, 10);
        await saveAdapter(out, adapter, model.dir);
        const config = JSON.parse(readFileSync(path.join(out, "adapter_config.json"), "utf8"));
        assert.equal(config.peft_type, "LORA");
        assert.equal(config.task_type, "CAUSAL_LM");
        assert.equal(config.r, 4);
        assert.equal(config.lora_alpha, 8);
        assert.deepEqual(config.target_modules, ALL_TARGETS.targetModules);
        const header = readHeader(path.join(out, "adapter_model.safetensors"));
        assert.equal(header.metadata.format, "pt");
        // Expected keys derived from the Hugging Face module names, independently of kiln's helper.
        const expected: string[] = [];
        for (let l = 0; l < model.config.numLayers; l++) {
          for (const m of ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]) {
            expected.push(`base_model.model.model.layers.${l}.${m}.lora_A.weight`, `base_model.model.model.layers.${l}.${m}.lora_B.weight`);
          }
        }
        assert.deepEqual([...header.tensors.keys()].sort(), expected.sort());
        assert.deepEqual(peftKeys(model.config, ALL_TARGETS).sort(), expected.sort());
        const qA = header.tensors.get("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")!;
        const qB = header.tensors.get("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight")!;
        assert.deepEqual(qA.shape, [4, model.config.hiddenSize]);
        assert.deepEqual(qB.shape, [model.config.numHeads * model.config.headDim, 4]);
        const loaded = loadAdapter(out, model.config, fp);
        assert.equal(maxDiff(await logits(model.decoder, loaded), await logits(model.decoder, adapter)), 0);
        loaded.dispose();
        adapter.dispose();
        rmSync(dir, { recursive: true });
      });
    } finally {
      model.dispose();
    }
  });
}

test("an adapter for another base model, or a corrupt one, is refused and the registry keeps what it had", async () => {
  const llama = loadModel(fixtureDir("llama"));
  const qwen3 = loadModel(fixtureDir("qwen3"));
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-peft-bad-"));
  try {
    const registry = new AdapterRegistry();
    const live = LoraAdapter.create(llama.config, ALL_TARGETS, fingerprintOf(llama), 1);
    randomizeB(live, 2);
    registry.add("live", live);
    registry.setActive("live");
    const before = await logits(llama.decoder, registry.hook());

    const foreign = LoraAdapter.create(qwen3.config, ALL_TARGETS, fingerprintOf(qwen3), 3);
    await saveAdapter(path.join(dir, "qwen3"), foreign, qwen3.dir);
    assert.throws(() => loadAdapter(path.join(dir, "qwen3"), llama.config, fingerprintOf(llama)), /has shape \[4,64\]|was trained on a different base model/);

    // Same shapes, different weights: the fingerprint catches it.
    const mistral = loadModel(fixtureDir("mistral"));
    const sameShape = LoraAdapter.create(mistral.config, ALL_TARGETS, fingerprintOf(mistral), 4);
    await saveAdapter(path.join(dir, "mistral"), sameShape, mistral.dir);
    assert.throws(() => loadAdapter(path.join(dir, "mistral"), llama.config, fingerprintOf(llama)), /was trained on a different base model/);
    sameShape.dispose();
    mistral.dispose();

    await saveAdapter(path.join(dir, "truncated"), live, llama.dir);
    const file = path.join(dir, "truncated", "adapter_model.safetensors");
    truncateSync(file, statSync(file).size - 64);
    assert.throws(() => loadAdapter(path.join(dir, "truncated"), llama.config, fingerprintOf(llama)), /adapter_model\.safetensors: .*truncated/);
    // one flipped bit in a factor is still a finite number: it loaded, and the weights answered otherwise
    await saveAdapter(path.join(dir, "flipped"), live, llama.dir);
    const flipped = path.join(dir, "flipped", "adapter_model.safetensors");
    const bytes = readFileSync(flipped);
    bytes[readHeader(flipped).dataStart + 41]! ^= 0x01;
    writeFileSync(flipped, bytes);
    assert.throws(() => loadAdapter(path.join(dir, "flipped"), llama.config, fingerprintOf(llama)), /flipped\/adapter_model\.safetensors: its tensor data does not match the sha256 kiln wrote with it .*damaged/);
    // a folder that is not there says so (it said "not a PEFT adapter directory: adapter_config.json is missing")
    assert.throws(() => loadAdapter(path.join(dir, "missing"), llama.config, fingerprintOf(llama)), /missing: no such adapter folder/);
    mkdirSync(path.join(dir, "empty"));
    assert.throws(() => loadAdapter(path.join(dir, "empty"), llama.config, fingerprintOf(llama)), /empty: not a PEFT adapter directory: adapter_config\.json is missing/);

    assert.deepEqual(registry.names(), ["live"]);
    assert.equal(maxDiff(await logits(llama.decoder, registry.hook()), before), 0);
    assert.ok(!existsSync(path.join(dir, "qwen3.tmp")));
    foreign.dispose();
    registry.remove("live");
  } finally {
    llama.dispose();
    qwen3.dispose();
    rmSync(dir, { recursive: true });
  }
});

test("an adapter is written only into a new or empty folder, or over an adapter: never over anything else", async () => {
  const llama = loadModel(fixtureDir("llama"));
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-peft-target-"));
  try {
    const adapter = LoraAdapter.create(llama.config, ALL_TARGETS, fingerprintOf(llama), 1);
    const precious = path.join(dir, "precious");
    mkdirSync(precious);
    writeFileSync(path.join(precious, "notes.txt"), "important");
    await assert.rejects(saveAdapter(precious, adapter, llama.dir), /precious: is a folder that is not a PEFT adapter .* kiln will not replace it/);
    assert.equal(readFileSync(path.join(precious, "notes.txt"), "utf8"), "important");
    assert.deepEqual(readdirSync(dir), ["precious"], "no temp folder left beside it");

    const version = path.join(dir, "v0001");
    await saveAdapter(version, adapter, llama.dir, { "manifest.json": "{}" });
    await assert.rejects(saveAdapter(version, adapter, llama.dir), /is a version an agent owns/);
    assert.throws(() => checkAdapterTarget(path.join(precious, "notes.txt"), true), /exists and is not a folder/);

    const plain = path.join(dir, "plain");
    await saveAdapter(plain, adapter, llama.dir);
    assert.throws(() => checkAdapterTarget(plain, false), /already holds an adapter; pass --force/);
    await saveAdapter(plain, adapter, llama.dir); // replacing an adapter is the writer's call (kiln bake asks for --force)
    mkdirSync(path.join(dir, "empty"));
    checkAdapterTarget(path.join(dir, "empty"), false);
    adapter.dispose();
  } finally {
    llama.dispose();
    rmSync(dir, { recursive: true });
  }
});

/** Saves a fresh q/v adapter for `model`, then lets `edit` change its config and tensors as other PEFT writers would. */
async function peftVariant(
  model: LoadedModel,
  dir: string,
  edit: (config: Record<string, unknown>, tensors: Map<string, { shape: number[]; data: Float32Array }>) => void,
): Promise<void> {
  const adapter = LoraAdapter.create(model.config, { ...ALL_TARGETS, targetModules: ["q_proj", "v_proj"] }, fingerprintOf(model), 1);
  randomizeB(adapter, 2);
  await saveAdapter(dir, adapter, model.dir);
  adapter.dispose();
  const configFile = path.join(dir, "adapter_config.json");
  const weights = path.join(dir, "adapter_model.safetensors");
  const config = JSON.parse(readFileSync(configFile, "utf8"));
  const tensors = readTensors(readHeader(weights));
  edit(config, tensors);
  writeFileSync(configFile, JSON.stringify(config));
  writeSafetensors(weights, tensors, { format: "pt" });
}

test("PEFT target rules: a regex string, layers_to_transform, exclude_modules, fan_in_fan_out on Linear; partial adapters save back exactly", async () => {
  const llama = loadModel(fixtureDir("llama"));
  const root = mkdtempSync(path.join(os.tmpdir(), "kiln-peft-rules-"));
  const loaded = (name: string) => {
    const a = loadAdapter(path.join(root, name), llama.config, fingerprintOf(llama));
    const keys = [...a.modules.keys()];
    a.dispose();
    return keys;
  };
  const layer1 = (t: Map<string, unknown>) => {
    for (const k of [...t.keys()]) if (k.includes(".layers.1.")) t.delete(k);
  };
  try {
    // unsloth and hand-written configs give target_modules as a regex PEFT matches against the whole module name
    await peftVariant(llama, path.join(root, "regex"), (c) => (c.target_modules = ".*\\.(q_proj|v_proj)"));
    assert.equal(loaded("regex").length, 4);
    await peftVariant(llama, path.join(root, "layers"), (c, t) => {
      c.layers_to_transform = [0];
      layer1(t);
    });
    assert.deepEqual(loaded("layers"), ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]);
    await peftVariant(llama, path.join(root, "exclude"), (c, t) => {
      c.exclude_modules = ["model.layers.1.self_attn.q_proj"];
      for (const k of [...t.keys()]) if (k.includes(".layers.1.self_attn.q_proj")) t.delete(k);
    });
    assert.equal(loaded("exclude").length, 3);
    await peftVariant(llama, path.join(root, "fifo"), (c) => (c.fan_in_fan_out = true));
    assert.equal(loaded("fifo").length, 4);

    // a layer-0-only adapter written back names its modules, so it reads back as itself
    const partial = loadAdapter(path.join(root, "layers"), llama.config, fingerprintOf(llama));
    await saveAdapter(path.join(root, "resaved"), partial, llama.dir);
    partial.dispose();
    assert.deepEqual(JSON.parse(readFileSync(path.join(root, "resaved", "adapter_config.json"), "utf8")).target_modules, ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]);
    assert.deepEqual(loaded("resaved"), ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]);
  } finally {
    llama.dispose();
    rmSync(root, { recursive: true });
  }
});

test("PEFT adapters kiln cannot apply exactly are refused, naming the field or tensor", async () => {
  const llama = loadModel(fixtureDir("llama"));
  const root = mkdtempSync(path.join(os.tmpdir(), "kiln-peft-refuse-"));
  const cases: [string, Parameters<typeof peftVariant>[2], RegExp][] = [
    ["save", (c) => (c.modules_to_save = ["lm_head"]), /adapter_config\.json: modules_to_save \(lm_head\) replaces whole modules/],
    ["embed", (c) => (c.target_modules = ["q_proj", "embed_tokens"]), /target_modules selects model\.embed_tokens, which kiln cannot adapt/],
    ["unknown", (c) => (c.target_modules = ["query_key_value"]), /target module query_key_value is not supported/],
    // (PEFT's "the model type's default"; it said only "target_modules: Invalid input")
    ["null targets", (c) => (c.target_modules = null), /adapter_config\.json: target_modules: must name the adapted modules.*null \(PEFT's default for the model type\) is not read/],
    [
      "stray",
      (_, t) => t.set("base_model.model.model.layers.0.self_attn.q_proj.bias", { shape: [64], data: new Float32Array(64) }),
      /tensor "base_model\.model\.model\.layers\.0\.self_attn\.q_proj\.bias" is not a LoRA factor of a module adapter_config\.json targets/,
    ],
    ["rank", (c) => (c.r = 8), /has shape \[4,64\] but rank 8 in adapter_config\.json needs \[8,64\]/],
    ["nan", (_, t) => (t.get("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight")!.data[0] = NaN), /q_proj\.lora_B\.weight" holds NaN or infinite values/],
  ];
  try {
    for (const [name, edit, error] of cases) {
      await peftVariant(llama, path.join(root, name), edit);
      assert.throws(() => loadAdapter(path.join(root, name), llama.config, fingerprintOf(llama)), error, name);
    }
  } finally {
    llama.dispose();
    rmSync(root, { recursive: true });
  }
});
