// The knowledge ledger: every item the agent read or was told, with provenance, its status, the
// weights version that absorbed it and its probe scores; every bake run and every version.
// lowdb keeps it in one JSON file, written by temp file + rename (a crash leaves the old or the
// new file, never half of one). This module is its only writer, and a lock file keeps a second
// process from writing at the same time. Tensors and logs never go in here: the whole document is
// rewritten on every change.
import { createHash, randomBytes } from "node:crypto";
import { appendFileSync, existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { Low } from "lowdb";
import { DataFile } from "lowdb/node";
import { feedUrlKey, linkKey, type FeedState } from "../feeds/feeds.js";
import { makeDirs } from "../files.js";

export const ITEM_KINDS = ["feed", "conversation", "manual", "instruction"] as const;
export type ItemKind = (typeof ITEM_KINDS)[number];
export const ITEM_STATUSES = ["pending", "baking", "absorbed", "rejected", "retracted", "superseded", "expired"] as const;
export type ItemStatus = (typeof ITEM_STATUSES)[number];
/**
 * Statuses of items the agent no longer keeps (withdrawn, refused, corrected, or news past the
 * agent's `forgetNewsAfterDays`): never baked, replayed or expected held, and no block to the same
 * text told again.
 */
export const INACTIVE_STATUSES = ["retracted", "rejected", "superseded", "expired"] as const satisfies readonly ItemStatus[];
const INACTIVE: ReadonlySet<ItemStatus> = new Set(INACTIVE_STATUSES);

export interface Probe {
  question: string;
  /** what the model answers with the item in its prompt: the behaviour baking must reproduce */
  answer: string;
}

export interface ItemScore {
  version: string;
  /** share of probes answered as expected without the item in the prompt */
  unprompted: number;
  /** the same with the item in the prompt (the ceiling) */
  prompted: number;
  /** KL per token between prompted and unprompted answers */
  kl?: number;
}

export interface Item {
  id: string;
  kind: ItemKind;
  text: string;
  status: ItemStatus;
  createdAt: string;
  updatedAt: string;
  /**
   * feedKey: the feed's dedupe key for the item (see FeedEntry.key), and feedHash its contentHash
   * there, so a revision finds what it revises
   */
  source: {
    feedId?: string;
    /**
     * Set when the feed left the agent file (Ledger.syncFeeds): the URL it had, "" where a kiln that
     * did not record it removed it. A feed id names a feed only while it is in the agent file, and
     * a later feed given the same id with another URL is another feed: the feed's own items are
     * those with its id and no feedUrl (see isFeedItem). Added back with this URL (as a poll asks
     * for it: feedUrlKey), it is the same feed again, and its items, archived ones too, are its own again.
     */
    feedUrl?: string;
    feedKey?: string;
    feedHash?: string;
    link?: string;
    guid?: string;
    conversationId?: string;
    /** a fact captured in chat: how (an explicit "remember ...", the rules, the model's extraction) */
    capturedBy?: "explicit" | "rules" | "model";
    /** ... and the user's message it was read from (at most MAX_SAID characters) */
    said?: string;
    publishedAt?: string;
    by?: string;
  };
  contentHash: string;
  probes?: Probe[];
  absorbedBy?: string;
  scores: ItemScore[];
  history: { at: string; status: ItemStatus; version?: string; reason?: string }[];
  /** the item that superseded this one (while it is superseded) */
  supersededBy?: string;
  /** set when compaction moved the item to the archive file (it was inactive and old) */
  archivedAt?: string;
}

export interface VersionRecord {
  id: string;
  parent: string | null;
  createdAt: string;
  /** the PEFT directory */
  dir: string;
  status: "live" | "kept" | "rejected" | "retired";
  bakeId: string;
  /** items whose knowledge this version holds (absorbed here or retained from the parent) */
  items: string[];
  /** how many items it held, once compaction dropped the list of a version that can never go live again */
  itemCount?: number;
  scores: { absorption: number; retention: number; persona: number | null };
  reasons?: string[];
}

export interface BakeRun {
  id: string;
  startedAt: string;
  finishedAt?: string;
  status: "running" | "promoted" | "rejected" | "failed";
  trigger: string;
  parent: string | null;
  /** from the base model over every active item (a retraction's rebuild, or asked for) */
  consolidate?: true;
  itemIds: string[];
  replayIds: string[];
  version?: string;
  metrics?: Record<string, number | string>;
  history?: { epoch: number; trainKlPerToken: number; valKlPerToken: number }[];
  reasons?: string[];
  error?: string;
}

export interface FeedRecord extends FeedState {
  id: string;
  url: string;
  itemsAdded: number;
  /**
   * After failures, scheduled polls due before this time are skipped (a manual poll is not); kept
   * here, not in memory, so that a restart does not end the backoff.
   */
  backoffUntil?: string;
}

export interface LedgerData {
  schema: 1;
  live: string | null;
  items: Item[];
  versions: VersionRecord[];
  bakes: BakeRun[];
  feeds: FeedRecord[];
}

export class LedgerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "LedgerError";
  }
}

/**
 * What a long-lived ledger keeps: the document is rewritten whole on every change (at 20,000
 * items and 100 full version records, half a second of blocked event loop per write), so it keeps
 * what can still matter in full and caps the rest, newest kept:
 * - bake records, per-item scores and status histories (an item keeps its first entry);
 * - records of versions that can never go live again (off disk, nobody's parent), and the item
 *   lists of all but the newest of those (a list is as long as the ledger; the count stays);
 * - inactive items (retracted, rejected, superseded, expired) no kept version lists: past the newest
 *   `inactiveItems` they move to the archive file, where `Ledger.item` still finds them.
 * Pending and absorbed items are never dropped: they are what the agent knows or will.
 */
export const LEDGER_LIMITS = { bakes: 200, scoresPerItem: 20, historyPerItem: 50, deadVersions: 100, deadVersionItemLists: 10, inactiveItems: 1000 };

/**
 * Caps `d` in place. Items leave it only after `archive` has taken them: if it throws, they stay.
 * Returns the items moved.
 */
export function compactLedger(d: LedgerData, limits = LEDGER_LIMITS, onDisk: (v: VersionRecord) => boolean = () => false, archive: (items: Item[]) => void = () => {}): Item[] {
  if (d.bakes.length > limits.bakes) d.bakes.splice(0, d.bakes.length - limits.bakes);
  for (const i of d.items) {
    if (i.scores.length > limits.scoresPerItem) i.scores.splice(0, i.scores.length - limits.scoresPerItem);
    if (i.history.length > limits.historyPerItem) i.history.splice(1, i.history.length - limits.historyPerItem);
  }
  // A version still on disk keeps its record (orphan checks need it), and so does its parent (a
  // diff against it). Every other version that can never go live again is dead: in a rolling
  // chain each is the parent of the next, so parenthood alone cannot protect a record.
  const shown = new Set(d.versions.filter(onDisk).map((v) => v.parent));
  const dead = d.versions.filter((v) => (v.status === "retired" || v.status === "rejected") && !onDisk(v) && !shown.has(v.id));
  if (dead.length > limits.deadVersions) {
    const drop = new Set(dead.slice(0, dead.length - limits.deadVersions).map((v) => v.id));
    d.versions = d.versions.filter((v) => !drop.has(v.id));
  }
  for (const v of dead.slice(0, Math.max(0, dead.length - limits.deadVersionItemLists))) {
    if (v.itemCount !== undefined) continue;
    v.itemCount = v.items.length;
    v.items = [];
  }
  // An item a version lists stays: retraction checks whether a version that could go live holds it.
  // So does one superseded by an item still kept: if that item is retracted or rejected, it comes back.
  const listed = new Set(d.versions.flatMap((v) => v.items));
  const kept = new Set(d.items.filter((i) => !INACTIVE.has(i.status)).map((i) => i.id));
  const movable = d.items
    .filter((i) => INACTIVE.has(i.status) && !listed.has(i.id) && !(i.supersededBy && kept.has(i.supersededBy)))
    .sort((a, b) => a.updatedAt.localeCompare(b.updatedAt));
  const inactive = d.items.filter((i) => INACTIVE.has(i.status)).length;
  const out = movable.slice(0, Math.max(0, inactive - limits.inactiveItems));
  if (!out.length) return [];
  archive(out);
  const gone = new Set(out);
  d.items = d.items.filter((i) => !gone.has(i));
  return out;
}

/** Whether `item` came from the feed the agent file now names `feedId` (not from a removed feed that had that id). */
export function isFeedItem(item: Item, feedId: string): boolean {
  return item.source.feedId === feedId && item.source.feedUrl === undefined;
}

function emptyLedger(): LedgerData {
  return { schema: 1, live: null, items: [], versions: [], bakes: [], feeds: [] };
}

export function contentHash(text: string): string {
  return createHash("sha256").update(text.replace(/\s+/g, " ").trim().toLowerCase()).digest("hex").slice(0, 16);
}

function newId(prefix: string): string {
  return `${prefix}_${Date.now().toString(36)}${randomBytes(3).toString("hex")}`;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

export interface AddItemInput {
  kind: ItemKind;
  text: string;
  source?: Item["source"];
  status?: ItemStatus;
  /** ids of items this one corrects: once it is added they are marked superseded, in the same write */
  supersedes?: string[];
}


/**
 * What makes `d` no ledger this kiln can use, naming the field, or null. Only what the code reads
 * without a guard is checked: a ledger hand-edited or damaged past that failed later, mid-command,
 * with a bare TypeError ("reading 'map'") that named neither the file nor the field.
 */
export function ledgerProblem(d: unknown): string | null {
  if (!isObject(d)) return `it holds ${Array.isArray(d) ? "a list" : typeof d}, not a ledger object`;
  if (typeof d.schema === "number" && d.schema > 1) return `schema ${d.schema}, written by a newer kiln; this one reads schema 1: run that kiln, or restore an older copy`;
  if (d.schema !== 1) return `schema ${shown(d.schema)}; a kiln ledger has schema 1`;
  if (d.live !== null && typeof d.live !== "string") return `live is ${shown(d.live)}, not a version id or null`;
  for (const list of ["items", "versions", "bakes"] as const) if (!Array.isArray(d[list])) return `${list} is not a list`;
  if (d.feeds !== undefined && !Array.isArray(d.feeds)) return "feeds is not a list";
  // An id two records share (ledgers merged by hand) made a command on it act on whichever came first, or on both.
  const items = d.items as unknown[];
  const itemAt = new Map<unknown, number>();
  for (let i = 0; i < items.length; i++) {
    const problem = itemProblem(items[i], (f) => (f ? `items[${i}].${f}` : `items[${i}]`));
    if (problem) return problem;
    const id = (items[i] as Item).id;
    if (itemAt.has(id)) return `items[${i}].id ${JSON.stringify(id)} is also items[${itemAt.get(id)}]'s`;
    itemAt.set(id, i);
  }
  const versions = d.versions as unknown[];
  const versionAt = new Map<unknown, number>();
  for (let i = 0; i < versions.length; i++) {
    const v = versions[i];
    if (!isObject(v)) return `versions[${i}] is not an object`;
    for (const f of ["id", "dir"] as const) if (typeof v[f] !== "string") return `versions[${i}].${f} is not a string`;
    if (versionAt.has(v.id)) return `versions[${i}].id ${JSON.stringify(v.id)} is also versions[${versionAt.get(v.id)}]'s`;
    versionAt.set(v.id, i);
    if (!["live", "kept", "rejected", "retired"].includes(v.status as string)) return `versions[${i}].status is ${shown(v.status)}, not live, kept, rejected or retired`;
    if (!Array.isArray(v.items)) return `versions[${i}].items is not a list`;
    const scores = v.scores;
    if (!isObject(scores) || typeof scores.absorption !== "number" || typeof scores.retention !== "number" || (scores.persona !== null && typeof scores.persona !== "number")) {
      return `versions[${i}].scores is ${shown(scores)}, not {absorption, retention, persona} numbers (persona may be null)`;
    }
    if (v.reasons !== undefined && !isStrings(v.reasons)) return `versions[${i}].reasons is not a list of strings`;
  }
  // kiln writes live and the versions' statuses in one write; a live edited by hand (to roll back)
  // served the version it named, a rejected one even, and baked on from it, while versions list
  // showed another live
  const liveAt = versionAt.get(d.live);
  const marked = (versions as VersionRecord[]).findIndex((v) => v.status === "live" && v.id !== d.live);
  if (liveAt !== undefined && (versions[liveAt] as VersionRecord).status !== "live") {
    return `live is ${JSON.stringify(d.live)}, but versions[${liveAt}] (${d.live}) has status ${JSON.stringify((versions[liveAt] as VersionRecord).status)}; kiln sets the two together (kiln versions rollback changes the live version)`;
  }
  if (marked >= 0) return `versions[${marked}] (${(versions[marked] as VersionRecord).id}) has status "live", but live is ${JSON.stringify(d.live)}; kiln sets the two together (kiln versions rollback changes the live version)`;
  const feeds = (d.feeds ?? []) as unknown[];
  for (let i = 0; i < feeds.length; i++) {
    const f = feeds[i];
    if (!isObject(f) || typeof f.id !== "string") return `feeds[${i}] is not a feed record (an object with an id)`;
    if (typeof f.url !== "string") return `feeds[${i}].url is not a string`;
    if (!Array.isArray(f.seenKeys)) return `feeds[${i}].seenKeys is not a list`;
    if (typeof f.consecutiveErrors !== "number") return `feeds[${i}].consecutiveErrors is not a number`;
  }
  const bakes = d.bakes as unknown[];
  for (let i = 0; i < bakes.length; i++) {
    const b = bakes[i];
    if (!isObject(b) || typeof b.id !== "string" || typeof b.status !== "string") return `bakes[${i}] is not a bake record (an object with an id and a status)`;
    for (const f of ["itemIds", "replayIds"] as const) if (!isStrings(b[f])) return `bakes[${i}].${f} is not a list of item ids`;
  }
  return null;
}

/** What makes `it` no item, or null (see ledgerProblem); `name` names it, or one of its fields. */
function itemProblem(it: unknown, name: (field?: string) => string): string | null {
  if (!isObject(it)) return `${name()} is not an object`;
  for (const f of ["id", "text", "contentHash"] as const) if (typeof it[f] !== "string") return `${name(f)} is not a string`;
  if (!(ITEM_STATUSES as readonly unknown[]).includes(it.status)) return `${name("status")} is ${shown(it.status)}, not one of ${ITEM_STATUSES.join(", ")}`;
  if (!(ITEM_KINDS as readonly unknown[]).includes(it.kind)) return `${name("kind")} is ${shown(it.kind)}, not one of ${ITEM_KINDS.join(", ")}`;
  if (!isObject(it.source)) return `${name("source")} is not an object`;
  for (const f of ["scores", "history"] as const) if (!Array.isArray(it[f])) return `${name(f)} is not a list`;
  const probes = it.probes;
  if (probes !== undefined && (!Array.isArray(probes) || !probes.every((p) => isObject(p) && typeof p.question === "string" && typeof p.answer === "string"))) {
    return `${name("probes")} is not a list of {question, answer} strings`;
  }
  const scores = it.scores as unknown[];
  for (let k = 0; k < scores.length; k++) {
    const s = scores[k];
    if (!isObject(s) || typeof s.version !== "string" || typeof s.unprompted !== "number" || typeof s.prompted !== "number") return `${name(`scores[${k}]`)} is ${shown(s)}, not {version, unprompted, prompted}`;
  }
  const history = it.history as unknown[];
  for (let k = 0; k < history.length; k++) {
    const h = history[k];
    if (!isObject(h) || typeof h.at !== "string" || !(ITEM_STATUSES as readonly unknown[]).includes(h.status)) return `${name(`history[${k}]`)} is ${shown(h)}, not {at, status}`;
  }
  return null;
}

function isStrings(v: unknown): boolean {
  return Array.isArray(v) && v.every((s) => typeof s === "string");
}

function shown(v: unknown): string {
  return v === undefined ? "missing" : JSON.stringify(v);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * A folder an agent takes, in its home, for a checkpoint of its own (a version's, named as
 * nextVersionId names them, or one half-written): on start its orphan sweep (src/runtime/agent.ts)
 * moves one no version record owns into orphaned/ and removes a half-written one, and pruning and
 * rollback delete a version's folder with all it holds.
 */
export const VERSION_FOLDER = /^v\d{4}(?:$|\.tmp-)/;
/** Of those, a version's whole checkpoint (v0001, v0002, ...) */
export const VERSION_DIR = /^v\d{4}$/;
/** Of those, one a bake was writing when it stopped (removed on start) */
export const HALF_WRITTEN_VERSION = /^v\d{4}\.tmp-/;

export class Ledger {
  private writes: Promise<void> = Promise.resolve();
  private archiveSkipsSaid = false;

  private constructor(
    readonly file: string,
    private readonly db: Low<LedgerData>,
    private readonly lockFile: string | null,
  ) {}

  /**
   * Opens (or creates) a ledger. A writer takes a lock file; a second writer on a live lock is
   * refused with the holder's pid. `readOnly` opens without the lock, for queries.
   */
  static async open(file: string, opts: { readOnly?: boolean } = {}): Promise<Ledger> {
    // read-only opens touch nothing: a ledger not there yet reads as an empty one
    if (!opts.readOnly) makeDirs(path.dirname(file));
    let lockFile: string | null = null;
    if (!opts.readOnly) {
      lockFile = `${file}.lock`;
      if (existsSync(lockFile)) {
        let held: string;
        try {
          held = readFileSync(lockFile, "utf8");
        } catch (err) {
          throw new LedgerError(`${lockFile}: the ledger's lock file cannot be read (${(err as Error).message}); remove it if no kiln has ${file} open`);
        }
        const pid = Number(held.trim());
        // A lock a crash left behind names a process id a later process (after a restart, any
        // program) may have: say which file to remove, or the agent stays refused for good.
        if (pid && pid !== process.pid && isAlive(pid)) {
          throw new LedgerError(`${file} is being written by process ${pid} (a running kiln serve?); stop it or use its admin API (if process ${pid} is no kiln, a crash left the lock: remove ${lockFile})`);
        }
      }
      writeFileSync(lockFile, String(process.pid));
    }
    const fresh = emptyLedger();
    const existed = existsSync(file);
    // Unindented: the file is rewritten whole on every change, and indentation made it a third larger.
    const db = new Low<LedgerData>(new DataFile<LedgerData>(file, { parse: JSON.parse, stringify: (d) => JSON.stringify(d) }), fresh);
    try {
      await db.read();
      // lowdb keeps its default when a file parses to null: that file is damaged, not new
      if (existed && db.data === fresh) throw new Error("it holds no JSON object");
    } catch (err) {
      if (lockFile) rmSync(lockFile, { force: true });
      // Never overwrite a ledger we cannot read: it may be the only record of what was learned.
      throw new LedgerError(`${file} is not a readable ledger (${(err as Error).message}); it was left untouched`);
    }
    const data = db.data;
    const problem = ledgerProblem(data);
    if (problem) {
      if (lockFile) rmSync(lockFile, { force: true });
      throw new LedgerError(`${file} is not a usable kiln ledger (${problem}); it was left untouched`);
    }
    data.feeds ??= [];
    // A version's folder is vNNNN beside the ledger, though its record names it in full: an agent's
    // home copied or moved elsewhere (a backup restored, --checkpoints elsewhere) reads its own
    // versions, not the old place's (nor, pruning, deletes those), and finds them when the old is
    // gone. Only a ledger moved without its versions (none of them beside it) still reads them
    // where they are: one copied with them, one of which is not there, does not reach into the
    // old place for it (another agent's, by now).
    const home = path.dirname(path.resolve(file));
    const recorded = (data.versions ?? []).filter((v) => typeof v.dir === "string" && v.dir);
    // either separator: a ledger written on Windows names C:\...\v0001, whose basename elsewhere is all of it
    const besideOf = (dir: string) => path.join(home, dir.split(/[\\/]/).filter(Boolean).pop() ?? dir);
    const withVersions = recorded.some((v) => existsSync(besideOf(v.dir)));
    for (const v of recorded) {
      const beside = besideOf(v.dir);
      if (beside !== v.dir && (withVersions || !existsSync(v.dir))) v.dir = beside;
    }
    return new Ledger(file, db, lockFile);
  }

  get data(): Readonly<LedgerData> {
    return this.db.data;
  }

  /** Applies a change and persists it; writes are serialised so none is lost. */
  async update<T>(change: (d: LedgerData) => T): Promise<T> {
    if (!this.lockFile) throw new LedgerError(`${this.file} was opened read-only`);
    const result = change(this.db.data);
    const write = this.writes.then(() => this.db.write());
    this.writes = write.catch(() => {});
    await write;
    return result;
  }

  /** Where compaction moves old inactive items: one JSON item per line, appended, never rewritten. */
  get archiveFile(): string {
    return this.file.replace(/\.json$/, "") + ".archive.jsonl";
  }

  /**
   * Applies LEDGER_LIMITS (compactLedger). Removed items are appended to the archive before the
   * ledger that no longer holds them is written, so a crash between the two leaves an item in
   * both (found either way), never in neither.
   */
  async compact(onDisk: (v: VersionRecord) => boolean, limits = LEDGER_LIMITS): Promise<{ archived: number }> {
    const at = new Date().toISOString();
    const archive = (items: Item[]) => appendFileSync(this.archiveFile, items.map((i) => JSON.stringify({ ...i, archivedAt: at }) + "\n").join(""));
    return this.update((d) => ({ archived: compactLedger(d, limits, onDisk, archive).length }));
  }

  async close(): Promise<void> {
    await this.writes;
    if (this.lockFile) rmSync(this.lockFile, { force: true });
  }

  /**
   * After a crash: bakes still marked running did not finish, and their items go back to
   * pending. Returns what was repaired.
   */
  async recover(): Promise<{ bakes: number; items: number }> {
    const stale = this.data.bakes.filter((b) => b.status === "running");
    const baking = this.data.items.filter((i) => i.status === "baking");
    if (!stale.length && !baking.length) return { bakes: 0, items: 0 };
    const now = new Date().toISOString();
    await this.update((d) => {
      for (const b of d.bakes) {
        if (b.status === "running") Object.assign(b, { status: "failed", finishedAt: now, error: "the process stopped during the bake" });
      }
      for (const i of d.items) {
        if (i.status === "baking") setStatus(i, "pending", now, { reason: "bake interrupted" });
      }
    });
    return { bakes: stale.length, items: baking.length };
  }

  // --- items ---

  /** Adds an item unless the same text is already there (and not retracted or rejected); returns the stored one. */
  async addItem(input: AddItemInput): Promise<{ item: Item; added: boolean }> {
    return (await this.addItems([input]))[0]!;
  }

  /**
   * Adds items in one write (a feed poll's entries), skipping any whose content is already known;
   * `alongside` changes the same document in that write (the feed's poll state).
   */
  async addItems(inputs: AddItemInput[], alongside?: (d: LedgerData, added: number) => void): Promise<{ item: Item; added: boolean }[]> {
    const now = new Date().toISOString();
    const fresh: Item[] = [];
    const results = inputs.map((input) => {
      const text = input.text.trim();
      if (!text) throw new LedgerError("an item needs text");
      const hash = contentHash(text);
      // an inactive item (retracted, rejected, superseded, expired) does not block the same text told again
      const existing = [...this.data.items, ...fresh].find((i) => i.contentHash === hash && !INACTIVE.has(i.status));
      if (existing) return { item: existing, added: false };
      const status = input.status ?? "pending";
      const item: Item = { id: newId("k"), kind: input.kind, text, status, createdAt: now, updatedAt: now, source: input.source ?? {}, contentHash: hash, scores: [], history: [{ at: now, status }] };
      fresh.push(item);
      return { item, added: true };
    });
    if (fresh.length || alongside) {
      await this.update((d) => {
        d.items.push(...fresh);
        inputs.forEach((input, n) => {
          const { item, added } = results[n]!;
          if (!added || !input.supersedes?.length) return;
          for (const old of d.items) {
            if (old !== item && input.supersedes.includes(old.id) && !INACTIVE.has(old.status)) setStatus(old, "superseded", now, { reason: `superseded by ${item.id}`, by: item.id });
          }
        });
        alongside?.(d, fresh.length);
      });
    }
    return results;
  }

  /**
   * An item by id, from the ledger or else its archive; or by the end of an id, when exactly one
   * item's id ends so (a retraction must never act on whichever item happened to come first).
   */
  item(id: string): Item {
    const exact = this.data.items.find((i) => i.id === id);
    if (exact) return exact;
    const archived = this.archived();
    const archivedExact = archived.findLast((i) => i.id === id);
    if (archivedExact) return archivedExact;
    if (id) {
      // the ledger's copy first (an unarchived item keeps its archive line), one per id
      const byId = new Map<string, Item>();
      for (const i of [...this.data.items, ...archived.reverse()]) if (i.id.endsWith(id) && !byId.has(i.id)) byId.set(i.id, i);
      const found = [...byId.values()];
      if (found.length === 1) return found[0]!;
      if (found.length > 1) {
        const shown = found.slice(0, 5).map((i) => i.id).join(", ");
        throw new LedgerError(`item id ${id} is ambiguous: ${found.length} items end with it (${shown}${found.length > 5 ? ", ..." : ""}); give more of the id`);
      }
    }
    throw new LedgerError(id ? `no item ${id}` : `no item "" (the id is empty)`);
  }

  /** An item as kiln shows it (the admin API, kiln knowledge show): with its latest score and the versions that hold it. */
  itemView(item: Item): Item & { latestScore: ItemScore | null; heldBy: string[] } {
    return { ...item, latestScore: item.scores.at(-1) ?? null, heldBy: this.data.versions.filter((v) => v.items.includes(item.id)).map((v) => v.id) };
  }

  /** Brings an archived item back into the ledger (a retraction needs it there); its archive line stays. */
  async unarchive(id: string): Promise<Item> {
    const item = this.item(id);
    if (!item.archivedAt) return item;
    const { archivedAt: _, ...back } = item;
    await this.update((d) => void d.items.push(back));
    return back;
  }

  /**
   * The archive's items, oldest first (read on demand: it is only needed for old, inactive items).
   * A line that is JSON but no item (hand-edited, or damaged) is skipped, and said once, naming
   * its line: it failed every lookup that read past it, and the other lines are still good.
   */
  archived(): Item[] {
    if (!existsSync(this.archiveFile)) return [];
    const skipped: string[] = [];
    const items = readFileSync(this.archiveFile, "utf8")
      .split("\n")
      .flatMap((line, n) => {
        let parsed: unknown;
        try {
          if (!line.trim()) return [];
          parsed = JSON.parse(line);
        } catch {
          return []; // a line cut short by a crash mid-append: every other line is a whole item
        }
        const problem = itemProblem(parsed, (f) => (f ? `its ${f}` : "it"));
        if (!problem) return [parsed as Item];
        skipped.push(`line ${n + 1} (${problem})`);
        return [];
      });
    if (skipped.length && !this.archiveSkipsSaid) {
      this.archiveSkipsSaid = true;
      process.stderr.write(`kiln: ${this.archiveFile}: skipped ${skipped.length} line(s) that are not items: ${skipped.slice(0, 5).join(", ")}${skipped.length > 5 ? ", ..." : ""}; the file was left as it is\n`);
    }
    return items;
  }

  items(filter: { status?: ItemStatus | ItemStatus[]; kind?: ItemKind; text?: string; source?: string } = {}): Item[] {
    const statuses = filter.status ? (Array.isArray(filter.status) ? filter.status : [filter.status]) : undefined;
    const needle = filter.text?.toLowerCase();
    const source = filter.source === undefined ? undefined : { as: filter.source, feed: feedUrlKey(filter.source), link: linkKey(filter.source) };
    return this.data.items.filter(
      (i) =>
        (!statuses || statuses.includes(i.status)) &&
        (!filter.kind || i.kind === filter.kind) &&
        (!needle || i.text.toLowerCase().includes(needle)) &&
        (!source?.as || this.fromSource(i, source)),
    );
  }

  /**
   * A feed id names the feed the agent file gives it, and a removed one's items only while no feed
   * has its id (they stay findable by that feed's URL). A feed's URL compares as a poll asks it
   * (case of scheme and host, a default port, no #fragment: feedUrlKey), an item's link the same
   * but for its #fragment, which often names the item (a changelog's #v2).
   */
  private fromSource(i: Item, source: { as: string; feed: string; link: string }): boolean {
    const feed = i.source.feedId === source.as && (i.source.feedUrl === undefined || !this.feed(source.as));
    const same = (u: string | undefined, key: (u: string) => string, want: string) => u !== undefined && (u === source.as || key(u) === want);
    return feed || i.source.conversationId === source.as || same(i.source.feedUrl, feedUrlKey, source.feed) || same(i.source.link, linkKey, source.link);
  }

  /**
   * Sets items' status. An item that is retracted or rejected gives back what it superseded: the
   * older item was replaced by news that turned out wrong or unusable, so it is absorbed again
   * where the live version still lists it, else pending (in the same write). Returns the ids given back.
   */
  async setItemStatus(ids: string[], status: ItemStatus, extra: StatusExtra = {}): Promise<string[]> {
    if (!ids.length) return [];
    const now = new Date().toISOString();
    return this.update((d) => {
      for (const i of d.items) if (ids.includes(i.id)) setStatus(i, status, now, extra);
      if (status !== "retracted" && status !== "rejected") return [];
      const back = d.items.filter((i) => i.status === "superseded" && i.supersededBy && ids.includes(i.supersededBy));
      const live = new Set(d.versions.find((v) => v.id === d.live)?.items ?? []);
      for (const i of back) setStatus(i, live.has(i.id) ? "absorbed" : "pending", now, { reason: `${i.supersededBy}, which superseded it, was ${status}` });
      return back.map((i) => i.id);
    });
  }

  // --- versions ---

  version(id: string): VersionRecord {
    const v = this.data.versions.find((x) => x.id === id);
    if (!v) throw new LedgerError(`no version ${id} (known: ${this.data.versions.map((x) => x.id).join(", ") || "none"})`);
    return v;
  }

  nextVersionId(): string {
    const n = this.data.versions.reduce((m, v) => Math.max(m, Number(v.id.slice(1)) || 0), 0) + 1;
    return `v${String(n).padStart(4, "0")}`;
  }

  /**
   * Retracted items a version's weights hold: those it lists, and news that had expired when it was
   * retracted and that a version of its lineage absorbed (versions stop listing expired news, but
   * the adapter each was trained from may still answer it; Agent.mayHold, which retraction asks).
   */
  retractedIn(id: string): string[] {
    const v = this.version(id);
    const retracted = this.items({ status: "retracted" });
    const ids = new Set(retracted.map((i) => i.id));
    const listed = v.items.filter((i) => ids.has(i));
    const lineage = new Set<string>();
    for (let at: string | null = id; at && !lineage.has(at); at = this.data.versions.find((x) => x.id === at)?.parent ?? null) lineage.add(at);
    // the status it had when it was retracted (a second retraction adds another entry)
    const expiredThen = (i: Item) => [...i.history].reverse().find((h) => h.status !== "retracted")?.status === "expired";
    const inLineage = retracted.filter((i) => !listed.includes(i.id) && i.absorbedBy !== undefined && lineage.has(i.absorbedBy) && expiredThen(i)).map((i) => i.id);
    return [...listed, ...inLineage];
  }

  /** Why a version cannot go live (again), or null when it can. */
  whyNotLive(id: string): string | null {
    const v = this.version(id);
    if (v.status === "rejected") return `version ${id} was rejected by the gate (${(v.reasons ?? []).join("; ")}); only kept versions can go live`;
    if (v.status === "retired") return `version ${id} is no longer on disk (pruned)`;
    // kiln never deletes a kept or live version's folder: saying "pruned" sent users looking for a cause in kiln
    if (!existsSync(v.dir)) return `version ${id} is no longer on disk: its folder ${v.dir} is missing (removed or moved outside kiln)`;
    const retracted = this.retractedIn(id);
    if (retracted.length) return `version ${id} holds retracted item(s) ${retracted.join(", ")}; it cannot go live again`;
    return null;
  }

  /** Items gained and lost between two versions (null = the base model, which holds none). */
  diff(from: string | null, to: string | null): { gained: Item[]; lost: Item[] } {
    const set = (id: string | null) => {
      const v = id ? this.version(id) : null;
      if (v?.itemCount !== undefined) throw new LedgerError(`version ${v.id} can never go live again and compaction dropped its list of ${v.itemCount} item(s)`);
      return new Set(v?.items ?? []);
    };
    const a = set(from);
    const b = set(to);
    const byId = (ids: string[]) => ids.map((id) => this.data.items.find((i) => i.id === id)).filter((i): i is Item => !!i);
    return { gained: byId([...b].filter((id) => !a.has(id))), lost: byId([...a].filter((id) => !b.has(id))) };
  }

  newBakeId(): string {
    return newId("b");
  }

  // --- feeds ---

  feed(id: string): FeedRecord | undefined {
    return this.data.feeds.find((f) => f.id === id);
  }

  /**
   * Makes the feed records those the agent file names. A record whose id the file no longer names
   * with its URL, and whose URL (or the URL it moved to for good, movedTo) another id has now, is
   * the same feed renamed (a new id; two feeds that swapped URLs; a chain of renames): its poll
   * state (validators, seen keys, backoff) and its items follow that id, so its news is not taken
   * in again and its corrections still find what they correct. A record still named whose URL
   * no other took keeps its id (its URL changed in place). Any other record no longer named goes
   * (removed: /healthz and the metrics stop showing it), its items staying, marked with its URL
   * (Item.source.feedUrl) as no longer the id's, in the ledger and in its archive. A new feed
   * starts with empty poll state.
   */
  async syncFeeds(feeds: readonly { id: string; url: string }[]): Promise<FeedSync> {
    const named = new Map(feeds.map((f) => [f.id, f]));
    // a record stays with its id where the agent file names that id with its URL (or the URL it
    // moved to for good), compared as polled (feedUrlKey: a #fragment added is the same feed)
    const same = (a: string | undefined, b: string) => a !== undefined && feedUrlKey(a) === feedUrlKey(b);
    const fits = (r: FeedRecord, url: string) => same(r.url, url) || same(r.movedTo, url);
    const keeps = (r: FeedRecord) => named.has(r.id) && fits(r, named.get(r.id)!.url);
    // The others are free: no longer named, or named with another URL (two feeds that swapped
    // URLs, one renamed to another's old id). A feed without its own may take one of them whose
    // URL it has (the same feed renamed); one nobody takes keeps its id if named (its URL changed
    // in place), else goes.
    const free = this.data.feeds.filter((r) => !keeps(r));
    const wanting = feeds.filter((f) => !this.data.feeds.some((r) => r.id === f.id && keeps(r)));
    const match = (f: { id: string; url: string }, open: FeedRecord[]) => {
      // the agent file may name the URL the feed moved to for good (as its log asks), renamed in the same edit
      const exact = open.filter((r) => r.id !== f.id && same(r.url, f.url));
      return exact.length ? exact : open.filter((r) => r.id !== f.id && same(r.movedTo, f.url));
    };
    // A feed named before with another URL takes another's record only where its own goes to
    // another feed (swapped, or renamed along a chain): else its URL changed in place.
    const wanted = new Set(wanting.flatMap((f) => match(f, free).map((r) => r.id)));
    const taken = new Map<string, string>(); // record id -> the feed id it goes to
    for (const f of wanting) {
      if (free.some((r) => r.id === f.id) && !wanted.has(f.id)) continue;
      const same = match(f, free.filter((r) => !taken.has(r.id)));
      if (same.length === 1) taken.set(same[0]!.id, f.id);
    }
    // (one whose own record nobody took after all keeps it)
    for (let undone = true; undone; ) {
      undone = false;
      for (const [from, to] of [...taken]) if (free.some((r) => r.id === to) && !taken.has(to)) undone = taken.delete(from);
    }
    const renamed: FeedSync["renamed"] = [...taken].map(([from, to]) => ({ from, to, items: this.data.items.filter((i) => isFeedItem(i, from)).length }));
    const takers = new Set(taken.values());
    // a record keeps its id unless taken, or another record took its id's place
    const stays = (r: FeedRecord) => !taken.has(r.id) && named.has(r.id) && !takers.has(r.id);
    const dropped = this.data.feeds.filter((r) => !taken.has(r.id) && !stays(r)).map((r) => r.id);
    const had = new Set([...this.data.feeds.filter(stays).map((r) => r.id), ...takers]);
    const added = feeds.filter((f) => !had.has(f.id)).map((f): FeedRecord => ({ id: f.id, url: f.url, consecutiveErrors: 0, seenKeys: [], itemsAdded: 0 }));
    // A removed feed's items keep its id and take its URL (feedUrl), so that a later feed given
    // the id with another URL does not take them for its own (its corrections, its listing).
    const goneUrl = new Map(this.data.feeds.filter((r) => dropped.includes(r.id)).map((r) => [r.id, r.url]));
    const fresh = new Set(added.map((f) => f.id));
    const retag = (src: Item["source"]): Item["source"] | undefined => {
      const id = src.feedId;
      if (id === undefined) return undefined;
      if (src.feedUrl === undefined) {
        if (taken.has(id)) return { ...src, feedId: taken.get(id)! };
        if (goneUrl.has(id)) return { ...src, feedUrl: goneUrl.get(id)! };
        // a feed id with no record before: a kiln that did not record URLs removed its feed
        if (fresh.has(id)) return { ...src, feedUrl: "" };
        return undefined;
      }
      // the agent file names the removed feed again, its id with its URL (written another way
      // that polls the same address: "http://Example.com/feed#top" is http://example.com/feed): it is back
      const again = named.get(id);
      if (again === undefined || feedUrlKey(again.url) !== feedUrlKey(src.feedUrl)) return undefined;
      const { feedUrl: _, ...back } = src;
      return back;
    };
    const changed = dropped.length > 0 || added.length > 0 || renamed.length > 0 || this.data.items.some((i) => retag(i.source));
    // Archived items are the feed's as much as the ledger's: one a retraction brings back, or one
    // listed by source, would otherwise be taken for the feed now given its id. The archive is only
    // ever appended to, so each goes again at its end, changed (Ledger.item reads an item's last
    // line). Read only when feeds changed: nothing else changes what an archived item belongs to.
    const archivedAgain = changed ? this.retagArchived(retag) : [];
    if (changed) {
      await this.update((d) => {
        // before the ledger is written, as compaction does: a crash between the two leaves the
        // archive changed and the feeds not, and the next start does the same again, finding
        // those lines done (but for two feeds that swapped ids: their archived items swap back)
        if (archivedAgain.length) appendFileSync(this.archiveFile, archivedAgain.map((i) => JSON.stringify(i) + "\n").join(""));
        // one pass: ids that swap must not be renamed twice
        for (const i of d.items) i.source = retag(i.source) ?? i.source;
        d.feeds = d.feeds
          .filter((r) => taken.has(r.id) || stays(r))
          .map((r) => (taken.has(r.id) ? { ...r, id: taken.get(r.id)! } : r))
          .concat(added);
      });
    }
    return { dropped, renamed };
  }

  /** The archived items (their last lines) not back in the ledger whose source `retag` changes, changed. */
  private retagArchived(retag: (src: Item["source"]) => Item["source"] | undefined): Item[] {
    const inLedger = new Set(this.data.items.map((i) => i.id));
    const last = new Map(this.archived().map((i) => [i.id, i]));
    return [...last.values()].flatMap((i) => {
      const source = inLedger.has(i.id) ? undefined : retag(i.source);
      return source ? [{ ...i, source }] : [];
    });
  }
}

/** What syncFeeds changed: ids whose records went, and feeds renamed (same URL) with how many items followed. */
export interface FeedSync {
  dropped: string[];
  renamed: { from: string; to: string; items: number }[];
}

/** Marks pending items "baking" (a bake took them), in a change of the caller's; returns their ids. */
export function markBaking(d: LedgerData, ids: readonly string[]): string[] {
  const now = new Date().toISOString();
  const taken = new Set(ids);
  return d.items.filter((i) => taken.has(i.id) && i.status === "pending").map((i) => (setStatus(i, "baking", now, {}), i.id));
}

interface StatusExtra {
  /** the version that absorbed the items (status absorbed) */
  version?: string;
  reason?: string;
  /** the item that supersedes them (status superseded) */
  by?: string;
}

function setStatus(i: Item, status: ItemStatus, at: string, extra: StatusExtra): void {
  i.status = status;
  if (status === "superseded" && extra.by) i.supersededBy = extra.by;
  else delete i.supersededBy;
  i.updatedAt = at;
  if (status === "absorbed" && extra.version) i.absorbedBy = extra.version;
  i.history.push({ at, status, ...(extra.version ? { version: extra.version } : {}), ...(extra.reason ? { reason: extra.reason } : {}) });
}
