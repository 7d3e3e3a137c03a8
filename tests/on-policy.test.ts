// The on-policy objective: the reverse KL(student || teacher) against a hand computation and
// finite differences, the settings it refuses, and an on-policy bake of a tiny model that makes
// the unprompted model do what the prompted one did.
import { test } from "node:test";
import assert from "node:assert/strict";
import { initBackend, tf } from "../src/tensor/backend.js";
import { loadModel } from "../src/model/load.js";
import { generate } from "../src/model/generate.js";
import { disposeTargets, klSum, reverseKlPerPosition, stackTargets, type TeacherTargets } from "../src/bake/kl.js";
import { bake, bakeSettingsProblem, type BakeSettings } from "../src/bake/trainer.js";
import { sampleTrajectories, studentMessages, teacherMessages } from "../src/bake/trajectories.js";
import { AgentConfigError, parseAgentConfig } from "../src/runtime/agent-config.js";
import type { LoraAdapter } from "../src/lora/adapter.js";
import type { ChatMessage } from "../src/model/tokenizer.js";
import { fixtureDir } from "./support/paths.js";

await initBackend();

/** log softmax of one row, in float64 */
function logSoftmax64(z: number[]): number[] {
  const m = Math.max(...z);
  const lse = m + Math.log(z.reduce((a, x) => a + Math.exp(x - m), 0));
  return z.map((x) => x - lse);
}

/** sum_v q_v (log q_v - log p_v) and its gradient to the logits, q_j ((log q_j - log p_j) - KL), by hand */
function reverseKl64(z: number[], logp: number[]): { kl: number; grad: number[] } {
  const logq = logSoftmax64(z);
  const d = logq.map((lq, v) => lq - logp[v]!);
  const kl = logq.reduce((a, lq, v) => a + Math.exp(lq) * d[v]!, 0);
  return { kl, grad: logq.map((lq, v) => Math.exp(lq) * (d[v]! - kl)) };
}

// [B=2, R=3, V=5]: fixed numbers, so the case is the same on every run
const V = 5;
const logits = [0.3, -1.2, 2.0, 0.5, -0.4, 1.1, 0.0, -2.2, 0.7, 0.9, -0.6, 1.8, 0.2, -1.0, 0.4, 2.5, -0.3, 0.1, 0.0, -1.7, -0.8, 0.6, 1.3, -0.2, 0.05, 0.0, 0.0, 3.0, -3.0, 1.0];
const teacherRows = [[1.0, 0.2, -0.5, 2.2, 0.0], [-1.3, 0.4, 0.9, 0.1, 1.6], [0.0, 2.7, -0.9, 0.3, -0.1], [1.4, 1.4, -2.0, 0.6, 0.8], [-0.5, -0.5, 2.1, 0.0, 1.2], [0.9, -1.1, 0.3, 0.3, -2.4]].map(logSoftmax64);

test("the reverse KL per position and its gradient match a hand computation in float64", async () => {
  const z = tf.tensor3d(logits, [2, 3, V]);
  const logp = tf.tensor3d(teacherRows.flat(), [2, 3, V]);
  const [grad] = tf.grads((x: tf.Tensor) => tf.sum(reverseKlPerPosition(x, logp)))([z]);
  const kl = reverseKlPerPosition(z, logp);
  const [got, gotGrad] = [await kl.data(), await grad!.data()];
  for (let r = 0; r < 6; r++) {
    const want = reverseKl64(logits.slice(r * V, r * V + V), teacherRows[r]!);
    assert.ok(Math.abs(got[r]! - want.kl) < 1e-5, `row ${r}: ${got[r]} vs ${want.kl}`);
    assert.ok(want.kl > 0);
    want.grad.forEach((g, v) => assert.ok(Math.abs(gotGrad[r * V + v]! - g) < 1e-5, `row ${r} token ${v}: ${gotGrad[r * V + v]} vs ${g}`));
  }
  // a student that is the teacher is at the minimum: no KL, no gradient
  const same = reverseKlPerPosition(logp, logp);
  assert.ok(Math.max(...(await same.data()).map(Math.abs)) < 1e-6);
  tf.dispose([z, logp, grad!, kl, same]);
});

test("klSum's reverse KL over a padded batch: central finite differences agree, padding gets no gradient, top-K targets are refused", async () => {
  // two trajectories, 3 and 2 reply positions: the second's third row is padding
  const targets: TeacherTargets[] = [
    { kind: "full", logProbs: new Float32Array(teacherRows.slice(0, 3).flat()) },
    { kind: "full", logProbs: new Float32Array(teacherRows.slice(3, 5).flat()) },
  ];
  const batch = stackTargets(targets, [3, 2], 3, V, { kind: "full" });
  const loss = (z: number[]) => tf.tidy(() => klSum(tf.tensor3d(z, [2, 3, V]), batch, "reverse").dataSync()[0]!);
  const [grad] = tf.grads((x: tf.Tensor) => klSum(x as tf.Tensor3D, batch, "reverse"))([tf.tensor3d(logits, [2, 3, V])]);
  const g = await grad!.data();
  const h = 1e-2; // float32: a wide step, and the central difference's error is O(h^2)
  for (let i = 0; i < logits.length; i++) {
    const up = logits.map((x, j) => (j === i ? x + h : x));
    const down = logits.map((x, j) => (j === i ? x - h : x));
    const numeric = (loss(up) - loss(down)) / (2 * h);
    assert.ok(Math.abs(numeric - g[i]!) < 2e-3, `logit ${i}: autodiff ${g[i]} vs finite difference ${numeric}`);
  }
  assert.ok(g.slice(5 * V).every((x) => x === 0), "the padded position gets no gradient");
  const hand = [0, 1, 2, 3, 4].reduce((a, r) => a + reverseKl64(logits.slice(r * V, r * V + V), teacherRows[r]!).kl, 0);
  assert.ok(Math.abs(loss(logits) - hand) < 1e-5);
  disposeTargets(batch);
  grad!.dispose();

  const topk = stackTargets([{ kind: "topk", indices: new Int32Array([0, 1]), logProbs: new Float32Array([-1, -1]), tailLogProb: new Float32Array([-1]) }], [1], 1, V, { kind: "topk", k: 2 });
  assert.throws(() => klSum(tf.zeros([1, 1, V]) as tf.Tensor3D, topk, "reverse"), /needs the teacher's full distribution/);
  disposeTargets(topk);
});

test("the objective is forward or on-policy, and on-policy refuses top-K targets: in bake(), the agent config and kiln bake", async () => {
  assert.equal(bakeSettingsProblem({}), null);
  assert.equal(bakeSettingsProblem({ objective: "on-policy", kl: { kind: "full" } }), null);
  assert.equal(bakeSettingsProblem({ objective: "forward", kl: { kind: "topk", k: 20 } }), null);
  assert.match(bakeSettingsProblem({ objective: "reverse" as BakeSettings["objective"] })!, /objective must be one of forward, on-policy, not "reverse"/);
  assert.match(bakeSettingsProblem({ objective: "on-policy", kl: { kind: "topk", k: 20 } })!, /on-policy objective needs kl: full/);
  const model = loadModel(fixtureDir("llama"));
  await assert.rejects(bake({ model, prompt: "x", questions: ["hi"], settings: { objective: "on-policy", kl: { kind: "topk", k: 4 } } }), /on-policy objective needs kl: full/);
  model.dispose();

  const agent = (settings: unknown) => () => parseAgentConfig({ name: "a", bake: { settings } }, "a.yaml", "/tmp", "/tmp/checkpoints");
  assert.equal(agent({ objective: "on-policy" })().bake.settings.objective, "on-policy");
  assert.throws(agent({ objective: "backward" }), (e: Error) => e instanceof AgentConfigError && /bake\.settings\.objective/.test(e.message));
  assert.throws(agent({ objective: "on-policy", kl: { kind: "topk", k: 20 } }), (e: Error) => e instanceof AgentConfigError && /bake\.settings: the on-policy objective needs kl: full/.test(e.message));
});

test("an on-policy bake samples from the student, lowers its reverse KL, and the unprompted model then does what the prompted one did", async () => {
  const model = loadModel(fixtureDir("llama"));
  const PROMPT = "the answer is always the world";
  const QUESTIONS = ["hello there", "what is the weather", "tell me a story", "who are you"];
  const greedy = async (conversations: ChatMessage[][], adapter?: LoraAdapter) =>
    (await generate(model, conversations.map((c) => model.tokenizer.applyChatTemplate(c)), { maxTokens: 8, temperature: 0, adapter })).map((r) => r.tokens.join(","));
  const prompted = await greedy(QUESTIONS.map((q) => teacherMessages(PROMPT, q)));
  const unprompted = await greedy(QUESTIONS.map((q) => studentMessages(q)));
  assert.notDeepEqual(prompted, unprompted, "the prompt must change behaviour for the test to mean anything");

  // the student writes the replies from its own view of the turn, the prompt left out
  const lessons = [{ systemPrompt: PROMPT, questions: QUESTIONS }];
  const fromStudent = await sampleTrajectories(model, { lessons, count: 4, temperature: 0, maxReplyTokens: 8, batchSize: 4, seed: 1, sampleFrom: { student: undefined } });
  assert.deepEqual(fromStudent.map((t) => t.reply.slice(0, 8).join(",")), unprompted);
  assert.deepEqual(fromStudent[0]!.teacherPrompt, model.tokenizer.applyChatTemplate(teacherMessages(PROMPT, QUESTIONS[0]!)));

  const settings: Partial<BakeSettings> = {
    objective: "on-policy",
    trajectories: 32,
    maxReplyTokens: 12,
    epochs: 12,
    patience: 12,
    learningRate: 1e-2,
    temperature: 0.7,
    lora: { r: 8, alpha: 16, dropout: 0, useRslora: false, targetModules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] },
  };
  const phases: string[] = [];
  const report = await bake({ model, prompt: PROMPT, questions: QUESTIONS, settings, onProgress: (p) => phases.push(p.phase) });
  // the student's replies are sampled again every epoch: a sample phase follows each validation but the last
  const resampled = phases.filter((p, i) => p === "sample" && phases[i - 1] === "validate").length;
  assert.equal(resampled, report.history.length);
  const reverse = report.history.map((h) => h.trainKlPerToken);
  // (epoch 1's is an average over its steps, already learning: 0.059 -> 0.012-0.016 in the last three when written)
  assert.ok(Math.max(...reverse.slice(-3)) < 0.4 * reverse[0]!, `reverse KL per token on the student's replies ${reverse.join(", ")}`);
  // validation is the forward KL on the teacher's replies, as for a forward bake
  assert.ok(report.initialValKl / report.bestValKl >= 5, `validation KL per token ${report.initialValKl} -> ${report.bestValKl}`);
  assert.deepEqual(await greedy(QUESTIONS.map((q) => studentMessages(q)), report.adapter), prompted);
  report.adapter.dispose();
  model.dispose();
});
