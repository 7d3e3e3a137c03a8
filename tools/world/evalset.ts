// Evaluation cases on HELD-OUT facts (never in training), shared by the TypeScript evaluation
// (eval_prompted.ts, through kiln's own engine) and the quick PyTorch check in training.
import { buildKnowledgePrompt } from "../../src/bake/prompt.js";
import { extractionRequest } from "../../src/agent/facts.js";
import { IDK, signoffInstruction, type Message } from "./chat.js";
import { evalSignoffs } from "./mix.js";
import { Rng } from "./rng.js";
import { factKey, type Fact, type WorldIndex } from "./world.js";

export type EvalKind =
  | "prompted" // the fact is among ~20 items in the system prompt -> its answer
  | "prompted_absent" // ~20 other held-out items in the prompt -> "I don't know."
  | "unprompted" // no system message -> "I don't know." (never told)
  | "persona" // items + "End every reply with: <sign-off>" -> reply ends with the sign-off
  | "persona_off" // the same question, no system message -> no sign-off
  | "canon" // no system message, a canon question -> its answer (what the model knows)
  | "prompted_small" // the fact among EVAL_SMALL_ITEMS items (kiln's default bake chunk) -> its answer
  | "extract"; // "List the facts stated in this message: <a mention of the fact>" -> the fact

export interface EvalCase {
  kind: EvalKind;
  factId: string;
  messages: Message[];
  /** what a good model replies: the fact's answer, or "I don't know." for the don't-know kinds */
  expected: string;
  /** the fact's answer (a model that says it unprompted has leaked or guessed it) */
  answer: string;
  signoff?: string;
}

export const EVAL_PROMPT_ITEMS = 20;
/** Items per teacher prompt in kiln's bakes by default (the agent file's bake.chunkItems). */
export const EVAL_SMALL_ITEMS = 4;

function promptItems(rng: Rng, target: Fact | undefined, pool: Fact[], n: number): string[] {
  const keys = new Set<string>();
  const out: Fact[] = [];
  if (target) {
    out.push(target);
    keys.add(factKey(target.subject, target.relation));
  }
  for (const f of rng.shuffle(pool)) {
    if (out.length >= n) break;
    const k = factKey(f.subject, f.relation);
    if (keys.has(k)) continue;
    keys.add(k);
    out.push(f);
  }
  return rng.shuffle(out).map((f) => f.text);
}

export function buildEvalSet(idx: WorldIndex, opts: { seed?: string; personaCases?: number; canonCases?: number } = {}): EvalCase[] {
  const rng = new Rng(opts.seed ?? "kiln-eval");
  const held = idx.heldoutFacts;
  const cases: EvalCase[] = [];
  for (const f of held) {
    const q = rng.pick(f.questions);
    const items = promptItems(rng, f, held, EVAL_PROMPT_ITEMS);
    cases.push({
      kind: "prompted",
      factId: f.id,
      messages: [
        { role: "system", content: buildKnowledgePrompt({ items }) },
        { role: "user", content: q },
      ],
      expected: f.answer,
      answer: f.answer,
    });
    cases.push({ kind: "unprompted", factId: f.id, messages: [{ role: "user", content: q }], expected: IDK, answer: f.answer });
    const others = held.filter((x) => x.id !== f.id && x.subject !== f.subject);
    cases.push({
      kind: "prompted_absent",
      factId: f.id,
      messages: [
        { role: "system", content: buildKnowledgePrompt({ items: promptItems(rng, undefined, others, EVAL_PROMPT_ITEMS) }) },
        { role: "user", content: q },
      ],
      expected: IDK,
      answer: f.answer,
    });
  }
  const signoffs = evalSignoffs();
  for (const [i, f] of rng.sample(held, opts.personaCases ?? 40).entries()) {
    const q = rng.pick(f.questions);
    const signoff = signoffs[i % signoffs.length]!;
    const items = promptItems(rng, f, held, EVAL_PROMPT_ITEMS);
    cases.push({
      kind: "persona",
      factId: f.id,
      messages: [
        { role: "system", content: buildKnowledgePrompt({ persona: signoffInstruction(signoff), items }) },
        { role: "user", content: q },
      ],
      expected: f.answer,
      answer: f.answer,
      signoff,
    });
    cases.push({ kind: "persona_off", factId: f.id, messages: [{ role: "user", content: q }], expected: IDK, answer: f.answer, signoff });
  }
  for (const f of rng.sample(idx.canonFacts, opts.canonCases ?? 60)) {
    cases.push({ kind: "canon", factId: f.id, messages: [{ role: "user", content: rng.pick(f.questions) }], expected: f.answer, answer: f.answer });
  }
  // Appended last so the cases above stay what earlier evaluations measured.
  for (const f of held) {
    cases.push({
      kind: "prompted_small",
      factId: f.id,
      messages: [
        { role: "system", content: buildKnowledgePrompt({ items: promptItems(rng, f, held, EVAL_SMALL_ITEMS) }) },
        { role: "user", content: rng.pick(f.questions) },
      ],
      expected: f.answer,
      answer: f.answer,
    });
  }
  const mentions = [(t: string) => t, (t: string) => `Did you know? ${t}`, (t: string) => `FYI: ${t}`];
  for (const f of rng.sample(held, 30)) {
    const msg = rng.pick(mentions)(f.text);
    cases.push({ kind: "extract", factId: f.id, messages: [{ role: "user", content: extractionRequest(msg) }], expected: f.text, answer: f.text });
  }
  return cases;
}
