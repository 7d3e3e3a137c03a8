// Probes: question/answer pairs that show whether an item is absorbed. An item is absorbed by a
// weights version when the model, without the item in its prompt, answers the item's probe
// questions as the prompted model does (docs/prompt-baking.md, "What absorbed should mean").
import type { AdapterHook } from "../model/decoder.js";
import { generate } from "../model/generate.js";
import type { LoadedModel } from "../model/load.js";
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

/** Comparable form of an answer: case, spacing, final punctuation and a persona suffix removed. */
export function normalizeAnswer(text: string, suffix?: string): string {
  let t = text.trim();
  if (suffix && t.endsWith(suffix.trim())) t = t.slice(0, t.length - suffix.trim().length).trim();
  return t.replace(/\s+/g, " ").replace(/[.!?]+$/, "").trim().toLowerCase();
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

/**
 * Questions the model itself writes about each text ("Ask a question about: ..."): the first is
 * greedy, more are sampled so they differ; empty and repeated ones are dropped.
 */
export async function writeQuestions(model: LoadedModel, texts: string[], perText: number, o: Pick<ProbeOptions, "adapter" | "maxTokens" | "batchSize"> = {}): Promise<string[][]> {
  const maxTokens = o.maxTokens ?? 48;
  const batch = o.batchSize ?? 8;
  const asks = texts.flatMap((text, i) => Array.from({ length: perText }, () => ({ i, text })));
  const out: string[][] = texts.map(() => []);
  for (let k = 0; k < asks.length; k += batch) {
    const chunk = asks.slice(k, k + batch);
    const prompts = chunk.map((a) => model.tokenizer.applyChatTemplate(studentMessages(questionRequest(a.text))));
    const results = await generate(model, prompts, { maxTokens, temperature: perText > 1 ? 0.8 : 0, seed: 1000 + k, adapter: o.adapter });
    results.forEach((r, j) => {
      const q = r.text.trim();
      const list = out[chunk[j]!.i]!;
      if (q && !list.includes(q)) list.push(q);
    });
  }
  return out;
}

/**
 * Writes probes for items that have none: the model asks a question about the item, then answers
 * it with the item in its prompt; that answer is what the baked model must reproduce unprompted.
 */
export async function makeProbes(model: LoadedModel, items: ProbeItem[], perItem: number, o: ProbeOptions = {}): Promise<Map<string, Probe[]>> {
  const need = items.filter((i) => !i.probes?.length);
  const result = new Map<string, Probe[]>();
  if (!need.length) return result;
  const questions = await writeQuestions(model, need.map((i) => i.text), perItem, o);
  const pairs = need.flatMap((item, k) => questions[k]!.map((question) => ({ item, question })));
  const answers = await greedyReplies(
    model,
    pairs.map((p) => teacherMessages(buildKnowledgePrompt({ persona: o.persona, items: [p.item.text] }), p.question)),
    o.adapter,
    o.maxTokens ?? 48,
    o.batchSize ?? 8,
  );
  pairs.forEach((p, k) => {
    const list = result.get(p.item.id) ?? [];
    list.push({ question: p.question, answer: answers[k]! });
    result.set(p.item.id, list);
  });
  return result;
}

/** Scores items' probes on the given weights, unprompted and prompted with the item. */
export async function scoreProbes(model: LoadedModel, items: ProbeItem[], o: ProbeOptions = {}): Promise<Map<string, ItemProbeScore>> {
  const maxTokens = o.maxTokens ?? 48;
  const batch = o.batchSize ?? 8;
  const pairs = items.flatMap((i) => (i.probes ?? []).map((p) => ({ item: i, probe: p })));
  const unprompted = await greedyReplies(model, pairs.map((p) => studentMessages(p.probe.question)), o.adapter, maxTokens, batch);
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
    if (normalizeAnswer(unprompted[k]!, o.personaSuffix) === want) t.u++;
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
