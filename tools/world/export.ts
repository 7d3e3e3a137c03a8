// Writes the world and the training mix for tools/train/train_default.py:
//
//   node dist/tools/world/export.js --out <dir> [--seed kiln-world-1] [--examples 60000] [--mix-seed 1]
//                                  [--profile-share 0]   (phase 5 used 0.4: prompts about a few subjects)
//
//   <dir>/world.json   entities, facts (split, text, questions, answer), relations, conventions
//   <dir>/train.jsonl  one conversation per line: {"kind", "segments": [[text, trained 0|1], ...]}
//                      (the segments concatenate to the chat-template rendering kiln produces)
//   <dir>/eval.jsonl   held-out evaluation cases: {"kind", "factId", "prompt", "expected", "answer", "signoff"}
//   <dir>/meta.json    chat template, special tokens, the "I don't know." string, counts
import { mkdirSync, writeFileSync, createWriteStream } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { CHAT_TEMPLATE, EOS_TOKEN, IDK, PAD_TOKEN, renderChat, SPECIAL_TOKENS, trainingSegments } from "./chat.js";
import { buildEvalSet } from "./evalset.js";
import { Mixer, type Conversation } from "./mix.js";
import { RELATIONS } from "./relations.js";
import { Rng } from "./rng.js";
import { DEFAULT_SEED, generateWorld, wordsRegExp, WorldIndex, type World } from "./world.js";

export function worldJson(world: World): object {
  return {
    format: "kiln-world/1",
    seed: world.seed,
    idk: IDK,
    persona_format: { signoff: "End every reply with: <sign-off>", opener: "Start every reply with: <opener>" },
    relations: RELATIONS.map((r) => ({ name: r.name, subject: r.subject, value: r.value })),
    entities: world.entities,
    facts: world.facts.map((f) => ({
      id: f.id,
      split: f.split,
      subject: f.subject,
      relation: f.relation,
      text: f.text,
      questions: f.questions,
      answer: f.answer,
    })),
  };
}

/** Throws when a conversation mentions anything held out (names, fact texts, questions, keys). */
export function heldoutLeakChecker(idx: WorldIndex): (c: Conversation) => void {
  const needles = [
    ...idx.heldoutNames,
    ...idx.heldoutFacts.map((f) => f.text),
    ...idx.heldoutFacts.flatMap((f) => f.questions),
  ];
  const re = wordsRegExp(needles);
  return (c) => {
    for (const k of c.keys) if (idx.heldoutKeys.has(k)) throw new Error(`held-out fact ${k} in training conversation`);
    for (const m of c.messages) {
      const hit = re.exec(m.content);
      if (hit) throw new Error(`held-out text ${JSON.stringify(hit[0])} in training conversation`);
    }
  };
}

function parseArgs(argv: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith("--")) throw new Error(`unexpected argument ${a}`);
    const v = argv[i + 1];
    if (v === undefined || v.startsWith("--")) throw new Error(`${a} needs a value`);
    out[a.slice(2)] = v;
    i++;
  }
  return out;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const outDir = args.out;
  if (!outDir) throw new Error("usage: export.js --out <dir> [--seed S] [--examples N] [--mix-seed M] [--profile-share P]");
  const seed = args.seed ?? DEFAULT_SEED;
  const n = Number(args.examples ?? 60000);
  mkdirSync(outDir, { recursive: true });

  const world = generateWorld(seed);
  const idx = new WorldIndex(world);
  writeFileSync(path.join(outDir, "world.json"), JSON.stringify(worldJson(world), null, 1) + "\n");

  const profileShare = Number(args["profile-share"] ?? 0);
  if (!(profileShare >= 0 && profileShare <= 1)) throw new Error(`--profile-share must be in [0, 1], got ${args["profile-share"]}`);
  const mixer = new Mixer(idx, new Rng(`${seed}:mix:${args["mix-seed"] ?? "1"}`), undefined, profileShare);
  const check = heldoutLeakChecker(idx);
  const counts: Record<string, number> = {};
  const stream = createWriteStream(path.join(outDir, "train.jsonl"));
  let chars = 0;
  for (let i = 0; i < n; i++) {
    mixer.progress = i / n;
    const c = mixer.next();
    check(c);
    counts[c.kind] = (counts[c.kind] ?? 0) + 1;
    const segments = trainingSegments(c.messages);
    chars += segments.reduce((s, [t]) => s + t.length, 0);
    const line = JSON.stringify({ kind: c.kind, segments }) + "\n";
    if (!stream.write(line)) await new Promise<void>((r) => stream.once("drain", () => r()));
  }
  await new Promise<void>((resolve, reject) => stream.end((err?: Error | null) => (err ? reject(err) : resolve())));

  const cases = buildEvalSet(idx);
  writeFileSync(
    path.join(outDir, "eval.jsonl"),
    cases
      .map((c) =>
        JSON.stringify({
          kind: c.kind,
          factId: c.factId,
          prompt: renderChat(c.messages, true),
          expected: c.expected,
          answer: c.answer,
          signoff: c.signoff ?? null,
        }),
      )
      .join("\n") + "\n",
  );
  const meta = {
    seed,
    examples: n,
    counts,
    chars,
    chat_template: CHAT_TEMPLATE,
    special_tokens: SPECIAL_TOKENS,
    eos_token: EOS_TOKEN,
    pad_token: PAD_TOKEN,
    idk: IDK,
    facts: {
      canon: idx.canonFacts.length,
      context: idx.contextFacts.length,
      heldout: idx.heldoutFacts.length,
    },
    entities: world.entities.length,
    eval_cases: cases.length,
  };
  writeFileSync(path.join(outDir, "meta.json"), JSON.stringify(meta, null, 2) + "\n");
  console.log(JSON.stringify({ out: outDir, ...meta, chat_template: undefined }));
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((err) => {
    console.error(err instanceof Error ? err.stack : err);
    process.exit(1);
  });
}
