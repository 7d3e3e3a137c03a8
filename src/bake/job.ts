// A bake runs in a child process so serving never stalls on it, and a crash in the bake cannot
// take the server down. The child writes the adapter into a temporary directory and renames it
// into place; the parent only ever sees a complete adapter or an error that says why.
import { fork } from "node:child_process";
import { existsSync, readdirSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { BakeProgress, BakeReport, BakeSettings } from "./trainer.js";
import type { CycleJob, CycleResult } from "./cycle.js";

export interface BakeJob {
  modelDir: string;
  prompt: string;
  questions: string[];
  settings?: Partial<BakeSettings>;
  /** where the PEFT directory goes (written atomically) */
  outDir: string;
  /** adapter of the live weights: the teacher, and where the student starts */
  liveAdapterDir?: string;
  /** start from the live adapter (rolling bake) or from a fresh one with the live adapter as teacher only */
  startFromLive?: boolean;
  /** tensor backend for the worker (as KILN_BACKEND); the parent's choice when omitted */
  backend?: string;
}

/** What a worker hands back about a bake: the report without the adapter, which is on disk. */
export interface BakeSummary extends Omit<BakeReport, "adapter"> {
  outDir: string;
  trainableParameters: number;
}

export function summarizeBake(report: BakeReport, outDir: string): BakeSummary {
  const { adapter, ...rest } = report;
  return { ...rest, outDir: path.resolve(outDir), trainableParameters: adapter.parameterCount() };
}

/** Progress of a whole rolling bake: the bake's own, plus probe writing and scoring. */
export type WorkerProgress = BakeProgress | { phase: "probes" | "evaluate"; done: number; total: number };

export type WorkerJob = ({ kind: "bake" } & BakeJob) | ({ kind: "cycle"; backend?: string } & CycleJob);

export type WorkerMessage =
  | { type: "progress"; progress: WorkerProgress }
  | { type: "done"; result: unknown }
  | { type: "error"; message: string };

export class BakeFailedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BakeFailedError";
  }
}

/** Removes half-written siblings (out.tmp-*) that a killed worker may leave. */
export function cleanPartialOutputs(outDir: string): void {
  const dir = path.dirname(path.resolve(outDir));
  const base = path.basename(outDir);
  if (!existsSync(dir)) return;
  for (const f of readdirSync(dir)) if (f.startsWith(`${base}.tmp-`)) rmSync(path.join(dir, f), { recursive: true, force: true });
}

export interface RunningBake<R = BakeSummary> {
  promise: Promise<R>;
  /** stops the worker; the promise rejects (saying why, where given) and nothing is written */
  cancel(why?: string): void;
  pid: number | undefined;
}

export function startBake(job: BakeJob, onProgress?: (p: BakeProgress) => void): RunningBake<BakeSummary> {
  return startWorker<BakeSummary>({ kind: "bake", ...job }, onProgress as (p: WorkerProgress) => void);
}

/** A rolling bake of an agent: probes, bake and scoring, in the worker (see cycle.ts). */
export function startCycle(job: CycleJob & { backend?: string }, onProgress?: (p: WorkerProgress) => void): RunningBake<CycleResult> {
  return startWorker<CycleResult>({ kind: "cycle", ...job }, onProgress);
}

/**
 * The bake worker's niceness (KILN_BAKE_NICE, default 10; 0 = the server's). A bake wants every
 * core for minutes: at the server's priority it halved serving on 2 cores (134 -> 65 tokens/s);
 * measured interleaved with tools/loadtest.ts, serving during a bake got 29 tokens/s at niceness 0
 * and 50 at 10. Niced, the bake takes what serving leaves, and all of an idle machine.
 */
export function bakeNiceness(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.KILN_BAKE_NICE?.trim();
  if (!raw) return 10;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0 || n > 19) throw new Error(`KILN_BAKE_NICE must be a whole number from 0 to 19 (got ${JSON.stringify(raw)})`);
  return n;
}

function startWorker<R>(job: WorkerJob, onProgress?: (p: WorkerProgress) => void): RunningBake<R> {
  const script = path.join(path.dirname(fileURLToPath(import.meta.url)), "worker.js");
  const nice = bakeNiceness();
  const child = fork(script, [], {
    stdio: ["ignore", "inherit", "pipe", "ipc"],
    env: { ...process.env, ...(job.backend ? { KILN_BACKEND: job.backend } : {}) },
  });
  if (nice && child.pid !== undefined) {
    try {
      // relative to the server's own niceness, as `nice -n` does
      os.setPriority(child.pid, Math.min(19, os.getPriority() + nice));
    } catch {
      // not permitted here (some containers): the bake runs at the server's priority
    }
  }
  let stderr = "";
  child.stderr?.on("data", (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  let cancelled: string | null = null;
  const promise = new Promise<R>((resolve, reject) => {
    let settled = false;
    const fail = (message: string) => {
      if (settled) return;
      settled = true;
      cleanPartialOutputs(job.outDir);
      reject(new BakeFailedError(message));
    };
    child.on("message", (m: WorkerMessage) => {
      if (m.type === "progress") onProgress?.(m.progress);
      else if (m.type === "done") {
        settled = true;
        resolve(m.result as R);
      } else fail(`bake failed: ${m.message}`);
    });
    child.on("error", (err) => fail(`bake worker could not run: ${err.message}`));
    child.on("exit", (code, signal) => {
      if (settled) return;
      if (cancelled !== null) return fail(cancelled ? `bake cancelled: ${cancelled}` : "bake cancelled");
      const tail = stderr.trim().split("\n").slice(-5).join("\n");
      fail(`bake worker died (${signal ? `signal ${signal}` : `exit code ${code}`}) before writing an adapter${tail ? `:\n${tail}` : ""}`);
    });
    child.send(job);
  });
  return {
    promise,
    pid: child.pid,
    cancel(why = "") {
      cancelled = why;
      child.kill("SIGTERM");
    },
  };
}

export function runBake(job: BakeJob, onProgress?: (p: BakeProgress) => void): Promise<BakeSummary> {
  return startBake(job, onProgress).promise;
}
