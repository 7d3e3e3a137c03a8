// kiln's exports read by transformers and PEFT themselves (a device-check tool, not CI: this
// machine has neither; the lent GPU machine has both). For the default model and the five
// architecture fixtures it gives an adapter random B (rsLoRA on some, plain alpha/r on others),
// writes the PEFT and merged exports the way `kiln versions export` does, and records kiln's
// logits for a few fixed token rows: the base, the base with the adapter, and the merged folder
// loaded by kiln. tools/device/export_check.py then computes the same with transformers (the base
// and the merged folder) and PEFT (`PeftModel.from_pretrained` on the base) and compares.
//
//   node dist/tools/device/export_check.js <work dir>    writes <work dir>/cases.json and the exports
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { initBackend, tf } from "../../src/tensor/backend.js";
import { loadModel } from "../../src/model/load.js";
import { PACKAGE_ROOT, DEFAULT_MODEL_DIR } from "../../src/model/resolve.js";
import { LoraAdapter, LORA_TARGETS } from "../../src/lora/adapter.js";
import { saveAdapter } from "../../src/lora/peft.js";
import { exportAdapter } from "../../src/lora/export.js";
import { IDS, logits, randomizeB } from "../../tests/support/lora.js";

const work = path.resolve(process.argv[2] ?? "");
if (!process.argv[2]) throw new Error("usage: export_check.js <work dir>");
const backend = await initBackend();
const fixtures = ["llama", "llama3-rope", "mistral", "qwen2", "qwen3"].map((n) => path.join(PACKAGE_ROOT, "tests", "fixtures", "models", n));
const cases = [];
for (const [i, dir] of [DEFAULT_MODEL_DIR, ...fixtures].entries()) {
  const name = path.basename(dir);
  const model = loadModel(dir);
  const out = path.join(work, name);
  mkdirSync(out, { recursive: true });
  const settings = { r: 4, alpha: 8, dropout: 0, targetModules: [...LORA_TARGETS], useRslora: i % 2 === 0 };
  const adapter = LoraAdapter.create(model.config, settings, model.fingerprint, 1 + i);
  randomizeB(adapter, 100 * (i + 1));
  await saveAdapter(path.join(out, "stored"), adapter, model.dir);
  const source = { adapterDir: path.join(out, "stored"), model, name };
  await exportAdapter(source, path.join(out, "peft"), { format: "peft" });
  await exportAdapter(source, path.join(out, "merged"), { format: "merged" });
  const merged = loadModel(path.join(out, "merged"));
  const rows = (x: Float32Array) => IDS.map((_, b) => Array.from(x.subarray(b * IDS[0]!.length * model.config.vocabSize, (b + 1) * IDS[0]!.length * model.config.vocabSize)));
  cases.push({
    name,
    modelDir: dir,
    peft: path.join(out, "peft"),
    merged: path.join(out, "merged"),
    useRslora: settings.useRslora,
    ids: IDS,
    vocab: model.config.vocabSize,
    base: rows(await logits(model.decoder)),
    adapter: rows(await logits(model.decoder, adapter)),
    mergedByKiln: rows(await logits(merged.decoder)),
  });
  adapter.dispose();
  merged.dispose();
  model.dispose();
  process.stdout.write(`${name}: exported (${settings.useRslora ? "rsLoRA" : "alpha/r"}, r ${settings.r}, ${LORA_TARGETS.length} modules)\n`);
}
writeFileSync(path.join(work, "cases.json"), JSON.stringify({ backend: backend.name, cases }));
tf.disposeVariables();
