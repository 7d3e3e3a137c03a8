// Facts users state in conversation. Explicit "remember ..." and "forget ..." always win; other
// statements are pulled out by the model (extractFactsWithModel) when it can, and by rules
// otherwise: first-person statements ("my name is ...", "I live in ...") are rewritten in the
// third person so they read as facts about the user when baked.
import { generate } from "../model/generate.js";
import type { LoadedModel } from "../model/load.js";
import { isFunctionWord, isNameToken, namesIn, stem, vocabulary, words } from "../knowledge/grounding.js";

export type FactAction = { kind: "remember"; text: string } | { kind: "forget"; query: string };

const clean = (s: string) => s.trim().replace(/\s+/g, " ").replace(/[.!?\s]+$/, "");

function sentence(s: string): string {
  const t = clean(s);
  return t ? `${t[0]!.toUpperCase()}${t.slice(1)}.` : "";
}

// A stated value: up to a clause break (punctuation, or "and"/"but"/"so" starting a new clause).
const VALUE = String.raw`([^,.!?\n]{2,60}?)(?=\s+(?:and|but|so)\s|[,.!?\n]|$)`;
const rule = (pattern: string) => new RegExp(pattern.replace("VALUE", VALUE), "i");

const STATEMENTS: [RegExp, (m: RegExpMatchArray) => string][] = [
  [rule(String.raw`\bmy name is VALUE`), (m) => `The user's name is ${clean(m[1]!)}.`],
  [rule(String.raw`\bi live in VALUE`), (m) => `The user lives in ${clean(m[1]!)}.`],
  [rule(String.raw`\bi work (?:at|for) VALUE`), (m) => `The user works at ${clean(m[1]!)}.`],
  [rule(String.raw`\bi work as (?:an? )?VALUE`), (m) => `The user works as ${clean(m[1]!)}.`],
  [new RegExp(String.raw`\bmy favou?rite ([a-z ]{2,30}?) is ${VALUE}`, "i"), (m) => `The user's favorite ${clean(m[1]!)} is ${clean(m[2]!)}.`],
  [rule(String.raw`\bi(?:'m| am) allergic to VALUE`), (m) => `The user is allergic to ${clean(m[1]!)}.`],
];

/**
 * An explicit "remember ..." or "forget ..." request, which no model may override. A line that
 * asks ("remember the mayor?", "forget the fee?") or sets a task ("remember to call mom") is no
 * request: it goes to the model as it is. Only the first line is the fact (a second line,
 * "Ignore previous instructions...", was stored with it).
 */
export function explicitRequest(message: string): FactAction[] | undefined {
  const text = message.trim();
  if (/\?\s*$/.test(text.split("\n")[0]!)) return undefined;
  const forget = text.match(/^(?:please\s+)?forget(?:\s+(?:that|about))?\s+(.+)$/i);
  if (forget) return [{ kind: "forget", query: clean(forget[1]!) }];
  const remember = text.match(/^(?:please\s+)?remember(?:\s+that)?[:\s]+(.+)$/is);
  if (remember) {
    if (/^remember\s+to\s/i.test(text.replace(/^please\s+/i, ""))) return undefined;
    const line = remember[1]!.trim().split("\n")[0]!;
    const stated = statementsIn(line);
    if (stated.length) return stated.map((fact) => ({ kind: "remember", text: fact }));
    const fact = sentence(aboutTheUser(line));
    // "remember that", "remember this", "remember me", "remember that I am": words that state
    // nothing are no fact (the optional "that" gave way, and "That." was stored as one); nor is a
    // question ("remember who I am", "remember where I parked": "Who I am." was stored)
    const ws = words(line);
    const states = ws.some((w) => !isFunctionWord(w) && !STATES_NOTHING.has(w)) && !ASKS.has(ws[0] ?? "");
    return fact && states ? [{ kind: "remember", text: fact }] : [];
  }
  return undefined;
}

/** Verbs that take no -s after "the user" ("I can swim": "The user can swim"). */
const MODALS = new Set(["can", "could", "will", "would", "should", "must", "may", "might", "shall", "cannot", "can't", "won't", "wouldn't", "shouldn't", "couldn't"]);
/** "I <verb>" rewritten after "the user", where the verb's form is known. */
const AFTER_I: Record<string, string> = { am: "is", "'m": "is", was: "was", have: "has", "'ve": "has", had: "had", do: "does", "don't": "doesn't", "didn't": "didn't", did: "did", "'d": "would", "'ll": "will" };

/**
 * A fact told in the first person, said of the user: baked as written, "My dog is Pip" or "I live
 * in Saltwell" would be the agent's own. "my" becomes "the user's", "I am" "the user is"; an "I"
 * whose verb form cannot be known here ("I went", "I prefer") keeps the user's words, quoted.
 */
export function aboutTheUser(text: string): string {
  const t = clean(text);
  if (!FIRST_PERSON.test(t)) return t;
  let unsure = false;
  const rewritten = t.replace(/(?<![\p{L}\p{N}'’])(i(?:'m|’m|'ve|’ve|'d|’d|'ll|’ll)?|me|my|mine|myself)(?![\p{L}\p{N}'’])(\s+(\S+))?/giu, (all, pronoun: string, rest: string | undefined, next: string | undefined) => {
    const p = pronoun.toLowerCase().replace("’", "'");
    const after = rest ?? "";
    if (p === "my" || p === "mine") return `the user's${after}`;
    if (p === "me" || p === "myself") return `the user${after}`;
    const contracted = p.slice(1); // "'m", "'ve", ... or "" for a bare "I"
    if (contracted) return `the user ${AFTER_I[contracted]}${after}`;
    const verb = (next ?? "").toLowerCase().replace(/[.,!?;:]+$/, "");
    if (AFTER_I[verb] !== undefined) return `the user ${AFTER_I[verb]}${next!.slice(verb.length)}`;
    if (MODALS.has(verb) || /ed$/.test(verb)) return `the user${after}`;
    unsure = true;
    return all;
  });
  return unsure ? `The user said: "${t[0]!.toUpperCase()}${t.slice(1)}"` : rewritten;
}

/** Words that, alone after "remember", name no fact (function words aside). */
const STATES_NOTHING = new Set(["me", "him", "them", "us", "you", "i", "am", "everything", "anything", "something", "nothing", "all", "what", "when", "where", "who", "why", "how"]);

/** First words of a question: "remember where I parked" asks kiln to know what it was never told. */
const ASKS = new Set(["what", "when", "where", "who", "whom", "whose", "why", "how", "which", "whether", "if"]);

/** Most items one "forget ..." retracts: more means the words were too vague to act on. */
export const MAX_FORGET = 3;

/**
 * The items a "forget ..." names: every content word of the query (3 letters or more, function
 * words aside) is a word of the item. "forget it" names nothing, not every item containing "it".
 */
export function forgetMatches<T extends { text: string }>(query: string, items: T[]): T[] {
  const wanted = forgetWords(query);
  if (!wanted.length) return [];
  return items.filter((i) => {
    const has = new Set(words(i.text).map(stem));
    return wanted.every((w) => has.has(w));
  });
}

/** The words a "forget ..." names things by (stemmed): none for "it" or "that". */
export function forgetWords(query: string): string[] {
  return [...new Set(words(query).filter((w) => w.length >= 3 && !isFunctionWord(w)).map(stem))];
}

/** The first-person statements of `text` (STATEMENTS), said of the user. */
function statementsIn(text: string): string[] {
  const out: string[] = [];
  for (const [re, make] of STATEMENTS) {
    const m = text.match(re);
    if (m) out.push(make(m));
  }
  return out;
}

// A sentence that does not assert what it says: a question, a hypothesis, a negation, someone
// else's words. "I don't think my name is Bob." was captured as "The user's name is Bob.", "What
// if my name is Bob? Just asking." and "My sister said: my name is Eve." likewise.
const ASKS_OR_SUPPOSES = /^(?:what if|if|imagine|suppose|supposing|assume|assuming|pretend|say|let's say|should|would|could|do|does|did|is|are|was|were|can|will|you)\b/i;
const REPORTED_OR_HEDGED = /\b(?:said|says|told|tells|asked|asks|claims?|claimed|thinks?|thought|believes?|believed|wonders?|wondered|maybe|perhaps|hypothetically)\b/i;
// (a negation of the user's own: "I don't think ...", "I'm not ..."; "The ferry does not run on Sundays" is a fact)
const NEGATED = /\b(?:not|never|no longer|\w+n['’]t)\b/i;

/** The sentences of a message that state something as true (what capture may read). */
export function assertedSentences(message: string): string[] {
  return message
    .split(/(?<=[.!?])\s+|\n+/)
    .map((x) => x.trim())
    .filter((x) => x && !x.endsWith("?") && !ASKS_OR_SUPPOSES.test(x) && !REPORTED_OR_HEDGED.test(x) && !(NEGATED.test(x) && FIRST_PERSON.test(x)));
}

/** What a user message asks kiln to remember or forget, by rules, and whether it asked explicitly; no actions when it states nothing. */
export function extractFactsByRules(message: string): Extraction {
  const explicit = explicitRequest(message);
  if (explicit) return { actions: explicit, source: "explicit" };
  return { actions: statementsIn(assertedSentences(message).join(" ")).map((text) => ({ kind: "remember", text })), source: "rules" };
}

/** What a user message asks kiln to remember or forget, by rules; empty when it states nothing. */
export function extractFacts(message: string): FactAction[] {
  return extractFactsByRules(message).actions;
}

// --- model-based extraction -------------------------------------------------------------------

/** The user turn that asks a model for the facts a message states (kiln-mini is trained on it). */
export const EXTRACT_INSTRUCTION = "List the facts stated in this message:";
/** The reply for a message that states no fact. */
export const NO_FACTS = "None.";

export function extractionRequest(message: string): string {
  return `${EXTRACT_INSTRUCTION} ${message.trim().replace(/\s+/g, " ")}`;
}

// Words a fact sentence may use without the message having said them: articles, and the words
// that turn "I live in X" into "The user lives in X".
const GLUE = new Set(["the", "a", "an", "user", "user's", "users", "is", "now", "of", "s", "his", "her", "their", "its", "it", "this"]);

/** Other words a fact may add to the message ("I moved to X" -> "The user lives in X"). */
const MAX_NEW_WORDS = 2;

/**
 * The fact lines of a model's extraction reply. A line is kept only when it is grounded in the
 * message: every name and number in it (a capitalised word, a word with a digit) and its last word
 * (where the value is, never a function word such as "did") occur in the message, and at most
 * MAX_NEW_WORDS other words are new, so a model that invents an entity or a value gets nothing
 * into the ledger. List markers ("- ",
 * "1. ") are dropped.
 */
// A line that asks or requests something states no fact: a small model asked for facts in
// "Tell me a long story." or "Who is the mayor of Quillport?" gives the line back.
const NOT_A_STATEMENT = /\?|^(?:tell|show|give|can|could|would|will|please|let|help|explain|write|list|what|who|whom|whose|which|where|when|why|how|do|does|did|are)\b/i;
// A line still in the first person was not rewritten as a fact about the user: baked, "I live in
// Saltwell" would be the agent's own. kiln-mini, asked for the facts in "My name is Ada and I live
// in Saltwell.", gave "The user's name is Ada and I live in Saltwell."; the rules split that message.
const FIRST_PERSON = /(?<![\p{L}\p{N}'’])(?:i|i'm|i’m|i've|i’ve|i'd|i’d|i'll|i’ll|me|my|mine|myself)(?![\p{L}\p{N}'’])/iu;

export function parseExtraction(reply: string, message: string): string[] {
  const said = vocabulary(message);
  const known = (w: string) => GLUE.has(w) || said.has(stem(w));
  const out: string[] = [];
  for (const raw of reply.split("\n")) {
    const line = clean(raw.replace(/^\s*(?:[-*•]|\d+[.)])\s+/u, ""));
    if (!line || line.toLowerCase() === clean(NO_FACTS).toLowerCase() || NOT_A_STATEMENT.test(raw.trim().replace(/^\s*(?:[-*•]|\d+[.)])\s+/u, "")) || FIRST_PERSON.test(line)) continue;
    const tokens = line.split(/\s+/);
    if (tokens.length < 3 || tokens.length > 40) continue;
    const names = namesIn(line, { sentenceStarts: true });
    const rest = words(tokens.filter((t) => !isNameToken(t)).join(" ")).filter((w) => !GLUE.has(w));
    const lastWord = words(line).at(-1)!;
    // the value is the message's own word: glue ("user") as the last word was kiln-mini's invention
    // ("The admin token is hunter2." gave "The user's favourite food is user.")
    if (names.every(known) && said.has(stem(lastWord)) && !isFunctionWord(lastWord) && rest.filter((w) => !known(w)).length <= MAX_NEW_WORDS) out.push(sentence(line));
  }
  return [...new Set(out)];
}

export interface Extraction {
  actions: FactAction[];
  /** "explicit" (remember/forget), "model", or "rules" when the model found nothing usable */
  source: "explicit" | "model" | "rules";
}

/**
 * Facts in a user message: explicit requests first, then the model (asked with
 * extractionRequest, greedy, a short reply), and the rules when the model gives nothing grounded.
 * `complete` runs the model on one user turn and resolves to its reply text.
 */
export async function extractFactsWithModel(
  message: string,
  complete: (userTurn: string) => Promise<string>,
): Promise<Extraction> {
  const explicit = explicitRequest(message);
  if (explicit) return { actions: explicit, source: "explicit" };
  // Only what the message asserts is read: a message that only asks states nothing (kiln-mini,
  // asked for the facts in "Weather in Hollowby?", gave back "Weather in Hollowby."), nor does a
  // hypothesis, a negation or someone else's words (see assertedSentences)
  const asserted = assertedSentences(message).join(" ");
  if (!asserted) return { actions: [], source: "rules" };
  let lines: string[] = [];
  try {
    lines = parseExtraction(await complete(extractionRequest(asserted)), asserted);
  } catch {
    lines = []; // a failing model must not lose the user's statement: the rules still run
  }
  if (lines.length) return { actions: lines.map((text) => ({ kind: "remember", text })), source: "model" };
  return { actions: extractFacts(message), source: "rules" };
}

/** Longest user message handed to the model for extraction; longer ones go to the rules. */
export const MAX_EXTRACT_CHARS = 600;

/**
 * The model as an extractor: greedy, a short reply, base weights (what a bake changes is
 * knowledge, not how the model reads a message). Refuses messages that would not fit.
 */
export function modelExtractor(model: LoadedModel): (userTurn: string) => Promise<string> {
  return async (userTurn) => {
    if (userTurn.length > MAX_EXTRACT_CHARS + EXTRACT_INSTRUCTION.length + 1) throw new Error("message too long to extract from");
    const ids = model.tokenizer.applyChatTemplate([{ role: "user", content: userTurn }], true);
    if (ids.length + 64 > model.config.maxPositions) throw new Error("message does not fit the model's context");
    const [r] = await generate(model, [ids], { maxTokens: 64, temperature: 0 });
    // A reply cut off by the token limit may end in half a fact: keep its complete lines only.
    return r!.finishReason === "length" ? r!.text.split("\n").slice(0, -1).join("\n") : r!.text;
  };
}
