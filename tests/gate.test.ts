// The gate's rules on their own: what a bake's probe scores do to the version and to each item.
import { test } from "node:test";
import assert from "node:assert/strict";
import type { Item } from "../src/knowledge/ledger.js";
import { decideGate, NOT_ABSORBED, type GateInput } from "../src/runtime/gate.js";

function item(id: string, misses = 0): Item {
  const at = "2026-11-26T00:00:00.000Z";
  return {
    id,
    kind: "feed",
    text: `fact ${id}`,
    status: "pending",
    createdAt: at,
    updatedAt: at,
    source: {},
    contentHash: id,
    scores: [],
    history: Array.from({ length: misses }, (_, k) => ({ at, status: "pending" as const, reason: `${NOT_ABSORBED} v000${k + 1}: probe score below gate.itemPass 1` })),
  };
}

const GATE = { minAbsorption: 0.5, minRetention: 0.5, minPersona: 0.8, itemPass: 1 };

function input(over: Partial<GateInput>): GateInput {
  return { version: "v0002", fresh: [], replay: [], retained: [], unprobed: [], liveItems: new Set(), excluded: new Set(), scores: {}, superseded: [], persona: null, consolidate: false, gate: GATE, maxAttempts: 3, ...over };
}

const changed = (d: ReturnType<typeof decideGate>) => Object.fromEntries(d.changes.flatMap((c) => c.ids.map((id) => [id, c.status])));

test("a promoted bake absorbs what passes, and what the new version lost goes back to pending", () => {
  const [a, b, old1, old2, old3] = ["a", "b", "o1", "o2", "o3"].map((id) => item(id));
  const d = decideGate(
    input({
      fresh: [a!, b!],
      replay: [old1!],
      retained: [old2!],
      liveItems: new Set(["o1", "o2", "o3"]),
      scores: { a: { unprompted: 1 }, b: { unprompted: 0.5 }, o1: { unprompted: 1 }, o2: { unprompted: 0 } },
    }),
  );
  assert.equal(d.promoted, true, d.reasons.join("; "));
  assert.equal(d.absorption, 0.75);
  assert.equal(d.retention, 0.5);
  assert.deepEqual(d.holds.sort(), ["a", "o1", "o3"], "o3 was not scored, so it is still held; o2 was lost");
  assert.deepEqual(changed(d), { a: "absorbed", b: "pending", o2: "pending" });
  assert.match(d.changes.find((c) => c.ids.includes("o2"))!.reason!, /^lost by v0002/);
  assert.equal(d.changes.find((c) => c.status === "absorbed")!.version, "v0002");
});

test("an item promoted bakes keep missing is rejected on its bake.maxAttempts-th miss", () => {
  const d = decideGate(input({ fresh: [item("fresh"), item("twice", 2), item("once", 1)], scores: { fresh: { unprompted: 1 } }, gate: { ...GATE, minAbsorption: 0.3 } }));
  assert.equal(d.promoted, true, d.reasons.join("; "));
  assert.deepEqual(changed(d), { fresh: "absorbed", once: "pending", twice: "rejected" });
  assert.match(d.changes.find((c) => c.status === "rejected")!.reason!, /the last of bake\.maxAttempts 3/);
});

test("a rejected version changes no held item; its new items wait, and a miss there is no attempt", () => {
  const d = decideGate(input({ fresh: [item("a", 2)], retained: [item("o")], liveItems: new Set(["o"]), scores: { a: { unprompted: 0 }, o: { unprompted: 0 } } }));
  assert.equal(d.promoted, false);
  assert.deepEqual(d.reasons, ["absorption 0.00 < gate.minAbsorption 0.5", "retention 0.00 < gate.minRetention 0.5"]);
  assert.deepEqual(changed(d), { a: "pending" });
  assert.match(d.changes[0]!.reason!, /^version v0002 rejected: absorption/);
});

test("items without a checked probe are rejected, and a bake that learned nothing new is not promoted", () => {
  const d = decideGate(input({ unprobed: [item("u")], replay: [item("o")], liveItems: new Set(["o"]), scores: { o: { unprompted: 1 } } }));
  assert.equal(d.promoted, false);
  assert.deepEqual(d.reasons, ["none of the 1 new item(s) got a checked probe, so none was baked"]);
  assert.deepEqual(changed(d), { u: "rejected" });
});

test("a consolidation holds only what it recovered; persona adherence gates too", () => {
  const d = decideGate(input({ consolidate: true, fresh: [item("a"), item("b")], liveItems: new Set(["a", "b", "gone"]), scores: { a: { unprompted: 1 }, b: { unprompted: 0 } } }));
  assert.equal(d.promoted, true);
  assert.deepEqual(d.holds, ["a"]);
  assert.deepEqual(changed(d), { a: "absorbed", b: "pending" });
  const persona = decideGate(input({ fresh: [item("a")], scores: { a: { unprompted: 1 } }, persona: 0.5 }));
  assert.deepEqual(persona.reasons, ["persona adherence 0.50 < gate.minPersona 0.8"]);
});

test("carried over: what the live version held and the bake did not score, but never a new, retracted or rejected item", () => {
  const pendingHeld = item("p"); // pending though the live version holds it (a crash between promotion and statuses)
  const d = decideGate(input({ fresh: [pendingHeld, item("a")], liveItems: new Set(["p", "x", "gone"]), excluded: new Set(["gone"]), scores: { a: { unprompted: 1 }, p: { unprompted: 0 } }, gate: { ...GATE, minAbsorption: 0.5 } }));
  assert.deepEqual(d.holds.sort(), ["a", "x"], "p failed its probes, gone was retracted, x is carried");
});

test("bake.maxAttempts counts misses since the item was last absorbed", () => {
  const relearning = item("r", 2);
  relearning.history.push({ at: "2026-11-26T01:00:00.000Z", status: "absorbed" }, { at: "2026-11-26T02:00:00.000Z", status: "pending", reason: "lost by v0005" });
  const d = decideGate(input({ fresh: [relearning], scores: {}, gate: { ...GATE, minAbsorption: 0 } }));
  assert.deepEqual(changed(d), { r: "pending" }, "two misses long before it was absorbed do not count");
});

test("a superseded item counts for neither absorption nor retention, leaves the new version, and is marked with its evidence", () => {
  const [cat, dog, other] = ["cat", "dog", "other"].map((id) => item(id));
  const superseded = [{ id: "dog", by: "cat", question: "What pet does Lisa Yewby have?", answer: "Lisa Yewby now owns a pet cat." }];
  const d = decideGate(input({ fresh: [cat!], replay: [other!], retained: [dog!], liveItems: new Set(["dog", "other"]), superseded, scores: { cat: { unprompted: 1 }, other: { unprompted: 1 }, dog: { unprompted: 0 } } }));
  assert.equal(d.promoted, true, d.reasons.join("; "));
  assert.equal(d.retention, 1, "the old value's recall falling is no retention loss");
  assert.deepEqual(d.holds.sort(), ["cat", "other"]);
  assert.deepEqual(changed(d), { cat: "absorbed", dog: "superseded" });
  assert.equal(d.changes.find((c) => c.status === "superseded")!.reason, 'superseded by cat: asked "What pet does Lisa Yewby have?", that item answers "Lisa Yewby now owns a pet cat."');
});

test("while its successor's version is rejected, a held item stays absorbed and a pending one waits for the news", () => {
  const superseded = [
    { id: "held", by: "new", question: "q?", answer: "a" },
    { id: "stale", by: "new", question: "q?", answer: "a" },
  ];
  const d = decideGate(input({ fresh: [item("new"), item("stale")], retained: [item("held")], liveItems: new Set(["held"]), superseded, scores: { new: { unprompted: 0 } } }));
  assert.equal(d.promoted, false);
  assert.deepEqual(changed(d), { new: "pending", stale: "pending" }, "held stays absorbed: the live weights still hold it");
  assert.equal(d.changes.find((c) => c.ids.includes("stale"))!.reason, "waits for new, which would supersede it: version v0002 was rejected");
});

// The soak's defect 6: "The mayor of Caermoor is Lisa Yewby." was superseded by news of a new
// mayor that three promoted bakes never absorbed; the agent answered neither, and the ledger said
// the news had replaced the old mayor.
test("news the new version does not absorb supersedes nothing: the held item stays absorbed where the new weights still answer it", () => {
  const superseded = [{ id: "dog", by: "cat", question: "What pet does Lisa Yewby have?", answer: "Lisa Yewby now owns a pet cat." }];
  const d = decideGate(input({ fresh: [item("cat"), item("other")], retained: [item("dog")], liveItems: new Set(["dog"]), superseded, scores: { cat: { unprompted: 0 }, other: { unprompted: 1 }, dog: { unprompted: 1 } } }));
  assert.equal(d.promoted, true, d.reasons.join("; "));
  assert.deepEqual(changed(d), { cat: "pending", other: "absorbed", dog: "absorbed" });
  assert.deepEqual(d.holds.sort(), ["dog", "other"], "the version lists what its weights answer");
  assert.equal(d.retention, 1, "the old value, still answered, is kept knowledge");
  assert.equal(d.changes.find((c) => c.ids.includes("dog"))!.reason, "kept: cat, which would supersede it, was not absorbed by v0002, which still answers this item; cat is baked again next time");
  // the news learned at a later bake replaces it then
  const later = decideGate(input({ version: "v0003", fresh: [item("cat")], retained: [item("dog")], liveItems: new Set(["dog", "other"]), superseded, scores: { cat: { unprompted: 1 }, dog: { unprompted: 0 } } }));
  assert.deepEqual(changed(later), { cat: "absorbed", dog: "superseded" });
});

test("a version that answers neither a held item nor the news that would replace it counts the loss against retention, and the ledger says so", () => {
  const superseded = [{ id: "dog", by: "cat", question: "q?", answer: "a" }];
  const scores = { cat: { unprompted: 0 }, other: { unprompted: 1 }, dog: { unprompted: 0 }, r1: { unprompted: 1 }, r2: { unprompted: 1 } };
  const alone = decideGate(input({ fresh: [item("cat"), item("other")], retained: [item("dog")], liveItems: new Set(["dog"]), superseded, scores }));
  assert.equal(alone.promoted, false, "its only retention check lost");
  assert.deepEqual(alone.reasons, ["retention 0.00 < gate.minRetention 0.5"]);
  assert.deepEqual(changed(alone), { cat: "pending", other: "pending" }, "dog stays absorbed: the live weights still answer it");
  const d = decideGate(input({ fresh: [item("cat"), item("other")], replay: [item("r1"), item("r2")], retained: [item("dog")], liveItems: new Set(["dog", "r1", "r2"]), superseded, scores }));
  assert.equal(d.promoted, true, d.reasons.join("; "));
  assert.ok(Math.abs(d.retention - 2 / 3) < 1e-9, `${d.retention}`);
  assert.deepEqual(changed(d), { cat: "pending", other: "absorbed", dog: "pending" });
  assert.ok(!d.holds.includes("dog") && !d.holds.includes("cat"));
  assert.equal(d.changes.find((c) => c.ids.includes("dog"))!.reason, "lost by v0002, which answers neither this item nor cat, the news that would supersede it: cat is baked again next time, this item once cat is rejected");
});

test("a supersession takes effect when the newest news of its chain is answered", () => {
  const superseded = [
    { id: "dog", by: "cat", question: "q?", answer: "a" },
    { id: "cat", by: "owl", question: "q?", answer: "a" },
  ];
  const base = { fresh: [item("cat"), item("owl"), item("other")], retained: [item("dog")], liveItems: new Set(["dog"]), superseded };
  const learned = decideGate(input({ ...base, scores: { owl: { unprompted: 1 }, other: { unprompted: 1 } } }));
  assert.deepEqual(changed(learned), { owl: "absorbed", other: "absorbed", dog: "superseded", cat: "superseded" });
  const missed = decideGate(input({ ...base, scores: { owl: { unprompted: 0 }, other: { unprompted: 1 }, dog: { unprompted: 1 } } }));
  assert.deepEqual(changed(missed), { owl: "pending", other: "absorbed", dog: "absorbed", cat: "pending" });
});

test("a bake that trained nothing (every new item older news) promotes nothing: a held item it finds replaced stays absorbed", () => {
  // held "old" (oldest) < new "mid" < held "top" (newest): mid replaces old, top replaces mid
  const superseded = [
    { id: "old", by: "mid", question: "q?", answer: "a" },
    { id: "mid", by: "top", question: "q?", answer: "a" },
  ];
  // as the agent asks when the worker returns no adapter
  const d = decideGate(input({ fresh: [item("mid")], liveItems: new Set(["old", "top"]), superseded, trained: false }));
  assert.equal(d.promoted, false);
  assert.deepEqual(d.reasons, ["nothing new to learn: every new item is older news than an item the agent holds"]);
  assert.deepEqual(changed(d), { mid: "superseded" }, "old stays absorbed: no version without it went live");
});

test("a superseded item the new weights still answer stays among the version's items (a retraction of it must rebuild)", () => {
  const superseded = [{ id: "dog", by: "cat", question: "q?", answer: "a" }];
  const d = decideGate(input({ fresh: [item("cat")], retained: [item("dog")], liveItems: new Set(["dog"]), superseded, scores: { cat: { unprompted: 1 }, dog: { unprompted: 1 } } }));
  assert.equal(d.promoted, true, d.reasons.join("; "));
  assert.deepEqual(d.holds.sort(), ["cat", "dog"]);
  assert.equal(changed(d).dog, "superseded", "still superseded: the news replaced it, whatever the weights recall");
});

test("a score that missed its bar is not shown rounded up to it", () => {
  const d = decideGate(input({ retained: [item("o")], liveItems: new Set(["o"]), scores: { o: { unprompted: 0.597 } }, gate: { ...GATE, minRetention: 0.6, itemPass: 0.5 } }));
  assert.deepEqual(d.reasons, ["retention 0.597 < gate.minRetention 0.6"]);
});

test("news the same decision rejects (its last attempt) supersedes nothing; a supersession names its successor", () => {
  const superseded = [
    { id: "stale", by: "spent", question: "q?", answer: "a" },
    { id: "older", by: "good", question: "q?", answer: "a" },
  ];
  const d = decideGate(input({ fresh: [item("spent", 2), item("good"), item("stale"), item("older")], superseded, scores: { spent: { unprompted: 0 }, good: { unprompted: 1 }, stale: { unprompted: 0 }, older: { unprompted: 1 } } }));
  assert.equal(d.promoted, true, d.reasons.join("; "));
  assert.equal(changed(d).spent, "rejected");
  assert.equal(changed(d).stale, "pending", "what the rejected news would have replaced waits to be baked again (this bake left it out)");
  assert.equal(changed(d).older, "superseded");
  assert.equal(d.changes.find((c) => c.status === "superseded")!.by, "good");
});

test("news rejected in a promoted bake leaves the item it would supersede absorbed where the new version still answers it", () => {
  const superseded = [{ id: "stale", by: "spent", question: "q?", answer: "a" }];
  const d = decideGate(input({ fresh: [item("spent", 2), item("good")], retained: [item("stale")], liveItems: new Set(["stale"]), superseded, scores: { spent: { unprompted: 0 }, good: { unprompted: 1 }, stale: { unprompted: 1 } } }));
  assert.equal(d.promoted, true, d.reasons.join("; "));
  assert.ok(d.holds.includes("stale"), "still answered: the new version lists it");
  assert.equal(changed(d).stale, "absorbed");
});
