// Bake progress as a stream of events for the admin SSE route, the dashboard and /metrics.
//
// The runtime reports progress through an agent's latest `progress` value (its event hook is
// fixed when the Runtime is built, before a server exists), so the watcher samples it: every
// `intervalMs` it notices a bake that started (whoever started it: the admin API, a schedule, a
// retraction), emits each new progress value, joins the bake's promise and emits its outcome
// with the ledger's record of the bake (metrics and per-epoch KL history). Sampling can skip
// progress values that follow each other within one interval; start and outcome are never lost.
import { EventEmitter } from "node:events";
import type { WorkerProgress } from "../bake/job.js";
import type { BakeRun } from "../knowledge/ledger.js";
import type { Agent, BakeOutcome } from "../runtime/agent.js";
import type { Runtime } from "../runtime/runtime.js";

type TrainProgress = Extract<WorkerProgress, { phase: "train" }>;
type ValidateProgress = Extract<WorkerProgress, { phase: "validate" }>;

export type BakeEvent =
  | { type: "start"; agent: string; bakeId: string | null; trigger: string | null; at: string }
  | { type: "progress"; agent: string; bakeId: string | null; progress: WorkerProgress }
  | { type: "outcome"; agent: string; bakeId: string | null; outcome: BakeOutcome; bake: BakeRun | null };

export interface BakeSnapshot {
  baking: boolean;
  bakeId: string | null;
  trigger: string | null;
  progress: WorkerProgress | null;
  /** the latest training step and validation of the running bake */
  train: TrainProgress | null;
  validate: ValidateProgress | null;
}

interface Watch {
  bakeId: string | null;
  trigger: string | null;
  last: WorkerProgress | null;
  train: TrainProgress | null;
  validate: ValidateProgress | null;
}

export class BakeWatcher {
  private readonly emitter = new EventEmitter();
  private readonly watches = new Map<string, Watch>();
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly runtime: Runtime,
    private readonly intervalMs = 100,
  ) {
    this.emitter.setMaxListeners(0);
  }

  start(): void {
    this.timer ??= setInterval(() => this.tick(), this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.emitter.removeAllListeners();
  }

  /** Listens to one agent's bake events; returns the function that stops listening. */
  subscribe(agent: string, listener: (e: BakeEvent) => void): () => void {
    this.emitter.on(agent, listener);
    return () => this.emitter.off(agent, listener);
  }

  snapshot(agent: string): BakeSnapshot {
    const w = this.watches.get(agent);
    const a = this.runtime.agents.get(agent);
    return {
      baking: !!a?.isBaking,
      bakeId: w?.bakeId ?? null,
      trigger: w?.trigger ?? null,
      progress: a?.progress ?? null,
      train: w?.train ?? null,
      validate: w?.validate ?? null,
    };
  }

  /**
   * Starts watching the agent's running bake now (called right after the server starts one, so
   * its first progress is not left to the next tick). Does nothing when no bake is running.
   */
  track(agent: Agent): void {
    if (this.watches.has(agent.name) || !agent.isBaking) return;
    // The bake's record is written when it starts; a bake that is about to be skipped has none.
    const record = agent.ledger.data.bakes.findLast((b) => b.status === "running") ?? null;
    const watch: Watch = { bakeId: record?.id ?? null, trigger: record?.trigger ?? null, last: null, train: null, validate: null };
    this.watches.set(agent.name, watch);
    this.emit({ type: "start", agent: agent.name, bakeId: watch.bakeId, trigger: watch.trigger, at: record?.startedAt ?? new Date().toISOString() });
    this.sample(agent, watch);
    // A second bake() call while one runs joins it: this is the running bake's own promise.
    agent
      .bake("join")
      .catch((err: Error): BakeOutcome => ({ status: "failed", reasons: [err.message] }))
      .then((outcome) => {
        this.sample(agent, watch);
        this.watches.delete(agent.name);
        const id = outcome.bakeId ?? watch.bakeId;
        const bake = id ? (agent.ledger.data.bakes.find((b) => b.id === id) ?? null) : null;
        this.emit({ type: "outcome", agent: agent.name, bakeId: id, outcome, bake });
      });
  }

  private tick(): void {
    for (const agent of this.runtime.agents.values()) {
      const watch = this.watches.get(agent.name);
      if (watch) this.sample(agent, watch);
      else if (agent.isBaking) this.track(agent);
    }
  }

  private sample(agent: Agent, watch: Watch): void {
    const p = agent.progress;
    if (!p || p === watch.last) return;
    watch.last = p;
    if (p.phase === "train") watch.train = p;
    if (p.phase === "validate") watch.validate = p;
    this.emit({ type: "progress", agent: agent.name, bakeId: watch.bakeId, progress: p });
  }

  private emit(e: BakeEvent): void {
    this.emitter.emit(e.agent, e);
  }
}
