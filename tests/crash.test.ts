// Crash safety with real processes: SIGKILL during a bake and during ledger writes, restart,
// and nothing stored is lost, the live version is unchanged, and the schedules run again.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { readdirSync, rmSync, writeFileSync, readFileSync } from "node:fs";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { stringify, parse } from "yaml";
import { writeTestAgent } from "./support/agent.js";

const script = path.join(path.dirname(fileURLToPath(import.meta.url)), "support", "agent-process.js");

function run(file: string, mode: string): { child: ChildProcess; lines: AsyncIterableIterator<Record<string, unknown>> } {
  const child = spawn(process.execPath, [script, file, mode], { stdio: ["ignore", "pipe", "inherit"] });
  const rl = createInterface({ input: child.stdout! });
  async function* lines() {
    for await (const line of rl) yield JSON.parse(line) as Record<string, unknown>;
  }
  return { child, lines: lines() };
}

async function until(lines: AsyncIterableIterator<Record<string, unknown>>, pred: (o: Record<string, unknown>) => boolean): Promise<Record<string, unknown>[]> {
  const seen: Record<string, unknown>[] = [];
  for await (const o of lines) {
    seen.push(o);
    if (pred(o)) return seen;
  }
  throw new Error(`process ended before the expected event; saw ${JSON.stringify(seen.slice(-3))}`);
}

function exited(child: ChildProcess): Promise<void> {
  return new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r() : child.once("exit", () => r())));
}

async function status(file: string) {
  const { child, lines } = run(file, "status");
  const [s] = (await until(lines, (o) => o.event === "status")).slice(-1);
  await exited(child);
  return s as { live: string | null; liveModel: string | null; items: { text: string; status: string }[]; bakes: { status: string; error?: string }[]; versions: string[]; schedules: string[] };
}

test("SIGKILL during a bake: items go back to pending, the live version is unchanged, no orphan checkpoint, schedules resume", async () => {
  const { dir, file } = writeTestAgent();
  // Give the agent a bake schedule so we can see schedules come back after the restart.
  const config = parse(readFileSync(file, "utf8"));
  writeFileSync(file, stringify({ ...config, bake: { ...config.bake, schedule: "0 3 * * *" } }));
  try {
    // First a good bake, so there is a live version to protect.
    const ok = run(file, "bake");
    await until(ok.lines, (o) => o.event === "baked");
    await exited(ok.child);
    const before = await status(file);
    assert.equal(before.live, "v0001");

    const victim = run(file, "bake");
    await until(victim.lines, (o) => o.event === "progress" && o.phase === "train");
    victim.child.kill("SIGKILL");
    await exited(victim.child);
    await new Promise((r) => setTimeout(r, 300)); // the orphaned bake worker notices and exits

    const after = await status(file);
    assert.equal(after.live, "v0001", "the live version is unchanged");
    assert.equal(after.liveModel, "v0001", "and it loads");
    assert.equal(after.items.length, before.items.length + 2, "no item lost: the old ones and the two the killed run stored");
    assert.deepEqual(after.items.map((i) => i.status), [...before.items.map((i) => i.status), "pending", "pending"]);
    assert.equal(after.bakes.at(-1)!.status, "failed");
    assert.match(after.bakes.at(-1)!.error!, /stopped during the bake/);
    assert.deepEqual(readdirSync(path.join(dir, "home")).filter((f) => f.startsWith("v")), ["v0001"], "no partial checkpoint");
    assert.deepEqual(after.schedules.sort(), ["tester:bake", "tester:feed:harbor"]);
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("SIGKILL during ledger writes: every acknowledged item survives and the file parses", async () => {
  const { dir, file } = writeTestAgent();
  try {
    const writer = run(file, "write");
    const seen = await until(writer.lines, (o) => o.event === "stored" && (o.i as number) >= 40);
    writer.child.kill("SIGKILL");
    await exited(writer.child);
    const acknowledged = seen.filter((o) => o.event === "stored").map((o) => `Fact number ${o.i} about the harbor.`);
    const after = await status(file);
    const stored = new Set(after.items.map((i) => i.text));
    for (const text of acknowledged) assert.ok(stored.has(text), `${text} was acknowledged but lost`);
  } finally {
    rmSync(dir, { recursive: true });
  }
});
