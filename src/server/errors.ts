// Every error the server sends has OpenAI's shape, {error: {message, type, param, code}}, so the
// official clients (and the dashboard) can read it, on the admin API as well as on /v1.
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { ZodError } from "zod";
import { LedgerError } from "../knowledge/ledger.js";

export type ErrorType = "invalid_request_error" | "authentication_error" | "not_found_error" | "rate_limit_error" | "conflict_error" | "server_error";

export interface ErrorBody {
  error: { message: string; type: ErrorType; param: string | null; code: string | null };
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly code: string | null = null,
    readonly param: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = "ApiError";
  }

  get type(): ErrorType {
    return typeForStatus(this.status);
  }
}

function typeForStatus(status: number): ErrorType {
  if (status === 401 || status === 403) return "authentication_error";
  if (status === 404) return "not_found_error";
  if (status === 409) return "conflict_error";
  if (status === 429) return "rate_limit_error";
  if (status >= 500) return "server_error";
  return "invalid_request_error";
}

/** A 503 for a request the stopping server will not finish; the client may send it again once it is back. */
export function shuttingDown(message: string): ApiError {
  return new ApiError(503, message, "shutting_down", null, { "retry-after": "5", connection: "close" });
}

export function errorBody(status: number, message: string, code: string | null = null, param: string | null = null): ErrorBody {
  return { error: { message, type: typeForStatus(status), param, code } };
}

/** A zod failure as a 400 naming the first offending field, e.g. "messages.0.role: ...". */
export function validationError(err: ZodError, prefix = ""): ApiError {
  const issue = err.issues[0]!;
  const param = [prefix, ...issue.path.map(String)].filter(Boolean).join(".") || null;
  const more = err.issues.length > 1 ? ` (and ${err.issues.length - 1} more problem${err.issues.length > 2 ? "s" : ""})` : "";
  // the body as a whole (a text/plain body arrives as a string): say what a body must be
  const message = !param && issue.code === "invalid_type" ? `the request body must be a JSON object, sent as application/json (${issue.message})` : issue.message;
  return new ApiError(400, `${param ? `${param}: ` : ""}${message}${more}`, "invalid_value", param);
}

/** Fastify's own errors (bad JSON, body too large, wrong content type) keep their status. */
const FASTIFY_MESSAGES: Record<string, string> = {
  FST_ERR_CTP_BODY_TOO_LARGE: "request body is larger than the server's limit",
  FST_ERR_CTP_INVALID_MEDIA_TYPE: "unsupported content type: send application/json",
  FST_ERR_CTP_EMPTY_JSON_BODY: "the body is empty but content-type is application/json",
};

/**
 * Errors fastify's router meets before any route or hook runs (a path that is not valid percent
 * encoding, a path parameter past its length limit): passed as the `frameworkErrors` option, since
 * setErrorHandler never sees them and fastify answered them in its own shape.
 */
export function frameworkError(err: FastifyError, _request: FastifyRequest, reply: FastifyReply): void {
  const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 400;
  const message =
    err.code === "FST_ERR_BAD_URL" ? "the path is not valid percent-encoding (a % must be followed by two hex digits of UTF-8)" :
    err.code === "FST_ERR_MAX_PARAM_LENGTH" ? "a name or id in the path is longer than the server accepts" :
    err.message;
  void reply.code(status).send(errorBody(status, message, err.code ?? null));
}

export function installErrorHandlers(app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError | ApiError | LedgerError | Error, request: FastifyRequest, reply: FastifyReply) => {
    if (err instanceof ApiError) {
      reply.headers(err.headers);
      return reply.code(err.status).send(errorBody(err.status, err.message, err.code, err.param));
    }
    if (err instanceof LedgerError) {
      // The ledger names what it could not find ("no item ...", "no version ...").
      const status = /^no (item|version) /.test(err.message) ? 404 : / is ambiguous: /.test(err.message) ? 400 : 409;
      return reply.code(status).send(errorBody(status, err.message, status === 404 ? "not_found" : status === 400 ? "ambiguous_id" : "ledger_error"));
    }
    const fe = err as FastifyError;
    if (fe.statusCode && fe.statusCode >= 400 && fe.statusCode < 500) {
      const code = fe.code ?? null;
      const message = (code && FASTIFY_MESSAGES[code]) ?? fe.message;
      return reply.code(fe.statusCode).send(errorBody(fe.statusCode, message, code));
    }
    request.log.error(err);
    return reply.code(500).send(errorBody(500, `internal error: ${err.message}`, "internal_error"));
  });
  app.setNotFoundHandler((request, reply) => {
    reply.code(404).send(errorBody(404, `no route ${request.method} ${request.url.split("?")[0]}`, "unknown_route"));
  });
}
