// What the route modules share.
import type { FastifyReply } from "fastify";
import type { Runtime } from "../runtime/runtime.js";
import type { Agent } from "../runtime/agent.js";
import type { BakeWatcher } from "./bake-watch.js";
import { ApiError } from "./errors.js";
import type { Metrics } from "./metrics.js";
import type { GenerationQueue } from "./queue.js";

export interface ServerContext {
  runtime: Runtime;
  queue: GenerationQueue;
  metrics: Metrics;
  watcher: BakeWatcher;
  /** aborted when the server closes: ends generations and event streams */
  shutdown: AbortSignal;
}

export function findAgent(ctx: ServerContext, name: string, param = "name"): Agent {
  const agent = ctx.runtime.agents.get(name);
  if (!agent) {
    const known = [...ctx.runtime.agents.keys()].join(", ") || "none";
    throw new ApiError(404, `no agent named ${JSON.stringify(name)} (agents: ${known})`, param === "model" ? "model_not_found" : "agent_not_found", param);
  }
  return agent;
}

/**
 * A signal that aborts when the client goes away before the response is complete, or when the
 * server shuts down.
 */
export function clientSignal(ctx: ServerContext, reply: FastifyReply): AbortSignal {
  const ac = new AbortController();
  reply.raw.once("close", () => {
    if (!reply.raw.writableFinished) ac.abort();
  });
  return AbortSignal.any([ac.signal, ctx.shutdown]);
}
