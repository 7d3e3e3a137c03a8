// A load client for a running `kiln serve`: concurrent chat completions (streaming and not, some
// clients leaving mid-stream) while it samples /healthz and /metrics, so what happens to serving
// during a bake, a swap, a rollback or a shutdown can be measured from outside.
//
//   node dist/tools/loadtest.js --url http://127.0.0.1:8080 --model demo --clients 4 --seconds 60 \
//     [--stream 0.5] [--abort 0.1] [--max-tokens 48] [--pid <server pid>] [--out run.json]
//
// It stops after --seconds, on SIGINT, or when the server stops answering for --give-up seconds,
// and prints (and with --out writes) a summary: requests by outcome, latency and tokens/s while
// idle and while baking, and every reply whose version is suspect: one whose x-kiln-version
// header, chunks (system_fingerprint) and kiln.version do not all name the same version, or one
// from a version the once-a-second /healthz samples never saw live while it ran (only meaningful
// when swaps are further apart than that).
import { readFileSync, writeFileSync } from "node:fs";
import { parseArgs as parseArgv } from "node:util";

interface Options {
  url: string;
  model: string;
  clients: number;
  seconds: number;
  stream: number;
  abort: number;
  maxTokens: number;
  pid?: number;
  out?: string;
  giveUp: number;
  token?: string;
}

function parseArgs(argv: string[]): Options {
  const names = ["url", "model", "clients", "seconds", "stream", "abort", "max-tokens", "pid", "out", "give-up", "token"];
  const { values } = parseArgv({ args: argv, options: { ...Object.fromEntries(names.map((n) => [n, { type: "string" as const }])), help: { type: "boolean" as const } } });
  const o = values as Record<string, string | undefined>;
  if (values.help) {
    // the usage is this file's opening comment
    const lines = readFileSync(new URL(import.meta.url), "utf8").split("\n");
    const head = lines.slice(0, lines.findIndex((l) => !l.startsWith("//"))).map((l) => l.replace(/^\/\/ ?/, ""));
    process.stdout.write(head.join("\n") + "\n");
    process.exit(0);
  }
  const num = (k: string, d: number) => (o[k] === undefined ? d : Number(o[k]));
  return {
    url: (o.url ?? "http://127.0.0.1:8080").replace(/\/$/, ""),
    model: o.model ?? "demo",
    clients: num("clients", 4),
    seconds: num("seconds", 30),
    stream: num("stream", 0.5),
    abort: num("abort", 0.1),
    maxTokens: num("max-tokens", 48),
    pid: o.pid ? Number(o.pid) : undefined,
    out: o.out,
    giveUp: num("give-up", 5),
    token: o.token ?? process.env.KILN_TOKEN,
  };
}

/** One request as the client saw it. */
interface Sample {
  client: number;
  start: number; // ms since the run began
  end: number;
  stream: boolean;
  /** "ok", "aborted" (this client left on purpose), "http <status> <code>", "stream error <code>", "network <code>", "truncated" */
  outcome: string;
  status: number | null;
  /** the version the reply names (kiln.version, "base" for the base model) */
  version: string | null;
  /** the x-kiln-version header, and every version any chunk named */
  header: string | null;
  chunkVersions: string[];
  tokens: number;
  /** time to the first content (streams) */
  ttft: number | null;
  /** whether a bake was running when the request started (from the latest /healthz sample) */
  baking: boolean;
}

interface Tick {
  t: number;
  live: string | null;
  baking: boolean;
  queue: { running: number; waiting: number } | null;
  rssBytes: number | null;
  tensors: number | null;
  up: boolean;
}

const QUESTIONS = ["Who is the mayor of Hollowby?", "What happened at the market?", "Tell me the news.", "What is the weather like?", "Hi there", "What did the council decide?"];

const versionOf = (k: { version?: string | null } | undefined) => (k ? (k.version ?? "base") : null);

function rssOf(pid: number | undefined): number | null {
  if (!pid) return null;
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

function metricValue(text: string, name: string): number | null {
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.eE+-]+)$`, "m").exec(text);
  return m ? Number(m[1]) : null;
}

async function main(): Promise<void> {
  const opts = parseArgs(process.argv.slice(2));
  const t0 = performance.now();
  const now = () => Math.round(performance.now() - t0);
  const headers: Record<string, string> = { "content-type": "application/json", ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}) };
  const samples: Sample[] = [];
  const ticks: Tick[] = [];
  let stopping = false;
  let lastUp = now();
  let baking = false;
  process.once("SIGINT", () => (stopping = true));

  // --- sampler: live version, baking, queue, memory, once a second ---
  const sampler = (async () => {
    while (!stopping) {
      const tick: Tick = { t: now(), live: null, baking: false, queue: null, rssBytes: rssOf(opts.pid), tensors: null, up: false };
      try {
        const h = (await (await fetch(`${opts.url}/healthz`, { headers, signal: AbortSignal.timeout(2000) })).json()) as {
          agents: { name: string; live: string; baking: boolean }[];
          queue: { running: number; waiting: number };
        };
        const a = h.agents.find((x) => x.name === opts.model);
        Object.assign(tick, { live: a?.live ?? null, baking: !!a?.baking, queue: h.queue, up: true });
        const m = await (await fetch(`${opts.url}/metrics`, { headers, signal: AbortSignal.timeout(2000) })).text();
        tick.tensors = metricValue(m, "kiln_tensors");
        tick.rssBytes ??= metricValue(m, "kiln_process_resident_memory_bytes");
        lastUp = now();
      } catch {
        // down (restarting or shut down): recorded as such
      }
      baking = tick.baking;
      ticks.push(tick);
      if (now() - lastUp > opts.giveUp * 1000) stopping = true;
      await new Promise((r) => setTimeout(r, 1000));
    }
  })();

  // --- clients ---
  const client = async (n: number) => {
    let i = 0;
    while (!stopping && now() < opts.seconds * 1000) {
      i++;
      const stream = Math.random() < opts.stream;
      const leave = stream && Math.random() < opts.abort;
      const s: Sample = { client: n, start: now(), end: 0, stream, outcome: "", status: null, version: null, header: null, chunkVersions: [], tokens: 0, ttft: null, baking };
      const ac = new AbortController();
      try {
        const res = await fetch(`${opts.url}/v1/chat/completions`, {
          method: "POST",
          headers,
          signal: ac.signal,
          body: JSON.stringify({
            model: opts.model,
            stream,
            ...(stream ? { stream_options: { include_usage: true } } : {}),
            max_tokens: opts.maxTokens,
            temperature: 0.7,
            messages: [{ role: "user", content: QUESTIONS[(n + i) % QUESTIONS.length] }],
            kiln: { capture_facts: false },
          }),
        });
        s.status = res.status;
        s.header = res.headers.get("x-kiln-version");
        if (res.status !== 200) {
          const body = (await res.json().catch(() => ({}))) as { error?: { code?: string } };
          s.outcome = `http ${res.status} ${body.error?.code ?? ""}`.trim();
        } else if (!stream) {
          const body = (await res.json()) as { kiln?: { version?: string | null }; usage?: { completion_tokens: number } };
          s.version = versionOf(body.kiln);
          s.tokens = body.usage?.completion_tokens ?? 0;
          s.outcome = "ok";
        } else {
          s.outcome = await readStream(res, s, leave ? 3 + Math.floor(Math.random() * 5) : Infinity, () => ac.abort(), () => now());
        }
      } catch (err) {
        const e = err as Error & { cause?: { code?: string } };
        s.outcome = s.outcome || (e.name === "AbortError" ? "aborted" : `network ${e.cause?.code ?? e.message}`);
      }
      s.end = now();
      samples.push(s);
      if (s.status === 429) await new Promise((r) => setTimeout(r, 250)); // a real client backs off
      if (s.outcome.startsWith("network")) await new Promise((r) => setTimeout(r, 500));
    }
  };
  await Promise.all(Array.from({ length: opts.clients }, (_, n) => client(n)));
  stopping = true;
  await sampler;

  const summary = summarize(samples, ticks);
  print(summary);
  if (opts.out) writeFileSync(opts.out, JSON.stringify({ options: opts, summary, samples, ticks }, null, 2) + "\n");
  // a run in which nothing was answered measured nothing: a script reading the exit status must see it
  if (!samples.some((s) => s.outcome === "ok")) {
    const why = Object.entries(summary.outcomes).map(([o, n]) => `${n} ${o}`).join(", ") || "none sent";
    process.stderr.write(`loadtest: no request finished at ${opts.url} (model ${opts.model}): ${why}\n`);
    process.exitCode = 1;
  }
}

/** Reads an SSE reply; leaves after `leaveAfter` content chunks. Returns the outcome. */
async function readStream(res: Response, s: Sample, leaveAfter: number, leave: () => void, now: () => number): Promise<string> {
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let content = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return "truncated"; // ended without [DONE] or an error event
    buffer += decoder.decode(value, { stream: true });
    let at: number;
    while ((at = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, at);
      buffer = buffer.slice(at + 2);
      const data = event.split("\n").find((l) => l.startsWith("data: "))?.slice(6);
      if (!data) continue;
      if (data === "[DONE]") return "ok";
      const chunk = JSON.parse(data) as {
        error?: { code?: string };
        system_fingerprint?: string;
        kiln?: { version?: string | null };
        choices?: { delta?: { content?: string } }[];
        usage?: { completion_tokens: number };
      };
      if (chunk.error) return `stream error ${chunk.error.code ?? ""}`.trim();
      const v = chunk.kiln ? versionOf(chunk.kiln) : chunk.system_fingerprint?.replace(/^kiln-/, "");
      if (v && !s.chunkVersions.includes(v)) s.chunkVersions.push(v);
      if (chunk.kiln) s.version = versionOf(chunk.kiln);
      if (chunk.usage) s.tokens = chunk.usage.completion_tokens;
      if (chunk.choices?.[0]?.delta?.content) {
        content++;
        s.ttft ??= now() - s.start;
        if (content >= leaveAfter) {
          leave();
          await reader.cancel().catch(() => {});
          return "aborted";
        }
      }
    }
  }
}

function percentile(xs: number[], p: number): number | null {
  if (!xs.length) return null;
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

function phaseStats(samples: Sample[], wallSeconds: number) {
  const ok = samples.filter((s) => s.outcome === "ok");
  const lat = ok.map((s) => s.end - s.start);
  const seconds = ok.reduce((t, s) => t + (s.end - s.start) / 1000, 0);
  const tokens = ok.reduce((t, s) => t + s.tokens, 0);
  return {
    requests: samples.length,
    ok: ok.length,
    latencyMs: { p50: percentile(lat, 50), p99: percentile(lat, 99) },
    ttftMs: { p50: percentile(ok.flatMap((s) => (s.ttft !== null ? [s.ttft] : [])), 50) },
    /** per request: its tokens over its own latency (queueing included) */
    tokensPerSecond: seconds ? +(tokens / seconds).toFixed(1) : null,
    /** all clients together: tokens of the phase's good replies over the phase's wall time */
    throughputTokensPerSecond: wallSeconds ? +(tokens / wallSeconds).toFixed(1) : null,
  };
}

function summarize(samples: Sample[], ticks: Tick[]) {
  const outcomes: Record<string, number> = {};
  for (const s of samples) outcomes[s.outcome] = (outcomes[s.outcome] ?? 0) + 1;
  // A version is suspect when no /healthz sample between the request's start (less one sampling
  // interval: the swap may have happened just before) and its end saw it live.
  const liveDuring = (s: Sample) => new Set(ticks.filter((t) => t.up && t.t >= s.start - 1100 && t.t <= s.end + 1100).map((t) => t.live));
  // one reply, one version: the header, every chunk and the final kiln.version agree
  const mixed = samples.filter((s) => s.outcome === "ok" && new Set([s.header, ...s.chunkVersions, s.version]).size > 1);
  const unexpected = samples.filter((s) => s.version !== null && !liveDuring(s).has(s.version) && liveDuring(s).size > 0);
  const up = ticks.filter((t) => t.up);
  return {
    sent: samples.length,
    outcomes,
    versions: [...new Set(samples.map((s) => s.version).filter(Boolean))],
    mixedVersionReplies: mixed.length,
    repliesNamingNoVersion: samples.filter((s) => s.outcome === "ok" && (s.header === null || (s.stream && !s.chunkVersions.length))).length,
    versionNotSeenLiveDuringRequest: unexpected.map((s) => ({ start: s.start, end: s.end, version: s.version, live: [...liveDuring(s)] })),
    idle: phaseStats(samples.filter((s) => !s.baking), phaseSeconds(ticks, false)),
    baking: phaseStats(samples.filter((s) => s.baking), phaseSeconds(ticks, true)),
    queue: { maxWaiting: Math.max(0, ...up.map((t) => t.queue?.waiting ?? 0)) },
    rssMiB: rssRange(ticks.map((t) => t.rssBytes)),
    tensors: rssRange(ticks.map((t) => t.tensors), 1),
    liveTimeline: up.filter((t, i) => i === 0 || t.live !== up[i - 1]!.live || t.baking !== up[i - 1]!.baking).map((t) => ({ t: t.t, live: t.live, baking: t.baking })),
  };
}

/** Wall time the server was up and (not) baking, from the once-a-second samples. */
function phaseSeconds(ticks: Tick[], baking: boolean): number {
  let ms = 0;
  for (let i = 1; i < ticks.length; i++) if (ticks[i - 1]!.up && ticks[i - 1]!.baking === baking) ms += ticks[i]!.t - ticks[i - 1]!.t;
  return ms / 1000;
}

function rssRange(xs: (number | null)[], unit = 2 ** 20) {
  const v = xs.filter((x): x is number => x !== null).map((x) => Math.round(x / unit));
  return v.length ? { first: v[0], max: Math.max(...v), last: v.at(-1) } : null;
}

function print(s: ReturnType<typeof summarize>): void {
  process.stdout.write(JSON.stringify(s, null, 2) + "\n");
}

main().catch((err: Error) => {
  process.stderr.write(`loadtest: ${err.message}\n`);
  process.exit(1);
});
