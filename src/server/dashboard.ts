// The web dashboard: plain HTML/JS/CSS in src/server/dashboard/, served as they are (no build
// step; tsc does not copy them to dist/, so they are read from the package's source folder).
// The files hold no data, so they are public; the page asks for the token when the API says 401.
import { existsSync, readdirSync } from "node:fs";
import path from "node:path";
import fastifyStatic from "@fastify/static";
import type { FastifyInstance } from "fastify";
import { PACKAGE_ROOT } from "../model/resolve.js";

export const DASHBOARD_DIR = path.join(PACKAGE_ROOT, "src", "server", "dashboard");

/** The URL paths of the dashboard's files ("/" is index.html). */
export function dashboardPaths(dir = DASHBOARD_DIR): Set<string> {
  if (!existsSync(dir)) return new Set();
  return new Set(["/", ...readdirSync(dir, { withFileTypes: true }).filter((e) => e.isFile()).map((e) => `/${e.name}`)]);
}

export async function dashboardRoutes(app: FastifyInstance, dir = DASHBOARD_DIR): Promise<void> {
  if (!existsSync(path.join(dir, "index.html"))) {
    app.get("/", async (_request, reply) => reply.code(404).type("text/plain").send(`the dashboard's files are missing (${dir})`));
    return;
  }
  await app.register(fastifyStatic, {
    root: dir,
    prefix: "/",
    wildcard: false,
    index: "index.html",
    // The files change with the package, not per deploy: always revalidate (ETag) so an update shows.
    cacheControl: false,
    setHeaders: (reply) => {
      reply.header("cache-control", "no-cache");
      reply.header("x-content-type-options", "nosniff");
      reply.header("content-security-policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'");
    },
  });
}
