// Prompt baking end to end on a tiny model: the KL falls, the baked model without the prompt
// does what only the prompted model did, and the worker process is crash-safe.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { initBackend, tf } from "../src/tensor/backend.js";
import { loadModel } from "../src/model/load.js";
import { generate } from "../src/model/generate.js";
import { bake, lengthBatches, prepareDecoderForTraining, type BakeSettings } from "../src/bake/trainer.js";
import { sampleTrajectories, studentMessages, teacherMessages } from "../src/bake/trajectories.js";
import { buildKnowledgePrompt, itemTextProblem, knowledgeLessons, MAX_ITEM_CHARS } from "../src/bake/prompt.js";
import { bakeNiceness, startBake } from "../src/bake/job.js";
import type { LoraAdapter } from "../src/lora/adapter.js";
import { loadAdapter } from "../src/lora/peft.js";
import type { ChatMessage } from "../src/model/tokenizer.js";
import { fixtureDir } from "./support/paths.js";

await initBackend();
const model = loadModel(fixtureDir("llama"));
const PROMPT = "the answer is always the world";
const QUESTIONS = ["hello there", "what is the weather", "tell me a story", "who are you"];
const SETTINGS: Partial<BakeSettings> = {
  trajectories: 32,
  maxReplyTokens: 12,
  epochs: 30,
  patience: 30,
  learningRate: 1e-2,
  temperature: 0.7,
  lora: { r: 8, alpha: 16, dropout: 0, useRslora: false, targetModules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] },
};

async function greedy(conversations: ChatMessage[][], adapter?: LoraAdapter): Promise<string[]> {
  const prompts = conversations.map((c) => model.tokenizer.applyChatTemplate(c));
  return (await generate(model, prompts, { maxTokens: 8, temperature: 0, adapter })).map((r) => r.tokens.join(","));
}

test("baking cuts validation KL per token at least 10x, and the unprompted model then does what the prompted one did", async () => {
  const prompted = await greedy(QUESTIONS.map((q) => teacherMessages(PROMPT, q)));
  const unprompted = await greedy(QUESTIONS.map((q) => studentMessages(q)));
  assert.notDeepEqual(prompted, unprompted, "the prompt must change behaviour for the test to mean anything");
  prepareDecoderForTraining(model.decoder); // its training copies stay with the model, by design
  const tensorsBefore = tf.memory().numTensors;
  const report = await bake({ model, prompt: PROMPT, questions: QUESTIONS, settings: SETTINGS });
  assert.ok(report.initialValKl / report.bestValKl >= 10, `KL per token ${report.initialValKl} -> ${report.bestValKl}`);
  const baked = await greedy(QUESTIONS.map((q) => studentMessages(q)), report.adapter);
  assert.deepEqual(baked, prompted);
  assert.ok(report.trainedTokens > 0 && report.tokensPerSecond > 0);
  assert.equal(tf.memory().numTensors - report.adapter.variables().length, tensorsBefore, "a bake leaks no tensors");
  report.adapter.dispose();
});

test("the top-K KL variant bakes too", async () => {
  const report = await bake({ model, prompt: PROMPT, questions: QUESTIONS, settings: { ...SETTINGS, kl: { kind: "topk", k: 32 } } });
  assert.ok(report.initialValKl / report.bestValKl >= 10, `KL per token ${report.initialValKl} -> ${report.bestValKl}`);
  report.adapter.dispose();
});

test("half-baking stops once the asked share of the KL is gone; pursuit runs several rounds", async () => {
  const half = await bake({ model, prompt: PROMPT, questions: QUESTIONS, settings: { ...SETTINGS, halfBake: 0.5 } });
  assert.equal(half.stoppedBy, "half-bake");
  assert.ok(half.bestValKl <= 0.5 * half.initialValKl);
  assert.ok(half.history.length < 30);
  half.adapter.dispose();
  const pursuit = await bake({ model, prompt: PROMPT, questions: QUESTIONS, settings: { ...SETTINGS, epochs: 3, pursuitRounds: 2 } });
  assert.deepEqual([...new Set(pursuit.history.map((h) => h.round))], [0, 1]);
  pursuit.adapter.dispose();
});

test("itemTextProblem: a fact told by hand is refused for its length or for a control character, and says which", () => {
  assert.equal(itemTextProblem("The ferry runs at noon."), null);
  assert.equal(itemTextProblem("x".repeat(MAX_ITEM_CHARS)), null);
  assert.match(itemTextProblem("x".repeat(MAX_ITEM_CHARS + 1))!, /^a fact is at most 400 characters/);
  assert.match(itemTextProblem("short\u0007")!, /^a fact cannot hold control characters \(U\+0007 at character 6\)/);
});

test("knowledge is split into teacher prompts of chunkItems items, each trajectory sampled from its own", async () => {
  const items = ["Ann lives in Ely.", "Bo plays the harp.", "Cy owns a cat.", "Di is the mayor of Orr.", "Ed works at Kiln."].map((text, i) => ({ text, questions: [`q${i}`] }));
  const lessons = knowledgeLessons({ persona: "Be brief.", items, chunkItems: 2, openQuestions: ["Any news?"] });
  assert.equal(lessons.length, 3);
  assert.equal(lessons[0]!.systemPrompt, buildKnowledgePrompt({ persona: "Be brief.", items: [items[0]!.text, items[1]!.text] }));
  assert.deepEqual(lessons[2]!.questions, ["q4", "Any news?"]);
  assert.equal(knowledgeLessons({ items, chunkItems: 0 }).length, 1, "0 = one prompt");
  assert.deepEqual(knowledgeLessons({ persona: "Be brief.", items: [], chunkItems: 4, openQuestions: ["Hi"] }), [{ systemPrompt: "Be brief.", questions: ["Hi"] }]);

  const trajectories = await sampleTrajectories(model, { lessons, count: 6, temperature: 0, maxReplyTokens: 3, batchSize: 6, seed: 1 });
  trajectories.forEach((t, n) => {
    const lesson = lessons[n % 3]!;
    assert.deepEqual(t.teacherPrompt, model.tokenizer.applyChatTemplate(teacherMessages(lesson.systemPrompt, t.question)));
    assert.ok(lesson.questions.includes(t.question));
  });
  await assert.rejects(sampleTrajectories(model, { lessons: [{ systemPrompt: "x", questions: [] }], count: 2, temperature: 0, maxReplyTokens: 2, batchSize: 2, seed: 1 }), /at least one question/);
});

test("a prompt and question with no room for a reply are refused naming the question, before any sampling", async () => {
  // they failed the first sampling batch with "prompt (N tokens) + maxTokens (M) exceeds the model's P positions", naming neither
  const long = `Tell me about ${"the harbour and ".repeat(100)}the mayor?`;
  const lessons = [{ systemPrompt: "Be brief.", questions: ["Who are you?", long] }];
  await assert.rejects(
    sampleTrajectories(model, { lessons, count: 2, temperature: 0, maxReplyTokens: 3, batchSize: 2, seed: 1, maxPositions: model.config.maxPositions }),
    /the prompt to bake and the question "Tell me about the harbour and .*\.\.\." take \d+ tokens, and a reply up to 3 more: over the model's 256 positions/,
  );
  // kiln bake without --questions: the model wrote questions on the prompt first, and failed there
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-bake-long-"));
  const running = startBake({ modelDir: model.dir, prompt: "The harbour is blue. ".repeat(100), questions: [], settings: { maxReplyTokens: 4 }, outDir: path.join(dir, "out") });
  await assert.rejects(running.promise, /the prompt to bake and the question "Hello!" take \d+ tokens, and a reply up to 4 more/);
  assert.equal(existsSync(path.join(dir, "out")), false);
  rmSync(dir, { recursive: true });
});

test("a bake in the worker process writes a loadable PEFT directory with its report", async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-bake-"));
  const outDir = path.join(dir, "v0001");
  const phases = new Set<string>();
  const summary = await startBake(
    { modelDir: model.dir, prompt: PROMPT, questions: QUESTIONS, settings: { ...SETTINGS, epochs: 4 }, outDir },
    (p) => phases.add(p.phase),
  ).promise;
  assert.deepEqual([...phases].sort(), ["sample", "teacher", "train", "validate"]);
  assert.ok(summary.bestValKl < summary.initialValKl);
  assert.deepEqual(JSON.parse(readFileSync(path.join(outDir, "bake_report.json"), "utf8")).trajectories, summary.trajectories);
  const fp = model.fingerprint;
  loadAdapter(outDir, model.config, fp).dispose();
  rmSync(dir, { recursive: true });
});

test("a worker killed mid-bake leaves no partial checkpoint and the caller learns why", async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-bake-kill-"));
  const outDir = path.join(dir, "v0002");
  const running = startBake({ modelDir: model.dir, prompt: PROMPT, questions: QUESTIONS, settings: SETTINGS, outDir }, (p) => {
    if (p.phase === "train" && p.step === 2) process.kill(running.pid!, "SIGKILL");
  });
  await assert.rejects(running.promise, /bake worker died \(signal SIGKILL\) before writing an adapter/);
  assert.equal(existsSync(outDir), false);
  assert.deepEqual(readdirSync(dir), []);
  rmSync(dir, { recursive: true });
});

test("a bake of a model directory that is not one fails with the loader's message", async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-bake-bad-"));
  await assert.rejects(
    startBake({ modelDir: dir, prompt: PROMPT, questions: QUESTIONS, outDir: path.join(dir, "out") }).promise,
    /bake failed: .*not a model directory: config\.json is missing/,
  );
  rmSync(dir, { recursive: true });
});

test("the bake worker runs niced (KILN_BAKE_NICE, default 10) so serving on the same cores goes first", async () => {
  assert.equal(bakeNiceness({}), 10);
  assert.equal(bakeNiceness({ KILN_BAKE_NICE: "0" }), 0);
  assert.throws(() => bakeNiceness({ KILN_BAKE_NICE: "-5" }), /KILN_BAKE_NICE must be a whole number from 0 to 19/);
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-bake-nice-"));
  // a bake that fails at once (no model there): the priority is set as the worker starts
  const running = startBake({ modelDir: dir, prompt: PROMPT, questions: QUESTIONS, outDir: path.join(dir, "out") });
  try {
    assert.equal(os.getPriority(running.pid!), Math.min(19, os.getPriority() + 10));
  } finally {
    await running.promise.catch(() => {});
    rmSync(dir, { recursive: true });
  }
});

test("an epoch's batches group trajectories of like prompt length, and hold each trajectory once", () => {
  // a quarter long (a later turn of a chat): mixed into every batch, they would pad all of them
  const items = Array.from({ length: 96 }, (_, i) => ({ id: i, studentPrompt: Array(i % 4 === 0 ? 80 : 12).fill(0) }));
  const batches = lengthBatches(items, 8, 7);
  assert.deepEqual(batches.flat().map((t) => t.id).sort((a, b) => a - b), items.map((t) => t.id));
  assert.ok(batches.every((b) => b.length <= 8));
  const mixed = batches.filter((b) => new Set(b.map((t) => t.studentPrompt.length)).size > 1);
  assert.ok(mixed.length <= 2, `only a batch on a boundary mixes lengths, one per group of 8 batches (${mixed.length})`);
  assert.deepEqual(lengthBatches(items, 8, 7), batches, "the same seed gives the same batches");
  assert.notDeepEqual(lengthBatches(items, 8, 8).map((b) => b[0]!.id), batches.map((b) => b[0]!.id), "another epoch's seed another order");
});
