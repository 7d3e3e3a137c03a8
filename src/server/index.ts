// kiln's HTTP server: the OpenAI-compatible API, the admin API, /healthz, /metrics and the web
// dashboard, on fastify, over one Runtime.
//
//   const server = await createServer(runtime, { port: 8080 });
//   ...
//   await server.close(); // ends streams and generations; the runtime stays up (stop it yourself)
import Fastify, { type FastifyInstance } from "fastify";
import type { Runtime } from "../runtime/runtime.js";
import { adminRoutes } from "./admin.js";
import { assertSafeBinding, installAuth } from "./auth.js";
import { BakeWatcher } from "./bake-watch.js";
import type { ServerContext } from "./context.js";
import { dashboardPaths, dashboardRoutes } from "./dashboard.js";
import { frameworkError, installErrorHandlers, shuttingDown } from "./errors.js";
import { healthRoutes } from "./health.js";
import { Metrics, metricsRoutes } from "./metrics.js";
import { openaiRoutes } from "./openai.js";
import { GenerationQueue } from "./queue.js";

export { ApiError } from "./errors.js";

export const DEFAULT_HOST = "127.0.0.1";
export const DEFAULT_PORT = 8080;
export const DEFAULT_BODY_LIMIT = 1024 * 1024;
const CLOSE_GRACE_MS = 1500;
/** How long replies in flight may take to finish once the server is asked to stop. */
export const DEFAULT_SHUTDOWN_GRACE_MS = 10_000;
const SHUTTING_DOWN = "the server is shutting down; send the request again once it is back";


export interface ServerOptions {
  /** address to bind (default 127.0.0.1); anything but a loopback address requires `token` */
  host?: string;
  /** port (default 8080; 0 = any free port) */
  port?: number;
  /** bearer token every API route requires (the dashboard's static files excepted) */
  token?: string;
  /** largest request body in bytes (default 1 MiB); larger ones get 413 */
  bodyLimit?: number;
  /** most generation requests waiting for a slot (default 16); beyond that 429 */
  maxQueue?: number;
  /** most generations at once (default 1: generation is CPU-bound) */
  maxConcurrent?: number;
  /**
   * On close, replies already being generated get this long to finish (default 10 s; 0 cuts them
   * off at once); new and queued requests are refused with 503 meanwhile.
   */
  shutdownGraceMs?: number;
  /** fastify's request log to stdout (default off) */
  logger?: boolean;
}

export interface KilnServer {
  app: FastifyInstance;
  /** http://host:port, with the port actually bound */
  url: string;
  close(): Promise<void>;
}

export async function createServer(runtime: Runtime, opts: ServerOptions = {}): Promise<KilnServer> {
  const host = opts.host ?? DEFAULT_HOST;
  const token = opts.token || undefined;
  assertSafeBinding(host, token);

  const shutdown = new AbortController();
  const ctx: ServerContext = {
    runtime,
    queue: new GenerationQueue(opts.maxConcurrent ?? 1, opts.maxQueue ?? 16),
    metrics: new Metrics(),
    watcher: new BakeWatcher(runtime),
    shutdown: shutdown.signal,
  };
  // fastify's own answer while closing is a 503 in its shape, not OpenAI's: the hook below answers instead
  const app = Fastify({ logger: opts.logger ?? false, bodyLimit: opts.bodyLimit ?? DEFAULT_BODY_LIMIT, return503OnClosing: false, frameworkErrors: frameworkError });
  installErrorHandlers(app);
  metricsRoutes(app, ctx); // first: its hook counts every request, refused ones included
  let refusing = false; // set when close() starts: replies in flight may still finish
  app.addHook("onRequest", async () => {
    if (refusing) throw shuttingDown(SHUTTING_DOWN);
  });
  const publicPaths = dashboardPaths();
  installAuth(app, { token, isPublic: (p) => publicPaths.has(p) });
  healthRoutes(app, ctx);
  openaiRoutes(app, ctx);
  adminRoutes(app, ctx);
  await dashboardRoutes(app);

  ctx.watcher.start();
  const port = opts.port ?? DEFAULT_PORT;
  try {
    await app.listen({ host, port });
  } catch (err) {
    ctx.watcher.stop();
    await app.close().catch(() => {});
    throw listenError(err as NodeJS.ErrnoException, host, port);
  }
  const address = app.server.address();
  const bound = typeof address === "object" && address ? address.port : port;
  // A wildcard bind is reached through loopback from this machine.
  const shown = host === "0.0.0.0" ? "127.0.0.1" : host === "::" ? "::1" : host;
  const url = `http://${shown.includes(":") ? `[${shown}]` : shown}:${bound}`;

  let closing: Promise<void> | null = null;
  return {
    app,
    url,
    close: () =>
      (closing ??= (async () => {
        refusing = true;
        ctx.queue.drain(() => shuttingDown(SHUTTING_DOWN));
        ctx.watcher.stop();
        // Replies being generated get the grace period to finish; then the reason reaches every
        // request's signal and what is still running is cut off with it.
        const grace = opts.shutdownGraceMs ?? DEFAULT_SHUTDOWN_GRACE_MS;
        if (grace > 0) {
          let timer: NodeJS.Timeout | undefined;
          await Promise.race([ctx.queue.idle(), new Promise<void>((r) => (timer = setTimeout(r, grace)))]);
          clearTimeout(timer);
        }
        shutdown.abort(shuttingDown(SHUTTING_DOWN));
        // Requests in flight get a moment to finish; then every connection is closed (a client's
        // half-used keep-alive socket would otherwise hold the server open for its timeout).
        const force = setTimeout(() => app.server.closeAllConnections(), CLOSE_GRACE_MS);
        try {
          await app.close();
        } finally {
          clearTimeout(force);
        }
      })()),
  };
}

/** Why the server could not listen, in words a user can act on (node's own: "listen EADDRINUSE: address already in use 127.0.0.1:8080"). */
function listenError(err: NodeJS.ErrnoException, host: string, port: number): Error {
  const where = `${host.includes(":") ? `[${host}]` : host}:${port}`;
  const why =
    err.code === "EADDRINUSE"
      ? `${where} is already in use (another kiln serve, or another program): stop it, or pick another port (kiln serve --port <n>; 0 takes any free one)`
      : err.code === "EACCES"
        ? `no permission to listen on ${where} (ports below 1024 need privileges): pick a port of 1024 or more`
        : err.code === "EADDRNOTAVAIL"
          ? `${host} is not an address of this machine, so nothing can listen on it: pass one it has (--host 127.0.0.1, or 0.0.0.0 for all)`
          : undefined;
  return why ? Object.assign(new Error(`cannot serve: ${why}`), { code: err.code }) : err;
}
