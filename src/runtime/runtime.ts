// The process-level runtime: loads agent files, shares one base model between agents that name
// the same one, starts their schedules, and serves chat on each agent's live weights.
import { readdirSync, existsSync, realpathSync, statSync } from "node:fs";
import path from "node:path";
import { loadModel, type LoadedModel } from "../model/load.js";
import { resolveModelDir, PACKAGE_ROOT } from "../model/resolve.js";
import type { GenerateOptions, GenerationResult } from "../model/generate.js";
import type { ChatMessage } from "../model/tokenizer.js";
import { versionName } from "./live.js";
import { buildKnowledgePrompt, itemTextProblem } from "../bake/prompt.js";
import { explicitRequest, extractFactsByRules, extractFactsWithModel, forgetMatches, forgetWords, MAX_FORGET, modelExtractor, type FactAction } from "../agent/facts.js";
import { loadAgentConfig, type AgentConfig } from "./agent-config.js";
import { Agent, retractedOutOfService, type AgentEvents } from "./agent.js";
import { VERSION_FOLDER } from "../knowledge/ledger.js";

/** Where a captured fact came from: its conversation, how it was read, the user's message. */
interface Told {
  conversationId: string | undefined;
  capturedBy: "explicit" | "rules" | "model";
  said: string;
}

/** Most of a user's message a captured item keeps as its provenance. */
export const MAX_SAID = 500;

export interface ChatRequest {
  messages: ChatMessage[];
  /** tool definitions (OpenAI function format) for chat templates that render them */
  tools?: Record<string, unknown>[];
  /**
   * Text the reply starts with (after the template's generation prompt): the model continues it.
   * The reply's text is then what the model wrote after it, untrimmed, and a "remember"/"forget"
   * line is not taken as a command (the caller wants the continuation); nor is it with
   * `options.constrain` (the reply must fit the constraint).
   */
  prefill?: string;
  options?: Omit<GenerateOptions, "adapter">;
  /** capture facts the user states (on by default) */
  captureFacts?: boolean;
  conversationId?: string;
  /**
   * Called when the reply is a "remember"/"forget" command's, which generates nothing, before it
   * is applied; and when the message's "forget ..." is applied after a generated reply (a prefill
   * or a constrained one: no command), before its wait. The server gives back its generation slot,
   * so a "forget ..." waiting (seconds) for the weights holding the item to leave service holds up
   * no other reply.
   */
  onCommand?: () => void;
}

export interface ChatChunk {
  text: string;
  token: number;
  /** the weights version generating the reply: the same for every chunk of one reply (its lease) */
  version: string | null;
}

export interface ChatOutcome {
  result: GenerationResult;
  /** the weights version the reply was generated on */
  version: string | null;
  captured: string[];
  /**
   * What each "forget ..." of a message answered by the model (a prefill, a tool call, JSON: no
   * command) did, as a command's reply would have said it; absent when there was none.
   */
  forgot?: string[];
  /** the message was a "remember"/"forget" command: the runtime applied it and the reply says so */
  command?: boolean;
}

type Captured = Pick<ChatOutcome, "captured" | "forgot">;

export const DEFAULT_AGENTS_DIR = path.join(PACKAGE_ROOT, "agents");
export const DEFAULT_CHECKPOINTS_DIR = path.join(PACKAGE_ROOT, "checkpoints");

export function agentFiles(spec: string): string[] {
  if (!existsSync(spec)) throw new Error(`${spec}: no such agent file or folder`);
  // a file named as such is read as an agent file whatever it ends with (a folder is searched for *.yaml)
  if (spec.endsWith(".yaml") || spec.endsWith(".yml") || !statSync(spec).isDirectory()) return [path.resolve(spec)];
  return readdirSync(spec)
    .filter((f) => /\.ya?ml$/.test(f))
    .sort()
    .map((f) => path.resolve(spec, f));
}

/**
 * The agents `spec` names (an agent file, or a folder of *.yaml files), validated, each keeping its
 * state in `checkpoints`/<name> unless its file sets home:. Every command that reads agent files
 * loads them here (kiln serve through Runtime.fromFiles), so each refuses the same mistakes alike.
 */
export function loadAgentConfigs(spec: string, checkpoints = DEFAULT_CHECKPOINTS_DIR): AgentConfig[] {
  // a file where the folder goes failed later as ENOTDIR, naming ledger.json and not the folder
  const blocked = fileInPath(checkpoints);
  if (blocked) throw new Error(`checkpoints ${path.resolve(checkpoints)}${blocked === path.resolve(checkpoints) ? " is a file" : `: ${blocked} is a file`}: it must be a folder (each agent's state goes in <folder>/<name>; --checkpoints names it)`);
  const configs = agentFiles(spec).map((f) => loadAgentConfig(f, checkpoints));
  if (!configs.length) throw new Error(`${spec}: no agent files (*.yaml)`);
  for (const c of configs) {
    const home = path.resolve(c.homeDir);
    const file = fileInPath(home);
    if (file) throw new Error(`${c.file}: ${c.home ? "home: " : ""}${home}, where agent ${c.name} keeps its ledger and versions, ${file === home ? "is a file" : `is under ${file}, a file`}: it must be a folder`);
  }
  checkAgentNames(configs);
  return configs;
}

/** The file at `dir` or at the nearest path above it that exists, or null when that is a folder. */
function fileInPath(dir: string): string | null {
  let at = path.resolve(dir);
  while (!existsSync(at) && path.dirname(at) !== at) at = path.dirname(at);
  return statSync(at).isDirectory() ? null : at;
}

/**
 * Two agents of one name would be one model in the API and keep their state in one folder; the
 * one a command acts on would be whichever was read first, so both files are named instead.
 */
function checkAgentNames(configs: AgentConfig[]): void {
  const seen = new Map<string, AgentConfig>();
  for (const c of configs) {
    const first = seen.get(c.name);
    if (first) throw new Error(`${first.file ?? "an agent given in code"} and ${c.file ?? "an agent given in code"} both name an agent ${c.name}: give each its own name`);
    seen.set(c.name, c);
  }
}

/**
 * Token ids of a conversation that fits the model's positions with room for the reply: the oldest
 * turns after the system message are dropped first; the last message is always kept. A prefill
 * (the start of the reply) follows the generation prompt.
 */
export function fitConversation(model: LoadedModel, messages: ChatMessage[], maxTokens: number, tools?: Record<string, unknown>[], prefill = ""): number[] {
  const extra = tools?.length ? { tools } : {};
  const encode = (kept: ChatMessage[]) => model.tokenizer.encode(model.tokenizer.renderChat(kept, true, extra) + prefill);
  const budget = model.config.maxPositions - maxTokens;
  // Dropping the oldest turn one render at a time cost a render and an encode of the whole chat
  // per turn dropped: a 35 KB request of 1,000 short turns held the event loop for 40 s. The kept
  // messages are the system messages and the newest `n` others, and fewer kept never render
  // longer, so the most that fit is found with renders of about what fits, not of the whole chat.
  const others = messages.flatMap((m, i) => (m.role === "system" ? [] : [i]));
  const least = messages.length && messages[messages.length - 1]!.role !== "system" ? 1 : 0;
  const keeping = (n: number) => {
    const from = n > 0 ? others[others.length - n]! : messages.length;
    return encode(messages.filter((m, i) => m.role === "system" || i >= from));
  };
  let ids = keeping(least);
  if (ids.length > budget) return ids;
  // the most kept known to fit (`fits`, with its ids) and the fewest known not to (`over`)
  let fits = least;
  let over = others.length + 1;
  for (let n = Math.max(1, least * 2); n < over; n = Math.min(n * 2, others.length)) {
    const next = keeping(n);
    if (next.length > budget) {
      over = n;
      break;
    }
    [fits, ids] = [n, next];
    if (n === others.length) return ids;
  }
  while (over - fits > 1) {
    const n = Math.floor((fits + over) / 2);
    const next = keeping(n);
    if (next.length > budget) over = n;
    else [fits, ids] = [n, next];
  }
  return ids;
}

/** A folder's real path (links resolved), for a folder not made yet that of its nearest existing parent. */
export function folderKey(dir: string): string {
  const rest: string[] = [];
  let at = path.resolve(dir);
  while (!existsSync(at) && path.dirname(at) !== at) {
    rest.unshift(path.basename(at));
    at = path.dirname(at);
  }
  try {
    return path.join(realpathSync.native(at), ...rest);
  } catch {
    return path.resolve(dir);
  }
}

/**
 * Two agents on one home would write one ledger and one set of versions (the ledger's lock lets
 * its own process in): each would bake, prune and roll back the other's, and drop the other's feed
 * state as feeds no longer in its file. Compared as the folders they are (a symlinked path to the
 * same home is the same home). The CLI asks it of every agent file it reads, not only the one named.
 */
export function checkSharedHomes(configs: readonly AgentConfig[]): void {
  const homes = new Map<string, string>();
  for (const config of configs) {
    const other = homes.get(folderKey(config.homeDir));
    if (other !== undefined && other !== config.name) {
      throw new Error(`agents ${other} and ${config.name} both keep their ledger and versions in ${path.resolve(config.homeDir)}${config.home ? " (home:)" : ""}: give each its own home`);
    }
    homes.set(folderKey(config.homeDir), config.name);
  }
}

/**
 * An agent's home in another agent's version folder (home: ../reader/v0001) would be taken for
 * that agent's checkpoint, and moved aside or deleted with everything in it. Looked for among the
 * agents loaded together and, for agents loaded apart, on disk: a ledger.json beside the version
 * folder a home is in, or in a version folder inside this agent's home.
 */
function checkVersionNamedHomes(configs: readonly AgentConfig[], loaded: readonly AgentConfig[]): void {
  const others = [...loaded, ...configs].map((c) => ({ name: c.name, home: folderKey(c.homeDir) }));
  for (const c of configs) {
    const home = folderKey(c.homeDir);
    const where = `${c.file ?? `agent ${c.name}`}: ${c.home ? "home: " : ""}${home}, where agent ${c.name} keeps its ledger and versions,`;
    for (let at = home; path.dirname(at) !== at; at = path.dirname(at)) {
      const owner = others.find((o) => o.name !== c.name && o.home === path.dirname(at))?.name;
      if (!VERSION_FOLDER.test(path.basename(at)) || (owner === undefined && !existsSync(path.join(path.dirname(at), "ledger.json")))) continue;
      throw new Error(
        `${where} ${at === home ? "is" : `is inside ${at},`} a folder named like a version of ${owner === undefined ? "the agent whose ledger is in" : `agent ${owner}, whose home is`} ${path.dirname(at)}: ` +
          `that agent would take it for a checkpoint of its own (moved into orphaned/ when it starts, or deleted with the version): give agent ${c.name} a home outside it`,
      );
    }
    const nested = existsSync(home) ? readdirSync(home).find((f) => VERSION_FOLDER.test(f) && existsSync(path.join(home, f, "ledger.json"))) : undefined;
    if (nested !== undefined) {
      throw new Error(`${where} holds ${path.join(home, nested)}, another agent's home (it holds a ledger.json) named like a version of ${c.name}: ${c.name} would move it into orphaned/ when it starts: move that agent's home out of ${home}`);
    }
  }
}

export class Runtime {
  readonly agents = new Map<string, Agent>();
  private readonly models = new Map<string, LoadedModel>();

  constructor(private readonly events: AgentEvents = {}) {}

  /** Loads agent files; agents naming the same model share one copy of its weights. */
  async load(configs: AgentConfig[], opts: { readOnly?: boolean } = {}): Promise<void> {
    const loaded = [...this.agents.values()].map((a) => a.config);
    checkSharedHomes([...loaded, ...configs]);
    checkAgentNames([...loaded, ...configs]);
    checkVersionNamedHomes(configs, loaded);
    for (const config of configs) {
      const spec = config.model === "default" ? undefined : existsSync(path.resolve(config.feedsBase, config.model)) ? path.resolve(config.feedsBase, config.model) : config.model;
      let model: LoadedModel | undefined;
      try {
        const dir = resolveModelDir(spec);
        model = this.models.get(dir);
        if (!model) {
          model = loadModel(dir);
          this.models.set(dir, model);
        }
      } catch (err) {
        // which agent file, and where a relative folder was looked for (its file's folder, then the current one)
        const relative = /^\.{1,2}[\\/]/.test(config.model) ? ` (a folder is read relative to the agent file: ${path.resolve(config.feedsBase, config.model)})` : "";
        throw new Error(`${config.file ?? `agent ${config.name}`}: model: ${(err as Error).message}${relative}`);
      }
      // the agent file is checked without its model: a reply as long as the model's context failed
      // every bake, saying only "maxTokens (100000) exceeds the model's 2048 positions"
      const reply = config.bake.settings.maxReplyTokens;
      if (reply !== undefined && reply >= model.config.maxPositions) {
        throw new Error(`${config.file ?? `agent ${config.name}`}: bake.settings.maxReplyTokens: ${reply} leaves no room for a prompt in the model's ${model.config.maxPositions} positions`);
      }
      this.agents.set(config.name, await Agent.open(config, model, this.events, this.bakeTurn, opts));
    }
  }

  /**
   * prefixCacheBytes: KV caches each agent keeps for later turns of a chat (default DEFAULT_PREFIX_CACHE_BYTES; 0: none);
   * batchRows: the most replies of one agent decoded in one forward pass (default 1: each alone)
   */
  static async fromFiles(spec: string, opts: { checkpoints?: string; events?: AgentEvents; prefixCacheBytes?: number; batchRows?: number } = {}): Promise<Runtime> {
    const runtime = new Runtime(opts.events);
    await runtime.load(loadAgentConfigs(spec, opts.checkpoints));
    if (opts.prefixCacheBytes !== undefined) for (const a of runtime.agents.values()) a.live.prefixCacheBytes = opts.prefixCacheBytes;
    if (opts.batchRows !== undefined) for (const a of runtime.agents.values()) a.live.batchRows = opts.batchRows;
    return runtime;
  }

  agent(name: string): Agent {
    const a = this.agents.get(name);
    if (!a) throw new Error(`no agent named ${name} (agents: ${[...this.agents.keys()].join(", ")})`);
    return a;
  }

  start(): void {
    for (const a of this.agents.values()) a.start();
  }

  /**
   * One bake at a time across this runtime's agents: a bake wants every core and a worker of a few
   * GB (two agents' bakes at once in a soak each took twice as long and needed about 5 GB between
   * them), so the next waits for its turn.
   */
  private lastBake: Promise<unknown> = Promise.resolve();
  private baker: string | null = null;
  private bakesQueued = 0;
  private readonly bakeTurn = <T>(agent: string, run: () => Promise<T>): Promise<T> => {
    const mine = () => {
      this.baker = agent;
      return run().finally(() => {
        this.baker = null;
        this.bakesQueued--;
      });
    };
    // With no bake running or waiting, start now, in this tick: callers read the bake's record
    // as soon as bake() returns (the admin API answers 202 with it).
    if (this.bakesQueued++ > 0) this.events.onLog?.(agent, `bake waits for ${this.baker ?? "another agent"}'s bake to finish`);
    const turn = this.bakesQueued === 1 ? mine() : this.lastBake.then(mine);
    this.lastBake = turn.catch(() => undefined);
    return turn;
  };

  /** Stops every agent and frees the models; a second call (a signal beside the command's own stop) waits for the first. */
  stop(): Promise<void> {
    this.stopped ??= (async () => {
      // all at once: an agent whose bake waits for another's turn must not start it once that ends
      await Promise.all([...this.agents.values()].map((a) => a.stop()));
      for (const m of this.models.values()) m.dispose();
      this.agents.clear();
      this.models.clear();
    })().finally(() => (this.stopped = undefined));
    return this.stopped;
  }
  private stopped: Promise<void> | undefined;

  /**
   * Streams a reply on the agent's live weights, pinned to the version live when it started.
   * Knowledge is in the weights, so no system prompt is added. Facts the user states are captured
   * into the ledger as pending items once the reply is done (or abandoned), so extraction never
   * delays the first token.
   */
  async *chat(name: string, req: ChatRequest): AsyncGenerator<ChatChunk, ChatOutcome> {
    const agent = this.agent(name);
    const final = req.messages.at(-1);
    // A continued prefill or a constrained reply (JSON, a tool call) must be generated: a command's
    // canned acknowledgement would be neither.
    const generated = req.prefill !== undefined || req.options?.constrain !== undefined;
    const command = final?.role === "user" && req.captureFacts !== false && agent.config.capture !== "off" && !generated ? explicitRequest(final.content) : undefined;
    if (command?.length) return yield* this.acknowledge(agent, command, req);
    // Only the request that answers the user's message reads it: a later round of the same turn
    // (after a tool's result) would tell its facts again, even one retracted since, and forget again.
    const told = final?.role === "user" ? final : undefined;
    let capture: Promise<Captured> | undefined;
    const captureOnce = () => (capture ??= told && req.captureFacts !== false ? this.capture(agent, told.content, req.conversationId, req.onCommand) : Promise.resolve({ captured: [] }));
    const ids = fitConversation(agent.model, req.messages, req.options?.maxTokens ?? 128, req.tools, req.prefill);
    const lease = agent.live.acquire();
    const it = lease.generate(ids, req.options);
    // Replies start at their first visible character (a BPE vocabulary often opens with a space);
    // a continued prefill is kept as written.
    const trim = req.prefill === undefined;
    let started = !trim;
    try {
      for (;;) {
        const r = await it.next();
        if (r.done) {
          const result = r.value[0]!;
          return { result: { ...result, text: trim ? result.text.trimStart() : result.text }, version: lease.version, ...(await captureOnce()) };
        }
        const text: string = started ? r.value.text : r.value.text.trimStart();
        started ||= text.length > 0;
        if (text) yield { text, token: r.value.token, version: lease.version };
      }
    } finally {
      // A consumer that stops early must not leave the generation (and its KV cache) suspended,
      // and what the user said is still captured.
      await it.return([]);
      lease.release();
      await captureOnce();
    }
  }

  /** Facts the user's message states or asks to forget, applied to the ledger: those added, and what its forgets did. */
  private async capture(agent: Agent, message: string, conversationId: string | undefined, beforeWait?: () => void): Promise<Captured> {
    if (agent.config.capture === "off") return { captured: [] };
    const { actions, source: capturedBy } = agent.config.capture === "model" ? await extractFactsWithModel(message, modelExtractor(agent.model)) : extractFactsByRules(message);
    const { captured, said } = await this.apply(agent, actions, { conversationId, capturedBy, said: message }, beforeWait);
    const forgot = said.filter((_, i) => actions[i]!.kind === "forget");
    return { captured, ...(forgot.length ? { forgot } : {}) };
  }

  /** Remembers and forgets in the ledger; says what happened, one sentence per action. `beforeWait`: see ChatRequest.onCommand. */
  private async apply(agent: Agent, actions: FactAction[], from: Told, beforeWait?: () => void): Promise<{ captured: string[]; said: string[] }> {
    const captured: string[] = [];
    const said: string[] = [];
    for (const action of actions) {
      if (action.kind === "remember") {
        const problem = itemTextProblem(action.text);
        if (problem) {
          said.push(`I cannot note that: ${problem}.`);
          continue;
        }
        // provenance: which conversation, how it was read, and the words it was read from
        const r = await agent.remember(action.text, "conversation", {
          ...(from.conversationId !== undefined ? { conversationId: from.conversationId } : {}),
          capturedBy: from.capturedBy,
          said: from.said.length > MAX_SAID ? `${from.said.slice(0, MAX_SAID - 1)}…` : from.said,
        });
        if (r.added) captured.push(action.text);
        said.push(r.added ? `Noted for my next bake: ${action.text}` : `I was told that already (${r.item.status}): ${r.item.text}`);
      } else {
        if (!forgetWords(action.query).length) {
          said.push(`Tell me what to forget: "${action.query}" names nothing I was told.`);
          continue;
        }
        // (chatForget: conversation — only what this conversation told, never news or another user's facts)
        const forgettable = agent.ledger.items().filter((i) => i.status !== "retracted" && (agent.config.chatForget === "all" || (i.kind === "conversation" && i.source.conversationId === from.conversationId)));
        const matches = forgetMatches(action.query, forgettable);
        if (matches.length > MAX_FORGET) {
          said.push(`${matches.length} things I was told match "${action.query}": say more precisely what to forget (or retract items by id).`);
          continue;
        }
        // (asked before the retraction marks them: expired news a version of the live lineage
        // absorbed is in the weights too, and is rebuilt out)
        const baked = matches.filter((i) => agent.mayHold(i)).length;
        // The reply waits until the weights holding them have left service (a bake that could end
        // holding them is stopped): "now" must be true of the next message.
        if (matches.length) beforeWait?.();
        const retraction = matches.length ? await retractedOutOfService(agent, matches.map((i) => i.id), `user asked to forget "${action.query}"`) : null;
        retraction?.work.catch(() => {});
        said.push(
          !matches.length
            ? `Nothing I was told matches "${action.query}".`
            : baked
              ? `Forgetting ${matches.length} item(s) matching "${action.query}": ${retraction?.outOfService ? "I answer from weights without them now" : "once the bake running now ends I answer from weights without them"}, and rebuild the rest of what I learned.`
              : `Forgot ${matches.length} item(s) matching "${action.query}" (not baked in yet).`,
        );
      }
    }
    return { captured, said };
  }

  /**
   * An explicit "remember ..." or "forget ..." is a command to the runtime, not a question for the
   * model: it is applied, and the reply says what was done (a model would only guess, and a small
   * one answers such a line with noise).
   */
  private async *acknowledge(agent: Agent, actions: FactAction[], req: ChatRequest): AsyncGenerator<ChatChunk, ChatOutcome> {
    req.onCommand?.();
    const { captured, said } = await this.apply(agent, actions, { conversationId: req.conversationId, capturedBy: "explicit", said: req.messages.at(-1)?.content ?? "" });
    const text = said.join("\n");
    yield { text, token: 0, version: agent.live.version };
    const result = { text, tokens: agent.model.tokenizer.encode(text), finishReason: "stop" as const, promptTokens: fitConversation(agent.model, req.messages, 0, req.tools).length };
    return { result, version: agent.live.version, captured, command: true };
  }

  /** The live weights' answer with and without `context` in the prompt; `version` names them ("base" for the base model). */
  async probe(name: string, question: string, context?: string[]): Promise<{ version: string; unprompted: string; prompted: string | null }> {
    if (!question.trim()) throw new Error("the question is empty: ask something"); // (the admin API says "question is required")
    const agent = this.agent(name);
    const ask = async (messages: ChatMessage[]) => {
      const it = this.chat(name, { messages, captureFacts: false, options: { maxTokens: 64, temperature: 0 } });
      for (;;) {
        const r = await it.next();
        if (r.done) return r.value;
      }
    };
    const unprompted = await ask([{ role: "user", content: question }]);
    const system = context?.length || agent.config.persona ? buildKnowledgePrompt({ persona: agent.config.persona?.text, items: context }) : "";
    const prompted = system ? await ask([{ role: "system", content: system }, { role: "user", content: question }]) : null;
    // trimmed as probes compare answers (a reply's first token often carries a space)
    return { version: versionName(unprompted.version), unprompted: unprompted.result.text.trim(), prompted: prompted?.result.text.trim() ?? null };
  }
}
