// Who may talk to the server.
//
// - Bound to a loopback address, no token is needed; bound to anything else, a token is required
//   (createServer refuses to start without one). A token, once given, protects every route.
// - The dashboard's static shell (HTML/JS/CSS, no data) is public so that a browser can load the
//   page that then asks for the token; every API route behind it checks the token.
// - Browsers on other sites are refused (Origin / Sec-Fetch-Site), and without a token the Host
//   header must name this machine, so a web page cannot drive the admin API through the user's
//   browser or by DNS rebinding.
import { createHash, timingSafeEqual } from "node:crypto";
import type { FastifyInstance, FastifyRequest } from "fastify";
import { errorBody } from "./errors.js";

const LOOPBACK_NAMES = new Set(["localhost", "127.0.0.1", "::1", "[::1]", "::ffff:127.0.0.1"]);

export function isLoopback(host: string): boolean {
  return LOOPBACK_NAMES.has(host.toLowerCase()) || /^127(\.\d{1,3}){3}$/.test(host);
}

/** Throws when the server would be reachable from other machines without a token. */
export function assertSafeBinding(host: string, token: string | undefined): void {
  if (!isLoopback(host) && !token) {
    throw new Error(
      `refusing to listen on ${host} without a token: anyone who can reach it could read the ledger, roll back versions and use the agents. Pass a bearer token (kiln serve --token ..., or KILN_TOKEN), or bind 127.0.0.1`,
    );
  }
}

function digest(s: string): Buffer {
  return createHash("sha256").update(s).digest();
}

function hostnameOf(hostHeader: string): string {
  // "127.0.0.1:8080" -> "127.0.0.1", "[::1]:8080" -> "[::1]"
  const m = /^(\[[^\]]+\]|[^:]+)(:\d+)?$/.exec(hostHeader.trim());
  return m ? m[1]! : hostHeader;
}

export interface AuthOptions {
  token?: string;
  /** paths anyone may GET (the dashboard's static files) */
  isPublic(path: string): boolean;
}

export function installAuth(app: FastifyInstance, opts: AuthOptions): void {
  const expected = opts.token ? digest(opts.token) : null;
  const refuse = (status: number, message: string, code: string) => errorBody(status, message, code);

  app.addHook("onRequest", async (request: FastifyRequest, reply) => {
    const host = request.headers.host ?? "";
    const origin = request.headers.origin;
    if (origin && origin !== "null") {
      let originHost = "";
      try {
        originHost = new URL(origin).host;
      } catch {
        /* unparseable: treated as foreign */
      }
      if (originHost !== host) return reply.code(403).send(refuse(403, `cross-origin requests are not allowed (origin ${origin})`, "cross_origin"));
    } else if (request.headers["sec-fetch-site"] === "cross-site") {
      return reply.code(403).send(refuse(403, "cross-site requests are not allowed", "cross_origin"));
    }
    if (!expected && !isLoopback(hostnameOf(host))) {
      return reply.code(403).send(refuse(403, `this server has no token and only answers requests addressed to localhost (Host: ${host})`, "bad_host"));
    }
    const path = request.url.split("?")[0]!;
    if (!expected || ((request.method === "GET" || request.method === "HEAD") && opts.isPublic(path))) return;
    const m = /^Bearer\s+(.+)$/i.exec(request.headers.authorization ?? "");
    const given = m ? m[1]!.trim() : null;
    if (given !== null && timingSafeEqual(digest(given), expected)) return;
    reply.header("www-authenticate", 'Bearer realm="kiln"');
    return given === null
      ? reply.code(401).send(refuse(401, "missing bearer token: send Authorization: Bearer <token>", "missing_api_key"))
      : reply.code(401).send(refuse(401, "incorrect bearer token", "invalid_api_key"));
  });
}
