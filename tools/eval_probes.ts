// Which probes kiln keeps for the soak's news (the world's held-out and context facts, each as
// the world writes it and in its relation's next wording, as the soak's updates reword them), and
// how many of those ask about another fact of the item's subject (docs/soak.md, defect 4):
//
//   node dist/tools/eval_probes.js [--model models/kiln-mini] [--facts 339] [--per-item 2]
//
// Candidates are written and answered once (probeCandidates, as a bake does); the rule before the
// answer-support check and the rule with it (chooseProbes) are applied to the same candidates.
// A candidate asks its own fact or another one when its answer is written in one of that
// relation's wordings about the subject (kiln-mini answers in them), else when its question is one
// of that relation's questions; otherwise it is "unclassified".
import { initBackend } from "../src/tensor/backend.js";
import { loadModel } from "../src/model/load.js";
import { DEFAULT_MODEL_DIR } from "../src/model/resolve.js";
import { chooseProbes, probeCandidates, type ProbeCandidate } from "../src/bake/probes.js";
import { unsupportedWords } from "../src/knowledge/grounding.js";
import { generateWorld, rephrase, type Fact } from "./world/world.js";
import { relation, relationsFor } from "./world/relations.js";
import { parseArgs } from "node:util";

const { values: opts } = parseArgs({ options: { model: { type: "string", default: DEFAULT_MODEL_DIR }, facts: { type: "string", default: "339" }, "per-item": { type: "string", default: "2" } } });
const perItem = Number(opts["per-item"]);

await initBackend();
const model = loadModel(opts.model!);
const world = generateWorld();
const kind = new Map(world.entities.map((e) => [e.id, e.kind]));
const facts = world.facts.filter((f) => f.split !== "canon").slice(0, Number(opts.facts));
const items = facts.flatMap((f, k) => {
  const texts = relation(f.relation).texts;
  const at = texts.findIndex((t) => t(f.subjectName, f.value) === f.text);
  const other = rephrase(f, at + 1);
  return [{ id: `${k}`, text: f.text, fact: f }, ...(other.text !== f.text ? [{ id: `${k}r`, text: other.text, fact: f }] : [])];
});

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
/** The relation a candidate asks about, per the world. */
function asked(c: ProbeCandidate, f: Fact): string | null {
  const rels = relationsFor(kind.get(f.subject)!);
  const answer = c.answer.trim();
  const byAnswer = rels.find((r) =>
    r.texts.some((t) => {
      const [pre, post] = t(f.subjectName, "\u0000").split("\u0000") as [string, string];
      return new RegExp(`^${escape(pre)}.+${escape(post)}$`, "i").test(answer);
    }),
  );
  return byAnswer?.name ?? rels.find((r) => r.questions.some((q) => q(f.subjectName) === c.question.trim()))?.name ?? null;
}

process.stderr.write(`writing and answering candidate probes for ${items.length} items (${facts.length} facts)...\n`);
const t0 = Date.now();
const candidates = await probeCandidates(model, items, perItem);
const seconds = (Date.now() - t0) / 1000;
const byItem = new Map(items.map((i) => [i.id, candidates.filter((c) => c.itemId === i.id)]));
const factOf = new Map(items.map((i) => [i.id, i.fact]));
const classOf = (c: ProbeCandidate) => {
  const f = factOf.get(c.itemId)!;
  const r = asked(c, f);
  return r === null ? "unclassified" : r === f.relation ? "own fact" : "another fact";
};

const before = (cs: ProbeCandidate[]) => chooseProbes(cs.map((c) => ({ ...c, supported: true })), perItem);
const after = (cs: ProbeCandidate[]) => chooseProbes(cs, perItem);
const kept = (rule: typeof before) =>
  items.flatMap((i) => {
    const cs = byItem.get(i.id)!;
    return rule(cs).map((p) => cs.find((c) => c.question === p.question)!);
  });
const tally = (cs: ProbeCandidate[]) => {
  const n = (k: string) => cs.filter((c) => classOf(c) === k).length;
  return `${cs.length} (own fact ${n("own fact")}, another fact ${n("another fact")}, unclassified ${n("unclassified")})`;
};
const unprobed = (rule: typeof before) => items.filter((i) => !rule(byItem.get(i.id)!).length).length;

const [k0, k1] = [kept(before), kept(after)];
const passedBefore = candidates.filter((c) => c.quality > 0);
const dropped = passedBefore.filter((c) => !c.supported);
console.log(`${items.length} items, ${candidates.length} candidates written and answered in ${seconds.toFixed(0)} s`);
console.log(`| | before (probeQuality) | after (and every answer word the item's) |`);
console.log(`|---|---|---|`);
console.log(`| candidates passing | ${tally(passedBefore)} | ${tally(passedBefore.filter((c) => c.supported))} |`);
console.log(`| probes kept (${perItem} per item at most) | ${tally(k0)} | ${tally(k1)} |`);
console.log(`| items with no probe (not baked) | ${unprobed(before)} | ${unprobed(after)} |`);
process.stderr.write(`candidates the answer-support check rejects (${dropped.length}):\n`);
for (const c of dropped) {
  const text = items.find((i) => i.id === c.itemId)!.text;
  process.stderr.write(`  [${classOf(c)}] "${text}": "${c.question}" -> "${c.answer}" (${unsupportedWords(c.answer, text).join(", ")})\n`);
}
const offAfter = k1.filter((c) => classOf(c) === "another fact");
for (const c of offAfter) process.stderr.write(`  still kept, another fact: "${items.find((i) => i.id === c.itemId)!.text}": "${c.question}" -> "${c.answer}"\n`);
model.dispose();
