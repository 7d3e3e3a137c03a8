// Agent files: two feeds that are one feed (refused, naming both, whether their URLs differ only as
// written or one is where the ledger says the other moved for good); cron schedules and the time
// zone they are read in; bake settings' kl and openQuestions.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import cron from "node-cron";
import { initBackend } from "../src/tensor/backend.js";
import { loadAgentConfig } from "../src/runtime/agent-config.js";
import { Runtime } from "../src/runtime/runtime.js";
import { Ledger } from "../src/knowledge/ledger.js";
import { writeTestAgent } from "./support/agent.js";
import { repoRoot } from "./support/paths.js";

await initBackend();

test("two feeds whose URLs poll one address are refused, naming both: a #fragment, scheme and host case, a default port and an empty path do not make another feed", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-config-"));
  const file = path.join(dir, "agent.yaml");
  const feeds = (a: string, b: string) => writeFileSync(file, `name: x\nfeeds:\n  - { id: a, url: '${a}' }\n  - { id: b, url: '${b}' }\n`);
  try {
    feeds("https://example.com/rss", "https://example.com/rss#latest");
    assert.throws(
      () => loadAgentConfig(file, dir),
      (err: Error) =>
        err.message ===
        `${file}: feeds.1.url: "https://example.com/rss#latest" is the url of feeds.0 (id a, "https://example.com/rss") but for its #fragment, which a poll never sends; feed b would poll the same feed: keep one of them`,
    );
    feeds("http://Example.COM:80/rss#a", "HTTP://example.com/rss#b");
    assert.throws(() => loadAgentConfig(file, dir), /feeds\.1\.url: "http:\/\/example\.com\/rss#b" is the url of feeds\.0 \(id a, "http:\/\/example\.com\/rss#a"\) but for its #fragment/);
    feeds("https://example.com:443", "https://example.com/");
    assert.throws(() => loadAgentConfig(file, dir), /feeds\.1\.url: "https:\/\/example\.com\/" is already the url of feeds\.0 \(id a\); feed b would poll the same feed/);
    // another path, query, scheme or port is another address; a "#" in a local file's name is part of it
    for (const [a, b] of [
      ["https://example.com/rss", "https://example.com/rss/"],
      ["https://example.com/rss", "https://example.com/rss?page=2"],
      ["https://example.com/rss", "http://example.com/rss"],
      ["https://example.com/rss", "https://example.com:8443/rss"],
      ["news.xml", "news.xml#2"],
    ]) {
      feeds(a!, b!);
      assert.equal(loadAgentConfig(file, dir).feeds.length, 2, `${a} and ${b}`);
    }
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("a feed added at the address the ledger says another moved to for good is refused when the agent opens, naming both; the agent file brought up to date opens", async () => {
  const { dir, file } = writeTestAgent({ feeds: [{ id: "quay", url: "http://feeds.example.com/old.xml", schedule: "0 0 1 1 *" }] });
  const ledgerFile = path.join(dir, "home", "ledger.json");
  let runtime = await Runtime.fromFiles(file);
  await runtime.stop();
  // as a poll that met a 301 writes it (tests/runtime.test.ts has the poll)
  const ledger = await Ledger.open(ledgerFile);
  await ledger.update((d) => Object.assign(d.feeds[0]!, { movedTo: "https://news.example.com/rss", movedAt: new Date().toISOString() }));
  await ledger.close();
  const setFeeds = (block: string) => writeFileSync(file, readFileSync(file, "utf8").replace(/^feeds:.*\n(?:[ -].*\n)*/m, `feeds:${block}\n`));
  try {
    // the new address added beside the old one (written as the server may not: with its fragment, in capitals)
    setFeeds('\n  - { id: quay, url: "http://feeds.example.com/old.xml", schedule: "0 0 1 1 *" }\n  - { id: news, url: "HTTPS://News.Example.com/rss#top", schedule: "0 0 1 1 *" }');
    await assert.rejects(
      Runtime.fromFiles(file),
      (err: Error) =>
        err.message ===
        `${file}: feeds.1.url: "https://news.example.com/rss#top" is where feeds.0's url "http://feeds.example.com/old.xml" (id quay) has moved for good (a 301/308 redirect, as ${ledgerFile} records); feed news would poll the same feed: keep one of them (to follow the move, give quay the new url and remove news)`,
    );
    // the old address added back beside the feed already at its new one: a poll of it goes there
    setFeeds('\n  - { id: news, url: "https://news.example.com/rss", schedule: "0 0 1 1 *" }\n  - { id: quay, url: "http://feeds.example.com/old.xml", schedule: "0 0 1 1 *" }');
    await assert.rejects(Runtime.fromFiles(file), /feeds\.0\.url: "https:\/\/news\.example\.com\/rss" is where feeds\.1's url "http:\/\/feeds\.example\.com\/old\.xml" \(id quay\) has moved for good/);
    // refused before the ledger changed, and its lock let go: the agent file as the log asks opens
    assert.equal(JSON.parse(readFileSync(ledgerFile, "utf8")).feeds.length, 1);
    // `kiln feeds add` refuses it too, before it writes the agent file the agent could not open with
    setFeeds('\n  - { id: quay, url: "http://feeds.example.com/old.xml", schedule: "0 0 1 1 *" }');
    const before = readFileSync(file, "utf8");
    const add = spawnSync(process.execPath, [path.join(repoRoot(), "dist", "src", "cli", "main.js"), "feeds", "add", "tester", "news", "https://news.example.com/rss", "--agents", file], { encoding: "utf8", timeout: 60_000 });
    assert.equal(add.status, 1, add.stdout + add.stderr);
    assert.equal(
      add.stderr,
      `kiln: feed news not added: https://news.example.com/rss is where feed quay's url http://feeds.example.com/old.xml has moved for good (a 301/308 redirect, as ${ledgerFile} records), so the agent would poll one feed twice; to follow the move, give quay this url in ${file}\n`,
    );
    assert.equal(readFileSync(file, "utf8"), before, "the agent file is as it was");
    setFeeds('\n  - { id: quay, url: "https://news.example.com/rss", schedule: "0 0 1 1 *" }');
    runtime = await Runtime.fromFiles(file);
    assert.deepEqual(runtime.agent("tester").ledger.data.feeds.map((f) => f.id), ["quay"]);
    await runtime.stop();
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("a server moving one polled feed onto another feed of the agent is a warning when the agent opens, not a refusal: no edit of the agent file did it", async () => {
  const { dir, file } = writeTestAgent({
    feeds: [
      { id: "quay", url: "http://feeds.example.com/old.xml", schedule: "0 0 1 1 *" },
      { id: "news", url: "https://news.example.com/rss", schedule: "0 0 1 1 *" },
    ],
  });
  const ledgerFile = path.join(dir, "home", "ledger.json");
  try {
    await (await Runtime.fromFiles(file)).stop();
    // as a poll that met a 301 writes it
    const ledger = await Ledger.open(ledgerFile);
    await ledger.update((d) => Object.assign(d.feeds.find((f) => f.id === "quay")!, { movedTo: "https://news.example.com/rss", movedAt: new Date().toISOString() }));
    await ledger.close();
    const logs: string[] = [];
    const runtime = await Runtime.fromFiles(file, { events: { onLog: (_a, m) => logs.push(m) } });
    await runtime.stop();
    assert.ok(
      logs.some((m) => m.startsWith('warning: feeds.1.url: "https://news.example.com/rss" is where feeds.0\'s url "http://feeds.example.com/old.xml" (id quay) has moved for good')),
      logs.join("\n"),
    );
  } finally {
    rmSync(dir, { recursive: true });
  }
});

/** The agent file `text`'s refusal (its message), or null where it loads. */
function refusal(text: string): string | null {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-config-"));
  const file = path.join(dir, "agent.yaml");
  writeFileSync(file, text);
  try {
    loadAgentConfig(file, dir);
    return null;
  } catch (err) {
    return (err as Error).message.replace(`${file}: `, "");
  } finally {
    rmSync(dir, { recursive: true });
  }
}

test("a bake schedule runs at most once a minute, as a feed's; a bad cron expression is refused with node-cron's reason", () => {
  // node-cron's seconds field: every second (it was accepted for bakes), or twice a minute
  for (const schedule of ["* * * * * *", "0,30 * * * * *", "*/10 0 * * * *"]) {
    assert.equal(refusal(`name: x\nbake:\n  schedule: '${schedule}'\n`), "bake.schedule: bakes more than once a minute (the first of six fields is seconds: give it one number, or use five fields)", schedule);
    assert.equal(refusal(`name: x\nfeeds:\n  - { id: a, url: http://x/1, schedule: '${schedule}' }\n`), "feeds.0.schedule: polls more than once a minute (the first of six fields is seconds: give it one number, or use five fields)", schedule);
  }
  // one second a minute is once a minute, in five fields or six
  for (const schedule of ["0 */5 * * * *", "30 * * * * *", "*/15 * * * *", "0 9 * * MON"]) {
    assert.equal(refusal(`name: x\nbake:\n  schedule: '${schedule}'\nfeeds:\n  - { id: a, url: http://x/1, schedule: '${schedule}' }\n`), null, schedule);
  }
  // the reason is node-cron's (it said only "not a valid cron expression"), with what a schedule is
  const allowed = '(five fields, minute hour day-of-month month day-of-week, as "*/30 * * * *"; or six, the first seconds)';
  assert.equal(refusal("name: x\nbake:\n  schedule: '0 0 31 2 *'\n"), `bake.schedule: not a valid cron expression: 31 2 is an impossible day of month for the given month ${allowed}`);
  assert.equal(refusal("name: x\nfeeds:\n  - { id: a, url: http://x/1, schedule: '0/15 * * * *' }\n"), `feeds.0.schedule: not a valid cron expression: 0/15 is a invalid expression for minute ${allowed}`);
  assert.equal(refusal("name: x\nbake:\n  schedule: every hour\n"), `bake.schedule: not a valid cron expression: expected 5 or 6 fields but got 2 ${allowed}`);
});

test("timezone: an IANA zone the schedules are read in, refused when unknown, naming the key", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-config-"));
  const file = path.join(dir, "agent.yaml");
  try {
    writeFileSync(file, "name: x\n");
    assert.equal(loadAgentConfig(file, dir).timezone, undefined, "left out: the server's local time zone");
    writeFileSync(file, "name: x\ntimezone: Europe/Berlin\n");
    assert.equal(loadAgentConfig(file, dir).timezone, "Europe/Berlin");
    for (const zone of ["Mars/Base", "''", "Europe/Berlinn"]) {
      writeFileSync(file, `name: x\ntimezone: ${zone}\n`);
      const name = zone === "''" ? "" : zone;
      assert.throws(
        () => loadAgentConfig(file, dir),
        (err: Error) =>
          err.message === `${file}: timezone: "${name}" is not a time zone this server knows: give an IANA time zone name, as Europe/Berlin, America/New_York or UTC, or leave timezone out for the server's local time zone`,
        zone,
      );
    }
    writeFileSync(file, "name: x\ntimezone: 5\n");
    assert.throws(() => loadAgentConfig(file, dir), (err: Error) => err.message === `${file}: timezone: an IANA time zone name, as Europe/Berlin or UTC (left out: the server's local time zone)`);
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("an agent's feed polls, bakes and a failing feed's backoff run on its timezone's clock", async () => {
  // once a year, at midnight on 1 January in Kiritimati (UTC+14): 10:00 UTC on 31 December
  const schedule = "0 0 1 1 *";
  const { dir, file } = writeTestAgent({ timezone: "Pacific/Kiritimati", feeds: [{ id: "gone", url: "missing.xml", schedule }], bake: { schedule, probesPerItem: 1, checkProbes: false, openQuestions: ["hello"] } });
  const runtime = await Runtime.fromFiles(file);
  try {
    runtime.start();
    const task = (name: string) => [...cron.getTasks().values()].find((t) => t.name === name);
    for (const name of ["tester:feed:gone", "tester:bake"]) {
      const next = task(name)?.getNextRun();
      assert.ok(next, name);
      assert.match(next.toISOString(), /^\d{4}-12-31T10:00:00\.000Z$/, name);
    }
    // a failed poll skips the next scheduled one: the backoff lasts until the one after, in Kiritimati
    const agent = runtime.agent("tester");
    await (agent as unknown as { scheduledPoll(id: string, at: Date): Promise<void> }).scheduledPoll("gone", new Date());
    const record = agent.ledger.feed("gone")!;
    assert.equal(record.consecutiveErrors, 1);
    const [, second] = task("tester:feed:gone")!.getNextRuns(2);
    assert.equal(record.backoffUntil, second!.toISOString());
    assert.match(record.backoffUntil!, /^\d{4}-12-31T10:00:00\.000Z$/);
  } finally {
    await runtime.stop();
    rmSync(dir, { recursive: true });
  }
});

test("bake.settings.kl: {kind: topk} takes k 20, as kiln bake's --top-k; a bad kl says what is allowed", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-config-"));
  const file = path.join(dir, "agent.yaml");
  try {
    writeFileSync(file, "name: x\nbake:\n  settings: { kl: { kind: topk } }\n");
    assert.deepEqual(loadAgentConfig(file, dir).bake.settings.kl, { kind: "topk", k: 20 });
    writeFileSync(file, "name: x\nbake:\n  settings: { kl: { kind: topk, k: 64 } }\n");
    assert.deepEqual(loadAgentConfig(file, dir).bake.settings.kl, { kind: "topk", k: 64 });
  } finally {
    rmSync(dir, { recursive: true });
  }
  // it said "bake.settings.kl: Invalid input"
  const allowed = "must be {kind: full} (the default) or {kind: topk, k: 1 to 1024} (k: 20 when left out)";
  assert.equal(refusal("name: x\nbake:\n  settings: { kl: { kind: tpok } }\n"), `bake.settings.kl.kind: ${allowed}`);
  assert.equal(refusal("name: x\nbake:\n  settings: { kl: topk }\n"), `bake.settings.kl: ${allowed}`);
  assert.equal(refusal("name: x\nbake:\n  settings: { kl: { kind: topk, k: 0 } }\n"), "bake.settings.kl.k: a whole number from 1 to 1024");
  // a k beside kind full was dropped without a word
  assert.match(refusal("name: x\nbake:\n  settings: { kl: { kind: full, k: 3 } }\n") ?? "", /^bake\.settings\.kl: .*"k"/);
  assert.match(refusal("name: x\nbake:\n  settings: { kl: { kind: topk, k: 3, tail: 1 } }\n") ?? "", /^bake\.settings\.kl: .*"tail"/);
  // the default k is no way around on-policy's refusal of top-K targets
  assert.match(refusal("name: x\nbake:\n  settings: { objective: on-policy, kl: { kind: topk } }\n") ?? "", /^bake\.settings: the on-policy objective needs kl: full/);
});

test("bake.openQuestions: an empty list or an empty question is refused (persona adherence is measured on them)", () => {
  // [] turned the persona gate off without a word
  assert.equal(
    refusal("name: x\nbake:\n  openQuestions: []\n"),
    "bake.openQuestions: at least one question (persona adherence is measured on them); leave openQuestions out for the defaults (to not gate on persona, set gate.minPersona: 0)",
  );
  for (const list of ['[""]', '["Hello!", "  "]']) {
    assert.match(refusal(`name: x\nbake:\n  openQuestions: ${list}\n`) ?? "", /^bake\.openQuestions\.\d: an empty question: write one, or leave openQuestions out for the defaults$/, list);
  }
  assert.equal(refusal('name: x\nbake:\n  openQuestions: ["Any news?"]\n'), null);
});
