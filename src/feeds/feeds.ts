// Polling one news feed: fetch (or read) the bytes, decode them, parse RSS/Atom with rss-parser,
// and turn items into bounded one-line entries, returning only the ones not seen before.
// Independent of storage: the caller keeps FeedState (plain JSON) wherever it likes and passes
// it back next time. Feeds are untrusted and flaky, so feed problems come back as
// `error` with the previous state intact; only misuse of this API throws.
import { createHash } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import Parser from "rss-parser";
import { sanitizeItem } from "../bake/prompt.js";
import { decodeFeedBytes } from "./decode.js";
import { htmlToText } from "./text.js";

export interface FeedSource {
  id: string;
  /** http(s) URL, file:// URL, or a local path */
  url: string;
  /** newest items looked at per poll (default 50) */
  maxItems?: number;
  /** whole request, headers and body (default 15000) */
  timeoutMs?: number;
  /** items dated more than this many days before the poll are skipped (default: no limit) */
  maxAgeDays?: number;
  /** changes of one item's text taken in any 24 hours (default 3); see ItemRevisions */
  maxRevisionsPerDay?: number;
}

export interface FeedState {
  etag?: string;
  lastModified?: string;
  lastPolledAt?: string;
  lastOkAt?: string;
  lastError?: string;
  consecutiveErrors: number;
  /** the server asked (429/503 with Retry-After) not to be asked again before this time */
  retryAfter?: string;
  /**
   * Every redirect of the configured URL was permanent (301/308): the feed lives here now, and the
   * agent file should say so. Meanwhile polls ask here directly, as feed readers do, and go back to
   * the configured URL when this one fails, and once a day (MOVE_RECHECK_MS) to see the move holds.
   */
  movedTo?: string;
  /** when the configured URL last redirected to movedTo */
  movedAt?: string;
  /** bounded, most recent last; item keys and "hash:" content keys */
  seenKeys: string[];
  /**
   * The content hash of the text taken for each guid (or link) key the last fetch listed: a feed
   * that takes a correction back goes to a text seen before, which seenKeys alone cannot tell from
   * no change. A change still waiting (see revisions) leaves the text taken here.
   */
  lastHashes?: Record<string, string>;
  /** Only for items of the last fetch whose text changed lately; bounded by maxItems. */
  revisions?: Record<string, ItemRevisions>;
}

/**
 * A changed text under a known guid (or link) is a revision, which supersedes the stored item and
 * is baked again. Feeds also change text that says nothing new (a view counter, "updated 3 min
 * ago", a rotating teaser), and taking each change would bake the item again every poll, forever.
 * So a change is taken only once it reads the same on a later poll, at least SETTLE_MS after it
 * was first read (a counter never holds; a correction does, and waits one poll), and at most
 * maxRevisionsPerDay changes of one item are taken in 24 hours (a slower counter); a change past
 * that waits, and the item's newest text is taken when the oldest of those revisions is a day old.
 */
export interface ItemRevisions {
  /** a changed text not taken yet: its content hash, and when a poll first read it */
  waiting?: { hash: string; since: string };
  /** polls in a row that read yet another text (for one log line about a churning item) */
  unsettled?: number;
  /** when this item's revisions of the last 24 hours were taken (at most maxRevisionsPerDay) */
  taken?: string[];
  /** a settled change waits for the day's cap (said once) */
  held?: true;
}

export interface FeedEntry {
  feedId: string;
  /**
   * stable dedupe key: "guid:<guid or Atom id>", else "link:<link>", else "title:<title>" when
   * the title is unique among such items in the fetch, else "hash:<contentHash>"
   */
  key: string;
  guid?: string;
  link?: string;
  title: string;
  /** one line: title + ": " + summary, HTML stripped, at most MAX_ITEM_CHARS */
  text: string;
  /** ISO 8601, or undefined when the feed gives no parseable date */
  publishedAt?: string;
  /** sha256 hex of the normalised title and summary */
  contentHash: string;
  /** the feed listed this guid, link or title before with other text: a correction or update */
  revises?: true;
  /** with `revises`: the contentHash of the text it replaces (the one last taken under its key), where recorded */
  revisesHash?: string;
}

export interface PollResult {
  /** only new entries, newest first */
  entries: FeedEntry[];
  state: FeedState;
  notModified: boolean;
  error?: string;
  /** things the caller should log that are not errors (an item's changes held back, say) */
  notes?: string[];
}

export interface PollOptions {
  fetch?: typeof fetch;
  now?: () => Date;
}

export const DEFAULT_MAX_ITEMS = 50;
export const DEFAULT_TIMEOUT_MS = 15_000;
/** seenKeys kept per feed (raised to 2 * maxItems so one poll never evicts its own items) */
export const MAX_SEEN_KEYS = 2000;
/** A feed larger than this is refused rather than buffered. */
export const MAX_FEED_BYTES = 10 * 1024 * 1024;
const REDIRECTS = new Set([301, 302, 303, 307, 308]);
/** Redirects followed per fetch, as browsers allow about 20 and feed readers fewer. */
const MAX_REDIRECTS = 5;
/** The longest Retry-After honoured: a hostile or mistaken header must not silence a feed for good. */
export const MAX_RETRY_AFTER_MS = 24 * 3600_000;
/** Dedupe keys longer than this are stored as a hash, so hostile GUIDs cannot bloat state. */
const MAX_KEY_CHARS = 256;
export const DEFAULT_MAX_REVISIONS_PER_DAY = 3;
/** How long a changed text must read the same before it is taken (two manual polls a minute apart prove nothing). */
export const SETTLE_MS = 10 * 60_000;
/** Polls in a row an item may read differently before the log says it churns. */
const CHURN_NOTE_AFTER = 3;
const DAY_MS = 24 * 3600_000;
/** How long a feed that moved for good is asked at its new address before the configured URL is asked again. */
export const MOVE_RECHECK_MS = DAY_MS;

export function initialFeedState(): FeedState {
  return { consecutiveErrors: 0, seenKeys: [] };
}

/**
 * A feed's address as a poll asks for it, for telling whether two addresses are one feed: an
 * http(s) URL as WHATWG URL writes it (scheme and host in lower case, no default port, "/" for an
 * empty path) and without its #fragment, which no request carries; anything else (a local path)
 * as written, trimmed, since a "#" or a capital there is part of a file name.
 */
export function feedUrlKey(url: string): string {
  const u = url.trim();
  if (!/^https?:\/\//i.test(u) || !URL.canParse(u)) return u;
  const parsed = new URL(u);
  parsed.hash = "";
  return parsed.href;
}

/** An item's link as WHATWG URL parsing writes it (scheme and host case, a default port), its #fragment kept. */
export function linkKey(url: string): string {
  const u = url.trim();
  return /^https?:\/\//i.test(u) && URL.canParse(u) ? new URL(u).href : u;
}

/** An expected failure of the feed (network, HTTP, bytes, XML): becomes PollResult.error. */
class FeedProblem extends Error {
  constructor(
    message: string,
    /** when the server said it may be asked again (429/503 Retry-After), epoch ms */
    readonly retryAt?: number,
  ) {
    super(message);
  }
}

export async function pollFeed(source: FeedSource, state: FeedState, opts: PollOptions = {}): Promise<PollResult> {
  checkArguments(source, state);
  const nowDate = (opts.now ?? (() => new Date()))();
  const now = nowDate.toISOString();
  const maxItems = source.maxItems ?? DEFAULT_MAX_ITEMS;
  const waitUntil = state.retryAfter ? Date.parse(state.retryAfter) : NaN;
  if (waitUntil > nowDate.getTime()) {
    // The server asked for quiet: no request, and no new error (the one that asked is counted).
    const error = `feed "${source.id}" (${source.url}): not polled, the server asked to wait until ${state.retryAfter} (Retry-After)`;
    return { entries: [], state: { ...state, seenKeys: [...state.seenKeys] }, notModified: false, error };
  }
  try {
    const got = await load(source, state, opts.fetch ?? globalThis.fetch, nowDate.getTime());
    const ok: FeedState = { ...state, seenKeys: [...state.seenKeys], lastPolledAt: now, lastOkAt: now, consecutiveErrors: 0 };
    delete ok.lastError;
    delete ok.retryAfter;
    if (got.kind !== "file") {
      // Validators come only from a response we fully accepted (a parse failure below jumps to
      // the catch, which keeps the old ones): otherwise the next poll would get a 304 for a feed
      // we never read.
      setOrDelete(ok, "etag", got.etag);
      setOrDelete(ok, "lastModified", got.lastModified);
      setOrDelete(ok, "movedTo", got.movedTo);
      setOrDelete(ok, "movedAt", got.movedAt);
    }
    const notes = got.kind !== "file" && got.note ? [got.note] : [];
    if (got.kind === "not-modified") return { entries: [], state: ok, notModified: true, ...(notes.length ? { notes } : {}) };

    const items = await parseFeed(got.xml);
    // A first poll of an archive feed would otherwise bake years-old news as new. Undated items
    // are kept: we cannot tell they are old.
    const oldest = source.maxAgeDays === undefined ? -Infinity : nowDate.getTime() - source.maxAgeDays * 86_400_000;
    const candidates = newestFirst(items)
      .slice(0, maxItems)
      .flatMap((item) => toEntry(source.id, item) ?? [])
      .filter((e) => e.publishedAt === undefined || Date.parse(e.publishedAt) >= oldest);
    keyUntaggedByTitle(candidates);
    const { entries, seenKeys, lastHashes, revisions, notes: itemNotes } = dedupe(candidates, state, {
      limit: Math.max(MAX_SEEN_KEYS, 2 * maxItems),
      now: nowDate.getTime(),
      maxRevisionsPerDay: source.maxRevisionsPerDay ?? DEFAULT_MAX_REVISIONS_PER_DAY,
    });
    const next: FeedState = { ...ok, seenKeys, lastHashes, revisions };
    if (!Object.keys(revisions).length) delete next.revisions;
    notes.push(...itemNotes);
    return { entries, state: next, notModified: false, ...(notes.length ? { notes } : {}) };
  } catch (err) {
    if (!(err instanceof FeedProblem)) throw err;
    const error = `feed "${source.id}" (${source.url}): ${err.message}`;
    // Everything already known (seenKeys, validators, lastOkAt) is kept.
    const failed: FeedState = { ...state, seenKeys: [...state.seenKeys], lastPolledAt: now, lastError: error, consecutiveErrors: state.consecutiveErrors + 1 };
    delete failed.retryAfter;
    if (err.retryAt !== undefined) failed.retryAfter = new Date(Math.min(err.retryAt, nowDate.getTime() + MAX_RETRY_AFTER_MS)).toISOString();
    return { entries: [], state: failed, notModified: false, error };
  }
}

function setOrDelete(state: FeedState, field: "etag" | "lastModified" | "movedTo" | "movedAt", value: string | undefined): void {
  if (value === undefined) delete state[field];
  else state[field] = value;
}

function checkArguments(source: FeedSource, state: FeedState): void {
  if (!source || typeof source.id !== "string" || !source.id) throw new TypeError("pollFeed: source.id must be a non-empty string");
  if (typeof source.url !== "string" || !source.url.trim()) throw new TypeError(`pollFeed: feed "${source.id}" needs a url`);
  if (source.maxItems !== undefined && !(Number.isInteger(source.maxItems) && source.maxItems > 0))
    throw new TypeError(`pollFeed: feed "${source.id}" maxItems must be a positive integer`);
  if (source.maxAgeDays !== undefined && !(Number.isFinite(source.maxAgeDays) && source.maxAgeDays > 0))
    throw new TypeError(`pollFeed: feed "${source.id}" maxAgeDays must be a positive number`);
  if (source.maxRevisionsPerDay !== undefined && !(Number.isInteger(source.maxRevisionsPerDay) && source.maxRevisionsPerDay > 0))
    throw new TypeError(`pollFeed: feed "${source.id}" maxRevisionsPerDay must be a positive integer`);
  if (source.timeoutMs !== undefined && !(Number.isFinite(source.timeoutMs) && source.timeoutMs > 0))
    throw new TypeError(`pollFeed: feed "${source.id}" timeoutMs must be a positive number`);
  if (!state || !Array.isArray(state.seenKeys) || typeof state.consecutiveErrors !== "number")
    throw new TypeError("pollFeed: state must come from initialFeedState() or a previous poll");
}

// ---------------------------------------------------------------------------------------------
// Getting the bytes

interface HttpMeta {
  etag?: string;
  lastModified?: string;
  movedTo?: string;
  movedAt?: string;
  /** for the log: the new address failed and the configured one answered, say */
  note?: string;
}

type HttpLoaded = ({ kind: "not-modified" } & HttpMeta) | ({ kind: "http"; xml: string } & HttpMeta);
type Loaded = HttpLoaded | { kind: "file"; xml: string };

async function load(source: FeedSource, state: FeedState, fetchImpl: typeof fetch, now: number): Promise<Loaded> {
  const url = source.url.trim();
  if (/^https?:\/\//i.test(url)) {
    const timeoutMs = source.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    // A change waiting to settle needs the feed read again: a 304 would say nothing changed
    // without showing the text, and the change would wait for good on a feed that answers 304.
    const waiting = Object.values(state.revisions ?? {}).some((r) => r.waiting);
    const validators = waiting ? {} : state;
    // (the configured URL may be the new address already: the agent file was brought up to date)
    const moved = state.movedTo && state.movedTo !== url && /^https?:\/\//i.test(state.movedTo) ? state.movedTo : undefined;
    if (moved && now - Date.parse(state.movedAt ?? "") < MOVE_RECHECK_MS) {
      try {
        const got = await loadHttp(moved, timeoutMs, validators, fetchImpl, now);
        // still there, or moved on for good from there
        return { ...got, movedTo: got.movedTo ?? moved, movedAt: state.movedAt };
      } catch (err) {
        if (!(err instanceof FeedProblem)) throw err;
        const there = `at its new address ${moved}: ${err.message}`;
        // The server there asked for quiet, and the configured URL would send us back to it.
        if (err.retryAt !== undefined) throw new FeedProblem(there, err.retryAt);
        let got: HttpLoaded;
        try {
          // No validators: they came from the new address, and a 304 would hide what the old one serves.
          got = await loadHttp(url, timeoutMs, {}, fetchImpl, now);
        } catch (again) {
          if (!(again instanceof FeedProblem)) throw again;
          throw new FeedProblem(`${again.message} (asked first ${there})`, again.retryAt);
        }
        const where = got.movedTo ? `, redirected for good to ${got.movedTo}` : " without a redirect: polled there again";
        return { ...got, movedAt: got.movedTo ? new Date(now).toISOString() : undefined, note: `its new address ${moved} failed (${err.message}); the configured url answered${where}` };
      }
    }
    // The daily look at the configured URL goes without validators, as the fallback above: they
    // came from the new address, and a 304 would hide what the old one serves now.
    const got = await loadHttp(url, timeoutMs, moved ? {} : validators, fetchImpl, now);
    const note = moved && !got.movedTo ? `the configured url no longer redirects for good to ${moved}: polled there again` : undefined;
    return { ...got, ...(got.movedTo ? { movedAt: new Date(now).toISOString() } : {}), ...(note ? { note } : {}) };
  }
  let file = url;
  if (/^file:/i.test(url)) {
    try {
      file = fileURLToPath(url);
    } catch (err) {
      throw new FeedProblem(`bad file URL (${messageOf(err)})`);
    }
  } else if (/^[A-Za-z][A-Za-z0-9+.-]+:/.test(url) && !/^[A-Za-z]:[\\/]/.test(url)) {
    // Some other scheme (ftp:, feed:, ...); a Windows drive letter is a path, not a scheme.
    throw new FeedProblem(`unsupported URL scheme "${url.slice(0, url.indexOf(":") + 1)}"`);
  }
  return { kind: "file", xml: decodeFeedBytes(await readLocal(file)).xml };
}

async function readLocal(file: string): Promise<Uint8Array> {
  try {
    const info = await stat(file);
    if (!info.isFile()) throw new FeedProblem("not a file");
    if (info.size > MAX_FEED_BYTES) throw new FeedProblem(`file is ${info.size} bytes, more than the ${MAX_FEED_BYTES} allowed`);
    return await readFile(file);
  } catch (err) {
    if (err instanceof FeedProblem) throw err;
    throw new FeedProblem(`cannot read file: ${messageOf(err)}`);
  }
}

/** `validators`: the etag and lastModified to send (none: an unconditional request). */
async function loadHttp(
  url: string,
  timeoutMs: number,
  validators: Pick<FeedState, "etag" | "lastModified">,
  fetchImpl: typeof fetch,
  now: number,
): Promise<HttpLoaded> {
  const headers: Record<string, string> = {
    "User-Agent": "kiln-feeds/0.1",
    Accept: "application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.9, */*;q=0.5",
  };
  if (validators.etag) headers["If-None-Match"] = validators.etag;
  if (validators.lastModified) headers["If-Modified-Since"] = validators.lastModified;
  // One deadline for connect, headers and body: a server that trickles bytes is as stuck as
  // one that never answers.
  const signal = AbortSignal.timeout(timeoutMs);
  // Redirects are followed by hand to learn whether every one was permanent (fetch's own
  // following hides the statuses on the way).
  let res: Response;
  let at = url;
  let permanent = true;
  for (let hops = 0; ; hops++) {
    try {
      res = await fetchImpl(at, { headers, signal, redirect: "manual" });
    } catch (err) {
      throw new FeedProblem(describeFetchError(err, timeoutMs));
    }
    const location = REDIRECTS.has(res.status) ? res.headers.get("location") : null;
    if (!location) break;
    await discard(res);
    if (hops === MAX_REDIRECTS) throw new FeedProblem(`more than ${MAX_REDIRECTS} redirects (last to ${location})`);
    permanent &&= res.status === 301 || res.status === 308;
    // The header is the server's text: one that is no URL is the feed's problem, not a crash.
    if (!URL.canParse(location, at)) throw new FeedProblem(`redirected to ${JSON.stringify(location.slice(0, 300))}, which is not a valid URL`);
    at = new URL(location, at).toString();
    if (!/^https?:/i.test(at)) throw new FeedProblem(`redirected to ${at}, which is not an http(s) URL`);
  }
  const movedTo = at !== url && permanent ? at : undefined;
  const etag = res.headers.get("etag") ?? undefined;
  const lastModified = res.headers.get("last-modified") ?? undefined;
  if (res.status === 304) {
    await discard(res);
    // A 304 may omit the validators; then the ones we sent are still the right ones.
    return { kind: "not-modified", etag: etag ?? validators.etag, lastModified: lastModified ?? validators.lastModified, movedTo };
  }
  if (!res.ok) {
    await discard(res);
    const status = `HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ""}`;
    // 429 and 503 say when to come back; asking sooner is what gets a poller banned.
    const retryAt = res.status === 429 || res.status === 503 ? parseRetryAfter(res.headers.get("retry-after"), now) : undefined;
    throw retryAt === undefined ? new FeedProblem(status) : new FeedProblem(`${status}, retry after ${new Date(retryAt).toISOString()}`, retryAt);
  }
  const bytes = await readBody(res, timeoutMs);
  return { kind: "http", xml: decodeFeedBytes(bytes, res.headers.get("content-type")).xml, etag, lastModified, movedTo };
}

/** Retry-After as epoch ms: delay-seconds or an HTTP-date (RFC 9110 10.2.3); undefined if neither. */
export function parseRetryAfter(value: string | null, now: number): number | undefined {
  const v = value?.trim();
  if (!v) return undefined;
  if (/^\d+$/.test(v)) return now + Number(v) * 1000;
  const t = Date.parse(v);
  return Number.isNaN(t) ? undefined : Math.max(t, now);
}

async function discard(res: Response): Promise<void> {
  try {
    await res.body?.cancel();
  } catch {
    // nothing to keep from a body we do not want
  }
}

async function readBody(res: Response, timeoutMs: number): Promise<Uint8Array> {
  const declared = Number(res.headers.get("content-length") ?? NaN);
  if (declared > MAX_FEED_BYTES) {
    await discard(res);
    throw new FeedProblem(`response is ${declared} bytes, more than the ${MAX_FEED_BYTES} allowed`);
  }
  if (!res.body) return new Uint8Array(0);
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.byteLength;
      if (total > MAX_FEED_BYTES) {
        await reader.cancel().catch(() => {});
        throw new FeedProblem(`response is more than the ${MAX_FEED_BYTES} bytes allowed`);
      }
      chunks.push(value);
    }
  } catch (err) {
    if (err instanceof FeedProblem) throw err;
    throw new FeedProblem(describeFetchError(err, timeoutMs));
  }
  return Buffer.concat(chunks);
}

function describeFetchError(err: unknown, timeoutMs: number): string {
  const name = (err as { name?: unknown })?.name;
  if (name === "TimeoutError") return `timed out after ${timeoutMs} ms`;
  if (name === "AbortError") return "request aborted";
  // undici reports "fetch failed" with the useful part (ECONNREFUSED, ENOTFOUND, ...) as cause.
  const cause = (err as { cause?: unknown })?.cause;
  return cause ? `${messageOf(err)} (${messageOf(cause)})` : messageOf(err);
}

function messageOf(err: unknown): string {
  const e = err as { code?: unknown; message?: unknown };
  const msg = typeof e?.message === "string" && e.message ? e.message : String(err);
  const text = typeof e?.code === "string" && !msg.includes(e.code) ? `${e.code}: ${msg}` : msg;
  return text.replace(/\s+/g, " ").trim();
}

// ---------------------------------------------------------------------------------------------
// Parsing

type RawItem = Record<string, unknown>;

// rss-parser turns an Atom <published>/<updated> it cannot parse into `new Date(x).toISOString()`,
// which throws and rejects the whole feed. Blank unparseable dates before it sees them.
const DATE_ELEMENTS = new Set(["published", "updated", "pubDate", "dc:date", "lastBuildDate"]);
function blankBadDates(value: unknown, name: string): unknown {
  return DATE_ELEMENTS.has(name) && typeof value === "string" && parseDate(value) === undefined ? "" : value;
}

async function parseFeed(xml: string): Promise<RawItem[]> {
  if (!xml.trim()) throw new FeedProblem("empty response");
  if (!xml.startsWith("<")) throw new FeedProblem(`not XML (begins "${htmlToText(xml.slice(0, 40))}")`);
  const parser = new Parser({ xml2js: { valueProcessors: [blankBadDates] } });
  try {
    const feed = await parser.parseString(xml);
    return (Array.isArray(feed.items) ? feed.items : []) as RawItem[];
  } catch (err) {
    // rss-parser rejects for broken XML and for XML that is not RSS/Atom (an HTML error page).
    throw new FeedProblem(`not a valid RSS or Atom feed: ${err instanceof TypeError ? missingPart(xml, err) : messageOf(err)}`);
  }
}

/**
 * rss-parser reads RSS and Atom without checking their parts are there, and fails with its own
 * TypeError ("Cannot read properties of undefined (reading '$')"): say which part is missing.
 */
function missingPart(xml: string, err: TypeError): string {
  const head = xml.slice(0, 4096);
  if (/<(rss|rdf:RDF)[\s>]/.test(head) && !/<channel[\s>/]/.test(xml)) return "it has no <channel>";
  if (/<feed[\s>]/.test(head)) return "an <entry> or <link> in it lacks what Atom requires (an empty <entry>, or a <link> without href?)";
  return `the parser failed on its structure (${err.message})`;
}

function parseDate(value: string | undefined): number | undefined {
  if (!value) return undefined;
  const t = Date.parse(value.trim());
  return Number.isNaN(t) ? undefined : t;
}

/** A field as a trimmed string; rss-parser leaves elements with attributes and no text as objects. */
function str(v: unknown): string | undefined {
  if (typeof v === "string") return v.trim() || undefined;
  if (v && typeof v === "object" && typeof (v as { _?: unknown })._ === "string") return str((v as { _: string })._);
  return undefined;
}

function itemTime(item: RawItem): number | undefined {
  return parseDate(str(item.isoDate)) ?? parseDate(str(item.pubDate)) ?? parseDate(str(item.date));
}

/** Newest first by date; undated items keep feed order after the dated ones (we cannot tell
 * they are new, and most feeds list newest first anyway). */
function newestFirst(items: RawItem[]): RawItem[] {
  return items
    .map((item, index) => ({ item, index, time: itemTime(item) ?? -Infinity }))
    .sort((a, b) => (b.time === a.time ? a.index - b.index : b.time - a.time))
    .map((x) => x.item);
}

function sha256(s: string): string {
  return createHash("sha256").update(s).digest("hex");
}

function boundedKey(prefix: string, value: string): string {
  const key = `${prefix}:${value}`;
  return key.length <= MAX_KEY_CHARS ? key : `${prefix}-sha256:${sha256(value)}`;
}

/**
 * One line for the ledger: "title: summary", or just one of them when the other repeats it
 * (many feeds put the headline, or its first words, in both).
 */
export function entryText(title: string, summary: string): string {
  const norm = (s: string) => s.replace(/\s+/g, " ").trim().toLowerCase();
  if (!title || !summary) return title || summary;
  if (norm(summary).startsWith(norm(title).replace(/[.!?…]+$/, ""))) return summary;
  if (norm(title).startsWith(norm(summary).replace(/[.!?…]+$/, ""))) return title;
  return `${title}: ${summary}`;
}

function toEntry(feedId: string, item: RawItem): FeedEntry | undefined {
  const title = htmlToText(str(item.title) ?? "");
  // RSS: rss-parser puts <description> in `content`; Atom: <summary> in `summary`, <content> in `content`.
  const summary = htmlToText(str(item.summary) ?? str(item.content) ?? str(item["content:encoded"]) ?? "");
  if (!title && !summary) return undefined; // nothing to read
  // Atom entries carry `id`, RSS items `guid`.
  const guid = oneLine(str(item.guid) ?? str(item.id));
  const link = oneLine(str(item.link));
  // Normalised so the same story re-sent with other markup, spacing or case hashes the same.
  const contentHash = sha256(`${title.normalize("NFC").toLowerCase()}\n${summary.normalize("NFC").toLowerCase()}`);
  const key = guid ? boundedKey("guid", guid) : link ? boundedKey("link", link) : `hash:${contentHash}`;
  const time = itemTime(item);
  const entry: FeedEntry = {
    feedId,
    key,
    title: sanitizeItem(title),
    text: sanitizeItem(entryText(title, summary)),
    contentHash,
  };
  if (guid) entry.guid = guid;
  if (link) entry.link = link;
  if (time !== undefined) entry.publishedAt = new Date(time).toISOString();
  return entry;
}

/**
 * An item with neither guid nor link is known only by its text, so a feed that keeps changing
 * one (a view counter, a corrected figure) would add a new item on every poll, each baked. Where
 * its title (with its date, when the feed dates it) is the only untagged one like it in the
 * fetch, that becomes its key, and a change is a revision like a guid's (it must settle, at most
 * maxRevisionsPerDay a day). The date keeps a recurring headline apart: Tuesday's "Weather" is
 * not an edit of Monday's. Titles shared in one fetch ("Update") stay keyed by text: one key for
 * two stories would lose one.
 */
function keyUntaggedByTitle(candidates: FeedEntry[]): void {
  const untagged = candidates.filter((e) => !e.guid && !e.link && e.title);
  const identity = (e: FeedEntry) => {
    const title = e.title.normalize("NFC").replace(/\s+/g, " ").trim().toLowerCase();
    return e.publishedAt ? `${title} @${e.publishedAt}` : title;
  };
  const count = new Map<string, number>();
  for (const e of untagged) count.set(identity(e), (count.get(identity(e)) ?? 0) + 1);
  for (const e of untagged) if (count.get(identity(e)) === 1) e.key = boundedKey("title", identity(e));
}

function oneLine(s: string | undefined): string | undefined {
  return s === undefined ? undefined : s.replace(/\s+/g, " ").trim().slice(0, 2048) || undefined;
}

// ---------------------------------------------------------------------------------------------
// Dedupe

/**
 * New = neither its key nor its content hash was seen before or earlier in this fetch.
 * A guid or link seen before whose text is another than the one taken for it (or, with none
 * recorded, a text never seen) is the feed changing an item: once the change settles (see
 * ItemRevisions) it comes back marked `revises` (and `revisesHash`, the text it replaces), for the
 * caller to supersede what it stored. A title counts only while the item stays listed under it.
 * Keys of every item still in the feed move to the recent end, so the bound only ever drops
 * items the feed no longer lists.
 */
function dedupe(
  candidates: FeedEntry[],
  state: FeedState,
  opts: { limit: number; now: number; maxRevisionsPerDay: number },
): { entries: FeedEntry[]; seenKeys: string[]; lastHashes: Record<string, string>; revisions: Record<string, ItemRevisions>; notes: string[] } {
  const previous = state.seenKeys;
  const seen = new Set(previous);
  const own = <T>(r: Readonly<Record<string, T>> | undefined, k: string): T | undefined => (r && Object.hasOwn(r, k) ? r[k] : undefined);
  const now = new Date(opts.now).toISOString();
  const inFetch = new Set<string>();
  const entries: FeedEntry[] = [];
  const hashes: Record<string, string> = {};
  const revisions: Record<string, ItemRevisions> = {};
  const notes: string[] = [];
  /** per key listed again in this fetch with a text not read before: how many such listings were passed over */
  const passedOver = new Map<string, number>();
  for (const entry of candidates) {
    const hashKey = `hash:${entry.contentHash}`;
    const keyed = entry.key !== hashKey; // a guid, link or title: the feed can change its text
    const keys = keyed ? [entry.key, hashKey] : [hashKey];
    const earlier = keys.some((k) => inFetch.has(k));
    const listedTwice = inFetch.has(entry.key);
    // A feed that gives several stories one guid (a broken CMS) loses all but the first for good:
    // their texts are marked seen. Say so, rather than drop news without a word.
    if (listedTwice && !inFetch.has(hashKey) && !seen.has(hashKey)) passedOver.set(entry.key, (passedOver.get(entry.key) ?? 0) + 1);
    for (const k of keys) inFetch.add(k);
    const taken = own(state.lastHashes, entry.key);
    // A title names an untagged item only while the feed keeps listing it under that title: with
    // no text recorded for it (the item left the feed, or another untagged item shared its title
    // in the last fetch) a title seen before may be another story's ("Weather" every day), so the
    // text alone says whether the entry is new, and it revises nothing.
    const lapsedTitle = entry.key.startsWith("title:") && taken === undefined;
    if (!earlier && !(lapsedTitle ? [hashKey] : keys).some((k) => seen.has(k))) entries.push(entry);
    // a key listed twice in one fetch: its first listing counts
    if (!keyed || listedTwice) continue;
    const before = own(state.revisions, entry.key);
    const recent = (before?.taken ?? []).filter((t) => opts.now - Date.parse(t) < DAY_MS);
    const changed =
      !earlier &&
      !lapsedTitle &&
      seen.has(entry.key) &&
      // with no text recorded for the key (an older state, or an item back in the window): a
      // text never seen, or the one already waiting
      (taken !== undefined ? taken !== entry.contentHash : !seen.has(hashKey) || before?.waiting?.hash === entry.contentHash);
    if (!changed) {
      hashes[entry.key] = entry.contentHash;
      if (recent.length) revisions[entry.key] = { taken: recent };
      continue;
    }
    if (taken !== undefined) hashes[entry.key] = taken;
    const waiting = before?.waiting;
    const held = before?.held && recent.length >= opts.maxRevisionsPerDay ? { held: true as const } : {};
    const keep = { ...(recent.length ? { taken: recent } : {}), ...held };
    if (waiting?.hash !== entry.contentHash) {
      // first read of this text: it must read the same on a later poll
      const unsettled = waiting ? (before?.unsettled ?? 0) + 1 : 0;
      revisions[entry.key] = { waiting: { hash: entry.contentHash, since: now }, ...(unsettled ? { unsettled } : {}), ...keep };
      if (unsettled + 1 === CHURN_NOTE_AFTER) {
        notes.push(
          `item ${entry.key} has read differently in ${CHURN_NOTE_AFTER} polls in a row (a counter or a time in its text?): ` +
            `kiln keeps the text it has, and takes a change once it reads the same ${SETTLE_MS / 60_000} minutes or more later`,
        );
      }
    } else if (opts.now - Date.parse(waiting.since) < SETTLE_MS) {
      // read again too soon to call it settled
      revisions[entry.key] = { waiting, ...(before?.unsettled ? { unsettled: before.unsettled } : {}), ...keep };
    } else if (recent.length >= opts.maxRevisionsPerDay) {
      revisions[entry.key] = { waiting, ...keep, held: true };
      if (!before?.held) {
        // the window frees when the revision that fills the cap turns a day old
        const until = new Date(Date.parse(recent[recent.length - opts.maxRevisionsPerDay]!) + DAY_MS).toISOString();
        notes.push(
          `item ${entry.key} was revised ${recent.length} times since ${recent[0]} (maxRevisionsPerDay ${opts.maxRevisionsPerDay}): ` +
            `its newest text waits until ${until}`,
        );
      }
    } else {
      entries.push({ ...entry, revises: true, ...(taken !== undefined ? { revisesHash: taken } : {}) });
      hashes[entry.key] = entry.contentHash;
      revisions[entry.key] = { taken: [...recent, now] };
    }
  }
  for (const [key, n] of passedOver) {
    notes.push(`item ${key} is listed with ${n + 1} different texts in one fetch: only the first (newest) was read, ${n} passed over (does the feed give several stories one ${key.slice(0, key.indexOf(":"))}?)`);
  }
  // candidates are newest first; seenKeys are most recent last.
  const touched = [...inFetch].reverse();
  const seenKeys = [...previous.filter((k) => !inFetch.has(k)), ...touched];
  return { entries, seenKeys: seenKeys.slice(-opts.limit), lastHashes: hashes, revisions, notes };
}
