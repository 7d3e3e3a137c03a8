// `npm start`: the whole loop on the embedded model, offline. The agent reads a news feed it has
// never seen, is asked about it before and after one bake, and answers from its weights alone.
import { existsSync, mkdtempSync, readdirSync, statSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { initBackend } from "../tensor/backend.js";
import { generate } from "../model/generate.js";
import type { AdapterHook } from "../model/decoder.js";
import { studentMessages } from "../bake/trajectories.js";
import { loadAgentConfig } from "../runtime/agent-config.js";
import { DEFAULT_AGENTS_DIR, DEFAULT_CHECKPOINTS_DIR, folderKey, Runtime } from "../runtime/runtime.js";
import { versionName } from "../runtime/live.js";
import { bakeProgressReporter } from "./progress.js";
import { oneLine, stopOnSignal } from "./common.js";
import { loadAdapter } from "../lora/peft.js";
import { makeDirs } from "../files.js";

/** Left in each home the demo makes, so a later run with the same --home knows the state for its own. */
const DEMO_MARK = ".kiln-demo";

/**
 * The demo bakes and promotes with force, so its home must be its own: `--home checkpoints` would
 * otherwise bake into checkpoints/demo, the demo agent's real ledger and versions. A home is its
 * own when the demo made it (its mark is there) or nothing is in it yet.
 */
function claimDemoHome(home: string, agent: string, root: string, realHome: string): void {
  if (existsSync(root) && !statSync(root).isDirectory()) throw new Error(`--home ${root} is a file: give it a folder (made if missing)`);
  if (folderKey(home) === folderKey(realHome)) {
    // (empty on a fresh clone: the mark would have made it the demo's, and a later learn there the demo's to bake over)
    throw new Error(
      `--home ${root}: ${home} is where agent ${agent}'s own ledger and versions go (its agent file's home), not the demo's: ` +
        `the demo bakes and promotes with force and never writes into a real agent's home: give --home another folder (or leave it out for a new temp folder)`,
    );
  }
  const held = existsSync(home) ? readdirSync(home) : [];
  if (held.length && !held.includes(DEMO_MARK)) {
    throw new Error(
      `--home ${root}: ${home} already holds agent ${agent}'s state (${held.slice(0, 3).join(", ")}${held.length > 3 ? ", ..." : ""}), which the demo did not write; ` +
        `the demo bakes and promotes with force and never writes into a real agent's home: give --home a folder of its own (or leave it out for a new temp folder)`,
    );
  }
  makeDirs(home);
  writeFileSync(path.join(home, DEMO_MARK), "the state of kiln demo: the demo may bake here again\n");
}

export interface DemoOptions {
  agentFile?: string;
  home?: string;
  backend?: string;
  maxItems?: number;
}

export async function runDemo(o: DemoOptions = {}): Promise<{ before: number; after: number; asked: number; version: string | null }> {
  const file = o.agentFile ?? path.join(DEFAULT_AGENTS_DIR, "demo.yaml");
  // State goes to <root>/<agent>, the layout `--checkpoints <root>` expects in the other commands.
  const root = o.home ?? mkdtempSync(path.join(os.tmpdir(), "kiln-demo-"));
  // The demo's state is its own, under root, even for an agent file that sets home: (the demo
  // bakes and promotes with force, which must never happen to an agent's real ledger and versions).
  const loaded = loadAgentConfig(file, root);
  const config = { ...loaded, homeDir: path.join(root, loaded.name) };
  const home = config.homeDir;
  claimDemoHome(home, config.name, root, loadAgentConfig(file, DEFAULT_CHECKPOINTS_DIR).homeDir);
  const info = await initBackend(o.backend);
  if (o.maxItems) config.bake = { ...config.bake, maxItems: o.maxItems };
  const out = (s = "") => process.stdout.write(s + "\n");
  const reporter = bakeProgressReporter(true);
  const runtime = new Runtime({ onBakeProgress: (_a, p) => reporter.update(p) });
  await runtime.load([config]);
  stopOnSignal(() => runtime.stop());
  const agent = runtime.agent(config.name);
  try {
    out(`kiln demo — agent "${agent.name}" on ${agent.model.dir} (${info.name} backend), state in ${home}`);
    out();
    const polled = await agent.pollAllFeeds();
    for (const [id, r] of Object.entries(polled)) out(`read feed ${id}: ${r.added} new item(s)${r.error ? ` (error: ${r.error})` : ""}`);
    const pending = agent.ledger.items({ status: "pending" }).slice(0, config.bake.maxItems);
    for (const i of pending) out(`  - ${i.text}`);
    out();
    out(`baking ${pending.length} item(s) into the weights (a LoRA adapter, trained with the prompt-baking KL objective)...`);
    const outcome = await agent.bake("demo", { force: true });
    reporter.stop();
    if (outcome.status === "promoted") out(`bake promoted: ${outcome.version} is live (absorption ${outcome.absorption!.toFixed(2)})`);
    else out(`bake ${outcome.status}${outcome.version ? ` (${outcome.version} kept as rejected)` : ""}: ${outcome.reasons.join("; ")}; the live weights are unchanged`);
    out();

    // Ask each item's probe question with NO context in the prompt: base model vs baked model.
    const asked = agent.ledger.data.items.filter((i) => i.probes?.length).slice(0, 8);
    const ask = async (question: string, adapter: AdapterHook | undefined) => {
      const [r] = await generate(agent.model, [agent.model.tokenizer.applyChatTemplate(studentMessages(question))], { maxTokens: 40, temperature: 0, adapter });
      return r!.text.trim();
    };
    const norm = (s: string) => s.trim().replace(/[.!?]+$/, "").toLowerCase();
    let before = 0;
    let after = 0;
    // A rejected candidate is shown too, labelled as such: it is what the bake produced.
    const candidate = outcome.status === "rejected" && outcome.version ? loadAdapter(agent.ledger.version(outcome.version).dir, agent.model.config, agent.live.fingerprint) : undefined;
    const lease = agent.live.acquire();
    const label = candidate ? `candidate ${outcome.version} (rejected)` : "after the bake";
    try {
      for (const item of asked) {
        const probe = item.probes![0]!;
        const base = await ask(probe.question, undefined);
        const baked = await ask(probe.question, candidate ?? lease.adapter);
        if (norm(base) === norm(probe.answer)) before++;
        if (norm(baked) === norm(probe.answer)) after++;
        out(`Q: ${oneLine(probe.question)}`);
        out(`   before the bake: ${oneLine(base)}`);
        out(`   ${label}: ${oneLine(baked)}   (with the news in the prompt: ${oneLine(probe.answer)})`);
      }
    } finally {
      lease.release();
      candidate?.dispose();
    }
    out();
    out(`answered like the prompted model, with nothing in the prompt: ${before}/${asked.length} before, ${after}/${asked.length} ${candidate ? `on the rejected ${outcome.version}` : `after (${versionName(lease.version)})`}`);
    if (loaded.home) {
      // the other commands would read the home the agent file names, not the demo's state
      out(`ledger: ${path.join(home, "ledger.json")} (the demo's own: ${file} sets home: ${loaded.home}, which the kiln commands read and the demo left alone)`);
    } else {
      out(`ledger: ${path.join(home, "ledger.json")} — try: npx kiln knowledge list ${config.name} --agents ${file} --checkpoints ${root}`);
      out(`proof, asked again on the live weights and naming them: npx kiln knowledge verify ${config.name} --agents ${file} --checkpoints ${root}`);
    }
    return { before, after, asked: asked.length, version: lease.version };
  } finally {
    await runtime.stop();
  }
}
