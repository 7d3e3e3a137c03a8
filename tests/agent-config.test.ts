// Two feeds of one agent file that are one feed: refused, naming both, whether their URLs differ
// only as written or one is where the ledger says the other moved for good.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
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
