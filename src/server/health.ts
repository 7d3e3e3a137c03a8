// GET /healthz: the process is up, with each agent's live version, whether it is baking, and its feeds' health.
import type { FastifyInstance } from "fastify";
import type { ServerContext } from "./context.js";
import { versionName } from "../runtime/live.js";

export function healthRoutes(app: FastifyInstance, ctx: ServerContext): void {
  const startedAt = Date.now();
  app.get("/healthz", async () => ({
    ok: true,
    uptimeSeconds: Math.round((Date.now() - startedAt) / 1000),
    agents: [...ctx.runtime.agents.values()].map((a) => ({
      name: a.name,
      live: versionName(a.live.version),
      // the recorded live version failed to load: the base model answers in its place
      ...(a.liveProblem ? { problem: a.liveProblem } : {}),
      // a retraction's rebuild failed: until one succeeds, the live weights may hold what was retracted
      ...(a.owedRebuild ? { rebuildOwed: a.owedRebuild } : {}),
      baking: a.isBaking,
      // a feed that keeps failing is news the agent no longer gets
      feeds: a.ledger.data.feeds.map((f) => ({ id: f.id, consecutiveErrors: f.consecutiveErrors, lastOkAt: f.lastOkAt ?? null, ...(f.lastError ? { lastError: f.lastError } : {}), ...(f.movedTo ? { movedTo: f.movedTo } : {}) })),
    })),
    // commands: chat commands in progress without a slot (a "forget ..." waiting); at most running + waiting
    // capacity of them (src/server/queue.ts), and they do not count toward the 429 limit
    queue: { running: ctx.queue.running, waiting: ctx.queue.depth, commands: ctx.queue.commands },
  }));
}
