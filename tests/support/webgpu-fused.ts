// Run by tests/webgpu.test.ts in a child process (a process starts webgpu once): kiln's WGSL
// kernels (src/tensor/webgpu.ts) against the same math composed of tfjs ops on the cpu backend,
// and a decoder step on webgpu running them.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { initBackend } from "../../src/tensor/backend.js";
import { ATTENTION, KV_APPEND, LORA_LINEAR, RMS_NORM, rmsNorm, ROPE, SWIGLU } from "../../src/tensor/fused.js";
import { KVCache } from "../../src/model/kv-cache.js";
import { loadModel } from "../../src/model/load.js";
import { checkAdam, checkAttention, checkKlRows, checkKvAppend, checkLoraLinear, checkManyRows, checkRmsNormAndSwiglu, checkRope, checkWideRows, close, r, same } from "./fused-checks.js";
import { LoraAdam } from "../../src/bake/optimizer.js";
import { LoraAdapter } from "../../src/lora/adapter.js";
import { fixtureDir } from "./paths.js";

const info = await initBackend("webgpu");
assert.equal(info.name, "webgpu", info.notes.join("; "));

test("RMSNorm and SwiGLU, values and gradients", () => checkRmsNormAndSwiglu("webgpu"));
test("KL per position, value and gradient", () => checkKlRows("webgpu"));
test("RoPE, value and gradient", () => checkRope("webgpu"));
test("LoRA linear, value and gradients", () => checkLoraLinear("webgpu"));
test("attention, values and gradients, both K/V layouts, grouped heads", () => checkAttention("webgpu"));
test("rows wider than a workgroup (a vocabulary's), log-softmax's gradient", () => checkWideRows("webgpu"));

test("the KV cache's append", () => checkKvAppend("webgpu"));
test("the optimizer's gradient norm and Adam step, clipped or not", () => checkAdam("webgpu"));

test("LoraAdam on webgpu takes the steps LoraAdam takes on the cpu's host arrays", async () => {
  const steps = async (backend: string) => {
    await tf.setBackend(backend);
    const vars = [tf.variable(r([3, 5], 1), true, `${backend}-a`), tf.variable(r([5, 2], 2), true, `${backend}-b`)];
    const opt = new LoraAdam({ learningRate: 0.05, clipNorm: 1, host: backend === "cpu" });
    for (let step = 0; step < 4; step++) {
      const grads = tf.tidy(() => tf.variableGrads(() => tf.add(tf.sum(tf.square(tf.mul(vars[0]!, 3))), tf.sum(tf.pow(vars[1]!, 4))) as tf.Scalar, vars).grads);
      opt.apply(vars, grads);
      tf.dispose(grads);
    }
    opt.dispose();
    const out = await Promise.all(vars.map(async (v) => [...(await v.data())]));
    vars.forEach((v) => v.dispose());
    return out.flat();
  };
  const [gpu, host] = [await steps("webgpu"), await steps("cpu")];
  close(Float32Array.from(gpu), Float32Array.from(host), 1e-5);
});

test("more rows than one dispatch dimension holds (tfjs folds it; the extra workgroups write nothing), weight gradients over them", async () => {
  await same("webgpu", () => rmsNorm(r([70_001, 3], 90), tf.add(r([3], 91), 1), 1e-6));
  await checkManyRows("webgpu");
});

test("a decoder step with an adapter on webgpu runs the fused kernels, not their composition", async () => {
  await tf.setBackend("webgpu");
  const model = loadModel(fixtureDir("llama"));
  const adapter = LoraAdapter.create(model.config, { r: 4, alpha: 8, dropout: 0, targetModules: ["q_proj", "v_proj"], useRslora: false }, "test", 1);
  const cache = new KVCache(1);
  const prompt = tf.tidy(() => model.decoder.forward({ ids: [[1, 5, 9, 3]] }, { cache, adapter }));
  await prompt.data();
  prompt.dispose();
  const p = await tf.profile(async () => {
    const logits = tf.tidy(() => model.decoder.forward({ ids: [[7]] }, { cache, adapter }));
    await logits.data();
    logits.dispose();
  });
  const names = new Set(p.kernels.map((k) => k.name));
  for (const fused of [RMS_NORM, ROPE, ATTENTION, SWIGLU, LORA_LINEAR, KV_APPEND]) assert.ok(names.has(fused), `${fused} ran (ran: ${[...names].join(", ")})`);
  for (const composed of ["Softmax", "Rsqrt", "Sigmoid", "Concat", "Transpose"]) assert.ok(!names.has(composed), `${composed} did not run`);
  cache.dispose();
  adapter.dispose();
  model.decoder.dispose();
});
