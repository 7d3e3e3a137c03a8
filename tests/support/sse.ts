// A server-sent-events reader for tests: the events of a stream, as the dashboard reads them.
import assert from "node:assert/strict";

export interface SseEvent {
  event: string;
  data: any; // eslint-disable-line @typescript-eslint/no-explicit-any -- each route's own JSON
}

/** Reads `url`'s events until `until` says stop, the stream ends or `timeoutMs` pass; the events read. */
export async function readEvents(url: string, until: (e: SseEvent) => boolean, opts: { headers?: Record<string, string>; timeoutMs?: number } = {}): Promise<SseEvent[]> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), opts.timeoutMs ?? 40_000);
  const events: SseEvent[] = [];
  try {
    const res = await fetch(url, { headers: opts.headers, signal: ac.signal });
    assert.equal(res.status, 200, res.status === 200 ? "" : await res.text());
    assert.match(res.headers.get("content-type") ?? "", /text\/event-stream/);
    const decoder = new TextDecoder();
    let buf = "";
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buf += decoder.decode(chunk, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (data === undefined) continue;
        const e = { event: /^event: (.*)$/m.exec(block)?.[1] ?? "message", data: JSON.parse(data) };
        events.push(e);
        if (until(e)) {
          ac.abort();
          return events;
        }
      }
    }
  } catch (err) {
    if (!ac.signal.aborted) throw err;
  } finally {
    clearTimeout(timer);
  }
  return events;
}
