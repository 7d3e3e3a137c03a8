// Generation is CPU-bound: a bounded queue runs at most `maxConcurrent` at once and lets at most
// `maxQueue` wait; beyond that a request is refused at once (429) with a Retry-After estimate
// instead of piling up behind minutes of work. A waiter whose client goes away leaves the queue.
//
// A chat command (a "forget ..." waiting seconds for weights to leave service) gives its slot back
// and goes on (goOnWithoutSlot), so it holds up no generation; at most maxConcurrent + maxQueue
// do so at once. A command past that keeps its slot while it waits, as a generation would, so a
// flood of them fills the queue and is refused with 429 (else any number could wait at once,
// each holding a connection and a retraction, and the queue would look idle meanwhile).
import { ApiError } from "./errors.js";

interface Waiter {
  resolve(release: () => void): void;
  reject(err: Error): void;
}

export class GenerationQueue {
  private active = 0;
  private readonly waiting: Waiter[] = [];
  /** moving average of how long a generation holds its slot, for Retry-After */
  private avgSeconds = 2;
  private onIdle: (() => void)[] = [];
  /** requests that gave their slot back before they ended (a chat command's reply): a shutdown's grace period waits for them too */
  private unslotted = 0;

  constructor(
    readonly maxConcurrent: number,
    readonly maxQueue: number,
  ) {
    if (!(maxConcurrent >= 1)) throw new Error(`maxConcurrent must be at least 1 (got ${maxConcurrent})`);
    if (!(maxQueue >= 0)) throw new Error(`maxQueue must be 0 or more (got ${maxQueue})`);
  }

  get running(): number {
    return this.active;
  }

  get depth(): number {
    return this.waiting.length;
  }

  /** Requests going on without a slot (chat commands). */
  get commands(): number {
    return this.unslotted;
  }

  /** Seconds until a slot is likely free for a new request. */
  retryAfter(): number {
    return Math.max(1, Math.ceil((this.avgSeconds * (this.waiting.length + 1)) / this.maxConcurrent));
  }

  /** Waits for a slot; resolves with its release function. Throws 429 when the queue is full. */
  acquire(signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted) return Promise.reject(abortError(signal, "the client went away"));
    if (this.active < this.maxConcurrent) return Promise.resolve(this.grant());
    if (this.waiting.length >= this.maxQueue) {
      const after = this.retryAfter();
      return Promise.reject(
        new ApiError(429, `the server is busy: ${this.active} generation(s) running and ${this.waiting.length} waiting (the limit); retry in about ${after}s`, "queue_full", null, {
          "retry-after": String(after),
        }),
      );
    }
    return new Promise((resolve, reject) => {
      const waiter: Waiter = { resolve, reject };
      this.waiting.push(waiter);
      signal?.addEventListener(
        "abort",
        () => {
          const i = this.waiting.indexOf(waiter);
          if (i >= 0) {
            this.waiting.splice(i, 1);
            reject(abortError(signal, "the client went away while queued"));
          }
        },
        { once: true },
      );
    });
  }

  /** Resolves once no generation runs and none waits (a shutdown's grace period ends early then). */
  idle(): Promise<void> {
    if (this.isIdle()) return Promise.resolve();
    return new Promise((resolve) => this.onIdle.push(resolve));
  }

  /**
   * A request that gives its slot back and goes on (a "forget ..." waiting seconds without
   * generating): counted until the returned function is called, so a shutdown's grace period
   * still waits for its reply. Call it before giving the slot back: in between, a shutdown would
   * find the queue idle. Undefined when maxConcurrent + maxQueue already go on so: keep the slot.
   */
  goOnWithoutSlot(): (() => void) | undefined {
    if (this.unslotted >= this.maxConcurrent + this.maxQueue) return undefined;
    this.unslotted++;
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      this.unslotted--;
      this.checkIdle();
    };
  }

  private checkIdle(): void {
    if (this.isIdle()) for (const done of this.onIdle.splice(0)) done();
  }

  private isIdle(): boolean {
    return this.active === 0 && this.waiting.length === 0 && this.unslotted === 0;
  }

  /** Refuses everyone still waiting with the error `refusal` makes (server shutdown). */
  drain(refusal: () => Error): void {
    for (const w of this.waiting.splice(0)) w.reject(refusal());
  }

  private grant(): () => void {
    this.active++;
    const started = performance.now();
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.active--;
      this.avgSeconds = 0.8 * this.avgSeconds + 0.2 * ((performance.now() - started) / 1000);
      const next = this.waiting.shift();
      if (next) next.resolve(this.grant());
      else this.checkIdle();
    };
  }
}

/**
 * Why a waiter left: the signal's own reason when it is an ApiError (the server shutting down
 * aborts with its 503, and a queued request must get that, not "the client went away"); else 499.
 */
function abortError(signal: AbortSignal, clientGone: string): ApiError {
  return signal.reason instanceof ApiError ? signal.reason : new ApiError(499, clientGone, "client_closed");
}
