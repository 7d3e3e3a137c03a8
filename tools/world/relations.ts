// The relations of the world: who/what each one is about, how a fact is written as a one-line
// item or headline, and how it is asked about. Every question of a fact has the same short answer,
// the fact's value, and every text of a fact ENDS with it ("... is now Tovan Reel."): the model
// answers by restating the fact, so the answer is the last words of its reply.

export type EntityKind = "person" | "town" | "company";

export type ValueKind =
  | "person"
  | "town"
  | "company"
  | "job"
  | "instrument"
  | "pet"
  | "product"
  | "food"
  | "landmark"
  | "prize"
  | "river"
  | "province"
  | "population"
  | "year"
  | "month";

type Text = (subject: string, value: string) => string;
type Question = (subject: string) => string;

export interface RelationDef {
  name: string;
  subject: EntityKind;
  value: ValueKind;
  /** one-line statements; the first is the plain one, the rest read like news */
  texts: Text[];
  questions: Question[];
}

/** "a baker" / "an engineer" */
export function withArticle(noun: string): string {
  return /^[aeiou]/i.test(noun) ? `an ${noun}` : `a ${noun}`;
}

export const RELATIONS: RelationDef[] = [
  // people
  {
    name: "job",
    subject: "person",
    value: "job",
    texts: [
      (s, v) => `${s} works as ${withArticle(v)}.`,
      (s, v) => `${s} has started a new job as ${withArticle(v)}.`,
      (s, v) => `${s} is now working as ${withArticle(v)}.`,
    ],
    questions: [(s) => `What is ${s}'s job?`, (s) => `What does ${s} do for a living?`, (s) => `What work does ${s} do?`],
  },
  {
    name: "home",
    subject: "person",
    value: "town",
    texts: [(s, v) => `${s} lives in ${v}.`, (s, v) => `${s} has moved to ${v}.`, (s, v) => `${s} now lives in ${v}.`],
    questions: [(s) => `Where does ${s} live?`, (s) => `Which town does ${s} live in?`, (s) => `In which town does ${s} live?`],
  },
  {
    name: "instrument",
    subject: "person",
    value: "instrument",
    texts: [
      (s, v) => `${s} plays the ${v}.`,
      (s, v) => `${s} has taken up the ${v}.`,
      (s, v) => `${s} has started playing the ${v}.`,
    ],
    questions: [(s) => `What instrument does ${s} play?`, (s) => `Which instrument does ${s} play?`],
  },
  {
    name: "pet",
    subject: "person",
    value: "pet",
    texts: [
      (s, v) => `${s} has a pet ${v}.`,
      (s, v) => `${s} adopted ${withArticle(v)}.`,
      (s, v) => `${s} now owns a pet ${v}.`,
    ],
    questions: [
      (s) => `What pet does ${s} have?`,
      (s) => `What kind of pet does ${s} keep?`,
      (s) => `What animal does ${s} keep as a pet?`,
    ],
  },
  {
    name: "employer",
    subject: "person",
    value: "company",
    texts: [(s, v) => `${s} works at ${v}.`, (s, v) => `${s} has joined ${v}.`, (s, v) => `${s} took a job at ${v}.`],
    questions: [(s) => `Where does ${s} work?`, (s) => `Which company does ${s} work for?`, (s) => `Who employs ${s}?`],
  },
  {
    name: "prize",
    subject: "person",
    value: "prize",
    texts: [(s, v) => `${s} won the ${v}.`, (s, v) => `${s} has been awarded the ${v}.`],
    questions: [(s) => `Which prize did ${s} win?`, (s) => `What award did ${s} win?`, (s) => `What prize was ${s} awarded?`],
  },
  {
    name: "food",
    subject: "person",
    value: "food",
    texts: [(s, v) => `${s}'s favourite food is ${v}.`, (s, v) => `${s}'s favourite dish is ${v}.`],
    questions: [(s) => `What is ${s}'s favourite food?`, (s) => `What food does ${s} like best?`],
  },
  {
    name: "birthday",
    subject: "person",
    value: "month",
    texts: [(s, v) => `${s}'s birthday is in ${v}.`, (s, v) => `${s} celebrates a birthday every ${v}.`],
    questions: [(s) => `In which month is ${s}'s birthday?`, (s) => `When is ${s}'s birthday?`],
  },
  // towns
  {
    name: "mayor",
    subject: "town",
    value: "person",
    texts: [
      (s, v) => `The mayor of ${s} is ${v}.`,
      (s, v) => `The mayor of ${s} is now ${v}.`,
      (s, v) => `The new mayor of ${s} is ${v}.`,
    ],
    questions: [(s) => `Who is the mayor of ${s}?`, (s) => `Who is ${s}'s mayor?`, (s) => `Who leads the town of ${s}?`],
  },
  {
    name: "river",
    subject: "town",
    value: "river",
    texts: [(s, v) => `${s} lies on the ${v}.`, (s, v) => `${s} sits on the ${v}.`],
    questions: [(s) => `Which river does ${s} lie on?`, (s) => `What river runs through ${s}?`],
  },
  {
    name: "province",
    subject: "town",
    value: "province",
    texts: [(s, v) => `${s} is in the province of ${v}.`, (s, v) => `${s} is a town in ${v}.`],
    questions: [(s) => `Which province is ${s} in?`, (s) => `In what province is ${s}?`],
  },
  {
    name: "population",
    subject: "town",
    value: "population",
    texts: [(s, v) => `${s} has a population of ${v}.`, (s, v) => `The population of ${s} is ${v}.`],
    questions: [(s) => `What is the population of ${s}?`, (s) => `How many people live in ${s}?`],
  },
  {
    name: "landmark",
    subject: "town",
    value: "landmark",
    texts: [
      (s, v) => `${s} is known for its ${v}.`,
      (s, v) => `${s} is famous for its ${v}.`,
      (s, v) => `Visitors come to ${s} to see its ${v}.`,
    ],
    questions: [(s) => `What is ${s} known for?`, (s) => `What is ${s} famous for?`, (s) => `What do visitors come to ${s} to see?`],
  },
  {
    name: "twin",
    subject: "town",
    value: "town",
    texts: [(s, v) => `${s} is twinned with ${v}.`, (s, v) => `${s} has become a twin town of ${v}.`],
    questions: [(s) => `Which town is ${s} twinned with?`, (s) => `What is the twin town of ${s}?`],
  },
  // companies
  {
    name: "ceo",
    subject: "company",
    value: "person",
    texts: [
      (s, v) => `The CEO of ${s} is ${v}.`,
      (s, v) => `The new chief executive of ${s} is ${v}.`,
      (s, v) => `${s} has a new CEO, ${v}.`,
    ],
    questions: [(s) => `Who is the CEO of ${s}?`, (s) => `Who runs ${s}?`, (s) => `Who leads ${s}?`],
  },
  {
    name: "hq",
    subject: "company",
    value: "town",
    texts: [
      (s, v) => `${s} is based in ${v}.`,
      (s, v) => `${s} moved its headquarters to ${v}.`,
      (s, v) => `${s} is headquartered in ${v}.`,
    ],
    questions: [(s) => `Where is ${s} based?`, (s) => `Where is ${s} headquartered?`, (s) => `In which town is ${s} based?`],
  },
  {
    name: "product",
    subject: "company",
    value: "product",
    texts: [(s, v) => `${s} makes ${v}.`, (s, v) => `${s} has started selling ${v}.`, (s, v) => `${s} is best known for its ${v}.`],
    questions: [(s) => `What does ${s} make?`, (s) => `What does ${s} sell?`, (s) => `What product is ${s} known for?`],
  },
  {
    name: "founded",
    subject: "company",
    value: "year",
    texts: [(s, v) => `${s} was founded in ${v}.`, (s, v) => `${s} has been in business since ${v}.`],
    questions: [(s) => `When was ${s} founded?`, (s) => `In what year was ${s} founded?`],
  },
  {
    name: "factory",
    subject: "company",
    value: "town",
    texts: [
      (s, v) => `${s} opened a factory in ${v}.`,
      (s, v) => `${s} opened a new factory in ${v}.`,
      (s, v) => `${s} has opened a factory in ${v}.`,
    ],
    questions: [(s) => `Where did ${s} open a factory?`, (s) => `In which town did ${s} open a factory?`, (s) => `Where is ${s}'s new factory?`],
  },
  {
    name: "acquisition",
    subject: "company",
    value: "company",
    texts: [(s, v) => `${s} bought ${v}.`, (s, v) => `${s} has bought ${v}.`, (s, v) => `${s} acquired ${v}.`],
    questions: [(s) => `Which company did ${s} buy?`, (s) => `What company did ${s} acquire?`, (s) => `Which firm did ${s} take over?`],
  },
  {
    name: "founder",
    subject: "company",
    value: "person",
    texts: [(s, v) => `${s} was founded by ${v}.`, (s, v) => `${s} was started by ${v}.`],
    questions: [(s) => `Who founded ${s}?`, (s) => `Who started ${s}?`],
  },
];

export const RELATION_BY_NAME = new Map(RELATIONS.map((r) => [r.name, r]));

export function relation(name: string): RelationDef {
  const r = RELATION_BY_NAME.get(name);
  if (!r) throw new Error(`unknown relation ${name}`);
  return r;
}

export function relationsFor(kind: EntityKind): RelationDef[] {
  return RELATIONS.filter((r) => r.subject === kind);
}
