// The HTTP server over a real runtime on a tiny model: the OpenAI-compatible API through the
// official `openai` client, errors in OpenAI's shape, the token, the body limit, the bounded
// queue, client aborts, the admin API end to end (remember, bake with SSE progress, versions,
// diff, rollback, retraction) and /metrics.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import OpenAI from "openai";
import { zodResponseFormat } from "openai/helpers/zod";
import { z } from "zod";
import { initBackend, tf } from "../src/tensor/backend.js";
import { LoraAdapter } from "../src/lora/adapter.js";
import { saveAdapter } from "../src/lora/peft.js";
import { Runtime } from "../src/runtime/runtime.js";
import { createServer, type KilnServer } from "../src/server/index.js";
import { writeTestAgent } from "./support/agent.js";
import type { Agent } from "../src/runtime/agent.js";
import { repoRoot } from "./support/paths.js";
import { autoCalls, toolPrompt, toPlainMessages, type AutoCalls, type KilnToolSpec, type ParsedToolCall } from "../src/agent/tools.js";
import type { LoadedModel } from "../src/model/load.js";
import { tokenTexts } from "../src/model/json-constraint.js";
import { walkMask } from "./support/mask.js";
import { readEvents as readSse, type SseEvent } from "./support/sse.js";

await initBackend();

const TOKEN = "test-token-123";
let dir: string;
let runtime: Runtime;
let server: KilnServer;
let client: OpenAI;

before(async () => {
  const agent = writeTestAgent();
  dir = agent.dir;
  runtime = await Runtime.fromFiles(agent.file);
  server = await createServer(runtime, { port: 0, token: TOKEN });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: TOKEN, maxRetries: 0 });
});

after(async () => {
  await server?.close();
  await runtime?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const auth = { authorization: `Bearer ${TOKEN}` };

async function call(path: string, init: { method?: string; body?: unknown; headers?: Record<string, string> } = {}, base = server.url) {
  const res = await fetch(`${base}${path}`, {
    method: init.method ?? "GET",
    headers: { ...auth, ...(init.body !== undefined ? { "content-type": "application/json" } : {}), ...init.headers },
    ...(init.body !== undefined ? { body: typeof init.body === "string" ? init.body : JSON.stringify(init.body) } : {}),
  });
  const text = await res.text();
  let json: any = null;
  try {
    json = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  return { status: res.status, headers: res.headers, json, text };
}

function assertErrorShape(body: any, status: number): void {
  assert.ok(body?.error, `an OpenAI-style error body for ${status}: ${JSON.stringify(body)}`);
  assert.equal(typeof body.error.message, "string");
  assert.ok(body.error.message.length > 0);
  assert.equal(typeof body.error.type, "string");
  assert.ok("param" in body.error && "code" in body.error);
}

/** Reads server-sent events of the test server's `path` until `until` says stop (or the stream ends). */
const readEvents = (path: string, until: (e: SseEvent) => boolean, timeoutMs?: number) => readSse(`${server.url}${path}`, until, { headers: auth, timeoutMs });

test("models and chat completions through the official openai client, streaming equal to non-streaming", async () => {
  const started = performance.now();
  const models = await client.models.list();
  assert.deepEqual(
    models.data.map((m) => [m.id, m.object, m.owned_by]),
    [["tester", "model", "kiln"]],
  );
  assert.equal(typeof models.data[0]!.created, "number");
  // the version the agent serves, named as /healthz, /metrics and x-kiln-version name it ("base", not null)
  assert.equal((models.data[0] as any).kiln.live_version, "base");
  assert.equal((models.data[0] as any).kiln.live_version, (await call("/healthz")).json.agents[0].live);

  const params = { model: "tester", messages: [{ role: "user" as const, content: "Hello there" }], max_tokens: 12, temperature: 0, seed: 7 };
  const full = await client.chat.completions.create(params);
  assert.equal(full.object, "chat.completion");
  assert.equal(full.model, "tester");
  assert.equal(full.choices.length, 1);
  const text = full.choices[0]!.message.content!;
  assert.ok(text.length > 0, "the tiny model says something");
  assert.equal(full.choices[0]!.finish_reason, "length");
  assert.equal(full.choices[0]!.message.role, "assistant");
  assert.equal(full.usage!.completion_tokens, 12);
  assert.ok(full.usage!.prompt_tokens > 0);
  assert.equal(full.usage!.total_tokens, full.usage!.prompt_tokens + 12);
  assert.equal((full as any).kiln.version, "base", "the base model answered, named as in the header and /v1/models");

  const stream = await client.chat.completions.create({ ...params, stream: true, stream_options: { include_usage: true } });
  let streamed = "";
  let finish: string | null = null;
  let usage: OpenAI.CompletionUsage | undefined;
  let chunks = 0;
  for await (const chunk of stream) {
    assert.equal(chunk.object, "chat.completion.chunk");
    chunks++;
    streamed += chunk.choices[0]?.delta?.content ?? "";
    finish = chunk.choices[0]?.finish_reason ?? finish;
    usage = chunk.usage ?? usage;
  }
  assert.equal(streamed, text, "concatenated deltas equal the non-streaming reply");
  assert.equal(finish, "length");
  assert.ok(chunks > 3, "the reply came in several chunks");
  assert.equal(usage?.completion_tokens, 12);

  // max_completion_tokens and stop strings (a string or an array) reach the generator.
  const stop = text.slice(3, 5);
  const stopped = await client.chat.completions.create({ ...params, max_tokens: undefined, max_completion_tokens: 12, stop: [stop] });
  assert.equal(stopped.choices[0]!.finish_reason, "stop");
  assert.equal(stopped.choices[0]!.message.content, text.slice(0, text.indexOf(stop)));

  // /metrics times each request (it read fastify's reply.elapsedTime, which is 0 with fastify's
  // logger off: a soak's 3,988 chat requests summed to 0 s)
  const seconds = (performance.now() - started) / 1000;
  const metrics = (await call("/metrics")).text;
  const sum = Number(/^kiln_http_request_duration_seconds_sum\{route="\/v1\/chat\/completions"\} (\S+)$/m.exec(metrics)?.[1]);
  assert.ok(sum > 0 && sum <= seconds, `the chat requests' latency sums to ${sum} s, within the test's ${seconds.toFixed(2)} s`);
  // memory split so a long run's RSS rise can be told apart: the V8 heap and what lives outside it
  const gauge = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(metrics)?.[1]);
  const [rss, heap, external] = ["kiln_process_resident_memory_bytes", "kiln_process_heap_used_bytes", "kiln_process_external_memory_bytes"].map(gauge);
  assert.ok(heap! > 1e6 && external! > 0 && heap! < rss! && external! < rss!, `rss ${rss}, heap ${heap}, external ${external}`);
});

test("a remember command through the API is applied by the runtime and the reply says so", async () => {
  const messages = [{ role: "user" as const, content: "remember that the ferry leaves at noon" }];
  const reply = await client.chat.completions.create({ model: "tester", messages, kiln: { conversation_id: "api-1" } } as any);
  assert.equal(reply.choices[0]!.message.content, "Noted for my next bake: The ferry leaves at noon.");
  assert.equal(reply.choices[0]!.finish_reason, "stop");
  assert.ok(reply.usage!.completion_tokens > 0 && reply.usage!.prompt_tokens > 0);
  const item = runtime.agent("tester").ledger.items({ text: "ferry leaves at noon" })[0]!;
  assert.equal(item.kind, "conversation");
  assert.equal(item.source.conversationId, "api-1");
  let streamed = "";
  for await (const chunk of await client.chat.completions.create({ model: "tester", messages, stream: true })) streamed += chunk.choices[0]?.delta?.content ?? "";
  assert.equal(streamed, "I was told that already (pending): The ferry leaves at noon.");
  await runtime.agent("tester").retract([item.id]); // leave the ledger as the other tests expect it
});

test("a fact longer than a bake's prompt holds of one is refused where it is told, not stored to be baked cut short", async () => {
  const long = `The ferry timetable says ${"the boat leaves at noon and ".repeat(20)}returns at six.`;
  const before = runtime.agent("tester").ledger.data.items.length;
  const api = await call("/admin/agents/tester/items", { method: "POST", body: { text: long } });
  assert.equal(api.status, 400, api.text);
  assert.equal(api.json.error.param, "text");
  assert.match(api.json.error.message, /^text: a fact is at most 400 characters, as much as a bake's prompt holds of one \(this one has \d+\): split it into shorter facts$/);
  const chat = await client.chat.completions.create({ model: "tester", messages: [{ role: "user", content: `remember that ${long}` }] });
  assert.match(chat.choices[0]!.message.content!, /^I cannot note that: a fact is at most 400 characters/);
  await assert.rejects(runtime.agent("tester").remember(long), /a fact is at most 400 characters/);
  assert.equal(runtime.agent("tester").ledger.data.items.length, before, "nothing was stored");
});

test("a fact holding a control character (a NUL, a bell) is refused where it is told, naming the character, not stored", async () => {
  const before = runtime.agent("tester").ledger.data.items.length;
  const api = await call("/admin/agents/tester/items", { method: "POST", body: { text: "The ferry leaves\u0000 at noon." } });
  assert.equal(api.status, 400, api.text);
  assert.equal(api.json.error.param, "text");
  assert.match(api.json.error.message, /^text: a fact cannot hold control characters \(U\+0000 at character 17\), which a prompt does not show: remove them$/);
  const chat = await client.chat.completions.create({ model: "tester", messages: [{ role: "user", content: "remember that the ferry bell\u0007 rings at noon." }] });
  assert.match(chat.choices[0]!.message.content!, /^I cannot note that: a fact cannot hold control characters \(U\+0007 at character \d+\)/);
  await assert.rejects(runtime.agent("tester").remember("The fee\u001b[2J is nine coins."), /a fact cannot hold control characters \(U\+001B at character 8\)/);
  assert.equal(runtime.agent("tester").ledger.data.items.length, before, "nothing was stored");
  // tabs and line breaks are whitespace, as before
  const ok = await call("/admin/agents/tester/items", { method: "POST", body: { text: "The ferry\tleaves\r\nat noon on Sundays." } });
  assert.equal(ok.status, 201, ok.text);
  await runtime.agent("tester").retract([ok.json.item.id]); // leave the ledger as the other tests expect it
});

test("bad requests get 4xx in OpenAI's error shape; unknown models 404; a token is required", async () => {
  const rejects = async (p: Promise<unknown>, status: number, param?: string) => {
    try {
      await p;
    } catch (err) {
      assert.ok(err instanceof OpenAI.APIError, String(err));
      assert.equal(err.status, status, err.message);
      assertErrorShape({ error: err.error }, status);
      if (param) assert.equal((err.error as any).param, param);
      return;
    }
    assert.fail(`expected ${status}`);
  };
  const ok = { model: "tester", messages: [{ role: "user" as const, content: "hi" }], max_tokens: 2 };
  await rejects(client.chat.completions.create({ ...ok, n: 2 }), 400, "n");
  await rejects(client.chat.completions.create({ ...ok, messages: [] }), 400, "messages");
  await rejects(client.chat.completions.create({ ...ok, temperature: 5 }), 400, "temperature");
  await rejects(client.chat.completions.create({ ...ok, messages: [{ role: "user", content: 42 as never }] }), 400, "messages.0.content");
  await rejects(client.chat.completions.create({ ...ok, max_tokens: 1_000_000 }), 400, "max_tokens");
  await rejects(client.chat.completions.create({ ...ok, messages: [{ role: "user", content: "word ".repeat(1000) }] }), 400, "messages");
  // A long conversation loses its oldest turns instead (as the runtime does); the last one stays.
  const turns = Array.from({ length: 12 }, (_, i) => ({ role: i % 2 ? ("assistant" as const) : ("user" as const), content: `turn ${i} `.repeat(40) }));
  const long = await client.chat.completions.create({ ...ok, messages: [...turns, { role: "user", content: "hi" }] });
  assert.equal(long.usage!.completion_tokens, 2);
  assert.ok(long.usage!.prompt_tokens < 2048, "the prompt was trimmed to fit");
  await rejects(client.chat.completions.create({ ...ok, model: "nobody" }), 404, "model");
  await rejects(new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "wrong", maxRetries: 0 }).models.list(), 401);

  const missing = await call("/v1/models", { headers: { authorization: "" } });
  assert.equal(missing.status, 401);
  assertErrorShape(missing.json, 401);
  assert.equal(missing.json.error.code, "missing_api_key");
  for (const path of ["/admin/agents", "/metrics", "/healthz"]) assert.equal((await call(path, { headers: { authorization: "Bearer nope" } })).status, 401, path);
  assert.equal((await call("/", { headers: { authorization: "" } })).status, 200, "the dashboard's page loads, then asks for the token");

  const badJson = await call("/v1/chat/completions", { method: "POST", body: "{not json" });
  assert.equal(badJson.status, 400);
  assertErrorShape(badJson.json, 400);

  const big = await call("/v1/chat/completions", { method: "POST", body: { ...ok, messages: [{ role: "user", content: "x".repeat(1024 * 1024 + 10) }] } });
  assert.equal(big.status, 413);
  assertErrorShape(big.json, 413);

  const nowhere = await call("/v1/nowhere");
  assert.equal(nowhere.status, 404);
  assertErrorShape(nowhere.json, 404);
  // a body that is not a JSON object says what a body must be (it said "Invalid input: expected object, received string")
  for (const [route, headers, body] of [["/v1/chat/completions", { "content-type": "text/plain" }, "hello"], ["/admin/agents/tester/items", { "content-type": "text/plain" }, "hello"], ["/admin/agents/tester/bakes", {}, "[]"]] as const) {
    const r = await call(route, { method: "POST", body, headers });
    assert.equal(r.status, 400, route);
    assert.match(r.json.error.message, /^the request body must be a JSON object, sent as application\/json \(Invalid input: expected object, received (string|array)\)$/, route);
  }
  // a value that fits none of a union's shapes says what the shapes are (it said "Invalid input")
  const stops = await call("/v1/chat/completions", { method: "POST", body: { ...ok, stop: Array.from({ length: 17 }, (_, i) => `s${i}`) } });
  assert.equal(stops.status, 400);
  assert.equal(stops.json.error.message, "stop: stop must be a string or a list of at most 16 strings");
  const context = await call("/admin/agents/tester/probe", { method: "POST", body: { question: "Who runs the ferry?", context: 5 } });
  assert.equal(context.status, 400);
  assert.match(context.json.error.message, /^context: context must be a string or a list of at most 50 strings/);
  const follow = await call("/admin/agents/tester/bakes/events?follow=maybe");
  assert.equal(follow.status, 400);
  assert.equal(follow.json.error.message, "query.follow: expected true, false, 1 or 0");
  // errors fastify's router meets before any route: they came in fastify's own shape
  const badEncoding = await call("/admin/agents/%E0%A4%A/items");
  assert.equal(badEncoding.status, 400);
  assertErrorShape(badEncoding.json, 400);
  assert.match(badEncoding.json.error.message, /not valid percent-encoding/);
  const longId = await call(`/admin/agents/tester/items/${"a".repeat(5000)}`);
  assert.equal(longId.status, 414);
  assertErrorShape(longId.json, 414);

  const crossSite = await call("/admin/agents", { headers: { origin: "http://evil.example" } });
  assert.equal(crossSite.status, 403);
});

const WEATHER: OpenAI.ChatCompletionTool = {
  type: "function",
  function: { name: "get_weather", description: "Weather for a city.", parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"], additionalProperties: false } },
};
const TIME: OpenAI.ChatCompletionTool = {
  type: "function",
  function: { name: "get_time", parameters: { type: "object", properties: { zone: { type: "string", enum: ["utc", "local"] }, hour: { type: "integer", minimum: 0, maximum: 23 } }, required: ["zone"] } },
};

/** Whether a call's arguments (a JSON string) fit its function's parameters (as the two tools above declare them). */
function fitsTool(call: { function: { name: string; arguments: string } }): boolean {
  const args = JSON.parse(call.function.arguments) as Record<string, unknown>;
  if (call.function.name === "get_weather") return typeof args.city === "string" && Object.keys(args).length === 1;
  if (call.function.name === "get_time") {
    const hourOk = args.hour === undefined || (Number.isInteger(args.hour) && (args.hour as number) >= 0 && (args.hour as number) <= 23);
    return ["utc", "local"].includes(args.zone as string) && hourOk && Object.keys(args).every((k) => k === "zone" || k === "hour");
  }
  return false;
}

test("sampling parameters kiln does not honour are a 400 naming them, not silently ignored; their neutral values pass", async () => {
  const ok = { model: "tester", messages: [{ role: "user", content: "hi" }], max_tokens: 2 };
  for (const [param, value] of [["presence_penalty", 1.5], ["frequency_penalty", -0.5], ["logit_bias", { "50256": -100 }], ["top_logprobs", 3]] as const) {
    const r = await call("/v1/chat/completions", { method: "POST", body: { ...ok, [param]: value } });
    assert.equal(r.status, 400, `${param}: ${r.text}`);
    assertErrorShape(r.json, 400);
    assert.equal(r.json.error.param, param);
    assert.equal(r.json.error.code, "unsupported_parameter");
  }
  // what clients send by default (LangChain's ChatOpenAI sent both penalties as 0)
  const neutral = await call("/v1/chat/completions", { method: "POST", body: { ...ok, presence_penalty: 0, frequency_penalty: 0, logit_bias: {}, top_logprobs: null } });
  assert.equal(neutral.status, 200, neutral.text);
});

test("tool_choice through the API: a forced call is one call whose arguments fit the function; auto and none answer in text", async () => {
  const base = { model: "tester", messages: [{ role: "user" as const, content: "What is the weather in Quillport?" }], tools: [WEATHER, TIME], temperature: 0, max_tokens: 48 };
  // left to itself the random model writes no call
  const auto = await client.chat.completions.create(base);
  assert.equal(auto.choices[0]!.finish_reason, "length");
  assert.equal(auto.choices[0]!.message.tool_calls, undefined);
  assert.ok(auto.choices[0]!.message.content);

  const choices: [OpenAI.ChatCompletionToolChoiceOption, string[]][] = [
    [{ type: "function", function: { name: "get_weather" } }, ["get_weather"]],
    ["required", ["get_weather", "get_time"]],
    [{ type: "allowed_tools", allowed_tools: { mode: "required", tools: [{ type: "function", function: { name: "get_time" } }] } }, ["get_time"]],
  ];
  for (const [tool_choice, names] of choices) {
    const r = await client.chat.completions.create({ ...base, tool_choice });
    const what = JSON.stringify(tool_choice);
    assert.equal(r.choices[0]!.finish_reason, "tool_calls", what);
    const message = r.choices[0]!.message;
    assert.equal(message.content, null, what);
    assert.equal(message.tool_calls?.length, 1, what);
    const call = message.tool_calls![0]! as OpenAI.ChatCompletionMessageFunctionToolCall;
    assert.equal(call.type, "function");
    assert.match(call.id, /^call_/);
    assert.ok(names.includes(call.function.name), `${what}: ${call.function.name}`);
    assert.ok(fitsTool(call), `${what}: ${call.function.arguments}`);
    assert.ok(r.usage!.completion_tokens > 0 && r.usage!.completion_tokens < 48);
  }

  // streamed: no content, the call in a tool_calls delta, the same call as without streaming (greedy)
  const forced = { ...base, tool_choice: { type: "function" as const, function: { name: "get_weather" } } };
  const whole = (await client.chat.completions.create(forced)).choices[0]!.message.tool_calls![0]! as OpenAI.ChatCompletionMessageFunctionToolCall;
  let content = "";
  let finish: string | null = null;
  const deltas: OpenAI.ChatCompletionChunk.Choice.Delta.ToolCall[] = [];
  for await (const chunk of await client.chat.completions.create({ ...forced, stream: true })) {
    content += chunk.choices[0]?.delta?.content ?? "";
    deltas.push(...(chunk.choices[0]?.delta?.tool_calls ?? []));
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  assert.equal(content, "");
  assert.equal(finish, "tool_calls");
  assert.equal(deltas.length, 1);
  assert.equal(deltas[0]!.index, 0);
  assert.deepEqual([deltas[0]!.function?.name, deltas[0]!.function?.arguments], [whole.function.name, whole.function.arguments]);

  // cut off by max_tokens: finish_reason "length", the arguments as far as they got
  const cut = await client.chat.completions.create({ ...forced, max_tokens: 2 });
  assert.equal(cut.choices[0]!.finish_reason, "length");
  const partial = cut.choices[0]!.message.tool_calls![0]! as OpenAI.ChatCompletionMessageFunctionToolCall;
  assert.equal(partial.function.name, "get_weather");
  assert.throws(() => JSON.parse(partial.function.arguments));

  // a tool round in the history reaches the model (kiln's plain protocol: the call as a block, the
  // result as a user turn); with tool_choice "none" the tools are left out and the reply is text
  const round: OpenAI.ChatCompletionMessageParam[] = [
    { role: "user", content: "What is the weather in Quillport?" },
    { role: "assistant", content: null, tool_calls: [{ id: "call_1", type: "function", function: { name: "get_weather", arguments: '{"city":"Quillport"}' } }] },
    { role: "tool", tool_call_id: "call_1", content: "sunny" },
  ];
  const model = runtime.agent("tester").model;
  const kilnRound = [
    { role: "user" as const, content: "What is the weather in Quillport?" },
    { role: "assistant" as const, content: "", tool_calls: [{ id: "call_1", type: "function" as const, function: { name: "get_weather", arguments: { city: "Quillport" } } }] },
    { role: "tool" as const, content: "sunny", tool_call_id: "call_1", name: "get_weather" },
  ];
  const none = await client.chat.completions.create({ ...base, messages: round, tool_choice: "none", max_tokens: 4 });
  assert.equal(none.choices[0]!.message.tool_calls, undefined);
  assert.equal(none.usage!.prompt_tokens, model.tokenizer.applyChatTemplate(toPlainMessages(kilnRound)).length, "the plain rendering, without the tools");
  const next = await client.chat.completions.create({ ...base, messages: round, tool_choice: "required" });
  assert.equal(next.choices[0]!.finish_reason, "tool_calls");
  assert.ok(fitsTool(next.choices[0]!.message.tool_calls![0]! as OpenAI.ChatCompletionMessageFunctionToolCall));
  const specs = [WEATHER, TIME].map((t) => ({ ...t, function: { ...t.function, parameters: t.function.parameters! } })) as KilnToolSpec[];
  const promptText = model.tokenizer.renderChat(toPlainMessages(kilnRound, specs)) + '<tool_call>{"name":"get_';
  assert.equal(next.usage!.prompt_tokens, model.tokenizer.encode(promptText).length, "the tools, the round and the call's opening");
});

test("a tool round (the request ends with a tool's result) captures nothing: a tool's output is not the user's word, though a template without tools renders it as a user turn", async () => {
  const agent = runtime.agent("tester");
  assert.equal(agent.model.tokenizer.supportsTools, false, "the plain protocol: tool results are a user turn");
  const round: OpenAI.ChatCompletionMessageParam[] = [
    { role: "user", content: "What does the page say?" },
    { role: "assistant", content: null, tool_calls: [{ id: "call_1", type: "function", function: { name: "get_weather", arguments: '{"city":"Quillport"}' } }] },
    { role: "tool", tool_call_id: "call_1", content: "My name is Mallory. I live in Vexholm." },
  ];
  for (const tool_choice of ["none", "auto"] as const) {
    const r = (await client.chat.completions.create({ model: "tester", tools: [WEATHER], tool_choice, messages: round, max_tokens: 2, temperature: 0 })) as unknown as { kiln: { captured: string[] } };
    assert.deepEqual(r.kiln.captured, [], tool_choice);
  }
  assert.deepEqual(agent.ledger.items({ text: "Vexholm" }), []);
  assert.deepEqual(agent.ledger.items({ text: "Mallory" }), []);
});

/** The official client's call fails with a 400 naming `param`, and a message matching `message`. */
async function rejects(p: Promise<unknown>, param: string, message: RegExp): Promise<void> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof OpenAI.APIError, String(err));
    assert.equal(err.status, 400, err.message);
    assert.equal((err.error as any).param, param, err.message);
    assert.match(err.message, message);
    return;
  }
  assert.fail(`expected a 400 on ${param}`);
}

test("tool_choice errors are 400s that name the problem; a template kiln cannot prefill refuses a forced call", async () => {
  const ok = { model: "tester", messages: [{ role: "user" as const, content: "hi" }], max_tokens: 8 };
  await rejects(client.chat.completions.create({ ...ok, tools: [WEATHER], tool_choice: { type: "function", function: { name: "get_time" } } }), "tool_choice", /"get_time", which is not among the tools \(get_weather\)/);
  await rejects(client.chat.completions.create({ ...ok, tool_choice: "required" }), "tool_choice", /the request has no tools/);
  await rejects(client.chat.completions.create({ ...ok, tools: [{ type: "custom", custom: { name: "x" } } as never] }), "tools.0.type", /tools must be of type "function"/);
  await rejects(client.chat.completions.create({ ...ok, messages: [{ role: "tool", content: "x" } as never] }), "messages.0.tool_call_id", /tool_call_id/);
  const badArgs: OpenAI.ChatCompletionMessageParam = { role: "assistant", content: null, tool_calls: [{ id: "c1", type: "function", function: { name: "get_weather", arguments: "{city" } }] };
  await rejects(client.chat.completions.create({ ...ok, tools: [WEATHER], messages: [ok.messages[0]!, badArgs, { role: "tool", tool_call_id: "c1", content: "x" }] }), "messages.1.tool_calls.0.function.arguments", /JSON object/);

  const pythonic = writeTestAgent();
  writeFileSync(
    path.join(pythonic.dir, "model", "chat_template.jinja"),
    `{%- if tools %}{{- '<|im_start|>system\nYou may call tools.<|im_end|>\n' }}{%- endif %}{%- for m in messages %}{%- if m.tool_calls %}{{- '<|im_start|>assistant\n[' + m.tool_calls[0].function.name + '(...)]<|im_end|>\n' }}{%- else %}{{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}`,
  );
  const rt = await Runtime.fromFiles(pythonic.file);
  const srv = await createServer(rt, { port: 0 });
  try {
    const c = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "none", maxRetries: 0 });
    await rejects(c.chat.completions.create({ ...ok, tools: [WEATHER], tool_choice: "required" }), "tool_choice", /kiln cannot make this model call a tool: its chat template does not write a tool call as a JSON object/);
    // a call or the JSON: neither can be held to when kiln cannot write the template's calls; strict calls cannot be held either
    const json = { type: "json_object" as const };
    await rejects(c.chat.completions.create({ ...ok, tools: [WEATHER], response_format: json }), "response_format", /kiln cannot combine response_format with tools the model may choose to call on this model: its chat template does not write a tool call as a JSON object.* tool_choice "none"/);
    await rejects(c.chat.completions.create({ ...ok, tools: [{ ...WEATHER, function: { ...WEATHER.function, strict: true } }] }), "tools.0.function.parameters", /kiln cannot hold this model's calls to a strict schema: its chat template does not write a tool call as a JSON object/);
    assert.ok((await c.chat.completions.create({ ...ok, tools: [WEATHER], response_format: json, tool_choice: "none" })).choices[0]!.message.content!.startsWith("{"), "with \"none\" the reply is the JSON");
    const auto = await c.chat.completions.create({ ...ok, temperature: 0, tools: [WEATHER] }); // greedy: a sampled reply may end early
    assert.equal(auto.choices[0]!.finish_reason, "length", "auto still answers");
  } finally {
    await srv.close();
    await rt.stop();
    rmSync(pythonic.dir, { recursive: true, force: true });
  }
});

test("strict tools: parameters kiln cannot enforce are a 400 on the tool naming them; strict arguments are held to the schema, forced or opened in auto mode", async () => {
  const ok = { model: "tester", messages: [{ role: "user" as const, content: "A code?" }], max_tokens: 48, temperature: 0 };
  const coded = { type: "object", properties: { code: { type: "string", maxLength: 4, pattern: "^[A-Z]+$" } }, required: ["code"], additionalProperties: false };
  const tool = (parameters: Record<string, unknown>, strict?: boolean): OpenAI.ChatCompletionTool => ({ type: "function", function: { name: "code", parameters, ...(strict !== undefined ? { strict } : {}) } });
  // checked whatever tool_choice says, as OpenAI checks it
  for (const tool_choice of ["auto", "required", "none"] as const) {
    await rejects(client.chat.completions.create({ ...ok, tools: [WEATHER, tool(coded, true)], tool_choice }), "tools.1.function.parameters", /the parameters of "code" \(strict\) use what kiln's constrained decoding cannot enforce: "pattern" at #\/properties\/code.*set strict false/);
  }
  await rejects(client.chat.completions.create({ ...ok, tools: [tool({ anyOf: [{ type: "object" }, { type: "null" }] }, true)] }), "tools.0.function.parameters", /must be an object schema .* at their root/);
  await rejects(client.chat.completions.create({ ...ok, tools: [tool({ type: "object", properties: { a: { type: "string", minLength: 3, maxLength: 1 } }, required: ["a"] }, true)] }), "tools.0.function.parameters", /cannot be used to constrain its arguments: no value fits/);
  // not strict: what the constraint does not enforce is left out, the rest holds (as before)
  const loose = await client.chat.completions.create({ ...ok, tools: [tool(coded, false)], tool_choice: "required" });
  assert.equal(loose.choices[0]!.finish_reason, "tool_calls");
  // strict, forced: the call fits (greedy), and auto answers in text when the model writes no call
  const strictWeather = { ...WEATHER, function: { ...WEATHER.function, strict: true } };
  const forced = await client.chat.completions.create({ ...ok, tools: [strictWeather, TIME], tool_choice: "required" });
  assert.ok(fitsTool(forced.choices[0]!.message.tool_calls![0]! as OpenAI.ChatCompletionMessageFunctionToolCall));
  const auto = await client.chat.completions.create({ ...ok, tools: [strictWeather, TIME] });
  assert.equal(auto.choices[0]!.finish_reason, "length");

  // Auto mode under the mask: the text is free until the reply opens a call (kiln's plain
  // protocol: "<tool_call>"); from there the call is the template's layout and the strict tool's
  // schema, closed, and the text after it is free again. The random model never opens a call
  // itself, so random logits are driven through the mask from a reply that has.
  const model = runtime.agent("tester").model;
  const tools = [strictWeather, { ...TIME, function: { ...TIME.function, strict: true } }].map((t) => ({ ...t, function: { ...t.function, parameters: t.function.parameters! } })) as KilnToolSpec[];
  // (a mask follows one reply: each walk has its own)
  const autoMode = () => autoCalls(model, toolPrompt(model.tokenizer, [{ role: "user", content: "Weather?" }], tools), tools);
  const vocab = tokenTexts(model.tokenizer, model.config.vocabSize);
  const V = model.config.vocabSize;
  const free = Float32Array.from({ length: V }, () => 1);
  autoMode().constrain!(free, model.tokenizer.encode("Let me look that up"));
  assert.ok(free.every((v, id) => v === 1 || vocab.texts[id]!.includes(">")), "before a call, only tokens that could open one are checked");
  for (const { text, call } of closedCalls(model, autoMode, "Let me look that up.\n<tool_call>")) {
    // the plain protocol's layout (compact, as kiln renders calls), closed; the text after it is free
    assert.ok(text.startsWith(`Let me look that up.\n<tool_call>{"name":"${call.name}","arguments":${JSON.stringify(call.args)}}</tool_call>`), text);
  }
});

/**
 * Random logits driven through an auto-mode mask from a reply that has opened a call, six seeds:
 * each call that closes parses and fits its tool; at least 3 of 6 close within 80 tokens.
 */
function closedCalls(model: LoadedModel, autoMode: () => AutoCalls, opened: string): { text: string; call: ParsedToolCall }[] {
  const V = model.config.vocabSize;
  const vocab = tokenTexts(model.tokenizer, V);
  const closing = (id: number) => (/["}]/.test(vocab.texts[id]!) ? 3 : 0);
  const held: { text: string; call: ParsedToolCall }[] = [];
  for (let seed = 1; seed <= 6; seed++) {
    const prefix = model.tokenizer.encode(opened);
    const calls = autoMode();
    const walk = walkMask(calls.constrain!, { vocabSize: V, eos: model.eosTokenIds, seed, steps: 80, prefix, bias: closing, endLogit: 2 });
    const text = model.tokenizer.decode([...prefix, ...walk.tokens]);
    const parsed = calls.parse(text);
    if (!parsed.toolCalls.length) {
      assert.ok(!text.includes("</tool_call>"), `a closed call parses: ${text}`);
      continue;
    }
    const call = parsed.toolCalls[0]!;
    assert.ok(fitsTool({ function: { name: call.name, arguments: JSON.stringify(call.args) } }), text);
    held.push({ text, call });
  }
  assert.ok(held.length >= 3, `${held.length} of 6 random walks closed their call within 80 tokens`);
  return held;
}

test("auto mode without strict: an opened call is held to what kiln can enforce of its tool's parameters; a schema it cannot use leaves calls free, not refused", async () => {
  const model = runtime.agent("tester").model;
  const loose = [WEATHER, TIME].map((t) => ({ ...t, function: { ...t.function, parameters: t.function.parameters! } })) as KilnToolSpec[];
  const autoMode = (tools: KilnToolSpec[]) => autoCalls(model, toolPrompt(model.tokenizer, [{ role: "user", content: "Weather?" }], tools), tools);
  assert.ok(autoMode(loose).constrain, "non-strict tools' calls get a mask too");
  closedCalls(model, () => autoMode(loose), "Checking.\n<tool_call>");
  const V = model.config.vocabSize;
  const vocab = tokenTexts(model.tokenizer, V);
  // a schema no value fits: strict would be a 400; without strict the arguments are held to an
  // object, beside a strict tool too
  const impossible = { type: "function", function: { name: "code", parameters: { type: "object", properties: { a: { type: "string", minLength: 3, maxLength: 1 } }, required: ["a"] } } } as KilnToolSpec;
  const strictWeather = { ...loose[0]!, function: { ...loose[0]!.function, strict: true } };
  for (const tools of [[impossible], [strictWeather, impossible]]) {
    const calls = autoMode(tools);
    const prefix = model.tokenizer.encode(`<tool_call>{"name":"code","arguments":`);
    const mask = Float32Array.from({ length: V }, () => 1);
    calls.constrain!(mask, prefix);
    assert.ok(mask.every((v, id) => v === -Infinity || vocab.texts[id]!.trimStart().startsWith("{") || !vocab.texts[id]!.trim()), "the arguments open an object");
    assert.deepEqual(calls.parse('<tool_call>{"name": "code", "arguments": {"a": "xyz"}}</tool_call>').toolCalls.map((c) => c.args), [{ a: "xyz" }]);
  }
  const ok = { model: "tester", messages: [{ role: "user" as const, content: "A code?" }], max_tokens: 8, temperature: 0 };
  for (const tools of [[impossible], [strictWeather, impossible]]) {
    const reply = await client.chat.completions.create({ ...ok, tools: tools as OpenAI.ChatCompletionTool[] });
    assert.equal(reply.choices[0]!.finish_reason, "length");
  }
});

// a schema whose strings are bounded, so that even the random model's replies end
const Report = z.object({
  city: z.string().max(10),
  sky: z.enum(["clear", "cloudy", "rain"]),
  temp: z.number().int().min(-30).max(45),
  wind: z.object({ kmh: z.number().min(0).max(200), dir: z.enum(["N", "E", "S", "W"]) }).nullable(),
  tags: z.array(z.string().max(6)).max(3),
});

/** Content deltas joined, the last finish_reason, the chunk count and the last chunk's kiln field. */
async function streamContent(params: OpenAI.ChatCompletionCreateParamsNonStreaming) {
  let content = "";
  let finish: string | null = null;
  let chunks = 0;
  let kiln: any;
  for await (const chunk of await client.chat.completions.create({ ...params, stream: true })) {
    chunks++;
    content += chunk.choices[0]?.delta?.content ?? "";
    finish = chunk.choices[0]?.finish_reason ?? finish;
    kiln = (chunk as any).kiln ?? kiln;
  }
  return { content, finish, chunks, kiln };
}

test("response_format json_schema through the official client: the reply parses and fits the schema, streamed or not; cut off, it says length", async () => {
  const base = { model: "tester", messages: [{ role: "user" as const, content: "The weather in Quillport, as JSON." }], max_tokens: 200 };
  const response_format = zodResponseFormat(Report, "report"); // strict: true, as the client makes it
  const replies = [{ temperature: 0 }, ...[1, 2, 3, 4].map((seed) => ({ temperature: 1, seed }))];
  for (const sampling of replies) {
    const r = await client.chat.completions.parse({ ...base, ...sampling, response_format });
    const what = JSON.stringify(sampling);
    assert.equal(r.choices[0]!.finish_reason, "stop", `${what}: ${r.choices[0]!.message.content}`);
    const content = r.choices[0]!.message.content!;
    assert.ok(Report.safeParse(JSON.parse(content)).success, `${what}: ${content}`);
    assert.ok(Report.safeParse(r.choices[0]!.message.parsed).success, "the client parsed it too");
    assert.equal((r as any).kiln.unenforced, undefined, "nothing of the schema went unchecked");
  }
  // left free, the random model writes no JSON
  const free = await client.chat.completions.create({ ...base, temperature: 0, max_tokens: 24 });
  assert.throws(() => JSON.parse(free.choices[0]!.message.content!));

  // streamed: the deltas join to the same JSON as the reply without streaming (greedy)
  const params = { ...base, temperature: 0, response_format };
  const whole = (await client.chat.completions.create(params)).choices[0]!.message.content!;
  const streamed = await streamContent(params);
  assert.equal(streamed.content, whole);
  assert.equal(streamed.finish, "stop");
  assert.ok(streamed.chunks > 3);

  // cut off by max_tokens: finish_reason "length" and the JSON as far as it got, streamed or not
  for (const format of [response_format, { type: "json_object" as const }]) {
    const cut = await client.chat.completions.create({ ...params, response_format: format, max_tokens: 6 });
    assert.equal(cut.choices[0]!.finish_reason, "length", format.type);
    assert.equal(cut.usage!.completion_tokens, 6);
    const text = cut.choices[0]!.message.content!;
    assert.ok(text.startsWith("{"), text);
    assert.throws(() => JSON.parse(text), text);
    const cutStream = await streamContent({ ...params, response_format: format, max_tokens: 6 });
    assert.deepEqual([cutStream.content, cutStream.finish], [text, "length"]);
  }
});

test("response_format: strict refuses what kiln cannot enforce, naming it; strict false ignores it and says so; tools decide the rest", async () => {
  const ok = { model: "tester", messages: [{ role: "user" as const, content: "A code, as JSON." }], max_tokens: 60, temperature: 0 };
  const coded = { type: "object", properties: { code: { type: "string", maxLength: 4, pattern: "^[A-Z]+$" }, n: { type: "integer", minimum: 0, maximum: 9 } }, required: ["code", "n"], additionalProperties: false };
  const schemaFormat = (schema: Record<string, unknown>, strict?: boolean) => ({ type: "json_schema" as const, json_schema: { name: "coded", schema, ...(strict !== undefined ? { strict } : {}) } });
  await rejects(client.chat.completions.create({ ...ok, response_format: schemaFormat(coded, true) }), "response_format", /"pattern" at #\/properties\/code.*strict false/);
  // a keyword whose value kiln cannot read is not enforced either (it held the reply to nothing, before)
  const misspelt = { type: "object", properties: { n: { type: "int" }, s: { type: "string", maxLength: "4" } }, required: ["n", "s"] };
  await rejects(
    client.chat.completions.create({ ...ok, response_format: schemaFormat(misspelt, true) }),
    "response_format",
    /"type" at #\/properties\/n \(not a type name \(object, array, string, number, integer, boolean, null\): ignored\), "maxLength" at #\/properties\/s \(not a number: ignored\)/,
  );
  for (const strict of [false, undefined]) {
    const loose = await client.chat.completions.create({ ...ok, response_format: schemaFormat(coded, strict) });
    assert.equal(loose.choices[0]!.finish_reason, "stop");
    const value = JSON.parse(loose.choices[0]!.message.content!);
    assert.deepEqual(Object.keys(value).sort(), ["code", "n"]);
    assert.ok(typeof value.code === "string" && value.code.length <= 4 && Number.isInteger(value.n), loose.choices[0]!.message.content!);
    assert.deepEqual((loose as any).kiln.unenforced, [{ keyword: "pattern", at: "#/properties/code" }]);
    const streamed = await streamContent({ ...ok, response_format: schemaFormat(coded, strict) });
    assert.deepEqual(streamed.kiln.unenforced, [{ keyword: "pattern", at: "#/properties/code" }], "the stream's last chunk says so too");
  }
  // oneOf: a discriminated union is enforced exactly; branches a value could fit together are not
  const tagged = { oneOf: [{ type: "object", properties: { kind: { const: "a" }, x: { type: "integer" } }, required: ["kind", "x"] }, { type: "object", properties: { kind: { const: "b" } }, required: ["kind"] }] };
  const union = await client.chat.completions.create({ ...ok, response_format: schemaFormat(tagged, true) });
  assert.ok(["a", "b"].includes(JSON.parse(union.choices[0]!.message.content!).kind));
  await rejects(client.chat.completions.create({ ...ok, response_format: schemaFormat({ oneOf: [{ type: "integer" }, { type: "number" }] }, true) }), "response_format", /"oneOf" at # \(branches a value could fit together/);
  // schemas no reply could fit, or that cannot be read, are refused whatever strict says
  await rejects(client.chat.completions.create({ ...ok, response_format: schemaFormat({ type: "object", properties: { a: { type: "string" } }, required: ["b"], additionalProperties: false }) }), "response_format", /"b" is required but .* no object fits/);
  await rejects(client.chat.completions.create({ ...ok, response_format: schemaFormat({ $ref: "https://example.com/s.json" }) }), "response_format", /only local \$refs/);
  // the request's shape
  await rejects(client.chat.completions.create({ ...ok, response_format: { type: "xml" } as never }), "response_format.type", /response_format must be/);
  await rejects(client.chat.completions.create({ ...ok, response_format: { type: "json_schema", json_schema: { name: "no spaces" } } }), "response_format.json_schema.name", /1 to 64 letters/);
  assert.ok((await client.chat.completions.create({ ...ok, response_format: { type: "text" } })).choices[0]!.message.content);

  // tools the model may call ("auto"): the reply is one call or the format's JSON, streamed or
  // not; a required call is the reply; "none" -> JSON content
  const digit = { type: "object", properties: { n: { type: "integer", minimum: 0, maximum: 9 } }, required: ["n"] };
  const withTools = { ...ok, tools: [WEATHER], response_format: schemaFormat(digit) };
  const either = await client.chat.completions.create({ ...withTools, tools: [TIME], max_tokens: 120 });
  const message = either.choices[0]!.message;
  if (message.tool_calls) {
    assert.deepEqual([either.choices[0]!.finish_reason, message.content], ["tool_calls", null]);
    assert.ok(fitsTool(message.tool_calls[0]! as OpenAI.ChatCompletionMessageFunctionToolCall), JSON.stringify(message.tool_calls));
  } else {
    assert.equal(either.choices[0]!.finish_reason, "stop");
    assert.ok(Number.isInteger(JSON.parse(message.content!).n), message.content!);
  }
  const eitherStreamed = await streamContent({ ...withTools, tools: [TIME], max_tokens: 120 });
  assert.equal(eitherStreamed.content, message.content ?? "", "the same reply, streamed (greedy)");
  // which of the two a reply is, and that both are held to their schemas: random logits through the mask
  const model = runtime.agent("tester").model;
  const specs = [TIME].map((t) => ({ ...t, function: { ...t.function, parameters: t.function.parameters! } })) as KilnToolSpec[];
  const vocab = tokenTexts(model.tokenizer, model.config.vocabSize);
  const seen = new Set<string>();
  for (let seed = 1; seed <= 12; seed++) {
    const calls = autoCalls(model, toolPrompt(model.tokenizer, [{ role: "user", content: "Time?" }], specs), specs, digit);
    const walk = walkMask(calls.constrain!, { vocabSize: model.config.vocabSize, eos: model.eosTokenIds, seed, steps: 150, bias: (id) => (/[<{]/.test(vocab.texts[id]!) ? 2 : 0) });
    if (!walk.ended) continue;
    const text = model.tokenizer.decode(walk.tokens);
    const parsed = calls.parse(text);
    if (parsed.toolCalls.length) {
      seen.add("call");
      assert.equal(parsed.content, "", text);
      assert.ok(fitsTool({ function: { name: parsed.toolCalls[0]!.name, arguments: JSON.stringify(parsed.toolCalls[0]!.args) } }), text);
    } else {
      seen.add("json");
      assert.ok(Number.isInteger(JSON.parse(text).n), text);
    }
  }
  assert.deepEqual([...seen].sort(), ["call", "json"], "random walks wrote both");
  const called = await client.chat.completions.create({ ...withTools, tool_choice: "required" });
  assert.equal(called.choices[0]!.finish_reason, "tool_calls");
  assert.ok(fitsTool(called.choices[0]!.message.tool_calls![0]! as OpenAI.ChatCompletionMessageFunctionToolCall));
  const none = await client.chat.completions.create({ ...withTools, tool_choice: "none" });
  assert.ok(Number.isInteger(JSON.parse(none.choices[0]!.message.content!).n));
});

test("schemas the JSON constraint cannot follow are 400s on response_format and tool_choice, never 500s; nested $refs are answered at once", async () => {
  const ok = { model: "tester", messages: [{ role: "user" as const, content: "JSON, please." }], max_tokens: 16, temperature: 0 };
  const schemaFormat = (schema: Record<string, unknown>) => ({ type: "json_schema" as const, json_schema: { name: "s", schema } });
  const objects = (n: number) => Array.from({ length: n }, (_, i) => ({ type: "object", properties: { [`k${i}`]: { type: "string" } } }));
  const strings = () => ({ anyOf: Array.from({ length: 256 }, (_, i) => ({ type: "string", maxLength: 100 + i })) });
  let deep: Record<string, unknown> = { type: "string" };
  for (let i = 0; i < 200; i++) deep = { type: "array", items: deep };
  const refused: [Record<string, unknown>, RegExp][] = [
    // left recursion (a stack overflow, answered 500, before)
    [{ $ref: "#" }, /refers back to itself without reading any text \(# -> #\)/],
    [{ anyOf: [{ $ref: "#" }, { type: "string" }] }, /\(# -> #\/anyOf\/0 -> #\)/],
    [{ $defs: { a: { $ref: "#/$defs/b" }, b: { $ref: "#/$defs/a" } }, $ref: "#/$defs/a" }, /\(#\/\$defs\/a -> #\/\$defs\/b -> #\/\$defs\/a\)/],
    // nothing fits (the reply was "{" with finish_reason "stop", before)
    [{ type: "object", required: ["a"], additionalProperties: false }, /no value fits the schema: #: "a" is required but additionalProperties is false and there are no properties/],
    [{ type: "object", properties: {}, required: ["a"], additionalProperties: false }, /no value fits the schema: #: "a" is required/],
    [{ type: "object", properties: { s: { type: "string", minLength: 5, maxLength: 3 } }, required: ["s"] }, /its required "s" fits nothing: #\/properties\/s: minLength 5 is above maxLength 3/],
    [{ type: "object", properties: { n: { type: "integer", minimum: 10, maximum: 1 } }, required: ["n"] }, /#\/properties\/n: no integer lies within minimum 10 and maximum 1/],
    // past the matcher's limits
    [{ type: "object", properties: { u: { anyOf: objects(300) } } }, /#\/properties\/u has 300 alternatives .* at most 256/],
    [{ type: "object", properties: { d: deep } }, /nests deeper than 128 levels/],
    // unions that add up at one place: five kinds of array, each of a union of 256 strings, all
    // open after '["' (it used to fail mid-reply, a 500 after the stream had begun)
    [{ anyOf: Array.from({ length: 5 }, (_, k) => ({ type: "array", minItems: k, items: strings() })) }, /too ambiguous .* at \$\[\*\] in the value, .* follow 1280 readings at once \(at most 1024\)/],
    // fixed text the fixture's byte-level vocabulary cannot write: it has no token for "☃" or "é"
    // (it writes them in bytes, none of which the text holds alone), and declared keys are written
    // without escapes (each a 500 after the reply had begun, before)
    [{ enum: ["☃"] }, /#: the enum\/const value "☃" holds "☃" \(U\+2603\), which the model's vocabulary cannot write/],
    [{ type: "object", properties: { n: { anyOf: [{ type: "integer" }, { const: "snow ☃" }] } } }, /#\/properties\/n\/anyOf\/1: the enum\/const value "snow ☃" holds "☃" \(U\+2603\)/],
    [{ type: "object", properties: { café: { type: "string" } } }, /#\/properties\/café: the property name "café" holds "é" \(U\+00E9\), which the model's vocabulary cannot write/],
    [{ type: "object", properties: { 'a"b': { type: "integer" } }, required: ['a"b'] }, /#\/properties\/a"b: the property name "a\\"b" holds "\\"", which JSON writes escaped/],
  ];
  for (const [schema, message] of refused) {
    await rejects(client.chat.completions.create({ ...ok, response_format: schemaFormat(schema) }), "response_format", message);
    const tool = { type: "function" as const, function: { name: "probe", parameters: schema } };
    await rejects(client.chat.completions.create({ ...ok, tools: [tool], tool_choice: { type: "function", function: { name: "probe" } } }), "tool_choice", new RegExp(`the parameters of "probe" cannot be used to constrain its arguments: .*${message.source}`));
  }

  // anyOf of two $refs to the next level, 20 deep: 2^20 readings if followed one by one (seconds
  // and hundreds of MB a character, on the event loop); followed once, it is a string of at most 5
  const defs: Record<string, unknown> = {};
  for (let i = 0; i < 20; i++) defs[`a${i}`] = { anyOf: [{ $ref: `#/$defs/a${i + 1}` }, { $ref: `#/$defs/a${i + 1}` }] };
  defs.a20 = { type: "string", maxLength: 5 };
  const nested = await client.chat.completions.create({ ...ok, max_tokens: 12, response_format: schemaFormat({ $defs: defs, $ref: "#/$defs/a0" }) }, { timeout: 20_000 });
  const value = JSON.parse(nested.choices[0]!.message.content!);
  assert.ok(typeof value === "string" && value.length <= 5, nested.choices[0]!.message.content!);
  assert.equal(nested.choices[0]!.finish_reason, "stop");
});

/**
 * A test agent on the fixture model with the SentencePiece vocabulary, `edit` applied to its
 * tokenizer.json (`rename` moves a piece's id to a new name).
 */
async function metaspaceServer(edit: (tokenizer: any, rename: (from: string, to: string) => void) => void) {
  const agent = writeTestAgent();
  const pieces = path.join(repoRoot(), "tests", "fixtures", "tokenizers", "metaspace");
  const tokenizer = JSON.parse(readFileSync(path.join(pieces, "tokenizer.json"), "utf8"));
  const vocab = tokenizer.model.vocab as Record<string, number>;
  edit(tokenizer, (from, to) => {
    vocab[to] = vocab[from]!;
    delete vocab[from];
  });
  writeFileSync(path.join(agent.dir, "model", "tokenizer.json"), JSON.stringify(tokenizer));
  writeFileSync(path.join(agent.dir, "model", "tokenizer_config.json"), readFileSync(path.join(pieces, "tokenizer_config.json")));
  const rt = await Runtime.fromFiles(agent.file);
  const srv = await createServer(rt, { port: 0, token: TOKEN });
  const close = async () => {
    await srv.close();
    await rt.stop();
    rmSync(agent.dir, { recursive: true, force: true });
  };
  return { srv, close };
}

test("a JSON constraint that cannot go on mid-reply fails the request with 500 constraint_failed, streamed or not, never a stop on broken JSON", async () => {
  // What the checks before generation cannot see: a vocabulary that cannot close an object (its
  // pieces for "}" renamed to unused names). The schema's own text is all writable, so it is
  // accepted, but the reply cannot end.
  const { srv, close } = await metaspaceServer((tokenizer, rename) => {
    for (const [i, piece] of ["}", "<0x7D>", '"}'].entries()) rename(piece, `<gone${i}>`);
    tokenizer.model.merges = tokenizer.model.merges.filter((m: string[]) => !m.join("").includes("}"));
  });
  const c = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: TOKEN, maxRetries: 0 });
  try {
    const closed = { type: "object", properties: { s: { const: "a" } }, required: ["s"] };
    const base = { model: "tester", messages: [{ role: "user" as const, content: "An object, please." }], max_tokens: 16, temperature: 0 };
    const params: OpenAI.ChatCompletionCreateParamsNonStreaming = { ...base, response_format: { type: "json_schema", json_schema: { name: "closed", schema: closed } } };
    const r = await call("/v1/chat/completions", { method: "POST", body: params }, srv.url);
    assert.equal(r.status, 500, r.text);
    assertErrorShape(r.json, 500);
    assert.deepEqual([r.json.error.type, r.json.error.code, r.json.error.param], ["server_error", "constraint_failed", "response_format"]);
    assert.match(r.json.error.message, /could not finish the reply under its JSON constraint: constrained generation: no token of the vocabulary continues the JSON after/);

    // streamed: the first token went out, then an error event; no finish_reason, no [DONE]
    const chunks: OpenAI.ChatCompletionChunk[] = [];
    let failure: unknown;
    try {
      for await (const chunk of await c.chat.completions.create({ ...params, stream: true })) chunks.push(chunk);
    } catch (err) {
      failure = err;
    }
    assert.ok(failure instanceof OpenAI.APIError, String(failure));
    assert.match(failure.message, /could not finish the reply under its JSON constraint/);
    assert.equal((failure.error as any).code, "constraint_failed");
    assert.ok(chunks.length >= 1, "the stream had begun");
    assert.ok(chunks.every((chunk) => chunk.choices[0]?.finish_reason == null), "no chunk says the reply finished");
    // the server goes on answering
    assert.equal((await c.chat.completions.create({ ...base, max_tokens: 2 })).choices[0]!.finish_reason, "length");
  } finally {
    await close();
  }
});

test("fixed text with a character the vocabulary holds only inside a longer token: written with that token, or a 400 naming the character, never a failure mid-reply", async () => {
  // the only piece holding "☃" is "x☃" (an unused piece renamed)
  const { srv, close } = await metaspaceServer((_, rename) => rename("<unused314>", "x☃"));
  try {
    const base = { model: "tester", messages: [{ role: "user" as const, content: "A snowman, please." }], max_tokens: 16, temperature: 0 };
    const asked = (snow: Record<string, unknown>): [OpenAI.ChatCompletionCreateParamsNonStreaming, string][] => [
      [{ ...base, response_format: { type: "json_schema", json_schema: { name: "snow", schema: snow } } }, "response_format"],
      [{ ...base, tools: [{ type: "function", function: { name: "snow", parameters: { type: "object", properties: { s: snow }, required: ["s"] } } }], tool_choice: "required" }, "tool_choice"],
    ];
    // "☃" alone: no token writes it, so the schema is refused before generation
    for (const [params, param] of asked({ enum: ["☃"] })) {
      const r = await call("/v1/chat/completions", { method: "POST", body: params }, srv.url);
      assert.equal(r.status, 400, r.text);
      assertErrorShape(r.json, 400);
      assert.equal(r.json.error.param, param);
      assert.match(r.json.error.message, /the enum\/const value "☃" holds "☃" \(U\+2603\), which the model's vocabulary cannot write: its tokens hold it only beside other characters \("x☃"\)/);
    }
    // "x☃" is written with the token "x☃", not "x" (after which no token starts with "☃")
    const [[format], [forced]] = asked({ enum: ["x☃"] });
    const r = await call("/v1/chat/completions", { method: "POST", body: format! }, srv.url);
    assert.equal(r.status, 200, r.text);
    assert.equal(JSON.parse(r.json.choices[0].message.content), "x☃");
    const f = await call("/v1/chat/completions", { method: "POST", body: forced! }, srv.url);
    assert.equal(f.status, 200, f.text);
    assert.deepEqual(JSON.parse(f.json.choices[0].message.tool_calls[0].function.arguments), { s: "x☃" });
  } finally {
    await close();
  }
});

test("a call whose text the vocabulary cannot write (a '-' in a name it must write, a '/' in the template's closing </tool_call>) is a 400 before generation, never a failure mid-reply", async () => {
  const { srv, close } = await metaspaceServer((_, rename) => {
    rename("<0x2D>", "<goneA>");
    rename("<0x2F>", "<goneB>");
  });
  try {
    const tool = (name: string, strict?: boolean): OpenAI.ChatCompletionTool => ({ type: "function", function: { ...WEATHER.function, name, ...(strict ? { strict } : {}) } });
    const base = { model: "tester", messages: [{ role: "user" as const, content: "The weather?" }], max_tokens: 12, temperature: 0 };
    const post = (body: Record<string, unknown>) => call("/v1/chat/completions", { method: "POST", body: { ...base, ...body } }, srv.url);
    const refused = async (body: Record<string, unknown>, param: string, message: RegExp) => {
      const r = await post(body);
      assert.equal(r.status, 400, r.text);
      assertErrorShape(r.json, 400);
      assert.equal(r.json.error.param, param);
      assert.match(r.json.error.message, message);
    };
    // a forced call of one of two tools: the model writes the name after their shared '{"name":"'
    await refused({ tools: [tool("weather-now"), tool("time-now")], tool_choice: "required" }, "tool_choice", /^kiln cannot make this model call "weather-now": its text before the arguments, "weather-now\\",\\"arguments\\":", holds "-" \(U\+002D\), which the model's vocabulary cannot write: no token holds it whole/);
    // one tool: its whole opening is prefilled, so the model need not write the '-'
    const named = await post({ tools: [tool("weather-now")], tool_choice: { type: "function", function: { name: "weather-now" } } });
    assert.equal(named.status, 200, named.text);
    assert.equal(named.json.choices[0].message.tool_calls[0].function.name, "weather-now");
    // a call the model may open: held to a schema (strict, or beside a JSON format), it would have to write the closing '/'
    const closing = /kiln cannot hold this model's calls of "get_weather": its text after the arguments, "[^"]*<\/tool_call>", holds "\/" \(U\+002F\), which the model's vocabulary cannot write/;
    await refused({ tools: [tool("get_weather", true)] }, "tools.0.function.parameters", closing);
    await refused({ tools: [tool("get_weather")], response_format: { type: "json_object" } }, "response_format", closing);
    // nothing held to a schema: the model answers, free
    assert.equal((await post({ tools: [tool("get_weather")] })).status, 200);
  } finally {
    await close();
  }
});

test("on a SentencePiece (Metaspace) tokenizer, JSON replies and forced calls have the keys, enums and tool names the schema says, not ones with spaces", async () => {
  // the fixture model with a Llama-2-style tokenizer: "▁name" decodes to "name" alone, " name" after a token
  const agent = writeTestAgent();
  const pieces = path.join(repoRoot(), "tests", "fixtures", "tokenizers", "metaspace");
  for (const file of ["tokenizer.json", "tokenizer_config.json"]) writeFileSync(path.join(agent.dir, "model", file), readFileSync(path.join(pieces, file)));
  const rt = await Runtime.fromFiles(agent.file);
  const srv = await createServer(rt, { port: 0 });
  try {
    const c = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "none", maxRetries: 0 });
    const Reply = z.object({ name: z.string().max(12), role: z.enum(["mayor", "baker"]), city: z.string().max(12).nullable() }).strict();
    const base = { model: "tester", messages: [{ role: "user" as const, content: "Who is the mayor?" }], max_tokens: 80 };
    for (const sampling of [{ temperature: 0 }, ...[1, 2, 3, 4, 5].map((seed) => ({ temperature: 1, seed }))]) {
      const what = JSON.stringify(sampling);
      const r = await c.chat.completions.create({ ...base, ...sampling, response_format: zodResponseFormat(Reply, "reply") });
      const content = r.choices[0]!.message.content!;
      assert.equal(r.choices[0]!.finish_reason, "stop", `${what}: ${content}`);
      const parsed = Reply.safeParse(JSON.parse(content));
      assert.ok(parsed.success, `${what}: ${content}: ${parsed.error?.message}`);

      const weather = { type: "function" as const, function: { name: "get_weather", parameters: { type: "object", properties: { city: { type: "string", maxLength: 12 } }, required: ["city"], additionalProperties: false } } };
      const called = await c.chat.completions.create({ ...base, ...sampling, tools: [weather], tool_choice: "required" });
      assert.equal(called.choices[0]!.finish_reason, "tool_calls", what);
      const fn = (called.choices[0]!.message.tool_calls![0]! as OpenAI.ChatCompletionMessageFunctionToolCall).function;
      assert.equal(fn.name, "get_weather", what);
      assert.deepEqual(Object.keys(JSON.parse(fn.arguments)), ["city"], `${what}: ${fn.arguments}`);
    }
  } finally {
    await srv.close();
    await rt.stop();
    rmSync(agent.dir, { recursive: true, force: true });
  }
});

test("a port already in use is named, with what to do", async () => {
  const port = Number(new URL(server.url).port);
  await assert.rejects(createServer(runtime, { port, token: TOKEN }), (err: Error & { code?: string }) => {
    assert.match(err.message, new RegExp(`^cannot serve: 127\\.0\\.0\\.1:${port} is already in use \\(another kiln serve, or another program\\): stop it, or pick another port`));
    assert.equal(err.code, "EADDRINUSE");
    return true;
  });
  assert.equal((await fetch(`${server.url}/healthz`, { headers: { authorization: `Bearer ${TOKEN}` } })).status, 200, "the server already there is untouched");
});

test("a server bound beyond localhost refuses to start without a token", async () => {
  await assert.rejects(createServer(runtime, { host: "0.0.0.0", port: 0 }), /refusing to listen on 0\.0\.0\.0 without a token/);
  const open = await createServer(runtime, { host: "0.0.0.0", port: 0, token: "t" });
  try {
    assert.equal((await fetch(`${open.url}/healthz`)).status, 401);
    assert.equal((await fetch(`${open.url}/healthz`, { headers: { authorization: "Bearer t" } })).status, 200);
  } finally {
    await open.close();
  }
});

test("the queue answers 429 with Retry-After when full; aborted streams free their slots", async () => {
  const small = await createServer(runtime, { port: 0, maxConcurrent: 1, maxQueue: 1 });
  try {
    const controllers = [0, 1, 2, 3].map(() => new AbortController());
    const body = JSON.stringify({ model: "tester", messages: [{ role: "user", content: "Tell me a long story" }], max_tokens: 1500, temperature: 0, stream: true });
    // The first runs at once and the second waits for its slot (its headers come only then), so
    // wait for the three answers that come now: the running stream and two refusals.
    const settled: (Response | Error)[] = [];
    const pending = controllers.map((ac) =>
      fetch(`${small.url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" }, body, signal: ac.signal }).then(
        (r) => void settled.push(r),
        (e: Error) => void settled.push(e),
      ),
    );
    const deadline = Date.now() + 20_000;
    while (settled.length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const responses = [...settled];
    const statuses = responses.map((r) => (r instanceof Response ? r.status : r.message));
    assert.equal(responses.length, 3, `three answers came at once: ${statuses.join(",")}`);
    const refused = responses.filter((r): r is Response => r instanceof Response && r.status === 429);
    assert.equal(refused.length, 2, `two of four refused: ${statuses.join(",")}`);
    for (const r of refused) {
      assert.ok(Number(r.headers.get("retry-after")) >= 1, "Retry-After in seconds");
      const json = (await r.json()) as any;
      assertErrorShape(json, 429);
      assert.equal(json.error.type, "rate_limit_error");
    }
    // Read a little of the running stream, then every client goes away mid-way.
    const running = responses.find((r): r is Response => r instanceof Response && r.status === 200)!;
    const reader = running.body!.getReader();
    await reader.read();
    await reader.read();
    for (const ac of controllers) ac.abort();
    await Promise.all(pending);
    // The running and the queued generation notice their clients left and free the queue.
    const t0 = Date.now();
    for (;;) {
      const q = ((await (await fetch(`${small.url}/healthz`)).json()) as any).queue;
      if (q.running === 0 && q.waiting === 0) break;
      assert.ok(Date.now() - t0 < 5000, `the queue drains after the clients left (still ${JSON.stringify(q)})`);
      await new Promise((r) => setTimeout(r, 20));
    }
    const next = await fetch(`${small.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "tester", messages: [{ role: "user", content: "hi" }], max_tokens: 3, temperature: 0 }),
    });
    assert.equal(next.status, 200);
    assert.equal(((await next.json()) as any).usage.completion_tokens, 3);
    assert.ok(Date.now() - t0 < 5000, "the aborted generations stopped instead of running to 1500 tokens");
    const metrics = await (await fetch(`${small.url}/metrics`)).text();
    assert.match(metrics, /kiln_queue_rejected_total 2/);
    assert.match(metrics, /kiln_generations_total\{agent="tester",finish_reason="abort"\} [1-9]/);
  } finally {
    await small.close();
  }
});

test("a client that aborts a stream mid-way (openai client) does not break the server", async () => {
  const stream = await client.chat.completions.create({ model: "tester", messages: [{ role: "user", content: "Go on" }], max_tokens: 800, temperature: 0, stream: true });
  let n = 0;
  for await (const _chunk of stream) {
    if (++n === 3) {
      stream.controller.abort();
      break;
    }
  }
  const after = await client.chat.completions.create({ model: "tester", messages: [{ role: "user", content: "hi" }], max_tokens: 4, temperature: 0 });
  assert.equal(after.usage!.completion_tokens, 4);
  const health = await call("/healthz");
  assert.deepEqual(health.json.queue, { running: 0, waiting: 0, commands: 0 });
});

test("admin API: remember, bake with SSE progress, versions, diff, rollback, probe, feeds, retract; /metrics", async () => {
  const agents = await call("/admin/agents");
  assert.equal(agents.status, 200);
  assert.equal(agents.json.agents[0].name, "tester");
  assert.equal(agents.json.agents[0].live, "base", "the base model, named as in /healthz and /v1/models (it was null here)");
  assert.equal(agents.json.agents[0].feeds[0].id, "harbor");

  const fact = "The lighthouse keeper is Mira Tolle.";
  const added = await call("/admin/agents/tester/items", { method: "POST", body: { text: fact } });
  assert.equal(added.status, 201);
  assert.equal(added.json.item.status, "pending");
  const again = await call("/admin/agents/tester/items", { method: "POST", body: { text: fact } });
  assert.equal(again.status, 200);
  assert.equal(again.json.added, false);
  assert.equal((await call("/admin/agents/tester/items", { method: "POST", body: { text: "  " } })).status, 400);
  const id = added.json.item.id as string;
  // a mistyped key is a 400 naming it, not left out: "knd" stored a manual item, "reasn" retracted without the reason
  for (const [route, body] of [
    ["/admin/agents/tester/items", { text: "The mill closes at dusk.", knd: "instruction" }],
    [`/admin/agents/tester/items/${id}/retract`, { reasn: "wrong" }],
    ["/admin/agents/tester/probe", { question: "Who keeps the lighthouse?", contxt: fact }],
  ] as const) {
    const bad = await call(route, { method: "POST", body });
    assert.equal(bad.status, 400, `${route}: ${bad.text}`);
    assert.match(bad.json.error.message, /Unrecognized key.*"(knd|reasn|contxt)"/);
  }
  assert.equal(agents.json.agents[0].problem, null);
  assert.equal((await call(`/admin/agents/tester/items/${id}`)).json.status, "pending", "not retracted");
  assert.equal((await call("/admin/agents/tester/items?q=mill")).json.total, 0, "not remembered");
  const toLive = await call("/admin/agents/tester/versions/live/rollback", { method: "POST" });
  assert.equal(toLive.status, 400);
  assert.match(toLive.json.error.message, /"live" is where a rollback starts, not where it goes: name a kept version/);
  const listed = await call("/admin/agents/tester/items?status=pending&q=lighthouse");
  assert.deepEqual(listed.json.items.map((i: any) => i.id), [id]);
  assert.equal((await call(`/admin/agents/tester/items/${id}`)).json.text, fact);
  assert.equal((await call("/admin/agents/tester/items/k_nothing")).status, 404);
  assert.equal((await call("/admin/agents/nobody/items")).status, 404);

  const polled = await call("/admin/agents/tester/feeds/harbor/poll", { method: "POST" });
  assert.equal(polled.status, 200);
  assert.equal(polled.json.added, 2);
  const feed = (await call("/admin/agents/tester/feeds")).json.feeds[0];
  assert.equal(feed.itemsAdded, 2);
  assert.equal(feed.changesWaiting, 0);
  assert.ok(!("revisions" in feed) && !("lastHashes" in feed), "per-item bookkeeping is not shown");

  // Start a bake and follow it.
  const started = await call("/admin/agents/tester/bakes", { method: "POST", body: {} });
  assert.equal(started.status, 202, started.text);
  assert.equal(started.json.status, "running");
  const bakeId = started.json.bakeId as string;
  assert.match(bakeId, /^b_/);
  const joined = await call("/admin/agents/tester/bakes", { method: "POST", body: {} });
  assert.equal(joined.status, 202);
  assert.equal(joined.json.joined, true);
  assert.equal(joined.json.bakeId, bakeId);
  assert.equal((await call("/admin/agents/tester/versions/base/rollback", { method: "POST" })).status, 409, "no rollback during a bake");

  let sawStepMetric = false;
  const watching = (async () => {
    while (runtime.agent("tester").isBaking) {
      if (/kiln_bake_step\{agent="tester"\} \d+/.test((await call("/metrics")).text)) sawStepMetric = true;
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  const events = await readEvents(`/admin/agents/tester/bakes/events?bake=${bakeId}`, (e) => e.event === "outcome");
  await watching;
  assert.equal(events[0]!.event, "state");
  const progress = events.filter((e) => e.event === "progress");
  assert.ok(progress.some((e) => e.data.progress.phase === "train"), "training progress was streamed");
  const outcome = events.at(-1)!;
  assert.equal(outcome.event, "outcome", `the stream ended with an outcome: ${JSON.stringify(events.slice(-3))}`);
  assert.equal(outcome.data.outcome.status, "promoted", JSON.stringify(outcome.data.outcome));
  assert.equal(outcome.data.outcome.version, "v0001");
  assert.ok(outcome.data.bake.history.length > 0, "the outcome carries the per-epoch KL history");
  assert.ok(sawStepMetric, "/metrics showed the bake's training step while it ran");

  // The same bake's events, asked for after it ended, are its outcome at once.
  const late = await readEvents(`/admin/agents/tester/bakes/events?bake=${bakeId}`, () => false, 5000);
  assert.deepEqual(late.map((e) => e.event), ["state", "outcome"]);

  const bakes = await call("/admin/agents/tester/bakes");
  assert.equal(bakes.json.bakes[0].id, bakeId);
  assert.equal(bakes.json.bakes[0].status, "promoted");

  const versions = await call("/admin/agents/tester/versions");
  assert.equal(versions.json.live, "v0001");
  assert.deepEqual(versions.json.versions.map((v: any) => [v.id, v.status]), [["v0001", "live"]]);
  const diff = await call("/admin/agents/tester/versions/diff?from=base&to=v0001");
  assert.equal(diff.status, 200);
  assert.ok(diff.json.gained.some((i: any) => i.id === id));
  assert.deepEqual(diff.json.lost, []);
  assert.equal((await call("/admin/agents/tester/versions/diff?from=v0042")).status, 404);
  // "live", as the export route takes it (it was "no version live", a 404)
  const live = await call("/admin/agents/tester/versions/diff?from=base&to=live");
  assert.equal(live.status, 200, live.text);
  assert.equal(live.json.to, "v0001");
  assert.deepEqual(live.json.gained.map((i: any) => i.id), diff.json.gained.map((i: any) => i.id));

  // The reply says which version answered; the metrics name the live version.
  const reply = await client.chat.completions.create({ model: "tester", messages: [{ role: "user", content: "hi" }], max_tokens: 2 });
  assert.equal((reply as any).kiln.version, "v0001");
  const metrics = await call("/metrics");
  assert.match(metrics.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
  for (const name of [
    "kiln_http_requests_total",
    "kiln_http_request_duration_seconds_bucket",
    "kiln_generated_tokens_total",
    "kiln_generation_tokens_per_second",
    "kiln_queue_depth",
    "kiln_bake_running",
    "kiln_ledger_items",
  ]) {
    assert.match(metrics.text, new RegExp(`^# TYPE ${name.replace(/_bucket$/, "")} `, "m"), name);
  }
  assert.match(metrics.text, /^kiln_agent_live_version\{agent="tester",version="v0001"\} 1$/m);
  assert.equal((await call("/v1/models/tester")).json.kiln.live_version, "v0001");
  assert.match(metrics.text, /^kiln_http_requests_total\{method="POST",route="\/v1\/chat\/completions",status="200"\} \d+$/m);
  assert.match(metrics.text, /^kiln_http_requests_total\{method="GET",route="\/admin\/agents\/:name\/items\/:id",status="404"\} 1$/m);
  assert.match(metrics.text, /^kiln_http_requests_total\{method="GET",route="\/v1\/models",status="401"\} [1-9]/m, "refused requests count");
  assert.match(metrics.text, /^kiln_http_requests_total\{method="POST",route="\/v1\/chat\/completions",status="499"\} [1-9]/m, "streams the client left count as 499");
  assert.match(metrics.text, /^kiln_http_request_duration_seconds_count\{route="\/v1\/chat\/completions"\} [1-9]/m);

  const probe = await call("/admin/agents/tester/probe", { method: "POST", body: { question: "Who keeps the lighthouse?", context: [fact] } });
  assert.equal(probe.status, 200);
  assert.equal(probe.json.version, "v0001");
  assert.equal(typeof probe.json.unprompted, "string");
  assert.equal(typeof probe.json.prompted, "string");
  const proof = await call("/admin/agents/tester/verify", { method: "POST", body: {} });
  assert.equal(proof.status, 200, proof.text);
  assert.equal(proof.json.version, "v0001");
  assert.ok(proof.json.items.length > 0 && proof.json.items.every((i: any) => i.status === "absorbed" && i.probes.length > 0));
  assert.ok(proof.json.items.every((i: any) => typeof i.baseline.passed === "number"), "the base model asked the same probes");
  const onBase = await call("/admin/agents/tester/verify", { method: "POST", body: { version: "base" } });
  assert.deepEqual([onBase.status, onBase.json.version, onBase.json.baseline], [200, "base", undefined]);
  assert.equal(onBase.json.held, proof.json.baseline.held);
  assert.equal((await call("/admin/agents/tester/verify", { method: "POST", body: { version: "v0009" } })).status, 404);
  assert.equal((await call("/admin/agents/tester/verify", { method: "POST", body: { ids: ["k_nope"] } })).status, 404);
  assert.equal((await call("/admin/agents/tester/verify", { method: "POST", body: { ids: "k_nope" } })).status, 400);
  // no ids is not every item: that answered as if ids were left out, running every absorbed item's probes
  const none = await call("/admin/agents/tester/verify", { method: "POST", body: { ids: [] } });
  assert.equal(none.status, 400);
  assert.match(none.json.error.message, /^ids: ids is empty: leave it out to verify every absorbed item$/);
  const one = await call("/admin/agents/tester/probe", { method: "POST", body: { question: "Who keeps the lighthouse?", context: fact } });
  assert.equal(one.status, 200, "one context item may be a plain string");
  assert.equal(one.json.prompted, probe.json.prompted);

  // Rollback to the base model and forward again.
  const back = await call("/admin/agents/tester/versions/base/rollback", { method: "POST" });
  assert.deepEqual(back.json, { previous: "v0001", live: "base" });
  assert.equal((await call("/healthz")).json.agents[0].live, "base");
  assert.equal((await call("/v1/models/tester")).json.kiln.live_version, "base");
  assert.match((await call("/metrics")).text, /kiln_agent_live_version\{agent="tester",version="base"\} 1/);
  // every field naming the live weights or the ones that answered says "base" for the base model (the admin API said null in some)
  assert.equal((await call("/admin/agents")).json.agents[0].live, "base");
  assert.equal((await call("/admin/agents/tester/versions")).json.live, "base");
  assert.equal((await readEvents("/admin/agents/tester/bakes/events", (e) => e.event === "state"))[0]!.data.live, "base");
  assert.equal((await call("/admin/agents/tester/probe", { method: "POST", body: { question: "Who keeps the lighthouse?" } })).json.version, "base");
  assert.equal((await call("/admin/agents/tester/verify", { method: "POST", body: {} })).json.version, "base");
  assert.equal((await call("/admin/agents/tester/versions/v0009/rollback", { method: "POST" })).status, 404);
  assert.equal((await call("/admin/agents/tester/versions/v0001/rollback", { method: "POST" })).json.live, "v0001");

  // Retraction: 202, a consolidation bake from the base model in the background.
  const retracted = await call(`/admin/agents/tester/items/${id}/retract`, { method: "POST", body: { reason: "test" } });
  assert.equal(retracted.status, 202, retracted.text);
  assert.equal(retracted.json.item.status, "retracted");
  assert.equal(retracted.json.outOfService, true, "the weights holding it left service before the answer");
  const consolidation = retracted.json.bake.bakeId as string;
  const done = await readEvents(`/admin/agents/tester/bakes/events?bake=${consolidation}`, (e) => e.event === "outcome");
  assert.equal(done.at(-1)!.data.outcome.status, "promoted");
  assert.equal(done.at(-1)!.data.bake.trigger, "retraction");
  const v2 = done.at(-1)!.data.outcome.version as string;
  const lost = await call(`/admin/agents/tester/versions/diff?from=v0001&to=${v2}`);
  assert.deepEqual(lost.json.lost.map((i: any) => i.id), [id]);
  assert.equal((await call(`/admin/agents/tester/items/${id}/retract`, { method: "POST", body: {} })).status, 409);
  // v0001 holds the retracted item: the versions view says so, and a rollback to it is refused
  const after = (await call("/admin/agents/tester/versions")).json.versions.find((v: any) => v.id === "v0001");
  assert.match(after.cannotGoLive, /v0001 holds retracted item\(s\) .* cannot go live again/);
  assert.equal((await call("/admin/agents/tester/versions/v0001/rollback", { method: "POST" })).status, 409);
});

/** A server on the test agent (no feeds), its runtime and agent; all closed and removed after `body`. */
async function withServedTester(
  serverOpts: Parameters<typeof createServer>[1],
  body: (t: { rt: Runtime; srv: Awaited<ReturnType<typeof createServer>>; agent: Agent }) => Promise<void>,
): Promise<void> {
  const { dir, file } = writeTestAgent({ feeds: [] });
  const rt = await Runtime.fromFiles(file);
  const srv = await createServer(rt, serverOpts);
  try {
    await body({ rt, srv, agent: rt.agent("tester") });
  } finally {
    await srv.close();
    await rt.stop();
    rmSync(dir, { recursive: true });
  }
}

test("admin API: a retraction while a bake that could hold the item runs stops it and answers 202 once the holders left service", () =>
  withServedTester({ port: 0 }, async ({ srv, agent, rt }) => {
    const { item } = await agent.remember("The harbor fee is nine coins.");
    assert.equal((await agent.bake("test")).status, "promoted");
    await agent.remember("The ferry leaves at noon.");
    const baking = agent.bake("test"); // a rolling bake from v0001, which holds the fee
    await new Promise<void>((resolve) => agent.bakeEvents.once("progress", () => resolve()));
    const res = await fetch(`${srv.url}/admin/agents/tester/items/${item.id}/retract`, { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
    const body = (await res.json()) as any;
    assert.equal(res.status, 202, JSON.stringify(body)); // (it was 409 while a bake ran)
    assert.equal(body.outOfService, true);
    assert.equal(agent.live.version, null, "v0001 held it: the base model serves");
    assert.equal((await fetch(`${srv.url}/healthz`).then((r) => r.json()) as any).agents[0].live, "base");
    assert.match((await baking).reasons[0]!, /^bake cancelled: retraction asked for \(retracted through the admin API\)/);
    while (agent.isRetracting) await new Promise((resolve) => setTimeout(resolve, 50)); // its rebuild
    assert.equal(agent.ledger.item(item.id).status, "retracted");
  }));

test("admin API: an item told after a retraction's rebuild started, retracted while it runs: 200 at once, out of service, nothing rebuilt for it", () =>
  withServedTester({ port: 0 }, async ({ srv, agent, rt }) => {
    await agent.remember("The lighthouse keeper is Mira Tolle."); // (for the rebuild to bake)
    const { item: held } = await agent.remember("The harbor fee is nine coins.");
    assert.equal((await agent.bake("test")).status, "promoted");
    const rebuildStarted = new Promise<void>((resolve) => agent.bakeEvents.once("start", () => resolve()));
    const first = agent.retract([held.id]);
    await rebuildStarted;
    const { item } = await agent.remember("The ferry leaves at noon."); // in no bake, in no weights
    const res = await fetch(`${srv.url}/admin/agents/tester/items/${item.id}/retract`, { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
    const body = (await res.json()) as any;
    assert.equal(res.status, 200, JSON.stringify(body)); // (it was 202 after the 20 s wait, outOfService false)
    assert.equal(body.outOfService, true);
    assert.equal(body.item.status, "retracted");
    assert.equal(body.bake.status, "skipped", "no rebuild was started for it");
    assert.ok(agent.isBaking, "answered while the first retraction's rebuild still ran");
    assert.notEqual((await first).status, "failed", "the rebuild was not stopped for it");
  }));

test("admin API: an item nothing holds, retracted while an unrelated bake runs: 200, not a 202 naming that bake", () =>
  withServedTester({ port: 0 }, async ({ srv, agent, rt }) => {
    await agent.remember("The harbor fee is nine coins.");
    const baking = agent.bake("test");
    await new Promise<void>((resolve) => agent.bakeEvents.once("progress", () => resolve()));
    const { item } = await agent.remember("The ferry leaves at noon."); // not in the running bake
    const res = await fetch(`${srv.url}/admin/agents/tester/items/${item.id}/retract`, { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
    const body = (await res.json()) as any;
    assert.equal(res.status, 200, JSON.stringify(body));
    assert.equal(body.bake.status, "skipped");
    assert.equal(body.item.status, "retracted");
    assert.ok(agent.isBaking, "the other bake went on");
    assert.equal((await baking).status, "promoted");
  }));

/**
 * A server on a tester agent whose v0001 holds "The harbor fee is nine coins."; the agent's
 * retractions start only once `letGo()` is called (as one waits for a bake being stopped: seconds).
 */
async function withHeldRetraction(
  serverOpts: Parameters<typeof createServer>[1],
  body: (t: {
    srv: Awaited<ReturnType<typeof createServer>>;
    agent: Agent;
    post: (content: string, extra?: Record<string, unknown>) => Promise<{ status: number; body: any; retryAfter: string | null }>;
    letGo: () => void;
    /** how many retractions were asked for (and are held) */
    asked: () => number;
  }) => Promise<void>,
): Promise<void> {
  let letGo!: () => void;
  const held = new Promise<void>((resolve) => (letGo = resolve));
  await withServedTester(serverOpts, async ({ srv, agent }) => {
    try {
      await agent.remember("The harbor fee is nine coins.");
      assert.equal((await agent.bake("test")).status, "promoted");
      const retract = agent.retract.bind(agent);
      let asked = 0;
      agent.retract = (ids, reason, onOutOfService) => (asked++, held.then(() => retract(ids, reason, onOutOfService)));
      const post = (content: string, extra: Record<string, unknown> = {}) =>
        fetch(`${srv.url}/v1/chat/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ model: "tester", messages: [{ role: "user", content }], max_tokens: 3, temperature: 0, ...extra }),
        }).then(
          async (r) => ({ status: r.status, body: (await r.json()) as any, retryAfter: r.headers.get("retry-after") }),
          (err: Error) => ({ status: 0, body: err.message, retryAfter: null }),
        );
      await body({ srv, agent, post, letGo, asked: () => asked });
      while (agent.isRetracting) await new Promise((resolve) => setTimeout(resolve, 50)); // its rebuild
    } finally {
      letGo(); // (before the server closes: its grace period would wait for a held forget)
    }
  });
}

/** Once a forget's retraction is held: another chat is answered within 5 s, and the forget's reply still waits. */
async function answeredWhileForgetWaits(post: (content: string) => Promise<{ status: number }>, asked: () => number, forgot: () => boolean): Promise<void> {
  while (!asked()) await new Promise((resolve) => setTimeout(resolve, 10));
  const other = await Promise.race([post("hi"), new Promise<null>((resolve) => setTimeout(() => resolve(null), 5000))]);
  assert.equal(other?.status, 200, "another chat was answered while the forget waited");
  assert.equal(forgot(), false, "the forget's reply waits until the weights holding the item left service");
}

test("a chat's \"forget ...\" waiting for the weights holding the item to leave service holds no generation slot: other chats are answered meanwhile", () =>
  withHeldRetraction({ port: 0, maxConcurrent: 1 }, async ({ post, letGo, asked }) => {
    let forgot = false;
    const forget = post("forget the harbor fee").then((r) => ((forgot = true), r));
    await answeredWhileForgetWaits(post, asked, () => forgot);
    letGo();
    const { status, body } = await forget;
    assert.equal(status, 200);
    assert.match(body.choices[0].message.content, /I answer from weights without them now/);
  }));

for (const [what, extra] of [
  ["function tools", { tools: [WEATHER] }],
  ["response_format json_object", { response_format: { type: "json_object" } }],
  ["response_format json_schema, streamed", { response_format: { type: "json_schema", json_schema: { name: "r", schema: { type: "object", properties: { a: { type: "string" } } } } }, stream: true }],
] as const) {
  test(`a "forget ..." in a request with ${what} (a generated reply) holds no generation slot while it waits: other chats are answered meanwhile`, () =>
    withHeldRetraction({ port: 0, maxConcurrent: 1 }, async ({ srv, post, letGo, asked }) => {
      let forgot = false;
      const stream = "stream" in extra;
      const forget = stream
        ? fetch(`${srv.url}/v1/chat/completions`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({ model: "tester", messages: [{ role: "user", content: "forget the harbor fee" }], max_tokens: 3, temperature: 0, ...extra }),
          }).then(async (r) => {
            const text = await r.text(); // (the headers come with the first chunk: the reply is its [DONE])
            forgot = true;
            return { status: r.status, text };
          })
        : post("forget the harbor fee", extra).then((r) => ((forgot = true), { status: r.status, text: JSON.stringify(r.body) }));
      await answeredWhileForgetWaits(post, asked, () => forgot);
      letGo();
      const { status, text } = await forget;
      assert.equal(status, 200, text);
      if (stream) assert.match(text, /data: \[DONE\]/);
      // the reply is the model's (a call, JSON), so kiln.forgot says what the forget did
      assert.match(text, /"forgot":\["Forgetting 1 item\(s\) matching \\"the harbor fee\\": I answer from weights without them now/);
      const q = ((await (await fetch(`${srv.url}/healthz`)).json()) as any).queue;
      assert.deepEqual(q, { running: 0, waiting: 0, commands: 0 }, "the forget's place in the queue came back");
    }));
}

test("chat commands in progress hold up no generation, at most the queue's size of them without a slot: past that a \"forget ...\" keeps its slot, and a flood is refused with 429 and Retry-After", () =>
  withHeldRetraction({ port: 0, maxConcurrent: 1, maxQueue: 1 }, async ({ srv, post, letGo, asked }) => {
    const queue = async () => ((await (await fetch(`${srv.url}/healthz`)).json()) as any).queue;
    const until = async (n: number) => {
      while (asked() < n) await new Promise((resolve) => setTimeout(resolve, 10));
    };
    // one running and one waiting is the queue: two commands go on without a slot
    const forgets = [post("forget the harbor fee")];
    await until(1);
    forgets.push(post("forget about the harbor fee"));
    await until(2);
    assert.equal((await post("hi")).status, 200, "a chat is answered while two commands wait");
    // the third keeps its slot while it waits, the fourth waits for that slot, and then the queue is full
    forgets.push(post("forget the harbor fee"));
    await until(3);
    forgets.push(post("forget about the harbor fee"));
    while ((await queue()).waiting < 1) await new Promise((resolve) => setTimeout(resolve, 10));
    const refused = await Promise.all([post("forget the harbor fee"), post("hi")]);
    for (const r of refused) {
      assert.equal(r.status, 429, `refused: ${JSON.stringify(r.body)}`);
      assertErrorShape(r.body, 429);
      assert.equal(r.body.error.type, "rate_limit_error");
      assert.ok(Number(r.retryAfter) >= 1, `Retry-After in seconds (${r.retryAfter})`);
    }
    assert.equal(asked(), 3, "a refused or waiting forget retracts nothing yet");
    assert.deepEqual(await queue(), { running: 1, waiting: 1, commands: 2 });
    const metrics = await (await fetch(`${srv.url}/metrics`)).text();
    assert.match(metrics, /^kiln_queue_commands 2$/m);
    assert.match(metrics, /^kiln_queue_rejected_total 2$/m);
    letGo();
    for (const r of await Promise.all(forgets)) assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.deepEqual(await queue(), { running: 0, waiting: 0, commands: 0 });
    assert.equal((await post("hi")).status, 200, "the places came back");
  }));

test("a chat's \"forget ...\" that gave its generation slot back still gets the shutdown's grace period to answer", () =>
  withHeldRetraction({ port: 0, maxConcurrent: 1, shutdownGraceMs: 10_000 }, async ({ srv, post, letGo, asked }) => {
    const forget = post("forget the harbor fee");
    while (!asked()) await new Promise((resolve) => setTimeout(resolve, 10));
    const closed = srv.close();
    // the weights leave service within the grace period, though later than the server's last moment for requests in flight (1.5 s)
    await new Promise((resolve) => setTimeout(resolve, 2500));
    letGo();
    const { status, body } = await forget;
    assert.equal(status, 200, JSON.stringify(body));
    assert.match(body.choices[0].message.content, /I answer from weights without them now/);
    await closed;
  }));

test("admin API: versions come a page at a time, newest first, with the total", async () => {
  const many = writeTestAgent();
  const rt = await Runtime.fromFiles(many.file);
  const srv = await createServer(rt, { port: 0 });
  try {
    await rt.agent("tester").ledger.update((d) => {
      for (let n = 1; n <= 230; n++) {
        const id = `v${String(n).padStart(4, "0")}`;
        d.versions.push({ id, parent: n === 1 ? null : `v${String(n - 1).padStart(4, "0")}`, createdAt: new Date().toISOString(), dir: path.join(many.dir, "gone", id), status: "retired", bakeId: `bake_${n}`, items: [], scores: { absorption: 1, retention: 1, persona: null } });
      }
    });
    const get = async (query: string) => {
      const res = await fetch(`${srv.url}/admin/agents/tester/versions${query}`);
      return { status: res.status, json: (await res.json()) as any };
    };
    const all = await get("");
    assert.equal(all.json.total, 230);
    assert.equal(all.json.versions.length, 230, "500 a page by default");
    assert.equal(all.json.live, "base");
    const first = await get("?limit=100");
    assert.deepEqual([first.json.total, first.json.offset, first.json.versions.length], [230, 0, 100]);
    assert.deepEqual([first.json.versions[0].id, first.json.versions[99].id], ["v0230", "v0131"]);
    assert.match(first.json.versions[0].cannotGoLive, /no longer on disk/);
    const last = await get("?limit=100&offset=200");
    assert.deepEqual(last.json.versions.map((v: any) => v.id), Array.from({ length: 30 }, (_, i) => `v${String(30 - i).padStart(4, "0")}`));
    assert.deepEqual((await get("?offset=500")).json.versions, []);
    const bad = await get("?limit=0");
    assert.equal(bad.status, 400);
    assert.equal(bad.json.error.param, "query.limit");
  } finally {
    await srv.close();
    await rt.stop();
    rmSync(many.dir, { recursive: true, force: true });
  }
});

test("without max_tokens, a small model keeps the conversation and the reply gets the room it leaves", async () => {
  const small = writeTestAgent();
  const configFile = path.join(small.dir, "model", "config.json");
  writeFileSync(configFile, JSON.stringify({ ...JSON.parse(readFileSync(configFile, "utf8")), max_position_embeddings: 512 }));
  const rt = await Runtime.fromFiles(small.file);
  const srv = await createServer(rt, { port: 0 });
  try {
    const c = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "none", maxRetries: 0 });
    const history = [
      { role: "user" as const, content: "The lighthouse keeper is Mira Tolle. Remember it." },
      { role: "assistant" as const, content: "Noted." },
      { role: "user" as const, content: "Who keeps the lighthouse?" },
    ];
    const last = await c.chat.completions.create({ model: "tester", messages: history.slice(2), max_tokens: 4, temperature: 0 });
    const all = await c.chat.completions.create({ model: "tester", messages: history, temperature: 0 }); // no max_tokens, as the openai client sends by default
    assert.ok(all.usage!.prompt_tokens > last.usage!.prompt_tokens + 40, `the earlier turns were kept: ${all.usage!.prompt_tokens} vs ${last.usage!.prompt_tokens} tokens`);
    assert.ok(all.usage!.prompt_tokens + all.usage!.completion_tokens <= 512);
  } finally {
    await srv.close();
    await rt.stop();
    rmSync(small.dir, { recursive: true, force: true });
  }
});

test("a reply cut off by the server shutting down says so: an error, never a finished reply", async () => {
  const agent = writeTestAgent();
  const rt = await Runtime.fromFiles(agent.file);
  const srv = await createServer(rt, { port: 0, maxConcurrent: 2, shutdownGraceMs: 0 });
  try {
    const c = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "none", maxRetries: 0 });
    const long = { model: "tester", messages: [{ role: "user" as const, content: "Go on" }], max_tokens: 1500, temperature: 0 };
    const streamed = (async () => {
      for await (const _ of await c.chat.completions.create({ ...long, stream: true })) {
        /* read until the server goes */
      }
    })().then(
      () => "finished",
      (err: Error) => err.message,
    );
    const whole = fetch(`${srv.url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(long) });
    await new Promise((r) => setTimeout(r, 300));
    await srv.close();
    assert.match(await streamed, /shutting down and cut this reply off/);
    const res = await whole;
    assert.equal(res.status, 503);
    assert.match(((await res.json()) as { error: { message: string } }).error.message, /shutting down/);
  } finally {
    await rt.stop();
    rmSync(agent.dir, { recursive: true, force: true });
  }
});

test("shutting down, a reply already being generated gets the grace period to finish while new requests are refused", async () => {
  const agent = writeTestAgent();
  const rt = await Runtime.fromFiles(agent.file);
  const srv = await createServer(rt, { port: 0, shutdownGraceMs: 60_000 });
  try {
    const c = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "none", maxRetries: 0 });
    const chunks: string[] = [];
    let finish: string | null = null;
    const stream = await c.chat.completions.create({ model: "tester", messages: [{ role: "user", content: "Go on" }], max_tokens: 40, temperature: 0, stream: true });
    const read = (async () => {
      for await (const chunk of stream) {
        chunks.push(chunk.choices[0]?.delta?.content ?? "");
        finish = chunk.choices[0]?.finish_reason ?? finish;
      }
    })();
    const closing = srv.close();
    const late = await srv.app.inject({ method: "POST", url: "/v1/chat/completions", payload: { model: "tester", messages: [{ role: "user", content: "hi" }] } });
    assert.equal(late.statusCode, 503);
    assert.equal(late.json().error.code, "shutting_down");
    await read;
    await closing;
    assert.ok(finish === "length" || finish === "stop", `the reply finished (${finish}) rather than being cut off`);
  } finally {
    await rt.stop();
    rmSync(agent.dir, { recursive: true, force: true });
  }
});

test("shutting down: a request waiting for a slot, and one that arrives meanwhile, get 503 shutting_down in OpenAI's shape, never 499", async () => {
  const agent = writeTestAgent();
  const rt = await Runtime.fromFiles(agent.file);
  const srv = await createServer(rt, { port: 0, maxConcurrent: 1, maxQueue: 4 });
  try {
    const long = { model: "tester", messages: [{ role: "user", content: "Go on" }], max_tokens: 1500, temperature: 0 };
    const post = (body: object) => fetch(`${srv.url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    const running = await post({ ...long, stream: true }); // holds the one slot (its headers come once it has it)
    assert.equal(running.status, 200);
    const queued = post(long);
    while (((await (await fetch(`${srv.url}/healthz`)).json()) as any).queue.waiting < 1) await new Promise((r) => setTimeout(r, 10));
    const closing = srv.close();
    // the listener is closing: a request on a connection still open is answered by the server's hooks
    const late = await srv.app.inject({ method: "POST", url: "/v1/chat/completions", payload: long });
    const waited = await queued;
    await running.body?.cancel();
    await closing;
    assert.equal(waited.status, 503, "the queued request is refused because the server stops, not as a client that went away");
    const body = (await waited.json()) as any;
    assertErrorShape(body, 503);
    assert.equal(body.error.code, "shutting_down");
    assert.ok(Number(waited.headers.get("retry-after")) >= 1, "the queued request is told when to try again too");
    assert.equal(late.statusCode, 503);
    assertErrorShape(late.json(), 503);
    assert.equal(late.json().error.code, "shutting_down");
    assert.ok(Number(late.headers["retry-after"]) >= 1, "Retry-After says when to try again");
  } finally {
    await rt.stop();
    rmSync(agent.dir, { recursive: true, force: true });
  }
});

test("every chunk of a stream and the x-kiln-version header name the version the reply is pinned to, across a swap", async () => {
  const agent = writeTestAgent();
  const rt = await Runtime.fromFiles(agent.file);
  const srv = await createServer(rt, { port: 0, maxConcurrent: 2 }); // the request after the swap runs beside the stream
  const adapters = mkdtempSync(path.join(os.tmpdir(), "kiln-pin-"));
  try {
    const live = rt.agent("tester").live;
    const model = rt.agent("tester").model;
    for (const name of ["vA", "vB"]) {
      const a = LoraAdapter.create(model.config, { r: 4, alpha: 8, dropout: 0, useRslora: false, targetModules: ["q_proj", "v_proj"] }, live.fingerprint, 1);
      await saveAdapter(path.join(adapters, name), a, model.dir);
      a.dispose();
    }
    live.swapTo("vA", path.join(adapters, "vA"));
    const gauge = async (name: string) => Number(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\d+)$`, "m").exec(await (await fetch(`${srv.url}/metrics`)).text())?.[1]);
    const tensorsOnOneVersion = await gauge("kiln_tensors");
    assert.ok(tensorsOnOneVersion > 0);
    const post = (body: object) =>
      fetch(`${srv.url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model: "tester", messages: [{ role: "user", content: "Go on" }], temperature: 0, ...body }) });
    const res = await post({ stream: true, max_tokens: 400 });
    assert.equal(res.headers.get("x-kiln-version"), "vA", "the header names the version before the first chunk is read");
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    let text = decoder.decode((await reader.read()).value, { stream: true });
    live.swapTo("vB", path.join(adapters, "vB")); // mid-stream
    const after = await post({ max_tokens: 2 });
    assert.equal(after.headers.get("x-kiln-version"), "vB", "the next request runs on the new version");
    const afterBody = (await after.json()) as any;
    assert.equal(afterBody.kiln.version, "vB");
    assert.equal(afterBody.system_fingerprint, "kiln-vB");
    for (let r = await reader.read(); !r.done; r = await reader.read()) text += decoder.decode(r.value, { stream: true });
    const chunks = text
      .split("\n\n")
      .map((e) => /^data: (.*)$/m.exec(e)?.[1])
      .filter((d): d is string => !!d && d !== "[DONE]")
      .map((d) => JSON.parse(d));
    assert.ok(chunks.length > 2, `a streamed reply: ${text.slice(0, 200)}`);
    for (const c of chunks) assert.equal(c.system_fingerprint, "kiln-vA", `every chunk names the pinned version: ${JSON.stringify(c)}`);
    assert.equal(chunks.at(-1).kiln.version, "vA");
    assert.equal(await gauge("kiln_agent_resident_versions"), 1, "vA is freed when its last request ends");
    assert.ok((await gauge("kiln_prefix_cache_bytes")) > 0, "vB keeps the cache of the reply after the swap");
    live.prefixCacheBytes = 0; // drops vB's kept cache: what vA's stream kept had to go with vA
    assert.equal(await gauge("kiln_tensors"), tensorsOnOneVersion, "no tensor outlives the swap and the requests");
  } finally {
    await srv.close();
    await rt.stop();
    rmSync(agent.dir, { recursive: true, force: true });
    rmSync(adapters, { recursive: true, force: true });
  }
});

test("with batchRows (kiln serve --batch), concurrent requests are decoded together and answer as they do one at a time", async () => {
  const agent = writeTestAgent();
  const rt = await Runtime.fromFiles(agent.file, { batchRows: 4 });
  const srv = await createServer(rt, { port: 0, maxConcurrent: 4 });
  try {
    const questions = ["Go on", "Tell me about the ferry and the mills", "Hi", "What happened in Quillport after the mills closed?"];
    const ask = async (content: string, stream: boolean) => {
      const res = await fetch(`${srv.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "tester", messages: [{ role: "user", content }], temperature: 0, max_tokens: 24, stream, kiln: { capture_facts: false } }),
      });
      assert.equal(res.status, 200);
      if (!stream) return ((await res.json()) as any).choices[0].message.content as string;
      return (await res.text())
        .split("\n\n")
        .map((e) => /^data: (.*)$/m.exec(e)?.[1])
        .filter((d): d is string => !!d && d !== "[DONE]")
        .map((d) => JSON.parse(d).choices?.[0]?.delta?.content ?? "")
        .join("");
    };
    const alone: string[] = [];
    for (const q of questions) alone.push(await ask(q, false));
    const live = rt.agent("tester").live;
    assert.equal(live.batcher!.stats.widest, 1, "one at a time, one row a step");
    const together = await Promise.all(questions.map((q, i) => ask(q, i % 2 === 1)));
    assert.deepEqual(together, alone, "the same replies, streamed or not");
    assert.ok(live.batcher!.stats.widest >= 2, `requests were decoded together (widest batch ${live.batcher!.stats.widest})`);
  } finally {
    await srv.close();
    await rt.stop();
    rmSync(agent.dir, { recursive: true, force: true });
  }
});
