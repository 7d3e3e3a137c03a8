// News updates facts ("Lisa Yewby now owns a pet cat." after "...a pet dog."). Whether a newer
// item replaces an older one is asked of the model when a bake starts (bake/probes.ts,
// findSupersessions); this picks the pairs worth asking about and says which of two is newer.
import { entitiesIn, isFunctionWord, isTimeWord, root, stem, withoutLabels, words } from "./grounding.js";
import type { Item } from "./ledger.js";

/** Pairs asked about per bake, at most: each costs a few greedy replies of the base model. */
export const MAX_UPDATE_PAIRS = 48;

/**
 * Stems the texts write in lower case somewhere. A word written so is no name where a sentence
 * starts with it: "Mayor of Gulldale is Ewyn Craneridge." beside "The mayor of Gulldale is ...".
 * Each word is read on its own: "pro-Gulldale" writes "pro" in lower case, not "Gulldale".
 */
export function lowerCaseWords(texts: readonly string[]): Set<string> {
  return new Set(texts.flatMap((t) => t.match(/[\p{L}\p{N}']+/gu) ?? []).filter((w) => !/\p{Lu}|\p{N}/u.test(w)).map(stem));
}

/** The names of a text (stemmed); a sentence's first word not when the texts around it write it in lower case. */
function namesIn(text: string, lower: ReadonlySet<string>): Set<string> {
  return new Set(entitiesIn(text, lower).map(stem));
}

/** Words of a text that are neither names, function words nor time words: what it says about its names. */
export function relationWords(labelled: string, lower: ReadonlySet<string> = lowerCaseWords([labelled])): Set<string> {
  const text = withoutLabels(labelled); // ("Update:" says nothing of the names)
  const names = namesIn(text, lower);
  return new Set(words(text).filter((w) => !isFunctionWord(w) && !isTimeWord(w) && !names.has(stem(w))).map(root));
}

/**
 * Each relation word of a text with the words that follow it: a name as "#", the end of its
 * sentence as "$". Words that say when are passed over ("lives now in" is used as "lives in").
 */
function relationFollowers(labelled: string, lower: ReadonlySet<string>): Map<string, string[]> {
  const text = withoutLabels(labelled);
  const names = namesIn(text, lower);
  const relation = relationWords(text, lower);
  const out = new Map<string, string[]>();
  // sentences end at . ! ? ; (and any closing quote or bracket) before a space or the end ("2.5" and "342,900" go on)
  for (const sentence of text.split(/[.!?;]+["'\u2019\u201D)\]]*(?=\s|$)/u)) {
    const ws = words(sentence).filter((w) => !isTimeWord(w)).map((w) => (names.has(stem(w)) ? "#" : w));
    ws.forEach((w, k) => {
      if (w !== "#" && relation.has(root(w))) out.set(root(w), [...(out.get(root(w)) ?? []), ws[k + 1] ?? "$"]);
    });
  }
  return out;
}

/** A word after a relation word that may be the value itself: a name or a content word ("a pet dog", "favourite dish"). */
const mayBeValue = (w: string) => w === "#" || (w !== "$" && !isFunctionWord(w));
const sameWord = (a: string, b: string) => a === b || (a !== "#" && a !== "$" && root(a) === root(b));

/**
 * Whether two items say something of the same kind about their names ("owns a pet", "mayor"): a
 * relation word they share, used the same way. The word after it is the same ("works as a chemist"
 * and "is now working as a pharmacist") or, in both, may be the value ("a pet dog" and "a pet
 * cat"). A shared word followed by different small words is another relation: "works at
 * Northgate Motors" and "works as a geologist", "a town in Lindor" and "a twin town of Hollowby",
 * "founded in 1887" and "founded by Ada Quill", "has started playing" and "has started a new job"
 * (each pair replaced its true fact in a soak or in tools/eval_updates.ts while any shared word counted).
 * `lower`: words written in lower case around them (lowerCaseWords), by default in the two texts.
 */
export function shareRelation(a: string, b: string, lower: ReadonlySet<string> = lowerCaseWords([a, b])): boolean {
  const theirs = relationFollowers(b, lower);
  return [...relationFollowers(a, lower)].some(([w, next]) =>
    next.some((x) => (theirs.get(w) ?? []).some((y) => sameWord(x, y) || (mayBeValue(x) && mayBeValue(y)))),
  );
}

/**
 * When an item's news is from: the date its feed gave, else when kiln stored it. Never later than
 * when it was stored: a feed dating its items ahead (a wrong clock or time zone, or on purpose)
 * would have them baked before all other news and never expire.
 */
export function newsTime(i: Item): number {
  const published = Date.parse(i.source.publishedAt ?? "");
  const stored = Date.parse(i.createdAt);
  return Number.isFinite(published) ? Math.min(published, stored) : stored;
}

/**
 * One feed poll's items share their createdAt and are stored in the order the feed lists them,
 * newest first (feeds/feeds.ts, newestFirst: items of one date keep the feed's order).
 */
const onePoll = (a: Item, b: Item) => a.source.feedId !== undefined && a.source.feedId === b.source.feedId && a.createdAt === b.createdAt;

/**
 * [older id, newer id] for each new item and each other item that names one of its names (an
 * update is about the same person, town or company) and shares a relation word with it, older by
 * news time, then by ledger order (stored earlier is older, except within one feed poll, which
 * stores the newest first).
 * The newest new items' pairs come first when there are more than `max`.
 */
export function updatePairs(fresh: readonly Item[], known: readonly Item[], ledgerOrder: readonly Item[], max = MAX_UPDATE_PAIRS): [string, string][] {
  const rank = new Map(ledgerOrder.map((i, k) => [i.id, k]));
  const stored = (a: Item, b: Item) => (rank.get(a.id) ?? 0) - (rank.get(b.id) ?? 0);
  const newer = (a: Item, b: Item) => newsTime(a) - newsTime(b) || (onePoll(a, b) ? -stored(a, b) : stored(a, b));
  const pool = [...new Map([...fresh, ...known].map((i) => [i.id, i])).values()];
  // A pair is read from its two texts alone, as findSupersessions reads it (shareRelation of the
  // two): a capitalised first word is no name where either writes it in lower case, whatever other
  // items write ("Ada Brook took a long bath." leaves "Bath has 3 museums." naming Bath). Most
  // items' names are the same beside any text (no first word they could drop): kept once.
  const reads = new Map<string, { lower: Set<string>; names: Set<string> | null }>();
  const readOf = (i: Item) => {
    let read = reads.get(i.id);
    if (!read) {
      const loose = namesIn(i.text, new Set());
      const fixed = loose.size === namesIn(i.text, new Set(words(i.text).map(stem))).size;
      reads.set(i.id, (read = { lower: lowerCaseWords([i.text]), names: fixed ? loose : null }));
    }
    return read;
  };
  const namesBeside = (i: Item, other: Item) => readOf(i).names ?? namesIn(i.text, new Set([...readOf(i).lower, ...readOf(other).lower]));
  const pairs = new Map<string, [string, string]>();
  for (const n of [...fresh].sort((a, b) => newer(b, a))) {
    for (const other of pool) {
      if (other.id === n.id || other.text === n.text) continue;
      const mine = namesBeside(n, other);
      if (![...namesBeside(other, n)].some((w) => mine.has(w)) || !shareRelation(other.text, n.text)) continue;
      const [o, x] = newer(other, n) < 0 ? [other, n] : [n, other];
      pairs.set(`${o.id} ${x.id}`, [o.id, x.id]);
      if (pairs.size >= max) return [...pairs.values()];
    }
  }
  return [...pairs.values()];
}

/**
 * The held items a bake must send along for its pairs, besides those it already bakes or scores
 * (`inJob`): either side of a pair. A held item is the newer news when a pending one is dated
 * before it (a feed delivering late, an archive's first poll), and a pair the worker has only one
 * item of is never asked about: the stale item would be baked as news.
 */
export function pairedHeldItems(pairs: readonly [string, string][], held: readonly Item[], inJob: ReadonlySet<string>): Item[] {
  const paired = new Set(pairs.flat());
  return held.filter((i) => !inJob.has(i.id) && paired.has(i.id));
}
