// LangChain chat model over a kiln agent's live weights. `KilnChatModel` is a BaseChatModel: it
// converts LangChain messages to kiln ChatMessages, runs Runtime.chat (greedy by default, pinned
// to the live version) and reports the weights version, finish reason and token usage.
//
// Tools (`bindTools`, used by createAgent from "langchain") are put to the model as src/agent/tools.ts
// describes: natively where the chat template renders tools, otherwise as a plain-text protocol;
// `<tool_call>` blocks in the output become AIMessage.tool_calls. tool_choice is enforced:
// "none" binds no tools, "any"/"required", a tool's name or {type: "function", function: {name}}
// make the reply one call whose arguments fit the tool's schema (constrained decoding), and
// withStructuredOutput forces its tool that way. The `response_format` call option (OpenAI's
// shape, src/agent/response-format.ts) makes the reply's content JSON, or JSON that fits a schema,
// by the same constrained decoding; withStructuredOutput's "jsonSchema" and "jsonMode" methods
// use it. With tools the model may call ("auto"), a reply is one call or that JSON (autoCalls);
// tools with strict true (OpenAI's field, or bindTools(tools, {strict: true}) as ChatOpenAI takes
// it) have their parameters checked and the calls the model opens held to them. A schema the
// constraint cannot follow throws before generation (ToolChoiceError, ToolSchemaError,
// ResponseFormatError); a constraint that cannot go on mid-reply throws a JsonConstraintError from
// invoke/stream rather than return broken JSON.
import type { CallbackManagerForLLMRun } from "@langchain/core/callbacks/manager";
import type { BaseLanguageModelInput, StructuredOutputMethodOptions } from "@langchain/core/language_models/base";
import { BaseChatModel, type BaseChatModelCallOptions, type BaseChatModelParams, type BindToolsInput, type LangSmithParams } from "@langchain/core/language_models/chat_models";
import { convertChunksToEvents } from "@langchain/core/language_models/compat";
import type { ChatModelStreamEvent } from "@langchain/core/language_models/event";
import { assembleStructuredOutputPipeline, createContentParser, createFunctionCallingParser } from "@langchain/core/language_models/structured_output";
import { AIMessage, AIMessageChunk, ChatMessage as LCChatMessage, type BaseMessage, type ToolCall, type ToolCallChunk, type UsageMetadata } from "@langchain/core/messages";
import { ChatGenerationChunk, type ChatResult } from "@langchain/core/outputs";
import { RunnableLambda, type Runnable, type RunnableConfig } from "@langchain/core/runnables";
import { convertToOpenAITool } from "@langchain/core/utils/function_calling";
import { toJsonSchema } from "@langchain/core/utils/json_schema";
import { isInteropZodSchema } from "@langchain/core/utils/types";
import type { GenerateOptions } from "../model/generate.js";
import type { LoadedModel } from "../model/load.js";
import type { ChatMessage } from "../model/tokenizer.js";
import type { ChatChunk, ChatOutcome, Runtime } from "../runtime/runtime.js";
import { autoCalls, checkStrictTools, forceToolCall, newToolCallId, ToolChoiceError, toolPrompt, type AutoCalls, type ForcedCall, type KilnToolSpec, type ToolChoice, type ToolPrompt } from "./tools.js";
import { structuredReply, type ResponseFormat, type StructuredReply } from "./response-format.js";
import { versionName } from "../runtime/live.js";

export { parseToolCalls, renderToolProtocol, TOOL_CALL_CLOSE, TOOL_CALL_OPEN, ToolChoiceError, ToolSchemaError, type KilnToolSpec, type ParsedToolCalls } from "./tools.js";
export { ResponseFormatError, type ResponseFormat } from "./response-format.js";
export { JsonConstraintError } from "../model/json-constraint.js";

/** Normalises anything bindTools accepts (LangChain tools, OpenAI specs, {name, parameters}). */
export function toToolSpec(tool: BindToolsInput): KilnToolSpec {
  const raw = convertToOpenAITool(tool as Parameters<typeof convertToOpenAITool>[0]) as unknown as Record<string, unknown>;
  const fn = (raw.type === "function" && raw.function ? raw.function : raw) as { name?: unknown; description?: unknown; parameters?: unknown; strict?: unknown };
  if (typeof fn.name !== "string" || !fn.name) throw new Error(`bindTools: a tool has no name (${JSON.stringify(raw).slice(0, 120)})`);
  const parameters = { ...((fn.parameters as Record<string, unknown> | undefined) ?? { type: "object", properties: {} }) };
  delete parameters.$schema; // noise in a prompt
  return { type: "function", function: { name: fn.name, ...(typeof fn.description === "string" ? { description: fn.description } : {}), parameters, ...(fn.strict === true ? { strict: true } : {}) } };
}

/**
 * LangChain's tool_choice as kiln enforces it. Without bound tools, only "auto" and "none" make
 * sense; a choice kiln does not know is an error rather than ignored.
 */
export function toolChoiceOf(choice: BaseChatModelCallOptions["tool_choice"], tools: KilnToolSpec[]): ToolChoice {
  const o = choice && typeof choice === "object" ? (choice as { type?: unknown; name?: unknown; function?: { name?: unknown } }) : null;
  const kind = o ? o.type : choice;
  if (kind === undefined || kind === "auto") return tools.length ? { mode: "auto" } : { mode: "none" };
  if (kind === "none") return { mode: "none" };
  let names: string[];
  if (kind === "any" || kind === "required") names = tools.map((t) => t.function.name);
  else if (typeof choice === "string") names = [choice];
  else if (kind === "function" && typeof o?.function?.name === "string") names = [o.function.name];
  else if (kind === "tool" && typeof o?.name === "string") names = [o.name];
  else throw new ToolChoiceError(`kiln: unsupported tool_choice ${JSON.stringify(choice)} (use "auto", "none", "any", "required", a tool's name or {type: "function", function: {name}})`);
  if (!tools.length) throw new ToolChoiceError(`kiln: tool_choice ${JSON.stringify(choice)} asks for a tool call, but no tools are bound`);
  return { mode: "required", names };
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

/** LangChain messages as kiln ChatMessages, with tool calls and results in OpenAI-style fields. */
export function toTemplateMessages(messages: BaseMessage[]): ChatMessage[] {
  return messages.map((m) => {
    const role = roleOf(m);
    const msg: ChatMessage = { role, content: textOf(m) };
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
  /** OpenAI's response_format: JSON content, or JSON that fits a schema (withStructuredOutput's jsonSchema and jsonMode set it) */
  response_format?: ResponseFormat;
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
  prompt: ToolPrompt;
  options: Omit<GenerateOptions, "adapter">;
  captureFacts: boolean;
  conversationId?: string;
  /** tool_choice "auto": how calls are read from the output (and constrained: strict tools, a response format) */
  auto?: AutoCalls;
  /** a required call (tool_choice): the reply starts with its prefill and is read as that call */
  forced?: ForcedCall;
  /** a JSON response_format: the content is constrained to it (with `auto`: a call, or the content is) */
  structured?: StructuredReply;
}

/** The call a forced reply made; an error when it stopped before its arguments were finished. */
function forcedCall(forced: ForcedCall, outcome: ChatOutcome, maxTokens: number | undefined): ToolCall {
  const call = forced.read(outcome.result.text);
  if (call.complete) return { type: "tool_call", id: newToolCallId(), name: call.name, args: call.args };
  const why =
    outcome.result.finishReason === "length"
      ? `its arguments were not finished within maxTokens (${maxTokens ?? outcome.result.tokens.length}); raise maxTokens`
      : "generation stopped before its arguments were finished (a stop sequence?)";
  throw new Error(`kiln: tool_choice requires a call of ${call.name ?? "a tool"}, but ${why}. The arguments so far: ${call.argumentsText.slice(0, 200)}`);
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
    return [...super.callKeys, "tools", "response_format", "conversationId", "captureFacts"];
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
      response_format: options?.response_format?.type,
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
   * createAgent expects of bindTools). Extra kwargs are bound too; tool_choice is enforced (see
   * toolChoiceOf): "none" drops the tools, a required call is made with constrained decoding.
   */
  override bindTools(tools: BindToolsInput[], kwargs?: Partial<KilnCallOptions> & { strict?: boolean }): Runnable<BaseLanguageModelInput, AIMessageChunk, KilnCallOptions> {
    const { strict, ...rest } = kwargs ?? {};
    // strict (as ChatOpenAI takes it): every tool's arguments must fit its parameters (see checkStrictTools)
    const specs = tools.map(toToolSpec).map((t) => (strict === undefined ? t : { ...t, function: { ...t.function, strict } }));
    return this.withConfig({ ...rest, tools: specs } as Partial<KilnCallOptions>);
  }

  private get model(): LoadedModel {
    return this.runtime.agent(this.agentName).model;
  }

  /** Whether the model's own chat template renders tool definitions. */
  get supportsNativeTools(): boolean {
    return this.model.tokenizer.supportsTools;
  }

  /** How a conversation is put to the model: its template with tools, or kiln ChatMessages. */
  buildPrompt(messages: BaseMessage[], tools: KilnToolSpec[] = []): ToolPrompt {
    return toolPrompt(this.model.tokenizer, toTemplateMessages(messages), tools);
  }

  /**
   * Structured output. "functionCalling" (the default) is a forced call of one tool whose
   * parameters are the schema (LangChain's own implementation binds the tool without forcing it);
   * "jsonSchema" makes the reply's content JSON that fits the schema (response_format json_schema;
   * `strict` as the API takes it: true refuses keywords kiln cannot enforce); "jsonMode" makes it
   * any JSON object (json_object: say in the prompt what to put in it). A Zod schema also
   * validates the result.
   */
  override withStructuredOutput(outputSchema: Parameters<BaseChatModel["withStructuredOutput"]>[0], config?: StructuredOutputMethodOptions<boolean>): any {
    const method = config?.method ?? "functionCalling";
    if (!["functionCalling", "jsonSchema", "jsonMode"].includes(method)) throw new Error(`kiln: withStructuredOutput supports the methods "functionCalling", "jsonSchema" and "jsonMode" (got "${method}")`);
    const plain = !isInteropZodSchema(outputSchema) && !("~standard" in outputSchema);
    const name = config?.name ?? (plain && typeof outputSchema.name === "string" ? outputSchema.name : "extract");
    const parameters = (plain ? outputSchema : toJsonSchema(outputSchema as Parameters<typeof toJsonSchema>[0])) as Record<string, unknown>;
    const includeRaw = config?.includeRaw ?? false;
    const runName = includeRaw ? "StructuredOutputRunnable" : "StructuredOutput";
    if (method !== "functionCalling") {
      const response_format: ResponseFormat =
        method === "jsonMode"
          ? { type: "json_object" }
          : { type: "json_schema", json_schema: { name: name.replace(/[^A-Za-z0-9_-]/g, "_").slice(0, 64) || "extract", schema: parameters, ...(config?.strict !== undefined ? { strict: config.strict } : {}) } };
      const model = this.withConfig({ response_format } as Partial<KilnCallOptions>);
      // a reply cut off by maxTokens is unfinished JSON: say so, rather than the parser's "failed to parse"
      const finished = RunnableLambda.from((message: BaseMessage) => {
        if ((message.response_metadata as { finish_reason?: string } | undefined)?.finish_reason !== "length") return message;
        throw new Error(`kiln: the JSON reply was not finished within maxTokens (${this.maxTokens ?? "the default"}); raise maxTokens. So far: ${textOf(message).slice(0, 200)}`);
      });
      const parser = finished.pipe(createContentParser(outputSchema as Parameters<typeof createContentParser>[0]));
      return assembleStructuredOutputPipeline(model, parser, includeRaw, runName);
    }
    const description = typeof parameters.description === "string" ? parameters.description : "A function available to call.";
    const model = this.bindTools([{ type: "function", function: { name, description, parameters } }], { tool_choice: name });
    const parser = createFunctionCallingParser(outputSchema as Parameters<typeof createFunctionCallingParser>[0], name);
    return assembleStructuredOutputPipeline(model, parser, includeRaw, runName);
  }

  /** The prompt text the model sees (for inspection and tests). */
  renderPrompt(messages: BaseMessage[], tools: KilnToolSpec[] = []): string {
    const p = this.buildPrompt(messages, tools);
    return this.model.tokenizer.renderChat(p.messages, true, p.tools ? { tools: p.tools } : {});
  }

  private request(messages: BaseMessage[], options: this["ParsedCallOptions"]): KilnRequest {
    if (!messages.length) throw new Error("kiln: no messages to answer (the conversation is empty)");
    const bound = options.tools ?? [];
    const choice = toolChoiceOf(options.tool_choice, bound);
    const tools = choice.mode === "none" ? [] : bound;
    const prompt = this.buildPrompt(messages, tools);
    checkStrictTools(bound);
    const forced = choice.mode === "required" ? forceToolCall(this.model, prompt, tools, choice.names) : undefined;
    // a required call is the reply: a response format has no content to shape then (it is still checked)
    const format = structuredReply(this.model, options.response_format);
    const structured = forced ? undefined : (format ?? undefined);
    // the model may call: the reply is a call or the format's JSON (autoCalls)
    const auto = choice.mode === "auto" ? autoCalls(this.model, prompt, tools, structured?.schema) : undefined;
    const constrain = forced?.constrain ?? (auto ? auto.constrain : structured?.constrain);
    const last = messages.at(-1);
    const fromUser = !!last && roleOf(last) === "user";
    const stop = [...(this.stop ?? []), ...(options.stop ?? [])];
    return {
      prompt: forced ? { ...prompt, prefill: forced.prefill } : prompt,
      options: {
        ...(this.maxTokens !== undefined ? { maxTokens: this.maxTokens } : {}),
        temperature: this.temperature ?? 0,
        ...(this.topK !== undefined ? { topK: this.topK } : {}),
        ...(this.topP !== undefined ? { topP: this.topP } : {}),
        ...(this.seed !== undefined ? { seed: this.seed } : {}),
        ...(stop.length ? { stopStrings: stop } : {}),
        ...(constrain ? { constrain } : {}),
      },
      captureFacts: (options.captureFacts ?? this.captureFacts) && fromUser,
      ...(options.conversationId !== undefined ? { conversationId: options.conversationId } : {}),
      ...(auto ? { auto } : {}),
      ...(forced ? { forced } : {}),
      ...(structured ? { structured } : {}),
    };
  }

  /** Runs one generation on Runtime.chat (subclasses may override it to script turns). */
  protected async *complete(req: KilnRequest): AsyncGenerator<ChatChunk, ChatOutcome> {
    return yield* this.runtime.chat(this.agentName, {
      messages: req.prompt.messages,
      ...(req.prompt.tools ? { tools: req.prompt.tools as unknown as Record<string, unknown>[] } : {}),
      ...(req.prompt.prefill !== undefined ? { prefill: req.prompt.prefill } : {}),
      options: req.options,
      captureFacts: req.captureFacts,
      ...(req.conversationId !== undefined ? { conversationId: req.conversationId } : {}),
    });
  }

  /**
   * The reply as message chunks: text as it is generated, then a last chunk with the tool calls
   * (when tools are bound), finish reason, weights version and token usage. With tools bound,
   * text from the first `<tool_call>` on (and space before it) is held back until the end, so
   * no raw tool-call markup is streamed when it parses. A forced call streams no text.
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
    const calls = req.auto?.stream() ?? null;
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
        if (req.forced) continue; // a forced call is not shown as text: it is read whole at the end
        const shown = calls ? calls.push(r.value.text) : r.value.text;
        if (shown) yield piece(shown);
      }
    } finally {
      signal?.removeEventListener("abort", onAbort);
      await drain(); // a no-op after a normal end
    }
    if (outcome.result.finishReason === "abort") throw abortError(signal);
    let toolCalls: ToolCall[] = [];
    let last = "";
    if (req.forced) toolCalls = [forcedCall(req.forced, outcome, req.options.maxTokens)];
    else if (calls) ({ rest: last, toolCalls } = calls.finish());
    const { result, version } = outcome;
    const usage: UsageMetadata = { input_tokens: result.promptTokens, output_tokens: result.tokens.length, total_tokens: result.promptTokens + result.tokens.length };
    const info = {
      finish_reason: toolCalls.length ? "tool_calls" : result.finishReason,
      kiln_version: versionName(version),
      model_name: this.agentName,
      ...(outcome.captured.length ? { kiln_captured: outcome.captured } : {}),
      ...(outcome.forgot ? { kiln_forgot: outcome.forgot } : {}),
      // keywords of a non-strict response_format schema the reply was not held to
      ...(req.structured?.unenforced.length ? { kiln_unenforced: req.structured.unenforced } : {}),
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
