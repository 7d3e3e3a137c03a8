// Measures kiln-mini through kiln's own engine (TypeScript, tfjs) on HELD-OUT facts:
//   prompted         the fact among 20 items in the system prompt        -> exact-match answer
//   prompted_absent  20 other held-out items, question not covered       -> "I don't know."
//   unprompted       no system message                                   -> must not answer (exact match ~0)
//   persona          items + "End every reply with: <sign-off>"          -> last line is the sign-off
//   persona_off      same questions, no system message                   -> no sign-off
//   canon            no system message, canon questions                  -> exact-match answer
//
//   node dist/tools/world/eval_prompted.js [--model models/kiln-mini] [--batch 16] [--json out.json]
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { initBackend } from "../../src/tensor/backend.js";
import { EXTRACT_INSTRUCTION, parseExtraction } from "../../src/agent/facts.js";
import { loadModel } from "../../src/model/load.js";
import { generate } from "../../src/model/generate.js";
import { answerMatch, endsWithSignoff, exactMatch, IDK } from "./chat.js";
import { buildEvalSet, type EvalCase, type EvalKind } from "./evalset.js";
import { DEFAULT_SEED, generateWorld, WorldIndex } from "./world.js";

export interface KindScore {
  kind: EvalKind;
  n: number;
  /** the headline number of the kind (see METRIC) */
  score: number;
  /** replies that give the fact's answer (answerMatch: the reply is, or ends with, the answer) */
  answerExact: number;
  /** replies that are exactly "I don't know." (ignoring a sign-off line) */
  idk: number;
  /** replies that end with the case's sign-off on its own line */
  signoff: number;
}

export const METRIC: Record<EvalKind, string> = {
  prompted: "answer match, fact in a 20-item prompt",
  prompted_absent: "says I don't know, fact not in the 20-item prompt",
  unprompted: "answer match with no prompt (should be ~0)",
  persona: "ends with the sign-off (prompted persona)",
  persona_off: "ends with the sign-off with no persona (should be ~0)",
  canon: "answer match with no prompt, canon facts",
  prompted_small: "answer match, fact in a 4-item prompt (kiln's bake chunk)",
  extract: "kiln stores exactly the fact from the model's extraction of a user message",
};

function body(reply: string, signoff: string | undefined): string {
  if (signoff && endsWithSignoff(reply, signoff)) {
    const lines = reply.trim().split("\n");
    return lines.slice(0, -1).join("\n");
  }
  return reply;
}

export function scoreCases(cases: EvalCase[], replies: string[]): KindScore[] {
  const by = new Map<EvalKind, KindScore>();
  cases.forEach((c, i) => {
    const reply = replies[i]!;
    const s = by.get(c.kind) ?? { kind: c.kind, n: 0, score: 0, answerExact: 0, idk: 0, signoff: 0 };
    const b = body(reply, c.signoff);
    // an extraction counts when kiln would store exactly the fact from it
    const answered =
      c.kind === "extract"
        ? JSON.stringify(parseExtraction(reply, c.messages.at(-1)!.content.slice(EXTRACT_INSTRUCTION.length + 1))) === JSON.stringify([c.answer])
        : answerMatch(b, c.answer);
    const idk = exactMatch(b, IDK);
    const signed = c.signoff ? endsWithSignoff(reply, c.signoff) : false;
    s.n++;
    s.answerExact += Number(answered);
    s.idk += Number(idk);
    s.signoff += Number(signed);
    s.score += Number(
      c.kind === "prompted_absent" ? idk : c.kind === "persona" || c.kind === "persona_off" ? signed : answered,
    );
    by.set(c.kind, s);
  });
  return [...by.values()].map((s) => ({
    ...s,
    score: s.score / s.n,
    answerExact: s.answerExact / s.n,
    idk: s.idk / s.n,
    signoff: s.signoff / s.n,
  }));
}

function parseArgs(argv: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < argv.length; i += 2) {
    const a = argv[i]!;
    if (!a.startsWith("--") || argv[i + 1] === undefined) throw new Error(`bad argument ${a}`);
    out[a.slice(2)] = argv[i + 1]!;
  }
  return out;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const dir = args.model ?? "models/kiln-mini";
  const batch = Number(args.batch ?? 16);
  const worldFile = path.join(dir, "world.json");
  const seed = existsSync(worldFile) ? (JSON.parse(readFileSync(worldFile, "utf8")).seed as string) : DEFAULT_SEED;
  const idx = new WorldIndex(generateWorld(seed));
  let cases = buildEvalSet(idx);
  if (args.limit) cases = cases.slice(0, Number(args.limit));

  const backend = await initBackend();
  const model = loadModel(dir);
  const t0 = Date.now();
  const prompts = cases.map((c) => model.tokenizer.applyChatTemplate(c.messages, true));
  // batch prompts of similar length together (less padding)
  const order = prompts.map((_, i) => i).sort((a, b) => prompts[a]!.length - prompts[b]!.length);
  const replies: string[] = new Array(cases.length);
  for (let i = 0; i < order.length; i += batch) {
    const ids = order.slice(i, i + batch);
    const res = await generate(model, ids.map((j) => prompts[j]!), { maxTokens: 32, temperature: 0 });
    res.forEach((r, k) => (replies[ids[k]!] = r.text));
  }
  const seconds = (Date.now() - t0) / 1000;
  const scores = scoreCases(cases, replies);

  const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
  console.log(`kiln-mini eval: ${dir}, world ${seed}, backend ${backend.name}, ${cases.length} cases in ${seconds.toFixed(0)}s`);
  console.log("| kind | n | score | metric | gives the answer | says IDK | sign-off |");
  console.log("|---|---|---|---|---|---|---|");
  for (const s of scores) {
    console.log(`| ${s.kind} | ${s.n} | **${pct(s.score)}** | ${METRIC[s.kind]} | ${pct(s.answerExact)} | ${pct(s.idk)} | ${pct(s.signoff)} |`);
  }
  const show = Number(args.show ?? 2);
  for (const kind of new Set(cases.map((c) => c.kind))) {
    const wrong = cases
      .map((c, i) => ({ c, r: replies[i]! }))
      .filter(({ c }) => c.kind === kind)
      .slice(0, show);
    for (const { c, r } of wrong) console.log(`  [${kind}] ${c.messages.at(-1)!.content} -> ${JSON.stringify(r)} (expected ${JSON.stringify(c.expected)})`);
  }
  if (args.json) {
    writeFileSync(
      args.json,
      JSON.stringify(
        {
          date: new Date().toISOString(),
          model: dir,
          world: seed,
          backend: backend.name,
          machine: `${os.cpus().length} CPU cores (${os.cpus()[0]?.model ?? "?"})`,
          seconds,
          scores,
          cases: cases.map((c, i) => ({ kind: c.kind, factId: c.factId, question: c.messages.at(-1)!.content, expected: c.expected, reply: replies[i] })),
        },
        null,
        1,
      ) + "\n",
    );
  }
  model.dispose();
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((err) => {
    console.error(err instanceof Error ? err.stack : err);
    process.exit(1);
  });
}
