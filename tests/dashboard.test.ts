// The web dashboard in a real browser (Debian's chromium driven by playwright-core): the token
// prompt, a streamed chat reply, the ledger with an item, a bake's KL chart, and a rollback that
// changes the live version.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium, type Browser } from "playwright-core";
import { initBackend } from "../src/tensor/backend.js";
import { Runtime } from "../src/runtime/runtime.js";
import { createServer } from "../src/server/index.js";
import { TEST_BAKE, writeTestAgent } from "./support/agent.js";

// These run in the page (tsconfig has no DOM lib).
declare const document: any;
declare const window: any;
declare const MutationObserver: any;

const CHROMIUM = "/usr/bin/chromium";
const TOKEN = "dashboard-token";


/** A test agent served with a token, for the page to talk to. */
async function serveTestAgent(overrides: Record<string, unknown> = {}) {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: the dashboard test needs Debian's chromium (apt-get install chromium)`);
  await initBackend();
  const agent = writeTestAgent(overrides);
  const runtime = await Runtime.fromFiles(agent.file);
  const server = await createServer(runtime, { port: 0, token: TOKEN });
  return { agent, runtime, server };
}

function launchBrowser(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

/** A desktop-sized page whose script errors are collected, so a test can assert there were none. */
async function openPage(browser: Browser) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const pageErrors: string[] = [];
  page.on("pageerror", (e) => pageErrors.push(e.message));
  page.setDefaultTimeout(30_000);
  return { page, pageErrors };
}

test("dashboard: token, streamed chat, ledger, bake chart, rollback, a failed rebuild", { timeout: 240_000 }, async () => {
  const { agent, runtime, server } = await serveTestAgent({ bake: { ...TEST_BAKE, rebuildRetries: 0 } });
  const tester0 = runtime.agent("tester");
  const shots = mkdtempSync(path.join(os.tmpdir(), "kiln-dashboard-"));
  let browser: Browser | undefined;
  try {
    browser = await launchBrowser();
    const { page, pageErrors } = await openPage(browser);

    // The page loads without the token, then asks for it.
    await page.goto(`${server.url}/`);
    await page.waitForSelector("#token-dialog[open]");
    await page.fill("#token-input", TOKEN);
    await page.click("#token-form button[type=submit]");
    await page.waitForFunction(() => document.querySelector("#live-version")?.textContent === "base");
    assert.equal(await page.inputValue("#agent"), "tester");

    // Chat: the reply streams in (the text grows while the bubble is marked streaming).
    await page.evaluate(() => {
      const seen: number[] = [];
      (window as any).__streamed = seen;
      new MutationObserver(() => {
        const live = document.querySelector(".msg.assistant.streaming .text");
        if (live && live.textContent && seen.at(-1) !== live.textContent.length) seen.push(live.textContent.length);
      }).observe(document.querySelector("#chat-log")!, { subtree: true, childList: true, characterData: true });
    });
    await page.fill("#chat-max", "300");
    await page.fill("#chat-temp", "0");
    await page.fill("#chat-input", "Hello there");
    await page.press("#chat-input", "Enter");
    await page.waitForSelector(".msg.user >> text=Hello there");
    const meta = await page.waitForSelector(".msg.assistant .meta");
    assert.match((await meta.textContent())!, /^base · 300 tokens · length/);
    assert.ok(((await page.textContent(".msg.assistant .text")) ?? "").length > 0, "the reply shows");
    const growth = (await page.evaluate(() => (window as any).__streamed)) as number[];
    assert.ok(growth.length >= 3, `the reply appeared piece by piece (${growth.length} updates)`);

    // Knowledge: remember through the box; the ledger table shows the item as pending.
    await page.click("button[data-tab=knowledge]");
    await page.fill("#remember-text", "The lighthouse keeper is Mira Tolle.");
    await page.click("#remember-form button[type=submit]");
    const row = await page.waitForSelector("#items-table tbody tr:has-text('The lighthouse keeper is Mira Tolle.')");
    assert.equal(await (await row.$(".status"))!.textContent(), "pending");

    // (a second fact, so that a rebuild without the first has something to bake)
    await tester0.remember("The harbor fee is nine coins.");

    // Bakes: start one through the admin API; its KL curves are drawn when it ends.
    const started = await fetch(`${server.url}/admin/agents/tester/bakes`, { method: "POST", headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" }, body: "{}" });
    assert.equal(started.status, 202);
    // While it runs, a retraction would answer 409: the button says so instead of failing.
    await page.waitForSelector("#items-table button.danger[disabled]");
    await page.click("button[data-tab=bakes]");
    await page.waitForSelector("#bake-chart svg polyline[data-series='validation KL']", { timeout: 90_000 });
    const points = await page.$$eval("#bake-chart svg polyline", (lines) => lines.map((l) => [l.getAttribute("data-series"), Number(l.getAttribute("data-points")), (l.getAttribute("points") ?? "").trim().split(/\s+/).length]));
    assert.ok(points.length >= 2, "train and validation curves");
    for (const [name, n, drawn] of points) assert.ok((n as number) >= 2 && drawn === n, `${name}: ${n} points drawn`);
    await page.waitForFunction(() => document.querySelector("#live-version")?.textContent === "v0001");
    assert.equal(await page.textContent("#bakes-table tbody tr .status"), "promoted");
    // A bake is chosen with a button (keyboard users can reach it), not only by clicking the row.
    assert.equal(await page.getAttribute("#bakes-table tbody tr button.linklike", "aria-pressed"), "true");

    // Knowledge: verify asks the absorbed items' probes on the live weights now.
    await page.click("button[data-tab=knowledge]");
    await page.click("#verify");
    const verdict = await page.waitForSelector("#verify-result p");
    assert.match((await verdict.textContent())!, /^\d+ of \d+ absorbed item\(s\) held by v0001, asked just now/);
    assert.match((await page.textContent("#verify-result p.weights"))!, /^adapter .*v0001\/adapter_model\.safetensors, sha256 [0-9a-f]{64}; base .* \(fingerprint [0-9a-f]{16}\)$/);

    // Versions: roll back to the base model; the header follows.
    await page.click("button[data-tab=versions]");
    await page.click("button[data-rollback=base]");
    await page.waitForFunction(() => document.querySelector("#live-version")?.textContent === "base");
    assert.equal(runtime.agent("tester").live.version, null);
    await page.waitForSelector("button[data-rollback=v0001]");

    // A retraction whose rebuild fails (its version folder cannot be written, as on a full disk):
    // the page says so above the tabs, with the reason, until a rebuild succeeds.
    const tester = runtime.agent("tester");
    assert.equal(await page.isHidden("#agent-alert"), true, "nothing to say before");
    const forward = await fetch(`${server.url}/admin/agents/tester/versions/v0001/rollback`, { method: "POST", headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(forward.status, 200, await forward.text());
    await page.waitForFunction(() => document.querySelector("#live-version")?.textContent === "v0001");
    writeFileSync(path.join(tester.config.homeDir, tester.ledger.nextVersionId()), "not a folder");
    const [keeper] = tester.ledger.items({ text: "Mira Tolle" });
    const retracted = await fetch(`${server.url}/admin/agents/tester/items/${keeper!.id}/retract`, { method: "POST", headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" }, body: "{}" });
    assert.equal(retracted.status, 202, await retracted.text());
    await page.waitForSelector("#agent-alert:not([hidden])", { timeout: 90_000 });
    assert.match((await page.textContent("#agent-alert"))!, /^A retraction's rebuild failed \(1 try; last: .*not a folder.*\); the live weights hold no retracted item; no tries left: the next retraction \(or a restart\) rebuilds it\.$/);

    const shot = path.join(shots, "dashboard.png");
    await page.screenshot({ path: shot, fullPage: true });
    assert.ok(statSync(shot).size > 1000, "a non-empty screenshot");
    assert.deepEqual(pageErrors, [], "no script errors on the page");
  } finally {
    await browser?.close();
    await server.close();
    await runtime.stop();
    rmSync(agent.dir, { recursive: true, force: true });
    rmSync(shots, { recursive: true, force: true });
  }
});

test("dashboard: untrusted item text and links, item detail, a long ledger and version list, a declined token, the server gone", { timeout: 120_000 }, async () => {
  const { agent, runtime, server } = await serveTestAgent();
  let serverOpen = true;
  let browser: Browser | undefined;
  try {
    // Feed text and links are untrusted: HTML in the text, a javascript: link.
    const ledger = runtime.agent("tester").ledger;
    const HOSTILE = `<img src=x onerror="window.__pwned=1"> The <b>harbor</b> fee <script>window.__pwned=2</script> is nine coins.`;
    const old = await ledger.addItem({ kind: "feed", text: "The harbor master is Ada Venn.", source: { feedId: "harbor", link: "https://news.example.org/a" } });
    await ledger.addItems(Array.from({ length: 120 }, (_, i) => ({ kind: "manual" as const, text: `Bulk fact ${i}: Town${i} has ${i} wells.`, source: { by: "test" } })));
    const { item: hostile } = await ledger.addItem({ kind: "feed", text: HOSTILE, source: { feedId: "harbor", link: "javascript:window.__pwned=3" } });
    await ledger.addItem({ kind: "manual", text: "The harbor master is now Bo Lint.", source: { by: "test" }, supersedes: [old.item.id] });
    // an item of a feed since removed from the agent file (its id may name another feed now)
    const { item: orphan } = await ledger.addItem({ kind: "feed", text: "The ferry leaves at dawn.", source: { feedId: "harbor", feedUrl: "https://old.example.org/rss" } });
    ledger.item(hostile.id).probes = [{ question: "What is the harbor fee?", answer: "Nine coins." }];
    const total = ledger.data.items.length;
    // A long-lived agent's versions: 230 bakes in a chain, pruned from disk since.
    await ledger.update((d) => {
      for (let n = 1; n <= 230; n++) {
        const id = `v${String(n).padStart(4, "0")}`;
        const parent = n === 1 ? null : `v${String(n - 1).padStart(4, "0")}`;
        d.versions.push({ id, parent, createdAt: new Date(Date.now() - (230 - n) * 60_000).toISOString(), dir: path.join(agent.dir, "gone", id), status: "retired", bakeId: `bake_${n}`, items: [], scores: { absorption: 1, retention: 1, persona: null } });
      }
    });

    browser = await launchBrowser();
    const { page, pageErrors } = await openPage(browser);

    // Declining the token: the page says what it needs, and polling does not reopen the dialog.
    await page.goto(`${server.url}/`);
    await page.waitForSelector("#token-dialog[open]");
    await page.click("#token-cancel");
    await page.waitForSelector("#conn-banner[data-conn=token]:not([hidden])");
    assert.match((await page.textContent("#conn-text"))!, /needs a bearer token/);
    await page.waitForResponse((r) => r.url().endsWith("/admin/agents") && r.status() === 401);
    await page.evaluate(() => new Promise((r) => setTimeout(r, 50))); // let the answer be handled
    assert.equal(await page.isVisible("#token-dialog"), false, "the next poll did not reopen the dialog");
    await page.click("#conn-token");
    await page.waitForSelector("#token-dialog[open]");
    await page.fill("#token-input", TOKEN);
    await page.press("#token-input", "Enter");
    await page.waitForSelector("#conn-banner[hidden]", { state: "attached" });
    await page.waitForFunction(() => document.querySelector("#live-version")?.textContent === "base");

    // A long ledger: the page says how many it shows, and shows the rest on request.
    await page.click("button[data-tab=knowledge]");
    await page.waitForFunction(() => /^showing 100 of \d+ items$/.test(document.querySelector("#item-total")?.textContent ?? ""));
    assert.equal(await page.textContent("#item-total"), `showing 100 of ${total} items`);
    await page.click("#items-more");
    await page.waitForFunction((n) => document.querySelectorAll("#items-table tbody tr[data-id]").length === n, total);
    assert.equal(await page.isHidden("#items-more"), true);

    // Untrusted text is text; a javascript: link is not a link.
    await page.fill("#item-search", "nine coins");
    await page.waitForFunction(() => document.querySelectorAll("#items-table tbody tr[data-id]").length === 1);
    const row = `#items-table tbody tr[data-id='${hostile.id}']`;
    assert.equal(await page.textContent(`${row} td.text`), HOSTILE);
    assert.equal(await page.$$eval("#items-table img, #items-table script, #items-table b", (e) => e.length), 0);
    assert.equal(await page.$$eval("#items-table a", (a) => a.length), 0, "no link for a javascript: URL");
    assert.equal(await page.textContent(`${row} td:nth-child(6)`), "harbor");

    // The item's detail: probes and history, opened from the keyboard.
    await page.focus(`${row} td.text button`);
    await page.keyboard.press("Enter");
    const detail = await page.waitForSelector(`#items-table tr[data-detail='${hostile.id}']`);
    assert.equal(await page.getAttribute(`${row} td.text button`, "aria-expanded"), "true");
    assert.match((await detail.textContent())!, /What is the harbor fee\? → Nine coins\./);
    assert.match((await detail.textContent())!, /History.*pending/s);
    assert.equal(await page.evaluate(() => (window as any).__pwned ?? null), null);

    await page.fill("#item-search", "ferry leaves");
    await page.waitForFunction(() => document.querySelectorAll("#items-table tbody tr[data-id]").length === 1);
    assert.equal(await page.textContent(`#items-table tbody tr[data-id='${orphan.id}'] td:nth-child(6)`), "harbor (removed feed https://old.example.org/rss)");

    // Superseded items are listed, with the reason in their history; the link to a real page stays.
    await page.fill("#item-search", "");
    await page.selectOption("#item-status", "superseded");
    await page.waitForSelector(`#items-table tbody tr[data-id='${old.item.id}']`);
    assert.equal(await page.getAttribute(`#items-table tbody tr[data-id='${old.item.id}'] a`, "href"), "https://news.example.org/a");
    await page.click(`#items-table tbody tr[data-id='${old.item.id}'] td.text button`);
    assert.match((await page.textContent(`#items-table tr[data-detail='${old.item.id}']`))!, /superseded by/);

    // Versions: the newest 100, then the rest on request; the base model stays the last row.
    await page.click("button[data-tab=versions]");
    const versionRows = () => page.$$eval("#versions-table tbody tr[data-id]", (rows) => rows.map((r) => r.getAttribute("data-id")));
    await page.waitForFunction(() => document.querySelectorAll("#versions-table tbody tr[data-id]").length === 101);
    let ids = await versionRows();
    assert.deepEqual([ids[0], ids[99], ids[100]], ["v0230", "v0131", "base"]);
    assert.equal(await page.textContent("#versions-table tr.more-row"), "130 older versions not shown");
    assert.equal(await page.textContent("#versions-more"), "Show 100 more (130 not shown)");
    await page.click("#versions-more");
    await page.waitForFunction(() => document.querySelectorAll("#versions-table tbody tr[data-id]").length === 201);
    assert.equal(await page.textContent("#versions-more"), "Show 30 more (30 not shown)");
    await page.click("#versions-more");
    await page.waitForFunction(() => document.querySelectorAll("#versions-table tbody tr[data-id]").length === 231);
    ids = await versionRows();
    assert.deepEqual([ids[0], ids[229], ids[230]], ["v0230", "v0001", "base"]);
    assert.equal(await page.isHidden("#versions-more"), true);
    assert.equal(await page.$("#versions-table tr.more-row"), null);
    assert.equal(await page.$$eval("#diff-from option", (o) => o.length), 231, "the diff can compare any shown version");

    // The server goes away: the page says so plainly, and so does a chat sent meanwhile.
    await server.close();
    serverOpen = false;
    await page.waitForSelector("#conn-banner[data-conn=offline]:not([hidden])");
    assert.match((await page.textContent("#conn-text"))!, /cannot be reached/);
    await page.click("button[data-tab=chat]");
    await page.fill("#chat-input", "Are you there?");
    await page.press("#chat-input", "Enter");
    const failed = await page.waitForSelector(".msg.assistant.error");
    assert.match((await failed.textContent())!, /cannot be reached/);
    assert.deepEqual(pageErrors, [], "no script errors on the page");
  } finally {
    await browser?.close();
    if (serverOpen) await server.close();
    await runtime.stop();
    rmSync(agent.dir, { recursive: true, force: true });
  }
});
