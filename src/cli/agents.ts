// CLI commands over agents: chat, feeds, knowledge, versions, probe and agent bakes.
// Read-only queries open the ledger without loading any model; commands that change state open
// the agent (model and ledger lock), so they refuse politely while a server holds the ledger;
// verify and probe load the model over a read-only ledger, so they run beside the server.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { createInterface } from "node:readline";
import { InvalidArgumentError, Option, type Command } from "commander";
import { isSeq, parseDocument, parse as parseYaml, type Node } from "yaml";
import { initBackend } from "../tensor/backend.js";
import { ITEM_KINDS, ITEM_STATUSES, Ledger, type Item, type ItemKind, type ItemStatus } from "../knowledge/ledger.js";
import { movedFeedProblem, parseAgentConfig, type AgentConfig } from "../runtime/agent-config.js";
import { feedUrlKey } from "../feeds/feeds.js";
import { checkSharedHomes, DEFAULT_AGENTS_DIR, DEFAULT_CHECKPOINTS_DIR, loadAgentConfigs, Runtime } from "../runtime/runtime.js";
import type { BakeOutcome, VerifyReport } from "../runtime/agent.js";
import { BASE_VERSION, versionName } from "../runtime/live.js";
import type { ChatMessage } from "../model/tokenizer.js";
import { EXPORT_FORMATS, type ExportFormat } from "../lora/export.js";
import { bakeProgressReporter } from "./progress.js";
import { decimal, integer, oneLine, print, stopOnSignal } from "./common.js";

interface AgentOpts {
  agents?: string;
  checkpoints?: string;
  json?: boolean;
  backend?: string;
}

function agentsPath(o: AgentOpts): string {
  if (o.agents) return o.agents;
  return existsSync("agents") ? "agents" : DEFAULT_AGENTS_DIR;
}

function configs(o: AgentOpts): AgentConfig[] {
  const all = loadAgentConfigs(agentsPath(o), o.checkpoints);
  checkSharedHomes(all); // as serve refuses them: a command on one would write into the other's home
  return all;
}

function pickConfig(o: AgentOpts, name?: string): AgentConfig {
  const all = configs(o);
  if (!name) {
    if (all.length === 1) return all[0]!;
    throw new Error(`name an agent: ${all.map((c) => c.name).join(", ")}`);
  }
  const c = all.find((x) => x.name === name);
  if (!c) throw new Error(`no agent named ${name} in ${agentsPath(o)} (agents: ${all.map((x) => x.name).join(", ")})`);
  return c;
}

async function readLedger(o: AgentOpts, name?: string): Promise<Ledger> {
  const c = pickConfig(o, name);
  const file = path.join(c.homeDir, "ledger.json");
  // an agent nothing has polled or baked for yet reads as empty (the base model live), as kiln
  // serve reads it; the note names the file, in case --checkpoints points somewhere else
  if (!existsSync(file)) process.stderr.write(`(agent ${c.name} has no ledger yet at ${file}: nothing polled or baked; it is created on first use)\n`);
  return Ledger.open(file, { readOnly: true });
}

/** Opens one agent for changes: loads its model, takes the ledger lock (or, `readOnly`, only reads it). */
async function openAgent(o: AgentOpts, name?: string, withProgress = false, readOnly = false): Promise<{ runtime: Runtime; name: string }> {
  const c = pickConfig(o, name);
  await initBackend(o.backend);
  const reporter = bakeProgressReporter(withProgress && !o.json);
  const runtime = new Runtime({ onBakeProgress: (_a, p) => reporter.update(p), onLog: (a, m) => !o.json && process.stderr.write(`[${a}] ${m}\n`) });
  await runtime.load([c], { readOnly });
  stopOnSignal(() => runtime.stop());
  return { runtime, name: c.name };
}

/** A word as a POSIX shell reads it back unchanged. */
function shellWord(s: string): string {
  return /^[\w/.,:@%+=-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`;
}

/** The command that asks the weights a verify report names one of its questions again. */
function askAgain(r: VerifyReport): string[] {
  const question = r.items.flatMap((i) => i.probes)[0]?.question;
  if (!question) return [];
  const adapter = r.weights.adapter ? ` --adapter ${shellWord(r.weights.adapter.file)}` : "";
  // greedy is generate's default; 48 tokens is where checkProbes cuts an answer
  return [`  ask again: kiln generate --model ${shellWord(r.weights.baseModel)}${adapter} --max-tokens 48 --prompt ${shellWord(question)}`];
}

/** A bake's outcome in one line, with the scores its gate weighed (kiln learn, chat's /bake, retract alike). */
function outcomeLine(what: string, r: BakeOutcome): string {
  // an agent with a persona is gated on its adherence too: say it, as versions list does
  const persona = typeof r.persona === "number" ? `, persona ${r.persona.toFixed(2)}` : "";
  const scores = r.absorption !== undefined ? `: absorption ${r.absorption.toFixed(2)}, retention ${r.retention!.toFixed(2)}${persona}` : "";
  const reasons = r.reasons.length ? (scores ? ` (${r.reasons.join("; ")})` : `: ${r.reasons.join("; ")}`) : "";
  return `${what} ${r.status}${r.version ? ` ${r.version}` : ""}${scores}${reasons}`;
}

/**
 * The new items a promoted bake did not absorb, in lines: the absorption score alone says how
 * many, and which they are is what a user who told the agent something asks next.
 */
export function notAbsorbed(ledger: Ledger, r: BakeOutcome): { ids: string[]; lines: string[] } {
  const run = r.status === "promoted" ? ledger.data.bakes.find((b) => b.id === r.bakeId) : undefined;
  // an item superseded by the update baked beside it (or retracted or expired since) is not missed
  const missed = (run?.itemIds ?? []).map((id) => ledger.item(id)).filter((i) => i.status === "pending" || i.status === "baking" || i.status === "rejected");
  const lines = missed.length ? [`${missed.length} of ${run!.itemIds.length} new item(s) not absorbed (kiln knowledge show has their scores):`, ...missed.map((i) => `  ${itemLine(i)}`)] : [];
  return { ids: missed.map((i) => i.id), lines };
}

function itemLine(i: Item): string {
  const score = i.scores.at(-1);
  const s = score ? ` [${score.version}: unprompted ${score.unprompted.toFixed(2)}, prompted ${score.prompted.toFixed(2)}]` : "";
  // a cut text says so: the line is all a reader sees of what the agent was told
  const text = i.text.length > 90 ? `${i.text.slice(0, 89)}…` : i.text;
  return `${i.id}  ${i.status.padEnd(10)} ${i.kind.padEnd(12)} ${text}${s}`;
}

export function registerAgentCommands(program: Command): void {
  const withAgentFiles = (c: Command) =>
    c.option("--agents <path>", "agent file or folder (default ./agents, else the bundled agents/)").option("--checkpoints <dir>", "checkpoints root: each agent's state in <dir>/<name> (default: the package's checkpoints/; an agent file's home: takes precedence)");
  const withAgents = (c: Command) => withAgentFiles(c).option("--json", "machine-readable output");
  const backend = () => program.opts().backend as string | undefined;

  // --- chat ---
  // no --json: a conversation has no machine-readable form here (scripts use kiln serve's API)
  withAgentFiles(program.command("chat [agent]").description("chat with an agent in the terminal; its replies stream"))
    .option("--max-tokens <n>", "longest reply", integer(1), 200)
    .option("--temperature <t>", "0 for greedy", decimal(0), 0)
    .action(async (name: string | undefined, o: AgentOpts & { maxTokens: number; temperature: number }) => {
      const { runtime, name: agent } = await openAgent({ ...o, backend: backend() }, name);
      const rl = createInterface({ input: process.stdin, output: process.stdout, terminal: process.stdin.isTTY, prompt: "> " });
      const history: ChatMessage[] = [];
      process.stdout.write(`chatting with ${agent} on ${runtime.agent(agent).live.version ?? "the base model"}; /bake, /version, /quit\n`);
      rl.prompt();
      try {
        // the iterator queues lines that arrive during a reply (pasted or piped input), where
        // rl.question() would drop them
        for await (const raw of rl) {
          const line = raw.trim();
          if (!line) {
            rl.prompt();
            continue;
          }
          if (line === "/quit" || line === "/exit") break;
          if (line === "/version") {
            process.stdout.write(`${runtime.agent(agent).live.version ?? "base model"}\n`);
            rl.prompt();
            continue;
          }
          if (/^\/[a-z]+$/i.test(line) && line !== "/bake") {
            // a mistyped command went to the model as a message (and into the conversation)
            process.stdout.write(`unknown command ${line}: /bake, /version, /quit\n`);
            rl.prompt();
            continue;
          }
          if (line === "/bake") {
            const a = runtime.agent(agent);
            const r = await a.bake("chat", { force: true });
            process.stdout.write([outcomeLine("bake", r), ...notAbsorbed(a.ledger, r).lines].join("\n") + "\n");
            rl.prompt();
            continue;
          }
          let reply = "";
          try {
            const it = runtime.chat(agent, { messages: [...history, { role: "user", content: line }], options: { maxTokens: o.maxTokens, temperature: o.temperature }, conversationId: "cli" });
            for (;;) {
              const r = await it.next();
              if (r.done) {
                // a "remember"/"forget" command is answered by the runtime and is not part of the conversation
                if (!r.value.command) history.push({ role: "user", content: line }, { role: "assistant", content: reply });
                if (r.value.captured.length && !r.value.command) process.stdout.write(`\n(noted for the next bake: ${r.value.captured.join(" ")})`);
                break;
              }
              reply += r.value.text;
              process.stdout.write(r.value.text);
            }
            process.stdout.write("\n");
          } catch (err) {
            // one bad line (longer than the model's context, say) is said and the chat goes on: it
            // ended the whole session, its history with it, and piped lines after it went unread
            process.stdout.write("\n");
            process.stderr.write(`kiln: ${(err as Error).message}\n`);
          }
          rl.prompt();
        }
      } finally {
        rl.close();
        await runtime.stop();
      }
    });

  // --- feeds ---
  const feeds = program.command("feeds").description("an agent's news feeds");
  withAgents(feeds.command("list [agent]").description("feeds with their last poll, errors and items added")).action(async (name: string | undefined, o: AgentOpts) => {
    const ledger = await readLedger(o, name);
    const c = pickConfig(o, name);
    // The agent file says where a feed is; the ledger's url is where the poll state it keeps was
    // gathered, another until the first poll after the file moved the feed (which starts afresh).
    const rows = c.feeds.map((f) => {
      const { url: ledgerUrl, ...state } = ledger.feed(f.id) ?? {};
      return { ...state, ...f, ...(ledgerUrl !== undefined && ledgerUrl !== f.url ? { ledgerUrl } : {}) };
    });
    const moved = (f: (typeof rows)[number]) => ("ledgerUrl" in f ? ` (the poll state above is from ${f.ledgerUrl}, its url before the agent file changed; the next poll asks this one)` : "");
    print(o.json, rows, () => rows.map((f) => `${f.id.padEnd(12)} ${f.schedule.padEnd(14)} added ${f.itemsAdded ?? 0}, last ok ${f.lastOkAt ?? "never"}${f.lastError ? `, ERROR ${f.lastError}` : ""}\n  ${f.url}${moved(f)}`).join("\n") || "(no feeds)");
  });
  withAgents(feeds.command("poll [agent]").description("poll the agent's feeds now")).action(async (name: string | undefined, o: AgentOpts) => {
    const { runtime, name: agent } = await openAgent({ ...o, backend: backend() }, name);
    try {
      const r = await runtime.agent(agent).pollAllFeeds();
      print(o.json, r, () => Object.entries(r).map(([id, x]) => `${id}: ${x.added} new${x.error ? `, error: ${x.error}` : ""}`).join("\n") || "(no feeds)");
      const results = Object.values(r);
      if (results.length && results.every((x) => x.error)) process.exitCode = 1; // every feed failed: a script should know
    } finally {
      await runtime.stop();
    }
  });
  withAgents(feeds.command("add <agent> <id> <url>").description("add a feed to an agent file (comments in the file are kept)"))
    .option("--schedule <cron>", "poll schedule", "*/30 * * * *")
    .action(async (name: string, id: string, url: string, o: AgentOpts & { schedule: string }) => {
      const c = pickConfig(o, name);
      if (!/^https?:\/\//i.test(url)) {
        // a local feed is resolved against the agent file's folder: write the path that means the
        // file the user named here
        const file = path.resolve(url.replace(/^file:\/\//, ""));
        if (!existsSync(file)) throw new Error(`${url}: no such feed file (a feed is an http(s) URL or a local RSS/Atom file)`);
        url = path.relative(path.dirname(c.file!), file) || file;
      }
      const doc = parseDocument(readFileSync(c.file!, "utf8"));
      // no feeds yet (no key, `feeds:` or `feeds: []`): a block list to add to (a plain [] set
      // here is no YAML node, and adding to it failed with "Expected YAML collection at feeds")
      const list = doc.get("feeds", true);
      if (!isSeq(list) || list.items.length === 0) {
        const seq = doc.createNode([]);
        seq.flow = false;
        // entries commented out under `feeds:` are the comment of the null it reads as: keep them
        const comments = [(list as Node | undefined)?.commentBefore, (list as Node | undefined)?.comment].filter(Boolean).join("\n");
        if (comments) seq.commentBefore = comments;
        doc.set("feeds", seq);
      }
      doc.addIn(["feeds"], doc.createNode({ id, url, schedule: o.schedule }));
      // lines as long as they were: at yaml's default width of 80 a one-line `lora: { r: 16, ... }`
      // came back broken over five lines, and a long persona text folded
      const text = doc.toString({ lineWidth: 0 });
      // Validate the result before writing, so a bad feed never breaks the agent file, nor keeps
      // the agent from starting: a feed added where the ledger says another moved for good.
      const next = loadAgentConfigFromText(text, c.file!, o.checkpoints);
      const ledgerFile = path.join(next.homeDir, "ledger.json");
      if (existsSync(ledgerFile)) {
        const records = (await Ledger.open(ledgerFile, { readOnly: true })).data.feeds;
        const moved = movedFeedProblem(next.feeds, records, ledgerFile);
        if (moved?.edited) {
          // (the agent's own words name a feed entry the file never got)
          const added = next.feeds.at(-1)!;
          const from = records.find((r) => r.movedTo !== undefined && feedUrlKey(r.movedTo) === feedUrlKey(added.url));
          throw new Error(
            from
              ? `feed ${id} not added: ${added.url} is where feed ${from.id}'s url ${from.url} has moved for good (a 301/308 redirect, as ${ledgerFile} records), so the agent would poll one feed twice; to follow the move, give ${from.id} this url in ${c.file}`
              : `feed ${id} not added: ${moved.problem}`,
          );
        }
      }
      writeFileSync(c.file!, text);
      print(o.json, { agent: name, id, url, schedule: o.schedule }, () => `added feed ${id} to ${c.file}`);
    });

  // --- knowledge ---
  const knowledge = program.command("knowledge").description("what an agent has read and absorbed");
  withAgents(knowledge.command("list [agent]").description("items, the most recently stored first (one poll stores its items in feed order)"))
    // one status or several, comma-separated, as the admin API's ?status= takes them
    .option("--status <status>", `only items with this status, or these (comma-separated): ${ITEM_STATUSES.join(", ")}`, (value: string) => {
      const wanted = value.split(",").map((x) => x.trim()).filter(Boolean);
      if (!wanted.length || wanted.some((x) => !(ITEM_STATUSES as readonly string[]).includes(x))) {
        throw new InvalidArgumentError(`Allowed choices are ${ITEM_STATUSES.join(", ")} (one, or several separated by commas).`);
      }
      return wanted as ItemStatus[];
    })
    .option("--source <id>", "a feed id, conversation id or link, or a removed feed's url")
    .addOption(new Option("--kind <kind>", "only items of this kind (as the admin API's ?kind=)").choices(ITEM_KINDS))
    .action(async (name: string | undefined, o: AgentOpts & { status?: ItemStatus[]; source?: string; kind?: ItemKind }) => {
      const ledger = await readLedger(o, name);
      const items = ledger.items({ status: o.status, source: o.source, kind: o.kind }).reverse();
      print(o.json, items, () => items.map(itemLine).join("\n") || "(no items)");
    });
  withAgents(knowledge.command("search <agent> <text>").description("items whose text contains <text>, the most recently stored first (as list)")).action(async (name: string, text: string, o: AgentOpts) => {
    const items = (await readLedger(o, name)).items({ text }).reverse();
    print(o.json, items, () => items.map(itemLine).join("\n") || "(no match)");
  });
  withAgents(knowledge.command("show <agent> <id>").description("one item: provenance, version, probes and scores")).action(async (name: string, id: string, o: AgentOpts) => {
    const ledger = await readLedger(o, name);
    // the admin API's view of the item, so a script reads the same fields from either
    const i = ledger.itemView(ledger.item(id));
    print(o.json, i, () =>
      [
        `${i.id} (${i.kind}) ${i.status}${i.absorbedBy ? (i.status === "absorbed" ? ` by ${i.absorbedBy}` : ` (absorbed by ${i.absorbedBy} before)`) : ""}`,
        `text:    ${i.text}`,
        `held by: ${i.heldBy.map((v) => (v === ledger.data.live ? `${v} (live)` : v)).join(", ") || "no version"}`,
        `source:  ${JSON.stringify(i.source)}`,
        ...(i.probes ?? []).map((p) => `probe:   ${oneLine(p.question)} -> ${oneLine(p.answer)}`),
        ...i.scores.map((s) => `score:   ${s.version}: unprompted ${s.unprompted.toFixed(2)}, prompted ${s.prompted.toFixed(2)}`),
        ...i.history.map((h) => `history: ${h.at} ${h.status}${h.version ? ` ${h.version}` : ""}${h.reason ? ` (${oneLine(h.reason)})` : ""}`),
      ].join("\n"),
    );
  });
  withAgents(knowledge.command("remember <agent> <text>").description("add a fact or instruction by hand (pending until the next bake)"))
    .addOption(new Option("--kind <kind>", "manual (a fact) or instruction: a label the ledger keeps, as the admin API's kind").choices(["manual", "instruction"]).default("manual"))
    .action(async (name: string, text: string, o: AgentOpts & { kind: "manual" | "instruction" }) => {
      const { runtime, name: agent } = await openAgent({ ...o, backend: backend() }, name);
      try {
        // provenance, as the admin API records "admin-api": otherwise the ledger cannot say who told it
        const r = await runtime.agent(agent).remember(text, o.kind, { by: "cli" });
        print(o.json, r, () => (r.added ? `${r.item.id} pending` : `already known as ${r.item.id} (${r.item.status})`));
      } finally {
        await runtime.stop();
      }
    });
  withAgents(
    knowledge
      .command("verify <agent> [ids...]")
      .description("ask absorbed items' probes (or those of the items named) on the live weights now, nothing in the prompt, and the base model the same: proof of what it holds, and of what it forgot for a retracted item (exit 1 if an item is not held, or a retracted one still is)"),
  )
    // (not --version: kiln --version prints kiln's own wherever it comes on the line)
    .option("--weights <version>", "ask a stored version's weights (or base) instead of the live ones")
    .option("--no-baseline", "do not ask the base model too")
    .action(async (name: string, ids: string[], o: AgentOpts & { weights?: string; baseline: boolean }) => {
      // read-only: it writes nothing, so it runs beside a kiln serve of the same agent
      const { runtime, name: agent } = await openAgent({ ...o, backend: backend() }, name, false, true);
      try {
        const r = await runtime.agent(agent).verify(ids, { version: o.weights, baseline: o.baseline });
        const retracted = r.items.filter((i) => i.status === "retracted");
        // a retracted item is proven forgotten when none of its probes passes: `held` is the gate's
        // share (gate.itemPass), and weights answering one of three probes as baked forgot nothing
        const stillAnswers = (i: (typeof r.items)[number]) => i.probes.some((p) => p.passed);
        const verdict = (i: (typeof r.items)[number]) =>
          i.status === "retracted" ? (stillAnswers(i) ? "STILL HELD, though retracted" : "forgotten (retracted)") : i.held ? (i.baseline?.held ? "held, but the base model answers it too" : "held") : "NOT HELD";
        // what the base model answers of the same probes: held by the adapter and not by it is what baking put there
        const base = (i: (typeof r.items)[number]) => (i.baseline ? `; base model ${i.baseline.passed}/${i.probes.length}` : "");
        print(o.json, r, () =>
          [
            ...r.items.flatMap((i) => [
              // an item never baked has no probes: nothing was asked ("NOT HELD (0/0 probes)" said no more)
              i.probes.length
                ? `${i.id}  ${verdict(i)} (${i.probes.filter((p) => p.passed).length}/${i.probes.length} probes${base(i)})  ${i.text}`
                : `${i.id}  NOT HELD (no probes to ask: ${i.status === "pending" ? "not baked yet" : i.status === "baking" ? "a bake running now writes them" : `${i.status}, never probed`})  ${i.text}`,
              ...i.probes.map((p) => `    ${p.passed ? "ok  " : "FAIL"} ${oneLine(p.question)} -> ${oneLine(p.answer)}${p.passed ? "" : `   (expected: ${oneLine(p.expected)})`}`),
            ]),
            `${r.held} of ${r.items.length} item(s) held by ${r.version === BASE_VERSION ? "the base model" : r.version}${r.baseline ? ` (the base model alone: ${r.baseline.held})` : ""}${retracted.length ? `; ${retracted.filter((i) => !stillAnswers(i)).length} of the ${retracted.length} retracted forgotten` : ""}`,
            `  asked ${r.checkedAt}, greedy, nothing in the prompt: base ${r.weights.baseModel} (fingerprint ${r.weights.baseFingerprint})${r.weights.adapter ? `, adapter ${r.weights.adapter.file} (sha256 ${r.weights.adapter.sha256})` : ""}`,
            // the proof is only as good as it is repeatable: the command that asks those weights one question again
            ...askAgain(r),
          ].join("\n"),
        );
        // proof either way: what it was told is held, and what it was asked to forget is not
        if (r.items.some((i) => (i.status === "retracted" ? stillAnswers(i) : !i.held))) process.exitCode = 1;
      } finally {
        await runtime.stop();
      }
    });
  withAgents(knowledge.command("retract <agent> <ids...>").description("retract items and rebuild the adapter from what is still true"))
    .option("--reason <text>", "why, kept in the items' history (as the admin API's reason)", "retracted with kiln knowledge retract")
    .action(async (name: string, ids: string[], o: AgentOpts & { reason: string }) => {
      const { runtime, name: agent } = await openAgent({ ...o, backend: backend() }, name, true);
      try {
        const r = await runtime.agent(agent).retract(ids, o.reason);
        print(o.json, r, () => outcomeLine("consolidation", r));
        if (r.status === "failed") process.exitCode = 1;
      } finally {
        await runtime.stop();
      }
    });

  // --- versions ---
  const versions = program.command("versions").description("an agent's weight versions: list, diff, roll back, export (PEFT, GGUF, merged)");
  withAgents(versions.command("list [agent]").description("versions with their parent, items and absorption / retention / persona scores")).action(async (name: string | undefined, o: AgentOpts) => {
    const ledger = await readLedger(o, name);
    const vs = ledger.data.versions;
    // a kept version holding a retracted item is listed as kept, but rollback refuses it: say so here;
    // and a live version whose folder is gone (removed by hand) serves no more once kiln starts again
    const blocked = (v: (typeof vs)[number]) =>
      v.status === "kept" ? ledger.whyNotLive(v.id) : v.status === "live" && !existsSync(v.dir) ? `its folder ${v.dir} is missing: the next start serves the newest kept version that loads, else the base model` : null;
    print(o.json, { live: versionName(ledger.data.live), versions: vs.map((v) => ({ ...v, cannotGoLive: v.status === "live" ? null : ledger.whyNotLive(v.id) })) }, () =>
      [
        ...vs.map((v) => `${v.id} ${v.status.padEnd(8)} parent ${v.parent ?? "base"}  items ${v.itemCount ?? v.items.length}  absorption ${v.scores.absorption.toFixed(2)} retention ${v.scores.retention.toFixed(2)}${v.scores.persona !== null ? ` persona ${v.scores.persona.toFixed(2)}` : ""}${v.reasons ? `  (${v.reasons.join("; ")})` : ""}${blocked(v) ? `  [${v.status === "live" ? "" : "cannot go live: "}${blocked(v)}]` : ""}`),
        // rolled back to the base (or left there by a retraction): no version line says live
        ...(vs.length && ledger.data.live === null ? ["base  live     (the base model, no adapter)"] : []),
      ].join("\n") || "(no versions: the base model is live)",
    );
  });
  withAgents(versions.command("diff <agent> <from> <to>").description("items gained and lost between two versions (base = the base model, live = the live version)")).action(async (name: string, from: string, to: string, o: AgentOpts) => {
    const ledger = await readLedger(o, name);
    // "live" as export takes it (the live version, or the base model when that is live)
    const ref = (v: string) => (v === "base" ? null : v === "live" ? ledger.data.live : v);
    const d = ledger.diff(ref(from), ref(to));
    print(o.json, d, () => [...d.gained.map((i) => `+ ${i.id} ${i.text}`), ...d.lost.map((i) => `- ${i.id} ${i.text}`)].join("\n") || "(no difference)");
  });
  withAgents(versions.command("rollback <agent> <version>").description("make a kept version live again (base = the base model)")).action(async (name: string, version: string, o: AgentOpts) => {
    const { runtime, name: agent } = await openAgent({ ...o, backend: backend() }, name);
    try {
      await runtime.agent(agent).rollback(version === "base" ? null : version);
      print(o.json, { live: versionName(runtime.agent(agent).live.version) }, () => `${agent} is live on ${version}`);
    } finally {
      await runtime.stop();
    }
  });

  withAgents(versions.command("export <agent> <version>").description("write a version (vNNNN, or live) as a PEFT directory, a llama.cpp LoRA GGUF file or a merged Hugging Face model"))
    // required, but checked in the action (as generate's --prompt): commander would report it before a mistyped option
    .option("--to <path>", "where to write it: a new folder (peft, merged) or .gguf file (required)")
    .addOption(new Option("--format <format>", "peft: for PEFT and vLLM; gguf: for llama.cpp's --lora; merged: the base model with the adapter fused in").choices(EXPORT_FORMATS).default("peft"))
    .addOption(new Option("--gguf-type <type>", "tensor type of a GGUF export").choices(["f32", "f16"]).default("f32"))
    .option("--force", "replace an earlier export at --to (nothing else is ever replaced)")
    .action(async (name: string, version: string, o: AgentOpts & { to?: string; format: ExportFormat; ggufType: string; force?: boolean }) => {
      if (o.to === undefined) throw new Error("give where to write the export with --to <path>");
      // read-only: it only reads the version, so it runs beside a kiln serve of the same agent
      const { runtime, name: agent } = await openAgent({ ...o, backend: backend() }, name, false, true);
      try {
        const r = await runtime.agent(agent).exportVersion(version, o.to, { format: o.format, force: o.force, ggufType: o.ggufType === "f16" ? "F16" : "F32" });
        print(o.json, r, () =>
          [
            `exported ${agent} ${r.version}${r.status === "rejected" ? " (a version the gate rejected)" : ""} as ${r.format} to ${r.path} (${r.files.length} file(s), ${(r.bytes / 2 ** 20).toFixed(1)} MiB)`,
            `base model: ${r.baseModel}`,
          ].join("\n"),
        );
      } finally {
        await runtime.stop();
      }
    });

  // --- probe and bake ---
  withAgents(program.command("probe <agent> <question>").description("ask on the live weights with and without context in the prompt"))
    .option("--context <text...>", "items to put in the prompt for the comparison")
    .action(async (name: string, question: string, o: AgentOpts & { context?: string[] }) => {
      // read-only, as verify: it asks the weights and writes nothing, so it runs beside kiln serve
      const { runtime, name: agent } = await openAgent({ ...o, backend: backend() }, name, false, true);
      try {
        const r = await runtime.probe(agent, question, o.context);
        print(o.json, r, () => [`version:    ${r.version === BASE_VERSION ? "base model" : r.version}`, `unprompted: ${oneLine(r.unprompted)}`, ...(r.prompted !== null ? [`prompted:   ${oneLine(r.prompted)}`] : [])].join("\n"));
      } finally {
        await runtime.stop();
      }
    });
  withAgents(program.command("learn [agent]").description("poll the agent's feeds, then bake what is pending (one rolling bake)"))
    .option("--no-poll", "bake only")
    .action(async (name: string | undefined, o: AgentOpts & { poll: boolean }) => {
      const { runtime, name: agent } = await openAgent({ ...o, backend: backend() }, name, true);
      try {
        const a = runtime.agent(agent);
        if (o.poll) await a.pollAllFeeds();
        const r = await a.bake("cli", { force: true });
        const missed = notAbsorbed(a.ledger, r);
        print(o.json, { ...r, ...(r.status === "promoted" ? { notAbsorbed: missed.ids } : {}) }, () => [outcomeLine("bake", r), ...missed.lines].join("\n"));
        if (r.status === "failed") process.exitCode = 1;
      } finally {
        await runtime.stop();
      }
    });
}

function loadAgentConfigFromText(text: string, file: string, checkpoints?: string): AgentConfig {
  return parseAgentConfig(parseYaml(text), file, path.dirname(file), checkpoints ?? DEFAULT_CHECKPOINTS_DIR);
}
