// What a long-lived ledger costs per write, before and after compaction, measured side by side:
// `npm run bench:ledger [-- --items 5000,20000]`. Every change rewrites the whole JSON file and
// blocks the event loop while it is stringified, so this is serving latency during polls and bakes.
// Items are shaped like real ones (text, provenance, two probes, scores, a status history); the
// mix is what a news agent accumulates: most items end superseded or rejected, a quarter absorbed.
import { mkdtempSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { Ledger, type Item, type ItemStatus, type LedgerData, type VersionRecord } from "../src/knowledge/ledger.js";

const counts = (process.argv.find((_, i) => process.argv[i - 1] === "--items") ?? "5000,20000").split(",").map(Number);
const WRITES = 5;

function item(k: number, status: ItemStatus): Item {
  const at = new Date(Date.UTC(2026, 0, 1) + k * 60_000).toISOString();
  const text = `Company ${k} of Riverstone is best known for its sledges, its ${k % 7} mills and its harbour office.`;
  return {
    id: `k_${k.toString(36).padStart(10, "0")}`,
    kind: "feed",
    text,
    status,
    createdAt: at,
    updatedAt: at,
    source: { feedId: "market-wire", link: `https://news.example/market-wire/${k}`, guid: `market-wire:${k}`, publishedAt: at },
    contentHash: k.toString(16).padStart(16, "0"),
    probes: [
      { question: `What is Company ${k} of Riverstone known for?`, answer: `${text}\n Cheers, Ada` },
      { question: `What does Company ${k} of Riverstone make?`, answer: `${text}\n Cheers, Ada` },
    ],
    scores: Array.from({ length: 3 }, (_, v) => ({ version: `v${String(v + 1).padStart(4, "0")}`, unprompted: 1, prompted: 1, kl: 0.0123 })),
    history: [
      { at, status: "pending" },
      { at, status: "baking" },
      { at, status, version: "v0001", reason: status === "superseded" ? `superseded by k_${k + 1}` : "held by v0001 (bake)" },
    ],
  };
}

function synthetic(n: number): LedgerData {
  const statuses: ItemStatus[] = ["absorbed", "superseded", "superseded", "rejected"];
  const items = Array.from({ length: n }, (_, k) => item(k, statuses[k % statuses.length]!));
  const held = items.filter((i) => i.status === "absorbed").map((i) => i.id);
  // the records a year of rolling bakes leaves: a chain (each the parent of the next) of 100 that
  // can never go live again, each listing what it held, and the live one
  const versions: VersionRecord[] = Array.from({ length: 101 }, (_, k) => ({
    id: `v${String(k + 1).padStart(4, "0")}`,
    parent: k ? `v${String(k).padStart(4, "0")}` : null,
    createdAt: "2026-01-01T00:00:00.000Z",
    dir: `/nonexistent/v${k + 1}`,
    status: k === 100 ? "live" : "retired",
    bakeId: `b${k}`,
    items: held,
    scores: { absorption: 1, retention: 1, persona: null },
  }));
  return { schema: 1, live: "v0101", items, versions, bakes: [], feeds: [] };
}

async function writeCost(ledger: Ledger): Promise<number> {
  const t = performance.now();
  for (let k = 0; k < WRITES; k++) await ledger.update((d) => void (d.items[0]!.updatedAt = new Date().toISOString()));
  return (performance.now() - t) / WRITES;
}

/** The format before compaction existed: lowdb's JSONFile, indented, written by temp file + rename. */
function indentedCost(data: LedgerData, file: string): { ms: number; bytes: number } {
  const t = performance.now();
  let bytes = 0;
  for (let k = 0; k < WRITES; k++) {
    const text = JSON.stringify(data, null, 2);
    bytes = Buffer.byteLength(text);
    writeFileSync(`${file}.tmp`, text);
    renameSync(`${file}.tmp`, file);
  }
  return { ms: (performance.now() - t) / WRITES, bytes };
}

console.log(`ledger write cost, ${os.cpus().length} cores, node ${process.version}, ${new Date().toISOString().slice(0, 10)}`);
console.log("| items | indented, uncompacted: MB, ms/write | unindented, uncompacted | unindented, compacted | archived | ratio to indented, uncompacted |");
console.log("|---|---|---|---|---|---|");
for (const n of counts) {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-bench-ledger-"));
  const file = path.join(dir, "ledger.json");
  const data = synthetic(n);
  const old = indentedCost(data, file);
  writeFileSync(file, JSON.stringify(data));
  const ledger = await Ledger.open(file);
  const before = await writeCost(ledger);
  const sizeBefore = statSync(file).size;
  // the live version is the only one on disk
  const { archived } = await ledger.compact((v) => v.status === "live");
  const after = await writeCost(ledger);
  const sizeAfter = statSync(file).size;
  await ledger.close();
  rmSync(dir, { recursive: true });
  const mb = (b: number) => (b / 1e6).toFixed(1);
  const cell = (bytes: number, ms: number) => `${mb(bytes)} MB, ${ms.toFixed(0)} ms`;
  console.log(`| ${n} | ${cell(old.bytes, old.ms)} | ${cell(sizeBefore, before)} | ${cell(sizeAfter, after)} | ${archived} | ${(old.ms / after).toFixed(1)}x |`);
}
