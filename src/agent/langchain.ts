// LangChain chat model over a kiln agent's live weights. `KilnChatModel` is a BaseChatModel: it
// converts LangChain messages to kiln ChatMessages, runs Runtime.chat (greedy by default, pinned
// to the live version) and reports the weights version, finish reason and token usage.
//
// Tools (`bindTools`, used by createAgent from "langchain"):
//  - where the model's chat template renders `tools` (Hermes/Qwen style), the tool specs go into
//    the template as OpenAI-format function definitions and earlier tool calls / results are
//    passed as structured messages;
//  - otherwise the plain-text protocol below is used: a system section lists the tools as JSON
//    schemas and asks for `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks; tool
//    results come back as user turns holding `<tool_response>` blocks (templates without tool
//    support often accept only user/assistant/system roles).
// In both cases `<tool_call>` blocks in the output become AIMessage.tool_calls.
import { randomUUID } from "node:crypto";
import type { CallbackManagerForLLMRun } from "@langchain/core/callbacks/manager";
import type { BaseLanguageModelInput } from "@langchain/core/language_models/base";
import { BaseChatModel, type BaseChatModelCallOptions, type BaseChatModelParams, type BindToolsInput, type LangSmithParams } from "@langchain/core/language_models/chat_models";
import { convertChunksToEvents } from "@langchain/core/language_models/compat";
import type { ChatModelStreamEvent } from "@langchain/core/language_models/event";
import { AIMessage, AIMessageChunk, ChatMessage as LCChatMessage, type BaseMessage, type ToolCall, type ToolCallChunk, type UsageMetadata } from "@langchain/core/messages";
import { ChatGenerationChunk, type ChatResult } from "@langchain/core/outputs";
import type { Runnable, RunnableConfig } from "@langchain/core/runnables";
import { convertToOpenAITool } from "@langchain/core/utils/function_calling";
import type { GenerateOptions } from "../model/generate.js";
import type { LoadedModel } from "../model/load.js";
import type { ChatMessage } from "../model/tokenizer.js";
import type { ChatChunk, ChatOutcome, Runtime } from "../runtime/runtime.js";

// --- tool specs and the <tool_call> format ---

/** An OpenAI-format function definition, the shape Hugging Face chat templates take as `tools`. */
export interface KilnToolSpec {
  type: "function";
  function: { name: string; description?: string; parameters: Record<string, unknown> };
}

export const TOOL_CALL_OPEN = "<tool_call>";
export const TOOL_CALL_CLOSE = "</tool_call>";

/** Normalises anything bindTools accepts (LangChain tools, OpenAI specs, {name, parameters}). */
export function toToolSpec(tool: BindToolsInput): KilnToolSpec {
  const raw = convertToOpenAITool(tool as Parameters<typeof convertToOpenAITool>[0]) as unknown as Record<string, unknown>;
  const fn = (raw.type === "function" && raw.function ? raw.function : raw) as { name?: unknown; description?: unknown; parameters?: unknown };
  if (typeof fn.name !== "string" || !fn.name) throw new Error(`bindTools: a tool has no name (${JSON.stringify(raw).slice(0, 120)})`);
  const parameters = { ...((fn.parameters as Record<string, unknown> | undefined) ?? { type: "object", properties: {} }) };
  delete parameters.$schema; // noise in a prompt
  return { type: "function", function: { name: fn.name, ...(typeof fn.description === "string" ? { description: fn.description } : {}), parameters } };
}

/** The system section of the plain-text tool protocol (for templates without tool support). */
export function renderToolProtocol(tools: KilnToolSpec[]): string {
  const lines = tools.map((t) => JSON.stringify({ name: t.function.name, description: t.function.description ?? "", parameters: t.function.parameters }));
  return [
    "# Tools",
    "You can call these tools (JSON schemas):",
    ...lines,
    "To call a tool, reply with one block per call:",
    `${TOOL_CALL_OPEN}{"name": "<tool name>", "arguments": {<arguments as JSON>}}${TOOL_CALL_CLOSE}`,
    "Results come back in <tool_response> blocks. If no tool is needed, answer directly.",
  ].join("\n");
}

export interface ParsedToolCalls {
  /** the text with well-formed blocks removed; the whole text, unchanged, when none parsed */
  content: string;
  toolCalls: ToolCall[];
}

function parseCallJson(body: string): { name: string; args: Record<string, unknown> } | null {
  let v: unknown;
  try {
    v = JSON.parse(body.trim());
  } catch {
    return null;
  }
  if (!v || typeof v !== "object" || Array.isArray(v)) return null;
  const o = v as Record<string, unknown>;
  if (typeof o.name !== "string" || !o.name) return null;
  let args = o.arguments ?? o.parameters ?? {};
  if (typeof args === "string") {
    try {
      args = JSON.parse(args);
    } catch {
      return null;
    }
  }
  if (!args || typeof args !== "object" || Array.isArray(args)) return null;
  return { name: o.name, args: args as Record<string, unknown> };
}

function newToolCallId(): string {
  return `call_${randomUUID().replace(/-/g, "").slice(0, 24)}`;
}

/**
 * Tool calls in the Hermes/Qwen format: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
 * one block per call (a last block left unclosed at the end of the output is accepted too).
 * Malformed blocks stay in the content as plain text; when no block parses, the content is the
 * text unchanged. Otherwise the content is the text before the first block (trailing space
 * dropped) and whatever is left after the blocks, joined by a newline.
 */
export function parseToolCalls(text: string): ParsedToolCalls {
  const at = text.indexOf(TOOL_CALL_OPEN);
  if (at < 0) return { content: text, toolCalls: [] };
  const before = text.slice(0, at).trimEnd();
  const tail = text.slice(before.length);
  const toolCalls: ToolCall[] = [];
  let rest = "";
  let pos = 0;
  while (pos < tail.length) {
    const open = tail.indexOf(TOOL_CALL_OPEN, pos);
    if (open < 0) break;
    const close = tail.indexOf(TOOL_CALL_CLOSE, open + TOOL_CALL_OPEN.length);
    const end = close < 0 ? tail.length : close + TOOL_CALL_CLOSE.length;
    const body = tail.slice(open + TOOL_CALL_OPEN.length, close < 0 ? tail.length : close);
    const call = parseCallJson(body);
    rest += tail.slice(pos, open);
    if (call) toolCalls.push({ type: "tool_call", id: newToolCallId(), name: call.name, args: call.args });
    else rest += tail.slice(open, end);
    pos = end;
  }
  rest += tail.slice(pos);
  if (!toolCalls.length) return { content: text, toolCalls: [] };
  const left = rest.trim();
  return { content: before && left ? `${before}\n${left}` : before + left, toolCalls };
}

// --- templates ---

/** A message as tool-aware templates read it (OpenAI-style fields). */
export interface TemplateMessage {
  role: ChatMessage["role"];
  content: string;
  tool_calls?: { id?: string; type: "function"; function: { name: string; arguments: Record<string, unknown> } }[];
  tool_call_id?: string;
  name?: string;
}

// --- message conversion ---

function roleOf(m: BaseMessage): ChatMessage["role"] {
  const type = m.getType();
  switch (type) {
    case "system":
    case "developer":
      return "system";
    case "human":
      return "user";
    case "ai":
      return "assistant";
    case "tool":
      return "tool";
    case "generic": {
      const role = (m as LCChatMessage).role;
      if (role === "user" || role === "human") return "user";
      if (role === "assistant" || role === "ai") return "assistant";
      if (role === "system" || role === "developer") return "system";
      if (role === "tool") return "tool";
      throw new Error(`kiln: unsupported chat message role "${role}"`);
    }
    default:
      throw new Error(`kiln: unsupported message type "${type}"`);
  }
}

/** Content parts that carry media: a text-only model cannot read them. */
const MEDIA_PARTS = new Set(["image", "audio", "video", "file", "text-plain"]);

/**
 * A message's text. kiln's models read text only, so a part they cannot read (an image, audio, a
 * file, or a part of an unknown type in a human, system or tool message) is an error rather than
 * silently dropped: the model would answer as if it had seen it. In AI messages, reasoning and
 * tool-call parts are left out (tool calls come from `tool_calls`). Parts are read as LangChain
 * normalises them (`contentBlocks`), so OpenAI- and Anthropic-style parts are recognised too.
 */
export function textOf(m: BaseMessage): string {
  if (typeof m.content === "string") return m.content;
  const ai = m.getType() === "ai";
  let text = "";
  for (const block of m.contentBlocks) {
    if (block.type === "text") text += (block as { text?: string }).text ?? "";
    else if (!ai || MEDIA_PARTS.has(block.type)) {
      throw new Error(
        `kiln: a ${m.getType()} message has a content part of type "${block.type}"; kiln's models read text only, so send text parts ` +
          `(an image, audio or a file would be ignored and the reply would not be about it)`,
      );
    }
  }
  return text;
}

function toolCallsOf(m: BaseMessage): ToolCall[] {
  return AIMessage.isInstance(m) ? (m.tool_calls ?? []) : [];
}

function callBlock(c: ToolCall): string {
  return `${TOOL_CALL_OPEN}${JSON.stringify({ name: c.name, arguments: c.args })}${TOOL_CALL_CLOSE}`;
}

/**
 * LangChain messages as plain ChatMessages: tool calls become `<tool_call>` text in the assistant
 * turn, tool results become a user turn of `<tool_response>` blocks (consecutive ones merged), and
 * `tools`, when given, are listed in the (first) system message.
 */
export function toPlainMessages(messages: BaseMessage[], tools: KilnToolSpec[] = []): ChatMessage[] {
  const out: ChatMessage[] = [];
  let responses: string[] = [];
  const flush = () => {
    if (responses.length) out.push({ role: "user", content: responses.join("\n") });
    responses = [];
  };
  for (const m of messages) {
    const role = roleOf(m);
    if (role === "tool") {
      const name = (m as { name?: string }).name;
      const text = textOf(m);
      let content: unknown = text;
      try {
        content = JSON.parse(text); // a JSON result stays JSON, not a string of escaped JSON
      } catch {
        // plain text
      }
      responses.push(`<tool_response>\n${JSON.stringify({ ...(name ? { name } : {}), content })}\n</tool_response>`);
      continue;
    }
    flush();
    const calls = toolCallsOf(m);
    const text = textOf(m);
    const content = calls.length ? [text, ...calls.map(callBlock)].filter(Boolean).join("\n") : text;
    out.push({ role, content });
  }
  flush();
  if (tools.length) {
    const protocol = renderToolProtocol(tools);
    if (out[0]?.role === "system") out[0] = { role: "system", content: out[0].content ? `${out[0].content}\n\n${protocol}` : protocol };
    else out.unshift({ role: "system", content: protocol });
  }
  return out;
}

/** LangChain messages in the OpenAI-style structure tool-aware templates expect. */
export function toTemplateMessages(messages: BaseMessage[]): TemplateMessage[] {
  return messages.map((m) => {
    const role = roleOf(m);
    const msg: TemplateMessage = { role, content: textOf(m) };
    const calls = toolCallsOf(m);
    if (calls.length) msg.tool_calls = calls.map((c) => ({ ...(c.id ? { id: c.id } : {}), type: "function", function: { name: c.name, arguments: c.args } }));
    if (role === "tool") {
      const t = m as { tool_call_id?: string; name?: string };
      if (t.tool_call_id) msg.tool_call_id = t.tool_call_id;
      if (t.name) msg.name = t.name;
    }
    return msg;
  });
}

// --- the model ---

export type KilnCallOptions = BaseChatModelCallOptions & {
  /** set by bindTools */
  tools?: KilnToolSpec[];
  /** recorded on facts captured from the user's message; defaults to the LangGraph thread id */
  conversationId?: string;
  /** capture facts the user states (Runtime.chat's rules); defaults to the model's setting */
  captureFacts?: boolean;
};

export interface KilnChatModelFields extends BaseChatModelParams {
  runtime: Runtime;
  /** the agent whose live weights answer */
  agent: string;
  maxTokens?: number;
  /** 0 = greedy (the default) */
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  stop?: string[];
  /**
   * Capture facts from the user's message as Runtime.chat does. Off by default: a chat model is
   * often called on prompts no user wrote; on, it captures only when the last message is a human
   * one (the first model call of a turn, not the calls after tool results).
   */
  captureFacts?: boolean;
}

/** What one model call asks of kiln through Runtime.chat. */
export interface KilnRequest {
  /** the conversation, and the tool specs when the model's own template renders them */
  prompt: { messages: ChatMessage[]; tools?: KilnToolSpec[] };
  options: Omit<GenerateOptions, "adapter">;
  captureFacts: boolean;
  conversationId?: string;
  /** whether `<tool_call>` blocks in the output are tool calls */
  parseTools: boolean;
}

function abortError(signal: AbortSignal | undefined): unknown {
  if (signal?.reason !== undefined) return signal.reason;
  const err = new Error("kiln: generation was aborted");
  err.name = "AbortError";
  return err;
}

export class KilnChatModel extends BaseChatModel<KilnCallOptions, AIMessageChunk> {
  readonly runtime: Runtime;
  readonly agentName: string;
  maxTokens?: number;
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  stop?: string[];
  captureFacts: boolean;

  static override lc_name(): string {
    return "KilnChatModel";
  }

  constructor(fields: KilnChatModelFields) {
    const { runtime, agent, maxTokens, temperature, topK, topP, seed, stop, captureFacts, ...base } = fields;
    super(base); // the runtime stays out of lc_kwargs (tracing serialises those)
    this.runtime = runtime;
    this.agentName = agent;
    this.maxTokens = maxTokens;
    this.temperature = temperature;
    this.topK = topK;
    this.topP = topP;
    this.seed = seed;
    this.stop = stop;
    this.captureFacts = captureFacts ?? false;
    runtime.agent(agent); // fail now, with the known names, on a wrong agent name
  }

  _llmType(): string {
    return "kiln";
  }

  override get callKeys(): string[] {
    return [...super.callKeys, "tools", "conversationId", "captureFacts"];
  }

  override invocationParams(options?: this["ParsedCallOptions"]): Record<string, unknown> {
    return {
      agent: this.agentName,
      maxTokens: this.maxTokens,
      temperature: this.temperature ?? 0,
      topK: this.topK,
      topP: this.topP,
      seed: this.seed,
      stop: [...(this.stop ?? []), ...(options?.stop ?? [])],
      tools: options?.tools?.map((t) => t.function.name),
    };
  }

  /** A LangGraph thread id in the config is the conversation id when none is given. */
  protected override _separateRunnableConfigFromCallOptionsCompat(options?: Partial<KilnCallOptions>): [RunnableConfig, this["ParsedCallOptions"]] {
    const [config, call] = super._separateRunnableConfigFromCallOptionsCompat(options);
    const thread = config.configurable?.thread_id;
    if (call.conversationId === undefined && (typeof thread === "string" || typeof thread === "number")) call.conversationId = String(thread);
    return [config, call];
  }

  /**
   * Binds tools: a RunnableBinding whose calls carry the specs as the `tools` call option (what
   * createAgent expects of bindTools). Extra kwargs (tool_choice, ...) are bound too; tool_choice
   * "none" drops the tools, other choices are not enforced.
   */
  override bindTools(tools: BindToolsInput[], kwargs?: Partial<KilnCallOptions>): Runnable<BaseLanguageModelInput, AIMessageChunk, KilnCallOptions> {
    return this.withConfig({ ...kwargs, tools: tools.map(toToolSpec) } as Partial<KilnCallOptions>);
  }

  private get model(): LoadedModel {
    return this.runtime.agent(this.agentName).model;
  }

  /** Whether the model's own chat template renders tool definitions. */
  get supportsNativeTools(): boolean {
    return this.model.tokenizer.supportsTools;
  }

  /** How a conversation is put to the model: its template with tools, or kiln ChatMessages. */
  buildPrompt(messages: BaseMessage[], tools: KilnToolSpec[] = []): KilnRequest["prompt"] {
    if (tools.length && this.supportsNativeTools) return { messages: toTemplateMessages(messages) as ChatMessage[], tools };
    return { messages: toPlainMessages(messages, tools) };
  }

  /** The prompt text the model sees (for inspection and tests). */
  renderPrompt(messages: BaseMessage[], tools: KilnToolSpec[] = []): string {
    const p = this.buildPrompt(messages, tools);
    return this.model.tokenizer.renderChat(p.messages, true, p.tools ? { tools: p.tools } : {});
  }

  private request(messages: BaseMessage[], options: this["ParsedCallOptions"]): KilnRequest {
    if (!messages.length) throw new Error("kiln: no messages to answer (the conversation is empty)");
    const tools = options.tool_choice === "none" ? [] : (options.tools ?? []);
    const last = messages.at(-1);
    const fromUser = !!last && roleOf(last) === "user";
    const stop = [...(this.stop ?? []), ...(options.stop ?? [])];
    return {
      prompt: this.buildPrompt(messages, tools),
      options: {
        ...(this.maxTokens !== undefined ? { maxTokens: this.maxTokens } : {}),
        temperature: this.temperature ?? 0,
        ...(this.topK !== undefined ? { topK: this.topK } : {}),
        ...(this.topP !== undefined ? { topP: this.topP } : {}),
        ...(this.seed !== undefined ? { seed: this.seed } : {}),
        ...(stop.length ? { stopStrings: stop } : {}),
      },
      captureFacts: (options.captureFacts ?? this.captureFacts) && fromUser,
      ...(options.conversationId !== undefined ? { conversationId: options.conversationId } : {}),
      parseTools: tools.length > 0,
    };
  }

  /** Runs one generation on Runtime.chat (subclasses may override it to script turns). */
  protected async *complete(req: KilnRequest): AsyncGenerator<ChatChunk, ChatOutcome> {
    return yield* this.runtime.chat(this.agentName, {
      messages: req.prompt.messages,
      ...(req.prompt.tools ? { tools: req.prompt.tools as unknown as Record<string, unknown>[] } : {}),
      options: req.options,
      captureFacts: req.captureFacts,
      ...(req.conversationId !== undefined ? { conversationId: req.conversationId } : {}),
    });
  }

  /**
   * The reply as message chunks: text as it is generated, then a last chunk with the tool calls
   * (when tools are bound), finish reason, weights version and token usage. With tools bound,
   * text from the first `<tool_call>` on (and space before it) is held back until the end, so
   * no raw tool-call markup is streamed when it parses.
   */
  private async *chunks(req: KilnRequest, signal: AbortSignal | undefined): AsyncGenerator<ChatGenerationChunk> {
    if (signal?.aborted) throw abortError(signal);
    // Generation runs on its own signal. When the caller's signal fires, or the consumer stops
    // early, it is aborted and the generation pulled to its end (at most one more step), so the
    // lease and the KV cache are freed even by a consumer that never resumes this generator
    // (LangChain's stream() throws on abort without returning it). Pulls are serialised.
    const stopper = new AbortController();
    const it = this.complete({ ...req, options: { ...req.options, signal: stopper.signal } });
    let queue: Promise<unknown> = Promise.resolve();
    const pull = (): Promise<IteratorResult<ChatChunk, ChatOutcome | undefined>> => {
      const next = queue.then(() => it.next());
      queue = next.catch(() => {});
      return next;
    };
    const drain = async () => {
      stopper.abort();
      try {
        while (!(await pull()).done);
      } catch {
        // the error that stopped the consumer is the one that matters
      }
    };
    const onAbort = () => void drain();
    signal?.addEventListener("abort", onAbort, { once: true });
    const piece = (text: string) => new ChatGenerationChunk({ text, message: new AIMessageChunk({ content: text }) });
    let held = ""; // text not yet streamed (possible start of a tool call, trailing space)
    let inCall = false;
    let full = "";
    let outcome: ChatOutcome;
    try {
      for (;;) {
        const r = await pull();
        if (signal?.aborted) throw abortError(signal);
        if (r.done) {
          outcome = r.value!;
          break;
        }
        if (!r.value.text) continue;
        full += r.value.text;
        if (!req.parseTools) {
          yield piece(r.value.text);
          continue;
        }
        held += r.value.text;
        if (inCall) continue;
        const at = held.indexOf(TOOL_CALL_OPEN);
        let safe: number;
        if (at >= 0) {
          inCall = true;
          safe = held.slice(0, at).trimEnd().length;
        } else {
          safe = held.length;
          for (let k = Math.min(TOOL_CALL_OPEN.length - 1, held.length); k > 0; k--) {
            if (held.endsWith(TOOL_CALL_OPEN.slice(0, k))) {
              safe = held.length - k;
              break;
            }
          }
          while (safe > 0 && /\s/.test(held[safe - 1]!)) safe--;
        }
        if (safe > 0) {
          yield piece(held.slice(0, safe));
          held = held.slice(safe);
        }
      }
    } finally {
      signal?.removeEventListener("abort", onAbort);
      await drain(); // a no-op after a normal end
    }
    if (outcome.result.finishReason === "abort") throw abortError(signal);
    let toolCalls: ToolCall[] = [];
    let last = held;
    if (req.parseTools && inCall) {
      const parsed = parseToolCalls(full);
      if (parsed.toolCalls.length) {
        toolCalls = parsed.toolCalls;
        const streamed = full.slice(0, full.length - held.length);
        last = parsed.content.slice(streamed.length);
      }
    }
    const { result, version } = outcome;
    const usage: UsageMetadata = { input_tokens: result.promptTokens, output_tokens: result.tokens.length, total_tokens: result.promptTokens + result.tokens.length };
    const info = {
      finish_reason: toolCalls.length ? "tool_calls" : result.finishReason,
      kiln_version: version,
      model_name: this.agentName,
      ...(outcome.captured.length ? { kiln_captured: outcome.captured } : {}),
    };
    const toolCallChunks: ToolCallChunk[] = toolCalls.map((c, index) => ({ type: "tool_call_chunk", name: c.name, args: JSON.stringify(c.args), id: c.id, index }));
    yield new ChatGenerationChunk({
      text: last,
      message: new AIMessageChunk({ content: last, tool_call_chunks: toolCallChunks, response_metadata: info, usage_metadata: usage }),
      generationInfo: info,
    });
  }

  override async *_streamResponseChunks(messages: BaseMessage[], options: this["ParsedCallOptions"], runManager?: CallbackManagerForLLMRun): AsyncGenerator<ChatGenerationChunk> {
    for await (const chunk of this.chunks(this.request(messages, options), options.signal)) {
      if (chunk.text) await runManager?.handleLLMNewToken(chunk.text, undefined, undefined, undefined, undefined, { chunk });
      yield chunk;
    }
  }

  /**
   * The content-block event stream (`streamEvents()` without a version) from the chunks, as
   * LangChain's own bridge makes it, with the real finish reason and kiln's response metadata on
   * message-finish: the bridge alone reports "stop" for every reply and drops the metadata.
   */
  override async *_streamChatModelEvents(messages: BaseMessage[], options: this["ParsedCallOptions"], runManager?: CallbackManagerForLLMRun): AsyncGenerator<ChatModelStreamEvent> {
    let info: Record<string, unknown> = {};
    const chunks = this._streamResponseChunks(messages, options, runManager);
    async function* watched(): AsyncGenerator<ChatGenerationChunk> {
      for await (const chunk of chunks) {
        if (chunk.generationInfo) info = { ...info, ...chunk.generationInfo };
        const calls = (chunk.message as AIMessageChunk).tool_call_chunks ?? [];
        if (!calls.length) {
          yield chunk;
          continue;
        }
        // The bridge files the text as block 0 and a tool call under its chunk's index: calls
        // counted from 0 would land in the text block and be lost.
        const message = new AIMessageChunk({
          content: chunk.message.content,
          tool_call_chunks: calls.map((c, i) => ({ ...c, index: (c.index ?? i) + 1 })),
          response_metadata: chunk.message.response_metadata,
          ...((chunk.message as AIMessageChunk).usage_metadata ? { usage_metadata: (chunk.message as AIMessageChunk).usage_metadata } : {}),
        });
        yield new ChatGenerationChunk({ text: chunk.text, message, ...(chunk.generationInfo ? { generationInfo: chunk.generationInfo } : {}) });
      }
    }
    for await (const event of convertChunksToEvents(watched(), { signal: options.signal })) {
      if (event.event !== "message-finish") {
        yield event;
        continue;
      }
      const reason = info.finish_reason === "tool_calls" ? "tool_use" : info.finish_reason === "length" ? "length" : "stop";
      yield { ...event, reason, responseMetadata: { ...event.responseMetadata, ...info } };
    }
  }

  /** Tracing parameters (LangSmith): kiln as the provider, the agent as the model, its settings. */
  override getLsParams(options: this["ParsedCallOptions"]): LangSmithParams {
    const stop = [...(this.stop ?? []), ...(options.stop ?? [])];
    return {
      ...super.getLsParams(options),
      ls_provider: "kiln",
      ls_model_name: this.agentName,
      ls_temperature: this.temperature ?? 0,
      ...(this.maxTokens !== undefined ? { ls_max_tokens: this.maxTokens } : {}),
      ...(stop.length ? { ls_stop: stop } : {}),
    };
  }

  async _generate(messages: BaseMessage[], options: this["ParsedCallOptions"], runManager?: CallbackManagerForLLMRun): Promise<ChatResult> {
    let all: ChatGenerationChunk | undefined;
    for await (const chunk of this.chunks(this.request(messages, options), options.signal)) {
      if (chunk.text) await runManager?.handleLLMNewToken(chunk.text, undefined, undefined, undefined, undefined, { chunk });
      all = all ? all.concat(chunk) : chunk;
    }
    const merged = all!.message as AIMessageChunk;
    const info = all!.generationInfo ?? {};
    // A chunk, as this model's declared output type says: LangChain's withStructuredOutput parses
    // only AIMessageChunk from a model that declares it.
    const message = new AIMessageChunk({
      content: merged.content,
      tool_call_chunks: merged.tool_call_chunks ?? [],
      response_metadata: info,
      ...(merged.usage_metadata ? { usage_metadata: merged.usage_metadata } : {}),
    });
    const usage = merged.usage_metadata;
    return {
      generations: [{ text: all!.text, message, generationInfo: info }],
      llmOutput: usage ? { tokenUsage: { promptTokens: usage.input_tokens, completionTokens: usage.output_tokens, totalTokens: usage.total_tokens } } : {},
    };
  }
}
