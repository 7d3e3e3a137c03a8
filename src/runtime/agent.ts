// One learning agent: its ledger, its live weights, its feeds and its bakes.
//
//   feeds / conversation / manual -> ledger (pending)
//   bake: pending + replay -> worker (probes, bake, scores) -> gate -> promote or reject
//   promote: manifest written, ledger updated, live model swapped; old versions pruned
import { createHash } from "node:crypto";
import { EventEmitter } from "node:events";
import { existsSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import cron, { type ScheduledTask } from "node-cron";
import { startCycle, type WorkerProgress } from "../bake/job.js";
import type { CycleResult } from "../bake/cycle.js";
import { decideGate, type StatusChange } from "./gate.js";
import { checkProbes, type ProbeCheck, type ProbeItem } from "../bake/probes.js";
import { DEFAULT_BAKE } from "../bake/trainer.js";
import { knowledgeLessons, itemTextProblem } from "../bake/prompt.js";
import { pollFeed, type FeedEntry } from "../feeds/feeds.js";
import { HALF_WRITTEN_VERSION, INACTIVE_STATUSES, isFeedItem, Ledger, markBaking, VERSION_DIR, type BakeRun, type Item, type ItemKind, type ItemStatus, type VersionRecord } from "../knowledge/ledger.js";
import { newsTime, pairedHeldItems, updatePairs } from "../knowledge/updates.js";
import type { LoadedModel } from "../model/load.js";
import { ADAPTER_WEIGHTS, BaseModelMismatch, loadAdapter } from "../lora/peft.js";
import type { LoraAdapter } from "../lora/adapter.js";
import { exportAdapter, type ExportOptions, type ExportResult } from "../lora/export.js";
import { AgentConfigError, movedFeedProblem, type AgentConfig } from "./agent-config.js";
import { BASE_VERSION, LiveModel, versionName } from "./live.js";
import { makeDirs } from "../files.js";

export interface BakeOutcome {
  status: "skipped" | "promoted" | "rejected" | "failed";
  bakeId?: string;
  version?: string;
  reasons: string[];
  absorption?: number;
  retention?: number;
  persona?: number | null;
}

export interface BakeOptions {
  /** bake even with fewer than bake.minPending pending items */
  force?: boolean;
  /** from the base model over every active item (a retraction's rebuild) */
  consolidate?: boolean;
  /**
   * A retraction's rebuild after it took the weights holding the retracted items out of service:
   * the items those weights held (now pending where the version serving does not hold them), baked
   * again whatever bake.maxItems, and the retracted items they held, which the rebuild must not know.
   */
  rebuild?: { held: string[]; retracted: string[] };
  /** a bake a retraction stopped, run again by it without the retracted items (it starts while the retraction runs, and goes on after it) */
  afterRetraction?: true;
  /**
   * The id its record takes, reserved before it could start: a retraction's rebuild waiting for
   * another bake to end is named by it in the admin API's answer, which must not name that bake.
   */
  bakeId?: string;
}

/** A retraction's rebuild that failed and is owed: how often it was tried, when it is tried again. */
export interface OwedRebuild {
  /** rebuilds that failed: the retraction's own, then each try again */
  attempts: number;
  /** when it is tried again by itself; null once the tries are used up (the next retraction carries it) */
  retryAt: string | null;
  lastError: string;
  /** retracted items the live weights still hold (they could not be taken out of service) */
  liveHolds: string[];
}

export interface AgentEvents {
  onBakeProgress?: (agent: string, p: WorkerProgress) => void;
  onLog?: (agent: string, message: string) => void;
}

/** Runs a bake when the machine's turn comes (Runtime: one bake at a time across its agents). */
export type BakeTurn = <T>(agent: string, run: () => Promise<T>) => Promise<T>;

/** Finished bakes whose rejected versions' losses the next replay puts first (see chooseReplay). */
export const AT_RISK_BAKES = 3;

/**
 * The held items a bake replays. Replay rotates through them: the least replayed so far first,
 * then the longest absorbed, so over several bakes every item is shown to the teacher again.
 * Items that a rejected bake among the last AT_RISK_BAKES finished ones lost (scored below
 * itemPass) come first, on top of those `n`: they are what the next bake is about to forget too.
 * Without it, a news agent whose replay is too small for what it holds lost about half of the
 * rest in every bake, was rejected on retention, and stayed on its live version from then on (the
 * soak's newsroom, replaying 10 of 30 held with 20 new: 10 bakes in a row rejected at retention
 * 0.45-0.55). From that state, four bakes in a row: replaying the losses of the rejections since
 * the last promotion, promoted and rejected in turn (2 of 4); of the last 3 bakes' rejections,
 * 4 of 4 promoted (retention 0.93, 0.74, 0.65, 0.70).
 */
export function chooseReplay(held: Item[], n: number, bakes: readonly BakeRun[], itemPass: number): { replay: Item[]; atRisk: number } {
  const rejected = new Set<string>();
  for (let k = bakes.length - 1, seen = 0; k >= 0 && seen < AT_RISK_BAKES; k--) {
    const b = bakes[k]!;
    if (b.status !== "promoted" && b.status !== "rejected") continue; // a failed bake scored nothing
    seen++;
    if (b.status === "rejected" && b.version) rejected.add(b.version);
  }
  const lost = held.filter((i) => i.scores.some((s) => rejected.has(s.version) && s.unprompted < itemPass));
  const replays = new Map<string, number>();
  for (const b of bakes) for (const id of b.replayIds) replays.set(id, (replays.get(id) ?? 0) + 1);
  const count = (i: Item) => replays.get(i.id) ?? 0;
  const rotation = held
    .filter((i) => !lost.includes(i))
    .sort((a, b) => count(a) - count(b) || a.updatedAt.localeCompare(b.updatedAt))
    .slice(0, n);
  return { replay: [...lost, ...rotation], atRisk: lost.length };
}

/**
 * The order pending items are baked in, bake.maxItems at a time: what people told the agent
 * (chat, `kiln knowledge remember`, instructions) first, in the order told; then news never
 * absorbed, newest first; then what a promoted bake lost (baked again), then the items the last
 * bake was rejected on, each in the order stored. Lost items were stored earlier, so they used to
 * come first: an agent behind on its news (the soak's newsroom, 98 pending at the end) spent its
 * bakes learning again what it had lost while the news, the updates among it, waited. News in the
 * order stored had an agent far behind bake last week's news before today's (the newest two of 10
 * rounds held 1 and 0 of their 12 facts, docs/default-model-eval.md); newest first, an agent that
 * cannot keep up knows today's news and bakes the older when it catches up, or lets it expire
 * (forgetNewsAfterDays).
 *
 * With `maxItems` (what one bake takes), told items take at most half of the first bake's places
 * while news waits, so a chat agent told many things still reads its feeds, and lost items at most
 * a quarter, so an agent that never catches up on its news still learns again what it lost (behind
 * all news, they waited for a lull that a busy feed never gives); each kind takes the places the
 * others leave.
 */
export function bakeOrder(waiting: readonly Item[], lastRejected: ReadonlySet<string>, maxItems = Infinity): Item[] {
  const wasAbsorbed = (i: Item) => i.history.some((h) => h.status === "absorbed");
  const rank = (i: Item) => (lastRejected.has(i.id) ? 3 : wasAbsorbed(i) ? 2 : i.kind === "feed" ? 1 : 0);
  const newestNewsFirst = (a: Item, b: Item) => (rank(a) === 1 && rank(b) === 1 ? newsTime(b) - newsTime(a) : 0);
  // (sort is stable: the order stored where neither rank nor news time tells them apart, as the
  // items of one feed poll without dates, which the feed lists newest first)
  const order = [...waiting].sort((a, b) => rank(a) - rank(b) || newestNewsFirst(a, b));
  const [told, news, lost] = [0, 1, 2].map((r) => order.filter((i) => rank(i) === r)) as [Item[], Item[], Item[]];
  if (!Number.isFinite(maxItems) || !news.length) return order;
  let toldPlaces = Math.min(told.length, Math.ceil(maxItems / 2));
  // (both rounded up, they left news nothing at 2, 3 or 5 places: news keeps one where there are two)
  let lostPlaces = Math.min(lost.length, Math.ceil(maxItems / 4), Math.max(0, maxItems - toldPlaces - (maxItems >= 2 ? 1 : 0)));
  const newsPlaces = Math.min(news.length, Math.max(0, maxItems - toldPlaces - lostPlaces));
  // the places news leaves: told items first, then lost ones
  let left = Math.max(0, maxItems - toldPlaces - lostPlaces - newsPlaces);
  const more = Math.min(told.length - toldPlaces, left);
  toldPlaces += more;
  left -= more;
  lostPlaces += Math.min(lost.length - lostPlaces, left);
  const first = [...told.slice(0, toldPlaces), ...news.slice(0, newsPlaces), ...lost.slice(0, lostPlaces)];
  const taken = new Set(first);
  return [...first, ...order.filter((i) => !taken.has(i))];
}

/** Trajectories per item a bake carries (new and replayed), where the agent file sets no count. */
export const TRAJECTORIES_PER_ITEM = 4;

/**
 * A bake's trajectories where the agent file sets none: TRAJECTORIES_PER_ITEM for each item it
 * carries, at least DEFAULT_BAKE.trajectories. A fixed count thins out as a bake carries more:
 * an agent file with no bake settings (64 trajectories over 20 new and 20 replayed items) had 3
 * bakes rejected in a row at absorption 0.33-0.50 in tools/eval_pace.ts, and 96 over 50 items a
 * third of its bakes; 3.2 per item kept absorption at 0.85-0.95 (docs/default-model-eval.md).
 * A rebuild after a retraction carries everything the agent still holds, so it grows most.
 */
export function sizedTrajectories(items: number): number {
  return Math.max(DEFAULT_BAKE.trajectories, TRAJECTORIES_PER_ITEM * items);
}

/**
 * Trajectories for a bake that replays items at risk on top of the load the agent file sized its
 * trajectories for (the new items and `sizedReplay` replayed): as many more as there are items
 * more, at most 4 times as many (a bake's time grows with them).
 */
export function scaledTrajectories(trajectories: number, fresh: number, replay: number, sizedReplay: number): number {
  const scaled = Math.ceil((trajectories * (fresh + replay)) / Math.max(1, fresh + sizedReplay));
  return Math.min(4 * trajectories, Math.max(trajectories, scaled));
}

/**
 * For a rejected bake: when the held items it checked without replaying them fell below the
 * retention bar on their own, the replay share is too small for the model, and the next bake's
 * replay of what was lost only holds until the one after; the agent file is what can change that.
 */
export function replayAdvice(retained: Item[], scores: Record<string, { unprompted: number }>, gate: { itemPass: number; minRetention: number }, replay: number, held: number): string | undefined {
  const lost = retained.filter((i) => (scores[i.id]?.unprompted ?? 1) < gate.itemPass).length;
  if (!retained.length || 1 - lost / retained.length >= gate.minRetention) return undefined;
  return (
    `lost ${lost} of the ${retained.length} held item(s) it checked and did not replay (replay ${replay} of ${held} held): ` +
    `the next bake replays them, but a larger replay (or fewer bake.maxItems) is what keeps the rest`
  );
}

/** What `verify` found: per item, its probes asked on the live weights with nothing in the prompt. */
export interface VerifyReport {
  /** the weights asked: a version id, or "base" (BASE_VERSION) */
  version: string;
  /**
   * Which weights answered, so the proof can be checked again: the base model (its folder and
   * the fingerprint adapters are bound to) and the live adapter's weights file with its sha256
   * (null on the base model). Asked with greedy decoding, the question alone in the prompt.
   */
  weights: { baseModel: string; baseFingerprint: string; adapter: { file: string; sha256: string } | null };
  checkedAt: string;
  /** items whose probes pass (gate.itemPass of them) */
  held: number;
  /**
   * The same probes asked of the base model, without the adapter (where the weights asked have
   * one and `baseline` was not turned off): an item the base model answers too is held, but its
   * answers are no proof that baking put it there.
   */
  baseline?: { held: number };
  items: { id: string; text: string; status: Item["status"]; held: boolean; score: number; probes: ProbeCheck[]; baseline?: { held: boolean; passed: number } }[];
}

export interface VerifyOptions {
  /** the weights to ask: a version id, or "base"; default the live weights */
  version?: string;
  /** also ask the base model the same probes (default true) */
  baseline?: boolean;
}

/** What an agent tells listeners about its bakes, as they happen. */
export interface AgentBakeEvents {
  start: [{ bakeId: string; trigger: string }];
  progress: [WorkerProgress];
  end: [BakeOutcome];
}

/** The trigger of a retraction's rebuild. */
const RETRACTION = "retraction";

/** The most scheduled polls a failing feed skips in a row. */
const MAX_SKIPPED_POLLS = 15;

/** When a cron schedule (read in `timezone`, else local time) fires for the count-th time from now, as node-cron reckons it (the task never starts). */
function fireAfter(schedule: string, count: number, timezone?: string): Date {
  const task = cron.createTask(schedule, () => {}, { timezone });
  try {
    return task.getNextRuns(count).at(-1)!;
  } finally {
    void task.destroy();
  }
}

/**
 * How long a scheduled bake lets the feed polls of its minute start first (a bake waits for polls
 * in flight). node-cron fires each task on its own timer, in no set order: in a 30-minute soak
 * (docs/soak.md) 10 of 15 bakes on the minute had that minute's news stored 12-75 ms after they
 * started, and three times a feed's correction landed on an item the bake was already training
 * on, so the version it promoted learned the corrected-away text.
 */
export const SCHEDULED_BAKE_DELAY_MS = 1000;

/**
 * Statuses a bake's gate must not overwrite: set while it ran by a retraction, a feed's
 * correction or expiry (a rejection is the gate's own call, so it is not here).
 */
const DECIDED_ELSEWHERE: ReadonlySet<ItemStatus> = new Set(["retracted", "superseded", "expired"]);

/** How long an answer to a retraction waits for the weights holding its items to leave service. */
export const OUT_OF_SERVICE_WAIT_MS = 20_000;

/** Ended retractions whose reserved rebuild id still answers (Agent.rebuildReserved). */
const RESERVED_KEPT = 16;

/**
 * How long the `attempts`th try again of a failed rebuild waits: `ms`, doubled each time, at most
 * the longest a timer waits (Node runs a longer one after 1 ms).
 */
export function retryDelay(ms: number, attempts: number): number {
  return Math.min(ms * 2 ** (attempts - 1), 2 ** 31 - 1);
}

/**
 * Starts a retraction and waits (at most `waitMs`: seconds, normally) until the weights holding
 * its items have left service, so what the asker is told next ("forgotten", HTTP 202) holds for
 * every request after it. The rebuild goes on in `work`.
 */
export async function retractedOutOfService(
  agent: Agent,
  ids: string[],
  reason: string,
  waitMs = OUT_OF_SERVICE_WAIT_MS,
): Promise<{ work: Promise<BakeOutcome>; outOfService: boolean; rebuildId: string | null }> {
  let outOfService = false;
  let rebuildId: string | null = null;
  let left!: () => void;
  const leaving = new Promise<void>((resolve) => (left = resolve));
  const work = agent.retract(ids, reason, (rebuild) => {
    outOfService = true;
    rebuildId = rebuild ?? null;
    left();
  });
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<void>((resolve) => (timer = setTimeout(resolve, waitMs)));
  await Promise.race([leaving, work.then(noop, noop), timeout]);
  clearTimeout(timer);
  return { work, outOfService, rebuildId };
}

const noop = () => {};


export class Agent {
  readonly live: LiveModel;
  /** "start" when a bake's record is written, every "progress" event, "end" with its outcome */
  readonly bakeEvents = new EventEmitter<AgentBakeEvents>();
  private servingProblem: string | null = null;
  private tasks: ScheduledTask[] = [];
  private baking: Promise<BakeOutcome> | null = null;
  /** scheduled feed polls in flight: a bake waits for them, so news of the same minute is in it */
  private readonly polls = new Set<Promise<void>>();
  /** the last poll of each feed, scheduled or manual: the next one starts from the state it wrote */
  private readonly feedPolls = new Map<string, Promise<unknown>>();
  /** the last switch of the live version (rollbacks and retraction fallbacks run one at a time) */
  private switching: Promise<void> = Promise.resolve();
  private cancelBake: ((why: string) => void) | null = null;
  /** gives up the turn of a bake still waiting for it (see bake) */
  private leaveTurn: ((why: string) => void) | null = null;
  /** why the running bake was asked to stop (one still waiting for its worker stops when it starts) */
  private stopAsked: string | null = null;
  /** what the running bake was asked for: a retraction that stopped it runs it again without the items */
  private bakeAsked: { trigger: string; opts: BakeOptions } | null = null;
  /**
   * The bake a retraction (`by`: its ids, as retractionsAsked holds them) stopped, for that one to
   * run again: another retraction, asked for beside it, that the bake could not hold, must not.
   * Dropped when the bake was not stopped after all (it ended on its own: promoted, rejected, skipped).
   */
  private stoppedByRetraction: { by: string[]; bake: { trigger: string; opts: BakeOptions } } | null = null;
  progress: WorkerProgress | null = null;
  /** retractions, one at a time: each marks its items and rebuilds before the next reads them */
  private retractions: Promise<unknown> = Promise.resolve();
  /**
   * Retractions asked for and not done: until their rebuilds have run, no other bake starts. One
   * started in between (the schedule firing) would take the rebuild's place: a rolling bake from
   * the weights holding the retracted items.
   */
  private retracting = 0;
  /** the items of the retractions asked for and not done: a bake that could end holding one stops */
  private readonly retractionsAsked: string[][] = [];
  /**
   * What a retraction's rebuild that was stopped (by a later retraction) carried: the next
   * retraction rebuilds, carrying it too, even where its own items need no rebuild (never baked
   * in), or what the weights out of service held would wait behind all news.
   */
  private stoppedRebuild: { held: string[]; retracted: string[] } | null = null;
  /**
   * The owed rebuild (stoppedRebuild) once a retraction failed with none in line to carry it on:
   * it is tried again by itself (retryRebuild), a bounded number of times, or a removed item's
   * news would wait behind all news, and the retraction be done only when someone retracts again.
   */
  private rebuildRetry: (Omit<OwedRebuild, "liveHolds"> & { timer: NodeJS.Timeout | null }) | null = null;
  /**
   * The outcome of each retraction whose rebuild's bake id is reserved (rebuildReserved), while it
   * runs and for the last RESERVED_KEPT after they ended: a rebuild that never started under its id
   * (nothing left to bake, the retraction failed first) has no bake record for a client that
   * follows the id after the end to find.
   */
  private readonly reservedRebuilds = new Map<string, { outcome: Promise<BakeOutcome>; ended: boolean }>();

  private stopping = false;

  private constructor(
    readonly config: AgentConfig,
    readonly model: LoadedModel,
    readonly ledger: Ledger,
    private readonly events: AgentEvents,
    private readonly bakeTurn: BakeTurn,
  ) {
    this.live = new LiveModel(model);
  }

  /**
   * Opens the agent's ledger, repairs what a crash left, and goes live on the recorded version.
   * `readOnly` takes no ledger lock and changes nothing on disk (no repair, no orphan sweep, no
   * status sync): for asking a served agent's weights from beside its server (`kiln knowledge
   * verify`); anything that would write fails naming the read-only ledger.
   */
  static async open(config: AgentConfig, model: LoadedModel, events: AgentEvents = {}, bakeTurn: BakeTurn = (_, run) => run(), opts: { readOnly?: boolean } = {}): Promise<Agent> {
    if (opts.readOnly) {
      // an agent never opened for writing has no ledger yet: it reads as empty, the base model live
      const agent = new Agent(config, model, await Ledger.open(path.join(config.homeDir, "ledger.json"), { readOnly: true }), events, bakeTurn);
      if (agent.goLiveOnRecord()) agent.log(agent.servingProblem!);
      return agent;
    }
    makeDirs(config.homeDir);
    const ledgerFile = path.join(config.homeDir, "ledger.json");
    const versions = readdirSync(config.homeDir).filter((f) => VERSION_DIR.test(f));
    if (!existsSync(ledgerFile) && versions.length) {
      // A new ledger would disown these checkpoints: the record of what they hold is gone.
      throw new Error(
        `${ledgerFile} is missing but ${config.homeDir} holds checkpoints (${versions.join(", ")}): restore the ledger, ` +
          `or move the checkpoints away to start this agent from the base model`,
      );
    }
    const ledger = await Ledger.open(ledgerFile);
    // refused before anything is written (syncFeeds would give the new address a record of its own)
    const moved = movedFeedProblem(config.feeds, ledger.data.feeds, ledgerFile);
    if (moved?.edited) {
      await ledger.close();
      throw new AgentConfigError(config.file ?? `agent ${config.name}`, moved.problem);
    }
    const agent = new Agent(config, model, ledger, events, bakeTurn);
    if (moved) agent.log(`warning: ${moved.problem}`);
    const repaired = await ledger.recover();
    if (repaired.bakes || repaired.items) agent.log(`recovered from an interrupted bake: ${repaired.bakes} bake(s) marked failed, ${repaired.items} item(s) back to pending`);
    agent.removeOrphanCheckpoints();
    // A retraction marks its items first and then rebuilds: a process stopped during the rebuild
    // left them live in the weights, which the next (rolling) bakes would carry on.
    if (ledger.data.live && ledger.data.versions.some((v) => v.id === ledger.data.live)) {
      try {
        const moved = await agent.leaveRetracted("a retraction's rebuild did not finish");
        if (moved) agent.log(`${moved.from} holds retracted item(s) ${moved.retracted.join(", ")} (a retraction's rebuild did not finish): ${moved.to ?? "the base model"} is live instead, and what it does not hold is baked again`);
      } catch (err) {
        // (a clean version that cannot load gives way to the base model there) a ledger that cannot be
        // written is reported; the agent still opens (rollback or retract again)
        agent.log(`${ledger.data.live} holds retracted item(s), and going live without them failed: ${(err as Error).message}`);
      }
    }
    if (ledger.data.live === null || ledger.data.versions.some((v) => v.id === ledger.data.live)) await agent.syncStatusesToLive("start");
    const loadError = agent.goLiveOnRecord();
    // A version made on another base model is not damaged: the agent file names another model (a
    // mistake, or a move the user has not finished). Going live elsewhere would be recorded, every
    // item it held set to be baked again, and not undone by giving model: back: nothing is changed.
    if (loadError instanceof BaseModelMismatch) agent.log(agent.servingProblem!);
    else if (loadError) await agent.replaceUnloadableLive(loadError.message);
    const urls = new Map(ledger.data.feeds.map((f) => [f.id, f.url]));
    const { dropped, renamed } = await ledger.syncFeeds(config.feeds);
    for (const r of renamed) agent.log(`feed ${r.from} is now ${r.to} (the same URL): its poll state and its ${r.items} item(s) follow the new id`);
    if (dropped.length) {
      const kept = ledger.items({ kind: "feed" }).filter((i) => dropped.includes(i.source.feedId ?? "") && i.source.feedUrl === urls.get(i.source.feedId!)).length;
      agent.log(`feed(s) ${dropped.join(", ")} no longer in the agent file: their poll state is dropped; the ${kept} item(s) they brought in stay`);
    }
    return agent;
  }

  get name(): string {
    return this.config.name;
  }

  /** Loads the live version the ledger records; why it could not, or null. */
  private goLiveOnRecord(): Error | null {
    const live = this.ledger.data.live;
    if (!live) return null;
    try {
      this.live.swapTo(live, this.ledger.version(live).dir);
      return null;
    } catch (err) {
      // The agent serves the base model rather than not at all (read-only, nothing else is done).
      this.servingProblem =
        err instanceof BaseModelMismatch
          ? `live version ${live} was baked on another base model than the agent file's model (${this.model.dir}, fingerprint ${err.fingerprint}; the version's: ${err.trainedOn}): ` +
            `serving the base model, and bakes wait. Give model: back its earlier model to serve ${live} again, or roll back to base to move the agent to this model (what ${live} held is then baked again on it)`
          : `live version ${live} could not be loaded (${(err as Error).message}); serving the base model (bakes, which roll on from it, wait: roll back to a kept version or to base)`;
      return err as Error;
    }
  }

  /**
   * A recorded live version whose checkpoint cannot load (a damaged file, a disk that lost it):
   * the newest kept version that loads and holds no retracted item goes live, else the base model,
   * so the agent goes on learning (rolling bakes from the damaged weights failed schedule after
   * schedule until a person rolled back). The damaged version stays where it is, named in the log,
   * to look at or roll forward to once it loads; what the version now live does not hold is baked
   * again. Where even the switch cannot be recorded, the base model serves and /healthz says why.
   */
  private async replaceUnloadableLive(loadError: string): Promise<void> {
    const broken = this.ledger.data.live!;
    const problem = this.servingProblem;
    const why = `live version ${broken} could not be loaded`;
    const candidates = [...this.ledger.data.versions].reverse().filter((v) => v.id !== broken && v.status === "kept" && existsSync(v.dir) && !this.retractedIn(v.id).length);
    const failed: string[] = [];
    for (const v of [...candidates.map((c) => c.id), null]) {
      try {
        await this.goLive(v, why);
        const also = failed.length ? ` (${failed.join("; ")})` : "";
        const brokenDir = this.ledger.version(broken).dir;
        // (a folder removed by hand was said to "stay in" it)
        const where = existsSync(brokenDir) ? `stays in ${brokenDir}` : `was missing from ${brokenDir}`;
        this.log(`${why} (${loadError}): ${v ?? "the base model"} is live instead${also}; ${broken} ${where}, and what ${v ?? "the base model"} does not hold is baked again`);
        return;
      } catch (err) {
        if (v === null) {
          this.servingProblem = problem; // (/healthz names it, rolling bakes wait)
          this.log(`${problem}; going live on it could not be recorded: ${(err as Error).message}`);
          return;
        }
        failed.push(`${v} could not be loaded either: ${(err as Error).message}`);
      }
    }
  }

  /**
   * Why the weights serving are not the live version the ledger records (its checkpoint failed to
   * load on start), until another version goes live; null when they are. /healthz shows it: the
   * log alone left a monitor seeing ok and the base model's answers.
   */
  get liveProblem(): string | null {
    return this.servingProblem;
  }

  private log(message: string): void {
    this.events.onLog?.(this.name, message);
  }

  /**
   * What an interrupted bake leaves: half-written temp folders are removed; a whole checkpoint
   * no version record owns (the worker finished, the ledger never recorded it) is moved into
   * orphaned/, never deleted, so its version name is free again and nothing is lost.
   */
  private removeOrphanCheckpoints(): void {
    const known = new Set(this.ledger.data.versions.map((v) => path.basename(v.dir)));
    for (const f of readdirSync(this.config.homeDir)) {
      const where = path.join(this.config.homeDir, f);
      if (HALF_WRITTEN_VERSION.test(f)) {
        rmSync(where, { recursive: true, force: true });
        this.log(`removed ${f}: a half-written checkpoint (an interrupted bake)`);
      } else if (VERSION_DIR.test(f) && !known.has(f)) {
        const aside = path.join(this.config.homeDir, "orphaned", `${f}-${new Date().toISOString().replace(/[:.]/g, "-")}`);
        makeDirs(path.dirname(aside));
        renameSync(where, aside);
        this.log(`moved ${f} to ${path.relative(this.config.homeDir, aside)}: a checkpoint no version record owns (an interrupted bake)`);
      }
    }
  }

  // --- schedules ---

  start(): void {
    // A retraction's rebuild the process stopped during, or that failed: its weights left service
    // when the agent opened, and what they held (pending now) would wait behind all news; it runs
    // again first.
    const cut = this.unfinishedRebuild();
    if (cut) {
      this.log(`a retraction's rebuild did not finish: baking again the ${cut.held.length} item(s) it was rebuilding`);
      // a retraction that stops it carries on what it rebuilds, as one that stops another's rebuild does
      this.stoppedRebuild = cut;
      void this.bake(RETRACTION, { consolidate: true, force: true, rebuild: cut })
        .then((outcome) => {
          if (outcome.status !== "failed" && this.stoppedRebuild === cut) this.stoppedRebuild = null;
          this.afterRebuild(outcome.status === "failed" ? (outcome.reasons[0] ?? "failed") : null);
        })
        .catch((e: Error) => this.log(`the rebuild failed: ${e.message}`));
    }
    const timezone = this.config.timezone; // the agent file's, else the server's local time zone
    for (const f of this.config.feeds) {
      this.tasks.push(cron.schedule(f.schedule, (ctx) => this.scheduledPoll(f.id, ctx.date), { name: `${this.name}:feed:${f.id}`, noOverlap: true, timezone }));
    }
    if (this.config.bake.schedule) {
      this.tasks.push(
        cron.schedule(this.config.bake.schedule, () => void this.scheduledBake().catch((e) => this.log(`scheduled bake failed: ${e.message}`)), {
          name: `${this.name}:bake`,
          noOverlap: true,
          timezone,
        }),
      );
    }
  }

  /**
   * What the last bake rebuilt, when it was a retraction's rebuild that did not finish: the process
   * stopped during it, or it failed (its tries again, if any, went with the process that made them).
   */
  private unfinishedRebuild(): BakeOptions["rebuild"] | null {
    const last = this.ledger.data.bakes.at(-1);
    if (last?.trigger !== RETRACTION || last.status !== "failed") return null;
    return { held: last.itemIds, retracted: [] };
  }

  /** A bake the schedule starts, once the polls of the same minute are in flight (it waits for them). */
  private async scheduledBake(): Promise<BakeOutcome> {
    await new Promise((resolve) => setTimeout(resolve, SCHEDULED_BAKE_DELAY_MS));
    return this.bake("schedule");
  }

  async stop(): Promise<void> {
    this.stopping = true; // a bake still waiting for its turn does not start
    if (this.rebuildRetry?.timer) clearTimeout(this.rebuildRetry.timer);
    for (const t of this.tasks) await t.destroy();
    this.tasks = [];
    await Promise.allSettled([...this.polls]); // a poll in flight writes the ledger: before it closes
    this.stopBake("the agent is stopping", null);
    await this.baking?.catch(() => {});
    // a retraction asked for (chat's "forget ...", then /quit) is marked before the ledger closes;
    // its rebuild, which no longer starts, is left to the next start (kiln serve runs it again)
    await this.retractions;
    await this.ledger.close();
    this.live.dispose();
  }

  // --- ingestion ---

  /**
   * A poll the schedule starts, due at `at`. Nothing may escape it (a rejection here would end the
   * process: a full disk while the ledger is written, say), and a failing feed is asked less
   * often: after n failures in a row, the next 2^n - 1 scheduled polls (at most 15) are skipped.
   * pollFeedNow records until when (FeedRecord.backoffUntil), so a restart does not end the backoff.
   */
  private async scheduledPoll(feedId: string, at: Date = new Date()): Promise<void> {
    const source = this.config.feeds.find((f) => f.id === feedId)!;
    const record = this.ledger.feed(feedId);
    // A feed the agent file now points elsewhere is asked at once: the failures were the old URL's.
    if (record?.backoffUntil && record.consecutiveErrors > 0 && record.url === source.url) {
      // Never past the furthest a backoff reaches on the schedule the agent file has now (it may
      // poll more often than when the time was set).
      const until = Math.min(Date.parse(record.backoffUntil), fireAfter(source.schedule, MAX_SKIPPED_POLLS + 1, this.config.timezone).getTime());
      if (at.getTime() < until) return;
    }
    // The server asked for quiet (Retry-After): the poll that got the answer logged it once; the
    // schedule waits without asking or logging again. A manual poll still says why it did not ask.
    if (record?.retryAfter && record.url === source.url && Date.parse(record.retryAfter) > at.getTime()) return;
    const poll = this.pollFeed(feedId).then(
      () => {},
      (err: Error) => this.log(`feed ${feedId}: the poll failed: ${err.message}`),
    );
    this.polls.add(poll);
    await poll;
    this.polls.delete(poll);
  }

  /**
   * Polls one feed now. Polls of one feed run one at a time: two at once (the schedule's and the
   * admin API's) would each start from the same state, and the one written last would undo what
   * the other recorded (seen items, a revision taken, validators).
   */
  async pollFeed(feedId: string): Promise<{ added: number; error?: string }> {
    if (!this.config.feeds.some((f) => f.id === feedId)) throw new Error(`agent ${this.name} has no feed ${feedId}`);
    const run = (this.feedPolls.get(feedId) ?? Promise.resolve()).catch(() => {}).then(() => this.pollFeedNow(feedId));
    this.feedPolls.set(feedId, run);
    try {
      return await run;
    } finally {
      if (this.feedPolls.get(feedId) === run) this.feedPolls.delete(feedId);
    }
  }

  private async pollFeedNow(feedId: string): Promise<{ added: number; error?: string }> {
    const source = this.config.feeds.find((f) => f.id === feedId)!;
    const { id: _id, url: recordedUrl, itemsAdded: _n, backoffUntil: lastBackoff, ...state } = this.ledger.feed(feedId)!;
    if (recordedUrl !== source.url) {
      // The agent file now points this feed elsewhere: validators, a Retry-After and the failures
      // in a row belong to the old URL, and a 304 from the new one would hide a feed never read.
      // Seen keys stay (the same feed moved, most likely), so nothing is ingested twice.
      state.consecutiveErrors = 0;
      delete state.lastError;
      delete state.etag;
      delete state.lastModified;
      delete state.retryAfter;
      delete state.movedTo;
      delete state.movedAt;
    }
    const result = await pollFeed(
      { id: source.id, url: source.url, maxItems: source.maxItems, timeoutMs: source.timeoutMs, maxAgeDays: source.maxAgeDays, maxRevisionsPerDay: source.maxRevisionsPerDay },
      state,
    );
    // A corrected item replaces what the feed said before under its key (guid, link or title): the old text is
    // superseded (never baked if it was pending; no longer replayed if it was absorbed), and the
    // new text waits for the next bake.
    const earlier = (e: FeedEntry) =>
      e.revises
        ? this.ledger
            .items({ kind: "feed", status: ["pending", "baking", "absorbed"] })
            .filter((i) => isFeedItem(i, feedId) && matchesFeedKey(i, e))
            .map((i) => i.id)
        : [];
    // A failed request starts a backoff (see scheduledPoll) counted from now, on the feed's schedule;
    // a poll that asked nothing (the server's Retry-After) leaves the one running; a good one ends it.
    const failures = result.state.consecutiveErrors;
    const skipped = failures > state.consecutiveErrors ? Math.min(2 ** failures - 1, MAX_SKIPPED_POLLS) : 0;
    const backoffUntil = skipped ? fireAfter(source.schedule, skipped + 1, this.config.timezone).toISOString() : failures && recordedUrl === source.url ? lastBackoff : undefined;
    // the entries and the feed's new state in one write
    const added = (
      await this.ledger.addItems(
        result.entries.map((e) => ({ kind: "feed" as const, text: e.text, source: { feedId, feedKey: e.key, feedHash: e.contentHash, link: e.link, guid: e.guid, publishedAt: e.publishedAt }, supersedes: earlier(e) })),
        (d, n) => {
          // Replace the state whole: a good poll drops lastError rather than leaving the old one.
          const at = d.feeds.findIndex((x) => x.id === feedId);
          d.feeds[at] = { id: feedId, url: source.url, itemsAdded: d.feeds[at]!.itemsAdded + n, ...result.state, ...(backoffUntil ? { backoffUntil } : {}) };
        },
      )
    ).filter((r) => r.added).length;
    if (result.error) this.log(`feed ${feedId}: ${result.error}`);
    for (const note of result.notes ?? []) this.log(`feed ${feedId}: ${note}`);
    if (skipped) this.log(`feed ${feedId}: ${failures} failed poll(s) in a row; skipping the next ${skipped} scheduled poll(s), until ${backoffUntil}`);
    if (result.state.movedTo && result.state.movedTo !== state.movedTo) {
      this.log(`feed ${feedId} has moved permanently (301/308) to ${result.state.movedTo}: put that url in the agent file (until then it is polled there, and the configured url is asked again once a day and whenever the new one fails)`);
    }
    return { added, ...(result.error ? { error: result.error } : {}) };
  }

  async pollAllFeeds(): Promise<Record<string, { added: number; error?: string }>> {
    const out: Record<string, { added: number; error?: string }> = {};
    for (const f of this.config.feeds) out[f.id] = await this.pollFeed(f.id);
    return out;
  }

  async remember(text: string, kind: ItemKind = "manual", source: Item["source"] = {}): Promise<{ item: Item; added: boolean }> {
    const problem = itemTextProblem(text);
    if (problem) throw new Error(problem);
    return this.ledger.addItem({ kind, text, source });
  }

  // --- baking ---

  get isBaking(): boolean {
    return this.baking !== null;
  }

  /** A retraction asked for has not finished: one asked for now waits for it. */
  get isRetracting(): boolean {
    return this.retracting > 0;
  }

  /** A retraction's rebuild that failed and is owed (tried again by itself), or null. */
  get owedRebuild(): OwedRebuild | null {
    if (!this.rebuildRetry) return null;
    const { timer: _, ...owed } = this.rebuildRetry;
    return { ...owed, liveHolds: this.retractedIn(this.ledger.data.live) };
  }

  /**
   * The outcome of the retraction whose rebuild reserved `bakeId` (retract's onOutOfService is
   * told it), while that retraction runs: its rebuild may not have started, waiting for a bake.
   */
  rebuildReserved(bakeId: string): Promise<BakeOutcome> | null {
    return this.reservedRebuilds.get(bakeId)?.outcome ?? null;
  }

  /**
   * Bakes pending items (never two bakes at once: a second call joins the running one).
   * `consolidate` starts from the base model over every active item (after a retraction).
   */
  bake(trigger: string, opts: BakeOptions = {}): Promise<BakeOutcome> {
    if (this.baking) return this.baking;
    if (this.retracting > 0 && trigger !== RETRACTION && !opts.afterRetraction) return Promise.resolve({ status: "skipped", reasons: ["a retraction is starting its rebuild; bake after it"] });
    this.bakeAsked = { trigger, opts };
    // Asked to stop while it waits for its turn (another agent's bake: up to an hour), it gives the
    // turn up at once: a retraction waits for it to end before the weights leave service.
    let turn: "waiting" | "taken" | "given up" = "waiting";
    let giveUp!: (outcome: BakeOutcome) => void;
    const givenUp = new Promise<BakeOutcome>((resolve) => (giveUp = resolve));
    this.leaveTurn = (why) => {
      if (turn !== "waiting") return;
      turn = "given up";
      giveUp({ status: "failed", reasons: [`bake cancelled: ${why}`] });
    };
    const run = this.bakeTurn(this.name, () => {
      if (turn === "given up") return Promise.resolve<BakeOutcome>({ status: "skipped", reasons: ["its turn was given up"] });
      turn = "taken";
      return this.stopping ? Promise.resolve<BakeOutcome>({ status: "skipped", reasons: ["the agent is stopping"] }) : this.runBake(trigger, opts);
    });
    this.baking = Promise.race([run, givenUp])
      .catch((err: Error): BakeOutcome => ({ status: "failed", reasons: [err.message] }))
      .then((outcome) => {
        if (outcome.status !== "failed" && this.stoppedByRetraction?.bake === this.bakeAsked) this.stoppedByRetraction = null;
        this.baking = null;
        this.cancelBake = null;
        this.leaveTurn = null;
        this.stopAsked = null;
        this.bakeAsked = null;
        this.progress = null;
        this.bakeEvents.emit("end", outcome);
        return outcome;
      });
    return this.baking;
  }

  /**
   * Proof on demand: asks the probes of the absorbed items (or of `ids`) on the live weights now,
   * with nothing in the prompt, and says which the weights still hold (gate.itemPass of their
   * probes answered as when they were written). Reads the ledger; writes nothing.
   */
  async verify(ids: string[] = [], opts: VerifyOptions = {}): Promise<VerifyReport> {
    // one entry per item: an id given twice (or in full and by its end) would be counted twice in `held`
    const items = ids.length ? [...new Map(ids.map((id) => this.ledger.item(id)).map((i) => [i.id, i])).values()] : this.ledger.items({ status: "absorbed" });
    const weights = this.weightsToAsk(opts.version);
    try {
      const ask = (adapter: LoraAdapter | undefined) => checkProbes(this.model, items.map((i) => this.toProbeItem(i)), { adapter, personaSuffix: this.config.persona?.suffix });
      const tally = (checks: ProbeCheck[], i: Item) => {
        const probes = checks.filter((c) => c.itemId === i.id);
        const passed = probes.filter((c) => c.passed).length;
        return { probes, passed, held: probes.length > 0 && passed / probes.length >= this.config.gate.itemPass };
      };
      const checks = await ask(weights.adapter);
      const base = weights.adapter && opts.baseline !== false ? await ask(undefined) : null;
      const report = items.map((i) => {
        const { probes, passed, held } = tally(checks, i);
        const baseline = base ? tally(base, i) : null;
        return { id: i.id, text: i.text, status: i.status, held, score: probes.length ? passed / probes.length : 0, probes, ...(baseline ? { baseline: { held: baseline.held, passed: baseline.passed } } : {}) };
      });
      const file = weights.version ? path.join(this.ledger.version(weights.version).dir, ADAPTER_WEIGHTS) : null;
      const adapter = file ? { file, sha256: createHash("sha256").update(readFileSync(file)).digest("hex") } : null;
      return {
        version: versionName(weights.version),
        weights: { baseModel: this.model.dir, baseFingerprint: this.model.fingerprint, adapter },
        checkedAt: new Date().toISOString(),
        held: report.filter((r) => r.held).length,
        ...(base ? { baseline: { held: report.filter((r) => r.baseline?.held).length } } : {}),
        items: report,
      };
    } finally {
      weights.release();
    }
  }

  /** The live weights (leased: a swap meanwhile does not free them), a stored version's, or the base model. */
  private weightsToAsk(version: string | undefined): { version: string | null; adapter: LoraAdapter | undefined; release: () => void } {
    if (version === undefined || version === "live") {
      const lease = this.live.acquire();
      return { version: lease.version, adapter: lease.adapter, release: () => lease.release() };
    }
    if (version === BASE_VERSION) return { version: null, adapter: undefined, release: () => {} };
    const v = this.ledger.version(version);
    if (!existsSync(v.dir)) throw new Error(`version ${v.id} (${v.status}) has no checkpoint left in ${v.dir}: it was pruned`);
    const adapter = loadAdapter(v.dir, this.model.config, this.model.fingerprint);
    return { version: v.id, adapter, release: () => adapter.dispose() };
  }

  private toProbeItem(i: Item): ProbeItem {
    return { id: i.id, text: i.text, ...(i.probes?.length ? { probes: i.probes } : {}) };
  }

  private async runBake(trigger: string, opts: BakeOptions): Promise<BakeOutcome> {
    const cfg = this.config;
    const ledger = this.ledger;
    if (this.polls.size) await Promise.allSettled([...this.polls]); // (no await otherwise: the bake's record is written at once)
    // Changes the statuses in memory at once, the write following: awaiting it here would write
    // the bake's record a tick late, after a caller looked for it (the admin API's 202).
    void this.expireOldNews().catch((err: Error) => this.log(`expiring old news failed: ${err.message}`));
    const liveVersion = ledger.data.live;
    const liveItems = this.heldItems();
    const last = ledger.data.bakes.at(-1);
    // A rejected consolidation (from the base, over everything) says nothing of a rolling bake of
    // its items: counted, the schedule left what a retraction's fallback version does not hold
    // pending until news came.
    const lastRejected = new Set(last?.status === "rejected" && !last.consolidate ? last.itemIds : []);
    const consolidate = !!opts.consolidate;
    // What the weights a retraction took out of service held, besides what the version serving now holds
    const carried = new Set(consolidate ? (opts.rebuild?.held ?? []) : []);
    const waiting = ledger.items({ status: "pending" });
    const pending = bakeOrder(waiting.filter((i) => !carried.has(i.id)), lastRejected, cfg.bake.maxItems).slice(0, cfg.bake.maxItems);
    const absorbed = ledger.items({ status: "absorbed" });
    let fresh: Item[];
    let replay: Item[];
    let settings = cfg.bake.settings;
    let atRisk = 0;
    if (consolidate) {
      // From the base model: everything still true is new again.
      fresh = [...absorbed, ...waiting.filter((i) => carried.has(i.id)), ...pending];
      replay = [];
    } else {
      // a rolling bake starts from the live weights: from ones that cannot load it fails, schedule after schedule
      if (this.servingProblem) return { status: "skipped", reasons: [this.servingProblem] };
      if (pending.length < cfg.bake.minPending && !opts.force) return { status: "skipped", reasons: [`${pending.length} pending item(s), fewer than bake.minPending ${cfg.bake.minPending}`] };
      if (trigger === "schedule" && pending.length && pending.every((i) => lastRejected.has(i.id))) {
        // baking the same items again would be rejected again: wait for news, or a bake asked for by hand
        return { status: "skipped", reasons: [`the last bake of these ${pending.length} item(s) was rejected (${(last!.reasons ?? []).join("; ")}); the schedule waits for new items (kiln learn bakes them anyway)`] };
      }
      fresh = pending;
      const chosen = chooseReplay(absorbed.filter((i) => liveItems.has(i.id)), cfg.replay, ledger.data.bakes, cfg.gate.itemPass);
      replay = chosen.replay;
      atRisk = chosen.atRisk;
      if (atRisk && settings.trajectories !== undefined) {
        // They come on top of the load the agent file sized its trajectories for: without more
        // replies each item got fewer, and absorption fell (the soak's newsroom, its 30 held
        // items all replayed beside 20 new on 96 trajectories: retention 0.80 from 0.45, but
        // absorption 0.42 from 0.93). So the trajectories grow with the items. (Left unset,
        // they are sized per item below.)
        settings = { ...settings, trajectories: scaledTrajectories(settings.trajectories, fresh.length, replay.length, Math.min(cfg.replay, replay.length)) };
      }
    }
    if (!fresh.length && !cfg.persona) {
      if (consolidate) {
        // nothing is left to rebuild from: the base model is what holds none of the retracted items
        // (a retraction put it live already, unless its weights failed to come out of service)
        if (liveVersion) await this.goLive(null, "nothing left to bake");
        return { status: "skipped", reasons: ["nothing left to bake: the base model is live"] };
      }
      return { status: "skipped", reasons: ["nothing to bake"] };
    }
    const wanted = fresh;
    ({ fresh, replay } = this.fitToContext(fresh, replay));
    if (settings.trajectories === undefined) settings = { ...settings, trajectories: sizedTrajectories(fresh.length + replay.length) };
    if (atRisk) this.log(`replaying ${atRisk} item(s) that recent rejected bakes lost, besides ${replay.length - atRisk} in turn (${settings.trajectories} trajectories)`);
    // What does not fit this consolidation is learned again by the next bakes, once its version is
    // promoted: until then the live weights hold it (after a retraction, the clean version serving
    // during the rebuild), and a rebuild not promoted leaves them serving.
    const unfit = consolidate ? wanted.filter((i) => !fresh.includes(i) && i.status === "absorbed").map((i) => i.id) : [];
    const lastChecked = (i: Item) => i.scores.at(-1)?.version ?? "";
    const retained = consolidate
      ? []
      : absorbed
          .filter((i) => liveItems.has(i.id) && !replay.includes(i))
          .sort((a, b) => lastChecked(a).localeCompare(lastChecked(b)))
          .slice(0, cfg.retentionChecks);
    // (the rebuild checks it does not know them; those the weights out of service held count too)
    const retracted = consolidate ? ledger.items({ status: "retracted" }).filter((i) => liveItems.has(i.id) || opts.rebuild?.retracted.includes(i.id)) : [];
    // news that updates what the agent knows: pairs of items about the same names, asked in the worker
    const held = absorbed.filter((i) => liveItems.has(i.id));
    const pairs = cfg.bake.checkUpdates ? updatePairs(fresh, consolidate ? [] : held, ledger.data.items) : [];
    const inJob = new Set([...fresh, ...replay, ...retained].map((i) => i.id));
    const paired = pairedHeldItems(pairs, held, inJob);

    const bakeId = opts.bakeId ?? ledger.newBakeId();
    const version = ledger.nextVersionId();
    const outDir = path.join(cfg.homeDir, version);
    const parentDir = !consolidate && liveVersion ? ledger.version(liveVersion).dir : undefined;
    // The bake's record and its items' "baking" in one change: a feed poll that lands while the
    // record is written (a correction superseding one of these items) must not be undone by a
    // later, separate status write.
    await ledger.update((d) => {
      if (!consolidate) {
        const taken = new Set(markBaking(d, fresh.map((i) => i.id)));
        fresh = fresh.filter((i) => taken.has(i.id)); // (all of them: nothing was awaited since they were read)
      }
      d.bakes.push({ id: bakeId, startedAt: new Date().toISOString(), status: "running", trigger, parent: consolidate ? null : liveVersion, ...(consolidate ? { consolidate: true as const } : {}), itemIds: fresh.map((i) => i.id), replayIds: replay.map((i) => i.id) });
    });
    this.bakeEvents.emit("start", { bakeId, trigger });
    // A rebuild bakes what the live weights held again beside what is pending: "new" would be wrong.
    const before = consolidate ? fresh.filter((i) => i.status === "absorbed" || carried.has(i.id)).length : 0;
    this.log(
      consolidate
        ? `bake ${bakeId} -> ${version}: rebuilt from the base model, ${fresh.length} item(s) (${before} baked before, ${fresh.length - before} new)`
        : `bake ${bakeId} -> ${version}: ${fresh.length} new item(s), ${replay.length} replayed`,
    );

    let result: CycleResult;
    try {
      const running = startCycle(
        {
          modelDir: this.model.dir,
          outDir,
          liveAdapterDir: parentDir,
          fromBase: consolidate,
          persona: cfg.persona?.text,
          personaSuffix: cfg.persona?.suffix,
          newItems: fresh.map((i) => this.toProbeItem(i)),
          replayItems: replay.map((i) => this.toProbeItem(i)),
          retainedItems: retained.map((i) => this.toProbeItem(i)),
          retractedItems: retracted.map((i) => this.toProbeItem(i)),
          pairedItems: paired.map((i) => this.toProbeItem(i)),
          updatePairs: pairs,
          teacher: cfg.bake.teacher,
          openQuestions: cfg.bake.openQuestions,
          probesPerItem: cfg.bake.probesPerItem,
          checkProbes: cfg.bake.checkProbes,
          chunkItems: cfg.bake.chunkItems,
          settings: settings as never,
        },
        (p) => {
          this.progress = p;
          this.events.onBakeProgress?.(this.name, p);
          this.bakeEvents.emit("progress", p);
        },
      );
      this.cancelBake = (why) => running.cancel(why);
      // asked to stop before its worker started, or a retraction asked for meanwhile names an item it bakes
      const by = this.stopAsked === null ? this.retractionsAsked.find((ids) => this.bakeCouldHold(ids)) : undefined;
      if (this.stopAsked !== null || by) this.stopBake(this.stopAsked ?? "retraction asked for while it started", by ?? null);
      result = await running.promise;
    } catch (err) {
      const message = (err as Error).message;
      await ledger.update((d) => Object.assign(d.bakes.find((b) => b.id === bakeId)!, { status: "failed", finishedAt: new Date().toISOString(), error: message }));
      // only what is still baking: an item its feed corrected meanwhile stays superseded
      const waiting = fresh.filter((i) => ledger.item(i.id).status === "baking");
      if (!consolidate) await ledger.setItemStatus(waiting.map((i) => i.id), "pending", { reason: `bake failed: ${message.split("\n")[0]}` });
      this.log(`bake ${bakeId} failed: ${message}`);
      return { status: "failed", bakeId, reasons: [message] };
    }

    // items no probe question could be written for were not baked: they leave the gate
    const unprobed = fresh.filter((i) => result.unprobed.includes(i.id));
    fresh = fresh.filter((i) => !unprobed.includes(i));
    const summary = result.summary;
    if (!summary) {
      // the worker trained nothing (no new item could be baked): no version, and the items are rejected
      const { reasons, changes } = decideGate({ version, fresh, replay: [], retained: [], unprobed, liveItems, excluded: new Set(), scores: {}, superseded: result.superseded, persona: null, consolidate, trained: false, gate: cfg.gate, maxAttempts: cfg.bake.maxAttempts });
      await ledger.update((d) => Object.assign(d.bakes.find((b) => b.id === bakeId)!, { status: "rejected", finishedAt: new Date().toISOString(), reasons }));
      await this.applyChanges(changes);
      this.log(`bake ${bakeId}: nothing baked (${reasons.join("; ")})`);
      return { status: "rejected", bakeId, reasons };
    }

    // --- gate ---
    const { promoted, reasons, absorption, retention, persona, holds, changes } = decideGate({
      version,
      fresh,
      replay,
      retained,
      unprobed,
      liveItems,
      excluded: new Set(ledger.items({ status: [...INACTIVE_STATUSES] }).map((i) => i.id)),
      scores: result.scores,
      superseded: result.superseded,
      persona: result.persona ? result.persona.after : null,
      consolidate,
      gate: cfg.gate,
      maxAttempts: cfg.bake.maxAttempts,
    });
    const record: VersionRecord = {
      id: version,
      parent: consolidate ? null : liveVersion,
      createdAt: new Date().toISOString(),
      dir: outDir,
      status: promoted ? "live" : "rejected",
      bakeId,
      items: holds,
      scores: { absorption, retention, persona },
      ...(promoted ? {} : { reasons }),
    };
    if (promoted) {
      // Write the manifest and swap in memory before the ledger names the version live: a crash
      // in between leaves the old live version recorded, and the orphan folder is moved aside on start.
      this.writeManifest(record, summary);
      this.live.swapTo(version, outDir);
      this.servingProblem = null;
    }
    const now = new Date().toISOString();
    await ledger.update((d) => {
      for (const [id, probes] of Object.entries(result.probes)) {
        const item = d.items.find((i) => i.id === id);
        if (item && !item.probes?.length) item.probes = probes;
      }
      for (const [id, s] of Object.entries(result.scores)) d.items.find((i) => i.id === id)?.scores.push({ version, unprompted: s.unprompted, prompted: s.prompted });
      if (promoted) {
        for (const v of d.versions) if (v.status === "live") v.status = "kept";
        d.live = version;
      }
      d.versions.push(record);
      Object.assign(d.bakes.find((b) => b.id === bakeId)!, {
        status: promoted ? "promoted" : "rejected",
        finishedAt: now,
        version,
        metrics: { absorption, retention, ...(persona !== null ? { persona } : {}), initialValKl: summary.initialValKl, bestValKl: summary.bestValKl, trainedTokens: summary.trainedTokens, seconds: summary.seconds, tokensPerSecond: summary.tokensPerSecond },
        history: summary.history.map((h) => ({ epoch: h.epoch, trainKlPerToken: h.trainKlPerToken, valKlPerToken: h.valKlPerToken })),
        ...(promoted ? {} : { reasons }),
      });
    });
    await this.applyChanges(changes);
    if (promoted && unfit.length) {
      await ledger.setItemStatus(unfit.filter((id) => ledger.item(id).status === "absorbed"), "pending", { reason: `did not fit the context of consolidation ${version}` });
    }
    // A consolidation's weights hold only what it baked. An item given back while it ran (what
    // superseded it was retracted at once: retract's markUnheld) took "absorbed" from the weights
    // serving then, which this version replaces: it would stay absorbed, never baked again.
    if (promoted && consolidate) await this.syncStatusesToLive(`consolidation ${version}`);
    await this.prune();
    this.log(`bake ${bakeId}: ${version} ${promoted ? "promoted" : `rejected (${reasons.join("; ")})`}; absorption ${absorption.toFixed(2)}, retention ${retention.toFixed(2)}`);
    // The next bake replays what this one lost (chooseReplay), but a replay share too small for
    // the model loses as much of the rest every time: the agent file is what can change that.
    const advice = promoted ? undefined : replayAdvice(retained, result.scores, cfg.gate, cfg.replay, held.length);
    if (advice) this.log(`bake ${bakeId} ${advice}`);
    return { status: promoted ? "promoted" : "rejected", bakeId, version, reasons, absorption, retention, persona };
  }

  /**
   * Every teacher prompt (one per chunk of items) must leave room for a reply within the model's
   * positions: replayed items are dropped first, then the newest pending items wait.
   */
  private fitToContext(fresh: Item[], replay: Item[]): { fresh: Item[]; replay: Item[] } {
    const tok = this.model.tokenizer;
    const reply = this.config.bake.settings.maxReplyTokens ?? 48;
    const budget = this.model.config.maxPositions - reply - 64; // 64: the chat template and a question
    const size = (f: Item[], r: Item[]) =>
      Math.max(
        ...knowledgeLessons({ persona: this.config.persona?.text, items: [...f, ...r].map((i) => ({ text: i.text, questions: [] })), chunkItems: this.config.bake.chunkItems }).map(
          (l) => tok.encode(l.systemPrompt).length,
        ),
      );
    const f = [...fresh];
    const r = [...replay];
    while (r.length && size(f, r) > budget) r.pop();
    while (f.length > 1 && size(f, r) > budget) f.pop();
    if (f.length < fresh.length || r.length < replay.length) {
      this.log(`context holds ${f.length} of ${fresh.length} new and ${r.length} of ${replay.length} replayed items this bake`);
    }
    return { fresh: f, replay: r };
  }

  private writeManifest(v: VersionRecord, summary: NonNullable<CycleResult["summary"]>): void {
    const manifest = {
      version: v.id,
      parent: v.parent,
      agent: this.name,
      baseModel: this.model.dir,
      baseFingerprint: this.live.fingerprint,
      createdAt: v.createdAt,
      items: v.items,
      scores: v.scores,
      bake: { initialValKl: summary.initialValKl, bestValKl: summary.bestValKl, trainedTokens: summary.trainedTokens, seconds: summary.seconds },
    };
    const file = path.join(v.dir, "manifest.json");
    writeFileSync(`${file}.tmp`, JSON.stringify(manifest, null, 2) + "\n");
    renameSync(`${file}.tmp`, file);
  }

  /** After every bake: old kept versions and rejected ones past keepVersions leave the disk; the ledger's histories are capped. */
  private async prune(): Promise<void> {
    const kept = this.ledger.data.versions.filter((v) => v.status === "kept").sort((a, b) => b.id.localeCompare(a.id));
    const old = kept.slice(this.config.keepVersions);
    // Only folders in this agent's home are ever deleted: a ledger copied or moved without its
    // versions still names another place's (the ledger reads them there), which may be another agent's.
    const home = path.resolve(this.config.homeDir);
    const ours = (v: VersionRecord) => path.dirname(path.resolve(v.dir)) === home;
    const rejected = this.ledger.data.versions.filter((v) => v.status === "rejected" && ours(v) && existsSync(v.dir));
    for (const v of [...old, ...rejected.slice(0, Math.max(0, rejected.length - this.config.keepVersions))]) {
      if (ours(v)) rmSync(v.dir, { recursive: true, force: true });
      else if (existsSync(v.dir)) this.log(`${v.id} is retired; its folder ${v.dir} is outside ${home} (the ledger was moved or copied without it), so it was left on disk`);
    }
    await this.ledger.update((d) => d.versions.forEach((v) => old.some((o) => o.id === v.id) && (v.status = "retired")));
    // The bake is recorded already: a compaction that fails (a full disk) is logged, not the bake's failure.
    try {
      const { archived } = await this.ledger.compact((v) => existsSync(v.dir));
      if (archived) this.log(`ledger: ${archived} old inactive item(s) moved to ${this.ledger.archiveFile}`);
    } catch (err) {
      this.log(`ledger compaction failed (nothing was moved): ${(err as Error).message}`);
    }
  }

  // --- versions, retraction ---

  async rollback(version: string | null): Promise<void> {
    if (this.baking) throw new Error("a bake is running; roll back when it ends");
    const why = version === null ? null : this.whyNotLive(version);
    if (why) throw new Error(why);
    await this.goLive(version, "rollback");
  }

  /** Why a version cannot go live (again), or null when it can. */
  whyNotLive(version: string): string | null {
    return this.ledger.whyNotLive(version);
  }

  /**
   * Writes a version ("live" for the live one) as a PEFT directory, a llama.cpp GGUF adapter or a
   * merged model (src/lora/export.ts). It only reads the version and the ledger, so it runs beside
   * a server, and a rejected version that is still on disk exports too (its status is returned).
   */
  async exportVersion(version: string, to: string, opts: ExportOptions): Promise<ExportResult & { version: string; status: VersionRecord["status"] }> {
    if (version === "base") throw new Error(`base is the base model itself, with no adapter to export (its folder is ${this.model.dir})`);
    const id = version === "live" ? this.ledger.data.live : version;
    if (id === null) throw new Error(`${this.name} is live on the base model: there is no adapter to export`);
    const v = this.ledger.version(id);
    if (!existsSync(v.dir)) throw new Error(`version ${id} is no longer on disk${v.status === "retired" ? " (pruned)" : `: its folder ${v.dir} is missing (removed or moved outside kiln)`}`);
    const result = await exportAdapter({ adapterDir: v.dir, model: this.model, name: `${this.name}-${id}` }, to, opts);
    return { version: id, status: v.status, ...result };
  }

  /** The gate's status changes; an item retracted, superseded (corrected by its feed) or expired meanwhile stays so. */
  private async applyChanges(changes: StatusChange[]): Promise<void> {
    for (const c of changes) {
      const ids = c.ids.filter((id) => !DECIDED_ELSEWHERE.has(this.ledger.item(id).status));
      const { ids: _, status, ...extra } = c;
      this.logGivenBack(await this.ledger.setItemStatus(ids, status, extra), status);
    }
  }

  /**
   * Feed items older than `forgetNewsAfterDays` leave what the agent keeps (pending: never baked;
   * absorbed: no longer replayed). The ledger changes before the first await; the promise is the write.
   */
  private async expireOldNews(): Promise<void> {
    const days = this.config.forgetNewsAfterDays;
    if (days === undefined) return;
    const before = Date.now() - days * 86_400_000;
    const old = this.ledger.items({ kind: "feed", status: ["pending", "absorbed"] }).filter((i) => newsTime(i) < before);
    if (!old.length) return;
    await this.ledger.setItemStatus(old.map((i) => i.id), "expired", { reason: `news older than forgetNewsAfterDays ${days}` });
    this.log(`${old.length} feed item(s) older than ${days} day(s) expired: no longer baked, replayed or checked`);
  }

  private logGivenBack(ids: string[], status: string): void {
    if (ids.length) this.log(`${ids.join(", ")} given back (absorbed where the live version holds it, else pending): what superseded ${ids.length > 1 ? "them" : "it"} was ${status}`);
  }

  /** The items the live version holds, as the ledger records it (none on the base model). */
  heldItems(): Set<string> {
    const live = this.ledger.data.live;
    return new Set(live ? this.ledger.version(live).items : []);
  }

  /**
   * Whether the live weights may hold an item: the live version lists it, or it expired after a
   * version of the live one's lineage absorbed it (versions stop listing expired news, but the
   * adapter each was trained from may still answer it; nothing measured that it faded). The
   * lineage reaches as far back as version records are kept (compaction keeps 100 dead ones).
   */
  mayHold(i: Item): boolean {
    if (this.heldItems().has(i.id)) return true;
    if (i.status !== "expired" || !i.absorbedBy) return false;
    for (let v = this.ledger.data.live; v; v = this.ledger.data.versions.find((x) => x.id === v)?.parent ?? null) {
      if (v === i.absorbedBy) return true;
    }
    return false;
  }

  /** Retracted items a version's weights hold. */
  private retractedIn(version: string | null): string[] {
    return version === null ? [] : this.ledger.retractedIn(version);
  }

  /** Swaps the live weights to a kept version (or the base model); item statuses follow it. */
  private goLive(version: string | null, why: string): Promise<void> {
    // one switch at a time: a double-clicked rollback must not interleave two status syncs
    const next = this.switching.then(async () => {
      this.live.swapTo(version, version ? this.ledger.version(version).dir : null);
      this.servingProblem = null;
      await this.ledger.update((d) => {
        for (const v of d.versions) {
          if (v.status === "live") v.status = "kept";
          if (v.id === version) v.status = "live";
        }
        d.live = version;
      });
      await this.syncStatusesToLive(why);
      this.log(`${version ?? "the base model"} is live (${why})`);
    });
    this.switching = next.catch(() => {});
    return next;
  }

  /**
   * "absorbed" means the live weights hold it: absorbed items the live version does not hold wait
   * to be baked again, and pending ones it holds are absorbed. Run on every switch and on start
   * (a crash between a promotion and its status changes leaves them behind).
   */
  private async syncStatusesToLive(why: string): Promise<void> {
    const held = this.heldItems();
    const name = this.ledger.data.live ?? "the base model";
    const stray = this.ledger.items({ status: "absorbed" }).filter((i) => !held.has(i.id));
    const found = this.ledger.items({ status: "pending" }).filter((i) => held.has(i.id));
    await this.ledger.setItemStatus(stray.map((i) => i.id), "pending", { reason: `not held by ${name} (${why})` });
    await this.ledger.setItemStatus(found.map((i) => i.id), "absorbed", { reason: `held by ${name} (${why})` });
  }

  /**
   * Marks items retracted and rebuilds the adapter from the base over what is still true. If the
   * rebuild is not promoted, the live weights must still stop knowing the retracted items: the
   * newest kept version that holds none of them goes live (else the base model), and what it does
   * not hold waits to be baked again. A bake that could end holding the items is stopped first
   * (its items wait for the next bake), so the weights holding them leave service within seconds.
   */
  retract(named: string[], reason = "retracted", onOutOfService?: (rebuildId?: string) => void): Promise<BakeOutcome> {
    // the full ids (an item may be named by the end of its id): a running bake's record lists those
    let ids: string[];
    try {
      ids = named.map((id) => this.ledger.item(id).id);
    } catch (err) {
      return Promise.reject(err);
    }
    // Waiting in line behind another retraction would have its answer wait for that one's whole
    // rebuild (an hour on a CPU), for an item nothing needs to stop or rebuild for.
    if (this.retracting > 0 && this.nothingCanHold(ids)) return this.markUnheld(ids, reason, onOutOfService);
    // it carries the owed rebuild on, and its failure starts the tries again afresh
    this.dropRebuildRetry();
    return this.queueRetraction(ids, reason, onOutOfService);
  }

  /** A retraction in line (retract; retryRebuild's, with no ids, rebuilds only what is owed). */
  private queueRetraction(ids: string[], reason: string, onOutOfService?: (rebuildId?: string) => void): Promise<BakeOutcome> {
    this.retracting++;
    this.retractionsAsked.push(ids);
    // A bake that could end holding them stops now, not when it ends (minutes to an hour on a
    // CPU), also when this retraction waits behind another's rebuild: meanwhile the weights
    // serving may hold them. What it was baking waits for the next bake.
    if (this.bakeCouldHold(ids)) this.stopBake(`retraction asked for (${reason})`, ids);
    let reserved: string | undefined;
    let outcome!: Promise<BakeOutcome>;
    const run = this.retractions
      .then(() =>
        this.retractNow(ids, reason, (rebuildId) => {
          if (rebuildId) this.reservedRebuilds.set((reserved = rebuildId), { outcome, ended: false });
          onOutOfService?.(rebuildId);
        }),
      )
      .finally(() => {
        this.retracting--;
        this.retractionsAsked.splice(this.retractionsAsked.indexOf(ids), 1);
        if (this.stoppedByRetraction?.by === ids) this.stoppedByRetraction = null; // (it failed before reading it)
        if (reserved) this.forgetReserved(reserved);
      });
    this.retractions = run.catch(() => undefined);
    // (before the caller hears the outcome: a failure it is told of is already owed, and reported)
    run.then(
      (done) => this.afterRebuild("ranAgain" in done || done.status !== "failed" ? null : (done.reasons[0] ?? "failed")),
      (err: Error) => this.afterRebuild(err.message),
    );
    // (the stopped bake it runs again goes on after it: the next retraction does not wait for that)
    outcome = run.then((done) => ("ranAgain" in done ? done.ranAgain : done));
    return outcome;
  }

  /** `bakeId`'s retraction ended: kept with the last RESERVED_KEPT ended ones, the older forgotten. */
  private forgetReserved(bakeId: string): void {
    const entry = this.reservedRebuilds.get(bakeId);
    if (entry) entry.ended = true;
    const ended = [...this.reservedRebuilds].filter(([, e]) => e.ended).map(([id]) => id);
    for (const id of ended.slice(0, Math.max(0, ended.length - RESERVED_KEPT))) this.reservedRebuilds.delete(id);
  }

  /**
   * After a retraction (or a rebuild a start ran again) ended, `failed` saying why it failed: an
   * owed rebuild none in line carries on is tried again, after rebuildRetryMs, then twice as long
   * each time, at most bake.rebuildRetries times; each failure is logged with its reason.
   */
  private afterRebuild(failed: string | null): void {
    if (this.stoppedRebuild === null) {
      this.dropRebuildRetry();
      return;
    }
    // (an owed rebuild beside a retraction that did not fail is one a start runs again, still running)
    if (failed === null || this.retractionsAsked.length || this.stopping) return;
    const attempts = (this.rebuildRetry?.attempts ?? 0) + 1;
    const { rebuildRetries, rebuildRetryMs } = this.config.bake;
    const holds = this.retractedIn(this.ledger.data.live);
    const serving = holds.length ? `; the live weights ${this.ledger.data.live} still hold retracted item(s) ${holds.join(", ")}` : "";
    if (attempts > rebuildRetries) {
      this.rebuildRetry = { attempts, retryAt: null, lastError: failed, timer: null };
      this.log(`the rebuild after a retraction failed (${failed})${serving}; gave up after ${attempts} tries: the next retraction rebuilds it`);
      return;
    }
    const delay = retryDelay(rebuildRetryMs, attempts);
    const timer = setTimeout(() => this.retryRebuild(), delay);
    timer.unref(); // (a CLI process that retracted ends: the next start runs a failed rebuild again, see unfinishedRebuild)
    this.rebuildRetry = { attempts, retryAt: new Date(Date.now() + delay).toISOString(), lastError: failed, timer };
    this.log(`the rebuild after a retraction failed (${failed})${serving}; tried again in ${delay / 1000} s (${attempts} of ${rebuildRetries})`);
  }

  /** No try again is due (its timer cleared): a retraction carries the rebuild on, or nothing is owed. */
  private dropRebuildRetry(): void {
    if (this.rebuildRetry?.timer) clearTimeout(this.rebuildRetry.timer);
    this.rebuildRetry = null;
  }

  /** Runs the owed rebuild again, in line with the retractions (see afterRebuild). */
  private retryRebuild(): void {
    if (this.rebuildRetry) this.rebuildRetry.timer = null;
    if (this.stopping || this.stoppedRebuild === null) return;
    this.queueRetraction([], "the rebuild after a retraction tried again").catch(() => undefined); // (afterRebuild logged it)
  }

  /**
   * Asks the running bake, if any, to stop: its worker is killed, its items go back to pending.
   * `by`: the ids of the retraction asking, which runs it again where no rebuild does.
   */
  private stopBake(why: string, by: string[] | null): void {
    if (!this.baking) return;
    if (by && this.stopAsked === null && this.bakeAsked) this.stoppedByRetraction = { by, bake: this.bakeAsked };
    this.stopAsked ??= why;
    this.cancelBake?.(why);
    this.leaveTurn?.(why);
  }

  /**
   * Whether the running bake could end holding one of these items, or must stop for them: it
   * bakes or replays one, it has not said yet what it bakes (waiting for its turn), or the live
   * weights may hold one. A rolling bake starts from those; and the retraction, which takes them
   * out of service, would otherwise wait for the bake (another retraction's rebuild: an hour on
   * a CPU) while they serve.
   */
  private bakeCouldHold(ids: string[]): boolean {
    if (!this.baking || !ids.length) return false;
    const record = this.ledger.data.bakes.at(-1);
    if (record?.status !== "running") return true;
    const baked = new Set([...record.itemIds, ...(record.replayIds ?? [])]);
    return ids.some((id) => baked.has(id)) || this.liveMayHold(ids);
  }

  /**
   * Whether these items are pending, in no weights the live ones may be, and not in the running
   * bake (told after it started: another retraction's rebuild, say). A bake still waiting for its
   * turn has not chosen its items; one that has cannot take more, and any bake chosen later reads
   * the items as retracted. Nothing stopped or rebuilt later can then come to hold them.
   */
  private nothingCanHold(ids: string[]): boolean {
    // (A bake with no record running has not chosen its items: it waits for its turn, or for the
    // feed polls in flight, and reads these as retracted when it does; or its record is already
    // written and the ledger says what its weights hold. Treated as one that could hold them, it
    // was stopped by bakeCouldHold: another retraction's rebuild waiting for another agent's bake
    // was given up, and this retraction answered only after that whole rebuild.)
    const record = this.baking ? this.ledger.data.bakes.at(-1) : undefined;
    if (record?.status === "running") {
      const baked = new Set([...record.itemIds, ...(record.replayIds ?? [])]);
      if (ids.some((id) => baked.has(id))) return false;
    }
    return ids.every((id) => {
      const i = this.ledger.item(id);
      return i.status === "pending" && !i.archivedAt && !this.mayHold(i);
    });
  }

  /**
   * Retracts items nothing can hold (nothingCanHold) without waiting for the retractions in line:
   * they rebuild what they owe, this one owes nothing (so it is not among retractionsAsked, which
   * keeps a failed rebuild owed for the next in line to carry on).
   */
  private async markUnheld(ids: string[], reason: string, onOutOfService?: (rebuildId?: string) => void): Promise<BakeOutcome> {
    this.logGivenBack(await this.ledger.setItemStatus(ids, "retracted", { reason }), "retracted");
    onOutOfService?.();
    return { status: "skipped", reasons: ["nothing held these items (no weights, not the bake running): marked retracted, nothing to stop or rebuild"] };
  }

  /** Whether the live weights may hold one of these items (see mayHold). */
  private liveMayHold(ids: string[]): boolean {
    return ids.some((id) => this.ledger.data.items.some((i) => i.id === id && this.mayHold(i)));
  }

  /** `onOutOfService`: called once the live weights hold none of the items (seconds), before the rebuild */
  private async retractNow(ids: string[], reason: string, onOutOfService?: (rebuildId?: string) => void): Promise<BakeOutcome | { ranAgain: Promise<BakeOutcome> }> {
    // A bake that could end holding them was asked to stop (retract); it ends within seconds, and
    // joining it would not rebuild from the base. One that cannot hold them goes on.
    if (this.bakeCouldHold(ids)) {
      this.stopBake(`retraction asked for (${reason})`, ids);
      while (this.baking) await this.baking.catch(() => undefined);
    }
    // (read once the bake ended: its compaction may have moved an item to the archive)
    const asked = ids.map((id) => this.ledger.item(id));
    // Retracting again is how weights that still hold a retracted item are rebuilt; one they do not
    // hold needs nothing, and marking it again would say it had just been retracted.
    const done = asked.filter((i) => i.status === "retracted" && !this.mayHold(i));
    const already = done.map((i) => `item ${i.id} is already retracted (since ${i.updatedAt}) and the live weights do not hold it: nothing to do`);
    const items = asked.filter((i) => !done.includes(i));
    const inWeights = items.filter((i) => this.mayHold(i));
    const archived = items.filter((i) => i.archivedAt);
    const gone = archived.filter((i) => !inWeights.includes(i));
    // a rolling bake this retraction stopped runs again without them (a rebuild bakes what it would have)
    const stopped = this.stoppedByRetraction?.by === ids ? this.stoppedByRetraction.bake : null;
    if (stopped) this.stoppedByRetraction = null;
    let nothingToRebuild: string[] | null = null;
    if (!items.length) nothingToRebuild = already;
    else if (gone.length) nothingToRebuild = gone.map((i) => `item ${i.id} is archived (${i.status} since ${i.updatedAt}) and the live weights do not hold it: nothing to retract`);
    else {
      for (const i of archived) await this.ledger.unarchive(i.id);
      this.logGivenBack(await this.ledger.setItemStatus(items.map((i) => i.id), "retracted", { reason }), "retracted");
      if (!inWeights.length) nothingToRebuild = ["the live weights never held these items: marked retracted, nothing to rebuild", ...already];
    }
    // (a rebuild a retraction stopped is owed all the same: below; not the one a start ran again
    // while it still runs, which this retraction did not stop: joined, its answer waited for it)
    const owed = this.stoppedRebuild !== null && !(this.baking && this.bakeAsked?.opts.rebuild === this.stoppedRebuild);
    if (nothingToRebuild && !owed) {
      onOutOfService?.();
      const reasons = nothingToRebuild;
      if (!stopped || stopped.trigger === RETRACTION) return { status: "skipped", reasons };
      // A retraction asked for beside it (the next ones in line) whose items the live weights hold
      // rebuilds, baking what the stopped bake was baking: run again, it would be stopped for that one.
      const rebuilding = this.retractionsAsked.find((other) => other !== ids && this.liveMayHold(other));
      if (rebuilding) return { status: "skipped", reasons: [...reasons, `the bake it stopped is left to the rebuild of the retraction of ${rebuilding.join(", ")}`] };
      // started now and not waited for here: a retraction asked for meanwhile (of an item nothing
      // holds, say) need not wait for it, and stops it where it could end holding that one
      const ranAgain = this.bake(stopped.trigger, { ...stopped.opts, force: true, afterRetraction: true });
      return { ranAgain: ranAgain.then((again) => ({ ...again, reasons: [...reasons, `the bake it stopped ran again without them: ${again.status}`, ...again.reasons] })) };
    }
    // The weights holding them stop serving now, not when the rebuild ends (minutes to an hour on
    // a CPU): a user who said "forget ..." and asked again got the forgotten answer meanwhile. The
    // rebuild still bakes everything those weights held.
    // (one pass over the ledger: an item lookup each reads it from the start, seconds at 20,000 held)
    const retractedNow = new Set(this.ledger.items({ status: "retracted" }).map((i) => i.id));
    const carried = this.stoppedRebuild ?? { held: [], retracted: [] };
    const held = new Set([...this.heldItems(), ...carried.held]);
    const rebuild = { held: [...held].filter((id) => !retractedNow.has(id)), retracted: [...new Set([...carried.retracted, ...inWeights.map((i) => i.id)])] };
    const out = await this.leaveRetracted("retracted: served without them until the rebuild");
    if (out) this.log(`${out.to ?? "the base model"} serves until the rebuild: ${out.from} holds retracted item(s) ${out.retracted.join(", ")}`);
    // Its id is reserved now: it may wait for a bake running (below), and an answer naming the
    // running bake has a client see that one end and take the retraction for done.
    const bakeId = this.ledger.newBakeId();
    onOutOfService?.(bakeId);
    this.stoppedRebuild = rebuild;
    // A bake running now cannot end holding these items (else it was stopped above): one that owes
    // only a stopped rebuild found it running. bake() would join it, answer with its outcome as the
    // rebuild's, and the rebuild owed would be dropped as done; it runs once that bake ends.
    while (this.baking) await this.baking.catch(() => undefined);
    const outcome = await this.bake(RETRACTION, { consolidate: true, force: true, rebuild, bakeId });
    // (kept when it failed: a later retraction that stopped it carries it on, else it is tried again)
    if (outcome.status !== "failed") this.stoppedRebuild = null;
    const moved = this.baking ? null : await this.leaveRetracted(`the rebuild after a retraction was ${outcome.status}`);
    const said = nothingToRebuild ? [...nothingToRebuild, "the rebuild a retraction stopped was owed: it ran again"] : already;
    return { ...outcome, reasons: [...outcome.reasons, ...(moved ? [`${moved.from} still held retracted items, so ${moved.to ?? "the base model"} is live now`] : []), ...said] };
  }

  /**
   * When the live version holds retracted items (a retraction's rebuild was not promoted, or the
   * process stopped during it), the newest kept version that holds none of them goes live, else
   * the base model; what it does not hold waits to be baked again. Null when the live one is clean.
   */
  private async leaveRetracted(why: string): Promise<{ from: string; to: string | null; retracted: string[] } | null> {
    const live = this.ledger.data.live;
    const retracted = this.retractedIn(live);
    if (!live || !retracted.length) return null;
    const clean = [...this.ledger.data.versions].reverse().find((v) => (v.status === "kept" || v.status === "live") && existsSync(v.dir) && !this.retractedIn(v.id).length);
    if (clean) {
      try {
        await this.goLive(clean.id, why);
        return { from: live, to: clean.id, retracted };
      } catch (err) {
        // the weights holding retracted items must not stay live: the base model always loads
        this.log(`${clean.id} could not be loaded (${(err as Error).message}); the base model goes live instead of ${live}`);
      }
    }
    await this.goLive(null, why);
    return { from: live, to: null, retracted };
  }
}

/** Whether a stored feed item is the one a revised entry revises (items stored before feedKey was recorded match by guid, then link). */
function matchesFeedKey(item: Item, e: FeedEntry): boolean {
  // A title names an untagged item only while the feed lists it under that title (see dedupe): the
  // item revised is the untagged one holding the text the title last had, which may have been
  // stored under its content hash while another item shared the title. Another story that once
  // had the title alone (its feedKey the same title key) is not it.
  if (e.key.startsWith("title:") && item.source.feedHash !== undefined) {
    return e.revisesHash !== undefined && item.source.feedHash === e.revisesHash && !item.source.guid && !item.source.link;
  }
  if (item.source.feedKey) return item.source.feedKey === e.key;
  if (e.guid) return item.source.guid === e.guid;
  return e.link !== undefined && !item.source.guid && item.source.link === e.link;
}
