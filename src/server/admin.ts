// The admin API (JSON) over each agent's ledger, feeds, bakes and versions.
//
//   GET  /admin/agents                               agents with live version, bake state, item counts, feeds
//   GET  /admin/agents/:name/items?status=&q=&source=&kind=&limit=&offset=
//   GET  /admin/agents/:name/items/:id
//   POST /admin/agents/:name/items {text, kind?}      remember: 201 (added) or 200 (already known)
//   POST /admin/agents/:name/items/:id/retract {reason?}
//                                                    202: the weights holding it out of service (a bake
//                                                    that could hold it stopped), the rebuild started
//                                                    (or, never baked in, the bake it stopped ran again);
//                                                    200: retracted, nothing to rebuild (never baked in);
//                                                    bake.bakeId is the rebuild's own id, reserved while
//                                                    it waits for another bake (status "waiting", after)
//   GET  /admin/agents/:name/feeds
//   POST /admin/agents/:name/feeds/:id/poll
//   GET  /admin/agents/:name/bakes
//   POST /admin/agents/:name/bakes {force?, consolidate?}
//                                                    202: started in the background. While a bake runs a
//                                                    second request JOINS it (202, joined: true) rather
//                                                    than failing; consolidate then answers 409.
//                                                    200 when there was nothing to bake (skipped).
//   GET  /admin/agents/:name/bakes/events?bake=&follow=
//                                                    SSE: state, start, progress…, outcome (then the stream
//                                                    ends unless follow=true)
//   GET  /admin/agents/:name/versions?limit=&offset=     newest first
//   GET  /admin/agents/:name/versions/diff?from=&to=  ("base" = the base model)
//   POST /admin/agents/:name/versions/:id/rollback    (id "base" = the base model)
//   POST /admin/agents/:name/versions/:id/export {to, format?, force?, ggufType?}
//                                                    201: written on the server's disk (id "live" = the live
//                                                    version; format peft or gguf; merged is the CLI's)
//   POST /admin/agents/:name/verify {ids?, version?, baseline?}
//                                                    absorbed items' probes asked on the live weights
//                                                    now (or a version's), and on the base model
//   POST /admin/agents/:name/probe {question, context?}
import type { FastifyInstance } from "fastify";
import { existsSync } from "node:fs";
import path from "node:path";
import { z } from "zod";
import { ITEM_KINDS, ITEM_STATUSES as STATUSES, type BakeRun, type Item, type ItemStatus } from "../knowledge/ledger.js";
import { itemTextProblem } from "../bake/prompt.js";
import { retractedOutOfService, type Agent, type BakeOutcome } from "../runtime/agent.js";
import type { BakeEvent } from "./bake-watch.js";
import { clientSignal, findAgent, type ServerContext } from "./context.js";
import { ApiError, validationError } from "./errors.js";
import { SseStream } from "./sse.js";
import { versionName } from "../runtime/live.js";

const KEEPALIVE_MS = 15_000;

function parse<S extends z.ZodType>(schema: S, value: unknown, where: string): z.infer<S> {
  const r = schema.safeParse(value ?? {});
  if (!r.success) throw validationError(r.error, where);
  return r.data;
}

const bool = z.union([z.boolean(), z.enum(["true", "false", "1", "0"]).transform((s) => s === "true" || s === "1")], { message: "expected true, false, 1 or 0" });

const ItemsQuery = z.object({
  status: z
    .string()
    .transform((s) => s.split(",").map((x) => x.trim()).filter(Boolean))
    .pipe(z.array(z.enum(STATUSES, { message: `status must be one of ${STATUSES.join(", ")}` })))
    .optional(),
  q: z.string().optional(),
  source: z.string().optional(),
  kind: z.enum(ITEM_KINDS).optional(),
  limit: z.coerce.number().int().min(1).max(10_000).default(500),
  offset: z.coerce.number().int().min(0).default(0),
});
const RememberBody = z.object({
  text: z
    .string()
    .trim()
    .min(1, "text is required")
    .superRefine((t, ctx) => {
      const problem = itemTextProblem(t);
      if (problem) ctx.addIssue({ code: "custom", message: problem });
    }),
  kind: z.enum(["manual", "instruction"]).default("manual"),
})
  .strict();
// (unknown keys refused, as in every body here: a mistyped "reasn" retracted the item, which cannot be undone, without its reason)
const RetractBody = z.object({ reason: z.string().max(500).optional() }).strict();
const BakeBody = z.object({ force: z.boolean().optional(), consolidate: z.boolean().optional() }).strict();
const EventsQuery = z.object({ bake: z.string().optional(), follow: bool.optional() });
const DiffQuery = z.object({ from: z.string().optional(), to: z.string().optional() });
const VersionsQuery = z.object({
  limit: z.coerce.number().int().min(1).max(10_000).default(500),
  offset: z.coerce.number().int().min(0).default(0),
});
// `to` is a path on the server's machine: absolute, since the server's working folder is not the client's.
// A merged export reads and writes the whole model in this process, holding up serving: the CLI
// (`kiln versions export`, which runs beside the server) does that one.
const ExportBody = z
  .object({
    to: z.string().min(1, "to is required").refine((p) => path.isAbsolute(p), "to must be an absolute path on the server"),
    format: z.enum(["peft", "gguf"], { message: "format must be peft or gguf (a merged export runs with kiln versions export, beside the server)" }).default("peft"),
    force: z.boolean().default(false),
    ggufType: z.enum(["f32", "f16"]).default("f32"), // as the CLI's --gguf-type
  })
  .strict();
// an empty list would read as "every absorbed item" (agent.verify's default): a filter that came out empty is refused
const VerifyBody = z
  .object({
    ids: z.array(z.string().min(1)).min(1, "ids is empty: leave it out to verify every absorbed item").max(500).optional(),
    /** a stored version's weights, or "base"; the live ones when left out */
    version: z.string().min(1).optional(),
    /** ask the base model the same probes too (default true) */
    baseline: z.boolean().optional(),
  })
  .strict();

const ProbeBody = z.object({
  question: z.string().trim().min(1, "question is required").max(2000),
  // one item or several: the CLI takes one --context per item, so a plain string is one item
  context: z.union([z.string().max(8000).transform((s) => [s]), z.array(z.string().max(8000)).max(50)], { message: "context must be a string or a list of at most 50 strings, each at most 8000 characters" }).optional(),
}).strict();

type NameParams = { Params: { name: string } };
type IdParams = { Params: { name: string; id: string } };

/** An item as the API shows it: with its latest score and the versions that hold it. */
function itemView(agent: Agent, item: Item) {
  return agent.ledger.itemView(item);
}

function feedsView(agent: Agent) {
  return agent.config.feeds.map((f) => {
    const { seenKeys, lastHashes: _hashes, revisions, ...record } = agent.ledger.feed(f.id) ?? { seenKeys: [], consecutiveErrors: 0, itemsAdded: 0 };
    // per-item bookkeeping stays internal; what a reader needs is how many changed items still wait
    const changesWaiting = Object.values(revisions ?? {}).filter((r) => r.waiting).length;
    return { ...record, id: f.id, url: f.url, schedule: f.schedule, seen: seenKeys.length, changesWaiting };
  });
}

function countsView(agent: Agent): Record<ItemStatus, number> {
  const counts = Object.fromEntries(STATUSES.map((s) => [s, 0])) as Record<ItemStatus, number>;
  for (const i of agent.ledger.data.items) counts[i.status]++;
  return counts;
}

function versionRef(v: string | undefined): string | null {
  return !v || v === "base" ? null : v;
}

/** The outcome of a finished bake, rebuilt from its ledger record. */
function outcomeOf(b: BakeRun): BakeOutcome {
  const m = b.metrics ?? {};
  return {
    status: b.status === "running" ? "failed" : b.status,
    bakeId: b.id,
    ...(b.version ? { version: b.version } : {}),
    reasons: b.reasons ?? (b.error ? [b.error] : []),
    ...(typeof m.absorption === "number" ? { absorption: m.absorption } : {}),
    ...(typeof m.retention === "number" ? { retention: m.retention } : {}),
    ...(typeof m.persona === "number" ? { persona: m.persona } : {}),
  };
}

function runningBake(agent: Agent): BakeRun | null {
  return agent.isBaking ? (agent.ledger.data.bakes.findLast((b) => b.status === "running") ?? null) : null;
}

/**
 * After starting work that leads to a bake (a retraction first writes the ledger, then bakes),
 * waits until the bake is running, or returns the outcome when it ended at once (skipped).
 */
async function whenBakeStarts(agent: Agent, work: Promise<BakeOutcome>, timeoutMs = 5000): Promise<BakeOutcome | null> {
  let settled: { outcome?: BakeOutcome; error?: unknown } | null = null;
  work.then((outcome) => (settled = { outcome }), (error: unknown) => (settled = { error }));
  const until = Date.now() + timeoutMs;
  // Work that ended is its own answer, though a bake runs: a retraction that needed no rebuild,
  // beside another's rebuild or an unrelated bake, was answered 202 naming that bake. (It ends
  // within microtasks of the weights leaving service, hence the turn first.)
  await new Promise((r) => setImmediate(r));
  while (Date.now() < until) {
    const s = settled as { outcome?: BakeOutcome; error?: unknown } | null;
    if (s) {
      if (s.error) throw s.error;
      return s.outcome!;
    }
    if (agent.isBaking) return null;
    await new Promise((r) => setTimeout(r, 5));
  }
  return null;
}

/**
 * Keeps an event stream open (a comment every KEEPALIVE_MS, so proxies do not close it) until the
 * client leaves or the server shuts down; `unsubscribe` then stops its events.
 */
function keepOpen(sse: SseStream, ctx: ServerContext, unsubscribe: () => void): void {
  const keepalive = setInterval(() => sse.comment("keepalive"), KEEPALIVE_MS);
  const onShutdown = () => sse.end();
  ctx.shutdown.addEventListener("abort", onShutdown, { once: true });
  sse.onClose(() => {
    unsubscribe();
    clearInterval(keepalive);
    ctx.shutdown.removeEventListener("abort", onShutdown);
  });
}

export function adminRoutes(app: FastifyInstance, ctx: ServerContext): void {
  const bakeState = (agent: Agent) => {
    const snap = ctx.watcher.snapshot(agent.name);
    const running = runningBake(agent);
    return { baking: agent.isBaking, bakeId: running?.id ?? snap.bakeId, trigger: running?.trigger ?? snap.trigger, progress: agent.progress };
  };
  const startedView = (agent: Agent, joined: boolean) => {
    const running = runningBake(agent);
    return {
      status: "running" as const,
      joined,
      bakeId: running?.id ?? null,
      trigger: running?.trigger ?? null,
      startedAt: running?.startedAt ?? null,
      events: `/admin/agents/${encodeURIComponent(agent.name)}/bakes/events${running ? `?bake=${running.id}` : ""}`,
    };
  };
  // A retraction's rebuild, by the id it reserved: it may wait for another bake (one that could not
  // hold the item goes on), whose end a client following that bake would take for the retraction's.
  const rebuildView = (agent: Agent, rebuildId: string) => {
    const running = runningBake(agent);
    if (running?.id === rebuildId) return { ...startedView(agent, false), after: null };
    return {
      status: running ? ("waiting" as const) : ("running" as const),
      joined: false,
      bakeId: rebuildId,
      trigger: "retraction",
      startedAt: null,
      after: running?.id ?? null,
      events: `/admin/agents/${encodeURIComponent(agent.name)}/bakes/events?bake=${rebuildId}`,
    };
  };

  app.get("/admin/agents", async () => ({
    agents: [...ctx.runtime.agents.values()].map((a) => ({
      name: a.name,
      description: a.config.description ?? null,
      model: a.model.dir,
      live: versionName(a.live.version),
      // the recorded live version failed to load: the base model answers in its place
      problem: a.liveProblem,
      ...bakeState(a),
      counts: countsView(a),
      versions: a.ledger.data.versions.length,
      bakes: a.ledger.data.bakes.length,
      rebuildOwed: a.owedRebuild,
      persona: a.config.persona?.text ?? null,
      feeds: feedsView(a),
    })),
  }));

  // --- items ---

  app.get<NameParams>("/admin/agents/:name/items", async (request) => {
    const agent = findAgent(ctx, request.params.name);
    const q = parse(ItemsQuery, request.query, "query");
    const all = agent.ledger
      .items({ ...(q.status?.length ? { status: q.status } : {}), ...(q.kind ? { kind: q.kind } : {}), ...(q.q ? { text: q.q } : {}), ...(q.source ? { source: q.source } : {}) })
      .slice()
      .reverse();
    return { total: all.length, offset: q.offset, items: all.slice(q.offset, q.offset + q.limit).map((i) => itemView(agent, i)) };
  });

  app.get<IdParams>("/admin/agents/:name/items/:id", async (request) => {
    const agent = findAgent(ctx, request.params.name);
    return itemView(agent, agent.ledger.item(request.params.id));
  });

  app.post<NameParams>("/admin/agents/:name/items", async (request, reply) => {
    const agent = findAgent(ctx, request.params.name);
    const body = parse(RememberBody, request.body, "");
    const { item, added } = await agent.remember(body.text, body.kind, { by: "admin-api" });
    reply.code(added ? 201 : 200);
    return { added, item: itemView(agent, item) };
  });

  app.post<IdParams>("/admin/agents/:name/items/:id/retract", async (request, reply) => {
    const agent = findAgent(ctx, request.params.name);
    const body = parse(RetractBody, request.body, "");
    const item = agent.ledger.item(request.params.id);
    // (retracting again is how weights that still hold a retracted item are rebuilt)
    if (item.status === "retracted" && !agent.mayHold(item)) throw new ApiError(409, `item ${item.id} is already retracted`, "already_retracted");
    // The answer comes once the weights holding it have left service (seconds: a running bake that
    // could end holding it is stopped), so a request sent after it is never answered from them.
    const { work, outOfService, rebuildId } = await retractedOutOfService(agent, [item.id], body.reason ?? "retracted through the admin API");
    const ended = await whenBakeStarts(agent, work);
    ctx.watcher.track(agent);
    reply.code(ended ? 200 : 202); // 200: done without a rebuild (the live weights never held it)
    return { item: itemView(agent, agent.ledger.item(item.id)), outOfService, bake: ended ?? (rebuildId ? rebuildView(agent, rebuildId) : startedView(agent, false)) };
  });

  // --- feeds ---

  app.get<NameParams>("/admin/agents/:name/feeds", async (request) => ({ feeds: feedsView(findAgent(ctx, request.params.name)) }));

  app.post<IdParams>("/admin/agents/:name/feeds/:id/poll", async (request) => {
    const agent = findAgent(ctx, request.params.name);
    if (!agent.config.feeds.some((f) => f.id === request.params.id)) {
      throw new ApiError(404, `agent ${agent.name} has no feed ${JSON.stringify(request.params.id)} (feeds: ${agent.config.feeds.map((f) => f.id).join(", ") || "none"})`, "feed_not_found", "id");
    }
    const result = await agent.pollFeed(request.params.id);
    return { ...result, feed: feedsView(agent).find((f) => f.id === request.params.id) };
  });

  // --- bakes ---

  app.get<NameParams>("/admin/agents/:name/bakes", async (request) => {
    const agent = findAgent(ctx, request.params.name);
    return { ...bakeState(agent), bakes: [...agent.ledger.data.bakes].reverse() };
  });

  app.post<NameParams>("/admin/agents/:name/bakes", async (request, reply) => {
    const agent = findAgent(ctx, request.params.name);
    const body = parse(BakeBody, request.body, "");
    if (agent.isBaking) {
      if (body.consolidate) throw new ApiError(409, "a bake is running; start a consolidation when it ends", "bake_running");
      reply.code(202);
      return startedView(agent, true);
    }
    const work = agent.bake("admin-api", { force: !!body.force, consolidate: !!body.consolidate });
    work.catch(() => {}); // the outcome is reported through the events and the ledger
    if (!runningBake(agent)) {
      // No bake record: the bake was skipped (nothing to bake) and is already settling.
      const outcome = await work;
      return { ...outcome };
    }
    ctx.watcher.track(agent);
    reply.code(202);
    return startedView(agent, false);
  });

  app.get<NameParams>("/admin/agents/:name/bakes/events", async (request, reply) => {
    const agent = findAgent(ctx, request.params.name);
    const q = parse(EventsQuery, request.query, "query");
    const asked = q.bake ? agent.ledger.data.bakes.find((b) => b.id === q.bake) : undefined;
    // a retraction's rebuild that has not started (a retraction's 202 named the id it reserved)
    const ahead = q.bake && !asked ? agent.rebuildReserved(q.bake) : null;
    if (q.bake && !asked && !ahead) throw new ApiError(404, `agent ${agent.name} has no bake ${q.bake}`, "bake_not_found", "bake");
    const sse = SseStream.open(reply);
    sse.send({ agent: agent.name, live: versionName(agent.live.version), ...bakeState(agent) }, "state");
    if (ahead) {
      // Only that bake's events until its outcome: the bake it waits for ends first. A rebuild that
      // never starts under the id (nothing left to bake, the retraction failed) ends the stream with
      // the retraction's outcome.
      let mine = true;
      const outcome = (e: BakeEvent) => {
        if (!mine) return;
        mine = false;
        sse.send({ ...e, live: versionName(agent.live.version) }, "outcome");
        if (!q.follow) sse.end();
      };
      const stop = ctx.watcher.subscribe(agent.name, (e: BakeEvent) => {
        if (mine && e.bakeId !== q.bake) return;
        if (e.type === "outcome") outcome(e);
        else sse.send(e, e.type);
      });
      const settle = (o: BakeOutcome) => outcome({ type: "outcome", agent: agent.name, bakeId: q.bake!, outcome: o, bake: agent.ledger.data.bakes.find((b) => b.id === q.bake) ?? null });
      ahead.then(settle, (err: Error) => settle({ status: "failed", reasons: [err.message] }));
      keepOpen(sse, ctx, stop);
      return reply;
    }
    if (asked && asked.status !== "running") {
      // That bake already ended: its outcome, from the ledger.
      sse.send({ type: "outcome", agent: agent.name, bakeId: asked.id, outcome: outcomeOf(asked), bake: asked }, "outcome");
      if (!q.follow) {
        sse.end();
        return reply;
      }
    }
    const stop = ctx.watcher.subscribe(agent.name, (e: BakeEvent) => {
      sse.send(e.type === "outcome" ? { ...e, live: versionName(agent.live.version) } : e, e.type);
      if (e.type === "outcome" && !q.follow) sse.end();
    });
    keepOpen(sse, ctx, stop);
    if (agent.isBaking) ctx.watcher.track(agent);
    return reply;
  });

  // --- versions ---

  // A long-lived agent makes hundreds of versions: a page of them, newest first, as items are paged.
  app.get<NameParams>("/admin/agents/:name/versions", async (request) => {
    const agent = findAgent(ctx, request.params.name);
    const q = parse(VersionsQuery, request.query, "query");
    const all = [...agent.ledger.data.versions].reverse();
    return {
      live: versionName(agent.live.version),
      total: all.length,
      offset: q.offset,
      versions: all.slice(q.offset, q.offset + q.limit).map((v) => ({ ...v, onDisk: existsSync(v.dir), cannotGoLive: agent.whyNotLive(v.id) })),
    };
  });

  app.get<NameParams>("/admin/agents/:name/versions/diff", async (request) => {
    const agent = findAgent(ctx, request.params.name);
    const q = parse(DiffQuery, request.query, "query");
    // "live" as the export route takes it: the live version (or the base model when that is live)
    const ref = (v: string) => (v === "live" ? agent.live.version : versionRef(v));
    const to = q.to !== undefined ? ref(q.to) : agent.live.version;
    const from = q.from !== undefined ? ref(q.from) : to ? agent.ledger.version(to).parent : null;
    const { gained, lost } = agent.ledger.diff(from, to);
    return { from: versionName(from), to: versionName(to), gained: gained.map((i) => itemView(agent, i)), lost: lost.map((i) => itemView(agent, i)) };
  });

  app.post<IdParams>("/admin/agents/:name/versions/:id/rollback", async (request) => {
    const agent = findAgent(ctx, request.params.name);
    // ("live", which names the live version elsewhere here, would roll back to itself)
    if (request.params.id === "live") throw new ApiError(400, `"live" is where a rollback starts, not where it goes: name a kept version (GET …/versions) or "base"`, "invalid_value", "id");
    const target = versionRef(request.params.id);
    if (agent.isBaking) throw new ApiError(409, "a bake is running; roll back when it ends", "bake_running");
    if (target) agent.ledger.version(target); // 404 for an unknown version
    const previous = agent.live.version;
    try {
      await agent.rollback(target);
    } catch (err) {
      throw new ApiError(409, (err as Error).message, "rollback_failed", "id");
    }
    return { previous: versionName(previous), live: versionName(agent.live.version) };
  });

  app.post<IdParams>("/admin/agents/:name/versions/:id/export", async (request, reply) => {
    const agent = findAgent(ctx, request.params.name);
    const body = parse(ExportBody, request.body, "");
    const id = request.params.id;
    if (id !== "live" && id !== "base") agent.ledger.version(id); // 404 for an unknown version
    try {
      const result = await agent.exportVersion(id, body.to, { format: body.format, force: body.force, ggufType: body.ggufType === "f16" ? "F16" : "F32" });
      return reply.code(201).send(result);
    } catch (err) {
      // the export names the CLI's flag; a client of this API sends the field
      throw new ApiError(409, (err as Error).message.replace("pass --force to replace it", 'send "force": true to replace it'), "export_failed", "to");
    }
  });

  // --- verify: proof of what the live weights hold ---

  app.post<NameParams>("/admin/agents/:name/verify", async (request, reply) => {
    const agent = findAgent(ctx, request.params.name);
    const body = parse(VerifyBody, request.body ?? {}, "");
    for (const id of body.ids ?? []) agent.ledger.item(id); // 404 for an unknown item
    const release = await ctx.queue.acquire(clientSignal(ctx, reply));
    try {
      return await agent.verify(body.ids, { version: body.version, baseline: body.baseline });
    } finally {
      release();
    }
  });

  // --- probe ---

  app.post<NameParams>("/admin/agents/:name/probe", async (request, reply) => {
    const agent = findAgent(ctx, request.params.name);
    const body = parse(ProbeBody, request.body, "");
    const release = await ctx.queue.acquire(clientSignal(ctx, reply));
    try {
      return await ctx.runtime.probe(agent.name, body.question, body.context);
    } finally {
      release();
    }
  });
}
