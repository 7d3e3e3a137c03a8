// Whether a news agent keeps pace: news arrives between bakes, each bake rolls the adapter on,
// and what a bake loses goes back to pending beside the news. Drives the real runtime (ledger,
// gate, replay, bake worker) on the embedded model with facts of the fictional world the model
// never saw (held-out, then context-only), no clock and no server:
//
//   node dist/tools/eval_pace.js [--model default] [--bakes 10] [--news 8] [--replay 10] [--max-items 20] [--trajectories 96] [--kinds company,person] [--agent '{"gate": ...}'] [--json]
//
// Each round tells the agent --news new facts (`remember`, as a feed poll stores them) and runs one
// bake. It prints each bake (new, replayed, absorption, retention, seconds, pending after) and, at
// the end, `verify` over everything the ledger says is absorbed: what the live weights hold,
// asked with nothing in the prompt, against how many facts were told.
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { stringify } from "yaml";
import { initBackend } from "../src/tensor/backend.js";
import { Runtime } from "../src/runtime/runtime.js";
import { flagValue } from "./bench-support.js";
import { generateWorld, WorldIndex } from "./world/world.js";

const args = process.argv.slice(2);
const num = (name: string, fallback: number) => Number(flagValue(`--${name}`) ?? fallback);
const BAKES = num("bakes", 10);
const NEWS = num("news", 8);
const REPLAY = num("replay", 10);
const MAX_ITEMS = num("max-items", 20);
const TRAJECTORIES = num("trajectories", 96);
const KINDS = (flagValue("--kinds") ?? "company,person").split(",");
const JSON_OUT = args.includes("--json");
/** the agent's model: "default" (kiln-mini), a model directory or a pulled hub id; the facts are new to any model */
const MODEL = flagValue("--model") ?? "default";
/** more of the agent file, as JSON (replaces the sections it names) */
const EXTRA = JSON.parse(flagValue("--agent") ?? "{}") as Record<string, unknown>;

for (const [name, v] of Object.entries({ bakes: BAKES, news: NEWS, "max-items": MAX_ITEMS, trajectories: TRAJECTORIES })) if (!Number.isInteger(v) || v < 1) throw new Error(`--${name} is a whole number of at least 1, not ${v}`);
if (!Number.isInteger(REPLAY) || REPLAY < 0) throw new Error(`--replay is a whole number, not ${REPLAY}`);
await initBackend();
const idx = new WorldIndex(generateWorld());
const news = [...idx.heldoutFacts, ...idx.contextFacts].filter((f) => KINDS.includes(idx.entity(f.subject).kind));
if (news.length < BAKES * NEWS) throw new Error(`only ${news.length} facts of kinds ${KINDS.join(",")}: fewer than --bakes x --news`);

const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-pace-"));
const agentFile = path.join(dir, "pace.yaml");
// the soak's newsroom (docs/soak.md) without its feeds and persona: the gate and bake settings it runs with
writeFileSync(
  agentFile,
  stringify({
    name: "pace",
    model: existsSync(MODEL) ? path.resolve(MODEL) : MODEL, // (the agent file lives in a temp folder)
    bake: {
      maxItems: MAX_ITEMS,
      probesPerItem: 2,
      settings: { trajectories: TRAJECTORIES, epochs: 8, patience: 4, learningRate: 0.002, maxReplyTokens: 16, batchSize: 16, lora: { r: 16, alpha: 32, targetModules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] } },
    },
    gate: { minAbsorption: 0.6, minRetention: 0.6, itemPass: 0.5 },
    replay: REPLAY,
    ...EXTRA,
  }),
);
const log = (line: string) => process.stderr.write(`${line}\n`);
/** the trajectories the running bake samples (sized per item where the agent file sets none) */
let sampled = 0;
const runtime = await Runtime.fromFiles(agentFile, { checkpoints: path.join(dir, "checkpoints"), events: { onBakeProgress: (_a, p) => void (p.phase === "sample" && (sampled = p.total)) } });
const agent = runtime.agent("pace");
const rows: Record<string, unknown>[] = [];
/** item ids told in each round: whether recent news is held tells a keeping-up agent from one behind */
const rounds: string[][] = [];
const started = Date.now();
try {
  for (let b = 0; b < BAKES; b++) {
    const told: string[] = [];
    for (const f of news.slice(b * NEWS, (b + 1) * NEWS)) told.push((await agent.remember(f.text, "feed")).item.id);
    rounds.push(told);
    const t0 = Date.now();
    const r = await agent.bake("eval", { force: true });
    const count = (status: "pending" | "absorbed" | "rejected") => agent.ledger.items({ status }).length;
    const run = agent.ledger.data.bakes.at(-1)!;
    const row = { bake: b + 1, status: r.status, new: run.itemIds.length, replayed: run.replayIds.length, trajectories: sampled, absorption: r.absorption ?? null, retention: r.retention ?? null, seconds: (Date.now() - t0) / 1000, pending: count("pending"), absorbed: count("absorbed"), rejected: count("rejected") };
    rows.push(row);
    log(`bake ${row.bake}: ${row.status} new ${row.new} replayed ${row.replayed} (${row.trajectories} trajectories) absorption ${row.absorption?.toFixed(2)} retention ${row.retention?.toFixed(2)} ${row.seconds.toFixed(0)} s -> pending ${row.pending}, absorbed ${row.absorbed}, rejected ${row.rejected}`);
  }
  const report = await agent.verify();
  const told = BAKES * NEWS;
  const heldIds = new Set(report.items.filter((i) => i.held).map((i) => i.id));
  const heldByRound = rounds.map((ids) => ids.filter((id) => heldIds.has(id)).length);
  const set = agent.config.bake.settings.trajectories ?? "sized per item";
  const summary = { heldByRound, replay: agent.config.replay, maxItems: agent.config.bake.maxItems, trajectories: set, news: NEWS, bakes: BAKES, told, ledgerAbsorbed: report.items.length, verifiedHeld: report.held, pending: agent.ledger.items({ status: "pending" }).length, bakeSeconds: rows.reduce((s, r) => s + (r.seconds as number), 0), wallSeconds: (Date.now() - started) / 1000, rows };
  if (JSON_OUT) console.log(JSON.stringify(summary));
  else console.log(`replay ${summary.replay}, maxItems ${summary.maxItems}, trajectories ${set}: told ${told} in ${BAKES} bakes; ledger absorbed ${summary.ledgerAbsorbed}, verified held ${summary.verifiedHeld} (${((100 * summary.verifiedHeld) / told).toFixed(0)}% of told; by round told ${heldByRound.join(" ")} of ${NEWS}), pending ${summary.pending}; bakes ${summary.bakeSeconds.toFixed(0)} s`);
} finally {
  await runtime.stop();
  rmSync(dir, { recursive: true, force: true });
}
