// The learning loop end to end on a tiny model: feed -> ledger -> bake in the worker -> gate ->
// promote -> live swap; versions, diff, rollback, retraction, and agent-file validation.
import { test } from "node:test";
import assert from "node:assert/strict";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import path from "node:path";
import cron from "node-cron";
import { initBackend } from "../src/tensor/backend.js";
import { agentFiles, Runtime } from "../src/runtime/runtime.js";
import { loadAgentConfig } from "../src/runtime/agent-config.js";
import { bakeOrder, chooseReplay, replayAdvice, retractedOutOfService, scaledTrajectories, sizedTrajectories, type Agent, type BakeOutcome } from "../src/runtime/agent.js";
import { SETTLE_MS } from "../src/feeds/feeds.js";
import { knowledgeLessons } from "../src/bake/prompt.js";
import { LEDGER_LIMITS, type BakeRun, type Item, type LedgerData } from "../src/knowledge/ledger.js";
import { createServer } from "../src/server/index.js";
import { readHeader } from "../src/model/safetensors.js";
import type { ChatMessage } from "../src/model/tokenizer.js";
import { FAST_BAKE, writeTestAgent } from "./support/agent.js";
import { bakeTold, withTester } from "./support/tester.js";

await initBackend();

/**
 * Reads a feed whose item text changed, and moves the ledger's clock back as if SETTLE_MS passed:
 * the change is taken by the next poll that finds the same text.
 */
async function letChangeSettle(agent: Agent, feedId: string): Promise<void> {
  assert.equal((await agent.pollFeed(feedId)).added, 0, "a changed text waits for a later poll");
  await agent.ledger.update((d) => {
    for (const r of Object.values(d.feeds.find((f) => f.id === feedId)!.revisions ?? {})) {
      if (r.waiting) r.waiting.since = new Date(Date.parse(r.waiting.since) - SETTLE_MS).toISOString();
    }
  });
}

/** Polls a feed whose item text changed, as the change settles (letChangeSettle, then a poll). */
/** Dates an item's news 8 days ago (past a forgetNewsAfterDays of 7), then bakes a told fact: the bake is promoted and the item expired. */
async function bakeAfterNewsAged(agent: Agent, id: string) {
  await agent.ledger.update((d) => void (d.items.find((i) => i.id === id)!.source.publishedAt = new Date(Date.now() - 8 * 86_400_000).toISOString()));
  await agent.remember("The lighthouse keeper is Mara Quell.");
  const outcome = await agent.bake("test");
  assert.equal(outcome.status, "promoted", outcome.reasons.join("; "));
  assert.equal(agent.ledger.item(id).status, "expired");
  return outcome;
}

async function pollSettled(agent: Agent, feedId: string): Promise<{ added: number; error?: string }> {
  await letChangeSettle(agent, feedId);
  return agent.pollFeed(feedId);
}

/** As `kiln knowledge retract` killed during its rebuild leaves a ledger: the item marked, its rebuild of `rebuilding` still running. */
function interruptRetraction(data: LedgerData, id: string, rebuilding: string[]): void {
  const item = data.items.find((i) => i.id === id)!;
  item.status = "retracted";
  item.history.push({ at: new Date().toISOString(), status: "retracted", reason: "retracted" });
  data.bakes.push({ id: "b_cut", startedAt: new Date().toISOString(), status: "running", trigger: "retraction", parent: null, itemIds: rebuilding, replayIds: [] } satisfies BakeRun);
}

/** Tells the agent each text and starts a bake of them (a rolling one, on weights already live); resolves once its worker trains. */
async function startBake(agent: Agent, ...texts: string[]): Promise<{ items: Item[]; baking: Promise<BakeOutcome> }> {
  const items: Item[] = [];
  for (const text of texts) items.push((await agent.remember(text)).item);
  const baking = agent.bake("test");
  await new Promise<void>((resolve) => agent.bakeEvents.once("progress", () => resolve()));
  return { items, baking };
}

/** Changes an agent's ledger on disk while no runtime holds it, as a crash or an interrupted command leaves it. */
function editLedger(dir: string, edit: (data: LedgerData) => void): void {
  const file = path.join(dir, "home", "ledger.json");
  const data = JSON.parse(readFileSync(file, "utf8")) as LedgerData;
  edit(data);
  writeFileSync(file, JSON.stringify(data));
}

test("feed items are ingested once, baked, gated and promoted; the live model swaps; rollback and diff work", async () => {
  const { dir, file } = writeTestAgent();
  const logs: string[] = [];
  const runtime = await Runtime.fromFiles(file, { events: { onLog: (_a, m) => logs.push(m) } });
  try {
    const agent = runtime.agent("tester");
    assert.deepEqual(await agent.pollAllFeeds(), { harbor: { added: 2 } });
    assert.deepEqual(await agent.pollAllFeeds(), { harbor: { added: 0 } }, "a second poll adds nothing");
    await agent.remember("The lighthouse keeper is Mira Tolle.");
    assert.equal(agent.ledger.items({ status: "pending" }).length, 3);
    assert.equal(agent.ledger.items({ source: "harbor" })[0]!.source.guid !== undefined, true);

    const phases = new Set<string>();
    const first = await agent.bake("test");
    assert.equal(first.status, "promoted", first.reasons.join("; "));
    assert.equal(first.version, "v0001");
    assert.equal(agent.live.version, "v0001");
    const v1 = agent.ledger.version("v0001");
    assert.equal(v1.status, "live");
    assert.ok(existsSync(path.join(v1.dir, "adapter_model.safetensors")));
    const manifest = JSON.parse(readFileSync(path.join(v1.dir, "manifest.json"), "utf8"));
    assert.equal(manifest.version, "v0001");
    assert.equal(manifest.parent, null);
    for (const item of agent.ledger.data.items) {
      assert.equal(item.status, "absorbed");
      assert.equal(item.absorbedBy, "v0001");
      assert.equal(item.probes!.length, 1, "a probe was written for every item");
      assert.equal(item.scores[0]!.version, "v0001");
    }
    const bake = agent.ledger.data.bakes[0]!;
    assert.equal(bake.status, "promoted");
    assert.ok(Number(bake.metrics!.bestValKl) < Number(bake.metrics!.initialValKl));
    assert.ok(bake.history!.length > 0);

    await agent.remember("The harbor fee is nine coins.");
    const second = await agent.bake("test", {});
    assert.equal(second.status, "promoted");
    const v2 = agent.ledger.version("v0002");
    assert.equal(v2.parent, "v0001");
    assert.equal(agent.ledger.version("v0001").status, "kept");
    const diff = agent.ledger.diff("v0001", "v0002");
    assert.deepEqual(diff.gained.map((i) => i.text), ["The harbor fee is nine coins."]);
    assert.deepEqual(diff.lost, []);
    assert.ok(agent.ledger.data.bakes[1]!.replayIds.length > 0, "absorbed items were replayed");

    // Every chat request is pinned to the live version.
    const chat = runtime.chat("tester", { messages: [{ role: "user", content: "hello" }], options: { maxTokens: 4 } });
    let outcome;
    for (;;) {
      const r = await chat.next();
      if (r.done) {
        outcome = r.value;
        break;
      }
    }
    assert.equal(outcome.version, "v0002");

    await agent.rollback("v0001");
    assert.equal(agent.live.version, "v0001");
    assert.equal(agent.ledger.data.live, "v0001");
    assert.equal(agent.ledger.version("v0002").status, "kept");
    await assert.rejects(agent.rollback("v0009"), /no version v0009/);
    // "absorbed" follows the live weights: the item only v0002 holds waits to be baked again
    const fee = agent.ledger.items({ text: "harbor fee" })[0]!;
    assert.equal(agent.ledger.item(fee.id).status, "pending");
    assert.match(agent.ledger.item(fee.id).history.at(-1)!.reason!, /not held by v0001 \(rollback\)/);
    await agent.rollback(null);
    assert.deepEqual(agent.ledger.items({ status: "absorbed" }), [], "the base model holds nothing");
    await agent.rollback("v0002");
    assert.deepEqual(
      agent.ledger.items({ status: "absorbed" }).map((i) => i.id).sort(),
      [...agent.ledger.version("v0002").items].sort(),
      "rolling forward again: what v0002 holds is absorbed again",
    );

    // Retraction rebuilds from the base over what is still true, and scores the retracted item.
    const target = agent.ledger.items({ text: "lighthouse" })[0]!;
    const held = agent.ledger.items({ status: "absorbed" }).filter((i) => i.id !== target.id).length;
    const waiting = agent.ledger.items({ status: "pending" }).length;
    const retraction = await agent.retract([target.id]);
    assert.equal(retraction.status, "promoted");
    // the rebuild's log says what it bakes again and what is new, not that all of it is news
    assert.ok(
      logs.some((m) => m.endsWith(`-> ${retraction.version}: rebuilt from the base model, ${held + waiting} item(s) (${held} baked before, ${waiting} new)`)),
      logs.join("\n"),
    );
    const v3 = agent.ledger.version(retraction.version!);
    assert.equal(v3.parent, null);
    assert.ok(!v3.items.includes(target.id));
    assert.equal(agent.ledger.item(target.id).status, "retracted");
    assert.ok(agent.ledger.item(target.id).scores.some((s) => s.version === v3.id), "the retracted item's recall was measured");
    assert.deepEqual(agent.ledger.diff("v0002", v3.id).lost.map((i) => i.id), [target.id]);
    await assert.rejects(agent.rollback("v0002"), /v0002 holds retracted item\(s\) .*; it cannot go live again/);
  } finally {
    await runtime.stop();
    rmSync(dir, { recursive: true });
  }
});

test("facts stated in chat are captured after the reply, by rules here, and not at all with capture: off", async () => {
  for (const capture of ["rules", "off"] as const) {
    const { dir, file } = writeTestAgent({ capture });
    const runtime = await Runtime.fromFiles(file);
    try {
      const it = runtime.chat("tester", { messages: [{ role: "user", content: "My name is Ada and I live in Quillport." }], options: { maxTokens: 2 }, conversationId: "c7" });
      let outcome;
      for (let r = await it.next(); ; r = await it.next()) if (r.done) { outcome = r.value; break; }
      const pending = runtime.agent("tester").ledger.items({ status: "pending" }).map((i) => i.text);
      if (capture === "off") assert.deepEqual([outcome.captured, pending], [[], []]);
      else {
        assert.deepEqual(outcome.captured, ["The user's name is Ada.", "The user lives in Quillport."]);
        assert.deepEqual(pending, outcome.captured);
        // provenance: the conversation, how it was read, and the user's words it was read from
        const [item] = runtime.agent("tester").ledger.items({ status: "pending" });
        assert.deepEqual(item!.source, { conversationId: "c7", capturedBy: "rules", said: "My name is Ada and I live in Quillport." });
        const told = runtime.chat("tester", { messages: [{ role: "user", content: `remember that the gate code is 4512\n${"More words about the gate. ".repeat(30)}` }], conversationId: "c7" });
        for (let r = await told.next(); !r.done; r = await told.next());
        const [gate] = runtime.agent("tester").ledger.items({ text: "gate code" });
        assert.equal(gate!.source.capturedBy, "explicit");
        assert.equal(gate!.source.said!.length, 500, "a long message kept in part");
      }
    } finally {
      await runtime.stop();
      rmSync(dir, { recursive: true });
    }
  }
});

test("chatForget: conversation — a \"forget ...\" retracts only what the same conversation told: not the news, not another user's facts", async () => {
  const { dir, file } = writeTestAgent({ capture: "rules", chatForget: "conversation" });
  const runtime = await Runtime.fromFiles(file);
  const say = async (conversationId: string, content: string) => {
    const it = runtime.chat("tester", { messages: [{ role: "user", content }], options: { maxTokens: 2 }, conversationId });
    for (let r = await it.next(); ; r = await it.next()) if (r.done) return r.value.result.text;
  };
  try {
    const agent = runtime.agent("tester");
    await agent.pollFeed("harbor"); // "Quillport opened a ferry" ...
    await say("ada", "My name is Ada and I live in Quillport.");
    await say("bo", "I live in Ashby.");
    assert.equal(await say("bo", "forget the Quillport ferry"), 'Nothing I was told matches "the Quillport ferry".', "the news is not bo's to forget");
    assert.equal(await say("bo", "forget that I live in Quillport"), 'Nothing I was told matches "I live in Quillport".', "nor is ada's fact");
    assert.equal(await say("bo", "forget that I live in Ashby"), 'Forgot 1 item(s) matching "I live in Ashby" (not baked in yet).');
    const status = (text: string) => agent.ledger.items({ text }).map((i) => i.status);
    assert.deepEqual([status("Quillport opened"), status("lives in Quillport"), status("lives in Ashby")], [["pending"], ["pending"], ["retracted"]]);
  } finally {
    await runtime.stop();
    rmSync(dir, { recursive: true });
  }
});

test("an agent file that sets no trajectories bakes 4 per item carried, at least 64", async () => {
  const { trajectories: _, ...settings } = FAST_BAKE;
  const { dir, file } = writeTestAgent({ bake: { probesPerItem: 1, checkProbes: false, openQuestions: ["hello"], settings: { ...settings, epochs: 1 } } });
  const sampled: number[] = [];
  const runtime = new Runtime({ onBakeProgress: (_a, p) => void (p.phase === "sample" && sampled.push(p.total)) });
  try {
    await runtime.load([loadAgentConfig(file, dir)]);
    const agent = runtime.agent("tester");
    for (let k = 0; k < 20; k++) await agent.remember(`Harbor notice ${k}: the ferry ${k} leaves at ${k} o'clock.`);
    assert.equal((await agent.bake("test")).status, "promoted");
    assert.equal(sampled.at(-1), 80, "20 new items, nothing held yet to replay");
    await agent.remember("The harbor fee is nine coins.");
    await agent.bake("test");
    assert.equal(sampled.at(-1), 64, "1 new and the 4 replayed (replay: 4): the floor");
  } finally {
    await runtime.stop();
    rmSync(dir, { recursive: true });
  }
});

test("a gate that is not met keeps the version as rejected with its reasons, and items wait", async () => {
  const { dir, file } = writeTestAgent({ gate: { minAbsorption: 1.01 } });
  // minAbsorption above 1 is invalid: the file is refused with the field named.
  assert.throws(() => loadAgentConfig(file, dir), /gate\.minAbsorption: .*(1|too big)/i);
  // A persona the random fixture model never shows (its replies never end with the sign-off):
  // the persona gate fails on every bake, whatever the model absorbs.
  const ok = writeTestAgent({
    persona: { text: "End every reply with: Cheers, Ada.", suffix: "Cheers, Ada." },
    gate: { minAbsorption: 0, itemPass: 0, minRetention: 0, minPersona: 1 },
    bake: { probesPerItem: 1, checkProbes: false, openQuestions: ["hello"], settings: { trajectories: 8, epochs: 1, maxReplyTokens: 4 } },
  });
  const runtime = await Runtime.fromFiles(ok.file);
  try {
    const agent = runtime.agent("tester");
    await agent.remember("Quillport's mayor is Tovan Reel.");
    const outcome = await agent.bake("test");
    assert.equal(outcome.status, "rejected");
    assert.match(outcome.reasons.join("; "), /persona adherence 0\.00 < gate\.minPersona 1/);
    assert.equal(agent.live.version, null, "the base model stays live");
    assert.equal(agent.ledger.version(outcome.version!).status, "rejected");
    assert.equal(agent.ledger.items({ status: "pending" }).length, 1);
    await assert.rejects(agent.rollback(outcome.version!), /was rejected by the gate .*only kept versions can go live/);
    // the schedule does not bake the same items into the same rejection again; a bake by hand does
    const again = await agent.bake("schedule");
    assert.equal(again.status, "skipped");
    assert.match(again.reasons[0]!, /the last bake of these 1 item\(s\) was rejected .* the schedule waits for new items/);
    // news goes in ahead of the items just rejected, and the schedule bakes again
    const { item: news } = await agent.remember("The harbor fee is nine coins.");
    const next = await agent.bake("schedule");
    assert.notEqual(next.status, "skipped", next.reasons.join("; "));
    assert.equal(agent.ledger.data.bakes.at(-1)!.itemIds[0], news.id);
  } finally {
    await runtime.stop();
    rmSync(dir, { recursive: true });
    rmSync(ok.dir, { recursive: true });
  }
});

test("an item no checked probe can be written for is rejected unbaked", async () => {
  // checked probes (the default) on the random fixture model: nothing it writes is a question about the item
  // (bake.maxAttempts is shown on kiln-mini, whose misses are certain: tests/kiln-mini.test.ts)
  const strict = writeTestAgent({ bake: { probesPerItem: 1, openQuestions: ["hello"], settings: { trajectories: 8, epochs: 1, maxReplyTokens: 4 } } });
  const runtime = await Runtime.fromFiles(strict.file);
  try {
    const agent = runtime.agent("tester");
    const { item } = await agent.remember("Quillport's mayor is Tovan Reel.");
    const outcome = await agent.bake("test");
    assert.equal(outcome.status, "rejected", "a version that learned nothing new is not promoted");
    assert.match(outcome.reasons.join(";"), /none of the 1 new item\(s\) got a checked probe/);
    const after = agent.ledger.item(item.id);
    assert.equal(after.status, "rejected");
    assert.match(after.history.at(-1)!.reason!, /not baked: none of the questions/);
    assert.deepEqual(after.probes ?? [], [], "no unchecked probe was stored");
  } finally {
    await runtime.stop();
    rmSync(strict.dir, { recursive: true });
  }
});

test("an item retracted while a bake of it runs: the bake stops, and runs again without it", async () => {
  await withTester({ feeds: [] }, async ({ agent }) => {
    const { item: keep } = await agent.remember("The lighthouse keeper is Mira Tolle.");
    const { item: drop } = await agent.remember("The harbor fee is nine coins.");
    const baking = agent.bake("test");
    const retraction = agent.retract([drop.id]); // as a chat "forget ..." may, mid-bake
    const stopped = await baking;
    assert.equal(stopped.status, "failed");
    assert.match(stopped.reasons.join("; "), /^bake cancelled: retraction asked for/);
    const outcome = await retraction;
    assert.equal(outcome.status, "promoted", outcome.reasons.join("; "));
    assert.match(outcome.reasons.join("; "), /the bake it stopped ran again without them: promoted/);
    assert.equal(agent.ledger.item(drop.id).status, "retracted");
    assert.deepEqual(agent.ledger.version(agent.live.version!).items, [keep.id], "the live weights hold what was told but not the retracted item");
    assert.equal(agent.ledger.item(keep.id).status, "absorbed");
    assert.deepEqual(agent.ledger.data.bakes.map((b) => [b.trigger, b.status]), [["test", "failed"], ["test", "promoted"]]);
  });
});

test("an item retracted by the end of its id during another's rebuild baking it: the rebuild stops all the same", async () => {
  await withTester({ feeds: [] }, async ({ agent }) => {
    await bakeTold(agent, "The lighthouse keeper is Mira Tolle."); // v0001
    const [b] = await bakeTold(agent, "The harbor fee is nine coins."); // v0002
    const { item: p } = await agent.remember("The mill closes at dusk."); // pending: the rebuild bakes it
    const firstRebuild = new Promise<void>((resolve) => agent.bakeEvents.once("start", () => resolve()));
    const first = agent.retract([b!.id]);
    await firstRebuild;
    const second = agent.retract([p.id.slice(-8)]); // as `kiln knowledge retract` takes it
    const [one, two] = await Promise.all([first, second]);
    assert.equal(one.status, "failed", "the rebuild baking it was stopped");
    assert.equal(two.status, "promoted", two.reasons.join("; "));
    assert.ok(!agent.ledger.data.versions.some((v) => v.items.includes(p.id)), "no version ever held it");
  });
});

test("a bake that cannot end holding the retracted item goes on; the retraction does not wait for it", async () => {
  await withTester({ feeds: [] }, async ({ agent }) => {
    const { item: keep } = await agent.remember("The lighthouse keeper is Mira Tolle.");
    const baking = agent.bake("test");
    await new Promise<void>((resolve) => agent.bakeEvents.once("progress", () => resolve()));
    const { item: other } = await agent.remember("The ferry leaves at noon.");
    const outcome = await agent.retract([other.id]); // not in the running bake: it is marked at once
    assert.equal(outcome.status, "skipped");
    assert.ok(agent.isBaking, "the bake of another item went on");
    assert.equal(agent.ledger.item(other.id).status, "retracted");
    assert.equal((await baking).status, "promoted");
    assert.equal(agent.ledger.item(keep.id).status, "absorbed");
  });
});

test("a bake asked for while a retraction starts waits: the retraction rebuilds from the base model, not a rolling bake in its place", async () => {
  await withTester({ feeds: [] }, async ({ agent }) => {
    const [keep, drop] = await bakeTold(agent, "The lighthouse keeper is Mira Tolle.", "The harbor fee is nine coins.");
    await agent.remember("The ferry leaves at noon.");
    const retraction = agent.retract([drop.id]);
    const scheduled = agent.bake("schedule"); // the schedule firing before the rebuild started
    const [outcome, other] = await Promise.all([retraction, scheduled]);
    assert.equal(other.status, "skipped");
    assert.match(other.reasons.join("; "), /retraction/);
    const rebuilt = agent.ledger.data.bakes.find((b) => b.trigger === "retraction");
    assert.ok(rebuilt, `the retraction rebuilt (outcome: ${outcome.status} ${outcome.reasons.join("; ")})`);
    assert.equal(rebuilt.parent, null, "from the base model");
    assert.equal(agent.live.version, outcome.version, "its version is live");
    assert.ok(!agent.ledger.version(agent.live.version!).items.includes(drop.id));
    assert.equal(agent.ledger.item(keep.id).status, "absorbed");
  });
});

test("a retraction asked for just before the agent stops (chat's \"forget ...\" then /quit) is kept: the item is retracted and the weights holding it leave", async () => {
  const { dir, file } = writeTestAgent({ feeds: [] });
  try {
    let runtime = await Runtime.fromFiles(file);
    let agent = runtime.agent("tester");
    const [keep, drop] = await bakeTold(agent, "The lighthouse keeper is Mira Tolle.", "The harbor fee is nine coins.");
    await agent.remember("The ferry leaves at noon.");
    const baking = agent.bake("test"); // running when the user says "forget ..."
    const retraction = agent.retract([drop.id], 'user asked to forget "harbor fee"');
    await runtime.stop();
    await baking;
    await retraction.catch(() => undefined);
    runtime = await Runtime.fromFiles(file);
    try {
      agent = runtime.agent("tester");
      assert.equal(agent.ledger.item(drop.id).status, "retracted", "the forget was not lost");
      assert.ok(!agent.live.version || !agent.ledger.version(agent.live.version).items.includes(drop.id), "the live weights do not hold it");
      assert.notEqual(agent.ledger.item(keep.id).status, "retracted");
    } finally {
      await runtime.stop();
    }
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("a retraction looks up what the weights it takes out of service held once, not item by item through the whole ledger", async () => {
  const { dir, file } = writeTestAgent({ feeds: [] });
  const runtime = await Runtime.fromFiles(file);
  try {
    const agent = runtime.agent("tester");
    // a long-lived agent: the live version holds thousands of items (no weights needed: the
    // agent stops before the rebuild would train)
    const n = 3000;
    const at = "2026-01-01T00:00:00.000Z";
    await agent.ledger.update((d) => {
      for (let i = 0; i < n; i++) d.items.push({ id: `k_held${i}`, kind: "feed", text: `Fact ${i}.`, status: "absorbed", createdAt: at, updatedAt: at, source: {}, contentHash: `h${i}`, absorbedBy: "v0001", scores: [], history: [{ at, status: "absorbed" }] });
      d.versions.push({ id: "v0001", parent: null, createdAt: at, dir: path.join(dir, "home", "v0001"), status: "live", bakeId: "b_0", items: d.items.map((i) => i.id), scores: { absorption: 1, retention: 1, persona: null } });
      d.live = "v0001";
    });
    const ledger = agent.ledger;
    const item = ledger.item.bind(ledger);
    let lookups = 0;
    ledger.item = (id: string) => (lookups++, item(id));
    const work = agent.retract(["k_held7"]);
    await runtime.stop();
    await work.catch(() => undefined);
    assert.equal(item("k_held7").status, "retracted");
    // each lookup reads the ledger from the start: one per held item was 2.5 s of blocked event
    // loop at 20,000 items
    assert.ok(lookups < 100, `${lookups} lookups of single items for a retraction of one`);
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("a bake stopped by one of two retractions asked for together is run again by the one that stopped it", async () => {
  await withTester({ feeds: [] }, async ({ agent }) => {
    await bakeTold(agent, "The lighthouse keeper is Mira Tolle."); // v0001
    const { items: [q, k], baking } = await startBake(agent, "The harbor fee is nine coins.", "The mill closes at dusk.");
    const { item: r } = await agent.remember("The ferry leaves at noon."); // in no bake, in no weights
    const first = agent.retract([r.id]); // cannot stop the bake
    const second = agent.retract([q!.id]); // stops it
    assert.equal((await baking).status, "failed");
    const [one, two] = await Promise.all([first, second]);
    assert.equal(one.status, "skipped", one.reasons.join("; "));
    assert.doesNotMatch(one.reasons.join("; "), /ran again/);
    assert.equal(two.status, "promoted", two.reasons.join("; "));
    assert.match(two.reasons.join("; "), /the bake it stopped ran again without them: promoted/);
    assert.deepEqual(agent.ledger.data.bakes.map((b) => [b.trigger, b.status]), [["test", "promoted"], ["test", "failed"], ["test", "promoted"]]);
    assert.deepEqual(agent.ledger.data.bakes.at(-1)!.itemIds, [k!.id]);
  });
});

test("a retraction of an item nothing holds, asked for while another runs again the bake it stopped, does not wait for that bake", async () => {
  await withTester({ feeds: [] }, async ({ agent }) => {
    await bakeTold(agent, "The lighthouse keeper is Mira Tolle."); // v0001
    const { items: [q, k], baking } = await startBake(agent, "The harbor fee is nine coins.", "The mill closes at dusk.");
    const first = agent.retract([q!.id]); // stops it, then runs it again without q
    assert.equal((await baking).status, "failed");
    await new Promise<void>((resolve) => agent.bakeEvents.once("progress", () => resolve())); // the bake run again
    const { item: r } = await agent.remember("The ferry leaves at noon."); // in no bake, in no weights
    const second = await agent.retract([r.id]);
    assert.equal(second.status, "skipped", second.reasons.join("; "));
    assert.ok(agent.isBaking, "it answered while the bake run again still ran");
    assert.equal(agent.ledger.item(r.id).status, "retracted");
    const one = await first;
    assert.match(one.reasons.join("; "), /the bake it stopped ran again without them: promoted/);
    assert.deepEqual(agent.ledger.data.bakes.at(-1)!.itemIds, [k!.id]);
  });
});

test("a bake stopped by a retraction that needs no rebuild is not run again where one asked for beside it rebuilds (its rebuild bakes those items)", async () => {
  await withTester({ feeds: [] }, async ({ agent }) => {
    const [h] = await bakeTold(agent, "The harbor fee is nine coins."); // v0001
    const { items: [q, k], baking } = await startBake(agent, "The mill closes at dusk.", "The ferry leaves at noon."); // a rolling bake from v0001
    const first = agent.retract([q!.id]); // stops it; q was never baked in
    const second = agent.retract([h!.id]); // v0001 holds h: a rebuild
    assert.equal((await baking).status, "failed");
    const [one, two] = await Promise.all([first, second]);
    assert.equal(one.status, "skipped", one.reasons.join("; "));
    assert.equal(two.status, "promoted", two.reasons.join("; "));
    assert.deepEqual(agent.ledger.data.bakes.map((b) => [b.trigger, b.status]), [["test", "promoted"], ["test", "failed"], ["retraction", "promoted"]], "the stopped bake ran once, in the rebuild");
    assert.deepEqual(agent.ledger.data.bakes.at(-1)!.itemIds, [k!.id]);
  });
});

test("chat's \"forget ...\" while a bake runs stops it: the reply comes once the weights holding the item left service", async () => {
  await withTester({ feeds: [] }, async ({ agent, runtime }) => {
    const [drop] = await bakeTold(agent, "The harbor fee is nine coins.");
    const { item: ferry } = await agent.remember("The ferry leaves at noon.");
    const baking = agent.bake("test"); // a rolling bake from v0001, which holds the fee
    await new Promise<void>((resolve) => agent.bakeEvents.once("progress", () => resolve()));
    const it = runtime.chat("tester", { messages: [{ role: "user", content: "forget the harbor fee" }] });
    let text = "";
    for (let r = await it.next(); !r.done; r = await it.next()) text += r.value.text;
    assert.equal(agent.live.version, null, "v0001 held it: the base model serves");
    assert.match(text, /I answer from weights without them now/);
    const stopped = await baking;
    assert.equal(stopped.status, "failed");
    assert.match(stopped.reasons[0]!, /^bake cancelled: retraction asked for \(user asked to forget "the harbor fee"\)/);
    while (agent.isRetracting) await new Promise((resolve) => setTimeout(resolve, 50)); // its rebuild
    assert.equal(agent.ledger.item(drop!.id).status, "retracted");
    const rebuilt = agent.ledger.data.bakes.find((b) => b.trigger === "retraction");
    assert.deepEqual(rebuilt?.itemIds, [ferry.id], "the rebuild baked what the stopped bake was baking");
  });
});

test("a retraction asked for during another's rebuild stops it; its own rebuild carries what the first carried", async () => {
  await withTester({ feeds: [] }, async ({ agent }) => {
    const [a] = await bakeTold(agent, "The lighthouse keeper is Mira Tolle."); // v0001: a
    const [b] = await bakeTold(agent, "The harbor fee is nine coins."); // v0002: a, b
    const [c] = await bakeTold(agent, "The ferry leaves at noon."); // v0003: a, b, c
    const firstRebuild = new Promise<void>((resolve) => agent.bakeEvents.once("start", () => resolve()));
    const first = agent.retract([b!.id]); // v0001 serves; the rebuild carries a and c
    await firstRebuild;
    assert.equal(agent.live.version, "v0001");
    let outAt: string | null | undefined;
    const second = agent.retract([a!.id], "retracted", () => (outAt = agent.live.version));
    const [one, two] = await Promise.all([first, second]);
    assert.equal(outAt, null, "v0001 held a: the base model served before the first rebuild ended");
    assert.equal(one.status, "failed");
    assert.match(one.reasons[0]!, /bake cancelled: retraction asked for/);
    assert.equal(two.status, "promoted", two.reasons.join("; "));
    const rebuilds = agent.ledger.data.bakes.filter((x) => x.trigger === "retraction");
    assert.deepEqual(rebuilds.map((x) => x.status), ["failed", "promoted"]);
    assert.deepEqual(rebuilds[1]!.itemIds, [c!.id], "the second rebuild baked c, which only the weights the first took out of service held");
    assert.deepEqual(agent.ledger.version(agent.live.version!).items, [c!.id]);
    assert.deepEqual([a, b, c].map((i) => agent.ledger.item(i!.id).status), ["retracted", "retracted", "absorbed"]);
  });
});

/**
 * v0001-v0003 each bake one more told item (a; a, b; a, b, c), then p is told and left pending
 * (a rebuild bakes it); firstRebuild resolves when the next bake starts.
 */
async function threeBakedAndOnePending(agent: Agent): Promise<{ a: Item; b: Item; c: Item; p: Item; firstRebuild: Promise<void> }> {
  const [a] = await bakeTold(agent, "The lighthouse keeper is Mira Tolle.");
  const [b] = await bakeTold(agent, "The harbor fee is nine coins.");
  const [c] = await bakeTold(agent, "The ferry leaves at noon.");
  const { item: p } = await agent.remember("The mill closes at dusk.");
  const firstRebuild = new Promise<void>((resolve) => agent.bakeEvents.once("start", () => resolve()));
  return { a: a!, b: b!, c: c!, p, firstRebuild };
}

test("a retraction of an item never baked in, asked for during another's rebuild baking it, still runs that rebuild without it", async () => {
  await withTester({ feeds: [] }, async ({ agent }) => {
    const { a, b, c, p, firstRebuild } = await threeBakedAndOnePending(agent);
    const first = agent.retract([b!.id]); // v0001 serves; the rebuild carries a and c, and bakes p
    await firstRebuild;
    const second = agent.retract([p.id]); // the rebuild bakes p: it stops
    const [one, two] = await Promise.all([first, second]);
    assert.equal(one.status, "failed");
    assert.equal(two.status, "promoted", two.reasons.join("; "));
    const rebuilds = agent.ledger.data.bakes.filter((x) => x.trigger === "retraction");
    assert.deepEqual(rebuilds.map((x) => x.status), ["failed", "promoted"]);
    assert.deepEqual(agent.ledger.version(agent.live.version!).items.sort(), [a!.id, c!.id].sort(), "c, which only the weights out of service held, is baked again");
    assert.deepEqual([a, b, c, p].map((i) => agent.ledger.item(i!.id).status), ["absorbed", "retracted", "absorbed", "retracted"]);
  });
});

/** Tells `text` and retracts it: nothing holds it, so it is out of service at once (not after the wait) and nothing is rebuilt for it. */
async function retractedAtOnce(agent: Agent, text: string): Promise<Item> {
  const { item } = await agent.remember(text);
  const { work, outOfService } = await retractedOutOfService(agent, [item.id], "test", 5000);
  assert.ok(outOfService, "nothing held it: out of service at once, not after the wait");
  const outcome = await work;
  assert.equal(outcome.status, "skipped", outcome.reasons.join("; "));
  assert.equal(agent.ledger.item(item.id).status, "retracted");
  return item;
}

test("an item told after a retraction's rebuild started, retracted while it runs: marked at once, out of service at once (nothing holds it), and the rebuild goes on", async () => {
  await withTester({ feeds: [] }, async ({ agent }) => {
    const [a] = await bakeTold(agent, "The lighthouse keeper is Mira Tolle."); // v0001: a
    const [b] = await bakeTold(agent, "The harbor fee is nine coins."); // v0002: a, b
    const rebuildStarted = new Promise<void>((resolve) => agent.bakeEvents.once("start", () => resolve()));
    const first = agent.retract([b!.id]); // v0001 serves; the rebuild bakes a
    await rebuildStarted;
    const p = await retractedAtOnce(agent, "The mill closes at dusk."); // in no bake, in no weights
    assert.ok(agent.isBaking, "answered while the rebuild still ran");
    const one = await first;
    assert.equal(one.status, "promoted", `the rebuild went on: ${one.reasons.join("; ")}`);
    assert.deepEqual(agent.ledger.data.bakes.filter((x) => x.trigger === "retraction").length, 1, "nothing was rebuilt for it");
    assert.deepEqual(agent.ledger.version(agent.live.version!).items, [a!.id]);
    assert.ok(!agent.ledger.data.versions.some((v) => v.items.includes(p.id)), "no version ever held it");
  });
});

test("a correction retracted at once during a retraction's rebuild gives back the item it superseded as the rebuild leaves it: not absorbed where the rebuilt weights do not hold it", async () => {
  await withTester({ feeds: [], bake: { probesPerItem: 1, checkProbes: false, openQuestions: ["hello"], settings: FAST_BAKE, maxItems: 1 } }, async ({ agent }) => {
    const [old] = await bakeTold(agent, "The harbor fee is nine coins."); // v0001: old
    const [b] = await bakeTold(agent, "The ferry leaves at noon."); // v0002: old, b
    const { item: p } = await agent.remember("The mill closes at dusk.");
    // a correction of old (a feed's, say): old is superseded; one item a bake, so the rebuild takes p, not it
    const [{ item: fix }] = await agent.ledger.addItems([{ kind: "feed", text: "The harbor fee is ten coins.", source: { feedId: "harbor", guid: "h9" }, supersedes: [old!.id] }]);
    assert.equal(agent.ledger.item(old!.id).status, "superseded");
    const rebuildStarted = new Promise<void>((resolve) => agent.bakeEvents.once("start", () => resolve()));
    const first = agent.retract([b!.id]); // v0001 (which holds old) serves; the rebuild bakes p
    await rebuildStarted;
    assert.deepEqual(agent.ledger.data.bakes.at(-1)!.itemIds, [p.id]);
    const second = await agent.retract([fix.id]); // nothing holds it: marked at once, old given back
    assert.equal(second.status, "skipped", second.reasons.join("; "));
    const one = await first;
    assert.equal(one.status, "promoted", one.reasons.join("; "));
    const held = agent.heldItems();
    assert.ok(!held.has(old!.id), "the rebuild did not bake old");
    const absorbed = agent.ledger.items({ status: "absorbed" }).map((i) => i.id);
    assert.deepEqual(absorbed.filter((id) => !held.has(id)), [], "absorbed means the live weights hold it");
    assert.equal(agent.ledger.item(old!.id).status, "pending", "old waits for the next bake");
  });
});

test("a retraction that owes a stopped rebuild while an unrelated bake runs does not join that bake: the rebuild runs after it", async () => {
  await withTester({ feeds: [] }, async ({ agent }) => {
    const { a, b, c, p, firstRebuild } = await threeBakedAndOnePending(agent);
    const first = agent.retract([b!.id]); // v0001 serves; the rebuild carries c
    await firstRebuild;
    // the retraction that stops it, and would carry its rebuild on, fails to write the ledger (a full disk)
    const ledger = agent.ledger;
    const setItemStatus = ledger.setItemStatus.bind(ledger);
    ledger.setItemStatus = (ids, status, extra) => (status === "retracted" ? Promise.reject(new Error("ENOSPC: no space left on device")) : setItemStatus(ids, status, extra));
    const second = agent.retract([p.id]);
    assert.equal((await first).status, "failed", "the rebuild baking p was stopped");
    await assert.rejects(second, /ENOSPC/);
    ledger.setItemStatus = setItemStatus;
    assert.equal(agent.live.version, "v0001");
    assert.equal(agent.ledger.item(c!.id).status, "pending", "c waits for the rebuild it is owed");
    const { items: [q], baking } = await startBake(agent, "The gate opens at dawn."); // a rolling bake from v0001
    const { item: r } = await agent.remember("The well is dry."); // in no bake, in no weights
    const third = await agent.retract([r.id]); // owes the stopped rebuild
    const rolling = await baking;
    assert.equal(rolling.status, "promoted", rolling.reasons.join("; "));
    assert.notEqual(third.bakeId, rolling.bakeId, "it did not answer with the rolling bake's outcome");
    assert.equal(third.status, "promoted", third.reasons.join("; "));
    const last = agent.ledger.data.bakes.at(-1)!;
    assert.deepEqual([last.trigger, last.consolidate, last.id], ["retraction", true, third.bakeId]);
    assert.ok(last.itemIds.includes(c!.id), "the rebuild baked what the weights out of service held");
    assert.equal(agent.live.version, third.version);
    assert.deepEqual([a, b, c, p, q, r].map((i) => agent.ledger.item(i!.id).status), ["absorbed", "retracted", "absorbed", "absorbed", "absorbed", "retracted"]);
  });
});

test("a retraction takes the weights holding the item out of service at once; the rebuild bakes everything they held", async () => {
  await withTester({ feeds: [] }, async ({ agent }) => {
    const [early] = await bakeTold(agent, "The lighthouse keeper is Mira Tolle."); // v0001: clean
    const [drop] = await bakeTold(agent, "The harbor fee is nine coins.");
    const [late] = await bakeTold(agent, "The ferry leaves at noon."); // v0003 holds all three
    assert.deepEqual([early, drop, late].map((i) => agent.ledger.item(i.id).status), ["absorbed", "absorbed", "absorbed"]);
    const duringRebuild = new Promise<{ live: string | null; statuses: string[] }>((resolve) =>
      agent.bakeEvents.once("start", () => resolve({ live: agent.live.version, statuses: [early, late].map((i) => agent.ledger.item(i.id).status) })),
    );
    const outcome = await agent.retract([drop.id]);
    const during = await duringRebuild;
    assert.equal(during.live, "v0001", "the newest version without it served while the rebuild ran");
    assert.deepEqual(during.statuses, ["absorbed", "pending"], "what v0001 does not hold waited for the rebuild");
    assert.equal(outcome.status, "promoted", outcome.reasons.join("; "));
    const rebuilt = agent.ledger.data.bakes.find((b) => b.trigger === "retraction")!;
    assert.deepEqual([...rebuilt.itemIds].sort(), [early.id, late.id].sort(), "the rebuild baked all the weights out of service held, but the retracted item");
    assert.equal(agent.live.version, outcome.version);
    assert.ok(!agent.ledger.version(outcome.version!).items.includes(drop.id));
    assert.equal(agent.ledger.item(drop.id).status, "retracted");
  });
});

test("a retraction's rebuild that is not promoted leaves what did not fit its context absorbed: the version serving still holds it", async () => {
  await withTester({ feeds: [] }, async ({ agent }) => {
    const told = ["The lighthouse keeper is Mira Tolle.", "The ferry leaves at noon.", "The harbor master is Oskar Venn."];
    const kept = [];
    for (const text of told) kept.push((await agent.remember(text)).item);
    assert.equal((await agent.bake("test")).status, "promoted"); // v0001 holds the three: clean
    const [drop] = await bakeTold(agent, "The harbor fee is nine coins."); // v0002 holds all four
    // room for two of v0001's items in the rebuild's teacher prompt, not three (the worker reads
    // the model from disk and keeps its room)
    const prompt = (texts: string[]) => Math.max(...knowledgeLessons({ items: texts.map((text) => ({ text, questions: [] })), chunkItems: agent.config.bake.chunkItems }).map((l) => agent.model.tokenizer.encode(l.systemPrompt).length));
    const reply = agent.config.bake.settings.maxReplyTokens ?? 48;
    (agent.model.config as { maxPositions: number }).maxPositions = prompt(told.slice(0, 2)) + reply + 64;
    assert.ok(prompt(told) + reply + 64 > agent.model.config.maxPositions);
    agent.config.gate.minAbsorption = 2; // the rebuild is rejected
    const outcome = await agent.retract([drop.id]);
    assert.equal(outcome.status, "rejected", outcome.reasons.join("; "));
    assert.equal(agent.live.version, "v0001");
    assert.deepEqual(
      kept.map((i) => agent.ledger.item(i.id).status),
      ["absorbed", "absorbed", "absorbed"],
      "v0001 serves and holds all three: none waits to be baked again",
    );
    assert.equal(agent.ledger.item(drop.id).status, "retracted");
    // promoted, a consolidation leaves what did not fit to the next bakes
    agent.config.gate.minAbsorption = 0;
    const again = await agent.bake("test", { consolidate: true, force: true });
    assert.equal(again.status, "promoted", again.reasons.join("; "));
    assert.deepEqual(kept.map((i) => agent.ledger.item(i.id).status), ["absorbed", "absorbed", "pending"]);
    assert.ok(!agent.ledger.version(again.version!).items.includes(kept[2]!.id));
  });
});

test("after a retraction's rebuild is rejected, the schedule bakes again what the version serving does not hold: a rejected rebuild from the base is no rolling bake of those items", async () => {
  await withTester({ feeds: [] }, async ({ agent }) => {
    const [early] = await bakeTold(agent, "The lighthouse keeper is Mira Tolle."); // v0001: clean
    const [drop, late] = await bakeTold(agent, "The harbor fee is nine coins.", "The ferry leaves at noon."); // v0002 holds all three
    agent.config.gate.minAbsorption = 2;
    assert.equal((await agent.retract([drop.id])).status, "rejected");
    assert.equal(agent.live.version, "v0001");
    assert.equal(agent.ledger.item(late.id).status, "pending", "v0001 does not hold it: baked again");
    agent.config.gate.minAbsorption = 0;
    const next = await agent.bake("schedule");
    assert.equal(next.status, "promoted", next.reasons.join("; "));
    assert.deepEqual([early, late].map((i) => agent.ledger.item(i.id).status), ["absorbed", "absorbed"]);
  });
});

test("on start, item statuses follow the live version (a crash between a promotion and its status changes)", async () => {
  const { dir, file } = writeTestAgent({ feeds: [] });
  try {
    let runtime = await Runtime.fromFiles(file);
    const agent = runtime.agent("tester");
    const { item } = await agent.remember("The lighthouse keeper is Mira Tolle.");
    assert.equal((await agent.bake("test")).status, "promoted");
    await runtime.stop();
    editLedger(dir, (data) => {
      data.items[0]!.status = "baking"; // as the crash left it
    });
    runtime = await Runtime.fromFiles(file);
    assert.equal(runtime.agent("tester").ledger.item(item.id).status, "absorbed", "v0001 holds it");
    await runtime.stop();
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("a retraction whose rebuild the process did not finish: on start the weights holding the retracted item leave, and the rebuild runs again", async () => {
  const { dir, file } = writeTestAgent({ feeds: [] });
  try {
    let runtime = await Runtime.fromFiles(file);
    const agent = runtime.agent("tester");
    const [keep, drop] = await bakeTold(agent, "The lighthouse keeper is Mira Tolle.", "The harbor fee is nine coins.");
    assert.deepEqual(agent.ledger.version("v0001").items.sort(), [keep.id, drop.id].sort());
    await runtime.stop();
    editLedger(dir, (data) => interruptRetraction(data, drop.id, [keep.id]));
    const logs: string[] = [];
    runtime = await Runtime.fromFiles(file, { events: { onLog: (_a, m) => logs.push(m) } });
    const again = runtime.agent("tester");
    assert.equal(again.live.version, null, "v0001 holds the retracted item: it no longer answers");
    assert.equal(again.ledger.data.live, null);
    assert.equal(again.ledger.item(drop.id).status, "retracted");
    assert.equal(again.ledger.item(keep.id).status, "pending", "baked again by the next bake");
    assert.ok(logs.some((m) => m.startsWith(`v0001 holds retracted item(s) ${drop.id} (a retraction's rebuild did not finish): the base model is live instead`)), logs.join("\n"));
    await assert.rejects(again.rollback("v0001"), /holds retracted item/);
    // started (kiln serve), it runs the rebuild again first: what v0001 held waited behind all news
    const rebuilt = new Promise<BakeOutcome>((resolve) => again.bakeEvents.once("end", resolve));
    runtime.start();
    const outcome = await rebuilt;
    assert.equal(outcome.status, "promoted", outcome.reasons.join("; "));
    assert.equal(again.ledger.data.bakes.at(-1)!.trigger, "retraction");
    assert.deepEqual(again.ledger.version(outcome.version!).items, [keep.id]);
    assert.equal(again.ledger.item(keep.id).status, "absorbed");
    await runtime.stop();
  } finally {
    rmSync(dir, { recursive: true });
  }
});

/**
 * Three told items in v0001, a retraction of the third whose rebuild the process did not finish,
 * and a start that runs that rebuild again: returns once it trains (`rebuilt`: its outcome).
 */
async function resumedRebuild(): Promise<{ dir: string; runtime: Runtime; again: Agent; items: Item[]; rebuilt: Promise<BakeOutcome> }> {
  const { dir, file } = writeTestAgent({ feeds: [] });
  let runtime = await Runtime.fromFiles(file);
  const items = await bakeTold(runtime.agent("tester"), "The lighthouse keeper is Mira Tolle.", "The ferry leaves at noon.", "The harbor fee is nine coins.");
  await runtime.stop();
  editLedger(dir, (data) => interruptRetraction(data, items[2]!.id, [items[0]!.id, items[1]!.id]));
  runtime = await Runtime.fromFiles(file);
  const again = runtime.agent("tester");
  const resumed = new Promise<void>((resolve) => again.bakeEvents.once("progress", () => resolve()));
  const rebuilt = new Promise<BakeOutcome>((resolve) => again.bakeEvents.once("end", resolve));
  runtime.start();
  await resumed;
  return { dir, runtime, again, items, rebuilt };
}

test("a retraction that stops the rebuild a start ran again carries on what that rebuild was baking", async () => {
  const { dir, runtime, again, items: [keep, other, drop] } = await resumedRebuild();
  try {
    // forgetting one of the items it rebuilds stops it; the rebuild that follows bakes the other
    const outcome = await again.retract([other!.id]);
    assert.equal(outcome.status, "promoted", outcome.reasons.join("; "));
    assert.equal(again.ledger.data.bakes.at(-1)!.trigger, "retraction");
    assert.deepEqual(again.ledger.version(outcome.version!).items, [keep!.id]);
    assert.deepEqual([keep!, other!, drop!].map((i) => again.ledger.item(i.id).status), ["absorbed", "retracted", "retracted"]);
  } finally {
    await runtime.stop();
    rmSync(dir, { recursive: true });
  }
});

test("a retraction of an item nothing holds, asked for while the rebuild a start ran again goes on, answers at once and leaves that rebuild alone", async () => {
  const { dir, runtime, again, items: [keep, other], rebuilt } = await resumedRebuild();
  try {
    // told after the rebuild started: it is not in it, and no weights hold it
    const told = (await again.remember("The mill closes at dusk.")).item;
    const outcome = await again.retract([told.id]);
    assert.equal(outcome.status, "skipped", outcome.reasons.join("; "));
    assert.ok(again.isBaking, "answered while the rebuild still runs");
    assert.equal(again.ledger.item(told.id).status, "retracted");
    const rebuild = await rebuilt;
    assert.equal(rebuild.status, "promoted", rebuild.reasons.join("; "));
    assert.deepEqual(again.ledger.version(rebuild.version!).items.sort(), [keep!.id, other!.id].sort());
  } finally {
    await runtime.stop();
    rmSync(dir, { recursive: true });
  }
});

test("a retraction of an item the live weights hold, asked for during another's rebuild that does not bake it, stops that rebuild: the weights leave service now", async () => {
  const { dir, file } = writeTestAgent({ feeds: [] });
  try {
    let runtime = await Runtime.fromFiles(file);
    let agent = runtime.agent("tester");
    const [a, news] = await bakeTold(agent, "The lighthouse keeper is Mira Tolle.", "The mill closed on Monday."); // v0001: a, news
    const [c] = await bakeTold(agent, "The ferry leaves at noon."); // v0002 (from v0001): a, news, c
    await runtime.stop();
    // the news expired: no version lists it, but v0001, which absorbed it, may still answer it
    editLedger(dir, (data) => {
      const item = data.items.find((i) => i.id === news!.id)!;
      item.status = "expired";
      item.history.push({ at: new Date().toISOString(), status: "expired", reason: "news older than forgetNewsAfterDays 7" });
      for (const v of data.versions) v.items = v.items.filter((id) => id !== news!.id);
    });
    runtime = await Runtime.fromFiles(file);
    agent = runtime.agent("tester");
    const firstRebuild = new Promise<void>((resolve) => agent.bakeEvents.once("start", () => resolve()));
    const first = agent.retract([c!.id]); // v0001 serves; its rebuild bakes a, not the expired news
    await firstRebuild;
    assert.equal(agent.live.version, "v0001");
    assert.ok(agent.mayHold(agent.ledger.item(news!.id)), "v0001 absorbed the news");
    const { work, outOfService } = await retractedOutOfService(agent, [news!.id], "test", 5000);
    assert.ok(outOfService, "the weights that may hold it left service");
    assert.equal(agent.live.version, null);
    const [one, two] = await Promise.all([first, work]);
    assert.equal(one.status, "failed", "the first rebuild was stopped");
    assert.equal(two.status, "promoted", two.reasons.join("; "));
    assert.deepEqual(agent.ledger.version(agent.live.version!).items, [a!.id]);
    await runtime.stop();
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("retention checks take the items checked longest ago, bake.retentionChecks at a time; the rest are carried over", async () => {
  await withTester({ feeds: [], replay: 0, retentionChecks: 1 }, async ({ agent }) => {
    const [a, b] = await bakeTold(agent, "The lighthouse keeper is Mira Tolle.", "The harbor fee is nine coins.");
    await agent.remember("The ferry leaves at noon.");
    assert.equal((await agent.bake("test")).status, "promoted");
    const checkedIn = (id: string, v: string) => agent.ledger.item(id).scores.some((s) => s.version === v);
    assert.equal([a.id, b.id].filter((id) => checkedIn(id, "v0002")).length, 1, "one old item checked");
    assert.deepEqual([a.id, b.id].filter((id) => agent.ledger.version("v0002").items.includes(id)).length, 2, "both still held");
    const unchecked = [a.id, b.id].find((id) => !checkedIn(id, "v0002"))!;
    await agent.remember("The mill closed in spring.");
    assert.equal((await agent.bake("test")).status, "promoted");
    assert.ok(checkedIn(unchecked, "v0003"), "the next bake checks the one checked longest ago");
  });
});

test("retracting the only baked item leaves the base model live: nothing is left to rebuild from", async () => {
  await withTester({ feeds: [] }, async ({ agent }) => {
    const { item } = await agent.remember("The lighthouse keeper is Mira Tolle.");
    assert.equal((await agent.bake("test")).status, "promoted");
    assert.equal(agent.live.version, "v0001");
    const outcome = await agent.retract([item.id]);
    assert.equal(outcome.status, "skipped");
    assert.match(outcome.reasons[0]!, /nothing left to bake: the base model is live/);
    assert.equal(agent.live.version, null);
    assert.equal(agent.ledger.data.live, null);
    assert.equal(agent.ledger.item(item.id).status, "retracted");
  });
});

/** Opens the runtime of an agent file (again after each stop), its log lines kept in `logs`. */
function loggingOpener(file: string): { logs: string[]; open: () => Promise<Runtime> } {
  const logs: string[] = [];
  return { logs, open: () => Runtime.fromFiles(file, { events: { onLog: (_a, m) => logs.push(m) } }) };
}

test("a scheduled poll never takes the process down, and a failing feed is asked less often, across restarts", async () => {
  const schedule = "0 0 1 1 *"; // once a year: the test passes each tick's due time itself
  const { dir, file, feedFile } = writeTestAgent({ feeds: [{ id: "gone", url: "missing.xml", schedule }] });
  // when the schedule fires next, as node-cron computes it (fires[k]: the (k+1)-th after now)
  const probe = cron.createTask(schedule, () => {});
  const fires = probe.getNextRuns(17);
  await probe.destroy();
  const { logs, open } = loggingOpener(file);
  let runtime = await open();
  try {
    let agent = runtime.agent("tester");
    const tick = (at: Date) => (agent as unknown as { scheduledPoll(id: string, at: Date): Promise<void> }).scheduledPoll("gone", at);
    const record = () => agent.ledger.feed("gone")!;
    const restart = async () => {
      await runtime.stop();
      runtime = await open();
      agent = runtime.agent("tester");
    };
    await tick(new Date()); // fails: the next scheduled poll is skipped
    assert.equal(record().consecutiveErrors, 1);
    await tick(fires[0]!);
    assert.equal(record().consecutiveErrors, 1, "skipped");
    await restart();
    await tick(fires[0]!);
    assert.equal(record().consecutiveErrors, 1, "still skipped after a restart");
    assert.equal(record().backoffUntil, fires[1]!.toISOString());

    // a manual poll (kiln feeds poll, the admin API) asks at once; it fails: the next 3 are skipped
    assert.match((await agent.pollFeed("gone")).error!, /feed "gone" \(.*missing\.xml\): cannot read file: ENOENT/);
    assert.equal(record().consecutiveErrors, 2);
    assert.ok(logs.some((m) => /gone: 2 failed poll\(s\) in a row; skipping the next 3 scheduled poll\(s\)/.test(m)), logs.join("\n"));
    for (const k of [0, 1, 2]) await tick(fires[k]!);
    assert.equal(record().consecutiveErrors, 2, "three skipped");
    await restart();
    await tick(fires[2]!);
    assert.equal(record().consecutiveErrors, 2, "still three after a restart");
    await tick(fires[3]!);
    assert.equal(record().consecutiveErrors, 3);
    assert.equal(record().backoffUntil, fires[7]!.toISOString(), "then 7");
    for (let n = 4; n <= 5; n++) await agent.pollFeed("gone");
    assert.equal(record().backoffUntil, fires[15]!.toISOString(), "at most 15 skipped");
    // the agent file points the feed elsewhere: polled at once
    await agent.ledger.update((d) => void (d.feeds[0]!.url = path.join(dir, "old.xml")));
    await tick(fires[0]!);
    assert.equal(record().consecutiveErrors, 1, "the old URL's failures are not the new one's: its first failure is its first");

    // an agent file that now polls more often does not wait for the old schedule's fires
    writeFileSync(file, readFileSync(file, "utf8").replace(schedule, "'*/30 * * * *'"));
    await restart();
    const half = cron.createTask("*/30 * * * *", () => {});
    const soon = half.getNextRuns(17).at(-1)!; // (one more than 16, in case a half hour begins meanwhile)
    await half.destroy();
    await tick(soon);
    assert.equal(record().consecutiveErrors, 2, "polled within 15 skips of the schedule it has now");

    // a good poll ends the backoff
    writeFileSync(path.join(dir, "missing.xml"), readFileSync(feedFile));
    assert.equal((await agent.pollFeed("gone")).added, 2);
    assert.equal(record().backoffUntil, undefined);
    rmSync(path.join(dir, "missing.xml"));
    await tick(new Date());
    assert.equal(record().consecutiveErrors, 1, "polled: nothing to wait for");

    // the ledger cannot be written (a full disk, say): the poll is logged, nothing is thrown
    mkdirSync(path.join(dir, "home", ".ledger.json.tmp"));
    await tick(new Date(Date.parse(record().backoffUntil!)));
    assert.ok(logs.some((m) => /gone: the poll failed: .*EISDIR/.test(m)), logs.join("\n"));
    rmSync(path.join(dir, "home", ".ledger.json.tmp"), { recursive: true });
  } finally {
    await runtime.stop();
    rmSync(dir, { recursive: true });
  }
});

test("a feed item corrected under its guid supersedes the stored one; the correction waits for a bake; a moved feed drops its validators", async () => {
  const { dir, file, feedFile } = writeTestAgent({ feeds: [{ id: "harbor", url: "news.xml", schedule: "0 0 1 1 *" }] });
  const runtime = await Runtime.fromFiles(file);
  try {
    const agent = runtime.agent("tester");
    assert.equal((await agent.pollFeed("harbor")).added, 2);
    const ferry = agent.ledger.items({ text: "ferry" })[0]!;
    await agent.ledger.setItemStatus([ferry.id], "absorbed", { version: "v0001" });
    writeFileSync(feedFile, readFileSync(feedFile, "utf8").replace("The ferry runs at noon.", "The ferry runs at two."));
    assert.equal((await pollSettled(agent, "harbor")).added, 1);
    assert.equal(agent.ledger.item(ferry.id).status, "superseded");
    const fix = agent.ledger.items({ status: "pending", text: "two" });
    assert.deepEqual(fix.map((i) => [i.text, i.source.guid]), [["Quillport opened a ferry: The ferry runs at two.", "h1"]]);
    assert.equal(agent.ledger.items({ text: "Dunmore" })[0]!.status, "pending", "the unchanged item is untouched");
    assert.equal((await agent.pollFeed("harbor")).added, 0);
    // the agent file moves the feed: the old URL's validators are not sent to the new one
    await agent.ledger.update((d) => Object.assign(d.feeds[0]!, { url: "/old/news.xml", etag: '"old"', lastModified: "Mon, 01 Jan 2024 00:00:00 GMT" }));
    assert.equal((await agent.pollFeed("harbor")).added, 0, "seen keys kept");
    assert.deepEqual([agent.ledger.feed("harbor")!.url, agent.ledger.feed("harbor")!.etag], [feedFile, undefined]);
  } finally {
    await runtime.stop();
    rmSync(dir, { recursive: true });
  }
});

test("a feed renamed in the agent file keeps its poll state and items (same URL); a removed one loses its state, never its items", async () => {
  const { dir, file } = writeTestAgent({ feeds: [{ id: "harbor", url: "news.xml", schedule: "0 0 1 1 *" }] });
  const { logs, open } = loggingOpener(file);
  let runtime = await open();
  try {
    let agent = runtime.agent("tester");
    assert.equal((await agent.pollFeed("harbor")).added, 2);
    const texts = () => agent.ledger.data.items.map((i) => `${i.source.feedId} ${i.status} ${i.text}`);
    const before = texts();
    await runtime.stop();
    writeFileSync(file, readFileSync(file, "utf8").replace("id: harbor", "id: harbour"));
    runtime = await open();
    agent = runtime.agent("tester");
    assert.deepEqual(agent.ledger.data.feeds.map((f) => f.id), ["harbour"]);
    assert.deepEqual(texts(), before.map((t) => t.replace(/^harbor /, "harbour ")), "the items follow the new id, nothing else changed");
    assert.ok(logs.includes("feed harbor is now harbour (the same URL): its poll state and its 2 item(s) follow the new id"), logs.join("\n"));
    assert.ok(agent.ledger.feed("harbour")!.seenKeys.length > 0, "seen keys kept");
    // the same news under the new id is not ingested twice
    assert.equal((await agent.pollFeed("harbour")).added, 0);
    assert.equal(agent.ledger.data.items.length, 2);
    await runtime.stop();
    // removed (another feed in its place): the state goes, the items stay
    writeFileSync(file, readFileSync(file, "utf8").replace("id: harbour", "id: other").replace("url: news.xml", "url: other.xml"));
    runtime = await open();
    agent = runtime.agent("tester");
    assert.deepEqual(agent.ledger.data.feeds.map((f) => f.id), ["other"]);
    assert.equal(agent.ledger.data.items.filter((i) => i.source.feedId === "harbour").length, 2);
    assert.ok(logs.includes("feed(s) harbour no longer in the agent file: their poll state is dropped; the 2 item(s) they brought in stay"), logs.join("\n"));
  } finally {
    await runtime.stop();
    rmSync(dir, { recursive: true });
  }
});

test("a removed feed's items stay apart from a later feed given its id with another URL (its corrections, a listing by source); added back with its URL, the feed finds them again", async () => {
  const { dir, file, feedFile } = writeTestAgent();
  // another site whose CMS numbers its guids as the first does
  const otherFile = path.join(dir, "other.xml");
  const other = readFileSync(feedFile, "utf8")
    .replace("Quillport opened a ferry", "Ashby fair opens")
    .replace("The ferry runs at noon.", "The fair runs all week.")
    .replace("Dunmore mills closed", "Ashby bridge repaired")
    .replace("Workers moved to Ashby.", "Carts may cross it again.");
  writeFileSync(otherFile, other);
  const setFeeds = (block: string) => writeFileSync(file, readFileSync(file, "utf8").replace(/^feeds:.*\n(?:[ -].*\n)*/m, `feeds:${block}\n`));
  const { logs, open } = loggingOpener(file);
  let runtime = await open();
  try {
    let agent = runtime.agent("tester");
    assert.equal((await agent.pollFeed("harbor")).added, 2);
    const ferry = agent.ledger.items({ text: "ferry" })[0]!;
    await runtime.stop();
    setFeeds(" []");
    runtime = await open();
    assert.ok(logs.includes("feed(s) harbor no longer in the agent file: their poll state is dropped; the 2 item(s) they brought in stay"), logs.join("\n"));
    await runtime.stop();
    setFeeds('\n  - { id: harbor, url: other.xml, schedule: "0 0 1 1 *" }');
    runtime = await open();
    agent = runtime.agent("tester");
    assert.equal((await agent.pollFeed("harbor")).added, 2);
    // the new feed corrects its h1: the removed feed's h1 is no part of it
    writeFileSync(otherFile, other.replace("The fair runs all week.", "The fair runs two weeks."));
    assert.equal((await pollSettled(agent, "harbor")).added, 1);
    assert.equal(agent.ledger.items({ text: "all week" })[0]!.status, "superseded");
    assert.equal(agent.ledger.item(ferry.id).status, "pending", "another feed's item, under the same id and guid, is left alone");
    assert.deepEqual(agent.ledger.items({ source: "harbor", status: "pending" }).map((i) => i.text).sort(), ["Ashby bridge repaired: Carts may cross it again.", "Ashby fair opens: The fair runs two weeks."]);
    await runtime.stop();
    // renamed, and the removed feed back under its id and URL: its items are its own again
    setFeeds('\n  - { id: ashby, url: other.xml, schedule: "0 0 1 1 *" }\n  - { id: harbor, url: news.xml, schedule: "0 0 1 1 *" }');
    runtime = await open();
    agent = runtime.agent("tester");
    assert.ok(logs.includes("feed harbor is now ashby (the same URL): its poll state and its 3 item(s) follow the new id"), logs.join("\n"));
    assert.deepEqual(agent.ledger.items({ source: "harbor" }).map((i) => i.text).sort(), ["Dunmore mills closed: Workers moved to Ashby.", "Quillport opened a ferry: The ferry runs at noon."]);
    assert.equal((await agent.pollFeed("harbor")).added, 0);
    writeFileSync(feedFile, readFileSync(feedFile, "utf8").replace("The ferry runs at noon.", "The ferry runs at two."));
    assert.equal((await pollSettled(agent, "harbor")).added, 1);
    assert.equal(agent.ledger.item(ferry.id).status, "superseded");
  } finally {
    await runtime.stop();
    rmSync(dir, { recursive: true });
  }
});

test("a feed item with neither guid nor link is known by its title: a settled change supersedes it, and items stored without a key are left alone", async () => {
  const { dir, file, feedFile } = writeTestAgent();
  writeFileSync(feedFile, readFileSync(feedFile, "utf8").replace(/<guid>h\d<\/guid>/g, ""));
  const runtime = await Runtime.fromFiles(file);
  try {
    const agent = runtime.agent("tester");
    // stored before items recorded their feed key: no guid, no link, no feedKey
    const [legacy] = await agent.ledger.addItems([{ kind: "feed", text: "An untagged item from an older kiln.", source: { feedId: "harbor" } }]);
    assert.equal((await agent.pollFeed("harbor")).added, 2);
    const ferry = agent.ledger.items({ text: "ferry" })[0]!;
    assert.equal(ferry.source.feedKey, "title:quillport opened a ferry");
    await agent.ledger.setItemStatus([ferry.id], "absorbed", { version: "v0001" });
    writeFileSync(feedFile, readFileSync(feedFile, "utf8").replace("The ferry runs at noon.", "The ferry runs at two."));
    assert.equal((await pollSettled(agent, "harbor")).added, 1);
    assert.equal(agent.ledger.item(ferry.id).status, "superseded");
    assert.deepEqual(agent.ledger.items({ status: "pending", text: "two" }).map((i) => i.text), ["Quillport opened a ferry: The ferry runs at two."]);
    assert.equal(agent.ledger.items({ text: "Dunmore" })[0]!.status, "pending", "the unchanged item is untouched");
    assert.equal(agent.ledger.item(legacy!.item.id).status, "pending", "an item stored without a key is not what the revision revises");
  } finally {
    await runtime.stop();
    rmSync(dir, { recursive: true });
  }
});

test("an untagged item's revision supersedes the item whose text it replaces, not another story that once had its title alone", async () => {
  const { dir, file, feedFile } = writeTestAgent();
  const feed = (...items: string[]) =>
    writeFileSync(feedFile, `<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>Harbor</title>\n${items.map((t) => `<item><title>Update</title><description>${t}</description></item>`).join("\n")}\n</channel></rss>`);
  const runtime = await Runtime.fromFiles(file);
  try {
    const agent = runtime.agent("tester");
    feed("The bridge is open.");
    assert.equal((await agent.pollFeed("harbor")).added, 1);
    feed("The school is shut.", "The bridge is open.");
    assert.equal((await agent.pollFeed("harbor")).added, 1);
    feed("The school is shut.");
    assert.equal((await agent.pollFeed("harbor")).added, 0);
    const [bridge, school] = ["bridge", "school"].map((w) => agent.ledger.items({ text: w })[0]!);
    await agent.ledger.setItemStatus([bridge!.id], "absorbed", { version: "v0001" });
    feed("The school is shut until Monday.");
    assert.equal((await pollSettled(agent, "harbor")).added, 1);
    assert.equal(agent.ledger.item(school!.id).status, "superseded", "the school's old text is what the revision replaces");
    assert.equal(agent.ledger.item(bridge!.id).status, "absorbed", "the bridge story is another item");
  } finally {
    await runtime.stop();
    rmSync(dir, { recursive: true });
  }
});

test("a feed moved for good is logged once, polled at its new address, and /healthz shows where it lives", async () => {
  const hits: string[] = [];
  const feedServer = http.createServer((req, res) => {
    hits.push(req.url ?? "");
    if (req.url === "/old.xml") return res.writeHead(301, { Location: "/new.xml" }).end();
    res.writeHead(200, { "Content-Type": "application/rss+xml" });
    res.end('<?xml version="1.0"?><rss version="2.0"><channel><title>H</title><item><guid>m1</guid><title>Quay rebuilt</title><description>It took a year.</description></item></channel></rss>');
  });
  await new Promise<void>((resolve) => feedServer.listen(0, "127.0.0.1", resolve));
  const base = `http://127.0.0.1:${(feedServer.address() as AddressInfo).port}`;
  const { dir, file } = writeTestAgent({ feeds: [{ id: "quay", url: `${base}/old.xml`, schedule: "0 0 1 1 *" }] });
  const logs: string[] = [];
  const runtime = await Runtime.fromFiles(file, { events: { onLog: (_a, m) => logs.push(m) } });
  const server = await createServer(runtime, { port: 0 });
  try {
    const agent = runtime.agent("tester");
    assert.equal((await agent.pollFeed("quay")).added, 1);
    assert.equal((await agent.pollFeed("quay")).added, 0);
    assert.deepEqual(hits, ["/old.xml", "/new.xml", "/new.xml"], "the second poll asks the new address directly");
    const moved = logs.filter((m) => /moved permanently/.test(m));
    assert.deepEqual(moved, [`feed quay has moved permanently (301/308) to ${base}/new.xml: put that url in the agent file (until then it is polled there, and the configured url is asked again once a day and whenever the new one fails)`]);
    const health = (await (await fetch(`${server.url}/healthz`)).json()) as { agents: { feeds: { id: string; movedTo?: string }[] }[] };
    assert.equal(health.agents[0]!.feeds[0]!.movedTo, `${base}/new.xml`);
  } finally {
    await server.close();
    await runtime.stop();
    feedServer.close();
    rmSync(dir, { recursive: true });
  }
});

test("two polls of one feed at once (the schedule's and the admin API's) run one after the other, the second from the state the first wrote", async () => {
  const hits: string[] = [];
  let release: () => void = () => {};
  const held = new Promise<void>((resolve) => (release = resolve));
  const feedServer = http.createServer(async (req, res) => {
    hits.push(String(req.headers["if-none-match"] ?? "-"));
    if (hits.length === 1) await held; // the first poll is slow
    if (req.headers["if-none-match"] === '"v1"') return res.writeHead(304).end();
    res.writeHead(200, { "Content-Type": "application/rss+xml", ETag: '"v1"' });
    res.end('<?xml version="1.0"?><rss version="2.0"><channel><title>H</title><item><guid>s1</guid><title>Slow news</title><description>It came late.</description></item></channel></rss>');
  });
  await new Promise<void>((resolve) => feedServer.listen(0, "127.0.0.1", resolve));
  const { dir, file } = writeTestAgent({ feeds: [{ id: "slow", url: `http://127.0.0.1:${(feedServer.address() as AddressInfo).port}/feed.xml`, schedule: "0 0 1 1 *" }] });
  const runtime = await Runtime.fromFiles(file);
  try {
    const agent = runtime.agent("tester");
    const first = agent.pollFeed("slow");
    while (!hits.length) await new Promise((r) => setTimeout(r, 10));
    const second = agent.pollFeed("slow");
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(hits, ["-"], "the second waits for the first");
    release();
    assert.deepEqual([await first, await second], [{ added: 1 }, { added: 0 }]);
    assert.deepEqual(hits, ["-", '"v1"'], "and asks with what the first learned");
  } finally {
    release();
    await runtime.stop();
    feedServer.close();
    rmSync(dir, { recursive: true });
  }
});

test("an item its feed corrects while a bake runs stays superseded when that bake fails", async () => {
  const { dir, file, feedFile } = writeTestAgent();
  const runtime = await Runtime.fromFiles(file);
  try {
    const agent = runtime.agent("tester");
    assert.equal((await agent.pollFeed("harbor")).added, 2);
    const ferry = agent.ledger.items({ text: "ferry" })[0]!;
    const baking = agent.bake("test");
    // the worker is running (it reports progress) and the ferry item is in it
    while (agent.progress === null) await new Promise((r) => setTimeout(r, 10));
    assert.equal(agent.ledger.item(ferry.id).status, "baking");
    writeFileSync(feedFile, readFileSync(feedFile, "utf8").replace("The ferry runs at noon.", "The ferry runs at two."));
    assert.equal((await pollSettled(agent, "harbor")).added, 1);
    assert.equal(agent.ledger.item(ferry.id).status, "superseded");
    await runtime.stop(); // cancels the bake: it fails
    assert.equal((await baking).status, "failed");
    assert.equal(agent.ledger.item(ferry.id).status, "superseded", JSON.stringify(agent.ledger.item(ferry.id).history));
    assert.equal(agent.ledger.items({ text: "Dunmore" })[0]!.status, "pending", "the other item of the failed bake waits for the next");
  } finally {
    await runtime.stop();
    rmSync(dir, { recursive: true });
  }
});

test("an item its feed corrects as a bake starts stays superseded: the bake does not mark it baking again, nor absorb it", async () => {
  const { dir, file } = writeTestAgent();
  const runtime = await Runtime.fromFiles(file);
  try {
    const agent = runtime.agent("tester");
    assert.equal((await agent.pollFeed("harbor")).added, 2);
    const ferry = agent.ledger.items({ text: "ferry" })[0]!;
    // a poll's write landing as soon as the bake's record is: the correction supersedes the ferry item
    // (the soak test saw a scheduled poll and bake of the same minute do this)
    let correction: Promise<unknown> | undefined;
    agent.bakeEvents.once("start", () => {
      correction = agent.ledger.addItems([{ kind: "feed", text: "Quillport opened a ferry: The ferry runs at two.", source: { feedId: "harbor", guid: "h1" }, supersedes: [ferry.id] }]);
    });
    const outcome = await agent.bake("test");
    await correction;
    assert.equal(outcome.status, "promoted", outcome.reasons.join("; "));
    const statuses = agent.ledger.item(ferry.id).history.map((h) => h.status);
    assert.equal(agent.ledger.item(ferry.id).status, "superseded", JSON.stringify(statuses));
    assert.equal(statuses.indexOf("superseded"), statuses.length - 1, `nothing after it was superseded: ${statuses.join(" > ")}`);
    assert.equal(agent.ledger.items({ text: "two" })[0]!.status, "pending", "the correction waits for the next bake");
  } finally {
    await runtime.stop();
    rmSync(dir, { recursive: true });
  }
});

test("a scheduled bake starts after the feed polls of its minute: it bakes a correction they bring, not the text it corrects", async () => {
  const { dir, file, feedFile } = writeTestAgent();
  const runtime = await Runtime.fromFiles(file);
  try {
    const agent = runtime.agent("tester");
    assert.equal((await agent.pollFeed("harbor")).added, 2);
    const ferry = agent.ledger.items({ text: "ferry" })[0]!;
    writeFileSync(feedFile, readFileSync(feedFile, "utf8").replace("The ferry runs at noon.", "The ferry runs at two."));
    // a changed text is taken once it holds for a later poll: the scheduled poll below takes it
    await letChangeSettle(agent, "harbor");
    // the minute's cron timers fire in no set order; here the bake's first, the poll's 20 ms later
    // (the soak saw 12-75 ms)
    const schedules = agent as unknown as { scheduledBake(): Promise<{ status: string; reasons: string[] }>; scheduledPoll(id: string): Promise<void> };
    const baking = schedules.scheduledBake();
    await new Promise((r) => setTimeout(r, 20));
    await schedules.scheduledPoll("harbor");
    const outcome = await baking;
    assert.equal(outcome.status, "promoted", outcome.reasons.join("; "));
    const bake = agent.ledger.data.bakes.at(-1)!;
    const correction = agent.ledger.items({ text: "two" })[0]!;
    assert.equal(agent.ledger.item(ferry.id).status, "superseded");
    assert.ok(!bake.itemIds.includes(ferry.id), "the corrected-away text is not baked");
    assert.ok(bake.itemIds.includes(correction.id), "its correction is");
  } finally {
    await runtime.stop();
    rmSync(dir, { recursive: true });
  }
});

test("checkpoints the ledger does not record are moved aside, never deleted; a missing or null ledger beside checkpoints is refused", async () => {
  const { dir, file } = writeTestAgent();
  const home = path.join(dir, "home");
  try {
    await (await Runtime.fromFiles(file)).stop(); // creates the home and its ledger
    const ledgerFile = path.join(home, "ledger.json");
    const ledgerText = readFileSync(ledgerFile, "utf8");
    mkdirSync(path.join(home, "v0007"));
    writeFileSync(path.join(home, "v0007", "adapter_config.json"), "{}");
    mkdirSync(path.join(home, "v0008.tmp-123-456"));
    const logs: string[] = [];
    await (await Runtime.fromFiles(file, { events: { onLog: (_a, m) => logs.push(m) } })).stop();
    assert.ok(!existsSync(path.join(home, "v0008.tmp-123-456")), "a half-written folder is removed");
    const aside = readdirSync(path.join(home, "orphaned"));
    assert.equal(aside.length, 1);
    assert.match(aside[0]!, /^v0007-/);
    assert.ok(existsSync(path.join(home, "orphaned", aside[0]!, "adapter_config.json")), "the orphan's files are kept");
    assert.ok(logs.some((m) => /moved v0007 to orphaned\/v0007-/.test(m)), logs.join("\n"));

    // the record of what the checkpoints hold is gone: refuse rather than start over them
    mkdirSync(path.join(home, "v0001"));
    rmSync(ledgerFile);
    await assert.rejects(Runtime.fromFiles(file), /ledger\.json is missing but .* holds checkpoints \(v0001\): restore the ledger/);
    assert.ok(existsSync(path.join(home, "v0001")) && !existsSync(ledgerFile), "nothing was created or removed");
    writeFileSync(ledgerFile, "null");
    await assert.rejects(Runtime.fromFiles(file), /not a readable ledger \(it holds no JSON object\)/);
    assert.ok(existsSync(path.join(home, "v0001")));
    writeFileSync(ledgerFile, ledgerText);
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("agents naming the same model share one copy of its weights, each with its own ledger and versions", async () => {
  const { dir, file } = writeTestAgent();
  const second = path.join(dir, "second.yaml");
  writeFileSync(second, readFileSync(file, "utf8").replace("name: tester", "name: other").replace("home: home", "home: home-other"));
  const runtime = await Runtime.fromFiles(dir);
  try {
    const [a, b] = [runtime.agent("tester"), runtime.agent("other")];
    assert.equal(a.model, b.model);
    assert.notEqual(a.ledger.file, b.ledger.file);
    await a.remember("Only the tester knows this.");
    assert.equal(b.ledger.data.items.length, 0);
  } finally {
    await runtime.stop();
    rmSync(dir, { recursive: true });
  }
});

test("two agents whose home: is one folder are refused before either opens it: they would bake, prune and roll back one ledger", async () => {
  const { dir, file } = writeTestAgent();
  writeFileSync(path.join(dir, "second.yaml"), readFileSync(file, "utf8").replace("name: tester", "name: other"));
  try {
    await assert.rejects(Runtime.fromFiles(dir), new RegExp(`agents other and tester both keep their ledger and versions in ${path.join(dir, "home").replace(/[.\\/]/g, "\\$&")} \\(home:\\): give each its own home`));
    assert.ok(!existsSync(path.join(dir, "home")), "neither opened it");
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("an agent whose home is in another agent's version folder is refused, loaded together or apart: the other would move it aside as an orphan checkpoint", async () => {
  const { dir, file } = writeTestAgent(); // tester, home: home
  const second = path.join(dir, "second.yaml");
  writeFileSync(second, readFileSync(file, "utf8").replace("name: tester", "name: other").replace("home: home", "home: home/v0001"));
  const named = (owner: string) => new RegExp(`second\\.yaml: home: .*home/v0001, where agent other keeps its ledger and versions, is a folder named like a version of ${owner} .*home: .*moved into orphaned/ when it starts.*give agent other a home outside it`);
  try {
    await assert.rejects(Runtime.fromFiles(dir), named("agent tester, whose home is"));
    assert.ok(!existsSync(path.join(dir, "home")), "neither opened");
    await (await Runtime.fromFiles(file)).stop();
    await assert.rejects(Runtime.fromFiles(second), named("the agent whose ledger is in"), "tester's ledger.json marks its home");
    // other's state from before the check: tester's start must not sweep it into orphaned/
    mkdirSync(path.join(dir, "home", "v0001"));
    writeFileSync(path.join(dir, "home", "v0001", "ledger.json"), JSON.stringify({ schema: 1, live: null, items: [], versions: [], bakes: [], feeds: [] }));
    await assert.rejects(Runtime.fromFiles(file), /home: .*home, where agent tester keeps its ledger and versions, holds .*v0001, another agent's home \(it holds a ledger\.json\) named like a version of tester/);
    assert.ok(existsSync(path.join(dir, "home", "v0001", "ledger.json")) && !existsSync(path.join(dir, "home", "orphaned")));
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("two agents whose homes are one folder through a symlink are refused too", async () => {
  const { dir, file } = writeTestAgent();
  mkdirSync(path.join(dir, "home"));
  symlinkSync(path.join(dir, "home"), path.join(dir, "alias"));
  writeFileSync(path.join(dir, "second.yaml"), readFileSync(file, "utf8").replace("name: tester", "name: other").replace("home: home", "home: alias"));
  try {
    await assert.rejects(Runtime.fromFiles(dir), /agents (other and tester|tester and other) both keep their ledger and versions in .*: give each its own home/);
    assert.ok(!existsSync(path.join(dir, "home", "ledger.json")), "neither opened it");
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("--agents names an agent file whatever it ends with, or a folder of *.yaml files", () => {
  const { dir, file } = writeTestAgent();
  try {
    const txt = path.join(dir, "agent.txt");
    writeFileSync(txt, readFileSync(file, "utf8"));
    // it failed with "ENOTDIR: not a directory, scandir 'agent.txt'"
    assert.deepEqual(agentFiles(txt), [txt]);
    assert.deepEqual(agentFiles(dir), [file]);
    assert.throws(() => agentFiles(path.join(dir, "nope.yaml")), /nope\.yaml: no such agent file or folder/);
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("an agent whose model cannot be found or loaded is named with its file, and a relative folder says where it was looked for", async () => {
  const { dir, file } = writeTestAgent();
  try {
    writeFileSync(file, readFileSync(file, "utf8").replace("model: model", "model: ./models/mine"));
    // it said only "./models/mine: no such model directory", with no agent file and no folder
    await assert.rejects(Runtime.fromFiles(file), new RegExp(`^Error: ${file.replace(/[.\\/]/g, "\\$&")}: model: \\./models/mine: no such model directory \\(a folder is read relative to the agent file: ${path.join(dir, "models", "mine").replace(/[.\\/]/g, "\\$&")}\\)$`));
    mkdirSync(path.join(dir, "models", "mine"), { recursive: true });
    await assert.rejects(Runtime.fromFiles(file), /test-agent\.yaml: model: .*mine: not a model directory: config\.json is missing/);
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("a bake reply as long as the model's context (within the agent file's 4096) is refused when the agent loads, naming the field, not at every bake", async () => {
  const { file, dir } = writeTestAgent({ bake: { probesPerItem: 1, checkProbes: false, openQuestions: ["hello"], settings: { ...FAST_BAKE, maxReplyTokens: 2048 } } });
  await assert.rejects(Runtime.fromFiles(file), (err: Error) => err.message === `${file}: bake.settings.maxReplyTokens: 2048 leaves no room for a prompt in the model's 2048 positions`);
  assert.equal(existsSync(path.join(dir, "home", "ledger.json")), false, "nothing was written");
  rmSync(dir, { recursive: true });
});

test("agent files with mistakes name the field", () => {
  const { dir, file } = writeTestAgent();
  writeFileSync(file, "name: x\nfeeds:\n  - id: a\n    url: http://x\n    schedule: every minute\n");
  assert.throws(() => loadAgentConfig(file, dir), /feeds\.0\.schedule: not a valid cron expression/);
  writeFileSync(file, "name: x\nbake:\n  settings:\n    lora:\n      targetModules: [qq_proj]\n");
  assert.throws(() => loadAgentConfig(file, dir), /bake\.settings\.lora\.targetModules\.0/);
  writeFileSync(file, "name: x\nunknownKey: 1\n");
  assert.throws(() => loadAgentConfig(file, dir), /unknownKey/);
  // A feed URL that is not one is refused at load, naming the field (not read as a relative file
  // that fails every poll with "no such file").
  for (const [url, problem] of [
    ["htp://example.com/rss", /feeds\.0\.url: unsupported scheme "htp:"/],
    ["feed://example.com/rss", /feeds\.0\.url: unsupported scheme "feed:"/],
    ["'http://'", /feeds\.0\.url: "http:\/\/" is not a valid URL/],
    ["'http://exa mple.com/rss'", /feeds\.0\.url: .* is not a valid URL/],
    ["'file://feeds/x.xml'", /feeds\.0\.url: .* is not a usable file URL/],
  ] as const) {
    writeFileSync(file, `name: x\nfeeds:\n  - id: a\n    url: ${url}\n`);
    assert.throws(() => loadAgentConfig(file, dir), (err: Error) => problem.test(err.message) && err.message.startsWith(file), url);
  }
  writeFileSync(file, "name: x\nfeeds:\n  - { id: a, url: 'HTTPS://Example.com/rss' }\n  - { id: b, url: 'file:///srv/my%20feed.xml' }\n  - { id: c, url: news.xml }\n");
  assert.deepEqual(
    loadAgentConfig(file, dir).feeds.map((f) => f.url),
    ["https://example.com/rss", "/srv/my feed.xml", path.join(path.dirname(file), "news.xml")],
  );
  writeFileSync(file, "name: x\nfeeds:\n  - { id: a, url: http://x/1 }\n  - { id: a, url: http://x/2 }\n");
  assert.throws(() => loadAgentConfig(file, dir), /feeds\.1\.id: "a" is already the id of feeds\.0/);
  // Two ids for one feed: one would take the other's poll state (and its items, in a rename) at
  // random; URLs compare as polled (https://Example.com/rss is https://example.com/rss).
  writeFileSync(file, "name: x\nfeeds:\n  - { id: a, url: http://x/1 }\n  - { id: b, url: 'HTTPS://Example.com/rss' }\n  - { id: c, url: 'https://example.com/rss' }\n");
  assert.throws(() => loadAgentConfig(file, dir), /feeds\.2\.url: "https:\/\/example\.com\/rss" is already the url of feeds\.1 \(id b\); feed c would poll the same feed/);
  writeFileSync(file, "name: x\nfeeds:\n  - { id: a, url: news.xml }\n  - { id: b, url: ./news.xml }\n");
  assert.throws(() => loadAgentConfig(file, dir), /feeds\.1\.url: ".*news\.xml" is already the url of feeds\.0 \(id a\)/);
  // node-cron's optional seconds field would poll a server every second.
  writeFileSync(file, "name: x\nfeeds:\n  - { id: a, url: http://x/1, schedule: '* * * * * *' }\n");
  assert.throws(() => loadAgentConfig(file, dir), /feeds\.0\.schedule: polls more than once a minute/);
  writeFileSync(file, "name: x\nfeeds:\n  - { id: a, url: http://x/1, schedule: '0 */5 * * * *' }\n");
  assert.equal(loadAgentConfig(file, dir).feeds[0]!.schedule, "0 */5 * * * *");
  writeFileSync(file, "name: [unclosed\n");
  assert.throws(() => loadAgentConfig(file, dir), /is not valid YAML \(.*[^:]\)$/);
  // an empty file said "(root): Invalid input: expected object, received null"
  for (const text of ["", "# nothing yet\n"]) {
    writeFileSync(file, text);
    assert.throws(() => loadAgentConfig(file, dir), new RegExp(`^AgentConfigError: ${file.replace(/[.\\/]/g, "\\$&")}: is empty: an agent file needs at least a name:`));
  }
  // feeds whose entries are all commented out read as none (it said "feeds: expected array, received null")
  writeFileSync(file, "name: x\nfeeds:\n  # - { id: a, url: http://x/1 }\n");
  assert.deepEqual(loadAgentConfig(file, dir).feeds, []);
  // a feed id is part of the admin API's URLs (…/feeds/:id/poll); sizes past any agent's are refused, naming the range
  for (const id of ["town gazette", "a/b", "../x", "-x", "caf\u00e9"]) {
    writeFileSync(file, `name: x\nfeeds:\n  - { id: ${JSON.stringify(id)}, url: http://x/1 }\n`);
    assert.throws(() => loadAgentConfig(file, dir), /feeds\.0\.id: letters, digits, - and _ only, starting with a letter or digit/, id);
  }
  writeFileSync(file, "name: x\nbake:\n  settings:\n    trajectories: 100000\n    lora: { r: 100000 }\n");
  assert.throws(() => loadAgentConfig(file, dir), /bake\.settings\.trajectories: a whole number from 1 to 2048; bake\.settings\.lora\.r: a whole number from 1 to 512$/);
  writeFileSync(file, "name: x\nbake:\n  settings:\n    trajectories: 0\n    lora: { r: 2.5 }\n");
  assert.throws(() => loadAgentConfig(file, dir), /bake\.settings\.trajectories: a whole number from 1 to 2048; bake\.settings\.lora\.r: a whole number from 1 to 512$/);
  // every count and size has an upper bound too, named with its range (epochs: 1e9 ran a bake for good)
  writeFileSync(file, "name: x\nbake:\n  settings:\n    epochs: 1000000000\n    maxReplyTokens: 100000\n    learningRate: 10\n    kl: { kind: topk, k: 50000 }\n");
  assert.throws(
    () => loadAgentConfig(file, dir),
    /bake\.settings\.maxReplyTokens: a whole number from 1 to 4096; bake\.settings\.learningRate: a number above 0, at most 1; bake\.settings\.epochs: a whole number from 1 to 100; bake\.settings\.kl\.k: a whole number from 1 to 1024$/,
  );
  writeFileSync(file, "name: x\nfeeds:\n  - { id: a, url: http://x/1, maxItems: 1000000, maxRevisionsPerDay: 100000 }\nbake:\n  maxItems: 100000\nreplay: 1000000\nkeepVersions: 100000\nforgetNewsAfterDays: 1000000\n");
  assert.throws(
    () => loadAgentConfig(file, dir),
    /feeds\.0\.maxItems: a whole number from 1 to 1000; feeds\.0\.maxRevisionsPerDay: a whole number from 1 to 1440; bake\.maxItems: a whole number from 1 to 512; replay: a whole number from 0 to 1000; forgetNewsAfterDays: a number above 0, at most 3650; keepVersions: a whole number from 1 to 100$/,
  );
  writeFileSync(file, "name: x\nbake:\n  settings: { epochs: 100, maxReplyTokens: 4096, temperature: 5, learningRate: 1, batchSize: 512, patience: 100 }\n");
  assert.equal(loadAgentConfig(file, dir).bake.settings.epochs, 100);
  writeFileSync(file, "name: x\nfeeds:\n  - { id: Town_Gazette-2, url: http://x/1 }\nbake:\n  settings:\n    trajectories: 2048\n    lora: { r: 512 }\n");
  assert.equal(loadAgentConfig(file, dir).bake.settings.lora?.r, 512);
  rmSync(dir, { recursive: true });
});

test("one bake at a time across a runtime's agents: the second waits for the first to end", async () => {
  const { dir, file } = writeTestAgent();
  // a second agent beside the first, on the same model and feed, with its own home
  writeFileSync(path.join(dir, "second.yaml"), readFileSync(file, "utf8").replace("name: tester", "name: second").replace("home: home", "home: home2"));
  const runtime = await Runtime.fromFiles(dir);
  try {
    const events: string[] = [];
    for (const name of ["tester", "second"]) {
      const agent = runtime.agent(name);
      agent.bakeEvents.on("start", () => events.push(`${name} start`));
      agent.bakeEvents.on("end", () => events.push(`${name} end`));
      await agent.pollAllFeeds();
    }
    const [a, b] = await Promise.all([runtime.agent("tester").bake("test"), runtime.agent("second").bake("test")]);
    assert.equal(a.status, "promoted", a.reasons.join("; "));
    assert.equal(b.status, "promoted", b.reasons.join("; "));
    assert.deepEqual(events, ["tester start", "tester end", "second start", "second end"]);
  } finally {
    await runtime.stop();
    rmSync(dir, { recursive: true });
  }
});

/** The test agent and a second beside it (its own home) whose bakes run longer; both removed after `body`. */
async function withSlowerSecondAgent(body: (t: { tester: Agent; second: Agent }) => Promise<void>): Promise<void> {
  const { dir, file } = writeTestAgent({ feeds: [] });
  writeFileSync(path.join(dir, "second.yaml"), readFileSync(file, "utf8").replace("name: tester", "name: second").replace("home: home", "home: home2").replace("epochs: 6", "epochs: 40").replace("patience: 6", "patience: 40"));
  const runtime = await Runtime.fromFiles(dir);
  try {
    await body({ tester: runtime.agent("tester"), second: runtime.agent("second") });
  } finally {
    await runtime.stop();
    rmSync(dir, { recursive: true });
  }
}

test("a retraction does not wait for another agent's bake: its own bake, waiting for that turn, gives the turn up", () =>
  withSlowerSecondAgent(async ({ tester, second }) => {
    const [held] = await bakeTold(tester, "The harbor fee is nine coins."); // v0001 holds it
    const { item: ferry } = await tester.remember("The ferry leaves at noon.");
    await second.remember("The lighthouse keeper is Mira Tolle.");
    const other = second.bake("test");
    await new Promise<void>((resolve) => second.bakeEvents.once("progress", () => resolve()));
    const waiting = tester.bake("test"); // a rolling bake from v0001: it waits for second's turn
    const { work, outOfService } = await retractedOutOfService(tester, [held!.id], "test");
    assert.ok(outOfService, "the weights holding it left service");
    assert.ok(second.isBaking, "before the other agent's bake ended");
    assert.equal(tester.live.version, null);
    assert.match((await waiting).reasons[0]!, /^bake cancelled: retraction asked for/);
    assert.equal((await other).status, "promoted");
    const done = await work;
    assert.equal(done.status, "promoted", done.reasons.join("; "));
    assert.deepEqual(tester.ledger.version(tester.live.version!).items, [ferry.id], "the rebuild baked what the bake given up would have");
    assert.deepEqual(tester.ledger.data.bakes.map((b) => [b.trigger, b.status]), [["test", "promoted"], ["retraction", "promoted"]], "the bake given up never started");
  }));

test("an item nothing holds, retracted while another retraction's rebuild waits for another agent's turn: marked at once, and that rebuild is not given up", () =>
  withSlowerSecondAgent(async ({ tester, second }) => {
    const [held] = await bakeTold(tester, "The harbor fee is nine coins."); // v0001 holds it
    const [kept] = await bakeTold(tester, "The lighthouse keeper is Mira Tolle."); // v0002: held, kept
    await second.remember("The ferry leaves at noon.");
    const other = second.bake("test");
    await new Promise<void>((resolve) => second.bakeEvents.once("progress", () => resolve()));
    const first = await retractedOutOfService(tester, [held!.id], "test"); // its rebuild waits for second's turn
    assert.ok(first.outOfService);
    assert.ok(tester.isBaking && tester.isRetracting, "the rebuild waits for its turn");
    const p = await retractedAtOnce(tester, "The mill closes at dusk."); // in no bake (none chose its items yet), in no weights
    assert.ok(second.isBaking, "answered before the other agent's bake ended");
    assert.equal((await other).status, "promoted");
    const done = await first.work;
    assert.equal(done.status, "promoted", `the rebuild waiting for its turn was not given up: ${done.reasons.join("; ")}`);
    assert.deepEqual(tester.ledger.version(tester.live.version!).items, [kept!.id]);
    assert.deepEqual(tester.ledger.data.bakes.map((b) => [b.trigger, b.status]), [["test", "promoted"], ["test", "promoted"], ["retraction", "promoted"]]);
  }));

test("news older than forgetNewsAfterDays expires when a bake starts: never baked, no longer replayed or held, and told again it is new", async () => {
  const { dir, file, feedFile } = writeTestAgent({ forgetNewsAfterDays: 7 });
  const daysAgo = (n: number) => new Date(Date.now() - n * 86_400_000).toUTCString();
  writeFileSync(
    feedFile,
    `<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>Harbor</title>
<item><guid>fresh</guid><title>Quillport opened a ferry</title><description>The ferry runs at noon.</description><pubDate>${daysAgo(1)}</pubDate></item>
<item><guid>stale</guid><title>Dunmore mills closed</title><description>Workers moved to Ashby.</description><pubDate>${daysAgo(30)}</pubDate></item>
</channel></rss>`,
  );
  const runtime = await Runtime.fromFiles(file);
  try {
    const agent = runtime.agent("tester");
    assert.equal((await agent.pollFeed("harbor")).added, 2);
    const { item: told } = await agent.remember("The harbor fee is nine coins.");
    const first = await agent.bake("test");
    assert.equal(first.status, "promoted", first.reasons.join("; "));
    const stale = agent.ledger.items({ text: "Dunmore" })[0]!;
    assert.equal(stale.status, "expired");
    assert.equal(stale.history.at(-1)!.reason, "news older than forgetNewsAfterDays 7");
    assert.ok(!agent.ledger.data.bakes.at(-1)!.itemIds.includes(stale.id), "expired news is not baked");
    assert.equal(agent.ledger.item(told.id).status, "absorbed", "what a user told is not news: it does not expire");

    // an absorbed item whose news has aged leaves the replay and the next version
    const fresh = agent.ledger.items({ text: "Quillport" })[0]!;
    assert.equal(fresh.status, "absorbed");
    const second = await bakeAfterNewsAged(agent, fresh.id);
    assert.ok(!agent.ledger.data.bakes.at(-1)!.replayIds.includes(fresh.id));
    assert.ok(!agent.ledger.version(second.version!).items.includes(fresh.id), "the new version is not expected to hold it");
    assert.ok(agent.ledger.version(second.version!).items.includes(told.id), "the rest is kept");

    // the same text, told again, is new news
    assert.equal((await agent.remember(stale.text)).added, true);

    // once compaction archives the expired item (no version lists it), there is nothing to retract
    await agent.ledger.compact(() => true, { ...LEDGER_LIMITS, inactiveItems: 0 });
    assert.ok(agent.ledger.item(stale.id).archivedAt);
    assert.equal(agent.ledger.item(fresh.id).archivedAt, undefined, "v0001, still on disk, lists it: it stays");
    const nothing = await agent.retract([stale.id]);
    assert.equal(nothing.status, "skipped");
    assert.match(nothing.reasons[0]!, /item k_\w+ is archived \(expired since .*\) and the live weights do not hold it: nothing to retract/);
  } finally {
    await runtime.stop();
    rmSync(dir, { recursive: true });
  }
});

test("while a server's Retry-After holds, scheduled polls neither ask nor log again; a manual poll says why it did not ask", async () => {
  let requests = 0;
  const server = http.createServer((_req, res) => {
    requests++;
    res.writeHead(503, { "retry-after": "3600" }).end("busy");
  });
  await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/feed.xml`;
  const schedule = "* * * * *";
  const { dir, file } = writeTestAgent({ feeds: [{ id: "busy", url, schedule }] });
  const logs: string[] = [];
  const runtime = await Runtime.fromFiles(file, { events: { onLog: (_a, m) => logs.push(m) } });
  try {
    const agent = runtime.agent("tester");
    const tick = (at: Date) => (agent as unknown as { scheduledPoll(id: string, at: Date): Promise<void> }).scheduledPoll("busy", at);
    const probe = cron.createTask(schedule, () => {});
    const fires = probe.getNextRuns(30);
    await probe.destroy();
    await tick(new Date());
    assert.equal(requests, 1);
    const said = logs.filter((m) => m.includes("busy")).length;
    assert.ok(said >= 1, logs.join("\n"));
    // past the one-failure backoff, still inside the hour the server asked for
    for (const k of [5, 10, 20]) await tick(fires[k]!);
    assert.equal(requests, 1, "nothing asked while Retry-After holds");
    assert.equal(logs.filter((m) => m.includes("busy")).length, said, `nothing logged again:\n${logs.join("\n")}`);
    const manual = await agent.pollFeed("busy");
    assert.match(manual.error!, /not polled, the server asked to wait until .* \(Retry-After\)/);
    assert.equal(requests, 1);
  } finally {
    await runtime.stop();
    server.close();
    rmSync(dir, { recursive: true });
  }
});

test("retracting expired news the live lineage absorbed rebuilds (versions stop listing it, the adapter may still hold it), even once it is archived", async () => {
  await withTester({ forgetNewsAfterDays: 7 }, async ({ agent }) => {
    await agent.pollFeed("harbor");
    assert.equal((await agent.bake("test")).status, "promoted");
    const ferry = agent.ledger.items({ text: "Quillport" })[0]!;
    assert.equal(ferry.absorbedBy, "v0001");
    // its news ages past the window; the next bake expires it and its version no longer lists it
    const second = await bakeAfterNewsAged(agent, ferry.id);
    assert.ok(!agent.ledger.version(second.version!).items.includes(ferry.id));
    // v0001 retired and its item list compacted away, as after many bakes: nothing lists the item
    await agent.ledger.update((d) => void (d.versions.find((v) => v.id === "v0001")!.status = "retired"));
    await agent.ledger.compact(() => false, { ...LEDGER_LIMITS, inactiveItems: 0, deadVersionItemLists: 0 });
    assert.ok(agent.ledger.item(ferry.id).archivedAt, "archived");

    const rebuilt = await agent.retract([ferry.id]);
    assert.notEqual(rebuilt.status, "skipped", rebuilt.reasons.join("; "));
    assert.equal(agent.ledger.item(ferry.id).status, "retracted");
    assert.equal(agent.ledger.item(ferry.id).archivedAt, undefined, "back in the ledger, marked retracted");
    assert.equal(agent.ledger.data.bakes.at(-1)!.trigger, "retraction");
  });
});

test("a later round of the same turn (the request ends with a tool's result) captures nothing again: only a request whose last message is the user's is read for facts", async () => {
  const { dir, file } = writeTestAgent({ capture: "rules" });
  const runtime = await Runtime.fromFiles(file);
  try {
    const said = "My name is Ada and I live in Quillport.";
    const run = async (messages: ChatMessage[]) => {
      const it = runtime.chat("tester", { messages, options: { maxTokens: 2 } });
      for (let r = await it.next(); ; r = await it.next()) if (r.done) return r.value;
    };
    assert.equal((await run([{ role: "user", content: said }])).captured.length, 2);
    const agent = runtime.agent("tester");
    const ada = agent.ledger.items({ text: "Ada" })[0]!;
    await agent.retract([ada.id], "the user took it back");
    const call = { id: "call_1", type: "function" as const, function: { name: "lookup", arguments: { q: "Quillport" } } };
    const round = await run([{ role: "user", content: said }, { role: "assistant", content: "", tool_calls: [call] }, { role: "tool", tool_call_id: "call_1", name: "lookup", content: "a harbor town" }]);
    assert.deepEqual(round.captured, []);
    assert.equal(agent.ledger.item(ada.id).status, "retracted");
    assert.deepEqual(agent.ledger.items({ status: "pending" }).map((i) => i.text), ["The user lives in Quillport."], "the retracted fact was not told again");
  } finally {
    await runtime.stop();
    rmSync(dir, { recursive: true });
  }
});

test("chat's \"forget ...\" of expired news the live lineage absorbed says the weights are rebuilt without it, not that it was never baked", async () => {
  await withTester({ forgetNewsAfterDays: 7 }, async ({ agent, runtime }) => {
    await agent.pollFeed("harbor");
    assert.equal((await agent.bake("test")).status, "promoted");
    const ferry = agent.ledger.items({ text: "Quillport" })[0]!;
    await bakeAfterNewsAged(agent, ferry.id);
    const it = runtime.chat("tester", { messages: [{ role: "user", content: "forget the Quillport ferry" }] });
    let text = "";
    for (let r = await it.next(); !r.done; r = await it.next()) text += r.value.text;
    assert.match(text, /^Forgetting 1 item\(s\) matching "the Quillport ferry": I answer from weights without them now/);
  });
});

/** A waiting item as bakeOrder reads it: its kind, when it was stored (and its feed date), its statuses so far. */
const orderItem = (id: string, kind: Item["kind"], when: { stored: string; published?: string }, ...statuses: Item["status"][]): Item =>
  ({ id, kind, createdAt: when.stored, source: when.published ? { publishedAt: when.published } : {}, history: statuses.map((status) => ({ at: "", status })) }) as Item;

test("bake order: what people told first, then news never absorbed (newest first), then what a promoted bake lost, then what the last bake was rejected on", () => {
  const item = orderItem;
  const monday = { stored: "2026-03-02T08:00:00Z" };
  const waiting = [
    item("lost1", "feed", monday, "pending", "baking", "absorbed", "pending"),
    item("rej", "feed", monday, "pending", "baking", "pending"),
    item("news-mon", "feed", { stored: "2026-03-04T08:00:00Z", published: "2026-03-02T07:00:00Z" }, "pending"), // stored late, published first: its feed date counts
    item("told1", "conversation", { stored: "2026-03-01T08:00:00Z" }, "pending"),
    item("news-wed", "feed", { stored: "2026-03-04T08:00:00Z" }, "pending"),
    item("lost2", "feed", monday, "absorbed", "pending"),
    item("news-tue", "feed", { stored: "2026-03-03T08:00:00Z" }, "pending"),
    item("told2", "manual", { stored: "2026-03-05T08:00:00Z" }, "pending"),
    // one poll of a feed without dates: stored together, in the feed's order (newest first), which stays
    item("poll-a", "feed", { stored: "2026-03-04T09:00:00Z" }, "pending"),
    item("poll-b", "feed", { stored: "2026-03-04T09:00:00Z" }, "pending"),
  ];
  assert.deepEqual(bakeOrder(waiting, new Set(["rej"])).map((i) => i.id), ["told1", "told2", "poll-a", "poll-b", "news-wed", "news-tue", "news-mon", "lost1", "lost2", "rej"]);
  // a lost item (or a told one) the last bake was rejected on goes last too; "rej" is news again
  // (stored Monday 08:00, after news-mon's feed date)
  assert.deepEqual(bakeOrder(waiting, new Set(["lost1", "told1"])).map((i) => i.id), ["told2", "poll-a", "poll-b", "news-wed", "news-tue", "rej", "news-mon", "lost2", "lost1", "told1"]);
});

test("bake order: told items take at most half of a bake while news waits, and the places the other kind leaves", () => {
  const at = (n: number) => ({ stored: `2026-03-${String(n).padStart(2, "0")}T08:00:00Z` });
  const told = Array.from({ length: 10 }, (_, n) => orderItem(`told${n}`, "conversation", at(1 + n), "pending"));
  const news = Array.from({ length: 10 }, (_, n) => orderItem(`news${n}`, "feed", at(1 + n), "pending"));
  const first = (waiting: Item[], maxItems: number) => bakeOrder(waiting, new Set(), maxItems).slice(0, maxItems).map((i) => i.id);
  // a chat agent told many things: half its bake is still news, newest first
  assert.deepEqual(first([...told, ...news], 8), ["told0", "told1", "told2", "told3", "news9", "news8", "news7", "news6"]);
  assert.deepEqual(first([...told, ...news], 7), ["told0", "told1", "told2", "told3", "news9", "news8", "news7"], "an odd bake gives told items the extra place");
  // few told items: all of them, news fills the rest; little news: told items fill the rest
  assert.deepEqual(first([...told.slice(0, 2), ...news], 8), ["told0", "told1", "news9", "news8", "news7", "news6", "news5", "news4"]);
  assert.deepEqual(first([...told, news[0]!], 8), ["told0", "told1", "told2", "told3", "told4", "told5", "told6", "news0"]);
  // the rest keeps its order after the bake's places
  assert.deepEqual(bakeOrder([...told.slice(0, 6), ...news.slice(0, 3)], new Set(), 4).map((i) => i.id), ["told0", "told1", "news2", "news1", "told2", "told3", "told4", "told5", "news0"]);
});

test("bake order: lost items take at most a quarter of a bake while news waits, and the places news leaves", () => {
  const at = (n: number) => ({ stored: `2026-03-${String(n).padStart(2, "0")}T08:00:00Z` });
  const news = Array.from({ length: 10 }, (_, n) => orderItem(`news${n}`, "feed", at(10 + n), "pending"));
  const lost = Array.from({ length: 6 }, (_, n) => orderItem(`lost${n}`, "feed", at(1 + n), "absorbed", "pending"));
  const told = Array.from({ length: 6 }, (_, n) => orderItem(`told${n}`, "conversation", at(1 + n), "pending"));
  const first = (waiting: Item[], maxItems: number) => bakeOrder(waiting, new Set(), maxItems).slice(0, maxItems).map((i) => i.id);
  // a busy news agent: a quarter of each bake learns again what it lost
  assert.deepEqual(first([...lost, ...news], 8), ["news9", "news8", "news7", "news6", "news5", "news4", "lost0", "lost1"]);
  // told, news and lost together: half, the rest, a quarter
  assert.deepEqual(first([...told, ...lost, ...news], 8), ["told0", "told1", "told2", "told3", "news9", "news8", "lost0", "lost1"]);
  // little news: told items take what it leaves, then lost ones
  assert.deepEqual(first([...told.slice(0, 2), ...lost, news[0]!], 8), ["told0", "told1", "news0", "lost0", "lost1", "lost2", "lost3", "lost4"]);
  // no news waiting: the plain order (told, then lost)
  assert.deepEqual(first([...told.slice(0, 2), ...lost], 4), ["told0", "told1", "lost0", "lost1"]);
});

test("bake order: with few places (bake.maxItems 2, 3, 5) news waiting still gets one beside told and lost items; nothing is dropped or taken twice", () => {
  const at = (n: number) => ({ stored: `2026-03-${String(n).padStart(2, "0")}T08:00:00Z` });
  const make = (prefix: string, n: number, kind: Item["kind"], ...statuses: Item["status"][]) => Array.from({ length: n }, (_, k) => orderItem(`${prefix}${k}`, kind, at(1 + k), ...statuses));
  for (let max = 1; max <= 12; max++) {
    for (const [t, n, l, r] of [[0, 0, 0, 0], [6, 6, 6, 2], [6, 1, 6, 0], [0, 6, 6, 1], [6, 6, 0, 0], [1, 6, 1, 3], [0, 1, 0, 0], [2, 0, 3, 1]] as const) {
      const waiting = [...make("told", t, "conversation", "pending"), ...make("news", n, "feed", "pending"), ...make("lost", l, "feed", "absorbed", "pending"), ...make("rej", r, "feed", "pending")];
      const rejected = new Set(waiting.filter((i) => i.id.startsWith("rej")).map((i) => i.id));
      const order = bakeOrder(waiting, rejected, max).map((i) => i.id);
      const where = `maxItems ${max}, told ${t}, news ${n}, lost ${l}, rejected ${r}: ${order.join(" ")}`;
      assert.deepEqual([...order].sort(), waiting.map((i) => i.id).sort(), `every item once (${where})`);
      const first = order.slice(0, max);
      const count = (prefix: string) => first.filter((id) => id.startsWith(prefix)).length;
      if (n && max >= 2) assert.ok(count("news") >= 1, `news gets a place (${where})`);
      if (n > count("news")) assert.ok(count("lost") <= Math.ceil(max / 4) && count("told") <= Math.ceil(max / 2), `shares while news waits (${where})`);
      if (r && t + n + l >= max) assert.equal(count("rej"), 0, `rejected last (${where})`);
    }
  }
});

test("replay: the items that a rejected bake among the last three lost come first, on top of the usual share in turn", () => {
  // ten held items; v0001 (rejected) lost k4; v0002 went live; v0003 (rejected) lost k2 and k5; v0004 failed; v0005 (rejected) lost k7
  const item = (n: number, scores: [string, number][] = []): Item =>
    ({ id: `k${n}`, updatedAt: `2026-01-01T00:00:0${n}Z`, scores: scores.map(([version, unprompted]) => ({ version, unprompted, prompted: 1 })) }) as Item;
  const held = [
    item(0),
    item(1, [["v0003", 1]]),
    item(2, [["v0003", 0]]),
    item(3),
    item(4, [["v0001", 0]]), // lost by a bake four finished bakes ago: not at risk now
    item(5, [["v0003", 0.5]]),
    item(6),
    item(7, [["v0005", 0]]),
    item(8),
    item(9),
  ];
  const bake = (version: string, status: BakeRun["status"], replayIds: string[] = []): BakeRun => ({ id: `b${version}`, startedAt: "", status, trigger: "schedule", parent: null, itemIds: [], replayIds, version });
  const bakes = [bake("v0001", "rejected"), bake("v0002", "promoted", ["k0", "k1"]), bake("v0003", "rejected", ["k3"]), bake("v0004", "failed"), bake("v0005", "rejected")];
  const { replay, atRisk } = chooseReplay(held, 3, bakes, 1);
  assert.equal(atRisk, 3);
  assert.deepEqual(replay.map((i) => i.id), ["k2", "k5", "k7", "k4", "k6", "k8"], "the lost ones, then the three least replayed, oldest first");
  // a promotion does not end it: the next bake would forget the same items again
  assert.equal(chooseReplay(held, 3, [...bakes, bake("v0006", "promoted")], 1).atRisk, 3);
  assert.equal(chooseReplay(held, 3, [...bakes, bake("v0006", "promoted"), bake("v0007", "promoted")], 1).atRisk, 1, "k7 alone");
  assert.equal(chooseReplay(held, 3, [...bakes, ...["v0006", "v0007", "v0008"].map((v) => bake(v, "promoted"))], 1).atRisk, 0);
});

test("a rejected bake whose unreplayed items fell below the bar on their own says the replay is too small; at-risk replays grow the trajectories", () => {
  const items = ["a", "b", "c", "d"].map((id) => ({ id }) as Item);
  const gate = { itemPass: 0.5, minRetention: 0.6 };
  const scores = { a: { unprompted: 0 }, b: { unprompted: 0.4 }, c: { unprompted: 1 }, d: { unprompted: 1 } };
  assert.equal(
    replayAdvice(items, scores, gate, 10, 50),
    "lost 2 of the 4 held item(s) it checked and did not replay (replay 10 of 50 held): the next bake replays them, but a larger replay (or fewer bake.maxItems) is what keeps the rest",
  );
  assert.equal(replayAdvice(items, { ...scores, b: { unprompted: 1 } }, gate, 10, 50), undefined, "3 of 4 kept: the replay is not the problem");
  assert.equal(replayAdvice([], scores, gate, 10, 50), undefined);
  // 20 new items and 10 replayed were what 96 trajectories were for; 30 replayed: 160
  assert.equal(scaledTrajectories(96, 20, 30, 10), 160);
  assert.equal(scaledTrajectories(96, 20, 10, 10), 96);
  assert.equal(scaledTrajectories(96, 0, 3, 0), 288, "a bake of replays alone");
  assert.equal(scaledTrajectories(96, 1, 40, 0), 384, "at most 4 times");
  // an agent file that sets no trajectories: 4 per item carried, at least the default 64
  assert.equal(sizedTrajectories(40), 160);
  assert.equal(sizedTrajectories(3), 64);
});

test("pruning never deletes a version folder outside the agent's home (a ledger copied alone still names another home's versions)", async () => {
  const { dir, file } = writeTestAgent({ feeds: [], home: "a" });
  try {
    let runtime = await Runtime.fromFiles(file);
    let agent = runtime.agent("tester");
    for (const fact of ["The lighthouse keeper is Mira Tolle.", "The harbor fee is nine coins.", "The mill wheel is blue."]) {
      await agent.remember(fact);
      assert.equal((await agent.bake("test")).status, "promoted");
    }
    await runtime.stop();
    // agent b starts from a copy of a's ledger alone: its records still name a's folders, there and in use
    mkdirSync(path.join(dir, "b"));
    writeFileSync(path.join(dir, "b", "ledger.json"), readFileSync(path.join(dir, "a", "ledger.json")));
    writeFileSync(file, readFileSync(file, "utf8").replace("home: a", "home: b"));
    const logs: string[] = [];
    runtime = await Runtime.fromFiles(file, { events: { onLog: (_a, m) => logs.push(m) } });
    agent = runtime.agent("tester");
    await agent.remember("The ferry leaves at noon.");
    assert.equal((await agent.bake("test")).status, "promoted");
    // keepVersions 2: v0001 is past it (retired for b), but its folder is a's, not b's
    assert.equal(agent.ledger.version("v0001").status, "retired");
    assert.ok(existsSync(path.join(dir, "a", "v0001")), "a's version folder was deleted by b's pruning");
    assert.ok(logs.some((m) => m.includes("v0001") && m.includes("outside")), logs.join("\n"));
    await runtime.stop();
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("a retraction's rebuild that did not finish, the clean version unloadable: the base model goes live, never the weights holding the retracted item", async () => {
  const { dir, file } = writeTestAgent({ feeds: [] });
  try {
    let runtime = await Runtime.fromFiles(file);
    const agent = runtime.agent("tester");
    const [keep] = await bakeTold(agent, "The lighthouse keeper is Mira Tolle.");
    const [drop] = await bakeTold(agent, "The harbor fee is nine coins.");
    assert.deepEqual(agent.ledger.version("v0001").items, [keep.id]);
    assert.ok(agent.ledger.version("v0002").items.includes(drop.id));
    await runtime.stop();
    editLedger(dir, (data) => {
      data.items.find((i) => i.id === drop.id)!.status = "retracted";
    });
    writeFileSync(path.join(dir, "home", "v0001", "adapter_model.safetensors"), "damaged");
    const logs: string[] = [];
    runtime = await Runtime.fromFiles(file, { events: { onLog: (_a, m) => logs.push(m) } });
    const again = runtime.agent("tester");
    assert.equal(again.live.version, null, "v0002 holds the retracted item: it must not answer");
    assert.equal(again.ledger.data.live, null);
    assert.equal(again.ledger.item(keep.id).status, "pending", "baked again by the next bake");
    assert.ok(logs.some((m) => m.includes("v0001") && m.includes("could not be loaded")), logs.join("\n"));
    await runtime.stop();
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("verify asks the live weights, a stored version's or the base model's, and the base model the same probes beside them", async () => {
  await withTester({ feeds: [] }, async ({ agent }) => {
    const [a] = await bakeTold(agent, "The lighthouse keeper is Mira Tolle."); // v0001
    const [b] = await bakeTold(agent, "The harbor fee is nine coins."); // v0002, live
    const live = await agent.verify();
    assert.equal(live.version, "v0002");
    assert.deepEqual(live.items.map((i) => i.id).sort(), [a!.id, b!.id].sort());
    const onBase = await agent.verify([a!.id, b!.id], { version: "base" });
    assert.equal(onBase.weights.adapter, null);
    assert.equal(onBase.baseline, undefined, "asking the base model, there is nothing beside it to ask");
    for (const i of live.items) {
      const base = onBase.items.find((x) => x.id === i.id)!;
      assert.deepEqual(i.baseline, { held: base.held, passed: base.probes.filter((p) => p.passed).length }, "the baseline is the base model's own answers");
    }
    assert.equal(live.baseline!.held, onBase.held);
    const older = await agent.verify([a!.id], { version: "v0001", baseline: false });
    assert.equal(older.version, "v0001");
    assert.match(older.weights.adapter!.file, /v0001[/\\]adapter_model\.safetensors$/);
    assert.equal(older.items[0]!.baseline, undefined);
    assert.equal(agent.live.version, "v0002", "asking a stored version changes nothing live");
    await assert.rejects(agent.verify([], { version: "v0009" }), /no version v0009/);
  });
});

test("a live version that fails to load on start gives way to the newest kept version that loads, else the base model, and the agent goes on baking", async () => {
  const { dir, file } = writeTestAgent({ feeds: [] });
  try {
    let runtime = await Runtime.fromFiles(file);
    const [keeper] = await bakeTold(runtime.agent("tester"), "The lighthouse keeper is Mira Tolle."); // v0001
    const [fee] = await bakeTold(runtime.agent("tester"), "The harbor fee is nine coins."); // v0002, live
    await runtime.stop();
    writeFileSync(path.join(dir, "home", "v0002", "adapter_model.safetensors"), "damaged");
    const logs: string[] = [];
    runtime = await Runtime.fromFiles(file, { events: { onLog: (_a, m) => logs.push(m) } });
    const server = await createServer(runtime, { port: 0 });
    try {
      const agent = runtime.agent("tester");
      // it served the base model and rolling bakes failed schedule after schedule until a person rolled back
      assert.equal(agent.live.version, "v0001");
      assert.equal(agent.ledger.data.live, "v0001", "the switch is recorded");
      const health = ((await (await fetch(`${server.url}/healthz`)).json()) as { agents: { live: string; problem?: string }[] }).agents[0]!;
      assert.deepEqual([health.live, health.problem], ["v0001", undefined]);
      assert.ok(
        logs.some((m) => /^live version v0002 could not be loaded \(.*\): v0001 is live instead; v0002 stays in .*v0002, and what v0001 does not hold is baked again$/.test(m)),
        logs.join("\n"),
      );
      assert.ok(existsSync(path.join(dir, "home", "v0002", "adapter_model.safetensors")), "the damaged version is left to look at");
      assert.deepEqual([keeper, fee].map((i) => agent.ledger.item(i!.id).status), ["absorbed", "pending"]);
      const again = await agent.bake("schedule");
      assert.equal(again.status, "promoted", again.reasons.join("; "));
      assert.equal(agent.ledger.item(fee!.id).status, "absorbed");
    } finally {
      await server.close();
      await runtime.stop();
    }
    // every kept version damaged too, and the live one's folder removed by hand: the base model, recorded
    writeFileSync(path.join(dir, "home", "v0001", "adapter_model.safetensors"), "damaged");
    rmSync(path.join(dir, "home", "v0003"), { recursive: true });
    logs.length = 0;
    runtime = await Runtime.fromFiles(file, { events: { onLog: (_a, m) => logs.push(m) } });
    const agent = runtime.agent("tester");
    assert.equal(agent.ledger.data.live, null);
    assert.equal(agent.liveProblem, null);
    assert.ok(logs.some((m) => /^live version v0003 could not be loaded \(.*\): the base model is live instead \(v0002 could not be loaded either: .*; v0001 could not be loaded either: .*\); v0003 was missing from .*v0003,/.test(m)), logs.join("\n"));
    await runtime.stop();
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("a live version baked on another base model (the agent file's model changed) is left as it is: nothing recorded, the base model serves saying why, bakes wait; the model given back serves it again; a rollback to base moves the agent", async () => {
  const { dir, file } = writeTestAgent({ feeds: [] });
  try {
    let runtime = await Runtime.fromFiles(file);
    const [keeper] = await bakeTold(runtime.agent("tester"), "The lighthouse keeper is Mira Tolle."); // v0001, live
    await runtime.stop();
    // another base model of the same shape: the fixture with one embedding weight changed
    cpSync(path.join(dir, "model"), path.join(dir, "other-model"), { recursive: true });
    const weights = path.join(dir, "other-model", "model.safetensors");
    const embed = readHeader(weights);
    const bytes = readFileSync(weights);
    bytes.writeFloatLE(bytes.readFloatLE(embed.dataStart + embed.tensors.get("model.embed_tokens.weight")!.dataOffsets[0]) + 0.5, embed.dataStart + embed.tensors.get("model.embed_tokens.weight")!.dataOffsets[0]);
    writeFileSync(weights, bytes);
    const original = readFileSync(file, "utf8");
    writeFileSync(file, original.replace(/^model: model$/m, "model: other-model"));
    const logs: string[] = [];
    runtime = await Runtime.fromFiles(file, { events: { onLog: (_a, m) => logs.push(m) } });
    let agent = runtime.agent("tester");
    assert.equal(agent.live.version, null, "the base model serves");
    assert.equal(agent.ledger.data.live, "v0001", "nothing recorded: it was recorded base, v0001's items pending, and not undone by giving model: back");
    assert.equal(agent.ledger.item(keeper!.id).status, "absorbed");
    assert.match(agent.liveProblem ?? "", /^live version v0001 was baked on another base model than the agent file's model \(.*other-model, fingerprint [0-9a-f]{16}; the version's: [0-9a-f]{16}\): serving the base model, and bakes wait\. Give model: back its earlier model to serve v0001 again, or roll back to base/);
    assert.ok(logs.includes(agent.liveProblem!), logs.join("\n"));
    await agent.remember("The harbor fee is nine coins.");
    const waits = await agent.bake("schedule");
    assert.equal(waits.status, "skipped");
    assert.equal(agent.ledger.data.live, "v0001");
    await runtime.stop();
    // the agent file as it was: v0001 serves again, nothing lost
    writeFileSync(file, original);
    runtime = await Runtime.fromFiles(file);
    assert.deepEqual([runtime.agent("tester").live.version, runtime.agent("tester").liveProblem], ["v0001", null]);
    await runtime.stop();
    // the move finished: rolled back to base on the new model, what v0001 held is baked again there
    writeFileSync(file, original.replace(/^model: model$/m, "model: other-model"));
    runtime = await Runtime.fromFiles(file);
    agent = runtime.agent("tester");
    await agent.rollback(null);
    assert.deepEqual([agent.ledger.data.live, agent.liveProblem, agent.ledger.item(keeper!.id).status], [null, null, "pending"]);
    const moved = await agent.bake("schedule");
    assert.equal(moved.status, "promoted", moved.reasons.join("; "));
    assert.equal(agent.ledger.item(keeper!.id).status, "absorbed");
    await runtime.stop();
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("retracted expired news whose rebuild did not finish: on start no version of the lineage that absorbed it stays live, nor can one go live again", async () => {
  const { dir, file } = writeTestAgent({ forgetNewsAfterDays: 7 });
  try {
    let runtime = await Runtime.fromFiles(file);
    const agent = runtime.agent("tester");
    await agent.pollFeed("harbor");
    assert.equal((await agent.bake("test")).status, "promoted");
    const ferry = agent.ledger.items({ text: "Quillport" })[0]!;
    const second = await bakeAfterNewsAged(agent, ferry.id);
    assert.ok(!agent.ledger.version(second.version!).items.includes(ferry.id), "versions stop listing expired news");
    await runtime.stop();
    editLedger(dir, (data) => interruptRetraction(data, ferry.id, []));
    runtime = await Runtime.fromFiles(file);
    const again = runtime.agent("tester");
    // v0001 absorbed it and v0002 was trained from v0001: both may answer it
    assert.equal(again.live.version, null, `${second.version} was trained from the weights that absorbed the retracted item`);
    await assert.rejects(again.rollback(second.version!), /holds retracted item/);
    await runtime.stop();
  } finally {
    rmSync(dir, { recursive: true });
  }
});
