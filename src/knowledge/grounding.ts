// Whether a line a model wrote is grounded in a source text: its names and numbers occur there.
// A small model invents entities and values freely; kiln keeps what it wrote (an extracted fact,
// a probe question, a probe's answer) only when the source supports it.

/** Lower-cased words (letters, digits, apostrophes) of a text. */
export const words = (s: string): string[] => s.toLowerCase().match(/[\p{L}\p{N}']+/gu) ?? [];

/** A crude stem, so "lives" matches "live" and "Hollowby's" matches "Hollowby". */
export const stem = (w: string): string => w.replace(/'s$/, "").replace(/(?<=\p{L}{3})s$/u, "");

/** A whitespace token that names something: capitalised, or holding a digit. */
export const isNameToken = (t: string): boolean => /^\P{L}*\p{Lu}|\p{N}/u.test(t);

/**
 * The name and number words of a text. A capitalised word that starts a sentence ("Who", "The")
 * counts only when `sentenceStarts` is set, and then not when `lowerCase` holds its stem (words
 * written in lower case elsewhere: "Mayor of Gulldale ..." beside "the mayor of"), unless a name
 * follows it ("Ada Brook"). "I" never counts.
 */
export function namesIn(text: string, o: { sentenceStarts?: boolean; lowerCase?: ReadonlySet<string> } = {}): string[] {
  const tokens = text.trim().split(/\s+/).filter(Boolean);
  const startsSentence = (k: number) => startsSentenceAt(tokens, k);
  // a name after it counts only within its sentence ("Update: Mayor of ..." has none after "Update:")
  const nameFollows = (k: number) => k + 1 < tokens.length && !startsSentence(k + 1) && isNameToken(tokens[k + 1]!);
  const common = (t: string, k: number) => !!o.lowerCase && !nameFollows(k) && words(t).every((w) => o.lowerCase!.has(stem(w)));
  return tokens
    .filter((t, k) => /\p{N}/u.test(t) || (isNameToken(t) && !isLabel(tokens, k) && (startsSentence(k) ? o.sentenceStarts && !common(t, k) : true)))
    .flatMap(words)
    .filter((w) => w !== "i");
}

/**
 * What news puts before a sentence to say what kind it is ("Update: ...", "BREAKING: ..."): no
 * name, though capitalised at a sentence start. Two updates of unrelated facts shared "update"
 * and were paired as updates of each other where no text wrote the word in lower case. A
 * dateline ("QUILLPORT: ...") is a name and stays one.
 */
const LABELS = new Set("update updated correction corrected clarification breaking developing exclusive analysis opinion editorial live watch video photos report recap explainer".split(" "));

/** Whether tokens[k] (a text split at whitespace) starts a sentence: after . ! ? : and any closing quote or bracket, straight or curly (as updates.ts splits sentences). */
function startsSentenceAt(tokens: readonly string[], k: number): boolean {
  return k === 0 || /[.!?:]["'\u2019\u201D)\]]*$/u.test(tokens[k - 1]!);
}

/** Whether tokens[k] (a text split at whitespace) is a label before a sentence ("Update:"). */
function isLabel(tokens: readonly string[], k: number): boolean {
  const t = tokens[k]!;
  return startsSentenceAt(tokens, k) && t.endsWith(":") && LABELS.has(t.toLowerCase().replace(/:$/, ""));
}

/**
 * The text without its labels before sentences: what it says. A label is no name, nor does it
 * say what a text says of its names ("Update:" before two unrelated facts of one person is no
 * relation they share).
 */
export function withoutLabels(text: string): string {
  const tokens = text.trim().split(/\s+/).filter(Boolean);
  return tokens.filter((_, k) => !isLabel(tokens, k)).join(" ");
}

/** Words the source says, stemmed, to test others against. */
export function vocabulary(source: string): Set<string> {
  return new Set(words(source).map(stem));
}

/** Every name and number of `line` (sentence starts aside) occurs in the source. */
export function namesGrounded(line: string, source: Set<string>): boolean {
  return namesIn(line).every((w) => source.has(stem(w)));
}

// Function words that say nothing about which fact a line is about. Pronouns among them: "He" at
// a sentence start was taken for a name, pairing two unrelated items about "he" as an update.
const STOP = new Set(
  "a an the of in on at to for from by with is are was were be been has have had do does did what who whom whose which where when why how and or but it its this that these those there their his her as into about he she they we you him them us our your".split(" "),
);

/** A word that names nothing ("the", "did", "which"): never a fact's value. */
export const isFunctionWord = (w: string): boolean => STOP.has(w.toLowerCase());

/**
 * The names and numbers of a text, a sentence's first word included unless a function word or a
 * word `lowerCase` holds (see namesIn).
 */
export function entitiesIn(text: string, lowerCase?: ReadonlySet<string>): string[] {
  // "US" is the country: with "us" among the function words it was no name, and two items about
  // the US no update of each other
  const us = /(?<![\p{L}\p{N}'])US(?![\p{L}\p{N}'])/u.test(text);
  return namesIn(text, { sentenceStarts: true, lowerCase }).filter((w) => !STOP.has(w) || (us && w === "us"));
}

/**
 * "working", "worked", "works" -> "work": a relation is written in several tenses. A consonant
 * doubled before the ending is one ("twinned" -> "twin", "planning" -> "plan"); l, s and z are
 * often doubled in the word itself ("selling", "missed", "buzzed").
 */
export const root = (w: string): string => {
  const bare = stem(w).replace(/(?<=\p{L}{3})(ing|ed)$/u, "");
  return bare === stem(w) ? bare : bare.replace(/([b-df-hj-km-rtv-y])\1$/u, "$1");
};

/**
 * Words that say when, not what: news of any kind is told with them ("Lisa Yewby now owns a pet
 * dog.", "... works at Oakwind Bakeries now."), so two facts sharing one are not of one relation.
 */
const TIME_WORDS = new Set("now newly currently recently lately today still since again already just anymore longer yet".split(" "));

export const isTimeWord = (w: string): boolean => TIME_WORDS.has(w.toLowerCase());

// "lives", "lived", "living" -> "liv": root() keeps a final e the -ed and -ing forms drop
const form = (w: string) => root(w).replace(/e$/, "");

/**
 * The words of a line that say something its source does not: not function or time words, and
 * not the source's own words in another tense or number. An answer with any says more than its
 * item ("The population of Gulldale is Ewyn Craneridge." from "The new mayor of Gulldale is Ewyn
 * Craneridge.": "population").
 */
export function unsupportedWords(line: string, source: string): string[] {
  const said = new Set(words(source).map(form));
  return words(line).filter((w) => !STOP.has(w) && !isTimeWord(w) && !said.has(form(w)));
}

/** The share of a line's content words that the source says (1 when it has none). */
export function support(line: string, source: Set<string>): number {
  const content = words(line).filter((w) => !STOP.has(w));
  if (!content.length) return 1;
  return content.filter((w) => source.has(stem(w))).length / content.length;
}
