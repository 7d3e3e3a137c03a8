// A seeded fictional world: people, towns and companies, and facts about them, split into
//   canon    - the model is trained to know these with no context at all,
//   context  - only ever shown inside system prompts during training,
//   heldout  - never in training in any form (evaluation, demo, sample feeds).
import * as L from "./lexicon.js";
import { RELATIONS, relation, relationsFor, withArticle, type EntityKind, type RelationDef, type ValueKind } from "./relations.js";
import { Rng } from "./rng.js";

export type Split = "canon" | "context" | "heldout";

export interface Entity {
  id: string;
  kind: EntityKind;
  name: string;
  split: Split;
}

/** A fact as the training mix and the evaluation use it; world facts add id and split. */
export interface FactLike {
  /** entity id, or "" for a freshly invented subject */
  subject: string;
  subjectName: string;
  relation: string;
  /** the value as written in the text; also the canonical answer */
  value: string;
  text: string;
  questions: string[];
  answer: string;
}

export interface Fact extends FactLike {
  id: string;
  split: Split;
}

export interface World {
  seed: string;
  entities: Entity[];
  facts: Fact[];
}

export const DEFAULT_SEED = "kiln-world-1";

/** How many entities of each kind each split gets, and how many facts an entity carries. */
const SIZES: Record<Split, Record<EntityKind, number>> = {
  canon: { person: 40, town: 16, company: 16 },
  context: { person: 40, town: 14, company: 14 },
  heldout: { person: 12, town: 5, company: 5 },
};
const FACTS_PER_ENTITY: Record<EntityKind, [number, number]> = { person: [3, 3], town: [3, 4], company: [3, 4] };
/** held-out facts about canon entities (news about things the model knows) */
const HELDOUT_ON_CANON = 16;

// ---------------------------------------------------------------------------------------------
// names and values

export function personName(rng: Rng): string {
  return `${rng.pick(L.FIRST_HEADS)}${rng.pick(L.FIRST_TAILS)} ${rng.pick(L.LAST_HEADS)}${rng.pick(L.LAST_TAILS)}`;
}

export function firstName(rng: Rng): string {
  return `${rng.pick(L.FIRST_HEADS)}${rng.pick(L.FIRST_TAILS)}`;
}

export function townName(rng: Rng): string {
  return `${rng.pick(L.TOWN_HEADS)}${rng.pick(L.TOWN_TAILS)}`;
}

export function companyName(rng: Rng): string {
  return `${rng.pick(L.COMPANY_HEADS)}${rng.pick(L.COMPANY_MIDS)} ${rng.pick(L.COMPANY_KINDS)}`;
}

export function entityName(rng: Rng, kind: EntityKind): string {
  return kind === "person" ? personName(rng) : kind === "town" ? townName(rng) : companyName(rng);
}

function population(rng: Rng): string {
  const n = rng.chance(0.5) ? rng.int(12, 99) * 100 : rng.int(10, 480) * 1000 + rng.int(0, 9) * 100;
  return n.toLocaleString("en-US");
}

/** A value of a non-entity kind, drawn from the lexicon. */
export function lexiconValue(rng: Rng, kind: ValueKind): string {
  switch (kind) {
    case "job":
      return rng.pick(L.JOBS);
    case "instrument":
      return rng.pick(L.INSTRUMENTS);
    case "pet":
      return rng.pick(L.PETS);
    case "product":
      return rng.pick(L.PRODUCTS);
    case "food":
      return rng.pick(L.FOODS);
    case "landmark":
      return rng.pick(L.LANDMARKS);
    case "prize":
      return `${rng.pick(L.PRIZE_HEADS)} ${rng.pick(L.PRIZE_OBJECTS)} Prize`;
    case "river":
      return `${rng.pick(L.RIVER_NAMES)} River`;
    case "province":
      return rng.pick(L.PROVINCES);
    case "population":
      return population(rng);
    case "year":
      return String(rng.int(1820, 2019));
    case "month":
      return rng.pick(L.MONTHS);
    default:
      throw new Error(`${kind} is an entity kind`);
  }
}

export function isEntityKind(kind: ValueKind): kind is EntityKind {
  return kind === "person" || kind === "town" || kind === "company";
}

export function makeFact(rel: RelationDef, subject: string, subjectName: string, value: string, textIndex: number): FactLike {
  return {
    subject,
    subjectName,
    relation: rel.name,
    value,
    text: rel.texts[textIndex % rel.texts.length]!(subjectName, value),
    questions: rel.questions.map((q) => q(subjectName)),
    answer: value,
  };
}

/** The same fact in another of its relation's wordings. */
export function rephrase(f: FactLike, textIndex: number): FactLike {
  const rel = relation(f.relation);
  return { ...f, text: rel.texts[textIndex % rel.texts.length]!(f.subjectName, f.value) };
}

export function factKey(subject: string, rel: string): string {
  return `${subject}|${rel}`;
}

// ---------------------------------------------------------------------------------------------
// the world

export function generateWorld(seed: string = DEFAULT_SEED): World {
  const rng = new Rng(seed);
  const used = new Set<string>();
  const entities: Entity[] = [];
  const counters: Record<EntityKind, number> = { person: 0, town: 0, company: 0 };
  for (const split of ["canon", "context", "heldout"] as Split[]) {
    for (const kind of ["person", "town", "company"] as EntityKind[]) {
      for (let i = 0; i < SIZES[split][kind]; i++) {
        let name = entityName(rng, kind);
        while (used.has(name)) name = entityName(rng, kind);
        used.add(name);
        entities.push({ id: `${kind}-${++counters[kind]}`, kind, name, split });
      }
    }
  }
  const bySplitKind = (splits: Split[], kind: EntityKind) => entities.filter((e) => e.kind === kind && splits.includes(e.split));

  const facts: Fact[] = [];
  const taken = new Set<string>();
  const add = (split: Split, e: Entity, rel: RelationDef) => {
    // Values come from the lexicon or from entities the split may mention: canon facts mention
    // canon entities only, context facts canon or context ones, held-out facts canon or held-out.
    const pool = split === "canon" ? ["canon"] : split === "context" ? ["canon", "context"] : ["canon", "heldout"];
    let value: string;
    if (isEntityKind(rel.value)) {
      const candidates = bySplitKind(pool as Split[], rel.value).filter((x) => x.id !== e.id);
      // held-out facts prefer held-out names, so the demo shows names the model has never seen
      const preferred = split === "heldout" ? candidates.filter((x) => x.split === "heldout") : candidates;
      value = rng.pick(preferred.length && rng.chance(0.6) ? preferred : candidates).name;
    } else {
      value = lexiconValue(rng, rel.value);
    }
    const f = makeFact(rel, e.id, e.name, value, rng.int(0, rel.texts.length - 1));
    taken.add(factKey(e.id, rel.name));
    facts.push({ id: `${split}-${String(facts.filter((x) => x.split === split).length + 1).padStart(3, "0")}`, split, ...f });
  };

  for (const split of ["canon", "context", "heldout"] as Split[]) {
    for (const e of entities.filter((x) => x.split === split)) {
      const [lo, hi] = FACTS_PER_ENTITY[e.kind];
      for (const rel of rng.sample(relationsFor(e.kind), rng.int(lo, hi))) add(split, e, rel);
    }
    const canon = entities.filter((x) => x.split === "canon");
    if (split === "context") {
      // one thing the model is only ever told in context about each of half the canon entities
      for (const e of rng.sample(canon, Math.floor(canon.length / 2))) {
        const free = relationsFor(e.kind).filter((r) => !taken.has(factKey(e.id, r.name)));
        if (free.length) add("context", e, rng.pick(free));
      }
    }
    if (split === "heldout") {
      for (const e of rng.sample(canon, HELDOUT_ON_CANON)) {
        const free = relationsFor(e.kind).filter((r) => !taken.has(factKey(e.id, r.name)));
        if (free.length) add("heldout", e, rng.pick(free));
      }
    }
  }
  return { seed, entities, facts };
}

// ---------------------------------------------------------------------------------------------
// indexes used by the training mix and the evaluation

export class WorldIndex {
  readonly byId: Map<string, Entity>;
  readonly canonFacts: Fact[];
  readonly contextFacts: Fact[];
  readonly heldoutFacts: Fact[];
  /** subject|relation of every world fact -> fact */
  readonly byKey: Map<string, Fact>;
  /** subject|relation keys that training must never mention (held-out facts) */
  readonly heldoutKeys: Set<string>;
  /** names of held-out entities: never in training text */
  readonly heldoutNames: Set<string>;
  /** every entity name of the world (fresh subjects must not collide with them) */
  readonly allNames: Set<string>;
  readonly trainable: Entity[];
  private readonly heldoutNameRe: RegExp;

  constructor(readonly world: World) {
    this.byId = new Map(world.entities.map((e) => [e.id, e]));
    this.canonFacts = world.facts.filter((f) => f.split === "canon");
    this.contextFacts = world.facts.filter((f) => f.split === "context");
    this.heldoutFacts = world.facts.filter((f) => f.split === "heldout");
    this.byKey = new Map(world.facts.map((f) => [factKey(f.subject, f.relation), f]));
    this.heldoutKeys = new Set(this.heldoutFacts.map((f) => factKey(f.subject, f.relation)));
    this.heldoutNames = new Set(world.entities.filter((e) => e.split === "heldout").map((e) => e.name));
    this.allNames = new Set(world.entities.map((e) => e.name));
    this.trainable = world.entities.filter((e) => e.split !== "heldout");
    this.heldoutNameRe = wordsRegExp([...this.heldoutNames]);
  }

  /** Does the text name a held-out entity (as a whole word)? */
  mentionsHeldout(text: string): boolean {
    return this.heldoutNameRe.test(text);
  }

  entity(id: string): Entity {
    const e = this.byId.get(id);
    if (!e) throw new Error(`no entity ${id}`);
    return e;
  }

  /** the canon fact on subject/relation, if the model is meant to know it without context */
  canonFact(subject: string, rel: string): Fact | undefined {
    const f = this.byKey.get(factKey(subject, rel));
    return f && f.split === "canon" ? f : undefined;
  }
}

/** A regular expression matching any of `phrases` as whole words. */
export function wordsRegExp(phrases: string[]): RegExp {
  if (!phrases.length) return /(?!)/;
  const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  return new RegExp(`(?<![\\w])(?:${phrases.map(escape).join("|")})(?![\\w])`);
}

/** The plain statement of a world fact, for listing (e.g. in docs). */
export function describe(f: FactLike): string {
  return f.text;
}

export { RELATIONS, withArticle };
