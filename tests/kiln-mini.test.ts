// The embedded model doing the product's job for real: it pulls a stated fact out of a user's
// message, absorbs baked news so it answers with nothing in its prompt, and loses a retracted
// item when the agent rebuilds from the base. Held-out facts only (never in its training).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { stringify } from "yaml";
import { initBackend } from "../src/tensor/backend.js";
import { Runtime } from "../src/runtime/runtime.js";
import { generateWorld, WorldIndex } from "../tools/world/world.js";

await initBackend();
const held = new WorldIndex(generateWorld()).heldoutFacts;

function writeAgent(facts: { id: string; text: string }[], extra: Record<string, unknown> = {}): { dir: string; file: string } {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-mini-"));
  const items = facts.map((f) => `<item><guid>${f.id}</guid><title>${f.text}</title><description>${f.text}</description></item>`).join("\n");
  writeFileSync(path.join(dir, "news.xml"), `<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>Gazette</title>\n${items}\n</channel></rss>`);
  const file = path.join(dir, "mini.yaml");
  writeFileSync(
    file,
    stringify({
      name: "mini",
      model: "default",
      feeds: [{ id: "gazette", url: "news.xml", schedule: "0 0 1 1 *" }],
      bake: {
        probesPerItem: 1,
        openQuestions: ["What do you know?"],
        settings: {
          trajectories: 48,
          epochs: 8,
          patience: 8,
          learningRate: 0.002,
          temperature: 1,
          maxReplyTokens: 16,
          batchSize: 16,
          lora: { r: 16, alpha: 32, targetModules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] },
        },
      },
      gate: { minAbsorption: 0, minRetention: 0, minPersona: 0, itemPass: 1 },
      home: "home",
      ...extra,
    }),
  );
  return { dir, file };
}

async function drain<T, R>(it: AsyncGenerator<T, R>): Promise<R> {
  for (;;) {
    const r = await it.next();
    if (r.done) return r.value;
  }
}

test("kiln-mini captures a fact a user states, by its own extraction", async () => {
  const fact = held[3]!;
  const { dir, file } = writeAgent([]);
  const runtime = await Runtime.fromFiles(file);
  try {
    const outcome = await drain(runtime.chat("mini", { messages: [{ role: "user", content: `Did you know? ${fact.text}` }], options: { maxTokens: 8 }, conversationId: "c1" }));
    assert.deepEqual(outcome.captured, [fact.text]);
    const [item] = runtime.agent("mini").ledger.items({ status: "pending" });
    assert.equal(item!.text, fact.text);
    assert.equal(item!.source.conversationId, "c1");
  } finally {
    await runtime.stop();
    rmSync(dir, { recursive: true });
  }
});

test("kiln-mini absorbs baked news, and a retracted item's recall falls after the rebuild", async () => {
  const facts = [held[0]!, held[1]!];
  const { dir, file } = writeAgent(facts);
  const runtime = await Runtime.fromFiles(file);
  try {
    const agent = runtime.agent("mini");
    await agent.pollAllFeeds();
    const first = await agent.bake("test");
    assert.equal(first.status, "promoted", first.reasons.join("; "));
    const recall = (version: string) => Object.fromEntries(agent.ledger.data.items.map((i) => [i.text, i.scores.find((s) => s.version === version)?.unprompted]));
    const before = recall(first.version!);
    for (const f of facts) assert.equal(before[f.text], 1, `absorbed unprompted: ${f.text} (${JSON.stringify(before)})`);

    const target = agent.ledger.items({ text: facts[0]!.text })[0]!;
    const rebuilt = await agent.retract([target.id]);
    const after = recall(rebuilt.version!);
    assert.equal(after[facts[0]!.text], 0, `the retracted item is no longer recalled (${JSON.stringify(after)})`);
    assert.equal(after[facts[1]!.text], 1, "what is still true stays absorbed");
  } finally {
    await runtime.stop();
    rmSync(dir, { recursive: true });
  }
});
