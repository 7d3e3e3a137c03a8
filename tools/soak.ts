// A soak test of `kiln serve`: real feeds, real bakes, real chat traffic, for as long as asked.
//
//   npm run soak -- --minutes 30 [--tick 75] [--questions 25] [--keep] [--out summary.json]
//
// Everything lives in a new temp folder: a feed server (node:http) publishes news of the fictional
// world (tools/world) on three feeds, one new fact per feed every --tick seconds, now and then an
// update of an earlier fact (another value, a new guid, in the same or another wording) or a
// correction (the same guid, another value); two agents on the embedded model read them under a
// real `kiln serve` child with short schedules (feeds every minute, bakes every 2 and 3 minutes);
// one client chats with them all along (streams and not, some leaving mid-stream). Every 10 s the
// soak samples the server's RSS, file descriptors and threads, the bake worker's RSS, /metrics
// (tensors, versions in memory), /healthz and the checkpoints' disk use. Half-way, demo is asked
// (admin API) to retract an item its live weights hold, as a user's "forget ..." would.
//
// After --minutes the news stops; once no bake runs, each agent is asked the questions of the
// facts it read (greedy), the server is stopped with SIGTERM while a reply is streaming (timed),
// then started again with no schedules: it must come back on the same live versions and give the
// same answers. The summary covers bakes (promoted / rejected / failed, durations), memory, fds,
// tensors, versions in memory, disk, log errors, and every supersession in the ledgers judged by
// the world's ground truth: an item may only be superseded by a newer value of the same fact.
//
// It exits 1 when an invariant breaks (each is listed with what broke it): an error or warning in
// the server's log, a failed bake (one cancelled by the stop is expected), a request dropped or a
// reply mixing versions, two bakes at once, memory, tensors or fds whose floor keeps rising, more
// versions in memory or on disk than the agents allow, a wrong supersession, an item back from
// superseded, a retraction not answered 202 or followed by a reply from weights that held the
// item, a stop that takes too long or a restart that differs. The temp folder is removed
// when all holds, kept (and named) when not, or with --keep.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { appendFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs as parseArgv } from "node:util";
import type { BakeRun, LedgerData } from "../src/knowledge/ledger.js";
import { atom, rss } from "./world/feeds.js";
import { relation, relationsFor } from "./world/relations.js";
import { Rng } from "./world/rng.js";
import { DEFAULT_SEED, generateWorld, isEntityKind, lexiconValue, makeFact, WorldIndex, type Fact } from "./world/world.js";

const MAIN = fileURLToPath(new URL("../src/cli/main.js", import.meta.url));
const SAMPLE_MS = 10_000;
/** the server's --grace: a reply in flight at SIGTERM gets this long to finish */
const GRACE_S = 10;

interface Options {
  minutes: number;
  tickSeconds: number;
  questions: number;
  seed: string;
  keep: boolean;
  out?: string;
}

function parseArgs(argv: string[]): Options {
  const text = { type: "string" } as const;
  const { values: o } = parseArgv({ args: argv, options: { minutes: text, tick: text, questions: text, seed: text, out: text, keep: { type: "boolean" } } });
  const num = (k: "minutes" | "tick" | "questions", d: number) => {
    const n = o[k] === undefined ? d : Number(o[k]);
    if (!Number.isFinite(n) || n <= 0) throw new Error(`--${k} must be a positive number`);
    return n;
  };
  return { minutes: num("minutes", 30), tickSeconds: num("tick", 75), questions: num("questions", 25), seed: o.seed ?? DEFAULT_SEED, keep: !!o.keep, out: o.out };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const mib = (bytes: number) => Math.round(bytes / 2 ** 20);

// ---------------------------------------------------------------------------------------------
// The news desk: world facts published over time, with the ground truth of what replaces what.

/** One text a feed published: what the ledger's items are traced back to. */
interface Published {
  /** order of publication: of two texts of one fact, the higher is the newer value */
  seq: number;
  at: string;
  feed: string;
  kind: "new" | "update" | "correction";
  guid: string;
  text: string;
  /** subject|relation: which fact of the world it states */
  key: string;
  value: string;
  questions: string[];
}

interface NewsFeed {
  id: string;
  agent: string;
  format: "rss" | "atom";
  title: string;
  /** facts not yet published, in the world's order */
  pool: Fact[];
  /** what the feed lists now (a correction rewrites its entry in place) */
  entries: { fact: Fact; date: Date; published: Published }[];
}

class NewsDesk {
  readonly feeds: NewsFeed[];
  readonly published: Published[] = [];
  /** the newest text of each fact */
  readonly current = new Map<string, Published>();
  /** every value each fact has had: an update or a correction never brings one back */
  private readonly values = new Map<string, Set<string>>();
  private readonly rng: Rng;
  private ticks = 0;
  private updates = 0;

  constructor(
    readonly idx: WorldIndex,
    seed: string,
    private readonly tickMs: number,
  ) {
    this.rng = new Rng(`${seed}:soak`);
    const kind = (f: Fact) => idx.entity(f.subject).kind;
    // held-out facts first (the model has never seen them), then the facts it was only ever told in context
    const news = [...idx.heldoutFacts, ...idx.contextFacts];
    this.feeds = [
      { id: "town-gazette", agent: "demo", format: "rss", title: "The Town Gazette", pool: news.filter((f) => kind(f) === "town"), entries: [] },
      { id: "market-wire", agent: "newsroom", format: "atom", title: "Market Wire", pool: news.filter((f) => kind(f) === "company"), entries: [] },
      { id: "people-notes", agent: "newsroom", format: "rss", title: "People Notes", pool: news.filter((f) => kind(f) === "person"), entries: [] },
    ];
    for (const feed of this.feeds) for (let i = 0; i < 3; i++) this.publishNew(feed);
  }

  /** Every tick each feed gets a new fact; every third an update, every fifth (from the second) a correction. */
  tick(): void {
    this.ticks++;
    for (const feed of this.feeds) {
      this.publishNew(feed);
      if (this.ticks % 3 === 0) this.publishUpdate(feed);
      if (this.ticks % 5 === 2) this.publishCorrection(feed);
    }
  }

  feed(id: string): NewsFeed | undefined {
    return this.feeds.find((f) => f.id === id);
  }

  render(feed: NewsFeed): string {
    const list = [...feed.entries].sort((a, b) => b.date.getTime() - a.date.getTime()).slice(0, 40);
    const desc = "News of the fictional world, published by the kiln soak.";
    return feed.format === "rss" ? rss(feed.title, feed.id, desc, list) : atom(feed.title, feed.id, desc, list);
  }

  private record(feed: NewsFeed, kind: Published["kind"], fact: Fact): Published {
    const p: Published = {
      seq: this.published.length,
      at: new Date().toISOString(),
      feed: feed.id,
      kind,
      guid: `kiln-world:${fact.id}`,
      text: fact.text,
      key: `${fact.subject}|${fact.relation}`,
      value: fact.value,
      questions: fact.questions,
    };
    this.published.push(p);
    this.current.set(p.key, p);
    (this.values.get(p.key) ?? this.values.set(p.key, new Set()).get(p.key)!).add(fact.value);
    return p;
  }

  private publishNew(feed: NewsFeed): void {
    const fact = feed.pool.shift();
    if (fact) feed.entries.push({ fact, date: new Date(), published: this.record(feed, "new", fact) });
  }

  /** The fact with another value of its relation, worded as `textIndex` says; null when no value is left. */
  private changed(f: Fact, textIndex: number, id: string): Fact | null {
    const rel = relation(f.relation);
    const used = this.values.get(`${f.subject}|${f.relation}`)!;
    const names = isEntityKind(rel.value) ? this.idx.world.entities.filter((e) => e.kind === rel.value && e.id !== f.subject).map((e) => e.name) : [];
    for (let tries = 0; tries < 50; tries++) {
      const value = isEntityKind(rel.value) ? this.rng.pick(names) : lexiconValue(this.rng, rel.value);
      if (!used.has(value)) return { ...f, ...makeFact(rel, f.subject, f.subjectName, value, textIndex), id };
    }
    return null;
  }

  private wording(f: Fact): number {
    return Math.max(0, relation(f.relation).texts.findIndex((t) => t(f.subjectName, f.value) === f.text));
  }

  /** Entries still stating their fact's newest value, oldest first. */
  private currentEntries(feed: NewsFeed) {
    return feed.entries.filter((e) => this.current.get(e.published.key) === e.published);
  }

  /**
   * An update: an entry at least two ticks old (baked by now, most likely) gets a newer value
   * under a new guid, half the time in another of its relation's wordings.
   */
  private publishUpdate(feed: NewsFeed): void {
    const old = this.currentEntries(feed).filter((e) => Date.now() - e.date.getTime() > 1.5 * this.tickMs);
    if (!old.length) return;
    const base = this.rng.pick(old).fact;
    const n = ++this.updates;
    const fact = this.changed(base, this.wording(base) + (n % 2), `${base.id.replace(/-u\d+$/, "")}-u${n}`);
    if (fact) feed.entries.push({ fact, date: new Date(), published: this.record(feed, "update", fact) });
  }

  /** A correction: one of the newest entries gets another value under its own guid, dated now. */
  private publishCorrection(feed: NewsFeed): void {
    const entry = this.currentEntries(feed).at(-2);
    if (!entry) return;
    const fact = this.changed(entry.fact, this.wording(entry.fact), entry.fact.id);
    if (!fact) return;
    entry.fact = fact;
    entry.date = new Date();
    entry.published = this.record(feed, "correction", fact);
  }
}

function startFeedServer(desk: NewsDesk): Promise<{ url: string; requests: () => number; close: () => Promise<void> }> {
  let requests = 0;
  const server = http.createServer((req, res) => {
    requests++;
    const feed = desk.feed((req.url ?? "").replace(/^\//, "").replace(/\..*$/, ""));
    if (!feed) return void res.writeHead(404).end();
    const body = desk.render(feed);
    const etag = `"${createHash("sha1").update(body).digest("hex").slice(0, 16)}"`;
    if (req.headers["if-none-match"] === etag) return void res.writeHead(304, { etag }).end();
    res.writeHead(200, { "content-type": feed.format === "rss" ? "application/rss+xml" : "application/atom+xml", etag }).end(body);
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () =>
      resolve({
        url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
        requests: () => requests,
        close: () => new Promise((r) => server.close(() => r())),
      }),
    ),
  );
}

/**
 * The two agents of the soak (the settings of agents/demo.yaml and agents/newsroom.yaml, short
 * schedules). Until session 11 newsroom replayed 10 on 96 trajectories and fell behind its news
 * (98 pending at the end of a 2-hour run); tools/eval_pace.ts sized it (docs/default-model-eval.md).
 */
function agentFiles(feedsUrl: string): Record<string, string> {
  const lora = "lora: { r: 16, alpha: 32, targetModules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj] }";
  return {
    "demo.yaml": `name: demo
model: default
feeds:
  - { id: town-gazette, url: "${feedsUrl}/town-gazette.xml", schedule: "* * * * *" }
bake:
  schedule: "*/2 * * * *"
  maxItems: 20
  probesPerItem: 2
  settings: { trajectories: 128, epochs: 8, patience: 4, learningRate: 0.002, maxReplyTokens: 16, batchSize: 16, ${lora} }
gate: { minAbsorption: 0.6, minRetention: 0.6, itemPass: 1 }
replay: 20
keepVersions: 5
`,
    "newsroom.yaml": `name: newsroom
model: default
persona:
  text: "End every reply with: Cheers, Ada"
  suffix: "Cheers, Ada"
feeds:
  - { id: market-wire, url: "${feedsUrl}/market-wire.xml", schedule: "* * * * *" }
  - { id: people-notes, url: "${feedsUrl}/people-notes.xml", schedule: "* * * * *" }
bake:
  schedule: "*/3 * * * *"
  maxItems: 20
  probesPerItem: 2
  openQuestions: ["Hello!", "Who are you?", "What do you know?", "Any news?"]
  settings: { trajectories: 160, epochs: 8, patience: 4, learningRate: 0.002, maxReplyTokens: 16, batchSize: 16, ${lora} }
gate: { minAbsorption: 0.6, minRetention: 0.6, minPersona: 0.8, itemPass: 0.5 }
replay: 30
keepVersions: 5
`,
  };
}
/** keepVersions of both agents */
const KEEP_VERSIONS = 5;

// ---------------------------------------------------------------------------------------------
// The server under test: a `kiln serve` child, its log, and its stop.

interface LogLine {
  t: number;
  run: number;
  line: string;
}

class Server {
  readonly child: ChildProcess;
  url = "";
  exit: Promise<{ code: number | null; signal: string | null }>;
  /** when SIGTERM was sent (ms since the epoch) */
  signalledAt = 0;

  constructor(
    private readonly dir: string,
    readonly run: number,
    private readonly log: LogLine[],
    private readonly t0: number,
    extra: string[] = [],
  ) {
    const args = [MAIN, "serve", "--agents", path.join(dir, "agents"), "--checkpoints", path.join(dir, "checkpoints"), "--port", "0", "--grace", String(GRACE_S), ...extra];
    this.child = spawn(process.execPath, args, { cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
    this.exit = new Promise((resolve) => this.child.once("exit", (code, signal) => resolve({ code, signal })));
    for (const stream of [this.child.stdout!, this.child.stderr!]) {
      let rest = "";
      stream.on("data", (d: Buffer) => {
        const lines = (rest + d.toString()).split("\n");
        rest = lines.pop()!;
        for (const line of lines) this.note(line);
      });
    }
  }

  private note(line: string): void {
    if (!line.trim()) return;
    this.log.push({ t: (Date.now() - this.t0) / 1000, run: this.run, line });
    appendFileSync(path.join(this.dir, "serve.log"), `${new Date().toISOString()} [run ${this.run}] ${line}\n`);
    const m = /kiln serving .* on (http:\/\/\S+?) /.exec(line);
    if (m) this.url = m[1]!;
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** Resolves once the server answers /healthz; throws if it exits first or takes over `ms`. */
  async ready(ms = 180_000): Promise<number> {
    const start = Date.now();
    let exited = false;
    void this.exit.then(() => (exited = true));
    while (Date.now() - start < ms && !exited) {
      if (this.url && (await healthz(this.url))) return (Date.now() - start) / 1000;
      await sleep(250);
    }
    throw new Error(exited ? "kiln serve exited before it was ready (see serve.log)" : "kiln serve was not ready in time");
  }

  /** SIGTERM; resolves with the seconds until the process exited, and how. */
  async stop(): Promise<{ seconds: number; code: number | null; signal: string | null }> {
    const start = (this.signalledAt = Date.now());
    this.child.kill("SIGTERM");
    const killer = setTimeout(() => this.child.kill("SIGKILL"), 120_000);
    const how = await this.exit;
    clearTimeout(killer);
    return { seconds: (Date.now() - start) / 1000, ...how };
  }
}

interface Health {
  agents: { name: string; live: string; baking: boolean; feeds: { id: string; consecutiveErrors: number; lastError?: string }[] }[];
  queue: { running: number; waiting: number };
}

async function healthz(url: string, timeoutMs = 5000): Promise<Health | null> {
  try {
    const res = await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(timeoutMs) });
    return res.ok ? ((await res.json()) as Health) : null;
  } catch {
    return null;
  }
}

function metricValue(text: string, name: string, labels = ""): number | null {
  const escaped = labels.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const m = new RegExp(`^${name}${labels ? `\\{${escaped}\\}` : "(?:\\{[^}]*\\})?"} ([0-9.eE+-]+)$`, "m").exec(text);
  return m ? Number(m[1]) : null;
}

// ---------------------------------------------------------------------------------------------
// Samples: the process from /proc, the runtime from /metrics and /healthz, the disk.

interface Sample {
  t: number;
  up: boolean;
  rssMiB: number | null;
  fds: number | null;
  threads: number | null;
  /** the bake worker (a child of the server), when one runs */
  workerRssMiB: number | null;
  tensors: number | null;
  tensorMiB: number | null;
  heapMiB: number | null;
  externalMiB: number | null;
  resident: Record<string, number>;
  live: Record<string, string>;
  baking: string[];
  checkpointMiB: number;
  /** the sum of the request-latency histogram over its count, as /metrics reports it */
  latencySum: number | null;
  latencyCount: number | null;
}

function procStatus(pid: number): { rssMiB: number; threads: number; fds: number } | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const field = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, "m").exec(status)?.[1] ?? NaN);
    const rss = field("VmRSS");
    // a process exiting (a bake worker that just finished) has no VmRSS any more: no sample, not NaN
    if (!Number.isFinite(rss)) return null;
    return { rssMiB: Math.round(rss / 1024), threads: field("Threads"), fds: readdirSync(`/proc/${pid}/fd`).length };
  } catch {
    return null;
  }
}

function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, "utf8");
      if (Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === pid) out.push(Number(d));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

function diskBytes(p: string): number {
  try {
    const st = statSync(p);
    return st.isDirectory() ? readdirSync(p).reduce((n, f) => n + diskBytes(path.join(p, f)), 0) : st.size;
  } catch {
    return 0;
  }
}

async function takeSample(server: Server, dir: string, t: number): Promise<Sample> {
  const proc = procStatus(server.pid);
  const workers = childrenOf(server.pid).map(procStatus).filter((p) => p !== null);
  const s: Sample = {
    t,
    up: false,
    rssMiB: proc?.rssMiB ?? null,
    fds: proc?.fds ?? null,
    threads: proc?.threads ?? null,
    workerRssMiB: workers.length ? Math.max(...workers.map((w) => w.rssMiB)) : null,
    tensors: null,
    tensorMiB: null,
    heapMiB: null,
    externalMiB: null,
    resident: {},
    live: {},
    baking: [],
    checkpointMiB: mib(diskBytes(path.join(dir, "checkpoints"))),
    latencySum: null,
    latencyCount: null,
  };
  const h = await healthz(server.url, 10_000);
  if (!h) return s;
  s.up = true;
  for (const a of h.agents) {
    s.live[a.name] = a.live;
    if (a.baking) s.baking.push(a.name);
  }
  try {
    const m = await (await fetch(`${server.url}/metrics`, { signal: AbortSignal.timeout(10_000) })).text();
    // KV caches kept for later turns come and go with the chat traffic (bounded per agent, and
    // dropped at every swap): the floor that must not rise is that of the rest
    const cached = h.agents.reduce((n, a) => n + (metricValue(m, "kiln_prefix_cache_tensors", `agent="${a.name}"`) ?? 0), 0);
    const tensors = metricValue(m, "kiln_tensors");
    s.tensors = tensors === null ? null : tensors - cached;
    const bytes = metricValue(m, "kiln_tensor_bytes");
    s.tensorMiB = bytes === null ? null : mib(bytes);
    const [heap, external] = [metricValue(m, "kiln_process_heap_used_bytes"), metricValue(m, "kiln_process_external_memory_bytes")];
    s.heapMiB = heap === null ? null : mib(heap);
    s.externalMiB = external === null ? null : mib(external);
    for (const a of h.agents) s.resident[a.name] = metricValue(m, "kiln_agent_resident_versions", `agent="${a.name}"`) ?? -1;
    s.latencySum = metricValue(m, "kiln_http_request_duration_seconds_sum", 'route="/v1/chat/completions"');
    s.latencyCount = metricValue(m, "kiln_http_request_duration_seconds_count", 'route="/v1/chat/completions"');
  } catch {
    s.up = false;
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Chat: the traffic, and the questions asked before the stop and after the restart.

interface ChatResult {
  /** "ok", "left" (the client left mid-stream on purpose), or what went wrong */
  outcome: string;
  text: string;
  /** every version the reply named: header, chunks, kiln.version */
  versions: string[];
  ms: number;
}

async function chat(url: string, agent: string, question: string, o: { stream: boolean; leaveAfter?: number; temperature: number; maxTokens: number; onFirstChunk?: () => void }): Promise<ChatResult> {
  const start = Date.now();
  const versions = new Set<string>();
  let text = "";
  const done = (outcome: string): ChatResult => ({ outcome, text: text.trim(), versions: [...versions], ms: Date.now() - start });
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), 120_000);
  try {
    const res = await fetch(`${url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      signal: ac.signal,
      body: JSON.stringify({ model: agent, stream: o.stream, temperature: o.temperature, max_tokens: o.maxTokens, messages: [{ role: "user", content: question }], kiln: { capture_facts: false } }),
    });
    const header = res.headers.get("x-kiln-version");
    if (header) versions.add(header);
    if (res.status !== 200) return done(`http ${res.status} ${((await res.json().catch(() => ({}))) as { error?: { code?: string } }).error?.code ?? ""}`.trim());
    if (!o.stream) {
      const body = (await res.json()) as { choices: { message: { content: string } }[]; kiln?: { version: string | null } };
      text = body.choices[0]?.message.content ?? "";
      versions.add(body.kiln?.version ?? "base");
      return done("ok");
    }
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let chunks = 0;
    for (;;) {
      const { done: end, value } = await reader.read();
      if (end) return done("truncated");
      buffer += decoder.decode(value, { stream: true });
      for (let at = buffer.indexOf("\n\n"); at >= 0; at = buffer.indexOf("\n\n")) {
        const data = buffer.slice(0, at).split("\n").find((l) => l.startsWith("data: "))?.slice(6);
        buffer = buffer.slice(at + 2);
        if (!data) continue;
        if (data === "[DONE]") return done("ok");
        const chunk = JSON.parse(data) as { error?: { code?: string }; system_fingerprint?: string; kiln?: { version: string | null }; choices?: { delta?: { content?: string } }[] };
        if (chunk.error) return done(`stream error ${chunk.error.code ?? ""}`.trim());
        if (chunk.system_fingerprint) versions.add(chunk.system_fingerprint.replace(/^kiln-/, ""));
        if (chunk.kiln) versions.add(chunk.kiln.version ?? "base");
        const content = chunk.choices?.[0]?.delta?.content;
        if (content) {
          text += content;
          if (++chunks === 1) o.onFirstChunk?.();
          if (o.leaveAfter !== undefined && chunks >= o.leaveAfter) {
            await reader.cancel().catch(() => {});
            return done("left");
          }
        }
      }
    }
  } catch (err) {
    const e = err as Error & { cause?: { code?: string } };
    return done(e.name === "AbortError" ? "timeout" : `network ${e.cause?.code ?? e.message}`);
  } finally {
    clearTimeout(timer);
  }
}

const OPEN_QUESTIONS = ["Hello!", "Tell me the news.", "Who are you?", "What happened this week?"];

/** One client, one request at a time, alternating agents, about the news each agent has read. */
async function traffic(server: Server, desk: NewsDesk, results: (ChatResult & { t: number; agent: string })[], t0: number, stop: () => boolean): Promise<void> {
  const rng = new Rng("soak-traffic");
  for (let i = 0; !stop(); i++) {
    const agent = i % 2 ? "newsroom" : "demo";
    const facts = [...desk.current.values()].filter((p) => desk.feed(p.feed)!.agent === agent);
    const question = facts.length && rng.chance(0.8) ? rng.pick(rng.pick(facts).questions) : rng.pick(OPEN_QUESTIONS);
    const stream = rng.chance(0.5);
    const r = await chat(server.url, agent, question, { stream, leaveAfter: stream && rng.chance(0.1) ? 3 : undefined, temperature: 0.7, maxTokens: 24 });
    results.push({ ...r, t: (Date.now() - t0) / 1000, agent });
    await sleep(1500);
  }
}

interface Answer {
  agent: string;
  outcome: string;
  key: string;
  question: string;
  text: string;
  version: string;
  /** the newest value, an older value of the fact, or neither */
  says: "current" | "old" | "other";
}

/** Each agent's facts (up to `n` of each, the updated ones first), asked greedily. */
function finalQuestions(desk: NewsDesk, n: number): { agent: string; key: string; question: string }[] {
  const changed = new Set(desk.published.filter((p) => p.kind !== "new").map((p) => p.key));
  const out: { agent: string; key: string; question: string }[] = [];
  for (const agent of ["demo", "newsroom"]) {
    const mine = [...desk.current.values()].filter((p) => desk.feed(p.feed)!.agent === agent);
    const ordered = [...mine.filter((p) => changed.has(p.key)), ...mine.filter((p) => !changed.has(p.key))];
    for (const p of ordered.slice(0, n)) out.push({ agent, key: p.key, question: p.questions[0]! });
  }
  return out;
}

async function ask(url: string, desk: NewsDesk, qs: { agent: string; key: string; question: string }[]): Promise<Answer[]> {
  const out: Answer[] = [];
  for (const q of qs) {
    const r = await chat(url, q.agent, q.question, { stream: false, temperature: 0, maxTokens: 24 });
    const lower = r.text.toLowerCase();
    const values = desk.published.filter((p) => p.key === q.key);
    const current = desk.current.get(q.key)!.value.toLowerCase();
    const says = lower.includes(current) ? "current" : values.some((p) => lower.includes(p.value.toLowerCase())) ? "old" : "other";
    out.push({ ...q, outcome: r.outcome, text: r.text, version: r.versions[0] ?? "?", says });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The ledgers after the run: bakes, and supersessions judged by the news desk's ground truth.

function readLedger(dir: string, agent: string): LedgerData {
  return JSON.parse(readFileSync(path.join(dir, "checkpoints", agent, "ledger.json"), "utf8")) as LedgerData;
}

/** The retraction the run makes half-way, as a user's "forget ..." would, and what it must hold to. */
interface Retraction {
  agent: string;
  item: string;
  text: string;
  /** seconds since the start when the admin API answered */
  at: number;
  status: number;
  /** the answer said the weights holding it had left service */
  outOfService: boolean;
  /** the versions whose weights held the item when it was retracted: none may answer after `at` */
  holders: string[];
}

/** Retracts the first item `agent`'s live version holds through the admin API; null while it holds none. */
async function retractOne(url: string, dir: string, agent: string, t0: number): Promise<Retraction | null> {
  const ledger = readLedger(dir, agent);
  const live = ledger.versions.find((v) => v.id === ledger.live);
  const item = ledger.items.find((i) => i.status === "absorbed" && live?.items.includes(i.id));
  if (!item) return null;
  const holders = ledger.versions.filter((v) => v.items.includes(item.id)).map((v) => v.id);
  const res = await fetch(`${url}/admin/agents/${agent}/items/${item.id}/retract`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ reason: "soak: a user asked to forget it" }) });
  const body = (await res.json().catch(() => ({}))) as { outOfService?: boolean };
  return { agent, item: item.id, text: item.text, at: (Date.now() - t0) / 1000, status: res.status, outOfService: body.outOfService === true, holders };
}

interface Supersession {
  agent: string;
  item: string;
  by: string;
  how: "feed correction" | "update found by the model";
  verdict: "real update" | "WRONG: another fact" | "WRONG: the older value won" | "WRONG: not traceable to the feeds";
}

function judgeSupersessions(agent: string, ledger: LedgerData, desk: NewsDesk): Supersession[] {
  const byText = new Map(desk.published.map((p) => [`${p.guid}\n${p.text}`, p]));
  const items = new Map(ledger.items.map((i) => [i.id, i]));
  const traced = (id: string) => {
    const i = items.get(id);
    return i ? byText.get(`${i.source.guid}\n${i.text}`) : undefined;
  };
  const out: Supersession[] = [];
  for (const item of ledger.items) {
    for (const h of item.history.filter((x) => x.status === "superseded")) {
      const by = /^superseded by (\S+?)(?::|$)/.exec(h.reason ?? "")?.[1] ?? "?";
      const [older, newer] = [traced(item.id), traced(by)];
      const verdict = !older || !newer ? "WRONG: not traceable to the feeds" : older.key !== newer.key ? "WRONG: another fact" : older.seq > newer.seq ? "WRONG: the older value won" : "real update";
      const how = (h.reason ?? "").includes(": asked") ? "update found by the model" : "feed correction";
      out.push({ agent, item: `${item.text} [${item.id}]`, by: `${items.get(by)?.text ?? "?"} [${by}]`, how, verdict });
    }
  }
  return out;
}

/**
 * Items stating a value their fact no longer has, still pending, baking or absorbed, while the
 * newer text has been through a bake (where updates are looked for): updates not found, or found
 * and waiting until a version answers the news (marked).
 */
function staleItems(ledger: LedgerData, desk: NewsDesk): string[] {
  const byText = new Map(desk.published.map((p) => [`${p.guid}\n${p.text}`, p]));
  const baked = new Map(ledger.items.filter((i) => i.history.some((h) => h.status === "baking")).map((i) => [`${i.source.guid}\n${i.text}`, i]));
  return ledger.items
    .filter((i) => ["pending", "baking", "absorbed"].includes(i.status))
    .flatMap((i) => {
      const p = byText.get(`${i.source.guid}\n${i.text}`);
      const now = p && desk.current.get(p.key)!;
      const newer = now && now !== p ? baked.get(`${now.guid}\n${now.text}`) : undefined;
      // found, but the news is not learned yet: the gate keeps the older item until it is
      const waits = i.history.at(-1)?.reason?.includes("which would supersede it") ? ", found, waiting for the news to be absorbed" : "";
      return newer ? [`${i.text} (${i.status}${waits}) beside "${newer.text}" (${newer.status})`] : [];
    });
}

/**
 * Probes (questions the model wrote about an item, kept by kiln's checks) that ask about another
 * fact of the item's subject, per the world: their prompted answers state what the item does not
 * ("The population of Gulldale is Ewyn Craneridge." for a mayor), the bake teaches it, and they
 * are evidence for supersessions.
 */
function offFactProbes(ledger: LedgerData, desk: NewsDesk): string[] {
  const byText = new Map(desk.published.map((p) => [`${p.guid}\n${p.text}`, p]));
  return ledger.items.flatMap((i) => {
    const p = byText.get(`${i.source.guid}\n${i.text}`);
    if (!p) return [];
    const [subject, rel] = p.key.split("|") as [string, string];
    const e = desk.idx.entity(subject);
    const others = relationsFor(e.kind).filter((r) => r.name !== rel).flatMap((r) => r.questions.map((q) => q(e.name)));
    return (i.probes ?? []).filter((q) => others.includes(q.question)).map((q) => `"${i.text}" (${i.status}): "${q.question}" -> "${q.answer.split("\n")[0]}"`);
  });
}

/**
 * Scheduled bakes that started before the feed polls of their minute stored their news (a bake
 * waits for polls in flight: news of its minute belongs in it).
 */
function bakesAheadOfTheirPolls(ledger: LedgerData): BakeRun[] {
  return ledger.bakes.filter((b) => {
    const start = Date.parse(b.startedAt);
    return b.trigger === "schedule" && start % 60_000 < 3000 && ledger.items.some((i) => i.kind === "feed" && Date.parse(i.createdAt) >= start && Date.parse(i.createdAt) - start < 5000);
  });
}

/** Items their feed corrected while a bake was training on them: that bake's version learns the corrected-away text. */
function correctedWhileBaking(ledger: LedgerData): string[] {
  return ledger.items.flatMap((i) =>
    i.history.some((h, k) => h.status === "superseded" && !(h.reason ?? "").includes(": asked") && i.history[k - 1]?.status === "baking") ? [i.text] : [],
  );
}

function overlappingBakes(bakes: (BakeRun & { agent: string })[]): string[] {
  const spans = bakes.filter((b) => b.finishedAt).map((b) => ({ b, from: Date.parse(b.startedAt), to: Date.parse(b.finishedAt!) }));
  const out: string[] = [];
  for (let i = 0; i < spans.length; i++) {
    for (let j = i + 1; j < spans.length; j++) {
      const [x, y] = [spans[i]!, spans[j]!];
      if (x.from < y.to && y.from < x.to) out.push(`${x.b.agent} ${x.b.id} and ${y.b.agent} ${y.b.id}`);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Trends: a floor (the least value of each window) that keeps rising is memory held for good.

function windows(samples: Sample[], pick: (s: Sample) => number | null, windowS: number, from: number): { start: number; floor: number; peak: number }[] {
  const out: { start: number; floor: number; peak: number }[] = [];
  const end = Math.max(...samples.map((s) => s.t));
  for (let start = from; start <= end; start += windowS) {
    // a last window under half the length joins the one before (a floor of few samples is no floor)
    const last = start + 1.5 * windowS > end;
    const vs = samples.filter((s) => s.t >= start && (last || s.t < start + windowS)).map(pick).filter((v): v is number => v !== null);
    if (vs.length) out.push({ start: Math.round(start), floor: Math.min(...vs), peak: Math.max(...vs) });
    if (last) break;
  }
  return out;
}

function percentile(xs: number[], p: number): number | null {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}


/** The repository's commit, "+" when the working tree has changes. */
function commit(): string {
  const git = (...args: string[]) => execFileSync("git", args, { cwd: fileURLToPath(new URL("../..", import.meta.url)), encoding: "utf8" }).trim();
  try {
    return git("rev-parse", "--short", "HEAD") + (git("status", "--porcelain", "--untracked-files=no") ? "+" : "");
  } catch {
    return "?";
  }
}

function countBy(xs: string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const x of xs) out[x] = (out[x] ?? 0) + 1;
  return out;
}

// ---------------------------------------------------------------------------------------------
// The run

const AGENTS = ["demo", "newsroom"];

/** Everything the run observed, for analyse(). */
interface RunRecord {
  opts: Options;
  dir: string;
  t0: number;
  desk: NewsDesk;
  feedRequests: number;
  log: LogLine[];
  samples: Sample[];
  /** the last sample, taken once no bake ran (null: a bake was still running 5 minutes after the news stopped) */
  quiet: Sample | null;
  requests: (ChatResult & { t: number; agent: string })[];
  before: Answer[];
  after: Answer[];
  liveAtStop: Record<string, string>;
  liveAfter: Record<string, string>;
  stop: { at: number; replyEndedAfterSignalMs: number; seconds: number; code: number | null; signal: string | null };
  inFlight: ChatResult;
  restart: { readySeconds: number; stopSeconds: number; code: number | null };
  retraction: Retraction | null;
}

async function main(): Promise<void> {
  const opts = parseArgs(process.argv.slice(2));
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-soak-"));
  const t0 = Date.now();
  const now = () => (Date.now() - t0) / 1000;
  const say = (m: string) => process.stderr.write(`[soak ${(now() / 60).toFixed(1).padStart(5)} min] ${m}\n`);
  const log: LogLine[] = [];
  let server: Server | null = null;
  process.once("SIGINT", () => {
    server?.child.kill("SIGTERM");
    process.stderr.write(`soak: interrupted; ${dir} is kept\n`);
    process.exit(130);
  });

  // --- news, feeds, agents, server ---
  const desk = new NewsDesk(new WorldIndex(generateWorld(opts.seed)), opts.seed, opts.tickSeconds * 1000);
  const feeds = await startFeedServer(desk);
  mkdirSync(path.join(dir, "agents"));
  for (const [file, text] of Object.entries(agentFiles(feeds.url))) writeFileSync(path.join(dir, "agents", file), text);
  say(`folder ${dir}; feeds on ${feeds.url}; ${opts.minutes} min of news, every ${opts.tickSeconds} s`);
  server = new Server(dir, 1, log, t0);
  say(`kiln serve (pid ${server.pid}) up in ${(await server.ready()).toFixed(1)} s on ${server.url}`);

  // --- news, traffic and samples for --minutes ---
  const samples: Sample[] = [];
  const requests: (ChatResult & { t: number; agent: string })[] = [];
  const endAt = Date.now() + opts.minutes * 60_000;
  const ticker = setInterval(() => desk.tick(), opts.tickSeconds * 1000);
  const sampling = (async () => {
    while (Date.now() < endAt) {
      const s = await takeSample(server!, dir, now());
      samples.push(s);
      if (samples.length % 30 === 0) say(`RSS ${s.rssMiB} MiB, fds ${s.fds}, tensors ${s.tensors}, live ${JSON.stringify(s.live)}, ${requests.length} requests, ${desk.published.length} texts published`);
      await sleep(SAMPLE_MS);
    }
  })();
  // Half-way, demo is asked to forget an item its live weights hold: tried each minute until they
  // hold one (a bake running then is stopped: the answer comes once the holders left service).
  const retracting = (async () => {
    await sleep(opts.minutes * 30_000);
    while (Date.now() < endAt) {
      const r = await retractOne(server!.url, dir, "demo", t0).catch(() => null);
      if (r) {
        say(`retracted demo ${r.item} ("${r.text}"): HTTP ${r.status}${r.outOfService ? "" : ", NOT yet out of service"}; versions holding it: ${r.holders.join(", ")}`);
        return r;
      }
      await sleep(60_000);
    }
    return null;
  })();
  await traffic(server, desk, requests, t0, () => Date.now() >= endAt);
  clearInterval(ticker);
  await sampling;
  const retraction = await retracting;
  say(`news and traffic stopped after ${requests.length} requests; waiting for a moment with no bake`);

  // --- settle: up to 5 minutes for no bake to run (the schedules bake what the last polls brought) ---
  let quiet: Sample | null = null;
  for (const until = Date.now() + 300_000; !quiet && Date.now() < until; ) {
    const s = await takeSample(server, dir, now());
    samples.push(s);
    if (s.up && !s.baking.length) quiet = s;
    else await sleep(2000);
  }

  // --- greedy answers, then SIGTERM while a reply streams ---
  const questions = finalQuestions(desk, opts.questions);
  const liveNow = async () => Object.fromEntries((await healthz(server!.url))!.agents.map((a) => [a.name, a.live]));
  let before = await ask(server.url, desk, questions);
  let liveAtStop = await liveNow();
  if (before.some((a) => a.version !== liveAtStop[a.agent])) {
    // a promotion came in between: once more
    before = await ask(server.url, desk, questions);
    liveAtStop = await liveNow();
  }
  say(`asked ${before.length} questions; SIGTERM while a reply streams`);
  const first = server;
  let stopping: ReturnType<Server["stop"]> | null = null;
  const inFlight = await chat(first.url, "demo", "Tell me everything you know about the towns.", {
    stream: true,
    temperature: 0.7,
    maxTokens: 64,
    onFirstChunk: () => (stopping = first.stop()),
  });
  const replyEnded = Date.now();
  const stop = { at: first.signalledAt, replyEndedAfterSignalMs: replyEnded - first.signalledAt, ...(await (stopping ?? first.stop())) };
  say(`stopped in ${stop.seconds.toFixed(1)} s (exit ${stop.code ?? stop.signal}); the reply in flight: ${inFlight.outcome}`);

  // --- restart with no schedules: the same live versions, the same answers ---
  server = new Server(dir, 2, log, t0, ["--no-schedules"]);
  const readySeconds = await server.ready();
  const liveAfter = await liveNow();
  const after = await ask(server.url, desk, questions);
  const second = await server.stop();
  server = null;
  await feeds.close();
  say(`restarted in ${readySeconds.toFixed(1)} s, asked again, stopped in ${second.seconds.toFixed(1)} s`);

  const summary = analyse({
    opts, dir, t0, desk, feedRequests: feeds.requests(), log, samples, quiet, requests, before, after, liveAtStop, liveAfter, stop, inFlight,
    restart: { readySeconds, stopSeconds: second.seconds, code: second.code },
    retraction,
  });
  writeFileSync(path.join(dir, "summary.json"), JSON.stringify({ ...summary, samples, requestLog: requests, publishedTexts: desk.published }, null, 2) + "\n");
  if (opts.out) writeFileSync(opts.out, JSON.stringify(summary, null, 2) + "\n");
  report(summary);
  const keep = summary.failures.length > 0 || opts.keep;
  if (keep) process.stderr.write(`soak: ${dir} is kept (serve.log; summary.json with every sample, request and published text; the checkpoints)\n`);
  else rmSync(dir, { recursive: true, force: true });
  process.exit(summary.failures.length ? 1 : 0);
}

// ---------------------------------------------------------------------------------------------
// What the run shows, and the invariants

function analyse(run: RunRecord) {
  const { dir, desk, log, samples, requests, before, after, liveAtStop, liveAfter, stop, inFlight } = run;
  const failures: string[] = [];
  const fail = (broken: boolean, what: () => string) => broken && failures.push(what());

  // --- the ledgers ---
  const ledgers = Object.fromEntries(AGENTS.map((a) => [a, readLedger(dir, a)]));
  const bakes = AGENTS.flatMap((a) => ledgers[a]!.bakes.map((b) => ({ ...b, agent: a })));
  // a bake the stop cancelled is expected: it ran when SIGTERM came; so is one the retraction
  // stopped (it could have ended holding the item)
  const cancelledByStop = (b: BakeRun) => b.status === "failed" && /^bake cancelled(: the agent is stopping)?$/.test(b.error ?? "") && Date.parse(b.startedAt) <= stop.at && Date.parse(b.finishedAt ?? "") >= stop.at;
  const stoppedByRetraction = (b: BakeRun) => b.status === "failed" && (b.error ?? "").startsWith("bake cancelled: retraction asked for");
  const failed = bakes.filter((b) => b.status === "failed" && !cancelledByStop(b) && !stoppedByRetraction(b));
  const overlaps = overlappingBakes(bakes);
  const ahead = AGENTS.flatMap((a) => bakesAheadOfTheirPolls(ledgers[a]!).map((b) => `${a} ${b.id} (${b.startedAt})`));
  const corrected = Object.fromEntries(AGENTS.map((a) => [a, correctedWhileBaking(ledgers[a]!)]));
  const probes = AGENTS.reduce((n, a) => n + ledgers[a]!.items.reduce((m, i) => m + (i.probes?.length ?? 0), 0), 0);
  const offFact = AGENTS.flatMap((a) => offFactProbes(ledgers[a]!, desk).map((x) => `${a}: ${x}`));
  const supersessions = AGENTS.flatMap((a) => judgeSupersessions(a, ledgers[a]!, desk));
  const wrong = supersessions.filter((s) => s.verdict !== "real update");
  const stale = Object.fromEntries(AGENTS.map((a) => [a, staleItems(ledgers[a]!, desk)]));
  // An item superseded by news that was then rejected (never learned) or retracted is given back
  // on purpose (the ledger's reason says so); any other way out of "superseded" is a defect.
  const resurrected = AGENTS.flatMap((a) =>
    ledgers[a]!.items
      .filter((i) => i.history.some((h, k) => h.status === "superseded" && k < i.history.length - 1 && !/which superseded it, was (rejected|retracted)/.test(i.history[k + 1]!.reason ?? "")))
      .map((i) => `${a}: ${i.text} (${i.history.map((h) => h.status).join(" > ")})`),
  );
  const stuck = AGENTS.flatMap((a) => ledgers[a]!.items.filter((i) => i.status === "baking").map((i) => `${a}: ${i.text}`));
  // The retraction: answered 202 (a rebuild started), the item stays retracted, and no reply begun
  // after the answer came from weights that held it (they leave service before the rebuild).
  const r = run.retraction;
  // (with any version the ledger says held it in the end: one a bake in its last seconds promoted
  // while the retraction waited for it was not among them when it was asked for)
  const holders = new Set(r ? [...r.holders, ...ledgers[r.agent]!.versions.filter((v) => v.items.includes(r.item)).map((v) => v.id)] : []);
  const servedAfter = r ? requests.filter((q) => q.t - q.ms / 1000 >= r.at && q.agent === r.agent && q.versions.some((v) => holders.has(v))) : [];
  const retractedStatus = r ? ledgers[r.agent]!.items.find((i) => i.id === r.item)?.status : undefined;
  fail(!r, () => "no retraction was made: demo's live weights held no item from half-way on");
  fail(!!r && r.status !== 202, () => `the retraction of ${r!.item} was answered HTTP ${r!.status}, not 202 (a rebuild started)`);
  fail(!!r && !r.outOfService, () => `the retraction of ${r!.item} was answered before the weights holding it left service`);
  fail(!!r && retractedStatus !== "retracted", () => `the retracted item ${r!.item} ended ${retractedStatus}`);
  fail(servedAfter.length > 0, () => `${servedAfter.length} repl(ies) begun after the retraction came from weights holding the item (${[...new Set(servedAfter.flatMap((q) => q.versions))].join(", ")})`);
  fail(!!r && holders.has(liveAtStop[r.agent]!), () => `${liveAtStop[r!.agent]}, live at the stop, holds the retracted item`);
  const home = (a: string) => path.join(dir, "checkpoints", a);
  const versionDirs = Object.fromEntries(AGENTS.map((a) => [a, readdirSync(home(a)).filter((f) => /^v\d{4}$/.test(f))]));
  const leftovers = AGENTS.flatMap((a) => readdirSync(home(a)).filter((f) => f === "orphaned" || f.includes(".tmp-")).map((f) => `${a}/${f}`));
  fail(failed.length > 0, () => `${failed.length} failed bake(s): ${failed.map((b) => `${b.agent} ${b.id}: ${b.error}`).join("; ")}`);
  fail(!bakes.some((b) => b.status === "promoted"), () => "no bake was promoted");
  fail(overlaps.length > 0, () => `bakes ran at once: ${overlaps.join("; ")}`);
  fail(ahead.length > 0, () => `${ahead.length} scheduled bake(s) started before the polls of their minute stored their news: ${ahead.join("; ")}`);
  fail(wrong.length > 0, () => `${wrong.length} wrong supersession(s)`);
  fail(resurrected.length > 0, () => `${resurrected.length} item(s) came back after being superseded: ${resurrected.join("; ")}`);
  fail(stuck.length > 0, () => `${stuck.length} item(s) still "baking" after the stop`);
  fail(AGENTS.some((a) => versionDirs[a]!.length > 2 * KEEP_VERSIONS + 1), () => `version folders ${JSON.stringify(Object.fromEntries(AGENTS.map((a) => [a, versionDirs[a]!.length])))}: at most ${2 * KEEP_VERSIONS + 1} each (live, kept, rejected)`);
  fail(leftovers.length > 0, () => `left in the checkpoints: ${leftovers.join(", ")}`);

  // --- the server's log (both runs) ---
  const expected = (l: LogLine) =>
    (bakes.some(cancelledByStop) && /bake \S+ failed: bake cancelled|recovered from an interrupted bake/.test(l.line)) || (bakes.some(stoppedByRetraction) && /bake \S+ failed: bake cancelled: retraction asked for/.test(l.line));
  const errors = log.filter((l) => /error|fail|unhandled|exception|warn|cannot|could not|EMFILE|ENOSPC|\bat .*:\d+:\d+/i.test(l.line) && !expected(l));
  fail(errors.length > 0, () => `${errors.length} error or warning line(s) in the server's log`);

  // --- requests ---
  const ok = requests.filter((r) => r.outcome === "ok");
  const dropped = requests.filter((r) => r.outcome !== "ok" && r.outcome !== "left");
  const mixed = ok.filter((r) => r.versions.length > 1);
  fail(dropped.length > 0, () => `${dropped.length} request(s) dropped: ${JSON.stringify(countBy(dropped.map((r) => r.outcome)))}`);
  fail(mixed.length > 0, () => `${mixed.length} reply(ies) named more than one version`);
  const up = samples.filter((s) => s.up);
  fail(up.length < samples.length, () => `${samples.length - up.length} sample(s) found the server not answering /healthz within 10 s`);
  const lastLatency = [...up].reverse().find((s) => s.latencyCount);
  fail(!!lastLatency && lastLatency.latencySum === 0, () => `/metrics says its ${lastLatency!.latencyCount} chat requests took 0 s in all`);

  // --- memory, tensors, fds: the floor of each window after every agent serves a baked version ---
  const values = (pick: (s: Sample) => number | null) => up.map(pick).filter((v): v is number => v !== null);
  const range = (pick: (s: Sample) => number | null) => {
    const v = values(pick);
    return v.length ? { start: v[0]!, end: v.at(-1)!, peak: Math.max(...v) } : null;
  };
  const windowSeconds = Math.max(60, (run.opts.minutes * 60) / 6);
  const warm = up.find((s) => AGENTS.every((a) => s.live[a] && s.live[a] !== "base"))?.t ?? 0;
  const trend = {
    rssMiB: windows(up, (s) => s.rssMiB, windowSeconds, warm),
    tensors: windows(up, (s) => s.tensors, windowSeconds, warm),
    fds: windows(up, (s) => s.fds, windowSeconds, warm),
    // not judged: reported so an RSS rise can be told apart (the heap grows with the ledgers)
    heapMiB: windows(up, (s) => s.heapMiB, windowSeconds, warm),
    externalMiB: windows(up, (s) => s.externalMiB, windowSeconds, warm),
  };
  const rose = (w: { floor: number }[], slack: number) => w.length >= 3 && w.at(-1)!.floor > w[0]!.floor + slack;
  fail(rose(trend.rssMiB, Math.max(64, 0.25 * (trend.rssMiB[0]?.floor ?? 0))), () => `the RSS floor rose from ${trend.rssMiB[0]!.floor} to ${trend.rssMiB.at(-1)!.floor} MiB`);
  fail(rose(trend.tensors, 0), () => `the tensor floor rose from ${trend.tensors[0]!.floor} to ${trend.tensors.at(-1)!.floor}`);
  fail(rose(trend.fds, 8), () => `the fd floor rose from ${trend.fds[0]!.floor} to ${trend.fds.at(-1)!.floor}`);
  const residentMax = Math.max(0, ...up.flatMap((s) => Object.values(s.resident)));
  fail(residentMax > 2, () => `an agent held ${residentMax} versions in memory (one client: at most the live one and one a reply is pinned to)`);
  fail(!run.quiet, () => "a bake was still running 5 minutes after the news stopped");
  fail(!!run.quiet && Object.values(run.quiet.resident).some((n) => n !== 1), () => `with nothing running, versions in memory were ${JSON.stringify(run.quiet!.resident)}, not 1 each`);
  const health = run.quiet ? AGENTS.filter((a) => run.quiet!.live[a] === undefined) : [];
  fail(health.length > 0, () => `agents missing from /healthz: ${health.join(", ")}`);

  // --- stop and restart ---
  const changed = before.filter((b, k) => b.text !== after[k]!.text);
  fail(inFlight.outcome !== "ok", () => `the reply streaming at SIGTERM ended "${inFlight.outcome}" instead of finishing within the grace`);
  const unanswered = [...before, ...after].filter((a) => a.outcome !== "ok");
  fail(unanswered.length > 0, () => `${unanswered.length} of the final questions got no answer: ${JSON.stringify(countBy(unanswered.map((a) => a.outcome)))}`);
  fail(stop.code !== 0 || stop.seconds > GRACE_S + 20, () => `the stop took ${stop.seconds.toFixed(1)} s and exited ${stop.code ?? stop.signal}`);
  fail(run.restart.code !== 0, () => `the restarted server exited ${run.restart.code}`);
  fail(AGENTS.some((a) => liveAfter[a] !== liveAtStop[a]), () => `the restart came back on ${JSON.stringify(liveAfter)}, not ${JSON.stringify(liveAtStop)}`);
  fail(changed.length > 0, () => `${changed.length} of ${before.length} answers differ after the restart`);

  const wall = (b: BakeRun) => (b.finishedAt ? +((Date.parse(b.finishedAt) - Date.parse(b.startedAt)) / 1000).toFixed(1) : null);
  const cpus = os.cpus();
  return {
    date: new Date(run.t0).toISOString(),
    commit: commit(),
    machine: `${cpus.length} × ${cpus[0]?.model ?? "?"}, ${mib(os.totalmem())} MiB, node ${process.version}, load average ${os.loadavg().map((l) => l.toFixed(1)).join(" ")}`,
    options: run.opts,
    minutes: +((Date.now() - run.t0) / 60_000).toFixed(1),
    published: countBy(desk.published.map((p) => p.kind)),
    feedRequests: run.feedRequests,
    bakes: Object.fromEntries(
      AGENTS.map((a) => {
        const mine = bakes.filter((b) => b.agent === a);
        const secs = mine.map(wall).filter((s): s is number => s !== null);
        const count = (status: BakeRun["status"]) => mine.filter((b) => b.status === status).length;
        return [a, { promoted: count("promoted"), rejected: count("rejected"), failed: count("failed"), wallSeconds: { min: Math.min(...secs), median: percentile(secs, 50), max: Math.max(...secs) }, live: liveAtStop[a], items: countBy(ledgers[a]!.items.map((i) => i.status)) }];
      }),
    ),
    bakeList: bakes.map((b) => ({ agent: b.agent, id: b.id, status: b.status, version: b.version, startedAt: b.startedAt, newItems: b.itemIds.length, replayed: b.replayIds.length, wallSeconds: wall(b), trainSeconds: b.metrics?.seconds ?? null, absorption: b.metrics?.absorption ?? null, retention: b.metrics?.retention ?? null, why: (b.reasons ?? []).join("; ") || b.error || "" })),
    serverRssMiB: range((s) => s.rssMiB),
    bakeWorkerPeakRssMiB: Math.max(0, ...values((s) => s.workerRssMiB)),
    fds: range((s) => s.fds),
    threads: range((s) => s.threads),
    tensors: range((s) => s.tensors),
    residentVersionsMax: residentMax,
    checkpointMiB: range((s) => s.checkpointMiB),
    versionDirs: Object.fromEntries(AGENTS.map((a) => [a, versionDirs[a]!.length])),
    ledgerKiB: Object.fromEntries(AGENTS.map((a) => [a, Math.round(statSync(path.join(home(a), "ledger.json")).size / 1024)])),
    trend: { windowSeconds, from: Math.round(warm), ...trend },
    requests: {
      sent: requests.length,
      outcomes: countBy(requests.map((r) => r.outcome)),
      latencyMs: { p50: percentile(ok.map((r) => r.ms), 50), p99: percentile(ok.map((r) => r.ms), 99) },
    },
    metricsLatency: lastLatency ? { count: lastLatency.latencyCount, sumSeconds: lastLatency.latencySum } : null,
    logErrors: errors.map((l) => `[run ${l.run}, ${(l.t / 60).toFixed(1)} min] ${l.line}`),
    supersessions,
    correctedWhileBaking: corrected,
    probes: { kept: probes, askingAnotherFact: offFact },
    bakesAheadOfTheirPolls: ahead,
    staleItemsStillActive: stale,
    answers: {
      asked: before.length,
      beforeStop: countBy(before.map((a) => `${a.agent} ${a.says}`)),
      list: before.map((b, k) => ({ agent: b.agent, question: b.question, version: b.version, says: b.says, before: b.text, after: after[k]!.text })),
    },
    stop: {
      seconds: +stop.seconds.toFixed(1),
      exit: stop.code ?? stop.signal,
      replyInFlight: inFlight.outcome,
      replyInFlightText: inFlight.text,
      replyEndedAfterSignalMs: stop.replyEndedAfterSignalMs,
      cancelledBakes: bakes.filter(cancelledByStop).length,
    },
    restart: { readySeconds: +run.restart.readySeconds.toFixed(1), liveAtStop, liveAfter, sameAnswers: before.length - changed.length, of: before.length, stopSeconds: +run.restart.stopSeconds.toFixed(1) },
    retraction: r ? { ...r, repliesAfter: requests.filter((q) => q.t - q.ms / 1000 >= r.at && q.agent === r.agent).length, fromHolders: servedAfter.length, endedAs: retractedStatus, rebuild: ledgers[r.agent]!.bakes.filter((b) => b.trigger === "retraction").map((b) => `${b.id} ${b.status}${b.version ? ` ${b.version}` : ""}`) } : null,
    failures,
    dir,
  };
}

type Summary = ReturnType<typeof analyse>;

function report(s: Summary): void {
  const w = (line = "") => process.stdout.write(line + "\n");
  const three = (r: { start: number; end: number; peak: number } | null) => (r ? `${r.start}/${r.end}/${r.peak}` : "-");
  w(`\n== kiln soak, ${s.date} (commit ${s.commit}): ${s.minutes} min on ${s.machine}`);
  w(`published: ${JSON.stringify(s.published)} (${s.feedRequests} feed requests)`);
  for (const [a, b] of Object.entries(s.bakes)) {
    w(`${a}: bakes promoted ${b.promoted}, rejected ${b.rejected}, failed ${b.failed}; wall s min/median/max ${b.wallSeconds.min}/${b.wallSeconds.median}/${b.wallSeconds.max}; live ${b.live}; items ${JSON.stringify(b.items)}`);
  }
  for (const b of s.bakeList.filter((x) => x.status !== "promoted")) w(`  ${b.agent} ${b.id} ${b.status}: ${b.why}`);
  w(`server RSS MiB start/end/peak ${three(s.serverRssMiB)}; bake worker peak ${s.bakeWorkerPeakRssMiB} MiB`);
  w(`fds ${three(s.fds)}; threads ${three(s.threads)}; tensors ${three(s.tensors)}; versions in memory at most ${s.residentVersionsMax}`);
  w(`checkpoints MiB ${three(s.checkpointMiB)}; version folders ${JSON.stringify(s.versionDirs)}; ledgers KiB ${JSON.stringify(s.ledgerKiB)}`);
  const fl = (xs: { floor: number; peak: number }[]) => xs.map((x) => `${x.floor}-${x.peak}`).join(", ");
  w(`windows of ${s.trend.windowSeconds} s from ${s.trend.from} s (floor-peak): RSS MiB ${fl(s.trend.rssMiB)}; tensors ${fl(s.trend.tensors)}; fds ${fl(s.trend.fds)}; V8 heap MiB ${fl(s.trend.heapMiB)}; external MiB ${fl(s.trend.externalMiB)}`);
  w(`requests: ${s.requests.sent} ${JSON.stringify(s.requests.outcomes)}; latency p50 ${s.requests.latencyMs.p50} ms, p99 ${s.requests.latencyMs.p99} ms; /metrics chat latency ${JSON.stringify(s.metricsLatency)}`);
  w(`supersessions: ${s.supersessions.length} ${JSON.stringify(countBy(s.supersessions.map((x) => `${x.how}: ${x.verdict}`)))}`);
  for (const x of s.supersessions.filter((x) => x.verdict !== "real update")) w(`  ${x.verdict}: ${x.item} by ${x.by}`);
  w(`scheduled bakes that started before their minute's polls landed: ${s.bakesAheadOfTheirPolls.length}; items their feed corrected while a bake trained on them: ${JSON.stringify(Object.fromEntries(Object.entries(s.correctedWhileBaking).map(([a, l]) => [a, l.length])))}`);
  w(`probes kept: ${s.probes.kept}, of which asking about another fact of their subject (per the world): ${s.probes.askingAnotherFact.length}`);
  for (const x of s.probes.askingAnotherFact) w(`  ${x}`);
  const stale = Object.values(s.staleItemsStillActive).flat();
  w(`older values still active beside their newer one, baked (updates not found): ${stale.length}`);
  for (const x of stale) w(`  ${x}`);
  w(`answers before the stop (greedy; current value / an older one / neither): ${JSON.stringify(s.answers.beforeStop)}`);
  w(`stop: SIGTERM with a reply streaming -> exit ${s.stop.exit} in ${s.stop.seconds} s; the reply ended ${s.stop.replyInFlight} ${s.stop.replyEndedAfterSignalMs} ms after the signal ("${s.stop.replyInFlightText}"); bakes it cancelled: ${s.stop.cancelledBakes}`);
  w(`restart: ready in ${s.restart.readySeconds} s on ${JSON.stringify(s.restart.liveAfter)} (at the stop: ${JSON.stringify(s.restart.liveAtStop)}); same answers ${s.restart.sameAnswers}/${s.restart.of}; stopped in ${s.restart.stopSeconds} s`);
  const rt = s.retraction;
  w(rt ? `retraction at ${(rt.at / 60).toFixed(1)} min: ${rt.agent} ${rt.item} (HTTP ${rt.status}, held by ${rt.holders.join(", ")}); rebuild ${rt.rebuild.join(", ") || "none"}; ${rt.repliesAfter} replies after it, ${rt.fromHolders} from weights holding it; the item ended ${rt.endedAs}` : "retraction: none made");
  w(`log errors: ${s.logErrors.length}`);
  for (const l of s.logErrors.slice(0, 20)) w(`  ${l}`);
  w(s.failures.length ? `\nFAILED (${s.failures.length}):\n${s.failures.map((f) => `  - ${f}`).join("\n")}` : "\nall invariants held");
}

main().catch((err: Error) => {
  process.stderr.write(`soak: ${err.stack ?? err.message}\n`);
  process.exit(1);
});
