// LangChain on kiln: KilnChatModel against Runtime.chat on the tiny random model (same greedy
// text, streaming, abort, version and usage), the <tool_call> format, bindTools in both prompt
// styles, and the createAgent loop with the ledger tools and conversation memory. The random model
// cannot call tools, so a subclass scripts the first model call of a turn; everything else — the
// tools, the ledger, the final answers — is real.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { awaitAllCallbacks } from "@langchain/core/callbacks/promises";
import { AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage, type BaseMessage } from "@langchain/core/messages";
import { tool } from "langchain";
import { z } from "zod";
import { initBackend, tf } from "../src/tensor/backend.js";
import { Runtime, type ChatChunk, type ChatOutcome } from "../src/runtime/runtime.js";
import type { ChatMessage } from "../src/model/tokenizer.js";
import { generate } from "../src/model/generate.js";
import { LoraAdapter } from "../src/lora/adapter.js";
import { saveAdapter } from "../src/lora/peft.js";
import { KilnChatModel, parseToolCalls, toToolSpec, type KilnRequest } from "../src/agent/langchain.js";
import { createKilnAgent } from "../src/agent/chat-loop.js";
import { writeTestAgent } from "./support/agent.js";
import { repoRoot } from "./support/paths.js";
import { walkMask } from "./support/mask.js";
import { tokenTexts } from "../src/model/json-constraint.js";

await initBackend();

/** A Qwen2.5-style template that renders tools (the fixture's ChatML template does not). */
const TOOL_TEMPLATE = `{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}
{{- "\\n\\n# Tools\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
{%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}
{{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- for message in messages %}
{%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
{%- elif message.role == "assistant" %}
{{- '<|im_start|>' + message.role }}
{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
{%- for tool_call in message.tool_calls %}
{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
{{- '\\n<tool_call>\\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif message.role == "tool" %}
{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}
{%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}{{- '<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}`;

/**
 * A Llama-3.1-style template (on the fixture's ChatML tokens): tools listed in a system turn, a
 * call written as bare JSON with "parameters".
 */
const LLAMA_STYLE_TEMPLATE = `{%- if tools %}{{- '<|im_start|>system\nFunctions:\n' }}{%- for t in tools %}{{- t | tojson }}{{- '\n' }}{%- endfor %}{{- 'Respond with {"name": function name, "parameters": arguments}.<|im_end|>\n' }}{%- endif %}
{%- for message in messages %}
{%- if message.role == "assistant" and message.tool_calls %}
{{- '<|im_start|>assistant\n' }}{%- for call in message.tool_calls %}{{- '{"name": "' + call.function.name + '", "parameters": ' }}{{- call.function.arguments | tojson }}{{- '}' }}{%- endfor %}{{- '<|im_end|>\n' }}
{%- elif message.role == "tool" %}{{- '<|im_start|>ipython\n' + message.content + '<|im_end|>\n' }}
{%- else %}{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}`;

/** A template that writes calls as Python-like expressions, which kiln cannot prefill. */
const PYTHONIC_TEMPLATE = `{%- if tools %}{{- '<|im_start|>system\nYou may call: ' }}{%- for t in tools %}{{- t.function.name + ' ' }}{%- endfor %}{{- '<|im_end|>\n' }}{%- endif %}
{%- for message in messages %}
{%- if message.role == "assistant" and message.tool_calls %}
{{- '<|im_start|>assistant\n[' }}{%- for call in message.tool_calls %}{{- call.function.name + '(...)' }}{%- endfor %}{{- ']<|im_end|>\n' }}
{%- else %}{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}`;

/** A template in Llama 3.x's tool-calling layout (written for these tests): tools go into the first user turn, a call is bare JSON with "parameters". */
const LLAMA3_TEMPLATE = readFileSync(path.join(repoRoot(), "tests", "fixtures", "templates", "llama3-style-tools.jinja"), "utf8");

async function withRuntime(fn: (runtime: Runtime, dir: string) => Promise<void>, opts: { toolTemplate?: boolean; template?: string } = {}): Promise<void> {
  const { dir, file } = writeTestAgent();
  const template = opts.template ?? (opts.toolTemplate ? TOOL_TEMPLATE : undefined);
  if (template) writeFileSync(path.join(dir, "model", "chat_template.jinja"), template);
  const runtime = await Runtime.fromFiles(file);
  try {
    await fn(runtime, dir);
  } finally {
    await runtime.stop();
    rmSync(dir, { recursive: true });
  }
}

/** Runtime.chat run to the end: the reference the LangChain model must match. */
async function kilnChat(runtime: Runtime, messages: ChatMessage[], maxTokens: number): Promise<ChatOutcome & { chunks: string[] }> {
  const it = runtime.chat("tester", { messages, options: { maxTokens, temperature: 0 }, captureFacts: false });
  const chunks: string[] = [];
  for (;;) {
    const r = await it.next();
    if (r.done) return { ...r.value, chunks };
    if (r.value.text) chunks.push(r.value.text);
  }
}

/**
 * A KilnChatModel whose first model call of a turn can be scripted: `script` holds raw outputs
 * (they go through the real <tool_call> parsing); when it is empty the real model answers.
 * Every request is recorded, and so is how each real generation ended.
 */
class ScriptedKiln extends KilnChatModel {
  script: string[] = [];
  requests: KilnRequest[] = [];
  real: { finishReason: string; tokens: number }[] = [];

  protected override async *complete(req: KilnRequest): AsyncGenerator<ChatChunk, ChatOutcome> {
    this.requests.push(req);
    const scripted = this.script.shift();
    if (scripted === undefined) {
      const outcome = yield* super.complete(req);
      this.real.push({ finishReason: outcome.result.finishReason, tokens: outcome.result.tokens.length });
      return outcome;
    }
    const version = this.runtime.agent(this.agentName).live.version;
    for (let i = 0; i < scripted.length; i += 3) yield { text: scripted.slice(i, i + 3), token: 0, version }; // streamed in pieces
    return { result: { tokens: [], text: scripted, finishReason: "stop", promptTokens: 0 }, version, captured: [] };
  }
}

async function waitFor(cond: () => boolean, ms = 5000): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error("timed out waiting");
    await new Promise((r) => setTimeout(r, 5));
  }
}

function plainMessages(req: KilnRequest): ChatMessage[] {
  assert.equal(req.prompt.tools, undefined, "no native tools: the plain protocol");
  return req.prompt.messages;
}

const weatherTool = tool(async ({ city }: { city: string }) => `sunny in ${city}`, {
  name: "get_weather",
  description: "Weather for a city.",
  schema: z.object({ city: z.string() }),
});

// --- (a) the chat model against Runtime.chat ---

test("invoke and stream give Runtime.chat's greedy text with version, finish reason and usage", async () => {
  await withRuntime(async (runtime, dir) => {
    const messages: ChatMessage[] = [
      { role: "system", content: "Be brief." },
      { role: "user", content: "hello" },
    ];
    const lc = [new SystemMessage("Be brief."), new HumanMessage("hello")];
    const ref = await kilnChat(runtime, messages, 24);
    assert.ok(ref.result.text.length > 0 && ref.chunks.length > 1, "the reference reply must be non-empty and streamed in pieces");

    const model = new KilnChatModel({ runtime, agent: "tester", maxTokens: 24 });
    const tokens: string[] = [];
    const reply = await model.invoke(lc, { callbacks: [{ handleLLMNewToken: (t: string) => void tokens.push(t) }] });
    assert.equal(reply.content, ref.result.text);
    assert.equal(reply.response_metadata.kiln_version, "base");
    assert.ok("kiln_version" in reply.response_metadata);
    assert.equal(reply.response_metadata.finish_reason, ref.result.finishReason);
    assert.deepEqual(
      { input: reply.usage_metadata?.input_tokens, output: reply.usage_metadata?.output_tokens, total: reply.usage_metadata?.total_tokens },
      { input: ref.result.promptTokens, output: ref.result.tokens.length, total: ref.result.promptTokens + ref.result.tokens.length },
    );
    assert.deepEqual(reply.tool_calls, []);

    const streamed: string[] = [];
    let merged: AIMessageChunk | undefined;
    for await (const chunk of await model.stream(lc)) {
      if (typeof chunk.content === "string" && chunk.content) streamed.push(chunk.content);
      merged = merged ? merged.concat(chunk) : chunk;
    }
    assert.ok(streamed.length > 1, "the reply arrives in more than one chunk");
    assert.equal(streamed.join(""), ref.result.text);
    assert.equal(merged!.response_metadata.kiln_version, "base");
    assert.equal(merged!.usage_metadata?.output_tokens, ref.result.tokens.length);
    await awaitAllCallbacks(); // callbacks run in the background
    assert.equal(tokens.join(""), ref.result.text, "handleLLMNewToken saw the reply");

    // On a promoted version the reply comes from that adapter and names it.
    const agent = runtime.agent("tester");
    const settings = { r: 4, alpha: 8, dropout: 0, useRslora: false, targetModules: ["q_proj", "v_proj", "down_proj"] as ("q_proj" | "v_proj" | "down_proj")[] };
    const adapter = LoraAdapter.create(agent.model.config, settings, agent.live.fingerprint, 7);
    for (const { B } of adapter.modules.values()) B.assign(tf.randomNormal(B.shape, 0, 0.3, "float32", 700));
    await saveAdapter(path.join(dir, "v0001"), adapter, agent.model.dir);
    adapter.dispose();
    agent.live.swapTo("v0001", path.join(dir, "v0001"));
    const refV1 = await kilnChat(runtime, messages, 24);
    assert.equal(refV1.version, "v0001");
    assert.notEqual(refV1.result.text, ref.result.text, "the adapter must change the reply for this check to mean anything");
    const onV1 = await model.invoke(lc);
    assert.equal(onV1.content, refV1.result.text);
    assert.equal(onV1.response_metadata.kiln_version, "v0001");
  });
});

test("an AbortSignal stops generation for invoke and stream", async () => {
  await withRuntime(async (runtime) => {
    const ref = await kilnChat(runtime, [{ role: "user", content: "hello" }], 64);
    assert.equal(ref.result.finishReason, "length", "unaborted, the reply runs to maxTokens");

    const model = new ScriptedKiln({ runtime, agent: "tester", maxTokens: 64 });
    const ac = new AbortController();
    let seen = 0;
    await assert.rejects(
      model.invoke("hello", {
        signal: ac.signal,
        callbacks: [
          {
            handleLLMNewToken: () => {
              if (++seen === 3) ac.abort();
            },
          },
        ],
      }),
      (err: Error) => /abort/i.test(`${err.name} ${err.message}`),
    );
    await waitFor(() => model.real.length === 1);
    assert.equal(model.real[0]!.finishReason, "abort", "Runtime.chat itself stopped");
    assert.ok(model.real[0]!.tokens < 64, `stopped after ${model.real[0]!.tokens} tokens`);

    const ac2 = new AbortController();
    let chunks = 0;
    await assert.rejects(async () => {
      for await (const _ of await model.stream("hello", { signal: ac2.signal })) {
        if (++chunks === 2) ac2.abort();
      }
    }, (err: Error) => /abort/i.test(`${err.name} ${err.message}`));
    // stream() throws at once and never resumes the generator; generation still ends on its own.
    await waitFor(() => model.real.length === 2);
    assert.equal(model.real[1]!.finishReason, "abort");
    assert.ok(model.real[1]!.tokens < 64, `stopped after ${model.real[1]!.tokens} tokens`);

    // Already aborted: nothing is generated.
    const ac3 = new AbortController();
    ac3.abort();
    await assert.rejects(model.invoke("hello", { signal: ac3.signal }));
    assert.equal(model.requests.length, 2, "no generation was started");

    // A timer fires while tokens are decoded (the event loop turns between tokens), so an abort
    // or a timeout set by the caller stops generation.
    const long = await kilnChat(runtime, [{ role: "user", content: "hello" }], 400);
    assert.equal(long.result.finishReason, "length");
    const timed = new ScriptedKiln({ runtime, agent: "tester", maxTokens: 400 });
    const ac4 = new AbortController();
    setTimeout(() => ac4.abort(), 20);
    await assert.rejects(timed.invoke("hello", { signal: ac4.signal }), (err: Error) => /abort/i.test(`${err.name} ${err.message}`));
    await assert.rejects(timed.invoke("hello", { timeout: 20 }), (err: Error) => /abort|timeout/i.test(`${err.name} ${err.message}`));
    await waitFor(() => timed.real.length === 2);
    for (const r of timed.real) assert.ok(r.finishReason === "abort" && r.tokens < 400, `stopped by the timer after ${r.tokens} tokens`);
  });
});

test("content arrays: text parts are read, parts a text model cannot read are a clear error before any generation", async () => {
  await withRuntime(async (runtime) => {
    const model = new ScriptedKiln({ runtime, agent: "tester", maxTokens: 8 });
    const ref = await kilnChat(runtime, [{ role: "system", content: "Be brief." }, { role: "user", content: "hello there" }], 8);
    const parts = await model.invoke([
      new SystemMessage({ content: [{ type: "text", text: "Be brief." }] }),
      new HumanMessage({ content: [{ type: "text", text: "hello " }, { type: "text", text: "there" }] }),
    ]);
    assert.equal(parts.content, ref.result.text, "text parts read as the same text");
    assert.deepEqual(plainMessages(model.requests[0]!), [{ role: "system", content: "Be brief." }, { role: "user", content: "hello there" }]);

    // An AI turn's reasoning and tool-use parts are not text; its text part is.
    const ai = new AIMessage({ content: [{ type: "reasoning", reasoning: "hmm" }, { type: "text", text: "Hi." }] });
    await model.invoke([new HumanMessage("hello"), ai, new HumanMessage("again")]);
    assert.deepEqual(plainMessages(model.requests[1]!).map((m) => m.content), ["hello", "Hi.", "again"]);

    const unreadable: [string, BaseMessage[]][] = [
      ["image_url", [new HumanMessage({ content: [{ type: "text", text: "What is this?" }, { type: "image_url", image_url: { url: "data:image/png;base64,AAAA" } }] })]],
      ["standard image", [new HumanMessage({ content: [{ type: "image", url: "https://example.com/a.png" }] })]],
      ["audio", [new HumanMessage({ content: [{ type: "input_audio", input_audio: { data: "AAAA", format: "wav" } }] })]],
      ["image in an AI turn", [new HumanMessage("draw"), new AIMessage({ content: [{ type: "image", url: "https://example.com/a.png" }] }), new HumanMessage("again")]],
      ["image from a tool", [new HumanMessage("look"), new ToolMessage({ content: [{ type: "image", url: "https://example.com/a.png" }], tool_call_id: "c1" })]],
    ];
    for (const [what, messages] of unreadable) {
      await assert.rejects(model.invoke(messages), /content part of type "(image|audio)"; kiln's models read text only/, what);
      await assert.rejects(async () => {
        for await (const _ of await model.stream(messages));
      }, /read text only/, `${what} (stream)`);
    }
    await assert.rejects(model.invoke([]), /no messages to answer/);
    assert.equal(model.requests.length, 2, "nothing was generated for the refused inputs");
  });
});

test("streamEvents (content-block protocol): the real finish reason, kiln's metadata and tool calls", async () => {
  await withRuntime(async (runtime) => {
    const ref = await kilnChat(runtime, [{ role: "user", content: "hello" }], 12);
    assert.equal(ref.result.finishReason, "length");
    const model = new ScriptedKiln({ runtime, agent: "tester", maxTokens: 12 });
    const stream = model.streamEvents("hello");
    const kinds: string[] = [];
    for await (const e of stream) kinds.push(e.event);
    const message = await stream;
    assert.equal(kinds.at(-1), "message-finish");
    assert.equal(message.text, ref.result.text);
    assert.equal(message.response_metadata.finish_reason, "length", "a reply cut at maxTokens says so");
    assert.ok("kiln_version" in message.response_metadata && message.response_metadata.kiln_version === "base");
    assert.equal(message.response_metadata.model_name, "tester");
    assert.equal(message.usage_metadata?.output_tokens, 12);

    model.script = ['Checking.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Quillport"}}</tool_call>'];
    const called = await model.bindTools([weatherTool]).invoke("weather?"); // the binding's invoke, for comparison
    assert.equal(called.response_metadata.finish_reason, "tool_calls");
    model.script = ['Checking.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Quillport"}}</tool_call>'];
    const tools = await model.streamEvents("weather?", { tools: [toToolSpec(weatherTool)] });
    assert.equal(tools.response_metadata.finish_reason, "tool_use");
    assert.deepEqual(tools.tool_calls?.map((c) => [c.name, c.args]), [["get_weather", { city: "Quillport" }]]);
    assert.equal(tools.text, "Checking.");
  });
});

test("tracing parameters name kiln, the agent and the settings", async () => {
  await withRuntime(async (runtime) => {
    const model = new KilnChatModel({ runtime, agent: "tester", maxTokens: 24, temperature: 0.5, stop: ["###"] });
    assert.deepEqual(model.getLsParams({ stop: ["END"] } as never), {
      ls_model_type: "chat",
      ls_provider: "kiln",
      ls_model_name: "tester",
      ls_temperature: 0.5,
      ls_max_tokens: 24,
      ls_stop: ["###", "END"],
    });
    assert.equal(new KilnChatModel({ runtime, agent: "tester" }).getLsParams({} as never).ls_temperature, 0, "greedy by default");
  });
});

// --- (b) the <tool_call> format ---

test("parseToolCalls: valid, multiple, malformed and mixed blocks", () => {
  const one = parseToolCalls('Let me look.\n<tool_call>{"name": "search_knowledge", "arguments": {"query": "ferry"}}</tool_call>');
  assert.equal(one.content, "Let me look.");
  assert.equal(one.toolCalls.length, 1);
  assert.equal(one.toolCalls[0]!.name, "search_knowledge");
  assert.deepEqual(one.toolCalls[0]!.args, { query: "ferry" });
  assert.match(one.toolCalls[0]!.id!, /^call_[0-9a-f]{24}$/);

  const two = parseToolCalls('<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n<tool_call>{"name": "b", "arguments": "{\\"y\\": [2]}"}</tool_call>');
  assert.equal(two.content, "");
  assert.deepEqual(two.toolCalls.map((c) => [c.name, c.args]), [["a", { x: 1 }], ["b", { y: [2] }]]);
  assert.notEqual(two.toolCalls[0]!.id, two.toolCalls[1]!.id);

  for (const bad of [
    '<tool_call>{"name": "a", "arguments": {</tool_call>',
    '<tool_call>{"arguments": {"x": 1}}</tool_call>',
    '<tool_call>{"name": "a", "arguments": [1]}</tool_call>',
    "<tool_call>not json</tool_call> trailing",
    "plain text with no calls",
  ]) {
    assert.deepEqual(parseToolCalls(bad), { content: bad, toolCalls: [] }, bad);
  }

  const mixed = parseToolCalls('<tool_call>{"name": "a"}</tool_call> then <tool_call>{oops}</tool_call>');
  assert.deepEqual(mixed.toolCalls.map((c) => [c.name, c.args]), [["a", {}]]);
  assert.equal(mixed.content, "then <tool_call>{oops}</tool_call>");

  const unclosed = parseToolCalls('<tool_call>{"name": "a", "arguments": {"q": "x"}}');
  assert.deepEqual(unclosed.toolCalls.map((c) => c.args), [{ q: "x" }]);
});

test("bound tools: the plain-text protocol for a template without tools; calls parsed in invoke and stream", async () => {
  await withRuntime(async (runtime) => {
    const model = new ScriptedKiln({ runtime, agent: "tester", maxTokens: 8 });
    assert.equal(model.supportsNativeTools, false);
    const bound = model.bindTools([weatherTool]);
    const call = 'Checking.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Quillport"}}</tool_call>';

    model.script = [call];
    const reply = (await bound.invoke([new SystemMessage("Be brief."), new HumanMessage("weather?")])) as AIMessage;
    assert.equal(reply.content, "Checking.");
    assert.deepEqual(reply.tool_calls?.map((c) => [c.name, c.args]), [["get_weather", { city: "Quillport" }]]);
    assert.equal(reply.response_metadata.finish_reason, "tool_calls");
    const sent = plainMessages(model.requests[0]!);
    assert.equal(sent[0]!.role, "system");
    assert.ok(sent[0]!.content.startsWith("Be brief.\n\n# Tools"), "the protocol follows the caller's system prompt");
    assert.ok(sent[0]!.content.includes('"name":"get_weather"') && sent[0]!.content.includes('"city":{"type":"string"}'));
    assert.ok(sent[0]!.content.includes("<tool_call>"));

    model.script = [call];
    const pieces: string[] = [];
    let merged: AIMessageChunk | undefined;
    for await (const chunk of await bound.stream([new HumanMessage("weather?")])) {
      pieces.push(chunk.content as string);
      merged = merged ? merged.concat(chunk) : chunk;
    }
    assert.ok(!pieces.join("").includes("<tool"), "no tool-call markup is streamed");
    assert.equal(merged!.content, "Checking.");
    assert.deepEqual(merged!.tool_calls?.map((c) => [c.name, c.args]), [["get_weather", { city: "Quillport" }]]);

    // withStructuredOutput forces its tool: the reply starts with the call's opening, and the model
    // (here the script) writes the arguments
    const Mayor = z.object({ name: z.string() });
    model.script = ['{"name": "Tovan Reel"}'];
    const structured = model.withStructuredOutput(Mayor, { name: "extract" });
    assert.deepEqual(await structured.invoke("Who is the mayor of Quillport?"), { name: "Tovan Reel" });
    assert.equal(model.requests.at(-1)!.prompt.prefill, '<tool_call>{"name":"extract","arguments":');
    model.script = ['{"name": "Tovan Reel"}'];
    const raw = await model.withStructuredOutput(Mayor, { name: "extract", includeRaw: true }).invoke("Who is the mayor of Quillport?");
    assert.deepEqual(raw.parsed, { name: "Tovan Reel" });
    // a Zod schema also validates what came back
    model.script = ['{"name": 7}'];
    await assert.rejects(structured.invoke("Who is the mayor of Quillport?"), /name/);

    // Malformed: plain text, streamed in full.
    const bad = 'Checking.\n<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>';
    model.script = [bad];
    const badReply = (await bound.invoke("weather?")) as AIMessage;
    assert.equal(badReply.content, bad);
    assert.deepEqual(badReply.tool_calls, []);
    model.script = [bad];
    let badStream = "";
    for await (const chunk of await bound.stream("weather?")) badStream += chunk.content as string;
    assert.equal(badStream, bad);

    // Without bound tools the same text is just text.
    model.script = [call];
    const unbound = await model.invoke("weather?");
    assert.equal(unbound.content, call);
    assert.deepEqual(unbound.tool_calls, []);

    // A conversation with a tool round: the call is replayed as a block, the result as a user turn,
    // and the real model answers exactly as Runtime.chat does on those messages.
    const history: BaseMessage[] = [
      new HumanMessage("weather?"),
      new AIMessage({ content: "", tool_calls: [{ id: "call_1", name: "get_weather", args: { city: "Quillport" } }] }),
      new ToolMessage({ content: "sunny in Quillport", tool_call_id: "call_1", name: "get_weather" }),
    ];
    const answer = await bound.invoke(history);
    const last = model.requests.at(-1)!;
    const msgs = plainMessages(last);
    assert.deepEqual(msgs.slice(1), [
      { role: "user", content: "weather?" },
      { role: "assistant", content: '<tool_call>{"name":"get_weather","arguments":{"city":"Quillport"}}</tool_call>' },
      { role: "user", content: '<tool_response>\n{"name":"get_weather","content":"sunny in Quillport"}\n</tool_response>' },
    ]);
    const ref = await kilnChat(runtime, msgs, 8);
    assert.equal(answer.content, ref.result.text);
  });
});

test("bound tools: a template that renders tools gets them natively", async () => {
  await withRuntime(
    async (runtime) => {
      const model = new KilnChatModel({ runtime, agent: "tester", maxTokens: 8 });
      assert.equal(model.supportsNativeTools, true);
      const spec = toToolSpec(weatherTool);
      assert.equal(spec.type, "function");
      assert.equal(spec.function.name, "get_weather");
      const history: BaseMessage[] = [
        new HumanMessage("weather?"),
        new AIMessage({ content: "", tool_calls: [{ id: "call_1", name: "get_weather", args: { city: "Quillport" } }] }),
        new ToolMessage({ content: "sunny in Quillport", tool_call_id: "call_1", name: "get_weather" }),
      ];
      const prompt = model.renderPrompt(history, [spec]);
      assert.ok(prompt.startsWith("<|im_start|>system\nYou are a helpful assistant.\n\n# Tools"), prompt.slice(0, 80));
      assert.ok(
        prompt.includes('<tools>\n{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city.", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}'),
        "the spec is rendered by the template's tojson",
      );
      assert.ok(prompt.includes('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Quillport"}}\n</tool_call><|im_end|>'));
      assert.ok(prompt.includes("<|im_start|>user\n<tool_response>\nsunny in Quillport\n</tool_response><|im_end|>"));
      assert.ok(prompt.endsWith("<|im_start|>assistant\n"));
      // Without tools the template's plain branch (the same one Runtime.chat uses) renders.
      assert.equal(model.renderPrompt([new HumanMessage("hi")]), runtime.agent("tester").model.tokenizer.renderChat([{ role: "user", content: "hi" }]));

      // The reply is generated on exactly that prompt.
      const answer = await model.bindTools([weatherTool]).invoke(history);
      const m = runtime.agent("tester").model;
      const [ref] = await generate(m, [m.tokenizer.encode(prompt)], { maxTokens: 8, temperature: 0 });
      assert.equal(answer.content, ref!.text);
      assert.equal(answer.usage_metadata?.input_tokens, ref!.promptTokens);
      assert.equal(answer.response_metadata.kiln_version, "base");
    },
    { toolTemplate: true },
  );
});

// --- (b2) tool_choice, enforced ---

const timeTool = tool(async () => "noon", {
  name: "get_time",
  description: "The time in a zone.",
  schema: z.object({ zone: z.enum(["utc", "local"]), hour: z.number().int().min(0).max(23).optional() }),
});
const argSchemas: Record<string, z.ZodType> = { get_weather: z.object({ city: z.string() }), get_time: z.object({ zone: z.enum(["utc", "local"]), hour: z.number().int().min(0).max(23).optional() }) };

test("tool_choice forces a call on a model that never calls tools: its arguments fit the tool's schema", async () => {
  await withRuntime(async (runtime) => {
    const model = new ScriptedKiln({ runtime, agent: "tester", maxTokens: 48 });
    const tools = [weatherTool, timeTool];
    // left to itself (tool_choice "auto"), the random model writes no call
    const auto = (await model.bindTools(tools).invoke("weather in Quillport?")) as AIMessage;
    assert.deepEqual(auto.tool_calls, []);
    assert.equal(auto.response_metadata.finish_reason, "length");

    const choices: [unknown, string[], string][] = [
      ["get_weather", ["get_weather"], '<tool_call>{"name":"get_weather","arguments":'],
      [{ type: "function", function: { name: "get_time" } }, ["get_time"], '<tool_call>{"name":"get_time","arguments":'],
      [{ type: "tool", name: "get_time" }, ["get_time"], '<tool_call>{"name":"get_time","arguments":'],
      ["any", ["get_weather", "get_time"], '<tool_call>{"name":"get_'], // what both calls start with
      ["required", ["get_weather", "get_time"], '<tool_call>{"name":"get_'],
    ];
    for (const [tool_choice, names, prefill] of choices) {
      const bound = model.bindTools(tools, { tool_choice } as never);
      const reply = (await bound.invoke("weather in Quillport?")) as AIMessage;
      const what = JSON.stringify(tool_choice);
      assert.equal(model.requests.at(-1)!.prompt.prefill, prefill, what);
      assert.equal(reply.tool_calls?.length, 1, what);
      const call = reply.tool_calls![0]!;
      assert.ok(names.includes(call.name), `${what}: called ${call.name}`);
      const fits = argSchemas[call.name]!.safeParse(call.args);
      assert.ok(fits.success, `${what}: ${JSON.stringify(call.args)} fits ${call.name}'s schema`);
      assert.equal(reply.content, "");
      assert.equal(reply.response_metadata.finish_reason, "tool_calls");
      assert.ok(reply.usage_metadata!.output_tokens > 0);
    }
    assert.equal(model.real.length, 1 + choices.length, "every reply was the real model's");

    // streamed: no text, one chunk with the call
    const pieces: string[] = [];
    let merged: AIMessageChunk | undefined;
    for await (const chunk of await model.bindTools(tools, { tool_choice: "get_weather" }).stream("weather?")) {
      if (chunk.content) pieces.push(chunk.content as string);
      merged = merged ? merged.concat(chunk) : chunk;
    }
    assert.deepEqual(pieces, []);
    assert.equal(merged!.tool_calls?.[0]?.name, "get_weather");
    assert.ok(argSchemas.get_weather!.safeParse(merged!.tool_calls![0]!.args).success);

    // the same on a conversation that already had a tool round
    const history: BaseMessage[] = [
      new HumanMessage("weather?"),
      new AIMessage({ content: "", tool_calls: [{ id: "call_1", name: "get_weather", args: { city: "Quillport" } }] }),
      new ToolMessage({ content: "sunny in Quillport", tool_call_id: "call_1", name: "get_weather" }),
    ];
    const again = (await model.bindTools(tools, { tool_choice: "get_time" }).invoke(history)) as AIMessage;
    assert.equal(again.tool_calls?.[0]?.name, "get_time");
    assert.ok(argSchemas.get_time!.safeParse(again.tool_calls![0]!.args).success);

    // withStructuredOutput, generated for real
    const Mayor = z.object({ name: z.string(), term: z.number().int().min(1).max(9) });
    const got = await model.withStructuredOutput(Mayor).invoke("Who is the mayor of Quillport?");
    assert.ok(Mayor.safeParse(got).success, JSON.stringify(got));
  });
});

test("tool_choice errors: too few tokens for the arguments, an unknown tool, a choice without tools; none reads no calls", async () => {
  await withRuntime(async (runtime) => {
    const model = new ScriptedKiln({ runtime, agent: "tester", maxTokens: 2 });
    await assert.rejects(model.bindTools([weatherTool], { tool_choice: "get_weather" }).invoke("weather?"), /requires a call of get_weather, but its arguments were not finished within maxTokens \(2\); raise maxTokens/);
    await assert.rejects(model.bindTools([weatherTool], { tool_choice: "get_time" }).invoke("weather?"), /tool_choice names "get_time", which is not among the tools \(get_weather\)/);
    await assert.rejects(model.invoke("weather?", { tool_choice: "any" }), /asks for a tool call, but no tools are bound/);
    await assert.rejects(model.bindTools([weatherTool], { tool_choice: { type: "bogus" } } as never).invoke("weather?"), /unsupported tool_choice/);
    assert.equal(model.requests.length, 1, "only the first was generated");

    // "none": no tools in the prompt, and a call the model writes stays text
    const call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Quillport"}}</tool_call>';
    model.script = [call];
    const none = (await model.bindTools([weatherTool], { tool_choice: "none" }).invoke("weather?")) as AIMessage;
    assert.deepEqual(none.tool_calls, []);
    assert.equal(none.content, call);
    assert.ok(!plainMessages(model.requests.at(-1)!).some((m) => m.content.includes("# Tools")), "no tool protocol in the prompt");
  });
});

// --- (b3) response_format: JSON content ---

// bounded strings, so that even the random model's replies end
const Report = z.object({ city: z.string().max(10), sky: z.enum(["clear", "rain"]), temp: z.number().int().min(-30).max(45), tags: z.array(z.string().max(5)).max(2) });

test("withStructuredOutput jsonSchema, and the response_format call option: the content is JSON that fits the schema, streamed or not", async () => {
  await withRuntime(async (runtime) => {
    const model = new ScriptedKiln({ runtime, agent: "tester", maxTokens: 160 });
    const { parsed, raw } = await model.withStructuredOutput(Report, { method: "jsonSchema", name: "report", includeRaw: true }).invoke("Weather in Quillport?");
    assert.ok(Report.safeParse(parsed).success, JSON.stringify(parsed));
    assert.deepEqual(JSON.parse(raw.content as string), parsed, "the content is the JSON");
    assert.equal(raw.response_metadata.finish_reason, "stop");
    assert.deepEqual((raw as AIMessage).tool_calls ?? [], []);
    const req = model.requests.at(-1)!;
    assert.ok(req.structured && !req.forced && req.prompt.prefill === undefined, "constrained content, not a forced call");
    assert.equal(model.real.length, 1, "the real model's reply");
    for (const seed of [1, 2, 3]) {
      const sampled = new KilnChatModel({ runtime, agent: "tester", maxTokens: 160, temperature: 1, seed });
      const got = await sampled.withStructuredOutput(Report, { method: "jsonSchema" }).invoke("Weather in Quillport?");
      assert.ok(Report.safeParse(got).success, `seed ${seed}: ${JSON.stringify(got)}`);
    }

    // strict: what kiln cannot enforce is refused, naming it; not strict, it is ignored and the reply says so
    const Mail = z.object({ email: z.string().email().max(8) });
    await assert.rejects(model.withStructuredOutput(Mail, { method: "jsonSchema", strict: true }).invoke("mail?"), /"format" at #\/properties\/email, "pattern" at #\/properties\/email/);
    const coded = { type: "object", properties: { code: { type: "string", maxLength: 4, pattern: "^[A-Z]+$" } }, required: ["code"], additionalProperties: false };
    const loose = await model.withStructuredOutput(coded, { method: "jsonSchema", name: "coded", includeRaw: true }).invoke("code?");
    assert.ok(typeof loose.parsed.code === "string" && loose.parsed.code.length <= 4, JSON.stringify(loose.parsed));
    assert.deepEqual(loose.raw.response_metadata.kiln_unenforced, [{ keyword: "pattern", at: "#/properties/code" }]);

    // streamed, with the call option itself: the chunks join to the JSON invoke gives (greedy)
    const response_format = { type: "json_schema" as const, json_schema: { name: "report", schema: z.toJSONSchema(Report) as Record<string, unknown> } };
    let text = "";
    let merged: AIMessageChunk | undefined;
    for await (const chunk of await model.stream("Weather?", { response_format })) {
      text += chunk.content as string;
      merged = merged ? merged.concat(chunk) : chunk;
    }
    assert.ok(Report.safeParse(JSON.parse(text)).success, text);
    assert.equal(merged!.response_metadata.finish_reason, "stop");
    assert.equal((await model.invoke("Weather?", { response_format })).content, text);
  });
});

test("withStructuredOutput jsonMode: any JSON object; cut off, a clear error; with tools the model may call, a call or the JSON", async () => {
  await withRuntime(async (runtime) => {
    // the random model's objects often hold a string that never ends: those that end parse
    let finished = 0;
    for (const seed of [1, 2, 3, 4, 5, 6, 7, 8]) {
      const model = new KilnChatModel({ runtime, agent: "tester", maxTokens: 100, temperature: 1, seed });
      const reply = await model.invoke("Weather in Quillport?", { response_format: { type: "json_object" } });
      const content = reply.content as string;
      assert.ok(content.startsWith("{"), content);
      if (reply.response_metadata.finish_reason !== "stop") continue;
      finished++;
      const value = JSON.parse(content);
      assert.ok(value && typeof value === "object" && !Array.isArray(value), content);
      const got = await model.withStructuredOutput({ type: "object" }, { method: "jsonMode" }).invoke("Weather in Quillport?");
      assert.deepEqual(got, value, "jsonMode is the same reply, parsed");
    }
    assert.ok(finished >= 1, `${finished} of 8 replies finished`);

    const short = new ScriptedKiln({ runtime, agent: "tester", maxTokens: 6 });
    await assert.rejects(short.withStructuredOutput(Report, { method: "jsonMode" }).invoke("Weather?"), /the JSON reply was not finished within maxTokens \(6\); raise maxTokens/);
    assert.throws(() => short.withStructuredOutput(Report, { method: "xml" }), /supports the methods "functionCalling", "jsonSchema" and "jsonMode"/);

    // tools the model may call ("auto"): the reply is one call, or the JSON the format asks for
    const model = new ScriptedKiln({ runtime, agent: "tester", maxTokens: 48 });
    const json = { response_format: { type: "json_object" as const } };
    const either = (await new KilnChatModel({ runtime, agent: "tester", maxTokens: 120 }).bindTools([timeTool]).invoke("time?", json)) as AIMessage;
    assert.equal(either.response_metadata.finish_reason, either.tool_calls?.length ? "tool_calls" : "stop", JSON.stringify(either.content));
    if (either.tool_calls?.length) assert.ok(argSchemas.get_time!.safeParse(either.tool_calls[0]!.args).success, "its arguments fit the tool");
    else assert.ok(typeof JSON.parse(either.content as string) === "object", either.content as string);
    await model.bindTools([timeTool]).invoke("time?", json);
    const req = model.requests.at(-1)!;
    assert.ok(req.auto && req.structured && req.options.constrain, "calls are read, and one constraint covers the call and the format");
    // what each reads as (scripted: the plain protocol's call block, or the JSON)
    model.script = ['<tool_call>{"name": "get_weather", "arguments": {"city": "Ashby"}}</tool_call>'];
    assert.deepEqual(((await model.bindTools([weatherTool]).invoke("weather?", json)) as AIMessage).tool_calls?.map((c) => c.args), [{ city: "Ashby" }]);
    model.script = ['{"sky": "clear"}'];
    assert.equal((await model.bindTools([weatherTool]).invoke("weather?", json)).content, '{"sky": "clear"}');
    // withStructuredOutput's JSON methods with tools given as a call option: the same constraint
    const Sky = z.object({ sky: z.enum(["clear", "rain"]) });
    model.script = ['{"sky": "rain"}'];
    assert.deepEqual(await model.withStructuredOutput(Sky, { method: "jsonSchema" }).invoke("sky?", { tools: [toToolSpec(weatherTool)] } as never), { sky: "rain" });
    assert.ok(model.requests.at(-1)!.auto && model.requests.at(-1)!.structured, "the tools reached the model beside the format");
    const call = (await model.bindTools([weatherTool], { tool_choice: "get_weather" }).invoke("weather?", json)) as AIMessage;
    assert.equal(call.tool_calls?.[0]?.name, "get_weather");
    const none = await model.bindTools([weatherTool], { tool_choice: "none" }).invoke("weather?", { response_format: { type: "json_schema", json_schema: { name: "n", schema: { enum: [1, 2] } } } });
    assert.ok([1, 2].includes(JSON.parse(none.content as string)));
  });
});

test("a \"forget ...\" in a message the model answers (structured output) is applied after the reply, and kiln_forgot says what it did", async () => {
  await withRuntime(async (runtime) => {
    const agent = runtime.agent("tester");
    const { item } = await agent.remember("The harbor fee is nine coins.");
    const model = new KilnChatModel({ runtime, agent: "tester", maxTokens: 160, captureFacts: true });
    const raw = (await model.withStructuredOutput(z.object({ ok: z.boolean() }), { method: "jsonSchema", includeRaw: true }).invoke("forget the harbor fee")).raw as AIMessage;
    assert.doesNotThrow(() => JSON.parse(raw.content as string), "the reply is the model's JSON");
    assert.deepEqual(raw.response_metadata.kiln_forgot, ['Forgot 1 item(s) matching "the harbor fee" (not baked in yet).']);
    assert.equal(agent.ledger.item(item.id).status, "retracted");
  });
});

test("a schema the JSON constraint cannot follow, or with an enum the vocabulary cannot write, is refused before generation", async () => {
  await withRuntime(async (runtime) => {
    const model = new ScriptedKiln({ runtime, agent: "tester", maxTokens: 16 });
    await assert.rejects(model.withStructuredOutput({ anyOf: [{ $ref: "#" }, { type: "string" }] }, { method: "jsonSchema" }).invoke("json?"), (err: Error) => {
      assert.equal(err.name, "ResponseFormatError");
      assert.match(err.message, /refers back to itself without reading any text \(# -> #\/anyOf\/0 -> #\)/);
      return true;
    });
    const closed = { type: "function" as const, function: { name: "probe", parameters: { type: "object", required: ["a"], additionalProperties: false } } };
    await assert.rejects(model.bindTools([closed], { tool_choice: "probe" }).invoke("probe?"), (err: Error) => {
      assert.equal(err.name, "ToolChoiceError");
      assert.match(err.message, /the parameters of "probe" cannot be used to constrain its arguments: no value fits the schema: #: "a" is required but additionalProperties is false/);
      return true;
    });
    // more readings at once than the matcher follows, after '["' (it used to fail mid-reply)
    const strings = () => ({ anyOf: Array.from({ length: 256 }, (_, i) => ({ type: "string", maxLength: 100 + i })) });
    const wide = { anyOf: Array.from({ length: 5 }, (_, k) => ({ type: "array", minItems: k, items: strings() })) };
    await assert.rejects(model.invoke("a list?", { response_format: { type: "json_schema", json_schema: { name: "wide", schema: wide } } }), (err: Error) => {
      assert.equal(err.name, "ResponseFormatError");
      assert.match(err.message, /too ambiguous .* at \$\[\*\] in the value, .* follow 1280 readings at once \(at most 1024\)/);
      return true;
    });
    // the fixture's byte-level vocabulary writes "☃" in three tokens, and a byte alone is no
    // character the enum's text holds: refused before generation (it failed mid-reply, before)
    const response_format = { type: "json_schema" as const, json_schema: { name: "snow", schema: { enum: ["☃"] } } };
    const refused = (err: Error) => err.name === "ResponseFormatError" && /#: the enum\/const value "☃" holds "☃" \(U\+2603\), which the model's vocabulary cannot write/.test(err.message);
    await assert.rejects(model.invoke("a snowman?", { response_format }), refused);
    await assert.rejects(async () => {
      for await (const _ of await model.stream("a snowman?", { response_format }));
    }, refused);
    assert.equal(model.requests.length, 0, "nothing was generated");
  });
});

test("a forced call starts with the template's own opening: Hermes/Qwen blocks, Llama-style JSON; other formats are refused", async () => {
  const cases: [string, string, string][] = [
    ["Qwen-style", TOOL_TEMPLATE, '<tool_call>\n{"name": "get_weather", "arguments":'],
    ["Llama-style", LLAMA_STYLE_TEMPLATE, '{"name": "get_weather", "parameters":'],
    ["Llama 3-style", LLAMA3_TEMPLATE, '{"name": "get_weather", "parameters":'],
  ];
  for (const [what, template, prefill] of cases) {
    await withRuntime(
      async (runtime) => {
        const model = new ScriptedKiln({ runtime, agent: "tester", maxTokens: 48 });
        assert.equal(model.supportsNativeTools, true);
        const reply = (await model.bindTools([weatherTool], { tool_choice: "get_weather" }).invoke("weather?")) as AIMessage;
        const req = model.requests.at(-1)!;
        assert.equal(req.prompt.prefill, prefill, what);
        assert.ok(req.prompt.tools?.length, `${what}: the template renders the tools`);
        assert.equal(reply.tool_calls?.[0]?.name, "get_weather", what);
        assert.ok(argSchemas.get_weather!.safeParse(reply.tool_calls![0]!.args).success, `${what}: ${JSON.stringify(reply.tool_calls![0]!.args)}`);
        // the prompt the model continued: its template's rendering, then the prefill
        const m = runtime.agent("tester").model;
        const text = m.tokenizer.renderChat(req.prompt.messages, true, { tools: req.prompt.tools }) + prefill;
        assert.equal(reply.usage_metadata?.input_tokens, m.tokenizer.encode(text).length);
      },
      { template },
    );
  }
  await withRuntime(
    async (runtime) => {
      const model = new ScriptedKiln({ runtime, agent: "tester", maxTokens: 48 });
      await assert.rejects(model.bindTools([weatherTool], { tool_choice: "any" }).invoke("weather?"), (err: Error) => {
        assert.equal(err.name, "ToolChoiceError");
        assert.match(err.message, /kiln cannot make this model call a tool: its chat template does not write a tool call as a JSON object/);
        return true;
      });
      assert.equal(model.requests.length, 0, "nothing was generated");
      // "auto" still works on it: the model may answer
      const reply = (await model.bindTools([weatherTool]).invoke("weather?")) as AIMessage;
      assert.equal(model.requests.length, 1);
      assert.equal(typeof reply.content, "string");
    },
    { template: PYTHONIC_TEMPLATE },
  );
});

test("auto mode on a Llama 3 tool template: a reply that is wholly a bare JSON call of a bound tool is that call; other JSON is an answer", async () => {
  const call = '{"name": "get_weather", "parameters": {"city": "Ashby"}}';
  const replies: [string, string, { name: string; args: Record<string, unknown> } | null][] = [
    ["a call", call, { name: "get_weather", args: { city: "Ashby" } }],
    ["a call, spaced", `\n ${call}\n`, { name: "get_weather", args: { city: "Ashby" } }],
    ['a call with "type" and "arguments"', '{"type": "function", "name": "get_time", "arguments": {"zone": "utc"}}', { name: "get_time", args: { zone: "utc" } }],
    ["an unknown tool", '{"name": "get_mood", "parameters": {}}', null],
    ["an answer that is JSON", '{"city": "Ashby", "sky": "clear"}', null],
    ["a name and other keys", '{"name": "get_weather", "parameters": {"city": "Ashby"}, "note": "x"}', null],
    ["text, then a call", `Sure: ${call}`, null],
    ["JSON that is not an object", '["get_weather"]', null],
  ];
  for (const [template, llama] of [[LLAMA3_TEMPLATE, true], [TOOL_TEMPLATE, false]] as const) {
    await withRuntime(
      async (runtime) => {
        const model = new ScriptedKiln({ runtime, agent: "tester", maxTokens: 16 });
        const bound = model.bindTools([weatherTool, timeTool]);
        for (const [what, text, expected] of replies) {
          const want = llama ? expected : null; // other templates' calls are <tool_call> blocks
          model.script = [text];
          const reply = (await bound.invoke("weather?")) as AIMessage;
          const label = `${llama ? "Llama 3-style" : "Qwen"}: ${what}`;
          assert.deepEqual(reply.tool_calls?.map((c) => ({ name: c.name, args: c.args })) ?? [], want ? [want] : [], label);
          assert.equal(reply.content, want ? "" : text, label);
          assert.equal(reply.response_metadata.finish_reason, want ? "tool_calls" : "stop", label);
          // streamed: a reply that may be a call is held back, then it is the call or the text
          model.script = [text];
          let streamed: AIMessageChunk | undefined;
          for await (const chunk of await bound.stream("weather?")) streamed = streamed ? streamed.concat(chunk) : chunk;
          assert.deepEqual(streamed!.tool_calls?.map((c) => ({ name: c.name, args: c.args })) ?? [], want ? [want] : [], `${label} (streamed)`);
          assert.equal(streamed!.content, want ? "" : text, `${label} (streamed)`);
        }
      },
      { template },
    );
  }
  // strict: a reply that starts with "{" is a call, held to the template's layout and the tool's
  // schema, and ends with it; any other reply is free (random logits through the mask)
  await withRuntime(
    async (runtime) => {
      const model = new ScriptedKiln({ runtime, agent: "tester", maxTokens: 16 });
      const m = runtime.agent("tester").model;
      const vocab = tokenTexts(m.tokenizer, m.config.vocabSize);
      const strictMask = async () => {
        model.script = [""];
        await model.bindTools([timeTool], { strict: true }).invoke("time?");
        return model.requests.at(-1)!;
      };
      let calls = 0;
      for (let seed = 1; seed <= 6; seed++) {
        const req = await strictMask();
        const prefix = m.tokenizer.encode("{");
        const walk = walkMask(req.options.constrain!, { vocabSize: m.config.vocabSize, eos: m.eosTokenIds, seed, steps: 60, prefix, bias: (id) => (/[}"]/.test(vocab.texts[id]!) ? 2 : 0) });
        const text = m.tokenizer.decode([...prefix, ...walk.tokens]);
        assert.ok(text.startsWith('{"name": "get_time", "parameters": {'), text);
        if (!walk.ended) continue;
        calls++;
        const parsed = req.auto!.parse(text);
        assert.equal(parsed.toolCalls.length, 1, text);
        assert.ok(argSchemas.get_time!.safeParse(parsed.toolCalls[0]!.args).success, text);
      }
      assert.ok(calls >= 3, `${calls} of 6 walks ended with their call`);
      const free = Float32Array.from({ length: m.config.vocabSize }, () => 1);
      (await strictMask()).options.constrain!(free, m.tokenizer.encode("The time"));
      assert.ok(free.every((v) => v === 1), "a reply that did not start with a call is free");
    },
    { template: LLAMA3_TEMPLATE },
  );
});

// --- (c) the agent loop ---

const LIGHTHOUSE = "The lighthouse keeper is Mira Tolle.";
const FEE = "The harbor fee is nine coins.";

test("createAgent loop: tools run on the real ledger, the real model answers, memory is per thread", async () => {
  await withRuntime(async (runtime) => {
    const agent = runtime.agent("tester");
    await agent.remember(LIGHTHOUSE);
    await agent.remember("Dunmore mills closed.");
    const model = new ScriptedKiln({ runtime, agent: "tester", maxTokens: 8, captureFacts: true });
    const kiln = createKilnAgent(runtime, "tester", { model });

    // Turn 1: a scripted search, then the real model's answer.
    model.script = ['<tool_call>{"name": "search_knowledge", "arguments": {"query": "lighthouse keeper"}}</tool_call>'];
    const t1 = await kiln.turn("harbor-1", "Who keeps the lighthouse?");
    assert.deepEqual(t1.toolCalls, [{ name: "search_knowledge", args: { query: "lighthouse keeper" } }]);
    assert.deepEqual(t1.messages.map((m) => m.getType()), ["human", "ai", "tool", "ai"]);
    const found = JSON.parse(t1.messages[2]!.text) as { live_version: string | null; items: { text: string; status: string; version: string | null }[] };
    assert.deepEqual(found.items.map((i) => [i.text, i.status, i.version]), [[LIGHTHOUSE, "pending", null]], "only the matching item");
    assert.equal(found.live_version, "base");
    assert.equal(model.requests.length, 2);
    const answerInput = plainMessages(model.requests[1]!);
    assert.ok(answerInput.at(-1)!.content.includes(LIGHTHOUSE), "the tool result reached the model");
    const ref1 = await kilnChat(runtime, answerInput, 8);
    assert.equal(t1.reply, ref1.result.text, "the final answer is the real model's");
    assert.equal(t1.version, "base");

    // Turn 2 on the same thread: the model's input holds turn 1; remember_fact adds a pending item.
    model.script = [`<tool_call>{"name": "remember_fact", "arguments": {"fact": "${FEE}"}}</tool_call>`];
    const t2 = await kiln.turn("harbor-1", "The fee is nine coins, keep that.");
    const turn2Input = plainMessages(model.requests[2]!);
    assert.deepEqual(turn2Input.slice(1).map((m) => m.content), [
      "Who keeps the lighthouse?",
      '<tool_call>{"name":"search_knowledge","arguments":{"query":"lighthouse keeper"}}</tool_call>',
      answerInput.at(-1)!.content,
      t1.reply,
      "The fee is nine coins, keep that.",
    ]);
    const saved = agent.ledger.items({ text: "harbor fee" });
    assert.equal(saved.length, 1);
    assert.equal(saved[0]!.text, FEE);
    assert.equal(saved[0]!.status, "pending");
    assert.equal(saved[0]!.kind, "conversation");
    assert.deepEqual(saved[0]!.source, { conversationId: "harbor-1", by: "agent" });
    assert.deepEqual(JSON.parse(t2.messages[2]!.text), { id: saved[0]!.id, status: "pending", added: true });
    const ref2 = await kilnChat(runtime, plainMessages(model.requests[3]!), 8);
    assert.equal(t2.reply, ref2.result.text);
    assert.equal((await kiln.history("harbor-1")).length, 8);

    // Another thread starts empty; the real model answers and the user's fact is captured there.
    const { reply, captured } = await kiln.turn("harbor-2", "My name is Ada.");
    assert.deepEqual(captured, ["The user's name is Ada."], "the turn says what it stored");
    const fresh = plainMessages(model.requests[4]!);
    assert.deepEqual(fresh.map((m) => m.role), ["system", "user"]);
    assert.equal(fresh[1]!.content, "My name is Ada.");
    assert.equal(reply, (await kilnChat(runtime, fresh, 8)).result.text);
    const ada = agent.ledger.items({ text: "Ada" });
    assert.deepEqual(ada.map((i) => [i.text, i.status, i.source.conversationId]), [["The user's name is Ada.", "pending", "harbor-2"]]);
    assert.equal((await kiln.history("harbor-1")).length, 8, "the other thread is untouched");
  });
});

test("createAgent loop: arguments that fail a tool's schema reach the model as the schema's complaint, not a stack trace", async () => {
  await withRuntime(async (runtime) => {
    await runtime.agent("tester").remember(LIGHTHOUSE);
    const model = new ScriptedKiln({ runtime, agent: "tester", maxTokens: 8 });
    const kiln = createKilnAgent(runtime, "tester", { model });
    model.script = ['<tool_call>{"name": "search_knowledge", "arguments": {"query": "lighthouse", "limit": 100}}</tool_call>', "Sorry."];
    const t = await kiln.turn("bad-args", "Who keeps the lighthouse?");
    assert.deepEqual(t.messages.map((m) => m.getType()), ["human", "ai", "tool", "ai"]);
    const error = t.messages[2] as ToolMessage;
    assert.equal(error.status, "error");
    assert.match(error.text, /^Error: the arguments \{"query":"lighthouse","limit":100\} do not fit search_knowledge's schema: .*<=20/s);
    assert.ok(!/node_modules|\n\s+at /.test(error.text), `no stack trace: ${error.text}`);
    assert.ok(error.text.length < 300, `${error.text.length} characters`);
    assert.equal(plainMessages(model.requests[1]!).at(-1)!.content.includes("node_modules"), false, "nor in the model's prompt");
    assert.equal(t.reply, "Sorry.");

    // The same on the next turn, for the other tool; the ledger is untouched.
    model.script = ['<tool_call>{"name": "remember_fact", "arguments": {"fact": ""}}</tool_call>', "Ok."];
    const t2 = await kiln.turn("bad-args", "Note this down.");
    assert.match(t2.messages[2]!.text, /^Error: the arguments \{"fact":""\} do not fit remember_fact's schema: .*>=1/s);
    assert.ok(!t2.messages[2]!.text.includes("node_modules"));
    assert.equal(runtime.agent("tester").ledger.items().length, 1);
  });
});

test("createAgent loop with a tool-rendering template: native tool prompt, real answer", async () => {
  await withRuntime(
    async (runtime) => {
      await runtime.agent("tester").remember(LIGHTHOUSE);
      const model = new ScriptedKiln({ runtime, agent: "tester", maxTokens: 8 });
      const kiln = createKilnAgent(runtime, "tester", { model });
      model.script = ['<tool_call>\n{"name": "search_knowledge", "arguments": {"query": "lighthouse"}}\n</tool_call>'];
      const t = await kiln.turn("t", "Who keeps the lighthouse?");
      assert.deepEqual(t.toolCalls, [{ name: "search_knowledge", args: { query: "lighthouse" } }]);
      const req = model.requests[1]!;
      assert.ok(req.prompt.tools?.length, "native tools go to the template");
      const m0 = runtime.agent("tester").model;
      const text = m0.tokenizer.renderChat(req.prompt.messages, true, { tools: req.prompt.tools });
      assert.ok(text.includes("<tools>\n") && text.includes('"name": "search_knowledge"') && text.includes('"name": "remember_fact"'));
      assert.ok(text.includes("<tool_response>\n") && text.includes(LIGHTHOUSE));
      const m = runtime.agent("tester").model;
      const [ref] = await generate(m, [m.tokenizer.encode(text)], { maxTokens: 8, temperature: 0 });
      assert.equal(t.reply, ref!.text);
    },
    { toolTemplate: true },
  );
});

test("createKilnAgent on a model whose positions the tool instructions fill says so before any turn", async () => {
  const { dir, file } = writeTestAgent({ model: "default" }); // kiln-mini: 512 positions
  const runtime = await Runtime.fromFiles(file);
  try {
    assert.throws(() => createKilnAgent(runtime, "tester"), /tester's model has 512 positions; the tool instructions take \d+ tokens .* leaving no room for the conversation/);
  } finally {
    await runtime.stop();
    rmSync(dir, { recursive: true });
  }
});
