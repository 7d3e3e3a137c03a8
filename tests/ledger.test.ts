// The ledger: provenance and statuses, one writer, crash repair, and a corrupt file is refused
// rather than overwritten.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { compactLedger, Ledger, type LedgerData } from "../src/knowledge/ledger.js";
import { makeDirs } from "../src/files.js";

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
  assert.equal(ledger.items({ source: "http://x/1" }).length, 1, "by the article's link");
  assert.equal(ledger.items({ source: "HTTP://X:80/1" }).length, 1, "the link as a browser may give it");

  const item = ledger.item(a.item.id);
  assert.equal(item.absorbedBy, "v0001");
  assert.deepEqual(item.history.map((h) => h.status), ["pending", "baking", "absorbed"]);
  await ledger.close();
  const reopened = await Ledger.open(path.join(dir, "ledger.json"), { readOnly: true });
  assert.equal(reopened.data.items.length, 2);
  await assert.rejects(reopened.update(() => {}), /opened read-only/);
  rmSync(dir, { recursive: true });
});

test("syncFeeds: a feed renamed with a #fragment added to its URL is the same feed renamed, and a fragment alone changes nothing", async () => {
  const dir = tmp();
  const ledger = await Ledger.open(path.join(dir, "ledger.json"));
  await ledger.syncFeeds([{ id: "harbor", url: "http://x/feed" }]);
  await ledger.update((d) => Object.assign(d.feeds[0]!, { etag: '"e1"', seenKeys: ["guid:g1"], itemsAdded: 1 }));
  await ledger.addItem({ kind: "feed", text: "Quillport elected a new mayor.", source: { feedId: "harbor", guid: "g1" } });
  // (a poll never sends the fragment: the same address, the same poll state)
  assert.deepEqual(await ledger.syncFeeds([{ id: "harbor", url: "http://x/feed#latest" }]), { dropped: [], renamed: [] });
  assert.deepEqual(ledger.feed("harbor")!.seenKeys, ["guid:g1"]);
  assert.deepEqual(await ledger.syncFeeds([{ id: "harbour", url: "HTTP://X/feed#top" }]), { dropped: [], renamed: [{ from: "harbor", to: "harbour", items: 1 }] });
  assert.deepEqual(ledger.feed("harbour")!.seenKeys, ["guid:g1"]);
  assert.equal(ledger.data.items[0]!.source.feedId, "harbour");
  await ledger.close();
  rmSync(dir, { recursive: true });
});

test("syncFeeds: a feed renamed to the URL it moved to for good (the agent file edited as the log asks) keeps its seen keys and items", async () => {
  const dir = tmp();
  const ledger = await Ledger.open(path.join(dir, "ledger.json"));
  await ledger.syncFeeds([{ id: "harbor", url: "http://x/feed" }]);
  await ledger.update((d) => Object.assign(d.feeds[0]!, { etag: '"e1"', seenKeys: ["guid:g1"], itemsAdded: 1, movedTo: "http://y/feed", movedAt: "2026-03-01T08:00:00Z" }));
  await ledger.addItem({ kind: "feed", text: "Quillport elected a new mayor.", source: { feedId: "harbor", guid: "g1" } });
  const sync = await ledger.syncFeeds([{ id: "harbour", url: "http://y/feed" }]);
  assert.deepEqual(sync, { dropped: [], renamed: [{ from: "harbor", to: "harbour", items: 1 }] });
  assert.deepEqual(ledger.feed("harbour")!.seenKeys, ["guid:g1"]);
  assert.equal(ledger.data.items[0]!.source.feedId, "harbour");
  await ledger.close();
  rmSync(dir, { recursive: true });
});

test("syncFeeds: two feeds that swapped URLs, and a chain of renames, each keep the poll state and items of their URL; a feed whose URL changed in place keeps its own", async () => {
  const dir = tmp();
  const ledger = await Ledger.open(path.join(dir, "ledger.json"));
  await ledger.syncFeeds([{ id: "a", url: "http://x/1" }, { id: "b", url: "http://x/2" }]);
  await ledger.update((d) => d.feeds.forEach((f, k) => Object.assign(f, { seenKeys: [`guid:${f.id}`], itemsAdded: k + 1 })));
  await ledger.addItem({ kind: "feed", text: "From feed one.", source: { feedId: "a", guid: "a" } });
  await ledger.addItem({ kind: "feed", text: "From feed two.", source: { feedId: "b", guid: "b" } });
  const byUrl = () => Object.fromEntries(ledger.data.feeds.map((f) => [f.url, `${f.id} ${f.seenKeys.join(",")}`]));
  const owners = () => Object.fromEntries(ledger.data.items.map((i) => [i.text, i.source.feedId]));
  // swapped
  const swap = await ledger.syncFeeds([{ id: "a", url: "http://x/2" }, { id: "b", url: "http://x/1" }]);
  assert.deepEqual(swap.dropped, []);
  assert.deepEqual(swap.renamed.map((r) => `${r.from}>${r.to}`).sort(), ["a>b", "b>a"]);
  assert.deepEqual(byUrl(), { "http://x/1": "b guid:a", "http://x/2": "a guid:b" });
  assert.deepEqual(owners(), { "From feed one.": "b", "From feed two.": "a" });
  // a chain: b (x/1) becomes c, a (x/2) becomes b
  const chain = await ledger.syncFeeds([{ id: "b", url: "http://x/2" }, { id: "c", url: "http://x/1" }]);
  assert.deepEqual(chain.dropped, []);
  assert.deepEqual(byUrl(), { "http://x/1": "c guid:a", "http://x/2": "b guid:b" });
  assert.deepEqual(owners(), { "From feed one.": "c", "From feed two.": "b" });
  // a URL changed in place (no other record has the new one): the record stays its own
  const moved = await ledger.syncFeeds([{ id: "b", url: "http://x/3" }, { id: "c", url: "http://x/1" }]);
  assert.deepEqual(moved, { dropped: [], renamed: [] });
  assert.equal(ledger.feed("b")!.seenKeys[0], "guid:b");
  await ledger.close();
  const reopened = await Ledger.open(path.join(dir, "ledger.json"), { readOnly: true });
  assert.deepEqual(reopened.data.feeds.map((f) => f.id).sort(), ["b", "c"], "written");
  rmSync(dir, { recursive: true });
});

test("items by link: a link's #fragment is part of it (one page's items, a changelog's #v1 and #v2, are items of their own)", async () => {
  const ledger = await Ledger.open(path.join(tmp(), "ledger.json"));
  await ledger.addItem({ kind: "feed", text: "Version 2 adds export.", source: { feedId: "log", link: "https://x/changelog#v2" } });
  await ledger.addItem({ kind: "feed", text: "Version 1 ships.", source: { feedId: "log", link: "https://x/changelog#v1" } });
  assert.deepEqual(ledger.items({ source: "HTTPS://X:443/changelog#v1" }).map((i) => i.text), ["Version 1 ships."]);
  assert.deepEqual(ledger.items({ source: "https://x/changelog" }).map((i) => i.text), []);
  await ledger.close();
});

test("syncFeeds: a removed feed's items take its URL: a later feed given its id with another URL does not take them; added back with its URL, they are its own again", async () => {
  const dir = tmp();
  const file = path.join(dir, "ledger.json");
  const ledger = await Ledger.open(file);
  await ledger.syncFeeds([{ id: "harbor", url: "http://x/feed" }]);
  const { item: old } = await ledger.addItem({ kind: "feed", text: "Quillport elected a new mayor.", source: { feedId: "harbor", guid: "1" } });
  const source = (id: string) => ledger.item(id).source;
  const listed = (s: string) => ledger.items({ source: s }).map((i) => i.text);
  assert.deepEqual(await ledger.syncFeeds([]), { dropped: ["harbor"], renamed: [] });
  assert.deepEqual(source(old.id), { feedId: "harbor", guid: "1", feedUrl: "http://x/feed" });
  assert.deepEqual(listed("harbor"), [old.text], "no feed has the id: it still finds the removed feed's items");
  // another feed under the id
  await ledger.syncFeeds([{ id: "harbor", url: "http://y/other" }]);
  const { item: next } = await ledger.addItem({ kind: "feed", text: "Ashby's fair opens.", source: { feedId: "harbor", guid: "1" } });
  assert.deepEqual(listed("harbor"), [next.text]);
  assert.deepEqual(listed("http://x/feed"), [old.text], "the removed feed's items, by its URL");
  assert.deepEqual(listed("HTTP://X:80/feed#latest"), [old.text], "a URL as a browser may give it: compared as a poll asks it");
  assert.deepEqual(listed("http://x/feed/"), [], "another path is another feed");
  // renamed: only its own items follow
  assert.deepEqual(await ledger.syncFeeds([{ id: "ashby", url: "http://y/other" }]), { dropped: [], renamed: [{ from: "harbor", to: "ashby", items: 1 }] });
  assert.deepEqual([source(old.id).feedId, source(next.id).feedId], ["harbor", "ashby"]);
  // the removed feed back, its id with its URL
  await ledger.syncFeeds([{ id: "ashby", url: "http://y/other" }, { id: "harbor", url: "http://x/feed" }]);
  assert.deepEqual(source(old.id), { feedId: "harbor", guid: "1" });
  assert.deepEqual(listed("harbor"), [old.text]);
  // items of a feed a kiln that did not record URLs removed: no record has their id
  const { item: orphan } = await ledger.addItem({ kind: "feed", text: "The ferry runs at noon.", source: { feedId: "tides", guid: "1" } });
  await ledger.syncFeeds([{ id: "ashby", url: "http://y/other" }, { id: "harbor", url: "http://x/feed" }, { id: "tides", url: "http://z/tides" }]);
  assert.equal(source(orphan.id).feedUrl, "");
  assert.deepEqual(listed("tides"), []);
  await ledger.close();
  const reopened = await Ledger.open(file, { readOnly: true });
  assert.deepEqual(reopened.data.items.map((i) => i.source.feedUrl), [undefined, undefined, ""], "written");
  rmSync(dir, { recursive: true });
});

test("syncFeeds: a removed feed's archived items take its URL too: a later feed given its id with another URL does not take them when they come back; added back with its URL, they are its own again", async () => {
  const dir = tmp();
  const file = path.join(dir, "ledger.json");
  const ledger = await Ledger.open(file);
  await ledger.syncFeeds([{ id: "harbor", url: "http://x/feed" }]);
  const { item: old } = await ledger.addItem({ kind: "feed", text: "Quillport elected a new mayor.", source: { feedId: "harbor", guid: "1" } });
  const { item: kept } = await ledger.addItem({ kind: "feed", text: "The ferry runs at noon.", source: { feedId: "harbor", guid: "2" } });
  await ledger.setItemStatus([old.id], "expired");
  const limits = { bakes: 10, scoresPerItem: 5, historyPerItem: 5, deadVersions: 10, deadVersionItemLists: 1, inactiveItems: 0 };
  assert.deepEqual(await ledger.compact(() => false, limits), { archived: 1 });
  const source = (id: string) => ledger.item(id).source;
  assert.deepEqual(await ledger.syncFeeds([]), { dropped: ["harbor"], renamed: [] });
  assert.deepEqual(source(old.id), { feedId: "harbor", guid: "1", feedUrl: "http://x/feed" }, "archived: tagged as the live item is");
  assert.deepEqual(source(kept.id), { feedId: "harbor", guid: "2", feedUrl: "http://x/feed" });
  // another feed under the id: the archived item is not its own, in the archive or brought back
  await ledger.syncFeeds([{ id: "harbor", url: "http://y/other" }]);
  assert.equal(source(old.id).feedUrl, "http://x/feed");
  await ledger.unarchive(old.id);
  assert.deepEqual(ledger.items({ source: "harbor" }).map((i) => i.text), [], "the new harbor feed owns neither");
  assert.deepEqual(ledger.items({ source: "http://x/feed" }).map((i) => i.text).sort(), [kept.text, old.text].sort());
  await ledger.compact(() => false, limits);
  assert.ok(ledger.item(old.id).archivedAt, "archived again");
  // the removed feed back, its id with its URL: its archived item is its own again
  await ledger.syncFeeds([]);
  await ledger.syncFeeds([{ id: "harbor", url: "http://x/feed" }]);
  assert.deepEqual(source(old.id), { feedId: "harbor", guid: "1" });
  assert.deepEqual(source(kept.id), { feedId: "harbor", guid: "2" });
  // renamed (same URL): the archived item follows the id, so a later feed under the old id does not take it
  await ledger.syncFeeds([{ id: "quay", url: "http://x/feed" }]);
  assert.deepEqual([source(old.id).feedId, source(kept.id).feedId], ["quay", "quay"]);
  await ledger.close();
  const reopened = await Ledger.open(file, { readOnly: true });
  assert.deepEqual(reopened.item(old.id).source, { feedId: "quay", guid: "1" }, "written");
  assert.ok(reopened.item(old.id).archivedAt);
  await reopened.close();
  rmSync(dir, { recursive: true });
});

test("syncFeeds: a removed feed added back under its URL as fetched (scheme and host case, default port, empty path, #fragment) finds its items, live and archived", async () => {
  const dir = tmp();
  const ledger = await Ledger.open(path.join(dir, "ledger.json"));
  const limits = { bakes: 10, scoresPerItem: 5, historyPerItem: 5, deadVersions: 10, deadVersionItemLists: 1, inactiveItems: 0 };
  const source = (id: string) => ledger.item(id).source;
  for (const [was, back] of [
    ["http://Example.com/feed#x", "http://example.com/feed"],
    ["http://example.com/feed", "HTTP://EXAMPLE.COM:80/feed#top"],
    ["https://example.com:443", "https://example.com/"],
  ] as const) {
    await ledger.syncFeeds([{ id: "harbor", url: was }]);
    const { item: live } = await ledger.addItem({ kind: "feed", text: `Live from ${was}.`, source: { feedId: "harbor", guid: "1" } });
    const { item: gone } = await ledger.addItem({ kind: "feed", text: `Archived from ${was}.`, source: { feedId: "harbor", guid: "2" } });
    await ledger.setItemStatus([gone.id], "expired");
    await ledger.compact(() => false, limits);
    await ledger.syncFeeds([]);
    assert.equal(source(live.id).feedUrl, was);
    await ledger.syncFeeds([{ id: "harbor", url: back }]);
    assert.deepEqual([source(live.id), source(gone.id)], [{ feedId: "harbor", guid: "1" }, { feedId: "harbor", guid: "2" }], `${was} is ${back}`);
    assert.ok(ledger.item(gone.id).archivedAt);
    await ledger.syncFeeds([]);
  }
  // another path, query or host is another feed
  await ledger.syncFeeds([{ id: "harbor", url: "http://example.com/feed" }]);
  const { item: other } = await ledger.addItem({ kind: "feed", text: "Ashby's fair opens.", source: { feedId: "harbor", guid: "3" } });
  await ledger.syncFeeds([]);
  for (const url of ["http://example.com/feed/", "http://example.com/feed?x=1", "https://example.com/feed", "http://example.org/feed"]) {
    await ledger.syncFeeds([{ id: "harbor", url }]);
    assert.equal(source(other.id).feedUrl, "http://example.com/feed", url);
  }
  await ledger.close();
  rmSync(dir, { recursive: true });
});

test("syncFeeds: a feed renamed (same URL) keeps its poll state and its items follow; one removed loses its state, never its items; a new one starts empty", async () => {
  const dir = tmp();
  const ledger = await Ledger.open(path.join(dir, "ledger.json"));
  assert.deepEqual(await ledger.syncFeeds([{ id: "harbor", url: "http://x/feed" }]), { dropped: [], renamed: [] });
  await ledger.update((d) => Object.assign(d.feeds[0]!, { etag: '"e1"', consecutiveErrors: 2, seenKeys: ["guid:g1"], itemsAdded: 1 }));
  await ledger.addItem({ kind: "feed", text: "Quillport elected a new mayor.", source: { feedId: "harbor", guid: "g1" } });
  const state = structuredClone(ledger.feed("harbor")!);
  const items = structuredClone(ledger.data.items);
  // renamed: the same URL under a new id
  assert.deepEqual(await ledger.syncFeeds([{ id: "harbour", url: "http://x/feed" }]), { dropped: [], renamed: [{ from: "harbor", to: "harbour", items: 1 }] });
  assert.equal(ledger.feed("harbor"), undefined);
  assert.deepEqual(ledger.feed("harbour"), { ...state, id: "harbour" });
  assert.deepEqual(ledger.data.items, items.map((i) => ({ ...i, source: { ...i.source, feedId: "harbour" } })), "only the items' feed id changed");
  // removed: another URL takes its place
  assert.deepEqual(await ledger.syncFeeds([{ id: "tides", url: "http://y/feed" }]), { dropped: ["harbour"], renamed: [] });
  assert.equal(ledger.feed("harbour"), undefined);
  assert.deepEqual(ledger.feed("tides"), { id: "tides", url: "http://y/feed", consecutiveErrors: 0, seenKeys: [], itemsAdded: 0 });
  assert.equal(ledger.data.items[0]!.source.feedId, "harbour", "a removed feed's items stay as they were");
  await ledger.update((d) => Object.assign(d.feeds[0]!, { etag: '"e2"' }));
  assert.deepEqual(await ledger.syncFeeds([{ id: "tides", url: "http://y/feed" }]), { dropped: [], renamed: [] }, "a feed still named keeps its state");
  assert.equal(ledger.feed("tides")!.etag, '"e2"');
  await ledger.close();
  const reopened = await Ledger.open(path.join(dir, "ledger.json"), { readOnly: true });
  assert.deepEqual(reopened.data.feeds.map((f) => f.id), ["tides"], "written");
  rmSync(dir, { recursive: true });
});

test("an item added as a correction supersedes the ones it names in the same write; superseded text can be told again", async () => {
  const dir = tmp();
  const ledger = await Ledger.open(path.join(dir, "ledger.json"));
  const [old] = await ledger.addItems([{ kind: "feed", text: "The mayor resigned on Monday.", source: { feedId: "f", guid: "g" } }]);
  const [fix] = await ledger.addItems([{ kind: "feed", text: "The mayor resigned on Tuesday.", source: { feedId: "f", guid: "g" }, supersedes: [old!.item.id] }]);
  assert.equal(ledger.item(old!.item.id).status, "superseded");
  assert.equal(ledger.item(old!.item.id).history.at(-1)!.reason, `superseded by ${fix!.item.id}`);
  assert.equal(ledger.item(fix!.item.id).status, "pending");
  // the feed goes back to the first text: it is new again, and the second is superseded
  const [back] = await ledger.addItems([{ kind: "feed", text: "The mayor resigned on Monday.", supersedes: [fix!.item.id] }]);
  assert.equal(back!.added, true);
  assert.equal(ledger.item(fix!.item.id).status, "superseded");
  await ledger.close();
  const reread = JSON.parse(readFileSync(path.join(dir, "ledger.json"), "utf8")) as LedgerData;
  assert.deepEqual(reread.items.map((i) => i.status), ["superseded", "superseded", "pending"]);
  rmSync(dir, { recursive: true });
});

test("a second writer is refused while the first one's process lives", async () => {
  const dir = tmp();
  const file = path.join(dir, "ledger.json");
  const holder = spawn(process.execPath, ["-e", "setTimeout(() => {}, 10000)"]);
  writeFileSync(`${file}.lock`, String(holder.pid));
  await assert.rejects(Ledger.open(file), (err: Error) => err.message.includes(`being written by process ${holder.pid}`) && err.message.includes(`remove ${file}.lock`));
  holder.kill("SIGKILL");
  await new Promise((r) => holder.once("exit", r));
  const ledger = await Ledger.open(file); // a stale lock from a dead process is taken over
  await ledger.close();
  rmSync(dir, { recursive: true });
});

test("a lock file that cannot be read is named (it said only 'EISDIR: illegal operation on a directory, read')", async () => {
  const dir = tmp();
  const file = path.join(dir, "ledger.json");
  mkdirSync(`${file}.lock`);
  await assert.rejects(Ledger.open(file), /ledger\.json\.lock: the ledger's lock file cannot be read \(EISDIR.*\); remove it if no kiln has .*ledger\.json open/);
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
  await assert.rejects(Ledger.open(file), /is not a usable kiln ledger \(schema missing; a kiln ledger has schema 1\)/);
  // lowdb reads "null" as no data at all and would start an empty ledger over it
  writeFileSync(file, "null");
  await assert.rejects(Ledger.open(file), /is not a readable ledger \(it holds no JSON object\)/);
  assert.equal(readFileSync(file, "utf8"), "null");
  rmSync(dir, { recursive: true });
});

test("a ledger of the wrong shape, or from a newer kiln, is refused naming the field, before any command trips on it", async () => {
  const dir = tmp();
  const file = path.join(dir, "ledger.json");
  const ledger = await Ledger.open(file);
  await ledger.addItem({ kind: "manual", text: "A fact." });
  await ledger.close();
  const good = JSON.parse(readFileSync(file, "utf8"));
  const cases: [(d: any) => void, RegExp][] = [
    [(d) => (d.schema = 2), /schema 2, written by a newer kiln; this one reads schema 1/],
    [(d) => delete d.versions, /\(versions is not a list\)/],
    [(d) => (d.bakes = {}), /\(bakes is not a list\)/],
    [(d) => (d.live = 3), /\(live is 3, not a version id or null\)/],
    [(d) => d.items.push(null), /\(items\[1\] is not an object\)/],
    [(d) => delete d.items[0].status, /\(items\[0\]\.status is missing, not one of pending,/],
    [(d) => delete d.items[0].history, /\(items\[0\]\.history is not a list\)/],
    [(d) => d.versions.push({ id: "v0001", dir: "v0001", status: "live" }), /\(versions\[0\]\.items is not a list\)/],
    // a feed poll said only "pollFeed: state must come from initialFeedState() or a previous poll"
    [(d) => d.feeds.push({ id: "harbor", url: "x", seenKeys: null, consecutiveErrors: 0 }), /\(feeds\[0\]\.seenKeys is not a list\)/],
    // these failed mid-command with a bare TypeError: knowledge list, show, versions list, every bake
    [(d) => d.items.push({ ...d.items[0], text: "Another fact." }), /\(items\[1\]\.id "k_\w+" is also items\[0\]'s\)/],
    [(d) => d.versions.push(...["v0001", "v0001"].map((id) => ({ id, dir: id, status: "kept", items: [], scores: { absorption: 1, retention: 1, persona: null } }))), /\(versions\[1\]\.id "v0001" is also versions\[0\]'s\)/],
    // a live edited by hand served the version it named (a rejected one even) while versions list showed another
    [(d) => { d.versions.push(...["rejected", "live"].map((status, k) => ({ id: `v000${k + 1}`, dir: `v000${k + 1}`, status, items: [], scores: { absorption: 1, retention: 1, persona: null } }))); d.live = "v0001"; }, /\(live is "v0001", but versions\[0\] \(v0001\) has status "rejected"; kiln sets the two together \(kiln versions rollback changes the live version\)\)/],
    [(d) => d.versions.push({ id: "v0001", dir: "v0001", status: "live", items: [], scores: { absorption: 1, retention: 1, persona: null } }), /\(versions\[0\] \(v0001\) has status "live", but live is null; kiln sets the two together/],
    [(d) => (d.items[0].kind = "note"), /\(items\[0\]\.kind is "note", not one of feed, conversation, manual, instruction\)/],
    [(d) => (d.items[0].probes = [{ question: "Q?" }]), /\(items\[0\]\.probes is not a list of \{question, answer\} strings\)/],
    [(d) => d.items[0].scores.push(null), /\(items\[0\]\.scores\[0\] is null, not \{version, unprompted, prompted\}\)/],
    [(d) => d.items[0].history.push(5), /\(items\[0\]\.history\[1\] is 5, not \{at, status\}\)/],
    [(d) => d.versions.push({ id: "v0001", dir: "v0001", status: "live", items: [], scores: null }), /\(versions\[0\]\.scores is null, not \{absorption, retention, persona\}/],
    [(d) => d.versions.push({ id: "v0001", dir: "v0001", status: "live", items: [], scores: { absorption: 1, retention: 1, persona: null }, reasons: "low" }), /\(versions\[0\]\.reasons is not a list of strings\)/],
    [(d) => d.bakes.push({ id: "b1", status: "failed", itemIds: [], replayIds: null }), /\(bakes\[0\]\.replayIds is not a list of item ids\)/],
    [(d) => d.feeds.push({ id: "harbor", url: null, seenKeys: [], consecutiveErrors: 0 }), /\(feeds\[0\]\.url is not a string\)/],
  ];
  for (const [damage, message] of cases) {
    const d = structuredClone(good);
    damage(d);
    const text = JSON.stringify(d);
    writeFileSync(file, text);
    // these opened, and failed later with a bare TypeError ("Cannot read properties of undefined (reading 'map')")
    await assert.rejects(Ledger.open(file), (err: Error) => message.test(err.message) && err.message.includes(file) && /left untouched/.test(err.message), message.source);
    assert.equal(readFileSync(file, "utf8"), text);
    assert.equal(existsSync(`${file}.lock`), false);
  }
  rmSync(dir, { recursive: true });
});

test("a folder that cannot be made (under /proc) fails with its error instead of hanging the process", { skip: !existsSync("/proc/self") && "no /proc here" }, () => {
  // Node 20's recursive mkdir spins forever there, so this runs in a child with a deadline: an
  // admin-API export to "/proc/x" held a server's event loop for good
  const script = `
    const { writeFolderAtomically } = await import(${JSON.stringify(new URL("../src/lora/peft.js", import.meta.url).href)});
    const { Ledger } = await import(${JSON.stringify(new URL("../src/knowledge/ledger.js", import.meta.url).href)});
    for (const make of [() => writeFolderAtomically("/proc/kiln-nope/x", () => {}), () => Ledger.open("/proc/kiln-nope/ledger.json")]) {
      try { await make(); console.log("made"); } catch (err) { console.log(err.code ?? err.message); }
    }`;
  const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8", timeout: 30_000 });
  assert.equal(r.signal, null, "the child finished on its own");
  assert.equal(r.stdout, "ENOENT\nENOENT\n", r.stderr);
});

test("makeDirs answers as fs.mkdirSync(recursive) does: relative, existing, through a link; a file in the way is EEXIST", () => {
  const dir = tmp();
  const cwd = process.cwd();
  try {
    process.chdir(dir); // relative paths, as a user's --out or home: gives them
    // one tree each, so neither sees what the other made
    for (const root of ["node", "kiln"]) {
      mkdirSync(`${root}/there/d`, { recursive: true });
      writeFileSync(`${root}/there/file`, "x");
      symlinkSync("d", `${root}/there/link`);
    }
    const outcome = (make: () => void) => {
      try {
        make();
        return "made";
      } catch (err) {
        return (err as NodeJS.ErrnoException).code;
      }
    };
    for (const p of ["new/a/b", "./new2", "there/d", "there/d/", "there/link/sub", "there/../new3/x", "there/file", "there/file/sub"]) {
      const byNode = outcome(() => mkdirSync(path.join("node", p), { recursive: true }));
      // a file where the folder should be was "made": the caller failed later, on another path
      assert.equal(outcome(() => makeDirs(path.join("kiln", p))), byNode, p);
    }
  } finally {
    process.chdir(cwd);
    rmSync(dir, { recursive: true });
  }
});

test("a long-lived ledger's histories are capped, newest kept, an item's first entry kept", () => {
  const at = "2026-11-26T00:00:00.000Z";
  const d: LedgerData = {
    schema: 1,
    live: "v0300",
    items: [{ id: "k1", kind: "feed", text: "x", status: "absorbed", createdAt: at, updatedAt: at, source: {}, contentHash: "h", scores: Array.from({ length: 30 }, (_, k) => ({ version: `v${k}`, unprompted: 1, prompted: 1 })), history: Array.from({ length: 80 }, (_, k) => ({ at, status: "pending" as const, reason: `h${k}` })) }],
    versions: Array.from({ length: 300 }, (_, k) => ({ id: `v${String(k + 1).padStart(4, "0")}`, parent: null, createdAt: at, dir: "d", status: k === 299 ? ("live" as const) : k % 2 ? ("retired" as const) : ("rejected" as const), bakeId: "b", items: [], scores: { absorption: 1, retention: 1, persona: null } })),
    bakes: Array.from({ length: 250 }, (_, k) => ({ id: `b${k}`, startedAt: at, status: "promoted" as const, trigger: "t", parent: null, itemIds: [], replayIds: [] })),
    feeds: [],
  };
  compactLedger(d);
  assert.equal(d.bakes.length, 200);
  assert.equal(d.bakes[0]!.id, "b50", "the newest bakes are kept");
  assert.deepEqual(d.items[0]!.scores.map((s) => s.version), Array.from({ length: 20 }, (_, k) => `v${k + 10}`));
  assert.equal(d.items[0]!.history.length, 50);
  assert.equal(d.items[0]!.history[0]!.reason, "h0", "the item's first entry stays");
  assert.equal(d.items[0]!.history[1]!.reason, "h31");
  assert.equal(d.versions.length, 101, "the live version and the newest 100 that can no longer go live");
  assert.equal(d.versions.at(-1)!.id, "v0300");
  assert.equal(d.versions.filter((v) => v.itemCount === undefined).length, 11, "only the newest 10 dead versions keep their item lists");
});

test("compaction archives old inactive items no version lists, keeps what the agent knows, and still finds what it moved", async () => {
  const dir = tmp();
  const ledger = await Ledger.open(path.join(dir, "ledger.json"));
  const add = async (text: string) => (await ledger.addItem({ kind: "manual", text })).item.id;
  const [absorbed, pending, oldRejected, listedSuperseded, retracted, newRejected] = [
    await add("The ferry leaves at noon."),
    await add("Gulldale has a new bakery."),
    await add("Quillport's mayor is Ada Brook."),
    await add("Saltwell's mayor is Tom Reed."),
    await add("The bridge is closed."),
    await add("Mira Vale owns a cat."),
  ];
  await ledger.setItemStatus([absorbed], "absorbed", { version: "v0002" });
  // oldest first by their last change: the two oldest inactive ones are the candidates
  await ledger.setItemStatus([oldRejected], "rejected");
  await ledger.setItemStatus([listedSuperseded], "superseded");
  await ledger.setItemStatus([retracted], "retracted");
  await ledger.setItemStatus([newRejected], "rejected");
  const version = (id: string, status: "kept" | "retired", items: string[]) => ({ id, parent: null, createdAt: "t", dir: path.join(dir, id), status, bakeId: "b", items, scores: { absorption: 1, retention: 1, persona: null } });
  await ledger.update((d) => d.versions.push(version("v0001", "retired", [absorbed, oldRejected]), version("v0002", "kept", [absorbed, listedSuperseded]), version("v0003", "retired", [absorbed])));

  const { archived } = await ledger.compact((v) => v.status === "kept", { bakes: 10, scoresPerItem: 5, historyPerItem: 5, deadVersions: 10, deadVersionItemLists: 1, inactiveItems: 1 });
  // 4 inactive, 1 kept: v0002 lists listedSuperseded; v0001's list was dropped before the items were picked
  assert.equal(archived, 3);
  assert.deepEqual(ledger.data.items.map((i) => i.id).sort(), [absorbed, pending, listedSuperseded].sort());
  assert.deepEqual(ledger.version("v0001").items, [], "the older dead version's list is dropped");
  assert.equal(ledger.version("v0001").itemCount, 2);
  assert.deepEqual(ledger.version("v0003").items, [absorbed], "the newest dead version keeps its list");
  assert.throws(() => ledger.diff(null, "v0001"), /v0001 can never go live again and compaction dropped its list of 2 item/);

  const found = ledger.item(oldRejected);
  assert.equal(found.text, "Quillport's mayor is Ada Brook.");
  assert.equal(found.status, "rejected");
  assert.ok(found.archivedAt, "an archived item says so");
  assert.equal(ledger.archived().length, 3);
  // a line cut short by a crash mid-append does not hide the others
  writeFileSync(ledger.archiveFile, readFileSync(ledger.archiveFile, "utf8") + '{"id": "k_cut", "te');
  assert.equal(ledger.item(newRejected).text, "Mira Vale owns a cat.");
  assert.throws(() => ledger.item("k_cut"), /no item k_cut/);
  // a line that is JSON but no item is skipped too, and said once (on stderr), naming the file and line
  writeFileSync(ledger.archiveFile, readFileSync(ledger.archiveFile, "utf8") + '\n{}\n[1]\n');
  const said: string[] = [];
  const write = process.stderr.write;
  process.stderr.write = ((text: string) => (said.push(text), true)) as typeof process.stderr.write;
  try {
    assert.equal(ledger.item(newRejected).text, "Mira Vale owns a cat.");
    assert.throws(() => ledger.item("k_none"), /no item k_none/);
    assert.equal(ledger.archived().length, 3);
  } finally {
    process.stderr.write = write;
  }
  assert.deepEqual(said, [`kiln: ${ledger.archiveFile}: skipped 2 line(s) that are not items: line 5 (its id is not a string), line 6 (it is not an object); the file was left as it is\n`]);
  await ledger.close();
  rmSync(dir, { recursive: true });
});

test("news that superseded an item and is then rejected or retracted gives the item back, pending", async () => {
  const dir = tmp();
  const ledger = await Ledger.open(path.join(dir, "ledger.json"));
  const dog = (await ledger.addItem({ kind: "feed", text: "Lisa Yewby owns a pet dog.", source: { feedId: "f", guid: "g" } })).item;
  const cat = (await ledger.addItems([{ kind: "feed", text: "Lisa Yewby owns a pet cat.", source: { feedId: "f", guid: "g" }, supersedes: [dog.id] }]))[0]!.item;
  assert.equal(ledger.item(dog.id).status, "superseded");
  assert.equal(ledger.item(dog.id).supersededBy, cat.id);
  const fish = (await ledger.addItem({ kind: "manual", text: "Lisa Yewby owns a pet fish." })).item;
  await ledger.setItemStatus([fish.id], "superseded", { by: cat.id, reason: "superseded by a later bake" });

  // rejecting something else gives nothing back
  const other = (await ledger.addItem({ kind: "manual", text: "The ferry leaves at noon." })).item;
  assert.deepEqual(await ledger.setItemStatus([other.id], "rejected"), []);
  assert.equal(ledger.item(dog.id).status, "superseded");

  const back = await ledger.setItemStatus([cat.id], "retracted", { reason: "wrong" });
  assert.deepEqual(back.sort(), [dog.id, fish.id].sort());
  for (const id of back) {
    const i = ledger.item(id);
    assert.equal(i.status, "pending");
    assert.equal(i.supersededBy, undefined);
    assert.equal(i.history.at(-1)!.reason, `${cat.id}, which superseded it, was retracted`);
  }
  // persisted
  const reopened = JSON.parse(readFileSync(ledger.file, "utf8")) as LedgerData;
  assert.equal(reopened.items.find((i) => i.id === dog.id)!.status, "pending");
  await ledger.close();
  rmSync(dir, { recursive: true });
});

test("compaction keeps an item superseded by one still kept (it may come back), and loses nothing when the archive cannot be written", async () => {
  const dir = tmp();
  const ledger = await Ledger.open(path.join(dir, "ledger.json"));
  const dog = (await ledger.addItem({ kind: "manual", text: "Lisa Yewby owns a pet dog." })).item;
  const cat = (await ledger.addItems([{ kind: "manual", text: "Lisa Yewby owns a pet cat.", supersedes: [dog.id] }]))[0]!.item;
  const old = (await ledger.addItem({ kind: "manual", text: "The bridge is closed." })).item;
  await ledger.setItemStatus([old.id], "rejected");
  const limits = { bakes: 10, scoresPerItem: 5, historyPerItem: 5, deadVersions: 10, deadVersionItemLists: 1, inactiveItems: 0 };

  // the archive path is taken by a folder: the append fails, and every item stays, in memory and on disk
  mkdirSync(ledger.archiveFile);
  await assert.rejects(ledger.compact(() => false, limits), /EISDIR/);
  await ledger.addItem({ kind: "manual", text: "The ferry leaves at noon." });
  const onDisk = JSON.parse(readFileSync(ledger.file, "utf8")) as LedgerData;
  assert.deepEqual(onDisk.items.map((i) => i.id).slice(0, 3), [dog.id, cat.id, old.id]);
  rmSync(ledger.archiveFile, { recursive: true });

  assert.deepEqual(await ledger.compact(() => false, limits), { archived: 1 });
  assert.equal(ledger.item(old.id).archivedAt !== undefined, true);
  assert.equal(ledger.item(dog.id).archivedAt, undefined, "superseded by an item still kept: it stays");
  assert.deepEqual(await ledger.setItemStatus([cat.id], "retracted"), [dog.id], "and comes back when that item goes");
  await ledger.close();
  rmSync(dir, { recursive: true });
});

test("an item given back that the live version still lists is absorbed again, not pending", async () => {
  const dir = tmp();
  const ledger = await Ledger.open(path.join(dir, "ledger.json"));
  const dog = (await ledger.addItem({ kind: "feed", text: "Lisa Yewby owns a pet dog.", source: { feedId: "f", guid: "g" } })).item;
  await ledger.setItemStatus([dog.id], "absorbed", { version: "v0001" });
  await ledger.update((d) => {
    d.versions.push({ id: "v0001", parent: null, createdAt: "t", dir: path.join(dir, "v0001"), status: "live", bakeId: "b", items: [dog.id], scores: { absorption: 1, retention: 1, persona: null } });
    d.live = "v0001";
  });
  // a feed revision supersedes it at once; the revision is then rejected
  const cat = (await ledger.addItems([{ kind: "feed", text: "Lisa Yewby owns a pet cat.", source: { feedId: "f", guid: "g" }, supersedes: [dog.id] }]))[0]!.item;
  assert.equal(ledger.item(dog.id).status, "superseded");
  assert.deepEqual(await ledger.setItemStatus([cat.id], "rejected"), [dog.id]);
  assert.equal(ledger.item(dog.id).status, "absorbed", "the live weights hold it");
  assert.equal(ledger.item(dog.id).absorbedBy, "v0001");
  await ledger.close();
  rmSync(dir, { recursive: true });
});

test("whyNotLive: a rejected, pruned, or retracted-item-holding version says why it cannot go live", async () => {
  const dir = tmp();
  const ledger = await Ledger.open(path.join(dir, "ledger.json"));
  const fact = (await ledger.addItem({ kind: "manual", text: "The ferry leaves at noon." })).item;
  const version = (id: string, status: "kept" | "rejected" | "retired", items: string[]) => ({ id, parent: null, createdAt: "t", dir: path.join(dir, id), status, bakeId: "b", items, scores: { absorption: 1, retention: 1, persona: null }, reasons: ["absorption 0.2 < gate.minAbsorption 0.6"] });
  for (const id of ["v0001", "v0002"]) mkdirSync(path.join(dir, id));
  await ledger.update((d) => d.versions.push(version("v0001", "kept", [fact.id]), version("v0002", "rejected", []), version("v0003", "retired", [])));
  assert.equal(ledger.whyNotLive("v0001"), null);
  assert.match(ledger.whyNotLive("v0002")!, /was rejected by the gate \(absorption 0\.2 < gate\.minAbsorption 0\.6\)/);
  assert.match(ledger.whyNotLive("v0003")!, /no longer on disk/);
  // a kept version whose folder was removed by hand was not pruned: the message names the folder
  await ledger.update((d) => d.versions.push(version("v0004", "kept", [])));
  assert.equal(ledger.whyNotLive("v0004"), `version v0004 is no longer on disk: its folder ${path.join(dir, "v0004")} is missing (removed or moved outside kiln)`);
  await ledger.setItemStatus([fact.id], "retracted");
  assert.equal(ledger.whyNotLive("v0001"), `version v0001 holds retracted item(s) ${fact.id}; it cannot go live again`);
  await ledger.close();
  rmSync(dir, { recursive: true });
});

test("an item is found by its id or by an end of it that only one id has; an ambiguous or empty one is refused, never the first match", async () => {
  const dir = tmp();
  const ledger = await Ledger.open(path.join(dir, "ledger.json"));
  for (const text of ["Ada owns a cat.", "Bo owns a dog.", "Cy owns a fish."]) await ledger.addItem({ kind: "manual", text });
  const ids = ["k_mwyp5661ad1d78", "k_mwyp566102bfc8", "k_mwyp56616cef34"];
  await ledger.update((d) => d.items.forEach((i, n) => (i.id = ids[n]!)));
  // an archived item counts too (and an item in both the ledger and the archive is one item)
  const archived = { ...ledger.data.items[2]!, id: "k_mwyp4000aaaa38", text: "Di owns a horse.", archivedAt: "t" };
  writeFileSync(ledger.archiveFile, [archived, { ...ledger.data.items[1]!, archivedAt: "t" }].map((i) => JSON.stringify(i) + "\n").join(""));

  assert.equal(ledger.item("k_mwyp566102bfc8").text, "Bo owns a dog.");
  assert.equal(ledger.item("bfc8").text, "Bo owns a dog.", "a unique end of an id");
  assert.equal(ledger.item("aaaa38").text, "Di owns a horse.", "a unique end of an archived id");
  // "8" ends three ids: `kiln knowledge retract demo 8` retracted the first of them
  assert.throws(() => ledger.item("8"), /item id 8 is ambiguous: 3 items end with it \(k_mwyp5661ad1d78, k_mwyp566102bfc8, k_mwyp4000aaaa38\); give more of the id/);
  assert.throws(() => ledger.item(""), /no item "" \(the id is empty\)/);
  assert.throws(() => ledger.item("zz"), /no item zz/);
  await ledger.close();
  rmSync(dir, { recursive: true });
});

test("an agent's home copied or moved elsewhere reads its own version folders, not the old place's", async () => {
  const root = tmp();
  const old = path.join(root, "old", "demo");
  const ledger = await Ledger.open(path.join(old, "ledger.json"));
  const { item } = await ledger.addItem({ kind: "manual", text: "Ada owns a cat." });
  for (const id of ["v0001", "v0002"]) {
    mkdirSync(path.join(old, id));
    writeFileSync(path.join(old, id, "manifest.json"), "{}");
  }
  await ledger.update((d) => {
    d.versions.push({ id: "v0001", parent: null, createdAt: "t", dir: path.join(old, "v0001"), status: "kept", bakeId: "b", items: [item.id], scores: { absorption: 1, retention: 1, persona: null } });
    d.versions.push({ id: "v0002", parent: "v0001", createdAt: "t", dir: path.join(old, "v0002"), status: "live", bakeId: "b", items: [item.id], scores: { absorption: 1, retention: 1, persona: null } });
    d.live = "v0002";
  });
  await ledger.close();

  // a copy: its records still name the old folders, which must be neither read nor (pruning) deleted
  const copy = path.join(root, "copy", "demo");
  cpSync(old, copy, { recursive: true });
  const copied = await Ledger.open(path.join(copy, "ledger.json"));
  assert.deepEqual(copied.data.versions.map((v) => v.dir), [path.join(copy, "v0001"), path.join(copy, "v0002")]);
  await copied.update((d) => void (d.live = "v0002")); // written back rebased
  await copied.close();
  assert.deepEqual((JSON.parse(readFileSync(path.join(copy, "ledger.json"), "utf8")) as LedgerData).versions.map((v) => v.dir), [path.join(copy, "v0001"), path.join(copy, "v0002")]);

  // a copy whose own v0001 is gone (removed there): missing there, not the old place's (it served
  // and verified the original agent's weights)
  const partial = path.join(root, "partial", "demo");
  cpSync(old, partial, { recursive: true });
  rmSync(path.join(partial, "v0001"), { recursive: true });
  const part = await Ledger.open(path.join(partial, "ledger.json"), { readOnly: true });
  assert.deepEqual(part.data.versions.map((v) => v.dir), [path.join(partial, "v0001"), path.join(partial, "v0002")]);
  assert.match(part.whyNotLive("v0001") ?? "", /v0001/, "v0001 cannot go live from the copy");

  // a ledger moved alone, its versions left where they were: it still finds them there
  const alone = path.join(root, "alone", "demo");
  mkdirSync(alone, { recursive: true });
  cpSync(path.join(old, "ledger.json"), path.join(alone, "ledger.json"));
  const lone = await Ledger.open(path.join(alone, "ledger.json"), { readOnly: true });
  assert.equal(lone.version("v0001").dir, path.join(old, "v0001"));

  // a move: the old place is gone, and the versions are still on disk where the ledger is now
  const moved = path.join(root, "moved", "demo");
  cpSync(old, moved, { recursive: true });
  rmSync(path.join(root, "old"), { recursive: true });
  const reader = await Ledger.open(path.join(moved, "ledger.json"), { readOnly: true });
  assert.equal(reader.version("v0002").dir, path.join(moved, "v0002"));
  assert.ok(existsSync(reader.version("v0001").dir));
  assert.equal(reader.whyNotLive("v0001"), null, "a kept version can go live: not 'no longer on disk (pruned)'");
  rmSync(root, { recursive: true });
});

test("a ledger whose versions were recorded on Windows (C:\\...\\v0001) reads them beside it on another system", async () => {
  const home = path.join(tmp(), "demo");
  const ledger = await Ledger.open(path.join(home, "ledger.json"));
  mkdirSync(path.join(home, "v0001"));
  await ledger.update((d) => {
    d.versions.push({ id: "v0001", parent: null, createdAt: "t", dir: "C:\\Users\\ada\\kiln\\checkpoints\\demo\\v0001", status: "live", bakeId: "b", items: [], scores: { absorption: 1, retention: 1, persona: null } });
    d.live = "v0001";
  });
  await ledger.close();
  const reader = await Ledger.open(path.join(home, "ledger.json"), { readOnly: true });
  assert.equal(reader.version("v0001").dir, path.join(home, "v0001"));
  rmSync(path.dirname(home), { recursive: true });
});
