// The web dashboard in a real browser (Debian's chromium driven by playwright-core): the token
// prompt, a streamed chat reply, the ledger with an item, a bake's KL chart, and a rollback that
// changes the live version.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium, type Browser } from "playwright-core";
import { initBackend } from "../src/tensor/backend.js";
import { Runtime } from "../src/runtime/runtime.js";
import { createServer } from "../src/server/index.js";
import { writeTestAgent } from "./support/agent.js";

// These run in the page (tsconfig has no DOM lib).
declare const document: any;
declare const window: any;
declare const MutationObserver: any;

const CHROMIUM = "/usr/bin/chromium";
const TOKEN = "dashboard-token";

test("dashboard: token, streamed chat, ledger, bake chart, rollback", { timeout: 180_000 }, async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: the dashboard test needs Debian's chromium (apt-get install chromium)`);
  await initBackend();
  const agent = writeTestAgent();
  const runtime = await Runtime.fromFiles(agent.file);
  const server = await createServer(runtime, { port: 0, token: TOKEN });
  const shots = mkdtempSync(path.join(os.tmpdir(), "kiln-dashboard-"));
  let browser: Browser | undefined;
  try {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    const pageErrors: string[] = [];
    page.on("pageerror", (e) => pageErrors.push(e.message));
    page.setDefaultTimeout(30_000);

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

    // Bakes: start one through the admin API; its KL curves are drawn when it ends.
    await page.click("button[data-tab=bakes]");
    const started = await fetch(`${server.url}/admin/agents/tester/bakes`, { method: "POST", headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" }, body: "{}" });
    assert.equal(started.status, 202);
    await page.waitForSelector("#bake-chart svg polyline[data-series='validation KL']", { timeout: 90_000 });
    const points = await page.$$eval("#bake-chart svg polyline", (lines) => lines.map((l) => [l.getAttribute("data-series"), Number(l.getAttribute("data-points")), (l.getAttribute("points") ?? "").trim().split(/\s+/).length]));
    assert.ok(points.length >= 2, "train and validation curves");
    for (const [name, n, drawn] of points) assert.ok((n as number) >= 2 && drawn === n, `${name}: ${n} points drawn`);
    await page.waitForFunction(() => document.querySelector("#live-version")?.textContent === "v0001");
    assert.equal(await page.textContent("#bakes-table tbody tr .status"), "promoted");

    // Knowledge: verify asks the absorbed items' probes on the live weights now.
    await page.click("button[data-tab=knowledge]");
    await page.click("#verify");
    const verdict = await page.waitForSelector("#verify-result p");
    assert.match((await verdict.textContent())!, /^\d+ of \d+ absorbed item\(s\) held by v0001, asked just now/);

    // Versions: roll back to the base model; the header follows.
    await page.click("button[data-tab=versions]");
    await page.click("button[data-rollback=base]");
    await page.waitForFunction(() => document.querySelector("#live-version")?.textContent === "base");
    assert.equal(runtime.agent("tester").live.version, null);
    await page.waitForSelector("button[data-rollback=v0001]");

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
