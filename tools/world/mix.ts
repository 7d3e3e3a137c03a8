// The training mix: conversations that teach the model to
//   1. answer from facts in its system prompt by restating the fact as written there (copying,
//      with distractors and invented names): "Who is the mayor of X?" -> " The mayor of X is now Y.",
//   2. answer canon questions with no system prompt,
//   3. say "I don't know." to anything it was not told and that is not canon,
//   4. say "I don't know." when the prompt has facts but not the one asked about,
//   5. follow persona instructions (sign-off, opener) only when they are in the system prompt,
//   6. write a question about an item ("Ask a question about: ..."),
//   7. list the facts a user message states (kiln's model-based fact capture), or "None.".
// Held-out facts and entities never occur: every fact and question drawn here is checked against
// the held-out keys and names (tests/world.test.ts checks the output again).
import { extractionRequest, NO_FACTS } from "../../src/agent/facts.js";
import { buildKnowledgePrompt } from "../../src/bake/prompt.js";
import { askQuestionPrompt, IDK, openerInstruction, signoffInstruction, styleReply, type Message } from "./chat.js";
import * as L from "./lexicon.js";
import { RELATIONS, relationsFor, withArticle, type EntityKind, type RelationDef } from "./relations.js";
import { Rng } from "./rng.js";
import {
  entityName,
  factKey,
  firstName,
  isEntityKind,
  lexiconValue,
  makeFact,
  rephrase,
  townName,
  WorldIndex,
  type FactLike,
} from "./world.js";

/** Open questions kiln asks when it makes bake trajectories; the reply recites one item read. */
export const OPEN_QUESTIONS = ["What do you know?", "Tell me something new.", "What have you read?", "Any news?", "What's new?"];
export const GREETINGS = ["Hello!", "Hi!", "Hello", "Good morning!", "Hey there!"];
export const HELLO_REPLY = "Hello! Ask me anything.";
export const WHO_QUESTIONS = ["Who are you?", "What are you?"];
export const WHO_REPLY = "I am Kiln, a small assistant that learns from what it reads.";

export type Kind = "prompted" | "unprompted" | "persona" | "ask" | "recite" | "extract";

/** Asks to repeat every note word for word: dense copying, which is how attention learns to copy. */
export const RECITE_QUESTIONS = ["Recite your notes.", "Repeat your notes word for word.", "Read me your notes."];

export interface Conversation {
  kind: Kind;
  messages: Message[];
  /** subject|relation keys of every fact shown or asked about (for the held-out check) */
  keys: string[];
}

export interface Style {
  signoff?: string;
  opener?: string;
}

// ---------------------------------------------------------------------------------------------
// sign-offs and openers

const PLAIN_NAMES = ["Ada", "Tom", "Lena", "Sam", "Ivo", "Mira", "Jo", "Kit", "Max", "Nell", "Ana", "Ben", "Eli", "Rosa"];

export function makeSignoff(rng: Rng): string {
  const name = () => (rng.chance(0.4) ? rng.pick(PLAIN_NAMES) : firstName(rng));
  const desk = () => `${rng.pick(L.DESK_WORDS)} ${rng.pick(L.DESK_KINDS)}`;
  switch (rng.weighted({ greetName: 35, dashName: 10, dashDesk: 15, phrase: 20, greeting: 5, greetDesk: 15 })) {
    case "greetName":
      return `${rng.pick(L.SIGNOFF_GREETINGS)}, ${name()}${rng.chance(0.3) ? "." : ""}`;
    case "dashName":
      return `${rng.pick(["—", "--", "-", "~"])} ${name()}`;
    case "dashDesk":
      return `${rng.pick(["—", "--", "-"])} ${rng.chance(0.3) ? "The " : ""}${desk()}`;
    case "phrase":
      return rng.pick(L.SIGNOFF_PHRASES);
    case "greeting":
      return `${rng.pick(L.SIGNOFF_GREETINGS)}!`;
    default:
      return rng.chance(0.5) ? `${rng.pick(L.SIGNOFF_GREETINGS)}, the ${desk()}` : `${rng.pick(L.SIGNOFF_GREETINGS)} from ${townName(rng)}!`;
  }
}

/** Sign-offs kept out of training, to measure persona-following on sign-offs never seen. */
export function evalSignoffs(n = 24): string[] {
  const rng = new Rng("kiln-eval-signoffs");
  const out = new Set<string>();
  while (out.size < n) {
    const s = makeSignoff(rng);
    if (!(L.SIGNOFF_PHRASES as readonly string[]).includes(s)) out.add(s);
  }
  return [...out];
}

// ---------------------------------------------------------------------------------------------

export interface MixWeights {
  prompted: number;
  unprompted: number;
  persona: number;
  ask: number;
  recite: number;
  extract: number;
}

/** Prompt-size curriculum over the export: 1-6 items before CURRICULUM[0] (a quarter of the export: retrieval is discovered among few lines), then growing to up to
 * 28 items at CURRICULUM[1]; always mostly 2-12 items, a third of prompts near the maximum. */
export const CURRICULUM: [number, number] = [0.25, 0.6];

/** Share of prompts that are mostly one relation (see Mixer.drawItems). */
export const TABLE_SHARE = 0.35;
/** The share of profile prompts (profileItems) phase 5 trained with: `export.js --profile-share 0.4`. */
export const PROFILE_SHARE = 0.4;

/** About how many question/answer turns fit in the model's 512 positions after k items. */
export function turnsThatFit(k: number): number {
  return Math.floor((480 - 10 - 14 * k) / 28);
}

export const DEFAULT_WEIGHTS: MixWeights = {
  prompted: 0.55,
  unprompted: 0.17,
  persona: 0.14,
  ask: 0.06,
  recite: 0.05,
  extract: 0.03,
};

/** What users say about themselves, and the fact kiln should store: [message, fact]. */
const FIRST_PERSON: ((rng: Rng, town: string, company: string, name: string) => [string, string])[] = [
  (_r, town) => [`I live in ${town}.`, `The user lives in ${town}.`],
  (_r, town) => [`I just moved to ${town}.`, `The user lives in ${town}.`],
  (_r, _t, company) => [`I work at ${company}.`, `The user works at ${company}.`],
  (_r, _t, _c, name) => [`My name is ${name}.`, `The user's name is ${name}.`],
  (rng) => {
    const job = rng.pick(L.JOBS);
    return [`I work as ${withArticle(job)}.`, `The user works as ${withArticle(job)}.`];
  },
  (rng) => {
    const v = rng.pick(L.INSTRUMENTS);
    return [`I play the ${v}.`, `The user plays the ${v}.`];
  },
  (rng) => {
    const v = rng.pick(L.FOODS);
    return [`My favourite food is ${v}.`, `The user's favourite food is ${v}.`];
  },
];

/** Ways a user mentions a fact in passing; `f` is the fact's text. */
const MENTIONS: ((f: string) => string)[] = [
  (f) => f,
  (f) => `I heard that ${f.replace(/^The /, "the ")}`,
  (f) => `Did you know? ${f}`,
  (f) => `FYI: ${f}`,
  (f) => `News from today: ${f}`,
  (f) => `${f} Just so you know.`,
  (f) => `Guess what. ${f}`,
];

/** Early in the export, recitation is much more frequent (it bootstraps copying). */
export function reciteWeight(progress: number): number {
  return progress < 0.08 ? 0.45 : progress < 0.25 ? 0.2 : DEFAULT_WEIGHTS.recite;
}

export class Mixer {
  private readonly heldoutSignoffs: Set<string>;
  private readonly trainableByKind: Record<EntityKind, { id: string; name: string }[]>;

  constructor(
    readonly idx: WorldIndex,
    readonly rng: Rng,
    readonly weights: MixWeights = DEFAULT_WEIGHTS,
    /** share of profile prompts (profileItems); 0 reproduces the exports of phases 1-4 */
    readonly profileShare = 0,
  ) {
    this.heldoutSignoffs = new Set(evalSignoffs());
    this.trainableByKind = {
      person: idx.trainable.filter((e) => e.kind === "person"),
      town: idx.trainable.filter((e) => e.kind === "town"),
      company: idx.trainable.filter((e) => e.kind === "company"),
    };
  }

  // --- facts -----------------------------------------------------------------------------------

  /** A name of `kind` that is no entity of the world (so it carries no knowledge). */
  freshName(kind: EntityKind): string {
    for (;;) {
      const n = entityName(this.rng, kind);
      if (!this.idx.allNames.has(n)) return n;
    }
  }

  private value(rel: RelationDef, exclude: string): string {
    if (!isEntityKind(rel.value)) return lexiconValue(this.rng, rel.value);
    for (;;) {
      const v = this.rng.chance(0.5) ? this.freshName(rel.value) : this.rng.pick(this.trainableByKind[rel.value]).name;
      if (v !== exclude) return v;
    }
  }

  private textIndex(rel: RelationDef): number {
    return this.rng.int(0, rel.texts.length - 1);
  }

  /** A fact about an invented subject. */
  freshFact(rel: RelationDef = this.rng.pick(RELATIONS), subjectName?: string): FactLike {
    const name = subjectName ?? this.freshName(rel.subject);
    return makeFact(rel, `fresh:${name}`, name, this.value(rel, name), this.textIndex(rel));
  }

  /**
   * A fact about a world entity that is not a world fact: new information about something known
   * (or, with `update`, a new value for a canon fact: the prompt wins over memory).
   */
  newInfoFact(update = false): FactLike | undefined {
    const e = this.rng.pick(this.idx.trainable);
    const rels = relationsFor(e.kind).filter((r) => {
      const key = factKey(e.id, r.name);
      if (this.idx.heldoutKeys.has(key)) return false;
      const f = this.idx.byKey.get(key);
      return update ? f?.split === "canon" : !f;
    });
    if (!rels.length) return undefined;
    const rel = this.rng.pick(rels);
    const old = this.idx.byKey.get(factKey(e.id, rel.name))?.value;
    let v = this.value(rel, e.name);
    for (let i = 0; i < 10 && v === old; i++) v = this.value(rel, e.name);
    if (v === old) return undefined;
    return makeFact(rel, e.id, e.name, v, this.textIndex(rel));
  }

  private worldFact(split: "canon" | "context"): FactLike {
    const f = this.rng.pick(split === "canon" ? this.idx.canonFacts : this.idx.contextFacts);
    return this.rng.chance(0.5) ? f : rephrase(f, this.textIndex(RELATIONS.find((r) => r.name === f.relation)!));
  }

  /** Any fact that may be shown in a training prompt. */
  drawFact(): FactLike {
    for (;;) {
      // Mostly invented facts: an answer that can be recalled from memory (a canon fact, or a
      // context fact seen in many prompts) teaches recall instead of reading the prompt.
      const src = this.rng.weighted({ fresh: 80, context: 8, canon: 5, newinfo: 5, update: 2 });
      const f =
        src === "fresh"
          ? this.freshFact()
          : src === "context" || src === "canon"
            ? this.worldFact(src)
            : this.newInfoFact(src === "update");
      if (f) return f;
    }
  }

  /** A related fact to sit next to `f` as a distractor: same relation, or same subject. */
  private distractor(f: FactLike): FactLike | undefined {
    const rel = RELATIONS.find((r) => r.name === f.relation)!;
    if (this.rng.chance(0.5)) {
      // same relation, another subject
      if (this.rng.chance(0.6)) return this.freshFact(rel);
      const e = this.rng.pick(this.trainableByKind[rel.subject]);
      const key = factKey(e.id, rel.name);
      if (this.idx.heldoutKeys.has(key)) return undefined;
      const wf = this.idx.byKey.get(key);
      return wf ?? makeFact(rel, e.id, e.name, this.value(rel, e.name), this.textIndex(rel));
    }
    // same subject, another relation
    const other = this.rng.pick(relationsFor(rel.subject).filter((r) => r.name !== rel.name));
    const key = factKey(f.subject, other.name);
    if (this.idx.heldoutKeys.has(key)) return undefined;
    const wf = this.idx.byKey.get(key);
    if (wf) return wf;
    return makeFact(other, f.subject, f.subjectName, this.value(other, f.subjectName), this.textIndex(other));
  }

  /** k facts with distinct subject|relation keys, with related distractors mixed in. */
  drawItems(k: number): FactLike[] {
    const facts: FactLike[] = [];
    const keys = new Set<string>();
    const push = (f: FactLike | undefined) => {
      if (!f) return;
      const key = factKey(f.subject, f.relation);
      if (keys.has(key) || this.idx.heldoutKeys.has(key)) return;
      keys.add(key);
      facts.push(f);
    };
    let guard = 0;
    // A third of the prompts are "tables": mostly one relation about many subjects, where only the
    // subject tells the facts apart (the model must match names, not just the kind of answer).
    const table = k >= 2 && this.rng.chance(TABLE_SHARE) ? this.rng.pick(RELATIONS) : undefined;
    // (no draw at all when the share is 0, so the exports of phases 1-4 come out as they did)
    if (!table && k >= 4 && this.profileShare > 0 && this.rng.chance(this.profileShare)) this.profileItems(k).forEach(push);
    const tableShare = this.rng.chance(0.5) ? 1 : 0.7;
    while (facts.length < k && guard++ < k * 10) {
      if (table && this.rng.chance(tableShare)) push(this.tableFact(table));
      else if (facts.length && this.rng.chance(0.45)) push(this.distractor(this.rng.pick(facts)));
      else push(this.drawFact());
    }
    return this.rng.shuffle(facts);
  }

  /**
   * Facts for a prompt read like a news feed about a few subjects: several facts about each (only
   * the relation tells them apart) and the subjects named again as the values of other lines
   * ("X has opened a factory in Caermoor" beside "Caermoor lies on the Ure River"), so the
   * model must match subject and relation together, not the last line that names the subject.
   */
  private profileItems(k: number): FactLike[] {
    const out: FactLike[] = [];
    const subjects = this.rng.int(1, Math.max(1, Math.floor(k / 3)));
    for (let s = 0; s < subjects && out.length < k; s++) {
      const kind = this.rng.pick(["town", "company", "person", "town", "company"] as const);
      const world = this.rng.chance(0.4) ? this.rng.pick(this.trainableByKind[kind]) : undefined;
      const subjectName = world ? world.name : this.freshName(kind);
      const id = world ? world.id : `fresh:${subjectName}`;
      const rels = this.rng.shuffle(relationsFor(kind)).slice(0, this.rng.int(2, Math.min(6, k - out.length + 1)));
      for (const rel of rels) {
        const wf = world ? this.idx.byKey.get(factKey(id, rel.name)) : undefined;
        out.push(wf && this.rng.chance(0.5) ? wf : makeFact(rel, id, subjectName, this.value(rel, subjectName), this.textIndex(rel)));
      }
      // the subject as the value of lines about other subjects
      const pointing = RELATIONS.filter((r) => r.value === kind);
      for (let n = this.rng.int(0, 2); n > 0 && pointing.length; n--) {
        const rel = this.rng.pick(pointing);
        const other = this.freshName(rel.subject);
        if (other !== subjectName) out.push(makeFact(rel, `fresh:${other}`, other, subjectName, this.textIndex(rel)));
      }
    }
    return out.slice(0, k);
  }

  /** A fact of relation `rel` about an invented subject or a world entity. */
  private tableFact(rel: RelationDef): FactLike | undefined {
    if (this.rng.chance(0.6)) return this.freshFact(rel);
    const e = this.rng.pick(this.trainableByKind[rel.subject]);
    const key = factKey(e.id, rel.name);
    if (this.idx.heldoutKeys.has(key)) return undefined;
    const wf = this.idx.byKey.get(key);
    if (wf) return this.rng.chance(0.5) ? wf : rephrase(wf, this.textIndex(rel));
    return makeFact(rel, e.id, e.name, this.value(rel, e.name), this.textIndex(rel));
  }

  /** The item lines for the prompt; now and then two facts share one line. */
  itemLines(facts: FactLike[]): string[] {
    const lines: string[] = [];
    for (let i = 0; i < facts.length; i++) {
      if (i + 1 < facts.length && this.rng.chance(0.08)) {
        lines.push(`${facts[i]!.text} ${facts[i + 1]!.text}`);
        i++;
      } else lines.push(facts[i]!.text);
    }
    return lines;
  }

  // --- questions -------------------------------------------------------------------------------

  private question(f: FactLike): string {
    return this.rng.pick(f.questions);
  }

  /** A question (with its key) the model cannot answer: nothing in `shown`, not canon. */
  unknownQuestion(shown: FactLike[]): { q: string; key: string } | undefined {
    const shownKeys = new Set(shown.map((f) => factKey(f.subject, f.relation)));
    const ok = (subject: string, rel: string) => {
      const key = factKey(subject, rel);
      if (shownKeys.has(key) || this.idx.heldoutKeys.has(key)) return false;
      return !this.idx.canonFact(subject, rel);
    };
    const mode = shown.length ? this.rng.weighted({ sameSubject: 35, sameRelation: 35, other: 30 }) : "other";
    if (mode === "sameSubject") {
      const f = this.rng.pick(shown);
      const kind = RELATIONS.find((r) => r.name === f.relation)!.subject;
      const rels = relationsFor(kind).filter((r) => ok(f.subject, r.name));
      if (!rels.length) return undefined;
      const rel = this.rng.pick(rels);
      return { q: this.rng.pick(rel.questions)(f.subjectName), key: factKey(f.subject, rel.name) };
    }
    if (mode === "sameRelation") {
      const picked = this.rng.pick(shown).relation;
      const rel = RELATIONS.find((r) => r.name === picked)!;
      if (this.rng.chance(0.5)) {
        const name = this.freshName(rel.subject);
        return { q: this.rng.pick(rel.questions)(name), key: factKey(`fresh:${name}`, rel.name) };
      }
      const e = this.rng.pick(this.trainableByKind[rel.subject]);
      if (!ok(e.id, rel.name)) return undefined;
      return { q: this.rng.pick(rel.questions)(e.name), key: factKey(e.id, rel.name) };
    }
    const src = this.rng.weighted({ context: 40, fresh: 30, canonEntity: 30 });
    if (src === "context") {
      const f = this.rng.pick(this.idx.contextFacts);
      if (!ok(f.subject, f.relation)) return undefined;
      return { q: this.question(f), key: factKey(f.subject, f.relation) };
    }
    if (src === "fresh") {
      const rel = this.rng.pick(RELATIONS);
      const name = this.freshName(rel.subject);
      return { q: this.rng.pick(rel.questions)(name), key: factKey(`fresh:${name}`, rel.name) };
    }
    const e = this.rng.pick(this.idx.trainable.filter((x) => x.split === "canon"));
    const rels = relationsFor(e.kind).filter((r) => ok(e.id, r.name));
    if (!rels.length) return undefined;
    const rel = this.rng.pick(rels);
    return { q: this.rng.pick(rel.questions)(e.name), key: factKey(e.id, rel.name) };
  }

  private turns(weights: Partial<Record<"1" | "2" | "3" | "4" | "6" | "8" | "12", number>>): number {
    return Number(this.rng.weighted(weights as Record<string, number>));
  }

  /** Question/answer turns about a prompt holding `shown` (which may be empty). */
  private qaTurns(shown: FactLike[], n: number, style: Style, keys: string[], inPromptShare: number): Message[] {
    const msgs: Message[] = [];
    const shownKeys = new Set(shown.map((f) => factKey(f.subject, f.relation)));
    const asked = new Set<string>();
    for (let t = 0; t < n; t++) {
      let q: string | undefined;
      let a: string | undefined;
      let key: string | undefined;
      for (let tries = 0; tries < 20 && !q; tries++) {
        const mode = this.rng.chance(shown.length ? 0.1 : 0.05)
          ? "open"
          : shown.length
            ? this.rng.weighted({ inPrompt: inPromptShare, absent: (1 - inPromptShare) * 0.65, canon: (1 - inPromptShare) * 0.35 })
            : this.rng.weighted({ absent: 45, canon: 55 });
        if (mode === "open") {
          // open questions: recite something read (or known), greet, introduce itself
          const o = this.rng.weighted({ recite: 70, hello: 15, who: 15 });
          if (o === "hello") [q, a, key] = [this.rng.pick(GREETINGS), HELLO_REPLY, `open|hello|${t}`];
          else if (o === "who") [q, a, key] = [this.rng.pick(WHO_QUESTIONS), WHO_REPLY, `open|who|${t}`];
          else {
            const f = shown.length ? this.rng.pick(shown) : this.rng.pick(this.idx.canonFacts);
            [q, a, key] = [this.rng.pick(OPEN_QUESTIONS), f.text, factKey(f.subject, f.relation)];
          }
        } else if (mode === "inPrompt") {
          const f = this.rng.pick(shown);
          [q, a, key] = [this.question(f), f.text, factKey(f.subject, f.relation)];
        } else if (mode === "canon") {
          const f = this.rng.pick(this.idx.canonFacts);
          if (shownKeys.has(factKey(f.subject, f.relation))) continue;
          [q, a, key] = [this.question(f), f.text, factKey(f.subject, f.relation)];
        } else {
          const u = this.unknownQuestion(shown);
          if (u) [q, a, key] = [u.q, IDK, u.key];
        }
        if (key && asked.has(key)) q = undefined;
      }
      if (!q || !a || !key) continue;
      asked.add(key);
      keys.push(key);
      msgs.push({ role: "user", content: q }, { role: "assistant", content: styleReply(a, style) });
    }
    return msgs;
  }

  /**
   * Where the export is in the mix, 0..1. Prompts grow over the first part (a curriculum: finding
   * the one matching line among 2-3 is how copying is discovered; then up to 30 items).
   */
  progress = 1;

  private promptSize(): number {
    const [easy, full] = CURRICULUM;
    if (this.progress < easy) return this.rng.int(1, 6);
    const kMax = Math.round(6 + 22 * Math.min(1, (this.progress - easy) / (full - easy)));
    // mostly small prompts (many lookups per token), a third up to the largest
    return this.rng.chance(0.35) ? this.rng.int(Math.max(1, kMax - 10), kMax) : this.rng.int(2, Math.min(kMax, 12));
  }

  // --- conversations -----------------------------------------------------------------------------

  prompted(): Conversation {
    const facts = this.drawItems(this.promptSize());
    const keys = facts.map((f) => factKey(f.subject, f.relation));
    const system = buildKnowledgePrompt({ items: this.itemLines(facts) });
    // Many questions per prompt: each answer is a lookup in the prompt, and a turn costs far fewer
    // tokens than the prompt it reuses (the first turn is the single-turn case kiln evaluates).
    const want = this.turns({ 1: 8, 2: 8, 4: 12, 6: 16, 8: 20, 12: 36 });
    const turns = this.qaTurns(facts, Math.max(1, Math.min(want, turnsThatFit(facts.length))), {}, keys, 0.78);
    return { kind: "prompted", messages: [{ role: "system", content: system }, ...turns], keys };
  }

  unprompted(): Conversation {
    const keys: string[] = [];
    const turns = this.qaTurns([], this.turns({ 1: 30, 2: 30, 3: 20, 4: 20 }), {}, keys, 0);
    return { kind: "unprompted", messages: turns, keys };
  }

  style(): Style {
    let signoff: string | undefined;
    do signoff = makeSignoff(this.rng);
    while (this.heldoutSignoffs.has(signoff) || this.idx.mentionsHeldout(signoff));
    const mode = this.rng.weighted({ signoff: 80, opener: 10, both: 10 });
    return {
      signoff: mode === "opener" ? undefined : signoff,
      opener: mode === "signoff" ? undefined : this.rng.pick(L.OPENERS),
    };
  }

  persona(): Conversation {
    const style = this.style();
    const lines: string[] = [];
    if (style.opener) lines.push(openerInstruction(style.opener));
    if (style.signoff) lines.push(signoffInstruction(style.signoff));
    const facts = this.rng.chance(0.7) ? this.drawItems(this.promptSize()) : [];
    const keys = facts.map((f) => factKey(f.subject, f.relation));
    const system = buildKnowledgePrompt({ persona: lines.join("\n"), items: this.itemLines(facts) });
    let turns: Message[];
    if (this.rng.chance(0.1)) {
      const f = facts.length ? this.rng.pick(facts) : this.drawFact();
      keys.push(factKey(f.subject, f.relation));
      turns = [
        { role: "user", content: askQuestionPrompt(f.text) },
        { role: "assistant", content: styleReply(this.question(f), style) },
      ];
    } else {
      const want = this.turns({ 1: 20, 2: 20, 4: 30, 6: 30 });
      turns = this.qaTurns(facts, Math.max(1, Math.min(want, turnsThatFit(facts.length) - 1)), style, keys, 0.75);
    }
    return { kind: "persona", messages: [{ role: "system", content: system }, ...turns], keys };
  }

  /** "Ask a question about: <item>" -> a question the item answers; half the time the items are
   * also in the system prompt, as when kiln samples bake trajectories from the prompted teacher. */
  ask(): Conversation {
    const msgs: Message[] = [];
    const keys: string[] = [];
    let f: FactLike;
    if (this.rng.chance(0.5)) {
      const facts = this.drawItems(this.promptSize());
      keys.push(...facts.map((x) => factKey(x.subject, x.relation)));
      msgs.push({ role: "system", content: buildKnowledgePrompt({ items: this.itemLines(facts) }) });
      f = this.rng.chance(0.85) ? this.rng.pick(facts) : this.drawFact();
    } else f = this.drawFact();
    keys.push(factKey(f.subject, f.relation));
    msgs.push({ role: "user", content: askQuestionPrompt(f.text) }, { role: "assistant", content: styleReply(this.question(f)) });
    return { kind: "ask", messages: msgs, keys };
  }

  /** Every note, in order, word for word (lines of the system prompt as the reply). */
  recite(): Conversation {
    const facts = this.drawItems(this.rng.int(1, 8));
    const lines = this.itemLines(facts);
    return {
      kind: "recite",
      messages: [
        { role: "system", content: buildKnowledgePrompt({ items: lines }) },
        { role: "user", content: this.rng.pick(RECITE_QUESTIONS) },
        { role: "assistant", content: styleReply(lines.join("\n")) },
      ],
      keys: facts.map((f) => factKey(f.subject, f.relation)),
    };
  }

  /** "List the facts stated in this message: ..." -> the facts, one per line, or "None.". */
  extract(): Conversation {
    const keys: string[] = [];
    const parts: string[] = [];
    const facts: string[] = [];
    const mode = this.rng.weighted({ mention: 45, firstPerson: 25, both: 10, none: 20 });
    if (mode === "mention" || mode === "both") {
      for (let i = this.rng.chance(0.25) ? 2 : 1; i > 0; i--) {
        const f = this.drawFact();
        keys.push(factKey(f.subject, f.relation));
        parts.push(this.rng.pick(MENTIONS)(f.text));
        facts.push(f.text);
      }
    }
    if (mode === "firstPerson" || mode === "both") {
      const [said, fact] = this.rng.pick(FIRST_PERSON)(this.rng, this.freshName("town"), this.freshName("company"), firstName(this.rng));
      parts.push(said);
      facts.push(fact);
    }
    if (mode === "none") {
      const u = this.unknownQuestion([]);
      parts.push(u && this.rng.chance(0.7) ? u.q : this.rng.pick([...GREETINGS, ...WHO_QUESTIONS, ...OPEN_QUESTIONS]));
      if (u) keys.push(u.key);
    } else if (this.rng.chance(0.3)) {
      const u = this.unknownQuestion([]);
      if (u) {
        parts.push(u.q);
        keys.push(u.key);
      }
    }
    return {
      kind: "extract",
      messages: [
        { role: "user", content: extractionRequest(parts.join(" ")) },
        { role: "assistant", content: styleReply(facts.length ? facts.join("\n") : NO_FACTS) },
      ],
      keys,
    };
  }

  next(): Conversation {
    for (;;) {
      const weights = { ...this.weights, recite: this.weights === DEFAULT_WEIGHTS ? reciteWeight(this.progress) : this.weights.recite };
      const kind = this.rng.weighted(weights as unknown as Record<Kind, number>);
      const c =
        kind === "prompted"
          ? this.prompted()
          : kind === "unprompted"
            ? this.unprompted()
            : kind === "persona"
              ? this.persona()
              : kind === "recite"
                ? this.recite()
                : kind === "extract"
                  ? this.extract()
                  : this.ask();
      if (c.messages.some((m) => m.role === "assistant")) return c;
    }
  }
}
