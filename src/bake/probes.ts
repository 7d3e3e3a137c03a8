// Probes: question/answer pairs that show whether an item is absorbed. An item is absorbed by a
// weights version when the model, without the item in its prompt, answers the item's probe
// questions as the prompted model does (Bhargava et al., "Prompt Baking", arXiv 2409.13697:
// baked weights without the prompt should behave as the prompted model).
import type { AdapterHook } from "../model/decoder.js";
import { generate } from "../model/generate.js";
import type { LoadedModel } from "../model/load.js";
import { entitiesIn, isFunctionWord, namesGrounded, stem, support, unsupportedWords, vocabulary, words } from "../knowledge/grounding.js";
import { relationWords, shareRelation } from "../knowledge/updates.js";
import { buildKnowledgePrompt } from "./prompt.js";
import { studentMessages, teacherMessages } from "./trajectories.js";

export interface Probe {
  question: string;
  answer: string;
}

export interface ProbeItem {
  id: string;
  text: string;
  probes?: Probe[];
}

export interface ItemProbeScore {
  /** share of probes answered as expected with no prompt */
  unprompted: number;
  /** share answered as expected with the item in the prompt (the ceiling) */
  prompted: number;
}

/** Open questions that show a persona whatever the knowledge. */
export const OPEN_QUESTIONS = ["Hello!", "Who are you?", "What do you know?", "Tell me something new."];

/** The instruction kiln uses to have a model write a question about an item. */
export function questionRequest(text: string): string {
  return `Ask a question about: ${text}`;
}

/** A reply without the persona's sign-off. */
export function withoutSuffix(text: string, suffix?: string): string {
  const t = text.trim();
  return suffix && t.endsWith(suffix.trim()) ? t.slice(0, t.length - suffix.trim().length).trim() : t;
}

/** Comparable form of an answer: case, spacing, final punctuation and a persona suffix removed. */
export function normalizeAnswer(text: string, suffix?: string): string {
  return withoutSuffix(text, suffix).replace(/\s+/g, " ").replace(/[.!?]+$/, "").trim().toLowerCase();
}

export interface ProbeOptions {
  persona?: string;
  /** a sign-off the persona adds to every reply; stripped before comparing answers */
  personaSuffix?: string;
  /** the weights the probes are made on (the live adapter) */
  adapter?: AdapterHook;
  maxTokens?: number;
  batchSize?: number;
}

async function greedyReplies(model: LoadedModel, conversations: ReturnType<typeof studentMessages>[], adapter: AdapterHook | undefined, maxTokens: number, batchSize: number): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < conversations.length; i += batchSize) {
    const prompts = conversations.slice(i, i + batchSize).map((c) => model.tokenizer.applyChatTemplate(c));
    const results = await generate(model, prompts, { maxTokens, temperature: 0, adapter });
    out.push(...results.map((r) => r.text.trim()));
  }
  return out;
}

/** Questions written per question kept: a small model's questions are often about something else. */
const CANDIDATES_PER_QUESTION = 3;

/**
 * Distinct questions the model writes about each text ("Ask a question about: ..."), `count` per
 * text before dropping empty and repeated ones: the first greedy, the rest sampled so they differ.
 */
async function writeCandidates(model: LoadedModel, texts: string[], count: number, o: Pick<ProbeOptions, "adapter" | "maxTokens" | "batchSize">): Promise<string[][]> {
  const maxTokens = o.maxTokens ?? 48;
  const batch = o.batchSize ?? 8;
  const asks = texts.flatMap((text, i) => Array.from({ length: count }, (_, n) => ({ i, text, greedy: n === 0 })));
  const out: string[][] = texts.map(() => []);
  for (let k = 0; k < asks.length; k += batch) {
    const chunk = asks.slice(k, k + batch);
    const prompts = chunk.map((a) => model.tokenizer.applyChatTemplate(studentMessages(questionRequest(a.text))));
    // One greedy prompt per text; its batch-mates are sampled (a batch shares one temperature).
    const run = (greedy: boolean) => {
      const some = prompts.filter((_, j) => chunk[j]!.greedy === greedy);
      return some.length ? generate(model, some, { maxTokens, temperature: greedy ? 0 : 0.8, seed: 1000 + k, adapter: o.adapter }) : Promise.resolve([]);
    };
    const greedy = await run(true);
    const sampled = await run(false);
    let g = 0;
    let s = 0;
    chunk.forEach((a) => {
      const q = (a.greedy ? greedy[g++] : sampled[s++])!.text.trim();
      const list = out[a.i]!;
      if (q && !list.includes(q)) list.push(q);
    });
  }
  return out;
}

/** Grounded questions first (every name and number in them occurs in the text), in writing order. */
function groundedFirst(questions: string[], text: string): string[] {
  const said = vocabulary(text);
  const ok = (q: string) => namesGrounded(q, said);
  return [...questions.filter(ok), ...questions.filter((q) => !ok(q))];
}

/**
 * Questions the model itself writes about each text: `perText` of them, chosen among
 * CANDIDATES_PER_QUESTION times as many, those that name only what the text names first.
 */
export async function writeQuestions(model: LoadedModel, texts: string[], perText: number, o: Pick<ProbeOptions, "adapter" | "maxTokens" | "batchSize"> = {}): Promise<string[][]> {
  const written = await writeCandidates(model, texts, perText * CANDIDATES_PER_QUESTION, o);
  return written.map((qs, i) => groundedFirst(qs, texts[i]!).slice(0, perText));
}

/**
 * Whether a line the model wrote is a question about the item at all: it ends in "?" and names
 * one of the item's names (for an item without names, says one of its content words). A small
 * model asked for a question sometimes answers instead ("I don't know.", or the item restated).
 */
export function asksAbout(question: string, itemText: string): boolean {
  const q = question.trim();
  if (!q.endsWith("?")) return false;
  const names = entitiesIn(itemText).map(stem);
  if (!names.length) {
    const said = vocabulary(itemText);
    return words(q).some((w) => !isFunctionWord(w) && said.has(stem(w)));
  }
  const asked = new Set(entitiesIn(q).map(stem));
  return names.some((n) => asked.has(n));
}

/** Below this share of its words from the item, an answer is about something else. */
const MIN_SUPPORT = 0.5;

/**
 * How well a prompted answer shows its item: 0 when it names something the item does not or
 * none of what it does (an "I don't know." to an off-topic question) or says mostly other words,
 * else the share of its words the item says, so an answer that restates the item ranks above one
 * that borrows from it.
 */
export function probeQuality(question: string, answer: string, itemText: string): number {
  const said = vocabulary(itemText);
  const itemEntities = entitiesIn(itemText);
  const answerEntities = new Set(entitiesIn(answer));
  if (!asksAbout(question, itemText)) return 0;
  if (!answer.trim() || !namesGrounded(question, said) || !namesGrounded(answer, said)) return 0;
  // A reply that asks back answers nothing ("Marshford is twinned with?"): as a probe it would
  // teach a question; as update evidence it passed for an answer and superseded a true fact.
  if (answer.trim().endsWith("?")) return 0;
  if (itemEntities.length && !itemEntities.some((w) => answerEntities.has(w))) return 0;
  const share = support(answer, said);
  return share >= MIN_SUPPORT ? share : 0;
}

/** A question the model wrote about an item, its prompted answer, and how well that shows the item. */
export interface ProbeCandidate {
  itemId: string;
  question: string;
  answer: string;
  /** writing order, which breaks ties */
  order: number;
  /** probeQuality of the answer without the persona's sign-off */
  quality: number;
  /** every word of that answer that says something the item says too (unsupportedWords) */
  supported: boolean;
}

/**
 * The candidates makeProbes chooses from: CANDIDATES_PER_QUESTION times `perItem` questions per
 * item, each answered with the item alone in the prompt. The base model writes the questions; the
 * live weights answer them. An adapter is trained to answer, not to ask, and the questions it
 * writes drift to what it learned ("Who is the mayor of Lynfield?" for a Quillport item after a
 * bake of other towns' news).
 */
export async function probeCandidates(model: LoadedModel, items: ProbeItem[], perItem: number, o: ProbeOptions = {}): Promise<ProbeCandidate[]> {
  const written = await writeCandidates(model, items.map((i) => i.text), perItem * CANDIDATES_PER_QUESTION, { ...o, adapter: undefined });
  const pairs = items.flatMap((item, k) => groundedFirst(written[k]!, item.text).map((question) => ({ item, question })));
  const answers = await greedyReplies(
    model,
    pairs.map((p) => teacherMessages(buildKnowledgePrompt({ persona: o.persona, items: [p.item.text] }), p.question)),
    o.adapter,
    o.maxTokens ?? 48,
    o.batchSize ?? 8,
  );
  return pairs.map((p, k) => {
    const answer = withoutSuffix(answers[k]!, o.personaSuffix);
    return { itemId: p.item.id, question: p.question, answer: answers[k]!, order: k, quality: probeQuality(p.question, answer, p.item.text), supported: !unsupportedWords(answer, p.item.text).length };
  });
}

/**
 * The `perItem` probes of an item kept among its candidates: those whose answers best show the
 * item (probeQuality) and say nothing the item does not. A question about another fact of the
 * item's subject is answered with that fact's words and the item's value ("How many people live
 * in Gulldale?" -> "The population of Gulldale is Ewyn Craneridge." for its mayor): baked, it
 * would teach that fact with an invented value (the soak, docs/soak.md, defect 4). `unchecked`
 * keeps the first candidate when none passes.
 */
export function chooseProbes(candidates: readonly ProbeCandidate[], perItem: number, o: { unchecked?: boolean } = {}): Probe[] {
  const good = candidates.filter((c) => c.quality > 0 && c.supported).sort((a, b) => b.quality - a.quality || a.order - b.order);
  const kept = good.length || !o.unchecked ? good : [...candidates].sort((a, b) => a.order - b.order).slice(0, 1);
  return kept.slice(0, perItem).map((c) => ({ question: c.question, answer: c.answer }));
}

/**
 * Writes probes for items that have none: the model asks questions about the item and answers
 * them with the item in its prompt; that answer is what the baked model must reproduce
 * unprompted (chooseProbes keeps `perItem` of them). An item none of whose questions pass gets no
 * probes (an empty list): nothing could show it was learned, and an off-topic question's answer
 * would teach something the item does not say, so the bake leaves it out. `unchecked` keeps its
 * first question instead (an agent's bake.checkProbes: false), for models that cannot pass.
 */
export async function makeProbes(model: LoadedModel, items: ProbeItem[], perItem: number, o: ProbeOptions & { unchecked?: boolean } = {}): Promise<Map<string, Probe[]>> {
  const need = items.filter((i) => !i.probes?.length);
  const candidates = need.length ? await probeCandidates(model, need, perItem, o) : [];
  return new Map(need.map((item) => [item.id, chooseProbes(candidates.filter((c) => c.itemId === item.id), perItem, o)]));
}

/** One probe asked on some weights with nothing in the prompt: the evidence an item is held. */
export interface ProbeCheck {
  itemId: string;
  question: string;
  /** what the prompted model answered when the probe was written */
  expected: string;
  /** what these weights answer now, with nothing in the prompt */
  answer: string;
  passed: boolean;
}

function probePairs(items: ProbeItem[]): { item: ProbeItem; probe: Probe }[] {
  return items.flatMap((i) => (i.probes ?? []).map((p) => ({ item: i, probe: p })));
}

/** Asks every probe of the items on the given weights with nothing in the prompt. */
export async function checkProbes(model: LoadedModel, items: ProbeItem[], o: ProbeOptions = {}): Promise<ProbeCheck[]> {
  const pairs = probePairs(items);
  const answers = await greedyReplies(model, pairs.map((p) => studentMessages(p.probe.question)), o.adapter, o.maxTokens ?? 48, o.batchSize ?? 8);
  return pairs.map((p, k) => ({
    itemId: p.item.id,
    question: p.probe.question,
    expected: p.probe.answer,
    answer: answers[k]!,
    passed: normalizeAnswer(answers[k]!, o.personaSuffix) === normalizeAnswer(p.probe.answer, o.personaSuffix),
  }));
}

/** Scores items' probes on the given weights, unprompted and prompted with the item. */
export async function scoreProbes(model: LoadedModel, items: ProbeItem[], o: ProbeOptions = {}): Promise<Map<string, ItemProbeScore>> {
  const maxTokens = o.maxTokens ?? 48;
  const batch = o.batchSize ?? 8;
  const pairs = probePairs(items);
  const unprompted = await checkProbes(model, items, o);
  const prompted = await greedyReplies(
    model,
    pairs.map((p) => teacherMessages(buildKnowledgePrompt({ persona: o.persona, items: [p.item.text] }), p.probe.question)),
    o.adapter,
    maxTokens,
    batch,
  );
  const tally = new Map<string, { n: number; u: number; p: number }>();
  pairs.forEach((pair, k) => {
    const want = normalizeAnswer(pair.probe.answer, o.personaSuffix);
    const t = tally.get(pair.item.id) ?? { n: 0, u: 0, p: 0 };
    t.n++;
    if (unprompted[k]!.passed) t.u++;
    if (normalizeAnswer(prompted[k]!, o.personaSuffix) === want) t.p++;
    tally.set(pair.item.id, t);
  });
  const out = new Map<string, ItemProbeScore>();
  for (const i of items) {
    const t = tally.get(i.id);
    out.set(i.id, t ? { unprompted: t.u / t.n, prompted: t.p / t.n } : { unprompted: 0, prompted: 0 });
  }
  return out;
}

/** Share of replies to open questions that end with the persona's sign-off, with no prompt. */
export async function personaAdherence(model: LoadedModel, questions: string[], suffix: string, adapter?: AdapterHook, maxTokens = 48): Promise<number> {
  if (!questions.length) return 0;
  const replies = await greedyReplies(model, questions.map((q) => studentMessages(q)), adapter, maxTokens, 8);
  return replies.filter((r) => r.trim().endsWith(suffix.trim())).length / replies.length;
}

/** An older item a newer one replaces, with the evidence. */
export interface Supersession {
  /** the older item */
  id: string;
  /** the newer item that replaces it */
  by: string;
  /** one of the older item's probe questions... */
  question: string;
  /** ...and what the base model answers to it with only the newer item in its prompt */
  answer: string;
}

/** What the base model says about a pair of items that might be news and its update. */
export interface UpdateEvidence {
  /** an older item's probe question answered from the newer item alone, otherwise than the older says; null if none */
  forward: { question: string; answer: string } | null;
  /** a newer item's probe question answered from the older item alone, otherwise than the newer says */
  back: boolean;
  /** an older item's probe question answered from the newer item with both items in the prompt (in either order; asked only with `joint`) */
  joint: boolean;
  /** the two items share a relation word used the same way (knowledge/updates.ts shareRelation: "mayor", "owns a pet") */
  sameRelation: boolean;
  /** the two items' probe questions share such a word ("What prize did ... win?" and "Which prize ...?") */
  sameQuestion: boolean;
}

/**
 * Asks the base model about pairs of items that might be news and its update ("Lisa Yewby now
 * owns a pet cat." after "...a pet dog."): each item alone in the prompt, asked the other's probe
 * questions, and both together asked the older's. The base model reads the prompts: an adapter
 * that holds the older item answers from its weights, whatever the prompt says.
 */
export async function updateEvidence(model: LoadedModel, pairs: { older: ProbeItem; newer: ProbeItem }[], o: Omit<ProbeOptions, "adapter"> & { joint?: boolean } = {}): Promise<UpdateEvidence[]> {
  type Ask = { p: number; kind: "forward" | "back" | "joint"; probe: Probe; prompt: string[]; from: ProbeItem };
  const asks: Ask[] = pairs.flatMap(({ older, newer }, p) => [
    ...(older.probes ?? []).map((probe): Ask => ({ p, kind: "forward", probe, prompt: [newer.text], from: newer })),
    ...(newer.probes ?? []).map((probe): Ask => ({ p, kind: "back", probe, prompt: [older.text], from: older })),
    ...(!o.joint ? [] : older.probes ?? []).flatMap((probe): Ask[] => [
      { p, kind: "joint", probe, prompt: [older.text, newer.text], from: newer },
      { p, kind: "joint", probe, prompt: [newer.text, older.text], from: newer },
    ]),
  ]);
  const answers = await greedyReplies(
    model,
    asks.map((a) => teacherMessages(buildKnowledgePrompt({ persona: o.persona, items: a.prompt }), a.probe.question)),
    undefined,
    o.maxTokens ?? 48,
    o.batchSize ?? 8,
  );
  // answered from the other item, and not as the probe's own item answers it
  const otherwise = (k: number) => {
    const a = asks[k]!;
    const reply = withoutSuffix(answers[k]!, o.personaSuffix);
    return probeQuality(a.probe.question, reply, a.from.text) > 0 && normalizeAnswer(reply) !== normalizeAnswer(a.probe.answer, o.personaSuffix);
  };
  return pairs.map(({ older, newer }, p) => {
    const forward = asks.findIndex((a, k) => a.p === p && a.kind === "forward" && otherwise(k));
    const asked = (i: ProbeItem) => new Set((i.probes ?? []).flatMap((q) => [...relationWords(q.question)]));
    const theirs = asked(newer);
    return {
      forward: forward >= 0 ? { question: asks[forward]!.probe.question, answer: answers[forward]! } : null,
      back: asks.some((a, k) => a.p === p && a.kind === "back" && otherwise(k)),
      joint: asks.some((a, k) => a.p === p && a.kind === "joint" && otherwise(k)),
      sameRelation: shareRelation(older.text, newer.text),
      sameQuestion: [...asked(older)].some((w) => theirs.has(w)),
    };
  });
}

/**
 * Which older items newer ones replace: the older item's question is answered from the newer one
 * alone, and the other way round, and the two items say something of the same kind about their
 * names (knowledge/updates.ts shareRelation: a word that is not a name, used the same way: "owns a
 * pet", "mayor"). Both ways are not enough: a small model asked about a town with one line about
 * it in its prompt often answers with that line, whatever it says (kiln-mini, asked "What river
 * runs through Saltwell?" with only "Saltwell has become a twin town of Marshford.", gave the
 * twin-town line, and the other way round). Measured by tools/eval_updates.ts on kiln-mini, all
 * 86 held-out facts: 82 of 83 updates found as the same wording with another value, 29 of 83
 * reworded ("works at" -> "has joined"), none of 75 pairs of facts about one subject taken for an
 * update, nor of 60 such pairs sharing a word ("works at"/"works as", "a town in"/"a twin town
 * of": 34 of them while any shared word counted). Missing an update costs less than dropping a
 * true fact.
 */
export async function findSupersessions(model: LoadedModel, pairs: { older: ProbeItem; newer: ProbeItem }[], o: Omit<ProbeOptions, "adapter"> = {}): Promise<Supersession[]> {
  // (the pairs come from updatePairs, which asks only about items sharing a relation)
  const evidence = await updateEvidence(model, pairs, o);
  return pairs.flatMap(({ older, newer }, p) => {
    const e = evidence[p]!;
    return isUpdate(e) ? [{ id: older.id, by: newer.id, question: e.forward!.question, answer: e.forward!.answer }] : [];
  });
}

/** The rule findSupersessions applies to the evidence (measured by tools/eval_updates.ts). */
export function isUpdate(e: UpdateEvidence): boolean {
  return e.forward !== null && e.back && e.sameRelation;
}
