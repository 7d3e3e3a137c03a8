// The prefix cache: a later turn of a chat continues from the KV cache the previous reply ended
// with. Replies must be the same tokens as with a full prefill, only the weights that computed a
// cache may reuse it, and what is kept stays within its budget.
import { test } from "node:test";
import assert from "node:assert/strict";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { initBackend, tf } from "../src/tensor/backend.js";
import { loadModel, type LoadedModel } from "../src/model/load.js";
import { generate, streamGenerate } from "../src/model/generate.js";
import { Decoder } from "../src/model/decoder.js";
import { KVCache } from "../src/model/kv-cache.js";
import { KEPT_SLACK, MAX_ENTRIES, PrefixStore } from "../src/model/prefix-cache.js";
import { LoraAdapter } from "../src/lora/adapter.js";
import { saveAdapter } from "../src/lora/peft.js";
import { LiveModel } from "../src/runtime/live.js";
import { Runtime } from "../src/runtime/runtime.js";
import type { ChatMessage } from "../src/model/tokenizer.js";
import { fixtureDir } from "./support/paths.js";
import { writeTestAgent } from "./support/agent.js";

await initBackend();
const llama = loadModel(fixtureDir("llama"));

/** A reply to `prompt` on the lease's weights, handing its cache back to the live model. */
async function reply(live: LiveModel, model: LoadedModel, prompt: number[], maxTokens = 10): Promise<{ tokens: number[]; reused: number }> {
  const lease = live.acquire();
  const prefix = lease.prefix(prompt);
  const [r] = await generate(model, [prompt], { maxTokens, temperature: 0, adapter: lease.adapter, prefix, onCache: lease.keep });
  lease.release();
  return { tokens: r!.tokens, reused: prefix?.length ?? 0 };
}

async function fullPrefill(model: LoadedModel, prompt: number[], adapter?: LoraAdapter, maxTokens = 10): Promise<number[]> {
  const [r] = await generate(model, [prompt], { maxTokens, temperature: 0, adapter });
  return r!.tokens;
}

function turns(model: LoadedModel, n: number): number[][] {
  // each turn's prompt is the previous conversation, its reply and a new question
  const messages: ChatMessage[] = [{ role: "user", content: "the quick brown fox jumps over the lazy dog" }];
  const out: number[][] = [];
  for (let k = 0; k < n; k++) {
    out.push(model.tokenizer.applyChatTemplate(messages));
    messages.push({ role: "assistant", content: `reply ${k}` }, { role: "user", content: `and then question number ${k + 2}?` });
  }
  return out;
}

test("a later turn continues from the kept cache and gives the tokens a full prefill gives; the tensors go with the live model", async () => {
  const before = tf.memory().numTensors;
  const live = new LiveModel(llama);
  const prompts = turns(llama, 3);
  for (const [k, prompt] of prompts.entries()) {
    const got = await reply(live, llama, prompt);
    assert.deepEqual(got.tokens, await fullPrefill(llama, prompt), `turn ${k + 1}`);
    if (k > 0) assert.ok(got.reused >= prompts[k - 1]!.length, `turn ${k + 1} reused ${got.reused} of ${prompt.length} tokens`);
  }
  assert.deepEqual([live.prefixStats.hits, live.prefixStats.misses], [2, 1]);
  assert.ok(live.prefixCacheHeld > 0);
  assert.equal(live.prefixCacheTensors, 2 * llama.config.numLayers * live.prefixCacheEntries, "keys and values per layer per conversation kept");
  live.dispose();
  assert.equal(tf.memory().numTensors, before, "no kept cache outlives the live model");
});

test("a conversation that shares only a start copies that part and leaves the other conversation's cache whole", async () => {
  const live = new LiveModel(llama);
  const [first] = turns(llama, 1);
  await reply(live, llama, first!, 6);
  const other = [...first!.slice(0, 20), ...llama.tokenizer.encode(" a different ending altogether")];
  const got = await reply(live, llama, other, 6);
  assert.equal(got.reused, 20);
  assert.deepEqual(got.tokens, await fullPrefill(llama, other, undefined, 6));
  // the first conversation's next turn still finds all of its own cache
  const again = await reply(live, llama, [...first!, 5, 6, 7], 6);
  assert.equal(again.reused, first!.length, "all of its prompt (its reply was not sent back)");
  live.dispose();
});

test("a swap drops the old weights' caches: the new version never continues from keys the old one computed", async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-prefix-"));
  try {
    const a = LoraAdapter.create(llama.config, { r: 4, alpha: 8, dropout: 0, useRslora: false, targetModules: ["q_proj", "k_proj", "v_proj"] }, llama.fingerprint, 3);
    for (const { B } of a.modules.values()) B.assign(tf.randomNormal(B.shape, 0, 0.5, "float32", 7));
    await saveAdapter(path.join(dir, "v0001"), a, llama.dir);
    a.dispose();
    const live = new LiveModel(llama);
    const [first, second] = turns(llama, 2);
    await reply(live, llama, first!);
    live.swapTo("v0001", path.join(dir, "v0001"));
    assert.equal(live.prefixCacheHeld, 0);
    const got = await reply(live, llama, second!);
    assert.equal(got.reused, 0, "nothing kept from the base model's turn");
    const lease = live.acquire();
    assert.deepEqual(got.tokens, await fullPrefill(llama, second!, lease.adapter));
    lease.release();
    // a reply pinned to the old version that ends after the swap does not leave its cache behind
    const old = new LiveModel(llama);
    const pinned = old.acquire();
    old.swapTo("v0001", path.join(dir, "v0001"));
    const [r] = await generate(llama, [first!], { maxTokens: 4, temperature: 0, onCache: pinned.keep });
    pinned.release();
    assert.ok(r);
    assert.equal(old.prefixCacheHeld, 0);
    old.dispose();
    live.dispose();
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("kept caches stay within the budget, least recently used dropped first; 0 keeps none", async () => {
  const live = new LiveModel(llama);
  const prompts = ["one two three four five six", "seven eight nine ten eleven", "twelve thirteen fourteen fifteen"].map((t) => llama.tokenizer.applyChatTemplate([{ role: "user", content: t }]));
  await reply(live, llama, prompts[0]!);
  const one = live.prefixCacheHeld;
  live.prefixCacheBytes = Math.floor(one * 2.5);
  for (const p of prompts.slice(1)) await reply(live, llama, p);
  assert.ok(live.prefixCacheHeld <= live.prefixCacheBytes, `${live.prefixCacheHeld} > ${live.prefixCacheBytes}`);
  assert.equal((await reply(live, llama, [...prompts[0]!, 9])).reused, 0, "the oldest was dropped");
  assert.ok((await reply(live, llama, [...prompts[2]!, 9])).reused > 0, "the newest was kept");
  live.prefixCacheBytes = 0;
  assert.equal(live.prefixCacheHeld, 0);
  assert.equal((await reply(live, llama, [...prompts[2]!, 9, 9])).reused, 0);
  assert.throws(() => (live.prefixCacheBytes = -1), /0 or more bytes/);
  // however small the caches, at most MAX_ENTRIES conversations are kept
  live.prefixCacheBytes = 2 ** 30;
  for (let k = 0; k < MAX_ENTRIES + 3; k++) await reply(live, llama, [...prompts[0]!, 100 + k, 7], 1);
  assert.equal(live.prefixCacheEntries, MAX_ENTRIES);
  live.dispose();
});

test("sliding-window layers: a cache is reused, whole or cut back within its slack, where its kept keys cover the window, and refused where they were let go", async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-prefix-window-"));
  try {
    cpSync(fixtureDir("mistral"), dir, { recursive: true });
    const config = JSON.parse(readFileSync(path.join(dir, "config.json"), "utf8"));
    writeFileSync(path.join(dir, "config.json"), JSON.stringify({ ...config, sliding_window: 8 }));
    const mistral = loadModel(dir);
    try {
      const live = new LiveModel(mistral);
      // longer than the window and the slack a kept cache holds past it, so slots are let go
      const first = mistral.tokenizer.applyChatTemplate([{ role: "user", content: "the quick brown fox jumps over the lazy dog ".repeat(3) }]);
      const { tokens: answer } = await reply(live, mistral, first);
      const kept = first.length + answer.length - 1; // the last token was sampled, not fed
      assert.ok(kept > 8 + KEPT_SLACK + 20, `${kept} tokens: slots were let go`);
      // the reply sent back as generated: the whole entry continues
      const second = [...first, ...answer, 3, 4];
      const got = await reply(live, mistral, second);
      assert.equal(got.reused, kept);
      assert.deepEqual(got.tokens, await fullPrefill(mistral, second));
      // the next reply sent back trimmed (its last tokens, two others in their place): the window
      // layers still hold what a query at the cut sees, so it continues from all they share
      const third = [...second, ...got.tokens.slice(0, -3), 5, 6];
      const lcp = shared([...second, ...got.tokens.slice(0, -1)], third);
      assert.ok(lcp < second.length + got.tokens.length - 1, "the cut is inside the kept reply");
      const cut = await reply(live, mistral, third);
      assert.equal(cut.reused, lcp);
      assert.deepEqual(cut.tokens, await fullPrefill(mistral, third));
      // a start shorter than what the window layers still hold cannot be continued: prefilled again
      const branch = [...third.slice(0, 20), 3, 4, 5];
      const misses = live.prefixStats.misses;
      const again = await reply(live, mistral, branch);
      assert.equal(again.reused, 0);
      assert.equal(live.prefixStats.misses, misses + 1);
      assert.deepEqual(again.tokens, await fullPrefill(mistral, branch));
      live.dispose();
      // KVCache.prefix directly: slots 0..n-8 of a window-8 layer are gone after n tokens
      const cache = new KVCache(1);
      tf.tidy(() => {
        mistral.decoder.forward({ ids: [second.slice(0, 30)] }, { cache });
      });
      cache.compact(mistral.config.slidingWindows);
      const held = (c: KVCache) => Array.from({ length: c.layers }, (_, l) => c.held(l));
      assert.deepEqual(held(cache), [7, 7]);
      assert.equal(cache.prefix(20, mistral.config.slidingWindows), undefined, "slot 13 is needed and gone");
      const whole = cache.prefix(30, mistral.config.slidingWindows)!;
      assert.deepEqual(held(whole), [7, 7]);
      whole.dispose();
      cache.dispose();
      // with slack, 4 more slots are kept: a cut back to slot 26 can go on (it sees 19..25), to 25 not
      const slack = new KVCache(1);
      slack.slack = 4;
      tf.tidy(() => {
        mistral.decoder.forward({ ids: [second.slice(0, 30)] }, { cache: slack });
      });
      slack.compact(mistral.config.slidingWindows);
      assert.deepEqual(held(slack), [11, 11]);
      assert.equal(slack.truncate(25, mistral.config.slidingWindows), false);
      assert.equal(slack.truncate(26, mistral.config.slidingWindows), true);
      assert.deepEqual(held(slack), [7, 7]);
      slack.dispose();
    } finally {
      mistral.dispose();
    }
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("through the runtime: a chat's second turn continues from the first and answers as a full prefill does", async () => {
  // two agents alike (one ledger has one writer): one keeps caches, one prefills every turn whole
  const [a, b] = [writeTestAgent({ capture: "off" }), writeTestAgent({ capture: "off" })];
  const on = await Runtime.fromFiles(a.file);
  const off = await Runtime.fromFiles(b.file, { prefixCacheBytes: 0 });
  try {
    const ask = async (runtime: Runtime, messages: ChatMessage[]) => {
      const it = runtime.chat("tester", { messages, options: { maxTokens: 8, temperature: 0 } });
      for (;;) {
        const r = await it.next();
        if (r.done) return r.value.result.text;
      }
    };
    const first: ChatMessage[] = [{ role: "user", content: "Where does the ferry go?" }];
    const a1 = await ask(on, first);
    assert.equal(a1, await ask(off, first));
    const second: ChatMessage[] = [...first, { role: "assistant", content: a1 }, { role: "user", content: "And when?" }];
    assert.equal(await ask(on, second), await ask(off, second));
    const live = on.agent("tester").live;
    assert.equal(live.prefixStats.hits, 1);
    assert.ok(live.prefixStats.reusedTokens > 0);
    assert.deepEqual([off.agent("tester").live.prefixStats.hits, off.agent("tester").live.prefixCacheHeld], [0, 0]);
  } finally {
    await on.stop();
    await off.stop();
    for (const { dir } of [a, b]) rmSync(dir, { recursive: true });
  }
});

test("a reply that ends after its live model was disposed (a runtime stopped with a stream in flight) does not keep its cache", async () => {
  const before = tf.memory().numTensors;
  const live = new LiveModel(llama);
  const [first] = turns(llama, 1);
  const lease = live.acquire();
  const it = streamGenerate(llama, [first!], { maxTokens: 6, temperature: 0, onCache: lease.keep });
  assert.equal((await it.next()).done, false, "the prompt is prefilled and the reply goes on: the cache holds tensors");
  live.dispose();
  await it.return([]); // the consumer goes away: the cache is handed to the lease
  lease.release();
  assert.equal(live.prefixCacheHeld, 0);
  assert.equal(tf.memory().numTensors, before, "no cache kept by a disposed live model");
});

/** Makes the model write `script` and then end its turn (every other token masked), so the reply's ending is known. */
function writes(model: LoadedModel, script: number[]) {
  return (logits: Float32Array, tokens: readonly number[]) => {
    logits.fill(-Infinity);
    logits[tokens.length < script.length ? script[tokens.length]! : model.eosTokenIds[0]!] = 0;
  };
}

/** How many leading tokens `a` and `b` share. */
function shared(a: readonly number[], b: readonly number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

/**
 * Turn 1 writes `script` (cut by `stopStrings`, if given) and keeps its cache; turn 2's prompt is
 * `next(reply text)`. Returns what turn 2 reused, the longest start the kept cache and turn 2's
 * prompt share, and turn 1's prompt and kept tokens.
 */
async function trimmedTurns(model: LoadedModel, script: string, next: (text: string) => number[], stopStrings: string[] = []) {
  const live = new LiveModel(model);
  const first = model.tokenizer.applyChatTemplate([{ role: "user", content: "the quick brown fox jumps over the lazy dog" }]);
  let kept: number[] = [];
  const lease = live.acquire();
  const [r] = await generate(model, [first], {
    maxTokens: 40,
    temperature: 0,
    stopStrings,
    constrain: writes(model, model.tokenizer.encode(script)),
    onCache: (cache, tokens, prompt) => {
      kept = [...tokens];
      lease.keep(cache, tokens, prompt);
    },
  });
  lease.release();
  const second = next(r!.text);
  return { live, first, kept, second, text: r!.text, lcp: shared(kept, second), got: await reply(live, model, second) };
}

test("a reply cut by a stop sequence: the next turn continues from all it shares with the kept cache, cut in place, not kept twice", async () => {
  const before = tf.memory().numTensors;
  // " User:" spans several tokens: the cache holds " User" past the cut (":" ended the reply unfed)
  const { live, first, kept, second, text, lcp, got } = await trimmedTurns(
    llama,
    "The fox ran home. User: next",
    (text) => llama.tokenizer.applyChatTemplate([{ role: "user", content: "the quick brown fox jumps over the lazy dog" }, { role: "assistant", content: text }, { role: "user", content: "and then?" }]),
    ["User:"],
  );
  assert.equal(text, "The fox ran home. ");
  assert.ok(lcp > first.length && lcp < kept.length, `the shared start (${lcp}) ends inside the reply (${first.length}..${kept.length})`);
  assert.equal(got.reused, lcp, "all of the shared start is reused");
  assert.deepEqual(got.tokens, await fullPrefill(llama, second));
  // the first turn's entry was handed over cut, not copied: one conversation, one entry
  assert.equal(live.prefixCacheEntries, 1);
  assert.equal(live.prefixCacheTensors, 2 * llama.config.numLayers);
  live.dispose();
  assert.equal(tf.memory().numTensors, before, "no tensor of the cut cache is left behind");
});

test("a reply whose end the chat template renders differently (trimmed before its end-of-turn): the shared start is continued, not copied", async () => {
  const before = tf.memory().numTensors;
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-prefix-trim-"));
  try {
    cpSync(fixtureDir("llama"), dir, { recursive: true });
    // as Llama 3's template does: the content is trimmed before the end-of-turn is written
    writeFileSync(
      path.join(dir, "chat_template.jinja"),
      "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] | trim) + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    );
    const model = loadModel(dir);
    try {
      // the model ends its turn after a newline: the cache holds the newline, the next prompt has <|im_end|> there
      const { live, first, kept, second, text, lcp, got } = await trimmedTurns(model, "The fox ran home.\n", (text) =>
        model.tokenizer.applyChatTemplate([{ role: "user", content: "the quick brown fox jumps over the lazy dog" }, { role: "assistant", content: text }, { role: "user", content: "and then?" }]),
      );
      assert.equal(text, "The fox ran home.\n");
      assert.equal(lcp, kept.length - 1, "all but the newline");
      assert.ok(lcp > first.length);
      assert.equal(got.reused, lcp);
      assert.deepEqual(got.tokens, await fullPrefill(model, second));
      assert.equal(live.prefixCacheEntries, 1);
      live.dispose();
    } finally {
      model.dispose();
    }
    assert.equal(tf.memory().numTensors, before);
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("asking the same prompt again, or another chat sharing only a start, still copies: the entry stays whole for its own next turn", async () => {
  const live = new LiveModel(llama);
  const [first] = turns(llama, 1);
  const { tokens: answer } = await reply(live, llama, first!, 6);
  // the same prompt again (a regenerated, shorter reply) shares less than the prompt: copied
  const again = await reply(live, llama, first!, 2);
  assert.equal(again.reused, first!.length - 1);
  assert.equal(live.prefixCacheEntries, 2, "the first entry is still kept beside the regenerated one's");
  // the first conversation's next turn, with the reply sent back as generated, finds all of it
  const next = [...first!, ...answer, 7, 8];
  assert.ok((await reply(live, llama, next, 2)).reused >= first!.length + answer.length - 1);
  live.dispose();
});

/** Every layer's held keys and values, as arrays. */
function slotsOf(cache: KVCache): Float32Array[] {
  return tf.tidy(() => Array.from({ length: cache.layers }, (_, l) => cache.layer(l)).flatMap((held) => (held ? [held.keys.dataSync() as Float32Array, held.values.dataSync() as Float32Array] : [])));
}

test("KVCache.truncate cuts in place to what prefix copies, frees the rest, and refuses where a sliding layer let go of a slot", () => {
  const before = tf.memory().numTensors;
  const windows = llama.config.slidingWindows;
  const ids = turns(llama, 1)[0]!.slice(0, 30);
  const cache = new KVCache(1);
  tf.tidy(() => {
    llama.decoder.forward({ ids: [ids] }, { cache });
  });
  const copy = cache.prefix(20, windows)!;
  const held = tf.memory().numTensors;
  assert.equal(cache.truncate(20, windows), true);
  assert.equal(tf.memory().numTensors, held, "the cut layers replace the old ones (or keep their storage)");
  assert.equal(cache.length, 20);
  assert.deepEqual(slotsOf(cache), slotsOf(copy));
  assert.equal(cache.truncate(21, windows), false, "no longer than it is");
  // continued past the cut, in place where the backend allows: the copy taken before is untouched
  const copied = slotsOf(copy);
  tf.tidy(() => {
    llama.decoder.forward({ ids: [ids.slice(20, 25).reverse()] }, { cache });
  });
  assert.deepEqual(slotsOf(copy), copied);
  copy.dispose();
  cache.dispose();
  // window-4 layers (the fixture's weights under another config) need the last 3 slots: a query
  // at slot n needs slot n - 3, so once a layer let go of slots before `from`, nothing shorter
  // than from + 3 can go on (storage written in place lets slots go only when it is full)
  const config = { ...llama.config, slidingWindows: llama.config.slidingWindows.map(() => 4) };
  const windowed = new Decoder(config, llama.decoder.weights);
  const slid = new KVCache(1);
  tf.tidy(() => {
    windowed.forward({ ids: [ids] }, { cache: slid });
  });
  for (let t = 0; Math.min(...slid.dropped) === 0 && t < 500; t++) {
    tf.tidy(() => {
      windowed.forward({ ids: [[ids[t % ids.length]!]] }, { cache: slid });
    });
  }
  const from = Math.max(...slid.dropped);
  assert.ok(from > 0 && Math.min(...slid.dropped) === from, `every layer let go of the same slots (${slid.dropped})`);
  const bytes = slid.bytes;
  for (let t = 0; t < 200; t++) {
    tf.tidy(() => {
      windowed.forward({ ids: [[ids[t % ids.length]!]] }, { cache: slid });
    });
  }
  assert.equal(slid.bytes, bytes, "a sliding layer's memory stops growing");
  assert.equal(Math.max(...slid.dropped) > from, true);
  const length = slid.length;
  const gone = Math.max(...slid.dropped);
  const kept = tf.memory().numTensors;
  assert.equal(slid.truncate(gone + 2, config.slidingWindows), false);
  assert.equal(slid.length, length, "refused: unchanged");
  assert.equal(tf.memory().numTensors, kept);
  assert.equal(slid.truncate(length, config.slidingWindows), true, "all of it: nothing to cut");
  assert.equal(slid.truncate(gone + 3, config.slidingWindows), true);
  slid.dispose();
  assert.equal(tf.memory().numTensors, before);
});

test("through the runtime on kiln-mini: a reply sent back without its leading space is rendered with it again, so the next turn continues from the whole conversation", async () => {
  // kiln-mini opens its replies with " I"; kiln sends them back trimmed, and its template puts the
  // space back: the next prompt starts with the previous prompt and the reply's very tokens
  const [a, b] = [writeTestAgent({ capture: "off", model: "default" }), writeTestAgent({ capture: "off", model: "default" })];
  const on = await Runtime.fromFiles(a.file);
  const off = await Runtime.fromFiles(b.file, { prefixCacheBytes: 0 });
  try {
    const ask = async (runtime: Runtime, messages: ChatMessage[]) => {
      const it = runtime.chat("tester", { messages, options: { maxTokens: 16, temperature: 0 } });
      for (;;) {
        const r = await it.next();
        if (r.done) return r.value.result;
      }
    };
    const model = on.agent("tester").model;
    const live = on.agent("tester").live;
    const messages: ChatMessage[] = [{ role: "user", content: "Where does the ferry go and when does it leave?" }];
    let previous = 0;
    for (const question of ["And who runs it these days?", "What else happened in the town last week?"]) {
      const r = await ask(on, messages);
      assert.equal(r.text, (await ask(off, messages)).text);
      assert.notEqual(model.tokenizer.decode(r.tokens.slice(0, 1)), model.tokenizer.decode(model.tokenizer.encode(r.text).slice(0, 1)), "the first token was trimmed");
      const prompt = model.tokenizer.applyChatTemplate(messages);
      // what the cache holds: the prompt and every reply token fed back (the last one is not when the reply ran out of tokens)
      const held = [...prompt, ...r.tokens.slice(0, r.finishReason === "length" ? -1 : undefined)];
      messages.push({ role: "assistant", content: r.text }, { role: "user", content: question });
      assert.deepEqual(model.tokenizer.applyChatTemplate(messages).slice(0, held.length), held, "the next prompt holds the reply's tokens");
      previous = held.length;
    }
    const reused = live.prefixStats.reusedTokens;
    const last = await ask(on, messages);
    assert.equal(last.text, (await ask(off, messages)).text);
    assert.equal(live.prefixStats.reusedTokens - reused, previous, "the previous turn's prompt and reply");
    assert.equal(live.prefixCacheEntries, 1, "each turn's entry was handed on, not kept beside a copy");
  } finally {
    await on.stop();
    await off.stop();
    for (const { dir } of [a, b]) rmSync(dir, { recursive: true });
  }
});

test("an entry holding less than its prompt (a reply aborted before its first forward) is handed over whole when reused whole, not copied", async () => {
  const before = tf.memory().numTensors;
  const stats = { hits: 0, misses: 0, reusedTokens: 0 };
  const store = new PrefixStore(llama.config.slidingWindows, () => 2 ** 30, stats);
  const ids = turns(llama, 1)[0]!.slice(0, 30);
  const cache = new KVCache(1);
  tf.tidy(() => {
    llama.decoder.forward({ ids: [ids.slice(0, 20)] }, { cache });
  });
  // as generate hands it back: the 20 tokens a prefix hit held, of a 30-token prompt
  store.put(cache, ids.slice(0, 20), 30);
  const held = tf.memory().numTensors;
  const got = store.take(ids)!;
  assert.equal(got.length, 20);
  assert.equal(got.cache, cache, "the entry itself, as any entry reused whole");
  assert.equal(store.size, 0);
  assert.equal(tf.memory().numTensors, held, "nothing copied");
  got.cache.dispose();
  store.dispose();
  assert.equal(tf.memory().numTensors, before);
});
