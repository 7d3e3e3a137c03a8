// Talking to the kiln server: JSON calls and server-sent-event streams, with the bearer token
// when the server has one. EventSource cannot send headers, so streams are read with fetch.

const TOKEN_KEY = "kiln.token";
let askToken = async () => null;

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** Called on 401 with the server's message; resolves with a new token, or null to give up. */
export function onTokenNeeded(fn) {
  askToken = fn;
}

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function request(path, init = {}, retry = true) {
  const headers = new Headers(init.headers || {});
  const token = getToken();
  if (token) headers.set("authorization", `Bearer ${token}`);
  if (init.body !== undefined && !headers.has("content-type")) headers.set("content-type", "application/json");
  const res = await fetch(path, { ...init, headers });
  if (res.status === 401 && retry) {
    const body = await res.json().catch(() => null);
    const next = await askToken(body?.error?.message || "a token is required");
    if (next) {
      setToken(next);
      return request(path, init, true);
    }
    throw new ApiError(401, body);
  }
  if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
  return res;
}

export async function api(path, { method = "GET", body, signal } = {}) {
  const res = await request(path, { method, signal, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
  return res.json();
}

/** Yields {event, data} for each server-sent event of a fetch response. */
export async function* readEvents(res) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      buf += value.replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) continue;
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) yield { event, data: data.join("\n") };
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/** POSTs (or GETs) and yields the response's server-sent events. */
export async function* stream(path, { method = "GET", body, signal } = {}) {
  const res = await request(path, { method, signal, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
  yield* readEvents(res);
}
