// The OpenAI-compatible API: each agent is a model.
//
//   GET  /v1/models, /v1/models/:model
//   POST /v1/chat/completions   (stream or not; n = 1)
//
// Replies come from the agent's live weights, pinned to the version live when generation
// started; the x-kiln-version header and system_fingerprint (on every chunk of a stream) say
// which version answered, and a `kiln` field says so too (with what facts the user's message
// added to the ledger). Defaults follow OpenAI: temperature 1, top_p 1. A client that disconnects
// aborts its generation.
import { randomUUID } from "node:crypto";
import type { FastifyInstance, FastifyReply } from "fastify";
import { z } from "zod";
import type { ChatMessage } from "../model/tokenizer.js";
import type { Agent } from "../runtime/agent.js";
import { fitConversation, type ChatChunk, type ChatOutcome } from "../runtime/runtime.js";
import { clientSignal, findAgent, type ServerContext } from "./context.js";
import { ApiError, errorBody, validationError } from "./errors.js";
import { SseStream } from "./sse.js";

/** Most completion tokens when the request names no limit (the context may allow fewer). */
export const DEFAULT_MAX_TOKENS = 512;

const TextPart = z.object({ type: z.literal("text"), text: z.string() });

const Message = z.object({
  role: z.enum(["system", "developer", "user", "assistant"], { message: 'role must be "system", "developer", "user" or "assistant" (tools are not supported)' }),
  content: z.union([z.string(), z.array(TextPart).min(1)], { message: "content must be a string or an array of text parts" }),
  name: z.string().optional(),
});

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
  stop: z.union([z.string(), z.array(z.string()).max(16)]).nullish(),
  n: z.number().int().nullish(),
  user: z.string().nullish(),
  logprobs: z.boolean().nullish(),
  tools: z.array(z.unknown()).nullish(),
  response_format: z.object({ type: z.string() }).nullish(),
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
  if (req.tools?.length) throw unsupported("tools", "tools are not supported");
  if (req.response_format && req.response_format.type !== "text") throw unsupported("response_format", `response_format ${req.response_format.type} is not supported (only text)`);
}

function toChatMessages(req: ChatRequest): ChatMessage[] {
  return req.messages.map((m) => ({
    role: m.role === "developer" ? "system" : m.role,
    content: typeof m.content === "string" ? m.content : m.content.map((p) => p.text).join(""),
  }));
}

/**
 * The completion budget. Like the runtime, a conversation too long for the model's positions
 * loses its oldest turns first (fitConversation); a request that still cannot fit (the last
 * message alone, or a max_tokens larger than the room left) is refused as OpenAI refuses it.
 */
function budget(agent: Agent, messages: ChatMessage[], req: ChatRequest): { maxTokens: number } {
  const positions = agent.model.config.maxPositions;
  const asked = req.max_completion_tokens ?? req.max_tokens;
  const param = req.max_completion_tokens != null ? "max_completion_tokens" : "max_tokens";
  let promptTokens: number;
  try {
    // Without max_tokens, the reply's room is what the conversation leaves: reserve only a quarter
    // of the positions when fitting, or a small model's whole history would be cut for it.
    const reserve = asked ?? Math.min(DEFAULT_MAX_TOKENS, Math.floor(positions / 4));
    promptTokens = fitConversation(agent.model, messages, Math.min(reserve, positions)).length;
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

/** Response header naming the weights version that answered ("base" for the base model), streams included. */
export const VERSION_HEADER = "x-kiln-version";

const SHUTTING_DOWN = "the server is shutting down and cut this reply off; send the request again";

const finishReason = (r: "stop" | "length" | "abort") => (r === "length" ? "length" : "stop");

export function openaiRoutes(app: FastifyInstance, ctx: ServerContext): void {
  const started = Math.floor(Date.now() / 1000);
  const modelObject = (a: Agent) => ({
    id: a.name,
    object: "model" as const,
    created: started,
    owned_by: "kiln",
    kiln: { live_version: a.live.version, description: a.config.description ?? null },
  });

  app.get("/v1/models", async () => ({ object: "list", data: [...ctx.runtime.agents.values()].map(modelObject) }));
  app.get<{ Params: { model: string } }>("/v1/models/:model", async (request) => modelObject(findAgent(ctx, request.params.model, "model")));

  app.post("/v1/chat/completions", async (request, reply) => {
    const parsed = ChatRequest.safeParse(request.body ?? {});
    if (!parsed.success) throw validationError(parsed.error);
    const req = parsed.data;
    checkSupported(req);
    const agent = findAgent(ctx, req.model, "model");
    const messages = toChatMessages(req);
    const { maxTokens } = budget(agent, messages, req);
    const signal = clientSignal(ctx, reply);
    const release = await ctx.queue.acquire(signal).catch((err: unknown) => {
      if (err instanceof ApiError && err.status === 429) ctx.metrics.queueRejected();
      throw err;
    });
    const id = `chatcmpl-${randomUUID().replace(/-/g, "")}`;
    const created = Math.floor(Date.now() / 1000);
    const t0 = performance.now();
    const chat = ctx.runtime.chat(agent.name, {
      messages,
      captureFacts: req.kiln?.capture_facts ?? true,
      ...(req.kiln?.conversation_id ? { conversationId: req.kiln.conversation_id } : {}),
      options: {
        maxTokens,
        temperature: req.temperature ?? 1,
        topP: req.top_p ?? 1,
        topK: req.top_k ?? 0,
        ...(req.seed != null ? { seed: req.seed } : {}),
        stopStrings: req.stop == null ? [] : typeof req.stop === "string" ? [req.stop] : req.stop,
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
    const kiln = (o: ChatOutcome) => ({ agent: agent.name, version: o.version, captured: o.captured });
    const fingerprint = (o: ChatOutcome) => `kiln-${o.version ?? "base"}`;

    if (req.stream) {
      // The first piece is generated before the headers go out: generation pins its version
      // (the lease) as it starts, so the headers and every chunk can name the version that answers.
      let first: IteratorResult<ChatChunk, ChatOutcome>;
      try {
        first = await chat.next();
      } catch (err) {
        release();
        throw err;
      }
      const version = first.value.version;
      reply.header(VERSION_HEADER, version ?? "base");
      return streamReply(reply, release, async (sse) => {
        const chunk = (delta: object, finish: string | null, extra: object = {}) => ({
          id,
          object: "chat.completion.chunk",
          created,
          model: agent.name,
          system_fingerprint: `kiln-${version ?? "base"}`,
          choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
          ...extra,
        });
        sse.send(chunk({ role: "assistant", content: "" }, null));
        const outcome = await drain(chat, (text) => sse.send(chunk({ content: text }, null)), first);
        record(outcome);
        // cut off by the server going down: say so, as OpenAI's streams carry errors, never as a finished reply
        if (outcome.result.finishReason === "abort" && ctx.shutdown.aborted) return sse.send(errorBody(503, SHUTTING_DOWN, "shutting_down"));
        if (outcome.result.finishReason === "abort") return; // the client is gone
        sse.send(chunk({}, finishReason(outcome.result.finishReason), { kiln: kiln(outcome) }));
        if (req.stream_options?.include_usage) sse.send({ id, object: "chat.completion.chunk", created, model: agent.name, choices: [], usage: usage(outcome), kiln: kiln(outcome) });
        sse.send("[DONE]");
      });
    }

    try {
      const outcome = await drain(chat);
      record(outcome);
      if (outcome.result.finishReason === "abort" && ctx.shutdown.aborted) throw new ApiError(503, SHUTTING_DOWN, "shutting_down");
      reply.header(VERSION_HEADER, outcome.version ?? "base");
      return {
        id,
        object: "chat.completion",
        created,
        model: agent.name,
        system_fingerprint: fingerprint(outcome),
        choices: [{ index: 0, message: { role: "assistant", content: outcome.result.text, refusal: null }, logprobs: null, finish_reason: finishReason(outcome.result.finishReason) }],
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
      sse.send({ error: { message: `generation failed: ${err.message}`, type: "server_error", param: null, code: "generation_failed" } });
    })
    .finally(() => {
      release();
      sse.end();
    });
  return reply;
}
