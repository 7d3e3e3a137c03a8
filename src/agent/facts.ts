// Facts users state in conversation. Explicit "remember ..." and "forget ..." always win; plain
// first-person statements ("my name is ...", "I live in ...") are captured by rules and rewritten
// in the third person so they read as facts about the user when baked.

export type FactAction = { kind: "remember"; text: string } | { kind: "forget"; query: string };

const clean = (s: string) => s.trim().replace(/\s+/g, " ").replace(/[.!?\s]+$/, "");

function sentence(s: string): string {
  const t = clean(s);
  return t ? `${t[0]!.toUpperCase()}${t.slice(1)}.` : "";
}

const STATEMENTS: [RegExp, (m: RegExpMatchArray) => string][] = [
  [/\bmy name is ([^,.!?\n]{2,60})/i, (m) => `The user's name is ${clean(m[1]!)}.`],
  [/\bi live in ([^,.!?\n]{2,60})/i, (m) => `The user lives in ${clean(m[1]!)}.`],
  [/\bi work (?:at|for) ([^,.!?\n]{2,60})/i, (m) => `The user works at ${clean(m[1]!)}.`],
  [/\bi work as (?:an? )?([^,.!?\n]{2,60})/i, (m) => `The user works as ${clean(m[1]!)}.`],
  [/\bmy favou?rite ([a-z ]{2,30}) is ([^,.!?\n]{2,60})/i, (m) => `The user's favorite ${clean(m[1]!)} is ${clean(m[2]!)}.`],
  [/\bi(?:'m| am) allergic to ([^,.!?\n]{2,60})/i, (m) => `The user is allergic to ${clean(m[1]!)}.`],
];

/** What a user message asks kiln to remember or forget; empty when it states nothing. */
export function extractFacts(message: string): FactAction[] {
  const text = message.trim();
  const forget = text.match(/^(?:please\s+)?forget(?:\s+(?:that|about))?\s+(.+)$/i);
  if (forget) return [{ kind: "forget", query: clean(forget[1]!) }];
  const remember = text.match(/^(?:please\s+)?remember(?:\s+that)?[:\s]+(.+)$/is);
  if (remember) {
    const fact = sentence(remember[1]!);
    return fact ? [{ kind: "remember", text: fact }] : [];
  }
  const out: FactAction[] = [];
  for (const [re, make] of STATEMENTS) {
    const m = text.match(re);
    if (m) out.push({ kind: "remember", text: make(m) });
  }
  return out;
}
