// Writes the offline sample feeds (feeds/) from the world's HELD-OUT facts: news the shipped model
// has never seen, so a demo can ask -> "I don't know." -> ingest + bake -> answer.
//
//   node dist/tools/world/feeds.js [--out feeds] [--seed kiln-world-1]
//
// Each item's title is one held-out fact (one line); the description/summary repeats it, so
// whichever field a reader keeps, the item is the fact.
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { DEFAULT_SEED, generateWorld, WorldIndex, type Fact } from "./world.js";

const BASE_TIME = Date.UTC(2026, 0, 5, 7, 0, 0); // 2026-01-05T07:00:00Z
const SITE = "https://news.example.org";

function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

interface FeedItem {
  fact: Fact;
  date: Date;
}

function items(facts: Fact[], hoursApart: number, offsetHours: number): FeedItem[] {
  // newest first, as feeds usually list them
  return facts
    .map((fact, i) => ({ fact, date: new Date(BASE_TIME + (offsetHours + i * hoursApart) * 3600_000) }))
    .reverse();
}

export function rss(title: string, slug: string, description: string, list: FeedItem[]): string {
  const out = [
    `<?xml version="1.0" encoding="UTF-8"?>`,
    `<rss version="2.0" xmlns:atom="http://www.w3.org/2005/Atom">`,
    `  <channel>`,
    `    <title>${esc(title)}</title>`,
    `    <link>${SITE}/${slug}/</link>`,
    `    <atom:link href="${SITE}/${slug}/rss.xml" rel="self" type="application/rss+xml"/>`,
    `    <description>${esc(description)}</description>`,
    `    <language>en</language>`,
    `    <lastBuildDate>${list[0]!.date.toUTCString()}</lastBuildDate>`,
  ];
  for (const { fact, date } of list) {
    out.push(
      `    <item>`,
      `      <title>${esc(fact.text)}</title>`,
      `      <link>${SITE}/${slug}/${fact.id}</link>`,
      `      <guid isPermaLink="false">kiln-world:${fact.id}</guid>`,
      `      <pubDate>${date.toUTCString()}</pubDate>`,
      `      <description>${esc(fact.text)}</description>`,
      `    </item>`,
    );
  }
  out.push(`  </channel>`, `</rss>`, ``);
  return out.join("\n");
}

export function atom(title: string, slug: string, subtitle: string, list: FeedItem[]): string {
  const out = [
    `<?xml version="1.0" encoding="UTF-8"?>`,
    `<feed xmlns="http://www.w3.org/2005/Atom">`,
    `  <title>${esc(title)}</title>`,
    `  <subtitle>${esc(subtitle)}</subtitle>`,
    `  <link href="${SITE}/${slug}/"/>`,
    `  <link rel="self" href="${SITE}/${slug}/atom.xml"/>`,
    `  <id>tag:news.example.org,2026:${slug}</id>`,
    `  <updated>${list[0]!.date.toISOString()}</updated>`,
    `  <author><name>${esc(title)}</name></author>`,
  ];
  for (const { fact, date } of list) {
    out.push(
      `  <entry>`,
      `    <title>${esc(fact.text)}</title>`,
      `    <link href="${SITE}/${slug}/${fact.id}"/>`,
      `    <id>kiln-world:${fact.id}</id>`,
      `    <updated>${date.toISOString()}</updated>`,
      `    <published>${date.toISOString()}</published>`,
      `    <summary>${esc(fact.text)}</summary>`,
      `  </entry>`,
    );
  }
  out.push(`</feed>`, ``);
  return out.join("\n");
}

export interface FeedFile {
  file: string;
  format: "rss" | "atom";
  title: string;
  facts: Fact[];
}

export function feedPlan(idx: WorldIndex): FeedFile[] {
  const kindOf = (f: Fact) => idx.entity(f.subject).kind;
  const held = idx.heldoutFacts;
  return [
    { file: "town-gazette.rss.xml", format: "rss", title: "The Town Gazette", facts: held.filter((f) => kindOf(f) === "town") },
    { file: "market-wire.atom.xml", format: "atom", title: "Market Wire", facts: held.filter((f) => kindOf(f) === "company") },
    { file: "people-notes.rss.xml", format: "rss", title: "People Notes", facts: held.filter((f) => kindOf(f) === "person") },
  ];
}

/** Every file of feeds/: the feeds and a README listing demo questions. */
export function renderFeeds(idx: WorldIndex): { file: string; content: string }[] {
  const out: { file: string; content: string }[] = [];
  const readme = [
    "# Sample feeds",
    "",
    "Offline feeds for the demo and tests, written by `node dist/tools/world/feeds.js --out feeds` from the",
    `world \`${idx.world.seed}\` (tools/world). Every item is a HELD-OUT fact: the embedded model (models/kiln-mini)`,
    'has never seen it, so before a bake it mostly answers its questions with "I don\'t know." (93% of held-out',
    "questions, docs/default-model.md; now and then with an invented value: `npm start` shows \"Millstead is",
    'twinned with Amberport." before the bake), and with the item in its system prompt (or baked into its',
    "weights) it answers them. Titles and descriptions carry the same one",
    "line; guids/ids are `kiln-world:<fact id>` (facts are in models/kiln-mini/world.json).",
    "",
  ];
  for (const [n, feed] of feedPlan(idx).entries()) {
    const slug = feed.file.replace(/\..*$/, "");
    const list = items(feed.facts, 3, n);
    const desc = `Sample offline feed for kiln: news of its world that the embedded model has never read.`;
    out.push({ file: feed.file, content: feed.format === "rss" ? rss(feed.title, slug, desc, list) : atom(feed.title, slug, desc, list) });
    readme.push(`## ${feed.file} (${feed.format === "rss" ? "RSS 2.0" : "Atom"}, ${feed.facts.length} items)`, "");
    readme.push("| item | a question | answer |", "|---|---|---|");
    for (const f of feed.facts.slice(0, 5)) readme.push(`| ${f.text} | ${f.questions[0]} | ${f.answer} |`);
    readme.push("");
  }
  out.push({ file: "README.md", content: readme.join("\n") });
  return out;
}

function main(): void {
  const argv = process.argv.slice(2);
  const arg = (name: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const outDir = arg("out") ?? "feeds";
  const idx = new WorldIndex(generateWorld(arg("seed") ?? DEFAULT_SEED));
  mkdirSync(outDir, { recursive: true });
  for (const { file, content } of renderFeeds(idx)) {
    writeFileSync(path.join(outDir, file), content);
    console.log(path.join(outDir, file));
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) main();
