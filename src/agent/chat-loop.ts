// The agent's own chat loop, on LangChain: createAgent (from "langchain") over a KilnChatModel
// with two tools on the agent's ledger — search_knowledge and remember_fact — and conversation
// memory in a LangGraph checkpointer keyed by the conversation id (the graph's thread_id).
//
//   const agent = createKilnAgent(runtime, "tester");
//   const reply = await agent.chat("conv-1", "What do you know about the ferry?");
//
// The model answers on the live weights; facts the user states are captured by Runtime.chat's
// rules on the first model call of each turn, and the model can add facts with remember_fact.
import { MemorySaver, type BaseCheckpointSaver } from "@langchain/langgraph";
import { AIMessage, HumanMessage, type BaseMessage } from "@langchain/core/messages";
import type { ToolRunnableConfig } from "@langchain/core/tools";
import { createAgent, tool, toolErrorMiddleware, ToolInvocationError } from "langchain";
import { z } from "zod";
import { ITEM_STATUSES as STATUSES, type Item, type ItemStatus } from "../knowledge/ledger.js";
import type { Agent } from "../runtime/agent.js";
import type { Runtime } from "../runtime/runtime.js";
import { KilnChatModel, toToolSpec, type KilnChatModelFields } from "./langchain.js";
import { versionName } from "../runtime/live.js";


export interface KnowledgeHit {
  id: string;
  text: string;
  status: ItemStatus;
  /** the weights version that absorbed the item (null while it is not baked in) */
  version: string | null;
  kind: Item["kind"];
  source: Item["source"];
}

/**
 * Searches the agent's ledger: items containing the query's words (the whole phrase ranks
 * first, then more words matched, then newer), optionally of one status; retracted items only
 * when asked for by status. No query lists the newest items.
 */
export function searchKnowledge(agent: Agent, args: { query?: string; status?: ItemStatus; limit?: number }): KnowledgeHit[] {
  const limit = args.limit ?? 5;
  const pool = agent.ledger.items(args.status ? { status: args.status } : {}).filter((i) => args.status || i.status !== "retracted");
  const phrase = args.query?.trim().toLowerCase() ?? "";
  const words = [...new Set(phrase.match(/[\p{L}\p{N}]+/gu) ?? [])].filter((w) => w.length >= 3 || /\d/.test(w));
  const scored = pool
    .map((item) => {
      const text = item.text.toLowerCase();
      const score = phrase ? (text.includes(phrase) ? words.length + 1 : 0) + words.filter((w) => text.includes(w)).length : 1;
      return { item, score };
    })
    .filter((s) => s.score > 0)
    .sort((a, b) => b.score - a.score || b.item.updatedAt.localeCompare(a.item.updatedAt));
  return scored.slice(0, limit).map(({ item }) => ({
    id: item.id,
    text: item.text,
    status: item.status,
    version: item.absorbedBy ?? null,
    kind: item.kind,
    source: item.source,
  }));
}

function threadOf(config: ToolRunnableConfig | undefined): string | undefined {
  const id = config?.configurable?.thread_id;
  return typeof id === "string" || typeof id === "number" ? String(id) : undefined;
}

/** The two ledger tools, bound to one agent. */
export function knowledgeTools(agent: Agent) {
  const search = tool(
    async (args: { query?: string; status?: ItemStatus; limit?: number }) =>
      JSON.stringify({ live_version: versionName(agent.live.version), items: searchKnowledge(agent, args) }),
    {
      name: "search_knowledge",
      description: "Search what you have read or been told (your knowledge ledger).",
      schema: z.object({
        query: z.string().optional().describe("words to look for"),
        status: z.enum(STATUSES).optional().describe("only items with this status"),
        limit: z.number().int().min(1).max(20).optional(),
      }),
    },
  );
  const remember = tool(
    async (args: { fact: string }, config?: ToolRunnableConfig) => {
      const conversationId = threadOf(config);
      const r = await agent.remember(args.fact, "conversation", { ...(conversationId ? { conversationId } : {}), by: "agent" });
      return JSON.stringify({ id: r.item.id, status: r.item.status, added: r.added });
    },
    {
      name: "remember_fact",
      description: "Save a fact to learn (baked into your weights later).",
      schema: z.object({ fact: z.string().min(1).describe("one self-contained sentence") }),
    },
  );
  return [search, remember] as const;
}

export interface KilnAgentOptions {
  /** generation settings for the KilnChatModel (ignored when `model` is given) */
  generation?: Omit<KilnChatModelFields, "runtime" | "agent">;
  /** a prepared model (a subclass, other settings); it must run on the same runtime and agent */
  model?: KilnChatModel;
  /** kiln adds none by default: the agent's knowledge and persona are in its weights */
  systemPrompt?: string;
  /** where conversations are kept; an in-memory MemorySaver by default */
  checkpointer?: BaseCheckpointSaver;
  /** LangGraph steps per turn (each model call and each tool round is one or two) */
  recursionLimit?: number;
}

export interface TurnResult {
  reply: string;
  /** the weights version the final reply came from ("base" for the base model; null when no reply came) */
  version: string | null;
  /** tool calls made during the turn */
  toolCalls: { name: string; args: Record<string, unknown> }[];
  /** the messages this turn added to the conversation */
  messages: BaseMessage[];
  /** facts the user's message told, stored as pending items (the first model call reads it) */
  captured: string[];
  /** what each "forget ..." in the user's message did, where the model answered it (see ChatOutcome.forgot) */
  forgot: string[];
}

/**
 * What the model reads when a tool call fails. LangChain's default for arguments that fail the
 * schema is the error's whole stack trace (some 1,300 characters of node_modules paths, which
 * fill a small model's context and tell it nothing); the model gets the schema's complaint. An
 * error from the tool itself reads as LangChain's default; nothing is caught once the turn is aborted.
 */
export function toolErrorContent(error: unknown, signal?: AbortSignal): string | undefined {
  if (signal?.aborted) return undefined;
  if (ToolInvocationError.isInstance(error)) {
    const cause = error.toolError.message.replace(/^Received tool input did not match expected schema\s*/, "").trim();
    return `Error: the arguments ${JSON.stringify(error.toolCall.args)} do not fit ${error.toolCall.name}'s schema: ${cause}\nPlease fix the arguments and try again.`;
  }
  return `${error}\n Please fix your mistakes.`;
}

function createGraph(model: KilnChatModel, tools: ReturnType<typeof knowledgeTools>, checkpointer: BaseCheckpointSaver, systemPrompt: string | undefined) {
  const middleware = [toolErrorMiddleware({ onError: (error, request) => toolErrorContent(error, request.runtime.signal) })];
  return createAgent({ model, tools: [...tools], checkpointer, middleware, ...(systemPrompt ? { systemPrompt } : {}) });
}

export class KilnAgent {
  readonly model: KilnChatModel;
  readonly tools: ReturnType<typeof knowledgeTools>;
  readonly checkpointer: BaseCheckpointSaver;
  readonly graph: ReturnType<typeof createGraph>;
  private readonly recursionLimit: number;

  constructor(
    readonly runtime: Runtime,
    readonly name: string,
    opts: KilnAgentOptions = {},
  ) {
    const agent = runtime.agent(name);
    this.model = opts.model ?? new KilnChatModel({ runtime, agent: name, captureFacts: true, ...opts.generation });
    if (this.model.runtime !== runtime || this.model.agentName !== name) throw new Error(`the model given to createKilnAgent runs on another agent than ${name}`);
    this.tools = knowledgeTools(agent);
    // The tool instructions go into every prompt: on a model with few positions they leave no
    // room for the conversation, and every turn would fail deep inside generation.
    const overhead = agent.model.tokenizer.encode(this.model.renderPrompt([new HumanMessage("?")], this.tools.map(toToolSpec))).length;
    const positions = agent.model.config.maxPositions;
    const reply = this.model.maxTokens ?? 128;
    if (overhead + reply + 32 > positions) {
      throw new Error(
        `createKilnAgent: ${name}'s model has ${positions} positions; the tool instructions take ${overhead} tokens and a reply ${reply}, ` +
          `leaving no room for the conversation. The agent loop needs a model with a longer context that can call tools ` +
          `(the embedded kiln-mini is neither); KilnChatModel without tools runs on any model.`,
      );
    }
    this.checkpointer = opts.checkpointer ?? new MemorySaver();
    this.graph = createGraph(this.model, this.tools, this.checkpointer, opts.systemPrompt);
    this.recursionLimit = opts.recursionLimit ?? 12;
  }

  /** One user turn on a conversation: runs the agent loop and returns the final reply with details. */
  async turn(conversationId: string, text: string, opts: { signal?: AbortSignal } = {}): Promise<TurnResult> {
    const before = (await this.history(conversationId)).length;
    const state = await this.graph.invoke(
      { messages: [new HumanMessage(text)] },
      { configurable: { thread_id: conversationId }, recursionLimit: this.recursionLimit, ...(opts.signal ? { signal: opts.signal } : {}) },
    );
    const messages = (state.messages as BaseMessage[]).slice(before);
    const last = [...messages].reverse().find((m) => AIMessage.isInstance(m));
    const toolCalls = messages.flatMap((m) => (AIMessage.isInstance(m) ? (m.tool_calls ?? []).map((c) => ({ name: c.name, args: c.args })) : []));
    const version = last?.response_metadata?.kiln_version;
    const told = (key: "kiln_captured" | "kiln_forgot") => messages.flatMap((m) => (AIMessage.isInstance(m) ? ((m.response_metadata?.[key] as string[] | undefined) ?? []) : []));
    return { reply: last?.text ?? "", version: typeof version === "string" ? version : null, toolCalls, messages, captured: told("kiln_captured"), forgot: told("kiln_forgot") };
  }

  /** One user turn: the reply text. */
  async chat(conversationId: string, text: string, opts: { signal?: AbortSignal } = {}): Promise<string> {
    return (await this.turn(conversationId, text, opts)).reply;
  }

  /** The conversation so far (empty for a new id). */
  async history(conversationId: string): Promise<BaseMessage[]> {
    const snapshot = await this.graph.graph.getState({ configurable: { thread_id: conversationId } });
    return ((snapshot.values as { messages?: BaseMessage[] } | undefined)?.messages ?? []) as BaseMessage[];
  }
}

export function createKilnAgent(runtime: Runtime, name: string, opts: KilnAgentOptions = {}): KilnAgent {
  return new KilnAgent(runtime, name, opts);
}
