// Bake progress as a stream of events for the admin SSE route, the dashboard and /metrics.
//
// The watcher listens to each agent's bake events (start, every progress event, end), whoever
// started the bake (the admin API, a schedule, a retraction), and re-emits them per agent with
// the ledger's record of the bake (metrics and per-epoch KL history) on the outcome.
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
  private detach: (() => void)[] = [];

  constructor(private readonly runtime: Runtime) {
    this.emitter.setMaxListeners(0);
  }

  start(): void {
    if (this.detach.length) return;
    for (const agent of this.runtime.agents.values()) {
      const onStart = () => this.track(agent);
      const onProgress = (p: WorkerProgress) => {
        const watch = this.watches.get(agent.name);
        if (watch) this.record(agent, watch, p);
      };
      agent.bakeEvents.on("start", onStart);
      agent.bakeEvents.on("progress", onProgress);
      this.detach.push(() => {
        agent.bakeEvents.off("start", onStart);
        agent.bakeEvents.off("progress", onProgress);
      });
      if (agent.isBaking) this.track(agent); // started before the server
    }
  }

  stop(): void {
    for (const d of this.detach) d();
    this.detach = [];
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
   * Watches the agent's running bake (on its start event, or right after the server starts one);
   * does nothing when no bake is running or it is already watched.
   */
  track(agent: Agent): void {
    if (this.watches.has(agent.name) || !agent.isBaking) return;
    // The bake's record is written when it starts; a bake that is about to be skipped has none.
    const record = agent.ledger.data.bakes.findLast((b) => b.status === "running") ?? null;
    const watch: Watch = { bakeId: record?.id ?? null, trigger: record?.trigger ?? null, last: null, train: null, validate: null };
    this.watches.set(agent.name, watch);
    this.emit({ type: "start", agent: agent.name, bakeId: watch.bakeId, trigger: watch.trigger, at: record?.startedAt ?? new Date().toISOString() });
    if (agent.progress) this.record(agent, watch, agent.progress);
    // A second bake() call while one runs joins it: this is the running bake's own promise.
    agent
      .bake("join")
      .catch((err: Error): BakeOutcome => ({ status: "failed", reasons: [err.message] }))
      .then((outcome) => {
        this.watches.delete(agent.name);
        const id = outcome.bakeId ?? watch.bakeId;
        const bake = id ? (agent.ledger.data.bakes.find((b) => b.id === id) ?? null) : null;
        this.emit({ type: "outcome", agent: agent.name, bakeId: id, outcome, bake });
      });
  }

  private record(agent: Agent, watch: Watch, p: WorkerProgress): void {
    if (p === watch.last) return;
    watch.last = p;
    if (p.phase === "train") watch.train = p;
    if (p.phase === "validate") watch.validate = p;
    this.emit({ type: "progress", agent: agent.name, bakeId: watch.bakeId, progress: p });
  }

  private emit(e: BakeEvent): void {
    this.emitter.emit(e.agent, e);
  }
}
