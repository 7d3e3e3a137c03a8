// Hot-swap: a reply streamed across a swap finishes on the version it started on, the next
// request gets the new one, and the old adapter is freed when its last request ends.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { initBackend, tf } from "../src/tensor/backend.js";
import { loadModel } from "../src/model/load.js";
import { generate, streamGenerate } from "../src/model/generate.js";
import { LoraAdapter } from "../src/lora/adapter.js";
import { saveAdapter } from "../src/lora/peft.js";
import { LiveModel } from "../src/runtime/live.js";
import { fixtureDir } from "./support/paths.js";

await initBackend();
const model = loadModel(fixtureDir("llama"));
const live = new LiveModel(model);
const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-live-"));
const settings = { r: 4, alpha: 8, dropout: 0, useRslora: false, targetModules: ["q_proj", "v_proj", "down_proj"] as ("q_proj" | "v_proj" | "down_proj")[] };
for (const [name, seed] of [["v0001", 1], ["v0002", 2]] as const) {
  const a = LoraAdapter.create(model.config, settings, live.fingerprint, seed);
  for (const { B } of a.modules.values()) B.assign(tf.randomNormal(B.shape, 0, 0.3, "float32", seed * 100));
  await saveAdapter(path.join(dir, name), a, model.dir);
  a.dispose();
}
const prompt = model.tokenizer.applyChatTemplate([{ role: "user", content: "the quick brown fox" }]);

async function replyOn(version: string): Promise<number[]> {
  const probe = new LiveModel(model);
  probe.swapTo(version, path.join(dir, version));
  const lease = probe.acquire();
  const [r] = await generate(model, [prompt], { maxTokens: 12, temperature: 0, adapter: lease.adapter });
  lease.release();
  probe.dispose();
  return r!.tokens;
}

test("a reply streamed across a swap finishes on its pinned version; the next request uses the new one", async () => {
  const onV1 = await replyOn("v0001");
  const onV2 = await replyOn("v0002");
  assert.notDeepEqual(onV1, onV2, "the two versions must answer differently for the test to mean anything");

  live.swapTo("v0001", path.join(dir, "v0001"));
  const lease = live.acquire();
  const it = streamGenerate(model, [prompt], { maxTokens: 12, temperature: 0, adapter: lease.adapter });
  const streamed: number[] = [];
  let swapped = false;
  for (;;) {
    const r = await it.next();
    if (r.done) break;
    streamed.push(r.value.token);
    if (streamed.length === 3 && !swapped) {
      live.swapTo("v0002", path.join(dir, "v0002"));
      swapped = true;
      const next = live.acquire();
      assert.equal(next.version, "v0002");
      const [other] = await generate(model, [prompt], { maxTokens: 12, temperature: 0, adapter: next.adapter });
      next.release();
      assert.deepEqual(other!.tokens, onV2, "the request after the swap runs on v0002");
      assert.deepEqual(live.resident.sort(), ["v0001", "v0002"], "v0001 stays resident while its request runs");
    }
  }
  assert.equal(lease.version, "v0001");
  assert.deepEqual(streamed, onV1, "the streamed reply finished on v0001");
  lease.release();
  assert.deepEqual(live.resident, ["v0002"], "v0001 is freed when its last request ends");
});

test("a corrupt or foreign checkpoint is refused and the live version stays", async () => {
  live.swapTo("v0002", path.join(dir, "v0002"));
  const bad = path.join(dir, "bad");
  await saveAdapter(bad, LoraAdapter.create(model.config, settings, "another-model", 1), model.dir);
  assert.throws(() => live.swapTo("v0003", bad), /was trained on a different base model/);
  writeFileSync(path.join(bad, "adapter_config.json"), "{ not json");
  assert.throws(() => live.swapTo("v0003", bad), /adapter_config\.json: is not valid JSON/);
  assert.equal(live.version, "v0002");
  live.swapTo(null, null);
  assert.equal(live.acquire().adapter, undefined, "rollback to the base model");
  rmSync(dir, { recursive: true });
});
