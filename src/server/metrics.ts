// /metrics in the Prometheus text exposition format (version 0.0.4), written by hand: counters
// and a latency histogram kept here, gauges read from the runtime at scrape time.
import type { FastifyInstance } from "fastify";
import { ITEM_STATUSES } from "../knowledge/ledger.js";
import { memoryReport } from "../tensor/backend.js";
import type { Runtime } from "../runtime/runtime.js";
import type { BakeWatcher } from "./bake-watch.js";
import type { GenerationQueue } from "./queue.js";
import { versionName } from "../runtime/live.js";

type Labels = Record<string, string>;
type Sample = [Labels, number];
const sample = (labels: Labels, value: number): Sample => [labels, value];

const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];

function escapeLabel(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

function formatLabels(labels: Labels): string {
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${escapeLabel(v)}"`);
  return parts.length ? `{${parts.join(",")}}` : "";
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}

/** Sums values per label set (counters). */
class Counter {
  private readonly values = new Map<string, { labels: Labels; value: number }>();

  inc(labels: Labels, by = 1): void {
    const key = formatLabels(labels);
    const entry = this.values.get(key);
    if (entry) entry.value += by;
    else this.values.set(key, { labels, value: by });
  }

  samples(): Sample[] {
    return [...this.values.values()].map((e) => [e.labels, e.value]);
  }
}

class Histogram {
  private readonly series = new Map<string, { labels: Labels; counts: number[]; sum: number; count: number }>();

  constructor(private readonly buckets: number[]) {}

  observe(labels: Labels, value: number): void {
    const key = formatLabels(labels);
    let s = this.series.get(key);
    if (!s) this.series.set(key, (s = { labels, counts: this.buckets.map(() => 0), sum: 0, count: 0 }));
    this.buckets.forEach((b, i) => value <= b && s.counts[i]!++);
    s.sum += value;
    s.count++;
  }

  lines(name: string): string[] {
    const out: string[] = [];
    for (const s of this.series.values()) {
      this.buckets.forEach((b, i) => out.push(`${name}_bucket${formatLabels({ ...s.labels, le: String(b) })} ${s.counts[i]}`));
      out.push(`${name}_bucket${formatLabels({ ...s.labels, le: "+Inf" })} ${s.count}`);
      out.push(`${name}_sum${formatLabels(s.labels)} ${formatValue(s.sum)}`);
      out.push(`${name}_count${formatLabels(s.labels)} ${s.count}`);
    }
    return out;
  }
}

export class Metrics {
  private readonly requests = new Counter();
  private readonly latency = new Histogram(LATENCY_BUCKETS);
  private readonly tokens = new Counter();
  private readonly promptTokens = new Counter();
  private readonly generationSeconds = new Counter();
  private readonly generations = new Counter();
  private readonly lastTokensPerSecond = new Map<string, number>();
  private rejectedCount = 0;

  request(method: string, route: string, status: number, seconds: number): void {
    this.requests.inc({ method, route, status: String(status) });
    this.latency.observe({ route }, seconds);
  }

  generation(agent: string, g: { promptTokens: number; completionTokens: number; seconds: number; finishReason: string }): void {
    this.tokens.inc({ agent }, g.completionTokens);
    this.promptTokens.inc({ agent }, g.promptTokens);
    this.generationSeconds.inc({ agent }, g.seconds);
    this.generations.inc({ agent, finish_reason: g.finishReason });
    if (g.seconds > 0 && g.completionTokens > 0) this.lastTokensPerSecond.set(agent, g.completionTokens / g.seconds);
  }

  queueRejected(): void {
    this.rejectedCount++;
  }

  render(runtime: Runtime, queue: GenerationQueue, watcher: BakeWatcher): string {
    const out: string[] = [];
    const family = (name: string, type: "counter" | "gauge" | "histogram", help: string, samples: Sample[] | string[]) => {
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
      for (const s of samples) out.push(typeof s === "string" ? s : `${name}${formatLabels(s[0])} ${formatValue(s[1])}`);
    };
    family("kiln_http_requests_total", "counter", "HTTP requests by method, route and status code (499: the client went away).", this.requests.samples());
    family("kiln_http_request_duration_seconds", "histogram", "HTTP request latency by route (for streams: until the stream ends).", this.latency.lines("kiln_http_request_duration_seconds"));
    family("kiln_generated_tokens_total", "counter", "Completion tokens generated, by agent.", this.tokens.samples());
    family("kiln_prompt_tokens_total", "counter", "Prompt tokens processed, by agent.", this.promptTokens.samples());
    family("kiln_generation_seconds_total", "counter", "Seconds spent generating, by agent (tokens/s = rate of tokens over rate of seconds).", this.generationSeconds.samples());
    family("kiln_generations_total", "counter", "Chat generations by agent and finish reason.", this.generations.samples());
    family("kiln_generation_tokens_per_second", "gauge", "Completion tokens per second of the latest generation, by agent.", [...this.lastTokensPerSecond].map(([agent, v]) => sample({ agent }, v)));
    family("kiln_queue_depth", "gauge", "Generation requests waiting for a slot.", [sample({}, queue.depth)]);
    family("kiln_queue_active", "gauge", "Generations running now.", [sample({}, queue.running)]);
    family("kiln_queue_commands", "gauge", "Chat commands (a \"forget ...\" waiting for weights to leave service) going on without a generation slot (at most queue + concurrent capacity; past that a command keeps its slot).", [sample({}, queue.commands)]);
    family("kiln_queue_capacity", "gauge", "Most generations waiting (queue) and running (concurrent).", [sample({ kind: "queue" }, queue.maxQueue), sample({ kind: "concurrent" }, queue.maxConcurrent)]);
    family("kiln_queue_rejected_total", "counter", "Requests refused with 429 because the queue was full.", [sample({}, this.rejectedCount)]);

    // Memory, to see a swap free the old adapter and a long run hold steady.
    const mem = memoryReport();
    family("kiln_process_resident_memory_bytes", "gauge", "Resident memory of the server process (the bake runs in its own process).", [sample({}, mem.rssBytes)]);
    // RSS alone cannot tell a leak from the allocator keeping pages: the V8 heap (ledgers, requests
    // in flight) and external memory (tensors' host data) say which part grows
    family("kiln_process_heap_used_bytes", "gauge", "V8 heap in use in the server process (after the last garbage collection's work so far).", [sample({}, mem.heapUsedBytes)]);
    family("kiln_process_external_memory_bytes", "gauge", "Memory outside the V8 heap held by JS objects (Buffers, ArrayBuffers: tensors' host data).", [sample({}, mem.externalBytes)]);
    family("kiln_tensors", "gauge", "Tensors alive in the server process (base weights, resident adapters, generations in flight, KV caches kept for later turns).", [sample({}, mem.numTensors)]);
    family("kiln_tensor_bytes", "gauge", "Bytes held by those tensors.", [sample({}, mem.tensorBytes)]);

    const agents = [...runtime.agents.values()];
    family("kiln_agent_resident_versions", "gauge", "Weights versions an agent holds in memory: the live one and any that requests in flight are pinned to.", agents.map((a) => sample({ agent: a.name }, a.live.resident.length)));
    family("kiln_prefix_cache_hits_total", "counter", "Chat requests that continued from a kept KV cache (a later turn of a conversation), by agent.", agents.map((a) => sample({ agent: a.name }, a.live.prefixStats.hits)));
    family("kiln_prefix_cache_misses_total", "counter", "Chat requests that prefilled their whole prompt, by agent.", agents.map((a) => sample({ agent: a.name }, a.live.prefixStats.misses)));
    family("kiln_prefix_cache_reused_tokens_total", "counter", "Prompt tokens not prefilled because a kept KV cache held them, by agent.", agents.map((a) => sample({ agent: a.name }, a.live.prefixStats.reusedTokens)));
    family("kiln_prefix_cache_tensors", "gauge", "Tensors of those KV caches, by agent (counted in kiln_tensors too).", agents.map((a) => sample({ agent: a.name }, a.live.prefixCacheTensors)));
    family("kiln_prefix_cache_bytes", "gauge", "Bytes of KV caches kept for later turns, by agent (--prefix-cache-mb bounds it).", agents.map((a) => sample({ agent: a.name }, a.live.prefixCacheHeld)));
    family("kiln_agent_live_version", "gauge", 'The weights version each agent serves, as a label (value 1; version="base" is the base model).', agents.map((a) => sample({ agent: a.name, version: versionName(a.live.version) }, 1)));
    const owed = agents.map((a) => ({ agent: a.name, owed: a.owedRebuild }));
    family("kiln_rebuild_owed", "gauge", "1 while a retraction's rebuild that failed is owed (tried again by itself), by agent.", owed.map(({ agent, owed }) => sample({ agent }, owed ? 1 : 0)));
    family("kiln_rebuild_owed_live_retracted", "gauge", "Retracted items the live weights still hold because their rebuild failed, by agent.", owed.map(({ agent, owed }) => sample({ agent }, owed?.liveHolds.length ?? 0)));
    family("kiln_ledger_items", "gauge", "Ledger items by agent and status.", agents.flatMap((a) => ITEM_STATUSES.map((status) => sample({ agent: a.name, status }, a.ledger.items({ status }).length))));
    family("kiln_feed_consecutive_errors", "gauge", "Failed polls in a row, by agent and feed (0: the last poll was good).", agents.flatMap((a) => a.ledger.data.feeds.map((f) => sample({ agent: a.name, feed: f.id }, f.consecutiveErrors))));
    family("kiln_feed_last_ok_timestamp_seconds", "gauge", "When each feed was last polled without error (Unix seconds; 0: never).", agents.flatMap((a) => a.ledger.data.feeds.map((f) => sample({ agent: a.name, feed: f.id }, f.lastOkAt ? Date.parse(f.lastOkAt) / 1000 : 0))));
    family("kiln_ledger_bakes", "gauge", "Bake records in the ledger (it keeps the newest 200), by agent and status.", agents.flatMap((a) => {
      const by = new Map<string, number>();
      for (const b of a.ledger.data.bakes) by.set(b.status, (by.get(b.status) ?? 0) + 1);
      return [...by].map(([status, n]) => sample({ agent: a.name, status }, n));
    }));

    const snaps = agents.map((a) => ({ agent: a.name, s: watcher.snapshot(a.name) }));
    family("kiln_bake_running", "gauge", "1 while the agent is baking.", snaps.map(({ agent, s }) => sample({ agent }, s.baking ? 1 : 0)));
    const phases = snaps.flatMap(({ agent, s }) => (s.baking && s.progress ? [{ agent, p: s.progress }] : []));
    family("kiln_bake_phase", "gauge", "The running bake's current phase (value 1).", phases.map(({ agent, p }) => sample({ agent, phase: p.phase }, 1)));
    const counted = phases.flatMap(({ agent, p }) => ("done" in p ? [{ agent, p }] : []));
    family("kiln_bake_phase_done", "gauge", "Work done in the running bake's sample/teacher/probes/evaluate phase.", counted.map(({ agent, p }) => sample({ agent, phase: p.phase }, p.done)));
    family("kiln_bake_phase_total", "gauge", "Work in the running bake's sample/teacher/probes/evaluate phase.", counted.map(({ agent, p }) => sample({ agent, phase: p.phase }, p.total)));
    const train = snaps.flatMap(({ agent, s }) => (s.baking && s.train ? [{ agent, t: s.train }] : []));
    family("kiln_bake_step", "gauge", "Training step of the running bake.", train.map(({ agent, t }) => sample({ agent }, t.step)));
    family("kiln_bake_total_steps", "gauge", "Training steps the running bake takes at most.", train.map(({ agent, t }) => sample({ agent }, t.totalSteps)));
    family("kiln_bake_epoch", "gauge", "Epoch of the running bake.", train.map(({ agent, t }) => sample({ agent }, t.epoch)));
    family("kiln_bake_kl_per_token", "gauge", "Training KL per token (student against teacher) at the running bake's latest step.", train.map(({ agent, t }) => sample({ agent }, t.klPerToken)));
    family("kiln_bake_loss", "gauge", "Training loss at the running bake's latest step.", train.map(({ agent, t }) => sample({ agent }, t.loss)));
    family("kiln_bake_tokens_per_second", "gauge", "Training throughput of the running bake.", train.map(({ agent, t }) => sample({ agent }, t.tokensPerSecond)));
    const val = snaps.flatMap(({ agent, s }) => (s.baking && s.validate ? [{ agent, v: s.validate }] : []));
    family("kiln_bake_val_kl_per_token", "gauge", "Validation KL per token at the running bake's latest epoch.", val.map(({ agent, v }) => sample({ agent }, v.valKlPerToken)));
    return out.join("\n") + "\n";
  }
}

export function metricsRoutes(app: FastifyInstance, deps: { runtime: Runtime; queue: GenerationQueue; watcher: BakeWatcher; metrics: Metrics }): void {
  // Counted when the response closes, so streams count with their full duration and a client
  // that leaves early counts as 499 (fastify's onResponse never runs for those). Timed here:
  // fastify's reply.elapsedTime is 0 unless its logger or an onResponse hook is on.
  app.addHook("onRequest", async (request, reply) => {
    const start = performance.now();
    reply.raw.once("close", () => {
      const status = reply.raw.writableFinished ? reply.statusCode : 499;
      deps.metrics.request(request.method, request.routeOptions.url ?? "unmatched", status, (performance.now() - start) / 1000);
    });
  });
  app.get("/metrics", async (_request, reply) => {
    reply.type("text/plain; version=0.0.4; charset=utf-8");
    return deps.metrics.render(deps.runtime, deps.queue, deps.watcher);
  });
}
