// A retraction's rebuild that cannot start at once, or fails: what the admin API names for a
// client to follow, and the rebuild tried again without another retraction asking.
import { test } from "node:test";
import assert from "node:assert/strict";
import { rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { initBackend } from "../src/tensor/backend.js";
import { retractedOutOfService, retryDelay, type Agent, type BakeOutcome } from "../src/runtime/agent.js";
import { Runtime } from "../src/runtime/runtime.js";
import { createServer } from "../src/server/index.js";
import { TEST_BAKE, writeTestAgent } from "./support/agent.js";
import { readEvents } from "./support/sse.js";
import { bakeTold, withTester } from "./support/tester.js";

await initBackend();

const BAKE = TEST_BAKE;

async function until(what: string, done: () => boolean, timeoutMs = 60_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** A file where the agent's next version folder goes: a bake writing it fails (a real write error, as a full disk gives). */
function blockNextVersion(agent: Agent): string {
  const where = path.join(agent.config.homeDir, agent.ledger.nextVersionId());
  writeFileSync(where, "not a folder");
  return where;
}

test("admin API: a retraction owing a stopped rebuild while an unrelated bake runs answers 202 naming its own rebuild, whose events end when that rebuild does", async () => {
  // (retried rebuilds wait long here: the owed rebuild is the third retraction's to run)
  await withTester({ feeds: [], bake: { ...BAKE, rebuildRetryMs: 3_600_000 } }, async ({ agent, runtime }) => {
    const [, b] = await bakeTold(agent, "The lighthouse keeper is Mira Tolle.", "The harbor fee is nine coins."); // v0001
    const [c] = await bakeTold(agent, "The ferry leaves at noon."); // v0002: a, b, c
    const { item: p } = await agent.remember("The mill closes at dusk.");
    const firstRebuild = new Promise<void>((resolve) => agent.bakeEvents.once("start", () => resolve()));
    const first = agent.retract([b!.id]); // the base model serves; the rebuild carries a and c, and bakes p
    await firstRebuild;
    // the retraction that stops it, and would carry its rebuild on, fails to write the ledger (a full disk)
    const ledger = agent.ledger;
    const setItemStatus = ledger.setItemStatus.bind(ledger);
    ledger.setItemStatus = (ids, status, extra) => (status === "retracted" ? Promise.reject(new Error("ENOSPC: no space left on device")) : setItemStatus(ids, status, extra));
    const second = agent.retract([p.id]);
    assert.equal((await first).status, "failed");
    await assert.rejects(second, /ENOSPC/);
    ledger.setItemStatus = setItemStatus;
    assert.equal(agent.ledger.item(c!.id).status, "pending", "c waits for the rebuild it is owed");

    const srv = await createServer(runtime, { port: 0 });
    try {
      await agent.remember("The gate opens at dawn.");
      const rolling = agent.bake("test"); // unrelated to what is retracted next
      await new Promise<void>((resolve) => agent.bakeEvents.once("progress", () => resolve()));
      const rollingId = agent.ledger.data.bakes.at(-1)!.id;
      const { item: r } = await agent.remember("The well is dry."); // in no bake, in no weights
      const res = await fetch(`${srv.url}/admin/agents/tester/items/${r.id}/retract`, { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
      const body = (await res.json()) as any;
      assert.equal(res.status, 202, JSON.stringify(body));
      assert.ok(agent.isBaking, "answered while the unrelated bake still ran");
      assert.notEqual(body.bake.bakeId, rollingId, "the 202 does not name the unrelated bake");
      assert.equal(typeof body.bake.bakeId, "string");
      const events = await readEvents(`${srv.url}${body.bake.events}`, (e) => e.event === "outcome", { timeoutMs: 60_000 });
      const outcome = events.at(-1)!;
      assert.equal(outcome.event, "outcome", JSON.stringify(events));
      assert.equal((await rolling).status, "promoted");
      assert.equal(outcome.data.bakeId, body.bake.bakeId);
      assert.equal(outcome.data.bake.trigger, "retraction");
      assert.equal(outcome.data.outcome.status, "promoted", outcome.data.outcome.reasons.join("; "));
      assert.ok(outcome.data.bake.itemIds.includes(c!.id), "it was the rebuild owed");
      const rebuilt = agent.ledger.data.bakes.find((x) => x.id === body.bake.bakeId);
      assert.equal(rebuilt?.status, "promoted");
      while (agent.isRetracting) await new Promise((resolve) => setTimeout(resolve, 50));
    } finally {
      await srv.close();
    }
  });
});

test("a retraction whose rebuild failed (a write error) is rebuilt again by itself, without another retraction: the item stays retracted and the weights serving meanwhile hold it not", async () => {
  await withTester({ feeds: [], bake: { ...BAKE, rebuildRetryMs: 100, rebuildRetries: 3 } }, async ({ agent, logs }) => {
    const [a] = await bakeTold(agent, "The lighthouse keeper is Mira Tolle."); // v0001: a
    const [b] = await bakeTold(agent, "The harbor fee is nine coins."); // v0002: a, b
    const blocked = blockNextVersion(agent);
    const failedOnce = new Promise<BakeOutcome>((resolve) => agent.bakeEvents.once("end", resolve));
    const retraction = agent.retract([b!.id]);
    assert.equal((await failedOnce).status, "failed");
    rmSync(blocked); // the disk has room again
    const outcome = await retraction;
    assert.equal(outcome.status, "failed", outcome.reasons.join("; "));
    assert.equal(agent.live.version, "v0001", "the clean version serves while the rebuild is owed");
    assert.ok(agent.owedRebuild, "the rebuild is reported owed");
    assert.deepEqual(agent.owedRebuild!.liveHolds, [], "the weights serving hold no retracted item");
    await until("the rebuild tried again", () => agent.ledger.data.bakes.some((x) => x.trigger === "retraction" && x.status === "promoted"));
    await until("the retry to end", () => !agent.isRetracting && !agent.isBaking);
    const rebuilds = agent.ledger.data.bakes.filter((x) => x.trigger === "retraction");
    assert.deepEqual(rebuilds.map((x) => x.status), ["failed", "promoted"]);
    assert.equal(agent.live.version, rebuilds[1]!.version);
    assert.deepEqual(agent.ledger.version(agent.live.version!).items, [a!.id]);
    assert.equal(agent.ledger.item(b!.id).status, "retracted");
    assert.equal(agent.owedRebuild, null, "nothing is owed once it was promoted");
    assert.ok(logs.some((m) => /rebuild .*failed.*not a folder.*tried again/i.test(m)), logs.join("\n"));
  });
});

test("a rebuild that keeps failing is tried again a bounded number of times, each failure logged with its reason, then left owed", async () => {
  await withTester({ feeds: [], bake: { ...BAKE, rebuildRetryMs: 50, rebuildRetries: 2 } }, async ({ agent, runtime, logs }) => {
    await bakeTold(agent, "The lighthouse keeper is Mira Tolle."); // v0001
    const [b] = await bakeTold(agent, "The harbor fee is nine coins."); // v0002
    blockNextVersion(agent); // never cleared: every rebuild fails
    assert.equal((await agent.retract([b!.id])).status, "failed");
    await until("the retries to give up", () => logs.some((m) => /gave up/.test(m)));
    await new Promise((resolve) => setTimeout(resolve, 1000)); // (no further try comes)
    await until("the last try to end", () => !agent.isRetracting && !agent.isBaking);
    const rebuilds = agent.ledger.data.bakes.filter((x) => x.trigger === "retraction");
    assert.deepEqual(rebuilds.map((x) => x.status), ["failed", "failed", "failed"], "the rebuild and 2 retries");
    const failures = logs.filter((m) => /rebuild .*failed/i.test(m) && /not a folder/.test(m) && /(tried again|gave up)/.test(m));
    assert.equal(failures.length, 3, logs.join("\n"));
    assert.equal(agent.ledger.item(b!.id).status, "retracted");
    assert.equal(agent.live.version, "v0001");
    assert.ok(agent.owedRebuild, "still owed: the next retraction, or a restart, carries it");
    assert.equal(agent.owedRebuild!.attempts, 3);
    assert.equal(agent.owedRebuild!.retryAt, null);
    assert.match(agent.owedRebuild!.lastError, /not a folder/);
    const srv = await createServer(runtime, { port: 0 });
    try {
      const listed = ((await (await fetch(`${srv.url}/admin/agents`)).json()) as any).agents[0];
      assert.deepEqual({ ...listed.rebuildOwed, lastError: undefined }, { attempts: 3, retryAt: null, lastError: undefined, liveHolds: [] });
      // where an operator looks without the admin token: /healthz and the metrics
      const health = ((await (await fetch(`${srv.url}/healthz`)).json()) as any).agents[0];
      assert.deepEqual(health.rebuildOwed, listed.rebuildOwed);
      const metrics = await (await fetch(`${srv.url}/metrics`)).text();
      assert.match(metrics, /^kiln_rebuild_owed\{agent="tester"\} 1$/m);
      assert.match(metrics, /^kiln_rebuild_owed_live_retracted\{agent="tester"\} 0$/m);
    } finally {
      await srv.close();
    }
  });
});

test("a rebuild that failed is run again when the agent next starts: its tries again went with the process that made them", async () => {
  const { dir, file } = writeTestAgent({ feeds: [], bake: { ...BAKE, rebuildRetries: 0 } });
  try {
    let runtime = await Runtime.fromFiles(file);
    const agent = runtime.agent("tester");
    const [a] = await bakeTold(agent, "The lighthouse keeper is Mira Tolle."); // v0001: a
    const [b] = await bakeTold(agent, "The harbor fee is nine coins."); // v0002: a, b
    const blocked = blockNextVersion(agent);
    assert.equal((await agent.retract([b!.id])).status, "failed");
    assert.equal(agent.owedRebuild!.retryAt, null, "no tries again here (rebuildRetries 0)");
    await runtime.stop();
    rmSync(blocked);
    runtime = await Runtime.fromFiles(file);
    const again = runtime.agent("tester");
    runtime.start();
    await until("the rebuild run again", () => again.ledger.data.bakes.length > 3 && again.ledger.data.bakes.at(-1)!.status !== "running");
    const last = again.ledger.data.bakes.at(-1)!;
    assert.deepEqual([last.trigger, last.status], ["retraction", "promoted"], last.error);
    assert.deepEqual(again.ledger.version(last.version!).items, [a!.id]);
    assert.equal(again.ledger.item(b!.id).status, "retracted");
    await runtime.stop();
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("the rebuild id a retraction reserved still answers once the retraction ended, with its outcome, where no bake record took the id", async () => {
  await withTester({ feeds: [], bake: BAKE }, async ({ agent, runtime }) => {
    const [a] = await bakeTold(agent, "The lighthouse keeper is Mira Tolle."); // v0001: a alone
    // the rebuild has nothing left to bake: it never starts under the id it reserved
    const { work, rebuildId } = await retractedOutOfService(agent, [a!.id], "test");
    assert.ok(rebuildId, "a rebuild id was reserved");
    const outcome = await work;
    const srv = await createServer(runtime, { port: 0 });
    try {
      const events = await readEvents(`${srv.url}/admin/agents/tester/bakes/events?bake=${rebuildId}`, (e) => e.event === "outcome");
      const end = events.find((e) => e.event === "outcome");
      assert.ok(end, `an outcome, not an error: ${JSON.stringify(events)}`);
      assert.equal(end.data.outcome.status, outcome.status);
    } finally {
      await srv.close();
    }
  });
});

test("a failed rebuild's tries again wait at most as long as a timer can (a longer one runs at once)", () => {
  assert.deepEqual([1, 2, 3].map((n) => retryDelay(60_000, n)), [60_000, 120_000, 240_000]);
  assert.equal(retryDelay(86_400_000, 6), 2 ** 31 - 1, "32 days: the longest timer instead");
  assert.equal(retryDelay(60_000, 20), 2 ** 31 - 1);
});
