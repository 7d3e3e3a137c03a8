// Generation behaviour: batching, determinism, stopping, streaming, abort, and no tensor leaks.
import { test } from "node:test";
import assert from "node:assert/strict";
import { initBackend, tf } from "../src/tensor/backend.js";
import { loadModel } from "../src/model/load.js";
import { generate, streamGenerate } from "../src/model/generate.js";
import { sampleToken, seededRandom } from "../src/model/sampling.js";
import { fixtureDir } from "./support/paths.js";
import { fitConversation } from "../src/runtime/runtime.js";
import type { ChatMessage } from "../src/model/tokenizer.js";

await initBackend();
const model = loadModel(fixtureDir("llama"));
const prompts = [
  model.tokenizer.encode("the quick brown fox"),
  model.tokenizer.encode("hello"),
  model.tokenizer.encode("a much longer prompt that needs no padding at all"),
];

test("a batch of prompts of different lengths gives each row what it gets alone", async () => {
  const batched = await generate(model, prompts, { maxTokens: 10, temperature: 0 });
  for (let i = 0; i < prompts.length; i++) {
    const [alone] = await generate(model, [prompts[i]!], { maxTokens: 10, temperature: 0 });
    assert.deepEqual(batched[i]!.tokens, alone!.tokens, `row ${i}`);
  }
});

test("same seed gives the same sampled text; another seed gives another", async () => {
  const opts = { maxTokens: 16, temperature: 1.5, topK: 50, topP: 0.95 };
  const a = await generate(model, prompts, { ...opts, seed: 7 });
  const b = await generate(model, prompts, { ...opts, seed: 7 });
  const c = await generate(model, prompts, { ...opts, seed: 8 });
  assert.deepEqual(a.map((r) => r.tokens), b.map((r) => r.tokens));
  assert.notDeepEqual(a.map((r) => r.tokens), c.map((r) => r.tokens));
});

test("max tokens, stop tokens and stop strings end a row with the right reason", async () => {
  const [free] = await generate(model, [prompts[0]!], { maxTokens: 12, temperature: 0 });
  assert.equal(free!.finishReason, "length");
  assert.equal(free!.tokens.length, 12);
  const stopAt = free!.tokens[4]!;
  const [byToken] = await generate(model, [prompts[0]!], { maxTokens: 12, temperature: 0, stopTokenIds: [stopAt] });
  assert.equal(byToken!.finishReason, "stop");
  assert.deepEqual(byToken!.tokens, free!.tokens.slice(0, free!.tokens.indexOf(stopAt)));
  const stopString = free!.text.slice(3, 6);
  assert.ok(stopString.length > 0);
  const [byString] = await generate(model, [prompts[0]!], { maxTokens: 12, temperature: 0, stopStrings: [stopString] });
  assert.equal(byString!.finishReason, "stop");
  assert.equal(byString!.text, free!.text.slice(0, free!.text.indexOf(stopString)));
});

test("streamed chunks concatenate to the final text, and abort stops the stream", async () => {
  const it = streamGenerate(model, [prompts[0]!], { maxTokens: 12, temperature: 0 });
  let streamed = "";
  let result;
  for (;;) {
    const r = await it.next();
    if (r.done) {
      result = r.value;
      break;
    }
    streamed += r.value.text;
  }
  assert.equal(streamed, result[0]!.text);

  const controller = new AbortController();
  const chunks: number[] = [];
  const aborted = streamGenerate(model, [prompts[0]!], { maxTokens: 50, temperature: 0, signal: controller.signal });
  for (;;) {
    const r = await aborted.next();
    if (r.done) {
      assert.equal(r.value[0]!.finishReason, "abort");
      break;
    }
    chunks.push(r.value.token);
    if (chunks.length === 3) controller.abort();
  }
  assert.equal(chunks.length, 3);
});

/** Runs a stream to its end: the chunks' text joined, and the result. */
async function streamed(prompt: number[], opts: Parameters<typeof streamGenerate>[2]) {
  const it = streamGenerate(model, [prompt], opts);
  let text = "";
  for (;;) {
    const r = await it.next();
    if (r.done) return { text, result: r.value[0]! };
    text += r.value.text;
  }
}

/**
 * Makes the real model write `script` (token ids) and then end its turn, through the constrain
 * hook: every other token is masked, so the reply's ending is known in advance.
 */
function writes(script: number[]) {
  const end = model.eosTokenIds[0]!;
  return (logits: Float32Array, tokens: readonly number[]) => {
    const next = tokens.length < script.length ? script[tokens.length]! : end;
    logits.fill(-Infinity);
    logits[next] = 0;
  };
}

test("text held back when the turn ends (a partial character, a stop string's start) is still streamed: chunks join to the final text", async () => {
  const prompt = prompts[0]!;
  // "hello wor" could still grow into the stop string "world", so "wor" is held back; then the turn ends
  const stopStart = await streamed(prompt, { maxTokens: 20, stopStrings: ["world"], constrain: writes(model.tokenizer.encode("hello wor")) });
  assert.equal(stopStart.result.finishReason, "stop");
  assert.equal(stopStart.result.text, "hello wor");
  assert.equal(stopStart.text, stopStart.result.text);
  // the first byte of "é" alone: held back as an incomplete character, then the turn ends
  const [firstByte] = model.tokenizer.encode("é");
  const partial = await streamed(prompt, { maxTokens: 20, constrain: writes([...model.tokenizer.encode("ab"), firstByte!]) });
  assert.equal(partial.result.text, "ab\uFFFD");
  assert.equal(partial.text, partial.result.text);
  // aborted while text is held back: what the result holds was streamed too
  const controller = new AbortController();
  const it = streamGenerate(model, [prompt], { maxTokens: 20, stopStrings: ["world"], signal: controller.signal, constrain: writes(model.tokenizer.encode("hello wor")) });
  let text = "";
  for (;;) {
    const r = await it.next();
    if (r.done) {
      assert.equal(r.value[0]!.finishReason, "abort");
      assert.equal(text, r.value[0]!.text);
      assert.ok(r.value[0]!.text.endsWith("wor"), r.value[0]!.text);
      break;
    }
    text += r.value.text;
    if (model.tokenizer.decode([r.value.token]) === "r") controller.abort();
  }
});

test("no tensors leak across 100 generations", async () => {
  await generate(model, prompts, { maxTokens: 2 }); // warm-up allocations
  const before = tf.memory().numTensors;
  for (let i = 0; i < 100; i++) {
    await generate(model, [prompts[i % prompts.length]!], { maxTokens: 3, temperature: 0.8, seed: i });
  }
  assert.equal(tf.memory().numTensors, before);
});

test("a prompt longer than the model's positions is refused with a clear error", async () => {
  await assert.rejects(generate(model, [Array(300).fill(1)], { maxTokens: 1 }), /exceeds the model's 256 positions/);
});

test("top-k 1 is greedy; top-p keeps only the likeliest tokens", () => {
  const logits = new Float32Array([0.1, 3, 0.2, 2.9, -1]);
  const random = seededRandom(1);
  for (let i = 0; i < 20; i++) assert.equal(sampleToken(logits, { temperature: 1, topK: 1, topP: 1 }, random), 1);
  const seen = new Set<number>();
  for (let i = 0; i < 200; i++) seen.add(sampleToken(logits, { temperature: 1, topK: 0, topP: 0.6 }, random));
  assert.deepEqual([...seen].sort(), [1, 3]);
});

test("sampling never picks a token masked to -Infinity (constrained decoding), even when rounding leaves a remainder", () => {
  // a draw just below 1: the running subtraction can end above 0 after the last possible token
  const nearlyOne = () => 1 - 2 ** -53;
  const random = seededRandom(3);
  for (let t = 0; t < 2000; t++) {
    const logits = Float32Array.from({ length: 50 }, (_, i) => (i < 10 ? random() * 3 : -Infinity));
    const token = sampleToken(logits, { temperature: 0.7 + random(), topK: 0, topP: 1 }, nearlyOne);
    assert.ok(Number.isFinite(logits[token]!), `token ${token} was masked`);
  }
});

test("a long chat is fitted to the context with renders of about what fits, keeping what dropping the oldest turns one by one keeps", () => {
  const budget = model.config.maxPositions - 8;
  /** the plain rule: drop the oldest turn that is not a system message until the rest fits; the last stays */
  const oneByOne = (messages: ChatMessage[]) => {
    let kept = [...messages];
    let ids = model.tokenizer.applyChatTemplate(kept);
    while (ids.length > budget) {
      const first = kept.findIndex((m) => m.role !== "system");
      if (first < 0 || first === kept.length - 1) break;
      kept = [...kept.slice(0, first), ...kept.slice(first + 1)];
      ids = model.tokenizer.applyChatTemplate(kept);
    }
    return ids;
  };
  const turns = (n: number, words = 1) => Array.from({ length: n }, (_, i): ChatMessage => ({ role: i % 2 ? "assistant" : "user", content: `turn ${i} `.repeat(words) }));
  const system: ChatMessage = { role: "system", content: "Be brief." };
  for (const messages of <ChatMessage[][]>[
    turns(1),
    turns(3),
    turns(40),
    [system, ...turns(40, 3)],
    [system, ...turns(10), { role: "system", content: "Answer in French." }, ...turns(25)],
    [...turns(30), system],
    [{ role: "user", content: "word ".repeat(2 * model.config.maxPositions) }],
  ]) {
    assert.deepEqual(fitConversation(model, messages, 8), oneByOne(messages), `${messages.length} messages`);
  }
  // A few KB of short turns cost a render of the whole chat per turn dropped (1,000 turns held a
  // server's event loop for 40 s); now the renders hold about what fits, a few times over.
  const render = model.tokenizer.renderChat.bind(model.tokenizer);
  let rendered = 0;
  model.tokenizer.renderChat = (messages, ...rest) => ((rendered += messages.length), render(messages, ...rest));
  try {
    const ids = fitConversation(model, turns(1000), 8);
    assert.ok(ids.length <= budget);
    assert.ok(rendered < 2000, `rendered ${rendered} messages in all to fit a 1,000-turn chat`);
  } finally {
    model.tokenizer.renderChat = render;
  }
});
