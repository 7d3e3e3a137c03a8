// The command line as a user runs it (a child process per command): option values are checked,
// an agent named on the command line is the one used when agents/ holds several, piped chat
// input is answered line by line, and a wrong --out never costs a file.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { createRequire } from "node:module";
import { repoRoot } from "./support/paths.js";
import { TEST_BAKE, writeTestAgent } from "./support/agent.js";
import { Ledger } from "../src/knowledge/ledger.js";
import { notAbsorbed } from "../src/cli/agents.js";

const MAIN = path.join(repoRoot(), "dist", "src", "cli", "main.js");

function resolvable(pkg: string): boolean {
  try {
    createRequire(import.meta.url).resolve(pkg);
    return true;
  } catch {
    return false;
  }
}

function kiln(args: string[], o: { cwd?: string; input?: string } = {}): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [MAIN, ...args], { cwd: o.cwd ?? repoRoot(), input: o.input, encoding: "utf8", timeout: 180_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** The two shipped agents (demo and newsroom; not any the user added) with their feeds, in a folder of their own. */
function twoAgents(): { dir: string; agents: string; checkpoints: string } {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-cli-"));
  mkdirSync(path.join(dir, "agents"));
  for (const f of ["demo.yaml", "newsroom.yaml"]) cpSync(path.join(repoRoot(), "agents", f), path.join(dir, "agents", f));
  cpSync(path.join(repoRoot(), "feeds"), path.join(dir, "feeds"), { recursive: true });
  return { dir, agents: path.join(dir, "agents"), checkpoints: path.join(dir, "checkpoints") };
}

test("option values are checked before any work, naming the option", () => {
  const epochs = kiln(["bake", "--prompt", "x", "--out", path.join(os.tmpdir(), "kiln-never"), "--epochs", "abc"]);
  assert.equal(epochs.status, 1);
  assert.match(epochs.stderr, /option '--epochs <n>' argument 'abc' is invalid\. expected a whole number >= 1/);
  const rank = kiln(["bake", "--prompt", "x", "--out", path.join(os.tmpdir(), "kiln-never"), "--rank", "100000"]);
  assert.match(rank.stderr, /option '--rank <r>' argument '100000' is invalid\. expected a whole number >= 1 and <= 512/);
  const trajectories = kiln(["bake", "--prompt", "x", "--out", path.join(os.tmpdir(), "kiln-never"), "--trajectories", "100000"]);
  assert.match(trajectories.stderr, /option '--trajectories <n>' argument '100000' is invalid\. expected a whole number >= 1 and <= 2048/);
  const manyEpochs = kiln(["bake", "--prompt", "x", "--out", path.join(os.tmpdir(), "kiln-never"), "--epochs", "1000000000"]);
  assert.match(manyEpochs.stderr, /option '--epochs <n>' argument '1000000000' is invalid\. expected a whole number >= 1 and <= 100/);
  const reply = kiln(["bake", "--prompt", "x", "--out", path.join(os.tmpdir(), "kiln-never"), "--max-reply-tokens", "100000"]);
  assert.match(reply.stderr, /option '--max-reply-tokens <n>' argument '100000' is invalid\. expected a whole number >= 1 and <= 4096/);
  const temperature = kiln(["generate", "--prompt", "hi", "--temperature", "-3"]);
  assert.equal(temperature.status, 1);
  assert.match(temperature.stderr, /'--temperature <t>' argument '-3' is invalid\. expected a number >= 0/);
  const port = kiln(["serve", "--port", "http"]);
  assert.match(port.stderr, /'--port <n>' argument 'http' is invalid\. expected a whole number >= 0 and <= 65535/);
  const status = kiln(["knowledge", "list", "demo", "--status", "bogus"]);
  assert.equal(status.status, 1);
  assert.match(status.stderr, /argument 'bogus' is invalid\. Allowed choices are pending, baking, absorbed/);
  // an adapter continued with --from keeps its shape: options that would change it are refused, not ignored
  const shape = kiln(["bake", "--prompt", "x", "--out", path.join(os.tmpdir(), "kiln-never"), "--from", path.join(os.tmpdir(), "kiln-never-from"), "--rank", "4", "--rslora"]);
  assert.equal(shape.status, 1);
  assert.match(shape.stderr, /--rank, --rslora shape a new adapter; the one --from continues keeps its own shape/);
  const objective = kiln(["bake", "--prompt", "x", "--out", path.join(os.tmpdir(), "kiln-never"), "--objective", "reverse"]);
  assert.match(objective.stderr, /argument 'reverse' is invalid\. Allowed choices are forward, on-policy/);
  const onPolicyTopK = kiln(["bake", "--prompt", "x", "--out", path.join(os.tmpdir(), "kiln-never"), "--objective", "on-policy", "--kl", "topk"]);
  assert.equal(onPolicyTopK.status, 1);
  assert.match(onPolicyTopK.stderr, /--objective on-policy --kl topk: the on-policy objective needs kl: full/);
  // a file where an adapter folder goes: said so (it said the folder lacked adapter_config.json)
  const adapterFile = kiln(["generate", "--prompt", "hi", "--adapter", path.join(repoRoot(), "package.json")]);
  assert.equal(adapterFile.status, 1);
  assert.match(adapterFile.stderr, /package\.json: a file, not an adapter folder: name the folder that holds adapter_config\.json/);
});

test("kiln bake --questions: a file that is not JSON is named, and an empty one is refused rather than baked on questions the model writes", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-cli-questions-"));
  try {
    const bake = (file: string) => kiln(["bake", "--prompt", "x", "--out", path.join(dir, "out"), "--questions", file, "--epochs", "1", "--trajectories", "1", "--quiet"]);
    writeFileSync(path.join(dir, "broken.json"), "[bad");
    const broken = bake(path.join(dir, "broken.json"));
    assert.equal(broken.status, 1);
    assert.match(broken.stderr, /broken\.json: not valid JSON \(.*\); give a JSON array of strings/);
    for (const [name, text] of [["empty.txt", ""], ["blank.txt", "\n  \n"], ["empty.json", "[]"]]) {
      writeFileSync(path.join(dir, name), text);
      const r = bake(path.join(dir, name));
      assert.equal(r.status, 1, `${name}: ${r.stdout}`);
      assert.match(r.stderr, new RegExp(`${name.replace(".", "\\.")} holds no questions .*leave --questions out to have the model write them`));
    }
    assert.ok(!existsSync(path.join(dir, "out")), "nothing baked");
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("kiln bake takes its prompt from --prompt or --prompt-file, and never writes over a folder that is not an adapter", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-cli-bake-"));
  try {
    assert.match(kiln(["bake", "--out", path.join(dir, "a")]).stderr, /give the prompt to bake with --prompt <text> or --prompt-file <file>/);
    assert.match(kiln(["bake", "--prompt-file", path.join(dir, "nope.txt"), "--out", path.join(dir, "a")]).stderr, /--prompt-file: .*nope\.txt does not exist/);
    const precious = path.join(dir, "precious");
    mkdirSync(precious);
    writeFileSync(path.join(precious, "notes.txt"), "important");
    writeFileSync(path.join(dir, "prompt.txt"), "The mayor of Quillport is Tovan Reel.");
    const r = kiln(["bake", "--prompt-file", path.join(dir, "prompt.txt"), "--out", precious, "--epochs", "1"]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /precious: is a folder that is not a PEFT adapter .* choose a new folder/);
    assert.equal(readFileSync(path.join(precious, "notes.txt"), "utf8"), "important");
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("with several agents, the one named on the command line is used; a name that is not there is an error", () => {
  const { dir, agents, checkpoints } = twoAgents();
  const where = ["--agents", agents, "--checkpoints", checkpoints];
  try {
    const r = kiln(["knowledge", "remember", "newsroom", "The harbor fee is nine coins.", ...where, "--json"]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).added, true);
    const newsroom = JSON.parse(readFileSync(path.join(checkpoints, "newsroom", "ledger.json"), "utf8"));
    assert.deepEqual(newsroom.items.map((i: { text: string }) => i.text), ["The harbor fee is nine coins."]);
    assert.ok(!existsSync(path.join(checkpoints, "demo", "ledger.json")), "the other agent was not touched");

    const probe = kiln(["probe", "demo", "Who is the mayor of Quillport?", "--context", "The mayor of Quillport is Tovan Reel.", ...where, "--json"]);
    assert.equal(probe.status, 0, probe.stderr);
    assert.equal(JSON.parse(probe.stdout).prompted, "The mayor of Quillport is Tovan Reel.");
    const empty = kiln(["probe", "demo", "  ", ...where]);
    assert.equal(empty.status, 1, "an empty question is refused, as the admin API's 400");
    assert.equal(empty.stderr, "kiln: the question is empty: ask something\n");

    const missing = kiln(["knowledge", "remember", "weather", "Rain.", ...where]);
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /no agent named weather in .*agents \(agents: demo, newsroom\)/);
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("piped chat input is answered line by line, none dropped while a reply streams", () => {
  const { dir, agents, checkpoints } = twoAgents();
  try {
    const input = "remember that the harbor fee is nine coins\nWho is the mayor of Quillport?\n/version\n/verison\nforget the harbor fee\n/quit\n";
    const r = kiln(["chat", "demo", "--agents", agents, "--checkpoints", checkpoints, "--max-tokens", "24"], { input });
    assert.equal(r.status, 0, r.stderr);
    // "remember ..." and "forget ..." are commands the runtime answers, not questions for the model
    assert.match(r.stdout, /^> Noted for my next bake: The harbor fee is nine coins\.$/m);
    assert.match(r.stdout, /^> Forgot 1 item\(s\) matching "the harbor fee" \(not baked in yet\)\.$/m);
    assert.equal(r.stdout.match(/^> /gm)?.length, 6, "a prompt for each line and one at the end of input");
    assert.match(r.stdout, /^> base model$/m, "/version, the third line, was answered");
    // a mistyped command is said so, not sent to the model as a message
    assert.match(r.stdout, /^> unknown command \/verison: \/bake, \/version, \/quit$/m);
    const demo = JSON.parse(readFileSync(path.join(checkpoints, "demo", "ledger.json"), "utf8"));
    assert.deepEqual(demo.items.map((i: { status: string }) => i.status), ["retracted"]);
    assert.equal(demo.bakes.length, 0, "forgetting an item never baked in needs no rebuild");
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("a chat line the model cannot take (longer than its context) is said, and the chat goes on", () => {
  const { dir, agents, checkpoints } = twoAgents();
  try {
    // kiln-mini has 512 positions
    const input = `${"word ".repeat(2000)}\n/version\n/quit\n`;
    const r = kiln(["chat", "demo", "--agents", agents, "--checkpoints", checkpoints, "--max-tokens", "8"], { input });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /^kiln: .*exceeds the model's 512 positions$/m);
    assert.match(r.stdout, /^> base model$/m, "/version, after the long line, was answered");
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("feeds add writes a local feed's path as the agent file will read it, keeps the file's long lines, and refuses one that is not there", () => {
  const { dir, agents, checkpoints } = twoAgents();
  const where = ["--agents", agents, "--checkpoints", checkpoints];
  try {
    writeFileSync(
      path.join(dir, "local.xml"),
      `<?xml version="1.0"?><rss version="2.0"><channel><title>Local</title><item><guid>l1</guid><title>The harbor fee is nine coins.</title></item></channel></rss>`,
    );
    const bad = kiln(["feeds", "add", "demo", "nope", "./missing.xml", ...where], { cwd: dir });
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /\.\/missing\.xml: no such feed file/);
    const ok = kiln(["feeds", "add", "demo", "local", "./local.xml", ...where], { cwd: dir });
    assert.equal(ok.status, 0, ok.stderr);
    const text = readFileSync(path.join(agents, "demo.yaml"), "utf8");
    assert.match(text, /url: \.\.\/local\.xml/);
    // the rest of the file keeps its lines: the one-line lora mapping came back broken over five
    assert.match(text, /^    lora: \{ r: 16, alpha: 32, targetModules: \[ ?q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj ?\] \}$/m);
    const poll = kiln(["feeds", "poll", "demo", ...where, "--json"]);
    assert.equal(poll.status, 0, poll.stderr);
    assert.equal(JSON.parse(poll.stdout).local.added, 1, poll.stdout);
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("feeds add gives an agent with no feeds yet its first (no feeds key, [] or an empty feeds:), keeping the file's comments", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-cli-feeds-"));
  try {
    const feed = path.join(repoRoot(), "feeds", "town-gazette.rss.xml");
    for (const [n, feeds] of [["1", ""], ["2", "feeds: []\n"], ["3", "feeds:\n"]] as const) {
      const file = path.join(dir, `a${n}.yaml`);
      writeFileSync(file, `# my reader\nname: reader${n}\n${feeds}home: home${n}   # its state\n`);
      const r = kiln(["feeds", "add", `reader${n}`, "gazette", feed, "--agents", file]);
      // it failed with "Expected YAML collection at feeds. Remaining path: " and left the file as it was
      assert.equal(r.status, 0, `${feeds || "(no key)"}: ${r.stderr}`);
      const text = readFileSync(file, "utf8");
      assert.match(text, /^# my reader\n/);
      assert.match(text, /home: home\d +# its state/);
      assert.match(text, /^feeds:\n  - id: gazette\n    url: .*town-gazette\.rss\.xml\n    schedule: "\*\/30 \* \* \* \*"$/m);
      const list = kiln(["feeds", "list", `reader${n}`, "--agents", file, "--json"]);
      assert.equal(list.status, 0, list.stderr);
      assert.deepEqual(JSON.parse(list.stdout).map((f: { id: string }) => f.id), ["gazette"]);
    }
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("knowledge verify of an item never baked says there is nothing to ask, not 0/0 probes; retract --reason is kept in its history", () => {
  const checkpoints = mkdtempSync(path.join(os.tmpdir(), "kiln-cli-verify-"));
  try {
    const at = ["--agents", path.join(repoRoot(), "agents", "demo.yaml"), "--checkpoints", checkpoints];
    const told = kiln(["knowledge", "remember", "demo", "The harbor fee is nine coins.", ...at, "--json"]);
    assert.equal(told.status, 0, told.stderr);
    const id = JSON.parse(told.stdout).item.id as string;
    const r = kiln(["knowledge", "verify", "demo", id, ...at]);
    assert.equal(r.status, 1, "not held: exit 1");
    assert.match(r.stdout, new RegExp(`^${id}  NOT HELD \\(no probes to ask: not baked yet\\)  The harbor fee is nine coins\\.$`, "m"));
    assert.match(r.stdout, /^0 of 1 item\(s\) held by the base model$/m);
    // retracted from the command line: the history says why ("retracted (retracted)" said nothing)
    const retracted = kiln(["knowledge", "retract", "demo", id, "--reason", "the fee changed", ...at]);
    assert.equal(retracted.status, 0, retracted.stderr);
    assert.match(retracted.stdout, /consolidation skipped: the live weights never held these items/);
    const shown = kiln(["knowledge", "show", "demo", id, ...at]);
    assert.match(shown.stdout, /^history: \S+ retracted \(the fee changed\)$/m);
  } finally {
    rmSync(checkpoints, { recursive: true });
  }
});

test("kiln knowledge remember records who told it and takes --kind, as the admin API does", () => {
  const checkpoints = mkdtempSync(path.join(os.tmpdir(), "kiln-cli-remember-"));
  try {
    const at = ["--agents", path.join(repoRoot(), "agents", "demo.yaml"), "--checkpoints", checkpoints, "--json"];
    // its source was {}: show and the dashboard could not say where the item came from
    const fact = JSON.parse(kiln(["knowledge", "remember", "demo", "The harbor fee is nine coins.", ...at]).stdout).item;
    assert.deepEqual([fact.kind, fact.source], ["manual", { by: "cli" }]);
    const told = kiln(["knowledge", "remember", "demo", "Answer in French.", "--kind", "instruction", ...at]);
    assert.equal(told.status, 0, told.stderr);
    assert.equal(JSON.parse(told.stdout).item.kind, "instruction");
    // a control character (here an escape sequence pasted with the text) is refused in one line, naming it; nothing is stored
    const control = kiln(["knowledge", "remember", "demo", "The fee is \u001b[1mnine\u001b[0m coins.", ...at]);
    assert.equal(control.status, 1);
    assert.equal(control.stderr, "kiln: a fact cannot hold control characters (U+001B at character 12), which a prompt does not show: remove them\n");
    assert.equal(JSON.parse(kiln(["knowledge", "list", "demo", ...at]).stdout).length, 2);
  } finally {
    rmSync(checkpoints, { recursive: true });
  }
});

test("retracting an item already retracted says so and leaves its history alone", () => {
  const checkpoints = mkdtempSync(path.join(os.tmpdir(), "kiln-cli-retract-again-"));
  try {
    const at = ["--agents", path.join(repoRoot(), "agents", "demo.yaml"), "--checkpoints", checkpoints];
    const id = JSON.parse(kiln(["knowledge", "remember", "demo", "The harbor fee is nine coins.", ...at, "--json"]).stdout).item.id as string;
    assert.equal(kiln(["knowledge", "retract", "demo", id, "--reason", "the fee changed", ...at]).status, 0);
    const again = kiln(["knowledge", "retract", "demo", id, ...at]);
    assert.equal(again.status, 0, again.stderr);
    // it said "the live weights never held these items: marked retracted" and marked it again
    assert.match(again.stdout, new RegExp(`^consolidation skipped: item ${id} is already retracted \\(since \\S+\\) and the live weights do not hold it: nothing to do$`, "m"));
    const history = (JSON.parse(kiln(["knowledge", "show", "demo", id, ...at, "--json"]).stdout).history as { status: string; reason?: string }[]).filter((h) => h.status === "retracted");
    assert.deepEqual(history.map((h) => h.reason), ["the fee changed"]);
  } finally {
    rmSync(checkpoints, { recursive: true });
  }
});

test("kiln demo --agent with a file that sets home: keeps the demo's state in its own folder, never the agent's", () => {
  const { dir, file } = writeTestAgent(); // home: home
  const root = mkdtempSync(path.join(os.tmpdir(), "kiln-cli-demo-"));
  try {
    const r = kiln(["demo", "--agent", file, "--home", root, "--max-items", "1"]);
    assert.equal(r.status, 0, r.stderr);
    // it baked and promoted with force into <agent dir>/home, the agent's real ledger and versions
    assert.ok(!existsSync(path.join(dir, "home")), "the agent's own home is untouched");
    assert.ok(existsSync(path.join(root, "tester", "ledger.json")));
    assert.match(r.stdout, /ledger: .*tester\/ledger\.json \(the demo's own: .* sets home: home, which the kiln commands read and the demo left alone\)/);
    assert.doesNotMatch(r.stdout, /try: npx kiln/, "no command that would read the agent's own home instead");
    assert.ok(existsSync(path.join(root, "tester", ".kiln-demo")), "marked as the demo's: a later run with this --home may bake there again");
  } finally {
    rmSync(dir, { recursive: true });
    rmSync(root, { recursive: true });
  }
});

test("kiln demo --home where <home>/<agent> is already that agent's home is refused, naming it, and writes nothing there", () => {
  const { dir, file } = writeTestAgent({ home: undefined }); // tester keeps its state in <checkpoints>/tester
  const root = path.join(dir, "checkpoints");
  try {
    assert.equal(kiln(["knowledge", "remember", "tester", "The harbor fee is nine coins.", "--agents", file, "--checkpoints", root]).status, 0);
    const ledger = path.join(root, "tester", "ledger.json");
    const before = readFileSync(ledger, "utf8");
    const r = kiln(["demo", "--agent", file, "--home", root, "--max-items", "1"]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /--home .*checkpoints: .*checkpoints\/tester already holds agent tester's state \(.*ledger\.json.*\), which the demo did not write; the demo bakes and promotes with force and never writes into a real agent's home: give --home a folder of its own/);
    assert.equal(readFileSync(ledger, "utf8"), before, "the agent's ledger is as it was");
    assert.deepEqual(readdirSync(path.join(root, "tester")).filter((f) => /^v\d{4}/.test(f) || f === ".kiln-demo"), [], "no version, no demo mark");
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("kiln demo --home checkpoints (the demo agent's own home, empty on a fresh clone) is refused, and --home a file says so", () => {
  const own = path.join(repoRoot(), "checkpoints", "demo");
  const existed = existsSync(own);
  const before = existed ? readdirSync(own) : [];
  const r = kiln(["demo", "--home", "checkpoints", "--max-items", "1"]);
  assert.equal(r.status, 1, r.stdout);
  assert.match(r.stderr, /--home checkpoints: .*checkpoints\/demo is where agent demo's own ledger and versions go \(its agent file's home\), not the demo's/);
  assert.equal(existsSync(own), existed, "nothing made");
  if (existed) assert.deepEqual(readdirSync(own), before, "nothing written there");
  const file = path.join(mkdtempSync(path.join(os.tmpdir(), "kiln-cli-demo-")), "not-a-folder");
  writeFileSync(file, "x");
  try {
    const f = kiln(["demo", "--home", file, "--max-items", "1"]);
    assert.equal(f.status, 1);
    assert.equal(f.stderr, `kiln: --home ${file} is a file: give it a folder (made if missing)\n`);
  } finally {
    rmSync(path.dirname(file), { recursive: true });
  }
});

test("a command on one agent refuses agent files that share a home, as serve does: it would write into the other's ledger", () => {
  const { dir, file } = writeTestAgent(); // tester, home: home
  try {
    assert.equal(kiln(["feeds", "poll", "tester", "--agents", dir]).status, 0);
    const ledger = path.join(dir, "home", "ledger.json");
    const before = readFileSync(ledger, "utf8");
    writeFileSync(path.join(dir, "other.yaml"), `name: other\nhome: ${path.join(dir, "home")}\n`);
    const r = kiln(["knowledge", "remember", "other", "The mayor of Abc is Def.", "--agents", dir]);
    assert.equal(r.status, 1, r.stdout);
    assert.match(r.stderr, /agents (other and tester|tester and other) both keep their ledger and versions in .*home.*: give each its own home/);
    assert.equal(readFileSync(ledger, "utf8"), before, "tester's ledger (its feed state) is as it was");
    assert.equal(kiln(["knowledge", "list", "tester", "--agents", file]).status, 0, "the agent file alone still reads");
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("Ctrl-C during kiln learn stops the bake as serve does: recorded failed, its items pending again, the ledger's lock let go, exit 130", async () => {
  // a bake long enough to be in the middle of (the fixture model: each epoch a fraction of a second)
  const { dir, file } = writeTestAgent({ bake: { ...TEST_BAKE, settings: { ...TEST_BAKE.settings, epochs: 100, patience: 100 } } });
  try {
    const child = spawn(process.execPath, [MAIN, "learn", "tester", "--agents", file], { stdio: ["ignore", "pipe", "pipe"] });
    let stderr = "";
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    const ledger = path.join(dir, "home", "ledger.json");
    const baking = () => existsSync(ledger) && (JSON.parse(readFileSync(ledger, "utf8")) as { items: { status: string }[] }).items.some((i) => i.status === "baking");
    for (const end = Date.now() + 120_000; !baking(); ) {
      assert.ok(Date.now() < end && child.exitCode === null, `the bake did not start: ${stderr}`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    child.kill("SIGINT");
    const code = await new Promise<number | null>((resolve) => child.on("exit", (c) => resolve(c)));
    assert.equal(code, 130, stderr);
    assert.match(stderr, /kiln: SIGINT: stopping/);
    const after = JSON.parse(readFileSync(ledger, "utf8")) as { items: { status: string }[]; bakes: { status: string; error?: string }[] };
    assert.deepEqual([...new Set(after.items.map((i) => i.status))], ["pending"], "no item left 'baking'");
    assert.equal(after.bakes.at(-1)?.status, "failed");
    assert.ok(!existsSync(`${ledger}.lock`), "the lock let go");
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("versions list says when the base model is live beside kept versions (after a rollback to base)", () => {
  const checkpoints = mkdtempSync(path.join(os.tmpdir(), "kiln-cli-base-"));
  try {
    const home = path.join(checkpoints, "demo");
    mkdirSync(path.join(home, "v0001"), { recursive: true });
    const version = { id: "v0001", parent: null, createdAt: "2026-01-01T00:00:00.000Z", dir: path.join(home, "v0001"), status: "kept", bakeId: "b", items: [], scores: { absorption: 1, retention: 1, persona: null } };
    writeFileSync(path.join(home, "ledger.json"), JSON.stringify({ schema: 1, live: null, items: [], versions: [version], bakes: [], feeds: [] }));
    const r = kiln(["versions", "list", "demo", "--agents", path.join(repoRoot(), "agents", "demo.yaml"), "--checkpoints", checkpoints]);
    assert.equal(r.status, 0, r.stderr);
    // only "v0001 kept ..." was listed: nothing said what was live
    assert.match(r.stdout, /^v0001 kept .*\nbase  live     \(the base model, no adapter\)\n$/);
    // --json names the base model "base", as the admin API's versions and /healthz do (it said null)
    const json = kiln(["versions", "list", "demo", "--json", "--agents", path.join(repoRoot(), "agents", "demo.yaml"), "--checkpoints", checkpoints]);
    assert.equal(JSON.parse(json.stdout).live, "base");
  } finally {
    rmSync(checkpoints, { recursive: true });
  }
});

test("versions list says when the live version's folder is missing (removed by hand)", () => {
  const checkpoints = mkdtempSync(path.join(os.tmpdir(), "kiln-cli-missing-"));
  try {
    const home = path.join(checkpoints, "demo");
    mkdirSync(home, { recursive: true });
    const version = { id: "v0002", parent: null, createdAt: "2026-01-01T00:00:00.000Z", dir: path.join(home, "v0002"), status: "live", bakeId: "b", items: [], scores: { absorption: 1, retention: 1, persona: null } };
    writeFileSync(path.join(home, "ledger.json"), JSON.stringify({ schema: 1, live: "v0002", items: [], versions: [version], bakes: [], feeds: [] }));
    const r = kiln(["versions", "list", "demo", "--agents", path.join(repoRoot(), "agents", "demo.yaml"), "--checkpoints", checkpoints]);
    assert.equal(r.status, 0, r.stderr);
    // it was listed live with no word (kept versions get "cannot go live")
    assert.match(r.stdout, /^v0002 live .*\[its folder .*v0002 is missing: the next start serves the newest kept version that loads, else the base model\]\n$/);
  } finally {
    rmSync(checkpoints, { recursive: true });
  }
});

test("kiln learn names the persona score of an agent with a persona, as versions list does", () => {
  const { dir, file } = writeTestAgent({ feeds: [], persona: { text: "End every reply with: Cheers.", suffix: "Cheers." } });
  try {
    const r = kiln(["learn", "tester", "--no-poll", "--agents", file]);
    assert.equal(r.status, 0, r.stderr);
    // it printed "bake promoted v0001: absorption 1.00, retention 1.00": the persona the gate weighed was left out
    assert.match(r.stdout, /^bake promoted v0001: absorption \d\.\d\d, retention \d\.\d\d, persona \d\.\d\d$/m);
    const list = kiln(["versions", "list", "tester", "--agents", file]);
    assert.match(list.stdout, /^v0001 live .* persona \d\.\d\d$/m);
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("knowledge verify of a retracted item is proof of forgetting: \"forgotten\" (exit 0) when the weights do not answer it, exit 1 when they still do", () => {
  const checkpoints = mkdtempSync(path.join(os.tmpdir(), "kiln-cli-forgotten-"));
  try {
    const at = ["--agents", path.join(repoRoot(), "agents", "demo.yaml"), "--checkpoints", checkpoints];
    // what the base model answers anyway: a retracted item whose probe expects it is "still held"
    const own = kiln(["generate", "--prompt", "Who are you?", "--max-tokens", "48"]);
    assert.equal(own.status, 0, own.stderr);
    const answer = own.stdout.trim();
    const when = "2026-01-01T00:00:00.000Z";
    const item = (id: string, text: string, question: string, expected: string) => ({
      id, kind: "manual", text, status: "retracted", createdAt: when, updatedAt: when, source: {}, contentHash: id,
      probes: [{ question, answer: expected }], scores: [], history: [{ at: when, status: "retracted", reason: "test" }],
    });
    mkdirSync(path.join(checkpoints, "demo"));
    const ledger = (items: unknown[]) => writeFileSync(path.join(checkpoints, "demo", "ledger.json"), JSON.stringify({ schema: 1, live: null, items, versions: [], bakes: [], feeds: [] }));
    ledger([item("k_gone", "Ada Quill owns a pet owl.", "What pet does Ada Quill own?", "Ada Quill owns a pet owl.")]);
    const gone = kiln(["knowledge", "verify", "demo", "k_gone", ...at]);
    // it said "NOT HELD" and exited 1: the outcome a retraction is for read as a failed proof
    assert.equal(gone.status, 0, gone.stdout);
    assert.match(gone.stdout, /^k_gone {2}forgotten \(retracted\) \(0\/1 probes\) {2}Ada Quill owns a pet owl\.$/m);
    assert.match(gone.stdout, /^0 of 1 item\(s\) held by the base model; 1 of the 1 retracted forgotten$/m);
    ledger([item("k_kept", "I am kiln.", "Who are you?", answer)]);
    const kept = kiln(["knowledge", "verify", "demo", "k_kept", ...at]);
    assert.equal(kept.status, 1, kept.stdout);
    assert.match(kept.stdout, /^k_kept {2}STILL HELD, though retracted \(1\/1 probes\)/m);
  } finally {
    rmSync(checkpoints, { recursive: true });
  }
});

test("knowledge verify calls a retracted item forgotten only when none of its probes passes: one of three still answered is still held (exit 1)", () => {
  const checkpoints = mkdtempSync(path.join(os.tmpdir(), "kiln-cli-partly-"));
  try {
    const at = ["--agents", path.join(repoRoot(), "agents", "demo.yaml"), "--checkpoints", checkpoints];
    const own = kiln(["generate", "--prompt", "Who are you?", "--max-tokens", "48"]);
    assert.equal(own.status, 0, own.stderr);
    const when = "2026-01-01T00:00:00.000Z";
    // three probes, one the weights still answer as baked: a score of 1/3, under gate.itemPass 0.5
    const probes = [
      { question: "What pet does Ada Quill own?", answer: "Ada Quill owns a pet owl." },
      { question: "Who are you?", answer: own.stdout.trim() },
      { question: "What is the name of Ada Quill's owl?", answer: "Ada Quill's owl is called Pip." },
    ];
    const item = { id: "k_partly", kind: "manual", text: "Ada Quill owns a pet owl called Pip.", status: "retracted", createdAt: when, updatedAt: when, source: {}, contentHash: "k_partly", probes, scores: [], history: [{ at: when, status: "retracted", reason: "test" }] };
    mkdirSync(path.join(checkpoints, "demo"));
    writeFileSync(path.join(checkpoints, "demo", "ledger.json"), JSON.stringify({ schema: 1, live: null, items: [item], versions: [], bakes: [], feeds: [] }));
    const r = kiln(["knowledge", "verify", "demo", "k_partly", ...at]);
    // it said "forgotten (retracted) (1/3 probes)" and exited 0: a proof of forgetting while the weights answered a probe as baked
    assert.match(r.stdout, /^k_partly {2}STILL HELD, though retracted \(1\/3 probes\)/m);
    assert.match(r.stdout, /; 0 of the 1 retracted forgotten$/m);
    assert.equal(r.status, 1, r.stdout);
  } finally {
    rmSync(checkpoints, { recursive: true });
  }
});

test("chat's /bake says the scores its gate weighed, as kiln learn does", () => {
  const { dir, file } = writeTestAgent({ feeds: [], persona: { text: "End every reply with: Cheers.", suffix: "Cheers." } });
  try {
    const r = kiln(["chat", "tester", "--agents", file], { input: "/bake\n/quit\n" });
    assert.equal(r.status, 0, r.stderr);
    // it printed "bake promoted v0001" alone: what the bake held was left to knowledge list
    assert.match(r.stdout, /^> bake promoted v0001: absorption \d\.\d\d, retention \d\.\d\d, persona \d\.\d\d$/m);
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("kiln learn names the new items a promoted bake did not absorb (text and --json)", () => {
  // itemPass 1 on the fixture's random model: it cannot answer every probe of every item
  const { dir, file } = writeTestAgent({ gate: { minAbsorption: 0, minRetention: 0, minPersona: 0, itemPass: 1 } });
  try {
    const ledger = () => JSON.parse(readFileSync(path.join(dir, "home", "ledger.json"), "utf8"));
    const missedBy = (bakeId: string) => {
      const d = ledger();
      const run = d.bakes.find((b: { id: string }) => b.id === bakeId);
      return run.itemIds.filter((id: string) => d.items.find((i: { id: string; status: string }) => i.id === id).status !== "absorbed") as string[];
    };
    const r = kiln(["learn", "tester", "--agents", file]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^bake promoted v0001: absorption/);
    const missed = missedBy(ledger().bakes.at(-1).id);
    assert.ok(missed.length > 0, "the fixture model leaves an item unabsorbed");
    // the absorption score alone was printed: which items it missed took knowledge list and show
    assert.match(r.stdout, new RegExp(`^${missed.length} of 2 new item\\(s\\) not absorbed`, "m"));
    for (const id of missed) assert.match(r.stdout, new RegExp(`^ {2}${id} {2}pending `, "m"));
    const again = JSON.parse(kiln(["learn", "tester", "--no-poll", "--agents", file, "--json"]).stdout);
    assert.deepEqual(again.notAbsorbed, missedBy(again.bakeId));
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("kiln learn's not-absorbed list leaves out an item the bake superseded (its update, baked beside it, took its place)", async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-cli-superseded-"));
  try {
    const ledger = await Ledger.open(path.join(dir, "ledger.json"));
    const { item: old } = await ledger.addItem({ kind: "feed", text: "The harbor fee is nine coins." });
    const { item: update } = await ledger.addItem({ kind: "feed", text: "The harbor fee is now ten coins." });
    const { item: missed } = await ledger.addItem({ kind: "feed", text: "The ferry leaves at noon." });
    await ledger.update((d) => d.bakes.push({ id: "b1", startedAt: "2026-01-01T00:00:00.000Z", status: "promoted", trigger: "cli", parent: null, itemIds: [old.id, update.id, missed.id], replayIds: [], version: "v0001" }));
    // as the gate leaves them: the update absorbed, the item it updates superseded, one missed
    await ledger.setItemStatus([update.id], "absorbed", { version: "v0001" });
    await ledger.setItemStatus([old.id], "superseded");
    const r = notAbsorbed(ledger, { status: "promoted", bakeId: "b1", version: "v0001", reasons: [] });
    // it named the superseded item among the new items "not absorbed", as if the bake had failed it
    assert.deepEqual(r.ids, [missed.id]);
    assert.match(r.lines[0]!, /^1 of 3 new item\(s\) not absorbed/);
    await ledger.close();
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("knowledge list --status takes several statuses, comma-separated, and --kind, as the admin API does; search lists newest first as list does", () => {
  const checkpoints = mkdtempSync(path.join(os.tmpdir(), "kiln-cli-status-"));
  try {
    const item = (id: string, status: string, text: string) => ({ id, kind: "manual", text, status, createdAt: "2026-01-01T00:00:00.000Z", updatedAt: "2026-01-01T00:00:00.000Z", source: {}, contentHash: id, scores: [], history: [{ at: "2026-01-01T00:00:00.000Z", status }] });
    mkdirSync(path.join(checkpoints, "demo"));
    const items = [item("k_a1", "pending", `Ada owns a cat. She ${"feeds it every morning and ".repeat(4)}at night.`), item("k_b2", "retracted", "Bo owns a dog."), item("k_c3", "absorbed", "Cy owns a fish.")];
    writeFileSync(path.join(checkpoints, "demo", "ledger.json"), JSON.stringify({ schema: 1, live: null, items, versions: [], bakes: [], feeds: [] }));
    const at = ["--agents", path.join(repoRoot(), "agents", "demo.yaml"), "--checkpoints", checkpoints, "--json"];
    const ids = (...status: string[]) => (JSON.parse(kiln(["knowledge", "list", "demo", ...status, ...at]).stdout) as { id: string }[]).map((i) => i.id);
    assert.deepEqual(ids("--status", "retracted,pending"), ["k_b2", "k_a1"]);
    assert.deepEqual(ids("--status", "absorbed"), ["k_c3"]);
    // search lists in list's order, newest first (it listed oldest first)
    const found = (JSON.parse(kiln(["knowledge", "search", "demo", "owns", ...at]).stdout) as { id: string }[]).map((i) => i.id);
    assert.deepEqual(found, ["k_c3", "k_b2", "k_a1"]);
    // a text longer than a line is cut with an ellipsis (it was cut mid-word with no sign of it)
    const long = kiln(["knowledge", "list", "demo", ...at.slice(0, -1)]).stdout;
    assert.match(long, /^k_a1 {2}pending {4}manual {7}Ada owns a cat\. She .{60,}…$/m);
    assert.match(long, /^k_c3 {2}absorbed {3}manual {7}Cy owns a fish\.$/m);
    // by kind, as the admin API's ?kind= (what people told it, not the news it read)
    assert.deepEqual(ids("--kind", "manual"), ["k_c3", "k_b2", "k_a1"]);
    assert.deepEqual(ids("--kind", "feed"), []);
    assert.match(kiln(["knowledge", "list", "demo", "--kind", "news", ...at]).stderr, /argument 'news' is invalid\. Allowed choices are feed, conversation, manual, instruction/);
    const bad = kiln(["knowledge", "list", "demo", "--status", "pending,bogus", ...at]);
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /argument 'pending,bogus' is invalid\. Allowed choices are pending, baking, absorbed, .* \(one, or several separated by commas\)/);
  } finally {
    rmSync(checkpoints, { recursive: true });
  }
});

test("versions diff takes live, as versions export does", () => {
  const checkpoints = mkdtempSync(path.join(os.tmpdir(), "kiln-cli-diff-"));
  try {
    const home = path.join(checkpoints, "demo");
    const item = (id: string, text: string) => ({ id, kind: "manual", text, status: "absorbed", createdAt: "2026-01-01T00:00:00.000Z", updatedAt: "2026-01-01T00:00:00.000Z", source: {}, contentHash: id, scores: [], history: [] });
    const version = (id: string, status: string, items: string[]) => ({ id, parent: null, createdAt: "2026-01-01T00:00:00.000Z", dir: path.join(home, id), status, bakeId: "b", items, scores: { absorption: 1, retention: 1, persona: null } });
    mkdirSync(home);
    writeFileSync(path.join(home, "ledger.json"), JSON.stringify({ schema: 1, live: "v0002", items: [item("k_a1", "Ada owns a cat."), item("k_b2", "Bo owns a dog.")], versions: [version("v0001", "kept", ["k_a1"]), version("v0002", "live", ["k_a1", "k_b2"])], bakes: [], feeds: [] }));
    const r = kiln(["versions", "diff", "demo", "v0001", "live", "--agents", path.join(repoRoot(), "agents", "demo.yaml"), "--checkpoints", checkpoints]);
    // it said "no version live (known: v0001, v0002)"
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "+ k_b2 Bo owns a dog.\n");
  } finally {
    rmSync(checkpoints, { recursive: true });
  }
});

test("knowledge show names the versions that hold the item, the live one marked, and its JSON is the admin API's item (latestScore, heldBy)", () => {
  const checkpoints = mkdtempSync(path.join(os.tmpdir(), "kiln-cli-show-"));
  try {
    const home = path.join(checkpoints, "demo");
    const at = "2026-01-01T00:00:00.000Z";
    const score = { version: "v0002", unprompted: 1, prompted: 1 };
    const item = { id: "k_a1", kind: "manual", text: "Ada owns a cat.", status: "absorbed", createdAt: at, updatedAt: at, source: {}, contentHash: "k_a1", absorbedBy: "v0001", scores: [score], history: [] };
    const version = (id: string, status: string, items: string[]) => ({ id, parent: null, createdAt: at, dir: path.join(home, id), status, bakeId: "b", items, scores: { absorption: 1, retention: 1, persona: null } });
    mkdirSync(home);
    writeFileSync(path.join(home, "ledger.json"), JSON.stringify({ schema: 1, live: "v0002", items: [item], versions: [version("v0001", "kept", ["k_a1"]), version("v0002", "live", ["k_a1"]), version("v0003", "rejected", [])], bakes: [], feeds: [] }));
    const where = ["--agents", path.join(repoRoot(), "agents", "demo.yaml"), "--checkpoints", checkpoints];
    // "absorbed by v0001" alone: nothing said that v0002, the live weights, hold it
    assert.match(kiln(["knowledge", "show", "demo", "a1", ...where]).stdout, /^held by: v0001, v0002 \(live\)$/m);
    const json = JSON.parse(kiln(["knowledge", "show", "demo", "a1", ...where, "--json"]).stdout);
    assert.deepEqual([json.heldBy, json.latestScore], [["v0001", "v0002"], score]);
  } finally {
    rmSync(checkpoints, { recursive: true });
  }
});

test("knowledge show and verify keep each probe on one line when an answer holds a line break (a persona's sign-off)", () => {
  const checkpoints = mkdtempSync(path.join(os.tmpdir(), "kiln-cli-oneline-"));
  try {
    const at = "2026-01-01T00:00:00.000Z";
    const answer = "The mayor of Hollowby is Ada Reel.\n Cheers, Ada";
    const item = { id: "k_a1", kind: "manual", text: "The mayor of Hollowby is Ada Reel.", status: "absorbed", createdAt: at, updatedAt: at, source: {}, contentHash: "k_a1", probes: [{ question: "Who is the mayor of Hollowby?", answer }], scores: [], history: [] };
    mkdirSync(path.join(checkpoints, "demo"));
    writeFileSync(path.join(checkpoints, "demo", "ledger.json"), JSON.stringify({ schema: 1, live: null, items: [item], versions: [], bakes: [], feeds: [] }));
    const where = ["--agents", path.join(repoRoot(), "agents", "demo.yaml"), "--checkpoints", checkpoints];
    // the sign-off stood on a line of its own, and verify's "(expected: ...)" was cut in two
    const shown = kiln(["knowledge", "show", "demo", "a1", ...where]).stdout;
    assert.match(shown, /^probe: {3}Who is the mayor of Hollowby\? -> The mayor of Hollowby is Ada Reel\.\\n Cheers, Ada$/m);
    const verified = kiln(["knowledge", "verify", "demo", "a1", ...where]).stdout;
    assert.match(verified, /^ {4}FAIL Who is the mayor of Hollowby\? -> .* {3}\(expected: The mayor of Hollowby is Ada Reel\.\\n Cheers, Ada\)$/m);
    for (const out of [shown, verified]) assert.doesNotMatch(out, /^ Cheers, Ada/m);
    // --json keeps the answer as the model gave it
    assert.equal(JSON.parse(kiln(["knowledge", "verify", "demo", "a1", ...where, "--json"]).stdout).items[0].probes[0].expected, answer);
  } finally {
    rmSync(checkpoints, { recursive: true });
  }
});

test("knowledge verify asks an item named twice (in full and by its end) once", () => {
  const checkpoints = mkdtempSync(path.join(os.tmpdir(), "kiln-cli-twice-"));
  try {
    const at = "2026-01-01T00:00:00.000Z";
    const item = { id: "k_a1", kind: "manual", text: "Ada owns a cat.", status: "absorbed", createdAt: at, updatedAt: at, source: {}, contentHash: "k_a1", probes: [{ question: "What does Ada own?", answer: "Ada owns a cat." }], scores: [], history: [] };
    mkdirSync(path.join(checkpoints, "demo"));
    writeFileSync(path.join(checkpoints, "demo", "ledger.json"), JSON.stringify({ schema: 1, live: null, items: [item], versions: [], bakes: [], feeds: [] }));
    const r = kiln(["knowledge", "verify", "demo", "k_a1", "a1", "--agents", path.join(repoRoot(), "agents", "demo.yaml"), "--checkpoints", checkpoints]);
    // it was asked twice and counted so: "0 of 2 item(s) held"
    assert.match(r.stdout, /^0 of 1 item\(s\) held by the base model$/m);
    assert.equal(r.stdout.match(/^k_a1 /gm)?.length, 1);
  } finally {
    rmSync(checkpoints, { recursive: true });
  }
});

test("knowledge verify of an item a bake is taking for the first time says the bake writes its probes", () => {
  const checkpoints = mkdtempSync(path.join(os.tmpdir(), "kiln-cli-baking-"));
  try {
    const at = "2026-01-01T00:00:00.000Z";
    const item = { id: "k_a1", kind: "manual", text: "Ada owns a cat.", status: "baking", createdAt: at, updatedAt: at, source: {}, contentHash: "k_a1", scores: [], history: [] };
    mkdirSync(path.join(checkpoints, "demo"));
    writeFileSync(path.join(checkpoints, "demo", "ledger.json"), JSON.stringify({ schema: 1, live: null, items: [item], versions: [], bakes: [], feeds: [] }));
    const r = kiln(["knowledge", "verify", "demo", "a1", "--agents", path.join(repoRoot(), "agents", "demo.yaml"), "--checkpoints", checkpoints]);
    // "(no probes to ask: baking, never probed)"
    assert.match(r.stdout, /^k_a1 {2}NOT HELD \(no probes to ask: a bake running now writes them\) {2}Ada owns a cat\.$/m);
  } finally {
    rmSync(checkpoints, { recursive: true });
  }
});

test("feeds add under a feeds: whose entries are all commented out keeps those comments", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-cli-feeds-"));
  try {
    const feed = path.join(repoRoot(), "feeds", "town-gazette.rss.xml");
    const file = path.join(dir, "a.yaml");
    writeFileSync(file, `name: reader\nfeeds:\n  # - id: wire\n  #   url: https://example.com/wire.xml\nhome: home\n`);
    const r = kiln(["feeds", "add", "reader", "gazette", feed, "--agents", file]);
    assert.equal(r.status, 0, r.stderr);
    const text = readFileSync(file, "utf8");
    // the commented-out feeds were dropped with the null they were attached to
    assert.match(text, /^feeds:\n  # - id: wire\n  #   url: https:\/\/example\.com\/wire\.xml\n  - id: gazette\n/m);
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("the read commands on an agent nothing has polled or baked for yet show it empty, naming where its ledger will be", () => {
  const checkpoints = mkdtempSync(path.join(os.tmpdir(), "kiln-cli-new-"));
  try {
    const at = ["--agents", path.join(repoRoot(), "agents", "demo.yaml"), "--checkpoints", checkpoints];
    const feeds = kiln(["feeds", "list", "demo", ...at]);
    assert.equal(feeds.status, 0, feeds.stderr);
    assert.match(feeds.stdout, /^town-gazette .*added 0, last ok never/m);
    assert.match(feeds.stderr, new RegExp(`no ledger yet at ${path.join(checkpoints, "demo", "ledger.json").replace(/[.\\/]/g, "\\$&")}`));
    const versions = kiln(["versions", "list", "demo", ...at]);
    assert.equal(versions.status, 0, versions.stderr);
    assert.match(versions.stdout, /the base model is live/);
    const items = kiln(["knowledge", "list", "demo", "--json", ...at]);
    assert.equal(items.status, 0, items.stderr);
    assert.ok(Array.isArray(JSON.parse(items.stdout)));
    assert.deepEqual(readdirSync(checkpoints), [], "reading creates nothing");
  } finally {
    rmSync(checkpoints, { recursive: true });
  }
});

test("an error is one line, even one quoting a damaged file's line breaks (a ledger that is not JSON)", () => {
  const checkpoints = mkdtempSync(path.join(os.tmpdir(), "kiln-cli-damaged-"));
  try {
    mkdirSync(path.join(checkpoints, "demo"));
    const ledger = path.join(checkpoints, "demo", "ledger.json");
    writeFileSync(ledger, "hello\nworld\n");
    const r = kiln(["knowledge", "list", "demo", "--agents", path.join(repoRoot(), "agents", "demo.yaml"), "--checkpoints", checkpoints]);
    assert.equal(r.status, 1);
    assert.equal(r.stderr.split("\n").filter(Boolean).length, 1, r.stderr);
    assert.match(r.stderr, /^kiln: .*ledger\.json is not a readable ledger \(.*"hello world ?".*\); it was left untouched\n$/);
    assert.equal(readFileSync(ledger, "utf8"), "hello\nworld\n");
  } finally {
    rmSync(checkpoints, { recursive: true });
  }
});

test("a mistyped required option is named as unknown, with the right spelling, rather than reported missing", () => {
  const generate = kiln(["generate", "--promt", "hi"]);
  assert.equal(generate.status, 1);
  assert.match(generate.stderr, /unknown option '--promt'\s+\(Did you mean --prompt\?\)/);
  // in one line, as kiln's own errors (it said "error: ..." with the suggestion on a second line)
  assert.equal(generate.stderr, "kiln: unknown option '--promt' (Did you mean --prompt?)\n");
  assert.equal(kiln(["knowledge", "list", "demo", "--status", "bogus"]).stderr.split("\n").filter(Boolean).length, 1);
  const bake = kiln(["bake", "--prompt", "x", "--ot", path.join(os.tmpdir(), "kiln-never")]);
  assert.equal(bake.status, 1);
  assert.match(bake.stderr, /unknown option '--ot'\s+\(Did you mean --out\?\)/);
  // left out, they are still required
  assert.match(kiln(["generate"]).stderr, /give the user message with --prompt <text>/);
  assert.match(kiln(["bake", "--prompt", "x"]).stderr, /give the folder to write the adapter to with --out <dir>/);
});

test("--help shows no secret and no option that does nothing, and every versions command says what it does", () => {
  const serve = spawnSync(process.execPath, [MAIN, "serve", "--help"], { cwd: repoRoot(), encoding: "utf8", env: { ...process.env, KILN_TOKEN: "s3cret-token" } });
  assert.equal(serve.status, 0);
  assert.match(serve.stdout, /--token <token>/);
  assert.doesNotMatch(serve.stdout, /s3cret-token/);
  assert.doesNotMatch(kiln(["chat", "--help"]).stdout, /--json/);
  const versions = kiln(["versions", "--help"]).stdout;
  for (const sub of ["list", "diff", "rollback", "export"]) assert.match(versions, new RegExp(`^  ${sub} \\[options\\][^\\n]*\\S\\s{2,}\\S`, "m"), `versions ${sub} has a description`);
});

test("a named backend whose optional package is missing says which package to install", { skip: resolvable("@tensorflow/tfjs-node") && "@tensorflow/tfjs-node is installed here" }, () => {
  const r = spawnSync(process.execPath, [MAIN, "info"], { cwd: repoRoot(), encoding: "utf8", env: { ...process.env, KILN_BACKEND: "tensorflow" } });
  assert.equal(r.status, 1);
  assert.match(r.stderr, /backend tensorflow could not start: @tensorflow\/tfjs-node is not installed \(.*npm install @tensorflow\/tfjs-node@4\.22\.0/);
});

test("kiln generate --adapter answers with an adapter kiln bake wrote", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-cli-adapter-"));
  try {
    const questions = path.join(dir, "questions.txt");
    writeFileSync(questions, "Who are you?\nHello!\nWho is the mayor of Hollowby?\n");
    const out = path.join(dir, "persona");
    const bake = kiln(["bake", "--prompt", "End every reply with: Cheers, Ada.", "--questions", questions, "--out", out, "--epochs", "10", "--quiet"]);
    assert.equal(bake.status, 0, bake.stderr);
    const ask = (...extra: string[]) => kiln(["generate", "--prompt", "Who are you?", ...extra]);
    const plain = ask();
    assert.equal(plain.status, 0, plain.stderr);
    assert.doesNotMatch(plain.stdout, /Cheers, Ada/);
    const baked = ask("--adapter", out);
    assert.equal(baked.status, 0, baked.stderr);
    assert.match(baked.stdout, /Cheers, Ada\.\s*$/);
    const notAdapter = ask("--adapter", dir);
    assert.equal(notAdapter.status, 1);
    assert.match(notAdapter.stderr, /not a PEFT adapter directory: adapter_config\.json is missing/);
  } finally {
    rmSync(dir, { recursive: true });
  }
});

/** Saves a kiln-mini adapter that changes the model (B random) into `dir`, as a version is stored. */
async function saveMiniAdapter(dir: string): Promise<void> {
  const { initBackend } = await import("../src/tensor/backend.js");
  const { loadModel } = await import("../src/model/load.js");
  const { LoraAdapter } = await import("../src/lora/adapter.js");
  const { saveAdapter } = await import("../src/lora/peft.js");
  const { randomizeB } = await import("./support/lora.js");
  await initBackend();
  const model = loadModel(path.join(repoRoot(), "models", "kiln-mini"));
  const adapter = LoraAdapter.create(model.config, { r: 4, alpha: 8, dropout: 0, targetModules: ["q_proj", "v_proj"], useRslora: false }, model.fingerprint, 3);
  try {
    randomizeB(adapter, 3);
    await saveAdapter(dir, adapter, model.dir);
  } finally {
    adapter.dispose();
    model.dispose();
  }
}

test("kiln generate --adapter takes the adapter's weights file too, the file kiln knowledge verify names", async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-cli-adapter-file-"));
  try {
    const adapterDir = path.join(dir, "v0001");
    await saveMiniAdapter(adapterDir);
    const ask = (adapter: string) => kiln(["generate", "--prompt", "Who is the mayor of Hollowby?", "--max-tokens", "24", "--adapter", adapter]);
    const byDir = ask(adapterDir);
    assert.equal(byDir.status, 0, byDir.stderr);
    const byFile = ask(path.join(adapterDir, "adapter_model.safetensors"));
    // it said ".../adapter_model.safetensors: not a PEFT adapter directory: adapter_config.json is missing"
    assert.equal(byFile.status, 0, byFile.stderr);
    assert.equal(byFile.stdout, byDir.stdout);
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("kiln knowledge verify prints the command that asks the weights it names again, and that command gives the answer it reported", async () => {
  const checkpoints = mkdtempSync(path.join(os.tmpdir(), "kiln-cli-verify-again-"));
  try {
    const home = path.join(checkpoints, "demo");
    await saveMiniAdapter(path.join(home, "v0001"));
    const at = "2026-01-01T00:00:00.000Z";
    // the apostrophe is what a shell would trip on
    const item = { id: "k_a1", kind: "manual", text: "The mayor of Hollowby is Ada Reel.", status: "absorbed", createdAt: at, updatedAt: at, source: {}, contentHash: "k_a1", absorbedBy: "v0001", probes: [{ question: "Who is Hollowby's mayor?", answer: "The mayor of Hollowby is Ada Reel." }], scores: [], history: [] };
    const version = { id: "v0001", parent: null, createdAt: at, dir: path.join(home, "v0001"), status: "live", bakeId: "b", items: ["k_a1"], scores: { absorption: 1, retention: 1, persona: null } };
    writeFileSync(path.join(home, "ledger.json"), JSON.stringify({ schema: 1, live: "v0001", items: [item], versions: [version], bakes: [], feeds: [] }));
    const where = ["--agents", path.join(repoRoot(), "agents", "demo.yaml"), "--checkpoints", checkpoints];
    const proof = JSON.parse(kiln(["knowledge", "verify", "demo", ...where, "--json"]).stdout);
    const text = kiln(["knowledge", "verify", "demo", ...where]).stdout;
    // it named the adapter file and its sha256, and left the user to work out how to ask them
    const command = text.match(/^ {2}ask again: kiln (.*)$/m)?.[1];
    assert.ok(command, text);
    // the base model asked the same: what the adapter holds and it does not is what baking put there
    const baseline = proof.items[0].baseline;
    assert.equal(typeof baseline?.passed, "number", JSON.stringify(proof.items[0]));
    assert.match(text, new RegExp(`^k_a1 {2}(held|NOT HELD|held, but the base model answers it too) \\(\\d/1 probes; base model ${baseline.passed}/1\\)`, "m"));
    assert.match(text, new RegExp(`item\\(s\\) held by v0001 \\(the base model alone: ${proof.baseline.held}\\)$`, "m"));
    const onBase = JSON.parse(kiln(["knowledge", "verify", "demo", ...where, "--weights", "base", "--json"]).stdout);
    assert.equal(onBase.version, "base");
    assert.equal(onBase.weights.adapter, null);
    assert.equal(onBase.baseline, undefined, "the base model was what was asked");
    assert.equal(onBase.items[0].probes[0].passed ? 1 : 0, baseline.passed, "the baseline is the base model's own answer");
    const again = spawnSync("sh", ["-c", `"${process.execPath}" "${MAIN}" ${command}`], { encoding: "utf8", timeout: 180_000 });
    assert.equal(again.status, 0, again.stderr);
    assert.equal(again.stdout.trim(), proof.items[0].probes[0].answer);
  } finally {
    rmSync(checkpoints, { recursive: true });
  }
});

test("kiln knowledge verify and kiln probe run beside a process that holds the agent (a kiln serve); commands that write are refused naming it", async () => {
  const { dir, agents, checkpoints } = twoAgents();
  const where = ["--agents", agents, "--checkpoints", checkpoints];
  const { initBackend } = await import("../src/tensor/backend.js");
  const { Runtime } = await import("../src/runtime/runtime.js");
  const { loadAgentConfig } = await import("../src/runtime/agent-config.js");
  await initBackend();
  // this process plays the server: it holds the newsroom agent's ledger lock
  const runtime = new Runtime();
  await runtime.load([loadAgentConfig(path.join(agents, "newsroom.yaml"), checkpoints)]);
  try {
    await runtime.agent("newsroom").remember("The harbor fee is nine coins.");
    const ledgerFile = path.join(checkpoints, "newsroom", "ledger.json");
    const before = readFileSync(ledgerFile, "utf8");
    const r = kiln(["knowledge", "verify", "newsroom", ...where, "--json"]);
    assert.equal(r.status, 0, r.stderr);
    const proof = JSON.parse(r.stdout);
    // the base model answered: named "base", as everywhere kiln names the weights that answered
    assert.deepEqual([proof.version, proof.held, proof.items, proof.weights.adapter], ["base", 0, [], null]);
    assert.equal(readFileSync(ledgerFile, "utf8"), before, "verify wrote nothing");
    const probe = kiln(["probe", "newsroom", "Who is the mayor of Quillport?", ...where, "--json"]);
    assert.equal(probe.status, 0, probe.stderr);
    assert.equal(JSON.parse(probe.stdout).version, "base");
    assert.equal(readFileSync(ledgerFile, "utf8"), before, "probe wrote nothing");
    const write = kiln(["knowledge", "remember", "newsroom", "Rain.", ...where]);
    assert.equal(write.status, 1);
    assert.match(write.stderr, new RegExp(`ledger\\.json is being written by process ${process.pid} \\(a running kiln serve\\?\\)`));
  } finally {
    await runtime.stop();
    rmSync(dir, { recursive: true });
  }
});

test("the built kiln command runs as a program (npx kiln): the build marks it executable", () => {
  const r = spawnSync(MAIN, ["--help"], { encoding: "utf8", timeout: 60_000 });
  assert.equal(r.error, undefined, `${MAIN} could not be run: ${r.error?.message}`);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^Usage: kiln/m);
});

/**
 * Runs `check` on the demo agent with a ledger of these parts (and an archive, when given) in a
 * checkpoints folder of its own; `at` is the options that name them.
 */
function withDemoLedger(parts: { items?: unknown[]; feeds?: unknown[]; archive?: string }, check: (o: { at: string[]; home: string; write: (parts: { items?: unknown[]; feeds?: unknown[] }) => void }) => void): void {
  const checkpoints = mkdtempSync(path.join(os.tmpdir(), "kiln-cli-ledger-"));
  const home = path.join(checkpoints, "demo");
  const write = (p: { items?: unknown[]; feeds?: unknown[] }) => writeFileSync(path.join(home, "ledger.json"), JSON.stringify({ schema: 1, live: null, items: p.items ?? [], versions: [], bakes: [], feeds: p.feeds ?? [] }));
  try {
    mkdirSync(home);
    write(parts);
    if (parts.archive !== undefined) writeFileSync(path.join(home, "ledger.archive.jsonl"), parts.archive);
    check({ at: ["--agents", path.join(repoRoot(), "agents", "demo.yaml"), "--checkpoints", checkpoints], home, write });
  } finally {
    rmSync(checkpoints, { recursive: true });
  }
}

test("feeds list shows the url the agent file gives a feed, and says so when the ledger's poll state is from the url before", () => {
  const feed = { id: "town-gazette", url: "https://old.example/gazette.xml", consecutiveErrors: 2, lastError: "HTTP 404", seenKeys: [], itemsAdded: 3 };
  withDemoLedger({ feeds: [feed] }, ({ at, write }) => {
    const configured = path.join(repoRoot(), "feeds", "town-gazette.rss.xml");
    const text = kiln(["feeds", "list", "demo", ...at]);
    assert.equal(text.status, 0, text.stderr);
    assert.ok(text.stdout.includes(`\n  ${configured} (the poll state above is from https://old.example/gazette.xml, its url before the agent file changed`), text.stdout);
    const [row] = JSON.parse(kiln(["feeds", "list", "demo", ...at, "--json"]).stdout);
    assert.deepEqual([row.url, row.ledgerUrl, row.itemsAdded], [configured, "https://old.example/gazette.xml", 3]);
    // the same url: nothing to say
    write({ feeds: [{ ...feed, url: configured }] });
    const same = kiln(["feeds", "list", "demo", ...at, "--json"]);
    assert.equal(JSON.parse(same.stdout)[0].ledgerUrl, undefined);
    assert.doesNotMatch(kiln(["feeds", "list", "demo", ...at]).stdout, /before the agent file changed/);
  });
});

test("knowledge show skips an archive line that is JSON but no item ({}, [1]), naming the file and line once, and finds the items around it", () => {
  const item = { id: "k_mwyp4000aaaa38", kind: "manual", text: "Di owns a horse.", contentHash: "h", status: "expired", source: {}, scores: [], history: [], archivedAt: "2026-01-01T00:00:00.000Z" };
  const lines = ["{}", JSON.stringify(item), "[1]", JSON.stringify({ ...item, id: "k_mwyp4000bbbb38", text: "Di owns a cat." }), ""].join("\n");
  withDemoLedger({ archive: lines }, ({ at, home }) => {
    const archive = path.join(home, "ledger.archive.jsonl");
    // by the end of an id: every archived item is read, the broken lines among them
    const show = kiln(["knowledge", "show", "demo", "bbbb38", ...at]);
    assert.equal(show.status, 0, show.stderr);
    assert.match(show.stdout, /^text: +Di owns a cat\.$/m);
    assert.equal(show.stderr, `kiln: ${archive}: skipped 2 line(s) that are not items: line 1 (its id is not a string), line 3 (it is not an object); the file was left as it is\n`);
    const missing = kiln(["knowledge", "show", "demo", "k_nothing", ...at]);
    assert.equal(missing.status, 1);
    assert.equal(missing.stderr.split("\n").filter((l) => l.includes("skipped 2 line(s)")).length, 1, "said once");
    assert.match(missing.stderr, /^kiln: no item k_nothing$/m);
    assert.equal(readFileSync(archive, "utf8"), lines);
  });
});

test("--checkpoints naming a file (or a path under one) is refused naming it and that it must be a folder, by read commands, remember and serve alike", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-cli-notdir-"));
  try {
    const file = path.join(dir, "state");
    writeFileSync(file, "not a folder");
    const agents = ["--agents", path.join(repoRoot(), "agents", "demo.yaml")];
    for (const args of [["knowledge", "list", "demo"], ["versions", "list", "demo"], ["knowledge", "remember", "demo", "Rain."], ["serve", "--port", "0", "--no-schedules"]]) {
      const r = kiln([...args, ...agents, "--checkpoints", file]);
      assert.equal(r.status, 1, args.join(" "));
      assert.equal(r.stderr, `kiln: checkpoints ${file} is a file: it must be a folder (each agent's state goes in <folder>/<name>; --checkpoints names it)\n`, args.join(" "));
    }
    const under = kiln(["knowledge", "list", "demo", ...agents, "--checkpoints", path.join(file, "sub")]);
    assert.match(under.stderr, new RegExp(`^kiln: checkpoints ${path.join(file, "sub").replace(/[.\\/]/g, "\\$&")}: ${file.replace(/[.\\/]/g, "\\$&")} is a file: it must be a folder`));
    // the agent's own folder taken by a file
    mkdirSync(path.join(dir, "root"));
    writeFileSync(path.join(dir, "root", "demo"), "");
    const home = kiln(["versions", "list", "demo", ...agents, "--checkpoints", path.join(dir, "root")]);
    assert.match(home.stderr, /^kiln: .*demo\.yaml: .*root\/demo, where agent demo keeps its ledger and versions, is a file: it must be a folder\n$/);
    assert.equal(readFileSync(file, "utf8"), "not a folder");
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("two agent files naming the same agent are refused naming both, by read commands as by serve, rather than one picked", () => {
  const { dir, agents, checkpoints } = twoAgents();
  try {
    cpSync(path.join(agents, "demo.yaml"), path.join(agents, "demo-copy.yaml"));
    const both = `kiln: ${path.join(agents, "demo-copy.yaml")} and ${path.join(agents, "demo.yaml")} both name an agent demo: give each its own name\n`;
    for (const args of [["knowledge", "list", "demo"], ["versions", "list", "demo"], ["feeds", "list", "demo"], ["serve", "--port", "0", "--no-schedules"]]) {
      const r = kiln([...args, "--agents", agents, "--checkpoints", checkpoints]);
      assert.equal(r.status, 1, args.join(" "));
      assert.equal(r.stderr, both, args.join(" "));
    }
    assert.ok(!existsSync(checkpoints), "nothing was written");
  } finally {
    rmSync(dir, { recursive: true });
  }
});
