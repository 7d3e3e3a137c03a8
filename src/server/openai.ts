// The OpenAI-compatible API: each agent is a model.
//
//   GET  /v1/models, /v1/models/:model
//   POST /v1/chat/completions   (stream or not; n = 1; tools and tool_choice)
//
// Replies come from the agent's live weights, pinned to the version live when generation
// started; the x-kiln-version header and system_fingerprint (on every chunk of a stream) say
// which version answered, and a `kiln` field says so too (with what facts the user's message
// added to the ledger). Defaults follow OpenAI: temperature 1, top_p 1. A client that disconnects
// aborts its generation.
//
// Function tools work as src/agent/tools.ts describes: with tool_choice "auto" (the default when
// tools are given) the model may call them; "required", a named function or allowed_tools in
// "required" mode make the reply one call whose arguments fit the function's parameters
// (constrained decoding), or a 400 when the model's chat template writes calls in a form kiln
// cannot start; "none" keeps the tools out of the prompt and reads no calls from the reply. A
// function with strict true has its parameters checked (checkStrictTools: a 400 on
// tools[i].function.parameters naming what kiln cannot enforce). A call the model opens in "auto"
// mode is held to its tool's parameters (autoCalls): strictly, or as far as kiln can for strict
// false.
//
// response_format {type: "json_object"} or {type: "json_schema", ...} makes the reply's content
// JSON (and one that fits the schema), by the same constrained decoding: see
// src/agent/response-format.ts for what strict means here and what is refused. With tools in
// "auto" mode the reply is one call or that JSON. A reply cut off by max_tokens has
// finish_reason "length" and the JSON as far as it got, as OpenAI's does.
//
// A schema the constraint cannot follow (nothing fits it, a $ref cycle that reads nothing, too
// large, deep or ambiguous, an enum value or declared key with a character the model's vocabulary
// cannot write) is a 400 on response_format, tool_choice or the strict tool's parameters before
// generation. A constraint that
// cannot go on mid-reply (no token of the vocabulary continues the JSON) fails the request with a
// 500 `constraint_failed` (in a stream, an error event and no finish_reason): kiln accepted the
// schema and could not honour it, and a reply of broken JSON with finish_reason "stop" would look
// like success.
import { randomUUID } from "node:crypto";
import type { FastifyInstance, FastifyReply } from "fastify";
import { z } from "zod";
import { autoCalls, checkStrictTools, forceToolCall, newToolCallId, ToolChoiceError, toolPrompt, ToolSchemaError, type AutoCalls, type ForcedCall, type KilnToolSpec, type ParsedToolCall, type ToolChoice, type ToolPrompt } from "../agent/tools.js";
import { ResponseFormatError, structuredReply, type ResponseFormat, type StructuredReply } from "../agent/response-format.js";
import type { ChatMessage } from "../model/tokenizer.js";
import type { Agent } from "../runtime/agent.js";
import { fitConversation, type ChatChunk, type ChatOutcome } from "../runtime/runtime.js";
import { clientSignal, findAgent, type ServerContext } from "./context.js";
import { ApiError, errorBody, shuttingDown, validationError } from "./errors.js";
import { JsonConstraintError } from "../model/json-constraint.js";
import { SseStream } from "./sse.js";
import { versionName } from "../runtime/live.js";

/** Most completion tokens when the request names no limit (the context may allow fewer). */
export const DEFAULT_MAX_TOKENS = 512;

const TextPart = z.object({ type: z.literal("text"), text: z.string() });
const Content = z.union([z.string(), z.array(TextPart).min(1)], { message: "content must be a string or an array of text parts" });

const FunctionRef = z.object({ type: z.literal("function"), function: z.object({ name: z.string() }) });

const ToolCallIn = z.object({
  id: z.string().min(1, "a tool call needs its id"),
  type: z.literal("function"),
  function: z.object({ name: z.string().min(1), arguments: z.string() }),
});

const Message = z
  .object({
    role: z.enum(["system", "developer", "user", "assistant", "tool"], { message: 'role must be "system", "developer", "user", "assistant" or "tool"' }),
    content: Content.nullish(),
    name: z.string().optional(),
    tool_calls: z.array(ToolCallIn).optional(),
    tool_call_id: z.string().optional(),
  })
  .superRefine((m, ctx) => {
    if (m.content == null && !(m.role === "assistant" && m.tool_calls?.length)) {
      ctx.addIssue({ code: "custom", path: ["content"], message: "content is required (it may be null only in an assistant message with tool_calls)" });
    }
    if (m.role === "tool" && !m.tool_call_id) ctx.addIssue({ code: "custom", path: ["tool_call_id"], message: "a tool message needs the tool_call_id of the call it answers" });
    if (m.tool_calls?.length && m.role !== "assistant") ctx.addIssue({ code: "custom", path: ["tool_calls"], message: "only assistant messages hold tool_calls" });
  });

const FunctionTool = z.object({
  type: z.literal("function", { message: 'tools must be of type "function"' }),
  function: z.object({
    name: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, "a function's name is 1 to 64 letters, digits, underscores or dashes"),
    description: z.string().optional(),
    parameters: z.record(z.string(), z.unknown()).optional(),
    strict: z.boolean().nullish(),
  }),
});

const ToolChoiceParam = z.union(
  [
    z.enum(["none", "auto", "required"]),
    FunctionRef,
    z.object({ type: z.literal("allowed_tools"), allowed_tools: z.object({ mode: z.enum(["auto", "required"]), tools: z.array(FunctionRef).min(1) }) }),
  ],
  { message: 'tool_choice must be "none", "auto", "required", {"type": "function", "function": {"name": ...}} or {"type": "allowed_tools", ...}' },
);

const ResponseFormatParam = z.discriminatedUnion(
  "type",
  [
    z.object({ type: z.literal("text") }),
    z.object({ type: z.literal("json_object") }),
    z.object({
      type: z.literal("json_schema"),
      json_schema: z.object({
        name: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, "a response format's name is 1 to 64 letters, digits, underscores or dashes"),
        description: z.string().optional(),
        schema: z.record(z.string(), z.unknown()).optional(),
        strict: z.boolean().nullish(),
      }),
    }),
  ],
  { message: 'response_format must be {"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "json_schema": {...}}' },
);

const ChatRequest = z.object({
  model: z.string().min(1, "model is required"),
  messages: z.array(Message).min(1, "messages must hold at least one message"),
  stream: z.boolean().nullish(),
  stream_options: z.object({ include_usage: z.boolean().optional() }).nullish(),
  max_tokens: z.number().int().positive().nullish(),
  max_completion_tokens: z.number().int().positive().nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().min(0).max(1).nullish(),
  /** extension: top-k sampling (0 = off) */
  top_k: z.number().int().min(0).nullish(),
  seed: z.number().int().nullish(),
  stop: z.union([z.string(), z.array(z.string()).max(16)], { message: "stop must be a string or a list of at most 16 strings" }).nullish(),
  n: z.number().int().nullish(),
  user: z.string().nullish(),
  logprobs: z.boolean().nullish(),
  top_logprobs: z.number().int().min(0).max(20).nullish(),
  presence_penalty: z.number().min(-2).max(2).nullish(),
  frequency_penalty: z.number().min(-2).max(2).nullish(),
  logit_bias: z.record(z.string(), z.number().min(-100).max(100)).nullish(),
  tools: z.array(FunctionTool).nullish(),
  tool_choice: ToolChoiceParam.nullish(),
  parallel_tool_calls: z.boolean().nullish(),
  response_format: ResponseFormatParam.nullish(),
  /** extension: whether facts the user states go into the ledger (default true), and under which conversation */
  kiln: z.object({ capture_facts: z.boolean().optional(), conversation_id: z.string().max(200).optional() }).nullish(),
});
type ChatRequest = z.infer<typeof ChatRequest>;

function unsupported(param: string, message: string): ApiError {
  return new ApiError(400, message, "unsupported_parameter", param);
}

function checkSupported(req: ChatRequest): void {
  if (req.n != null && req.n !== 1) throw unsupported("n", `n must be 1: kiln generates one choice per request (got ${req.n})`);
  if (req.logprobs) throw unsupported("logprobs", "logprobs are not supported");
  // Read and refused rather than dropped with the unknown keys: each asks for other tokens than
  // kiln would sample, and a reply that silently ignored them would pass for one that honoured them.
  if (req.top_logprobs) throw unsupported("top_logprobs", "top_logprobs are not supported (nor are logprobs)");
  for (const p of ["presence_penalty", "frequency_penalty"] as const) {
    if (req[p]) throw unsupported(p, `${p} is not supported: leave it out or send 0 (got ${req[p]})`);
  }
  if (req.logit_bias && Object.keys(req.logit_bias).length) throw unsupported("logit_bias", "logit_bias is not supported: leave it out or send {}");
}

/**
 * The request's tools and tool_choice: the tools the prompt offers and which calls the reply must
 * make. Strict tools' parameters are checked whatever the choice (a 400 on the tool's parameters).
 */
function toolsOf(req: ChatRequest): { tools: KilnToolSpec[]; choice: ToolChoice } {
  const all: KilnToolSpec[] = (req.tools ?? []).map((t) => ({
    type: "function",
    function: {
      name: t.function.name,
      ...(t.function.description ? { description: t.function.description } : {}),
      parameters: t.function.parameters ?? { type: "object", properties: {} },
      ...(t.function.strict ? { strict: true } : {}),
    },
  }));
  try {
    checkStrictTools(all);
  } catch (err) {
    throw schemaFailure(err);
  }
  const c = req.tool_choice ?? (all.length ? "auto" : "none");
  if (c === "none") return { tools: [], choice: { mode: "none" } };
  if (!all.length) {
    if (c === "auto") return { tools: [], choice: { mode: "none" } };
    throw new ApiError(400, "tool_choice asks for a tool call, but the request has no tools", "invalid_value", "tool_choice");
  }
  const known = (name: string) => {
    if (!all.some((t) => t.function.name === name)) {
      throw new ApiError(400, `tool_choice names the function "${name}", which is not among the tools (${all.map((t) => t.function.name).join(", ")})`, "invalid_value", "tool_choice");
    }
    return name;
  };
  if (c === "auto") return { tools: all, choice: { mode: "auto" } };
  if (c === "required") return { tools: all, choice: { mode: "required", names: all.map((t) => t.function.name) } };
  if (c.type === "function") return { tools: all, choice: { mode: "required", names: [known(c.function.name)] } };
  const allowed = c.allowed_tools.tools.map((t) => known(t.function.name));
  const tools = all.filter((t) => allowed.includes(t.function.name));
  return { tools, choice: c.allowed_tools.mode === "required" ? { mode: "required", names: allowed } : { mode: "auto" } };
}

function textOf(content: ChatRequest["messages"][number]["content"]): string {
  if (content == null) return "";
  return typeof content === "string" ? content : content.map((p) => p.text).join("");
}

/** The messages as kiln ChatMessages; a tool result is named after the call it answers. */
function toChatMessages(req: ChatRequest): ChatMessage[] {
  const called = new Map<string, string>();
  return req.messages.map((m, i) => {
    const content = textOf(m.content);
    if (m.role === "tool") {
      const name = called.get(m.tool_call_id!);
      return { role: "tool", content, tool_call_id: m.tool_call_id!, ...(name ? { name } : {}) };
    }
    const msg: ChatMessage = { role: m.role === "developer" ? "system" : m.role, content };
    if (m.tool_calls?.length) {
      msg.tool_calls = m.tool_calls.map((c, j) => {
        called.set(c.id, c.function.name);
        let args: unknown;
        try {
          args = JSON.parse(c.function.arguments || "{}");
        } catch {
          args = undefined;
        }
        if (!args || typeof args !== "object" || Array.isArray(args)) {
          throw new ApiError(400, "a tool call's arguments must be a JSON object (as a string)", "invalid_value", `messages.${i}.tool_calls.${j}.function.arguments`);
        }
        return { id: c.id, type: "function", function: { name: c.function.name, arguments: args as Record<string, unknown> } };
      });
    }
    return msg;
  });
}

/**
 * The completion budget. Like the runtime, a conversation too long for the model's positions
 * loses its oldest turns first (fitConversation); a request that still cannot fit (the last
 * message alone, or a max_tokens larger than the room left) is refused as OpenAI refuses it.
 */
function budget(agent: Agent, prompt: ToolPrompt, req: ChatRequest): { maxTokens: number } {
  const positions = agent.model.config.maxPositions;
  const asked = req.max_completion_tokens ?? req.max_tokens;
  const param = req.max_completion_tokens != null ? "max_completion_tokens" : "max_tokens";
  let promptTokens: number;
  try {
    // Without max_tokens, the reply's room is what the conversation leaves: reserve only a quarter
    // of the positions when fitting, or a small model's whole history would be cut for it.
    const reserve = asked ?? Math.min(DEFAULT_MAX_TOKENS, Math.floor(positions / 4));
    promptTokens = fitConversation(agent.model, prompt.messages, Math.min(reserve, positions), prompt.tools as Record<string, unknown>[] | undefined, prompt.prefill).length;
  } catch (err) {
    throw new ApiError(400, `the messages do not fit the model's chat template: ${(err as Error).message}`, "invalid_messages", "messages");
  }
  const room = positions - promptTokens;
  if (room < 1 || (asked != null && asked > room)) {
    throw new ApiError(
      400,
      `this model's context is ${positions} tokens; the messages take ${promptTokens}${asked != null ? ` and ${param} asks for ${asked}` : ""}. Shorten the messages${asked != null ? ` or lower ${param}` : ""}.`,
      "context_length_exceeded",
      asked != null && room >= 1 ? param : "messages",
    );
  }
  return { maxTokens: asked ?? Math.min(DEFAULT_MAX_TOKENS, room) };
}

/** A request's schema kiln cannot use as asked (a strict tool's parameters, a response_format), as the 400 naming it; other errors as they are. */
function schemaFailure(err: unknown): unknown {
  if (err instanceof ToolSchemaError) return new ApiError(400, err.message, "unsupported_value", `tools.${err.index}.function.parameters`);
  if (err instanceof ResponseFormatError) return new ApiError(400, err.message, "unsupported_value", "response_format");
  return err;
}

/**
 * The constraint for a JSON response_format, or null for text. A strict schema kiln cannot
 * enforce is a 400. With a required call the format is still checked (the request is wrong either
 * way) but not applied: the call is the reply. With tools the model may call, autoCalls folds it
 * into the reply's constraint.
 */
function jsonReply(agent: Agent, req: ChatRequest): StructuredReply | null {
  try {
    return structuredReply(agent.model, req.response_format as ResponseFormat | null | undefined);
  } catch (err) {
    throw schemaFailure(err);
  }
}

/** Response header naming the weights version that answered ("base" for the base model), streams included. */
export const VERSION_HEADER = "x-kiln-version";

const SHUTTING_DOWN = "the server is shutting down and cut this reply off; send the request again";

const finishReason = (r: "stop" | "length" | "abort") => (r === "length" ? "length" : "stop");

/** A JSON constraint that could not go on mid-reply, as the 500 it is (see the top of this file); other errors as they are. */
function constraintFailure(err: unknown, param: string): unknown {
  if (!(err instanceof JsonConstraintError)) return err;
  return new ApiError(500, `kiln could not finish the reply under its JSON constraint: ${err.message}`, "constraint_failed", param);
}

interface ToolCallOut {
  id: string;
  type: "function";
  function: { name: string; arguments: string };
}

const toolCallOut = (c: ParsedToolCall): ToolCallOut => ({ id: c.id, type: "function", function: { name: c.name, arguments: JSON.stringify(c.args) } });

/**
 * A forced reply as the call it made. One stopped before its arguments were finished (max_tokens,
 * a stop sequence) keeps what was written as its arguments, as OpenAI's replies cut off by
 * max_tokens do; its finish_reason says why it stopped.
 */
function forcedReply(forced: ForcedCall, o: ChatOutcome): { toolCalls: ToolCallOut[]; finish: string } {
  const call = forced.read(o.result.text);
  if (call.complete) return { toolCalls: [toolCallOut({ type: "tool_call", id: newToolCallId(), name: call.name, args: call.args })], finish: "tool_calls" };
  const partial: ToolCallOut[] = call.name ? [{ id: newToolCallId(), type: "function", function: { name: call.name, arguments: call.argumentsText } }] : [];
  return { toolCalls: partial, finish: finishReason(o.result.finishReason) };
}

export function openaiRoutes(app: FastifyInstance, ctx: ServerContext): void {
  const started = Math.floor(Date.now() / 1000);
  const modelObject = (a: Agent) => ({
    id: a.name,
    object: "model" as const,
    created: started,
    owned_by: "kiln",
    // "base" for the base model, as /healthz, /metrics, the dashboard and x-kiln-version name it
    kiln: { live_version: versionName(a.live.version), description: a.config.description ?? null },
  });

  app.get("/v1/models", async () => ({ object: "list", data: [...ctx.runtime.agents.values()].map(modelObject) }));
  app.get<{ Params: { model: string } }>("/v1/models/:model", async (request) => modelObject(findAgent(ctx, request.params.model, "model")));

  app.post("/v1/chat/completions", async (request, reply) => {
    const parsed = ChatRequest.safeParse(request.body ?? {});
    if (!parsed.success) throw validationError(parsed.error);
    const req = parsed.data;
    checkSupported(req);
    const agent = findAgent(ctx, req.model, "model");
    const { tools, choice } = toolsOf(req);
    const prompt = toolPrompt(agent.model.tokenizer, toChatMessages(req), tools);
    let forced: ForcedCall | undefined;
    if (choice.mode === "required") {
      try {
        forced = forceToolCall(agent.model, prompt, tools, choice.names);
      } catch (err) {
        if (err instanceof ToolChoiceError) throw new ApiError(400, err.message, "unsupported_parameter", "tool_choice");
        throw err;
      }
      prompt.prefill = forced.prefill;
    }
    const format = jsonReply(agent, req); // checked even where a required call makes it moot
    const structured = forced ? null : format;
    let auto: AutoCalls | undefined;
    if (choice.mode === "auto") {
      try {
        auto = autoCalls(agent.model, prompt, tools, structured?.schema);
      } catch (err) {
        throw schemaFailure(err);
      }
    }
    const constrain = forced?.constrain ?? (auto ? auto.constrain : structured?.constrain);
    const { maxTokens } = budget(agent, prompt, req);
    const signal = clientSignal(ctx, reply);
    const slot = await ctx.queue.acquire(signal).catch((err: unknown) => {
      if (err instanceof ApiError && err.status === 429) ctx.metrics.queueRejected();
      throw err;
    });
    // A command's reply gives the slot back as it starts (a "forget ..." after a generated reply,
    // as it starts waiting), and is still awaited by a shutdown; past the queue's limit of such
    // commands it keeps the slot (src/server/queue.ts)
    let unslotted: (() => void) | undefined;
    const handBack = () => {
      unslotted ??= ctx.queue.goOnWithoutSlot();
      if (unslotted) slot();
    };
    const release = () => {
      slot();
      unslotted?.();
    };
    const id = `chatcmpl-${randomUUID().replace(/-/g, "")}`;
    const created = Math.floor(Date.now() / 1000);
    const t0 = performance.now();
    const chat = ctx.runtime.chat(agent.name, {
      messages: prompt.messages,
      ...(prompt.tools ? { tools: prompt.tools as unknown as Record<string, unknown>[] } : {}),
      ...(forced ? { prefill: forced.prefill } : {}),
      // only the user's own message is read for facts: a tool round's result is no word of the user's
      // (a template without tools renders it as a user turn, which the runtime would take for one)
      captureFacts: (req.kiln?.capture_facts ?? true) && req.messages.at(-1)?.role === "user",
      ...(req.kiln?.conversation_id ? { conversationId: req.kiln.conversation_id } : {}),
      onCommand: handBack, // (what is left of the reply, seconds for a "forget ...", waits without the slot)
      options: {
        maxTokens,
        temperature: req.temperature ?? 1,
        topP: req.top_p ?? 1,
        topK: req.top_k ?? 0,
        ...(req.seed != null ? { seed: req.seed } : {}),
        stopStrings: req.stop == null ? [] : typeof req.stop === "string" ? [req.stop] : req.stop,
        ...(constrain ? { constrain } : {}),
        signal,
      },
    });
    const record = (o: ChatOutcome) =>
      ctx.metrics.generation(agent.name, {
        promptTokens: o.result.promptTokens,
        completionTokens: o.result.tokens.length,
        seconds: (performance.now() - t0) / 1000,
        finishReason: o.result.finishReason,
      });
    const usage = (o: ChatOutcome) => ({ prompt_tokens: o.result.promptTokens, completion_tokens: o.result.tokens.length, total_tokens: o.result.promptTokens + o.result.tokens.length });
    const kiln = (o: ChatOutcome) => ({
      agent: agent.name,
      version: versionName(o.version),
      captured: o.captured,
      ...(o.forgot ? { forgot: o.forgot } : {}), // a "forget ..." in a message the model answered (tools, JSON)
      // what the response_format's schema asked that the reply was not held to (strict false)
      ...(structured?.unenforced.length ? { unenforced: structured.unenforced } : {}),
    });
    const fingerprint = (o: ChatOutcome) => `kiln-${versionName(o.version)}`;
    const constrainedBy = forced ? "tool_choice" : structured ? "response_format" : "tools";
    /** An error that ended generation, as it is answered (a 500 is logged: the error handler logs only errors it makes 500s of). */
    const failed = (err: unknown) => {
      if (err instanceof JsonConstraintError) request.log.error(err);
      return constraintFailure(err, constrainedBy);
    };
    /** With parallel_tool_calls false, a reply that wrote several calls keeps the first. */
    const allowedCalls = (calls: ParsedToolCall[]) => (req.parallel_tool_calls === false ? calls.slice(0, 1) : calls);

    if (req.stream) {
      // The first piece is generated before the headers go out: generation pins its version
      // (the lease) as it starts, so the headers and every chunk can name the version that answers.
      let first: IteratorResult<ChatChunk, ChatOutcome>;
      try {
        first = await chat.next();
      } catch (err) {
        release();
        throw failed(err);
      }
      const version = first.value.version;
      reply.header(VERSION_HEADER, versionName(version));
      return streamReply(reply, release, async (sse) => {
        const chunk = (delta: object, finish: string | null, extra: object = {}) => ({
          id,
          object: "chat.completion.chunk",
          created,
          model: agent.name,
          system_fingerprint: `kiln-${versionName(version)}`,
          choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
          ...extra,
        });
        sse.send(chunk({ role: "assistant", content: forced ? null : "" }, null));
        // A forced call is sent whole at the end; with tools, a possible call is held back until it is known.
        const calls = auto ? auto.stream() : null;
        const show = (text: string) => {
          const shown = forced ? "" : calls ? calls.push(text) : text;
          if (shown) sse.send(chunk({ content: shown }, null));
        };
        let outcome: ChatOutcome;
        try {
          outcome = await drain(chat, show, first);
        } catch (err) {
          throw constraintFailure(err, constrainedBy); // streamReply logs it and sends it as an event
        }
        record(outcome);
        // cut off by the server going down: say so, as OpenAI's streams carry errors, never as a finished reply
        if (outcome.result.finishReason === "abort" && ctx.shutdown.aborted) return sse.send(errorBody(503, SHUTTING_DOWN, "shutting_down"));
        if (outcome.result.finishReason === "abort") return; // the client is gone
        let finish = finishReason(outcome.result.finishReason);
        let toolCalls: ToolCallOut[] = [];
        if (forced) ({ toolCalls, finish } = forcedReply(forced, outcome));
        else if (calls) {
          const end = calls.finish();
          if (end.rest) sse.send(chunk({ content: end.rest }, null));
          toolCalls = allowedCalls(end.toolCalls).map(toolCallOut);
          if (toolCalls.length) finish = "tool_calls";
        }
        if (toolCalls.length) sse.send(chunk({ tool_calls: toolCalls.map((c, index) => ({ index, ...c })) }, null));
        sse.send(chunk({}, finish, { kiln: kiln(outcome) }));
        if (req.stream_options?.include_usage) sse.send({ id, object: "chat.completion.chunk", created, model: agent.name, choices: [], usage: usage(outcome), kiln: kiln(outcome) });
        sse.send("[DONE]");
      });
    }

    try {
      let outcome: ChatOutcome;
      try {
        outcome = await drain(chat);
      } catch (err) {
        throw failed(err);
      }
      record(outcome);
      if (outcome.result.finishReason === "abort" && ctx.shutdown.aborted) throw shuttingDown(SHUTTING_DOWN);
      reply.header(VERSION_HEADER, versionName(outcome.version));
      let content: string | null = outcome.result.text;
      let finish = finishReason(outcome.result.finishReason);
      let toolCalls: ToolCallOut[] = [];
      if (forced) {
        ({ toolCalls, finish } = forcedReply(forced, outcome));
        content = null;
      } else if (auto) {
        const parsedCalls = auto.parse(content);
        if (parsedCalls.toolCalls.length) {
          toolCalls = allowedCalls(parsedCalls.toolCalls).map(toolCallOut);
          content = parsedCalls.content || null;
          finish = "tool_calls";
        }
      }
      return {
        id,
        object: "chat.completion",
        created,
        model: agent.name,
        system_fingerprint: fingerprint(outcome),
        choices: [{ index: 0, message: { role: "assistant", content, refusal: null, ...(toolCalls.length ? { tool_calls: toolCalls } : {}) }, logprobs: null, finish_reason: finish }],
        usage: usage(outcome),
        kiln: kiln(outcome),
      };
    } finally {
      release();
    }
  });
}

/**
 * Runs a chat to its end, handing each piece of text to `onText`. Between tokens it yields to
 * the event loop, so other requests are accepted and a client that went away is noticed while
 * the CPU-bound generation runs.
 */
async function drain(chat: AsyncGenerator<{ text: string }, ChatOutcome>, onText?: (text: string) => void, first?: IteratorResult<{ text: string }, ChatOutcome>): Promise<ChatOutcome> {
  for (let pulled = first; ; pulled = undefined) {
    const r = pulled ?? (await chat.next());
    if (r.done) return r.value;
    if (r.value.text && onText) onText(r.value.text);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/** Opens an SSE reply and runs `body`; an error after the headers went out is sent as an event. */
async function streamReply(reply: FastifyReply, release: () => void, body: (sse: SseStream) => Promise<void>): Promise<FastifyReply> {
  const sse = SseStream.open(reply);
  void body(sse)
    .catch((err: Error) => {
      reply.log.error(err);
      if (err instanceof ApiError) sse.send(errorBody(err.status, err.message, err.code, err.param));
      else sse.send({ error: { message: `generation failed: ${err.message}`, type: "server_error", param: null, code: "generation_failed" } });
    })
    .finally(() => {
      release();
      sse.end();
    });
  return reply;
}
