// The embedded model's bar (issue 4), measured through kiln's own engine and baking:
//
//   node dist/tools/eval_bake.js [--model models/kiln-mini] [--facts 20] [--chunk 4] [--replay 20] [--skip 0] [--updates 8] [--teacher base|live] [--objectives forward,on-policy] [--json] [--misses]
//
// On HELD-OUT facts of the world (never in training): prompted QA (20 facts in the system
// prompt, and the fact among the --chunk facts of its teacher prompt, which is how kiln bakes:
// bake.chunkItems, default 4), unprompted QA, unprompted after one bake of those 20 facts, a persona sign-off
// prompted / baked, retention of the first 20 after a rolling bake of 20 new ones (student from
// the first adapter; teacher = the base model with the new facts and a replay sample in its
// prompt, as the runtime does by default, or the first adapter with them: --teacher live), and a
// third bake of updates: --updates of the second bake's facts told again with another value.
// Trajectory questions are all but one paraphrase per fact; that last paraphrase is also scored,
// to show whether the knowledge generalises beyond the questions it was baked on.
// --objectives runs the bakes (the three rolling ones and the persona's) once per bake objective,
// on the same facts, and prints them side by side with each bake's seconds and validation KL:
// with --replay 0 the retention rows are what a sequence of bakes forgets.
import { initBackend } from "../src/tensor/backend.js";
import { sizeOutputPool } from "../src/tensor/native.js";
import { loadModel, type LoadedModel } from "../src/model/load.js";
import { generate } from "../src/model/generate.js";
import type { AdapterHook } from "../src/model/decoder.js";
import type { ChatMessage } from "../src/model/tokenizer.js";
import { buildKnowledgePrompt, knowledgeLessons } from "../src/bake/prompt.js";
import { BAKE_OBJECTIVES, bake, type BakeObjective, type BakeReport, type BakeSettings } from "../src/bake/trainer.js";
import { DEFAULT_MODEL_DIR } from "../src/model/resolve.js";
import { generateWorld, WorldIndex, factKey, type Fact } from "./world/world.js";
import { answerMatch, endsWithSignoff, signoffInstruction } from "./world/chat.js";
import { OPEN_QUESTIONS, GREETINGS, WHO_QUESTIONS } from "./world/mix.js";

const args = process.argv.slice(2);
const opt = (name: string, fallback: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1]! : fallback;
};
const modelDir = opt("model", DEFAULT_MODEL_DIR);
const N = Number(opt("facts", "20"));
const CHUNK = Number(opt("chunk", "4"));
/** first-bake facts replayed into the second bake (the agent default replays up to 20) */
const REPLAY = Number(opt("replay", String(N)));
const json = args.includes("--json");
/** print the wrong answers (question, reply, expected) of the prompted, after-one-bake (baked paraphrases) and retention rows on stderr */
const MISSES = args.includes("--misses");
/** held-out facts to pass over first, so a second run measures other facts (86 in all) */
const SKIP = Number(opt("skip", "0"));
/** second-bake facts a third bake updates with another value */
const UPDATES = Number(opt("updates", "8"));
const SETTINGS: Partial<BakeSettings> = JSON.parse(opt("settings", "{}"));
/** the rolling bake's teacher: the base model or the first adapter, each with the prompt (an agent's bake.teacher) */
const TEACHER = opt("teacher", "base");
if (TEACHER !== "base" && TEACHER !== "live") throw new Error(`--teacher is base or live, not ${TEACHER}`);
const OBJECTIVES = opt("objectives", "forward").split(",") as BakeObjective[];
for (const o of OBJECTIVES) if (!BAKE_OBJECTIVES.includes(o)) throw new Error(`--objectives: ${o} is not one of ${BAKE_OBJECTIVES.join(", ")}`);

async function replies(model: LoadedModel, conversations: ChatMessage[][], adapter?: AdapterHook): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < conversations.length; i += 16) {
    const prompts = conversations.slice(i, i + 16).map((c) => model.tokenizer.applyChatTemplate(c));
    out.push(...(await generate(model, prompts, { maxTokens: 32, temperature: 0, adapter })).map((r) => r.text.trim()));
  }
  return out;
}

function rate(rs: string[], expected: string[], questions?: string[]): number {
  const right = rs.map((r, i) => answerMatch(r, expected[i]!));
  if (MISSES && questions) right.forEach((ok, i) => ok || log(`  miss: ${questions[i]} -> ${JSON.stringify(rs[i])} (expected ${expected[i]})`));
  return right.filter(Boolean).length / rs.length;
}

/** Facts about distinct subject+relation pairs, so no two in one prompt contradict. */
function pickFacts(pool: Fact[], n: number, skip: Set<string>): Fact[] {
  const out: Fact[] = [];
  if (n <= 0) return out;
  for (const f of pool) {
    const k = factKey(f.subject, f.relation);
    if (skip.has(k) || f.questions.length < 2) continue;
    skip.add(k);
    out.push(f);
    if (out.length === n) break;
  }
  return out;
}

const log = (s: string) => process.stderr.write(s + "\n");
await initBackend();
sizeOutputPool("bake"); // as kiln's bake worker does
const model = loadModel(modelDir);
const idx = new WorldIndex(generateWorld());
const used = new Set<string>();
pickFacts(idx.heldoutFacts, SKIP, used);
const A = pickFacts(idx.heldoutFacts, N, used);
const B = pickFacts(idx.heldoutFacts, N, used);
const ask = (facts: Fact[], which: "seen" | "unseen") => facts.map((f) => (which === "unseen" ? f.questions[0]! : f.questions[1]!));
const user = (q: string): ChatMessage[] => [{ role: "user", content: q }];
const withItems = (items: Fact[], q: string, persona?: string): ChatMessage[] => [
  { role: "system", content: buildKnowledgePrompt({ persona, items: items.map((f) => f.text) }) },
  { role: "user", content: q },
];
const answers = (facts: Fact[]) => facts.map((f) => f.answer);
const started = performance.now();
type Unit = "%" | "s" | "kl";
const rows: { measure: string; unit: Unit; values: Partial<Record<BakeObjective, number>>; bar?: string }[] = [];
const show = (unit: Unit, v: number) => (unit === "%" ? `${(100 * v).toFixed(1)}%` : unit === "s" ? `${v.toFixed(0)} s` : v.toFixed(4));
/** A row-writer for some objectives' columns: the prompted rows are the same for all of them. */
const rowsFor = (columns: BakeObjective[]) => (measure: string, value: number, bar?: string, unit: Unit = "%") => {
  let r = rows.find((x) => x.measure === measure);
  if (!r) rows.push((r = { measure, unit, values: {}, ...(bar ? { bar } : {}) }));
  for (const c of columns) r.values[c] = value;
  log(`${measure}${columns.length < OBJECTIVES.length ? ` [${columns.join(", ")}]` : ""}: ${show(unit, value)}${bar ? ` (bar ${bar})` : ""}`);
};
const shared = rowsFor(OBJECTIVES);

/** The facts sharing a teacher prompt with fact i when kiln bakes `facts` in chunks. */
const chunkOf = (facts: Fact[], i: number) => (CHUNK > 0 ? facts.slice(i - (i % CHUNK), i - (i % CHUNK) + CHUNK) : facts);
shared(`prompted QA, ${N} facts in the system prompt`, rate(await replies(model, ask(A, "unseen").map((q) => withItems(A, q))), answers(A), ask(A, "unseen")), ">= 90%");
shared(`prompted QA, the fact among the ${CHUNK} of its bake prompt`, rate(await replies(model, ask(A, "unseen").map((q, i) => withItems(chunkOf(A, i), q))), answers(A), ask(A, "unseen")), ">= 90%");
shared("unprompted QA, before baking", rate(await replies(model, ask(A, "unseen").map(user)), answers(A)), "<= 10%");

const signoff = "Cheers, Ada";
const persona = signoffInstruction(signoff);
const personaTrain = [...OPEN_QUESTIONS, ...GREETINGS, ...WHO_QUESTIONS, ...idx.canonFacts.slice(0, 30).map((f) => f.questions[0]!)];
const personaTest = [...idx.canonFacts.slice(30, 50).map((f) => f.questions[0]!), ...ask(B, "unseen")];
const signs = (rs: string[]) => rs.filter((r) => endsWithSignoff(r, signoff)).length / rs.length;
shared("persona sign-off, prompted", signs(await replies(model, personaTest.map((q) => withItems([], q, persona)))), ">= 90%");
shared("persona sign-off, unprompted before baking", signs(await replies(model, personaTest.map(user))));

const baseSettings: Partial<BakeSettings> = { trajectories: 160, epochs: 12, patience: 4, learningRate: 2e-3, temperature: 1, maxReplyTokens: 16, batchSize: 16, lora: { r: 16, alpha: 32, dropout: 0, useRslora: false, targetModules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] }, ...SETTINGS };
const lessons = (facts: Fact[]) => knowledgeLessons({ items: facts.map((f) => ({ text: f.text, questions: f.questions.slice(1) })), chunkItems: CHUNK });
/**
 * Logs a bake's validations and adds up its seconds by phase: the time up to each progress
 * message is the work of that message's phase (sample, teacher, train, validate).
 */
const progress = (label: string, seconds: Record<string, number>) => {
  let last = performance.now();
  return (p: { phase: string } & Record<string, unknown>) => {
    const now = performance.now();
    seconds[p.phase] = (seconds[p.phase] ?? 0) + (now - last) / 1000;
    last = now;
    if (p.phase === "validate") log(`  ${label} epoch ${p.epoch}: validation KL/token ${(p.valKlPerToken as number).toFixed(4)}`);
  };
};

/** The first bake, the rolling bake of new facts, the bake of updates and the persona's, with one objective. */
async function bakes(objective: BakeObjective): Promise<void> {
  const row = rowsFor([objective]);
  const settings: Partial<BakeSettings> = { ...baseSettings, objective };
  const phases: Record<string, number> = {};
  const cost = (name: string, r: BakeReport) => {
    row(`${name}: seconds`, r.seconds, undefined, "s");
    row(`${name}: best validation KL/token (forward, on the teacher's replies)`, r.bestValKl, undefined, "kl");
    log(`  ${name} [${objective}]: validation KL/token ${r.initialValKl.toFixed(4)} -> ${r.bestValKl.toFixed(4)}, ${r.seconds.toFixed(0)} s`);
  };
  log(`baking the first ${N} facts (${objective})...`);
  const first = await bake({ model, lessons: lessons(A), settings, onProgress: progress("bake 1", phases) });
  cost("bake 1", first);
  row("unprompted QA after one bake (paraphrases baked on)", rate(await replies(model, ask(A, "seen").map(user), first.adapter), answers(A), ask(A, "seen")), ">= 80%");
  row("unprompted QA after one bake (a paraphrase never baked on)", rate(await replies(model, ask(A, "unseen").map(user), first.adapter), answers(A)));
  // as a chat asks: the fact's question after two others, answered as the model answers them alone
  const earlier = await replies(model, ask(A, "seen").map(user), first.adapter);
  const inChat = (i: number): ChatMessage[] =>
    [(i + 1) % N, (i + 2) % N].flatMap((j): ChatMessage[] => [
      { role: "user", content: ask(A, "seen")[j]! },
      { role: "assistant", content: earlier[j]! },
    ]).concat(user(ask(A, "seen")[i]!));
  row("unprompted QA after one bake, asked third in a chat", rate(await replies(model, A.map((_, i) => inChat(i)), first.adapter), answers(A), ask(A, "seen")));

  const half = Math.min(REPLAY, N);
  log(`rolling bake of ${N} new facts, replaying ${half} of the first (${objective})...`);
  const replay = A.slice(0, half);
  const second = await bake({
    model,
    lessons: lessons([...B, ...replay]),
    settings,
    teacherAdapter: TEACHER === "live" ? first.adapter : undefined,
    initFrom: first.adapter,
    onProgress: progress("bake 2", phases),
  });
  cost("bake 2", second);
  row("new facts after the second bake", rate(await replies(model, ask(B, "seen").map(user), second.adapter), answers(B)));
  row(`retention: the first ${N} after the second bake`, rate(await replies(model, ask(A, "seen").map(user), second.adapter), answers(A), ask(A, "seen")), ">= 80%");
  if (N > half) row("retention: first-bake facts not replayed", rate(await replies(model, ask(A.slice(half), "seen").map(user), second.adapter), answers(A.slice(half))));
  first.adapter.dispose();

  // News that updates what the weights hold: UPDATES of the second bake's facts again, each with
  // another value of its relation; the runtime finds them superseded, so the old texts are not replayed.
  const others = (f: Fact) => idx.world.facts.filter((g) => g.relation === f.relation && g.answer !== f.answer && !f.text.includes(g.answer));
  const updated = B.slice(0, UPDATES).map((f) => {
    const value = others(f)[0]!.answer;
    const at = f.text.lastIndexOf(f.answer);
    return { ...f, text: f.text.slice(0, at) + value + f.text.slice(at + f.answer.length), answer: value, old: f.answer };
  });
  const kept = B.slice(UPDATES);
  log(`bake of ${updated.length} updates to the second bake's facts, replaying the other ${kept.length} (${objective})...`);
  const third = await bake({ model, lessons: lessons([...updated, ...kept]), settings, teacherAdapter: TEACHER === "live" ? second.adapter : undefined, initFrom: second.adapter, onProgress: progress("bake 3", phases) });
  cost("bake 3", third);
  const afterUpdate = await replies(model, ask(updated, "seen").map(user), third.adapter);
  if (updated.length) {
    row("updates: the new value answered", rate(afterUpdate, answers(updated), ask(updated, "seen")));
    row("updates: the old value still answered", afterUpdate.filter((r, i) => answerMatch(r, updated[i]!.old)).length / updated.length);
  }
  row("retention: the other facts of the second bake after the updates", rate(await replies(model, ask(kept, "seen").map(user), third.adapter), answers(kept), ask(kept, "seen")));
  // two bakes on, replayed into the second only (with --replay 0, into neither): what the sequence forgot
  row(`retention: the first ${N} after the third bake`, rate(await replies(model, ask(A, "seen").map(user), third.adapter), answers(A), ask(A, "seen")));
  second.adapter.dispose();
  third.adapter.dispose();

  log(`baking the persona (${objective})...`);
  const p = await bake({ model, prompt: buildKnowledgePrompt({ persona }), questions: personaTrain, settings, onProgress: progress("persona", phases) });
  cost("persona bake", p);
  row("persona sign-off, baked, unprompted (questions not baked on)", signs(await replies(model, personaTest.map(user), p.adapter)), ">= 90%");
  p.adapter.dispose();
  const phaseNames: [string, string][] = [["sample", "sampling replies"], ["teacher", "the teacher scoring them"], ["train", "training steps"], ["validate", "validation"]];
  for (const [phase, what] of phaseNames) row(`the four bakes: seconds ${what}`, phases[phase] ?? 0, undefined, "s");
}
for (const objective of OBJECTIVES) await bakes(objective);

const minutes = (performance.now() - started) / 60000;
if (json) process.stdout.write(JSON.stringify({ model: modelDir, facts: N, chunk: CHUNK, skip: SKIP, replay: REPLAY, settings: baseSettings, objectives: OBJECTIVES, rows, minutes }, null, 2) + "\n");
else {
  process.stdout.write(`| measure (held-out facts) | ${OBJECTIVES.join(" | ")} | bar |\n|---|${OBJECTIVES.map(() => "---|").join("")}---|\n`);
  for (const r of rows) process.stdout.write(`| ${r.measure} | ${OBJECTIVES.map((o) => (r.values[o] === undefined ? "" : show(r.unit, r.values[o]!))).join(" | ")} | ${r.bar ?? ""} |\n`);
  process.stdout.write(`\n${minutes.toFixed(1)} minutes, ${CHUNK} facts per teacher prompt, ${REPLAY} replayed, settings ${JSON.stringify(baseSettings)}\n`);
}
