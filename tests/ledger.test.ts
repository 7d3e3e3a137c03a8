// The ledger: provenance and statuses, one writer, crash repair, and a corrupt file is refused
// rather than overwritten.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { Ledger } from "../src/knowledge/ledger.js";

function tmp(): string {
  return mkdtempSync(path.join(os.tmpdir(), "kiln-ledger-"));
}

test("items keep provenance, dedupe by content, and move through statuses with history", async () => {
  const dir = tmp();
  const ledger = await Ledger.open(path.join(dir, "ledger.json"));
  const a = await ledger.addItem({ kind: "feed", text: "Quillport elected a new mayor.", source: { feedId: "harbor", guid: "g1", link: "http://x/1" } });
  const again = await ledger.addItem({ kind: "feed", text: "  quillport elected a NEW mayor. ", source: { feedId: "other" } });
  assert.equal(a.added, true);
  assert.equal(again.added, false);
  assert.equal(again.item.id, a.item.id);
  await ledger.addItem({ kind: "manual", text: "The ferry leaves at noon." });
  await ledger.setItemStatus([a.item.id], "baking");
  await ledger.setItemStatus([a.item.id], "absorbed", { version: "v0001" });
  assert.deepEqual(ledger.items({ status: "pending" }).map((i) => i.text), ["The ferry leaves at noon."]);
  assert.equal(ledger.items({ text: "MAYOR" }).length, 1);
  assert.equal(ledger.items({ source: "harbor" }).length, 1);
  const item = ledger.item(a.item.id);
  assert.equal(item.absorbedBy, "v0001");
  assert.deepEqual(item.history.map((h) => h.status), ["pending", "baking", "absorbed"]);
  await ledger.close();
  const reopened = await Ledger.open(path.join(dir, "ledger.json"), { readOnly: true });
  assert.equal(reopened.data.items.length, 2);
  await assert.rejects(reopened.update(() => {}), /opened read-only/);
  rmSync(dir, { recursive: true });
});

test("a second writer is refused while the first one's process lives", async () => {
  const dir = tmp();
  const file = path.join(dir, "ledger.json");
  const holder = spawn(process.execPath, ["-e", "setTimeout(() => {}, 10000)"]);
  writeFileSync(`${file}.lock`, String(holder.pid));
  await assert.rejects(Ledger.open(file), new RegExp(`being written by process ${holder.pid}`));
  holder.kill("SIGKILL");
  await new Promise((r) => holder.once("exit", r));
  const ledger = await Ledger.open(file); // a stale lock from a dead process is taken over
  await ledger.close();
  rmSync(dir, { recursive: true });
});

test("recover() puts items of an interrupted bake back to pending and fails the bake", async () => {
  const dir = tmp();
  const ledger = await Ledger.open(path.join(dir, "ledger.json"));
  const { item } = await ledger.addItem({ kind: "manual", text: "A fact." });
  await ledger.setItemStatus([item.id], "baking");
  await ledger.update((d) => d.bakes.push({ id: "b1", startedAt: new Date().toISOString(), status: "running", trigger: "test", parent: null, itemIds: [item.id], replayIds: [] }));
  assert.deepEqual(await ledger.recover(), { bakes: 1, items: 1 });
  assert.equal(ledger.item(item.id).status, "pending");
  assert.equal(ledger.data.bakes[0]!.status, "failed");
  await ledger.close();
  rmSync(dir, { recursive: true });
});

test("a corrupt ledger is refused with its path and left untouched", async () => {
  const dir = tmp();
  const file = path.join(dir, "ledger.json");
  writeFileSync(file, '{"schema": 1, "items": [');
  await assert.rejects(Ledger.open(file), /ledger\.json is not a readable ledger .* left untouched/);
  assert.equal(readFileSync(file, "utf8"), '{"schema": 1, "items": [');
  writeFileSync(file, '{"something": "else"}');
  await assert.rejects(Ledger.open(file), /is not a kiln ledger/);
  // lowdb reads "null" as no data at all and would start an empty ledger over it
  writeFileSync(file, "null");
  await assert.rejects(Ledger.open(file), /is not a readable ledger \(it holds no JSON object\)/);
  assert.equal(readFileSync(file, "utf8"), "null");
  rmSync(dir, { recursive: true });
});
