// GET /healthz: the process is up, with each agent's live version and whether it is baking.
import type { FastifyInstance } from "fastify";
import type { ServerContext } from "./context.js";

export function healthRoutes(app: FastifyInstance, ctx: ServerContext): void {
  const startedAt = Date.now();
  app.get("/healthz", async () => ({
    ok: true,
    uptimeSeconds: Math.round((Date.now() - startedAt) / 1000),
    agents: [...ctx.runtime.agents.values()].map((a) => ({ name: a.name, live: a.live.version ?? "base", baking: a.isBaking })),
    queue: { running: ctx.queue.running, waiting: ctx.queue.depth },
  }));
}
