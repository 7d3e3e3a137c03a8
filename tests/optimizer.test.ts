// LoraAdam against tf.train.adam: the host-array update and the tensor path take the same steps,
// with and without the global-norm clip.
import { test } from "node:test";
import assert from "node:assert/strict";
import { initBackend, tf } from "../src/tensor/backend.js";
import { LoraAdam } from "../src/bake/optimizer.js";

await initBackend();

function run(make: () => { apply(vars: tf.Variable[], grads: tf.NamedTensorMap): void; dispose(): void }, tag: string): number[][] {
  const vars = [tf.variable(tf.randomNormal([3, 5], 0, 1, "float32", 1), true, `${tag}-a`), tf.variable(tf.randomNormal([5, 2], 0, 1, "float32", 2), true, `${tag}-b`)];
  const opt = make();
  for (let step = 0; step < 4; step++) {
    // gradients of a fixed quadratic, large enough that a clip of 1 bites
    const grads = tf.tidy(() => tf.variableGrads(() => tf.add(tf.sum(tf.square(tf.mul(vars[0]!, 3))), tf.sum(tf.pow(vars[1]!, 4))) as tf.Scalar, vars).grads);
    opt.apply(vars, grads);
    tf.dispose(grads);
  }
  opt.dispose();
  const out = vars.map((v) => [...v.dataSync()]);
  vars.forEach((v) => v.dispose());
  return out;
}

function reference(clipNorm: number) {
  const adam = tf.train.adam(0.05);
  return {
    apply(vars: tf.Variable[], grads: tf.NamedTensorMap) {
      const norm = Math.sqrt(vars.reduce((s, v) => s + tf.tidy(() => tf.sum(tf.square(grads[v.name]!)).dataSync()[0]!), 0));
      const k = clipNorm && norm > clipNorm ? clipNorm / (norm + 1e-6) : 1;
      tf.tidy(() => adam.applyGradients(vars.map((v) => ({ name: v.name, tensor: tf.mul(grads[v.name]!, k) }))));
    },
    dispose: () => adam.dispose(),
  };
}

function close(a: number[][], b: number[][]): void {
  a.flat().forEach((x, i) => assert.ok(Math.abs(x - b.flat()[i]!) < 1e-5, `${i}: ${x} vs ${b.flat()[i]}`));
}

test("LoraAdam takes tf.train.adam's steps, on host arrays and as tensor ops, clipped or not", () => {
  for (const clipNorm of [0, 1]) {
    const want = run(() => reference(clipNorm), `ref${clipNorm}`);
    close(run(() => new LoraAdam({ learningRate: 0.05, clipNorm, host: true }), `host${clipNorm}`), want);
    close(run(() => new LoraAdam({ learningRate: 0.05, clipNorm, host: false }), `tensor${clipNorm}`), want);
    // the clip changes the path (else this test could not tell)
    if (clipNorm) assert.notDeepEqual(want, run(() => reference(0), "unclipped"));
  }
});

test("LoraAdam names a variable that has no gradient", () => {
  const v = tf.variable(tf.zeros([2]), true, "lonely");
  assert.throws(() => new LoraAdam({ learningRate: 0.1, host: true }).apply([v], {}), /no gradient for lonely/);
  assert.throws(() => new LoraAdam({ learningRate: 0.1, host: false }).apply([v], {}), /no gradient for lonely/);
  v.dispose();
});
