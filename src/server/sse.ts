// Server-sent events over a fastify reply: the reply is sent as a stream (so fastify's hooks and
// metrics still see it) and events are written into it. `closed` turns true and `onClose`
// listeners run when the client goes away or the stream is ended.
import { PassThrough } from "node:stream";
import type { FastifyReply } from "fastify";

export class SseStream {
  private readonly stream = new PassThrough();
  private done = false;
  private readonly listeners: (() => void)[] = [];

  private constructor(private readonly reply: FastifyReply) {}

  /** Sends the headers (with a first comment, so they leave now) and returns the stream. */
  static open(reply: FastifyReply): SseStream {
    const sse = new SseStream(reply);
    reply.raw.once("close", () => sse.finish());
    reply
      .code(200)
      .header("content-type", "text/event-stream; charset=utf-8")
      .header("cache-control", "no-cache, no-transform")
      .header("x-accel-buffering", "no")
      .send(sse.stream);
    sse.comment("kiln");
    return sse;
  }

  get closed(): boolean {
    return this.done || this.reply.raw.destroyed;
  }

  onClose(listener: () => void): void {
    if (this.done) listener();
    else this.listeners.push(listener);
  }

  /** `data: <json>` (OpenAI style), or with an event name for named events. */
  send(data: unknown, event?: string): void {
    if (this.closed) return;
    this.stream.write(`${event ? `event: ${event}\n` : ""}data: ${typeof data === "string" ? data : JSON.stringify(data)}\n\n`);
  }

  comment(text: string): void {
    if (!this.closed) this.stream.write(`: ${text}\n\n`);
  }

  end(): void {
    if (!this.done) this.stream.end();
    this.finish();
  }

  private finish(): void {
    if (this.done) return;
    this.done = true;
    for (const l of this.listeners.splice(0)) l();
  }
}
