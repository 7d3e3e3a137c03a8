// A test agent run in a Runtime for the length of a test body, and bakes of what it is told.
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { Runtime } from "../../src/runtime/runtime.js";
import type { Agent } from "../../src/runtime/agent.js";
import type { Item } from "../../src/knowledge/ledger.js";
import { writeTestAgent } from "./agent.js";

/** Runs `body` on a new test agent ("tester", writeTestAgent's options), its log collected; then stops it and removes its folder. */
export async function withTester(
  opts: Parameters<typeof writeTestAgent>[0],
  body: (t: { agent: Agent; runtime: Runtime; dir: string; logs: string[] }) => Promise<void>,
): Promise<void> {
  const { dir, file } = writeTestAgent(opts);
  const logs: string[] = [];
  const runtime = await Runtime.fromFiles(file, { events: { onLog: (_a, m) => logs.push(m) } });
  try {
    await body({ agent: runtime.agent("tester"), runtime, dir, logs });
  } finally {
    await runtime.stop();
    rmSync(dir, { recursive: true });
  }
}

/** Tells the agent each text, then bakes them, promoted: the items, in the order told. */
export async function bakeTold(agent: Agent, ...texts: string[]): Promise<Item[]> {
  const items: Item[] = [];
  for (const text of texts) items.push((await agent.remember(text)).item);
  const outcome = await agent.bake("test");
  assert.equal(outcome.status, "promoted", outcome.reasons.join("; "));
  return items;
}
