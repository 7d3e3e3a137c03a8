// How well kiln tells news that updates a fact from news about something else, on the embedded
// model (the evidence of bake/probes.ts updateEvidence, and the rule findSupersessions applies):
//
//   node dist/tools/eval_updates.js [--model models/kiln-mini] [--facts 40] [--split heldout|context]
//
// Updates: a world fact and the same fact with another value of its relation ("...a pet dog." ->
// "...a pet cat."): the first should be superseded. Not updates: two facts about the same subject
// and different relations ("...works at Northgate Motors." and "...owns a pet dog."): neither
// should be. Probes are written by the model as a bake writes them (makeProbes, two per item).
import { initBackend } from "../src/tensor/backend.js";
import { loadModel } from "../src/model/load.js";
import { DEFAULT_MODEL_DIR } from "../src/model/resolve.js";
import { isUpdate, makeProbes, updateEvidence, type ProbeItem, type UpdateEvidence } from "../src/bake/probes.js";
import { generateWorld, makeFact, rephrase, type Fact } from "./world/world.js";
import { relationWords } from "../src/knowledge/updates.js";
import { RELATIONS } from "./world/relations.js";

const args = process.argv.slice(2);
const opt = (name: string, fallback: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1]! : fallback;
};
const N = Number(opt("facts", "40"));
const split = opt("split", "heldout");

await initBackend();
const model = loadModel(opt("model", DEFAULT_MODEL_DIR));
const world = generateWorld();
const facts = world.facts.filter((f) => f.split === split).slice(0, N);

// another value of the same relation, written where the fact's text ends with its answer
const updated = (f: Fact): Fact | null => {
  const other = world.facts.find((g) => g.relation === f.relation && g.answer !== f.answer && !f.text.includes(g.answer));
  const at = f.text.lastIndexOf(f.answer);
  return other && at >= 0 ? { ...f, id: `${f.id}-update`, text: f.text.slice(0, at) + other.answer + f.text.slice(at + f.answer.length), answer: other.answer, value: other.answer } : null;
};
const updates = facts.flatMap((f) => {
  const u = updated(f);
  return u ? [{ older: f, newer: u }] : [];
});
// the update written in another of its relation's wordings ("...works at X." -> "...has joined Y.")
const reworded = updates.flatMap(({ older, newer }) => {
  const texts = RELATIONS.find((r) => r.name === older.relation)!.texts;
  const k = texts.findIndex((t) => t(older.subjectName, older.value) === older.text);
  const other = { ...newer, id: `${older.id}-reworded`, ...rephrase(newer, k + 1) } as Fact;
  return k >= 0 && texts.length > 1 ? [{ older, newer: other }] : [];
});
const unrelated = facts.flatMap((f, i) => facts.slice(i + 1).filter((g) => g.subject === f.subject && g.relation !== f.relation).map((g) => ({ older: f, newer: g })));
// any word other than names, function and time words in common: what kiln asked before session 10
const shareAWord = (a: string, b: string) => {
  const theirs = relationWords(b);
  return [...relationWords(a)].some((w) => theirs.has(w));
};
// the hard not-updates: a fact and another relation's fact about its subject, in a wording that
// shares such a word with it ("...is a town in Lindor." and "...has become a twin town of
// Hollowby."), either one older
const hard = facts.flatMap((f) =>
  RELATIONS.filter((r) => r.name !== f.relation && r.subject === RELATIONS.find((x) => x.name === f.relation)!.subject).flatMap((r) => {
    const value = world.facts.find((g) => g.relation === r.name && g.subject !== f.subject)?.value;
    if (!value) return [];
    return r.texts.flatMap((_, k) => {
      const g = { ...makeFact(r, f.subject, f.subjectName, value, k), id: `${f.id}-${r.name}-${k}`, split: f.split } as Fact;
      return shareAWord(f.text, g.text) ? [{ older: f, newer: g }, { older: g, newer: f }] : [];
    });
  }),
);

const items = new Map<string, ProbeItem>();
for (const f of [...updates, ...reworded, ...unrelated, ...hard].flatMap((p) => [p.older, p.newer])) items.set(f.id, { id: f.id, text: f.text });
process.stderr.write(`writing probes for ${items.size} items...\n`);
const probes = await makeProbes(model, [...items.values()], 2);
const probed = (f: Fact): ProbeItem => ({ id: f.id, text: f.text, probes: probes.get(f.id) ?? [] });
const usable = (pairs: { older: Fact; newer: Fact }[]) => pairs.map((p) => ({ older: probed(p.older), newer: probed(p.newer) })).filter((p) => p.older.probes!.length && p.newer.probes!.length);
const pos = usable(updates);
const posR = usable(reworded);
const neg = usable(unrelated);
const negH = usable(hard);
process.stderr.write(`asking about ${pos.length} updates and ${neg.length + negH.length} pairs that are not (${negH.length} sharing a relation word)...\n`);
type Worded = UpdateEvidence & { sharedWord: boolean };
const evidence = async (pairs: { older: ProbeItem; newer: ProbeItem }[]): Promise<Worded[]> =>
  (await updateEvidence(model, pairs, { joint: true })).map((e, k) => ({ ...e, sharedWord: shareAWord(pairs[k]!.older.text, pairs[k]!.newer.text) }));
const ePos = await evidence(pos);
const ePosR = await evidence(posR);
const eNeg = await evidence(neg);
const eNegH = await evidence(negH);

const rules: [string, (e: Worded) => boolean][] = [
  ["forward (the older's question answered from the newer)", (e) => e.forward !== null],
  ["forward and back", (e) => e.forward !== null && e.back],
  ["forward and joint", (e) => e.forward !== null && e.joint],
  ["forward, back and joint", (e) => e.forward !== null && e.back && e.joint],
  ["forward and same relation (shareRelation)", (e) => e.forward !== null && e.sameRelation],
  ["forward, back and same relation", (e) => e.forward !== null && e.back && e.sameRelation],
  ["forward, joint and same relation", (e) => e.forward !== null && e.joint && e.sameRelation],
  ["forward and same question words", (e) => e.forward !== null && e.sameQuestion],
  ["forward, back and same question words", (e) => e.forward !== null && e.back && e.sameQuestion],
  ["forward, back and same relation or question words", (e) => e.forward !== null && e.back && (e.sameRelation || e.sameQuestion)],
  ["forward, back, and same relation or same question words and joint", (e) => e.forward !== null && e.back && (e.sameRelation || (e.sameQuestion && e.joint))],
  ["kiln's rule (isUpdate)", isUpdate],
  ["forward, back and any relation word in common (kiln before session 10)", (e) => e.forward !== null && e.back && e.sharedWord],
];
const pct = (n: number, d: number) => `${d ? ((100 * n) / d).toFixed(1) : "-"}% (${n}/${d})`;
console.log(`| rule | updates found (same wording) | updates found (reworded) | not-updates taken for updates | of them sharing a relation word |`);
console.log(`|---|---|---|---|---|`);
for (const [name, rule] of rules) console.log(`| ${name} | ${pct(ePos.filter(rule).length, ePos.length)} | ${pct(ePosR.filter(rule).length, ePosR.length)} | ${pct(eNeg.filter(rule).length, eNeg.length)} | ${pct(eNegH.filter(rule).length, eNegH.length)} |`);
const wrong = [...neg.filter((_, k) => isUpdate(eNeg[k]!)), ...negH.filter((_, k) => isUpdate(eNegH[k]!))];
for (const p of wrong) process.stderr.write(`  false: "${p.older.text}" superseded by "${p.newer.text}"\n`);
const missed = [...pos.filter((_, k) => !isUpdate(ePos[k]!)), ...posR.filter((_, k) => !isUpdate(ePosR[k]!))];
for (const p of missed.slice(0, 10)) process.stderr.write(`  missed: "${p.older.text}" -> "${p.newer.text}"\n`);
model.dispose();
