// Which items might be news and its update: the pairs a bake asks the model about.
import { test } from "node:test";
import assert from "node:assert/strict";
import type { Item } from "../src/knowledge/ledger.js";
import { entitiesIn } from "../src/knowledge/grounding.js";
import { bakeOrder } from "../src/runtime/agent.js";
import { lowerCaseWords, newsTime, pairedHeldItems, relationWords, shareRelation, updatePairs } from "../src/knowledge/updates.js";

function item(id: string, text: string, at: string, publishedAt?: string): Item {
  return { id, kind: "feed", text, status: "pending", createdAt: at, updatedAt: at, source: publishedAt ? { publishedAt } : {}, contentHash: id, scores: [], history: [] };
}

test("pairs join a new item to items naming the same names, older first by the feed's date, then by when stored", () => {
  const dog = item("dog", "Lisa Yewby now owns a pet dog.", "2026-11-20T00:00:00Z");
  const work = item("work", "Vero Nashwood works at Northgate Motors.", "2026-11-20T00:00:00Z");
  // stored later, but dated earlier by its feed: it is the older news
  const cat = item("cat", "Lisa Yewby now owns a pet cat.", "2026-11-25T00:00:00Z", "Tue, 10 Nov 2026 09:00:00 GMT");
  const mayor = item("mayor", "The mayor of Hollowby is Caka Cobbton.", "2026-11-25T00:00:00Z");
  assert.equal(newsTime(cat), Date.parse("2026-11-10T09:00:00Z"));
  const order = [dog, work, cat, mayor];
  assert.deepEqual(updatePairs([cat, mayor], [dog, work], order), [["cat", "dog"]], "only the item naming Lisa Yewby pairs, and the dated one is older");
  const job = item("job", "Lisa Yewby works at Northgate Motors.", "2026-11-26T00:00:00Z");
  assert.deepEqual(updatePairs([job], [dog], [dog, job]), [], "the same person, but nothing of the same kind said about her: not asked");
  const same = item("same", "Lisa Yewby now owns a pet dog.", "2026-11-26T00:00:00Z");
  assert.deepEqual(updatePairs([same], [dog], [dog, same]), [], "the same text is no update");
});

test("two items stored at one time, not by one feed poll, are ordered by ledger order; pairs are capped, newest first", () => {
  const at = "2026-11-26T00:00:00Z";
  const a = item("a", "Quillport's mayor is Tovan Reel.", at);
  const b = item("b", "Quillport's mayor is Mira Tolle.", at);
  assert.deepEqual(updatePairs([b, a], [], [a, b]), [["a", "b"]]);
  const many = Array.from({ length: 10 }, (_, k) => item(`m${k}`, `Quillport has news number ${k}.`, `2026-11-${10 + k}T00:00:00Z`));
  const pairs = updatePairs(many, [], many, 3);
  assert.equal(pairs.length, 3);
  assert.ok(pairs.every(([, newer]) => newer === "m9"), JSON.stringify(pairs));
});

test("relation words are what a text says about its names, in any tense", () => {
  assert.deepEqual([...relationWords("Ewyn Craneridge is now working as a violin maker.")].sort(), ["maker", "violin", "work"]);
  assert.ok(shareRelation("Tera Stone is now working as a baker.", "Tera Stone works as a geologist."));
  assert.ok(!shareRelation("Saltwell sits on the Esk River.", "Saltwell has become a twin town of Marshford."), "a river and a twin town: no update");
  // a consonant doubled before the ending (the soak: "twinned" never matched "twin")
  assert.deepEqual([...relationWords("Gulldale is twinned with Cinderholm.")], ["twin"]);
  assert.deepEqual([...relationWords("Ada Brook was planning a shop, selling kites.")].sort(), ["kite", "plan", "sell", "shop"]);
});

test("a relation word that starts a sentence is no name where the texts write it in lower case", () => {
  const headline = "Mayor of Gulldale is Ewyn Craneridge.";
  const older = "The mayor of Gulldale is Tom Reed.";
  assert.ok(shareRelation(headline, older), "the same relation, the headline capitalising it");
  assert.ok(shareRelation(older, headline));
  assert.deepEqual(updatePairs([item("new", headline, "2026-11-20T00:00:00Z")], [item("old", older, "2026-11-10T00:00:00Z")], []), [["old", "new"]]);
  // alone, a capitalised first word may be a name ("Hollowby has become ..."), so it stays one
  assert.deepEqual([...relationWords(headline)], []);
  assert.ok(!shareRelation("Hollowby has become a twin town of Gulldale.", "Gulldale is a town in Lindor."), "a town named first is still a name");
  // a name's words stay names even where another text writes one in lower case ("brook", "ada")
  assert.ok(!shareRelation("Ada Brook works at Oakwind Bakeries.", "Ada Brook owns a pet dog.", new Set(["ada", "brook"])), "the first word of a longer name stays a name");
  assert.ok(!shareRelation("Kestrel Ada works at Oakwind Bakeries.", "Kestrel Ada owns a pet dog.", new Set(["ada"])), "a capitalised word inside a sentence stays a name");
});

test("a first word is kept as a name for a name that follows it in its own sentence only", () => {
  const lower = new Set(["update", "mayor"]);
  // "Update:" ends its sentence: "Mayor" after it starts the next one, and follows nothing
  assert.deepEqual(entitiesIn("Update: Mayor of Gulldale is Ewyn Craneridge.", lower), ["gulldale", "ewyn", "craneridge"]);
  assert.deepEqual(entitiesIn("Update: the mayor of Gulldale is Ewyn Craneridge.", lower), ["gulldale", "ewyn", "craneridge"]);
  assert.deepEqual(entitiesIn("Mayor Ewyn Craneridge opened it.", lower), ["mayor", "ewyn", "craneridge"], "a name in the same sentence still keeps it");
  // a sentence ends before a closing curly quote or bracket too, as relationFollowers splits them
  assert.deepEqual(entitiesIn("Tom Reed said \u201Cwe won.\u201D Mayor of Gulldale is Ewyn Craneridge.", lower), ["tom", "reed", "gulldale", "ewyn", "craneridge"]);
  assert.deepEqual(entitiesIn("It ended [at last.] Mayor of Gulldale is Ewyn Craneridge.", lower), ["gulldale", "ewyn", "craneridge"]);
});

test("a label before a sentence (\"Update:\", \"BREAKING:\") is no name, a dateline is; two updates of unrelated facts are no pair", () => {
  assert.deepEqual(entitiesIn("Update: Ewyn Craneridge owns a pet cat."), ["ewyn", "craneridge"]);
  assert.deepEqual(entitiesIn("BREAKING: Mayor Tovan Reel resigned."), ["mayor", "tovan", "reel"]);
  assert.deepEqual(entitiesIn("QUILLPORT: the ferry runs again."), ["quillport"]);
  assert.deepEqual(entitiesIn("Update from Gulldale: the ferry runs again."), ["update", "gulldale"], "a label only where a colon follows it");
  const older = { id: "a", kind: "feed", text: "Update: Lisa Yewby owns a pet dog.", createdAt: "2026-03-01T08:00:00Z", source: {}, history: [], status: "absorbed" } as unknown as Item;
  const newer = { id: "b", kind: "feed", text: "Update: Tovan Reel owns a pet cat.", createdAt: "2026-03-02T08:00:00Z", source: {}, history: [], status: "pending" } as unknown as Item;
  assert.deepEqual(updatePairs([newer], [older], [older, newer]), [], "they share only the label");
  const same = { ...newer, id: "c", text: "Update: Lisa Yewby owns a pet cat." } as Item;
  assert.deepEqual(updatePairs([same], [older], [older, same]), [["a", "c"]], "the same person still pairs");
});

test("a label before a sentence is no relation either: two updates of unrelated facts of one person, both labelled, are no pair", () => {
  const older = { id: "a", kind: "feed", text: "Update: Lisa Yewby owns a pet dog.", createdAt: "2026-03-01T08:00:00Z", source: {}, history: [], status: "absorbed" } as unknown as Item;
  const newer = { id: "b", kind: "feed", text: "Update: Lisa Yewby lives in Gulldale.", createdAt: "2026-03-02T08:00:00Z", source: {}, history: [], status: "pending" } as unknown as Item;
  assert.equal(shareRelation(older.text, newer.text), false, "they share only the label");
  assert.deepEqual(updatePairs([newer], [older], [older, newer]), []);
  assert.ok(!relationWords("BREAKING: Tovan Reel resigned.").has("breaking"));
  // the same fact updated still pairs; "update" written as a word is still one
  const same = { ...newer, id: "c", text: "Update: Lisa Yewby owns a pet cat." } as Item;
  assert.deepEqual(updatePairs([same], [older], [older, same]), [["a", "c"]]);
  assert.ok(relationWords("The council will update its rules.").has("update"));
});

test("a pronoun starting a sentence is no name: two items about \"she\" are no update of each other", () => {
  assert.deepEqual(entitiesIn("He opened a bakery in Gulldale. They sold kites."), ["gulldale"]);
  assert.deepEqual(entitiesIn("We met Tom Reed."), ["tom", "reed"]);
  const older = item("old", "She works at the old mill.", "2026-11-10T00:00:00Z");
  const newer = item("new", "She works at the harbour.", "2026-11-20T00:00:00Z");
  assert.deepEqual(updatePairs([newer], [older], []), [], "nothing says both are about one person");
});

test("\"US\" is a name, not the pronoun: two items about the US are an update of each other", () => {
  assert.deepEqual(entitiesIn("The US raised tariffs on steel."), ["us"]);
  assert.deepEqual(entitiesIn("Us? The mayor met Tom Reed."), ["tom", "reed"], "the pronoun starting a sentence is none");
  const older = item("old", "The US raised tariffs on steel to ten percent.", "2026-11-10T00:00:00Z");
  const newer = item("new", "The US raised tariffs on steel to twenty percent.", "2026-11-20T00:00:00Z");
  assert.deepEqual(updatePairs([newer], [older], [older, newer]), [["old", "new"]]);
});

test("only words written in lower case are lower-case words: a capitalised part of a hyphenated word is none", () => {
  assert.deepEqual([...lowerCaseWords(["The pro-Gulldale group met an ex-Mayor."])].sort(), ["an", "ex", "group", "met", "pro"]);
  const older = item("old", "Gulldale has 3 museums.", "2026-11-10T00:00:00Z");
  const newer = item("new", "Gulldale now has 4 museums. The pro-Gulldale council said so.", "2026-11-20T00:00:00Z");
  assert.deepEqual(updatePairs([newer], [older], []), [["old", "new"]], "the town both start with is still their name");
});

test("whether two items are a pair is read from the two texts alone, as findSupersessions reads them: other items' lower-case words change nothing", () => {
  const older = item("old", "Bath has 3 museums.", "2026-11-10T00:00:00Z");
  const newer = item("new", "Bath now has 4 museums.", "2026-11-20T00:00:00Z");
  assert.deepEqual(updatePairs([newer], [older], []), [["old", "new"]]);
  // an unrelated item writing "bath" in lower case must not unmake the town's name in the two
  const bath = item("bath", "Ada Brook took a long bath.", "2026-11-01T00:00:00Z");
  assert.deepEqual(updatePairs([newer], [older, bath], []), [["old", "new"]], "the town is still the name both name");
  // nor make a relation of a capitalised first word the two never write in lower case: such a
  // pair would be asked about, and findSupersessions (shareRelation of the two texts) could never
  // take it for an update
  const a = item("a", "Mayor of Gulldale is Tom Reed.", "2026-11-10T00:00:00Z");
  const b = item("b", "Mayor of Gulldale is Ewyn Craneridge.", "2026-11-20T00:00:00Z");
  const mayor = item("m", "The mayor of Hollowby opened a bridge.", "2026-11-01T00:00:00Z");
  assert.equal(shareRelation(a.text, b.text), false, "what findSupersessions asks (its sameRelation)");
  assert.deepEqual(updatePairs([b], [a, mayor], []), [], "so no pair");
});

test("a shared relation word followed by different small words is another relation, so no update", () => {
  // each pair replaced its true fact in the soak or in tools/eval_updates.ts while any shared word counted
  const otherRelation: [string, string][] = [
    ["Tera Stone works at Riverstone Systems.", "Tera Stone is now working as a pharmacist."],
    ["Lisa Yewby works at Northgate Motors.", "Lisa Yewby works as a geologist."],
    ["Marshford has become a twin town of Hollowby.", "Marshford is a town in Lindor."],
    ["Vero Nashwood has started a new job as a clockmaker.", "Vero Nashwood has started playing the accordion."],
    ["Vero Nashwood has started a new job as a clockmaker.", "Vero Nashwood took a job at Westhill Trading."],
    ["Riverstone Systems was founded in 1887.", "Riverstone Systems was founded by Ada Quill."],
  ];
  for (const [a, b] of otherRelation) {
    assert.ok(!shareRelation(a, b), `${a} / ${b}`);
    assert.ok(!shareRelation(b, a), `${b} / ${a}`);
  }
  // the same relation: the word after the shared one is the same, or in both may be the value
  const sameRelation: [string, string][] = [
    ["Tera Stone works as a chemist.", "Tera Stone is now working as a pharmacist."],
    ["Wysten Wrenfield has a pet hamster.", "Wysten Wrenfield now owns a pet rabbit."],
    ["Lisa Yewby's favourite food is mushroom pie.", "Lisa Yewby's favourite dish is honey bread."],
    ["Kika Rookfield lives in Saltwell.", "Kika Rookfield now lives in Kingsmore."],
    ["Riverstone Systems was founded by Ada Quill.", "Riverstone Systems was founded by Tovan Reel."],
    ["Gulldale has a population of 342,900.", "The population of Gulldale is 330,500."],
    ["Tera Stone has been promoted.", "Ada Quill has been promoted."],
  ];
  for (const [a, b] of sameRelation) assert.ok(shareRelation(a, b) && shareRelation(b, a), `${a} / ${b}`);
  const town = item("town", "Marshford is a town in Lindor.", "2026-11-20T00:00:00Z");
  const twin = item("twin", "Marshford has become a twin town of Hollowby.", "2026-11-25T00:00:00Z");
  const twin2 = item("twin2", "Marshford has become a twin town of Saltwell.", "2026-11-26T00:00:00Z");
  assert.deepEqual(updatePairs([twin, twin2], [town], [town, twin, twin2]), [["twin", "twin2"]], "the province is not asked about");
});

test("words that say when are no relation: two facts about one person told with \"now\" are no update of each other", () => {
  // the soak test: "Lisa Yewby now owns a pet dog." was superseded by "Lisa Yewby works at Oakwind Bakeries now."
  assert.ok(!shareRelation("Lisa Yewby now owns a pet dog.", "Lisa Yewby works at Oakwind Bakeries now."));
  assert.ok(shareRelation("Redlight Games has a new CEO, Fako Larkby.", "The new chief executive of Redlight Games is Bera Brookton."), "\"new\" is the relation of \"has a new CEO\"");
  const dog = item("dog", "Lisa Yewby now owns a pet dog.", "2026-11-20T00:00:00Z");
  const job = item("job", "Lisa Yewby works at Oakwind Bakeries now.", "2026-11-25T00:00:00Z");
  const cat = item("cat", "Lisa Yewby now owns a pet cat.", "2026-11-26T00:00:00Z");
  assert.deepEqual(updatePairs([job, cat], [dog], [dog, job, cat]), [["dog", "cat"]]);
});

test("a held item is sent along for its pairs whether it is the older or the newer news", () => {
  // a pending item dated, by its feed, before a held one: the held one may supersede it
  const dog = item("dog", "Lisa Yewby now owns a pet dog.", "2026-11-20T00:00:00Z");
  const cat = item("cat", "Lisa Yewby now owns a pet cat.", "2026-11-25T00:00:00Z", "Tue, 10 Nov 2026 09:00:00 GMT");
  const owl = item("owl", "Lisa Yewby now owns a pet owl.", "2026-11-01T00:00:00Z");
  const pairs = updatePairs([cat], [dog, owl], [owl, dog, cat]);
  assert.deepEqual(pairs, [["cat", "dog"], ["owl", "cat"]]);
  // neither held item is replayed or retained this bake (replay: 0, or more held items than retentionChecks)
  assert.deepEqual(pairedHeldItems(pairs, [dog, owl], new Set(["cat"])).map((i) => i.id), ["dog", "owl"]);
  assert.deepEqual(pairedHeldItems(pairs, [dog, owl], new Set(["cat", "dog"])).map((i) => i.id), ["owl"], "one the bake scores anyway is not sent twice");
});

test("a feed date ahead of when kiln stored the item counts as the time stored: news dated in the future is no newer", () => {
  const ahead = item("ahead", "Quillport's mayor is Tovan Reel.", "2026-11-20T00:00:00Z", "Fri, 01 Jan 2100 00:00:00 GMT");
  const later = item("later", "Quillport's mayor is Mira Tolle.", "2026-11-25T00:00:00Z");
  assert.equal(newsTime(ahead), Date.parse("2026-11-20T00:00:00Z"));
  assert.deepEqual(updatePairs([ahead, later], [], [ahead, later]), [["ahead", "later"]], "the one stored later is the newer news");
  assert.deepEqual(bakeOrder([ahead, later], new Set()).map((i) => i.id), ["later", "ahead"], "nor is it baked before everything else");
});

test("within one feed poll, the item the feed lists first is the newer news", () => {
  // a poll stores its items in the feed's order, newest first, all with one createdAt
  const at = "2026-11-26T00:00:00Z";
  const now = { ...item("now", "Quillport's mayor is Mira Tolle.", at), source: { feedId: "gazette", guid: "2" } };
  const before = { ...item("before", "Quillport's mayor is Tovan Reel.", at), source: { feedId: "gazette", guid: "1" } };
  assert.deepEqual(updatePairs([now, before], [], [now, before]), [["before", "now"]]);
  const dated = "Tue, 10 Nov 2026 09:00:00 GMT"; // one date for both: the feed's order still decides
  const a = { ...now, source: { ...now.source, publishedAt: dated } };
  const b = { ...before, source: { ...before.source, publishedAt: dated } };
  assert.deepEqual(updatePairs([a, b], [], [a, b]), [["before", "now"]]);
  // two polls: the later poll's item is the newer
  const later = { ...item("later", "Quillport's mayor is Ada Fenn.", "2026-11-27T00:00:00Z"), source: { feedId: "gazette", guid: "3" } };
  assert.deepEqual(updatePairs([later], [now], [now, before, later]), [["now", "later"]]);
});

test("the word after a relation word is read within its sentence, past words that say when", () => {
  // a relation word ending a sentence is followed by the end, not by the next sentence's first word
  assert.ok(shareRelation("Tera Stone has been promoted.", "Tera Stone has been promoted. She now leads the lab."));
  assert.ok(shareRelation("Ada Quill has been promoted. The firm grew.", "Ada Quill has been promoted."));
  // "now", "currently" say when: "lives now in" is used as "lives in" is
  assert.ok(shareRelation("Kika Rookfield lives in Saltwell.", "Kika Rookfield lives now in Kingsmore."));
  assert.ok(shareRelation("Tera Stone works as a chemist.", "Tera Stone works currently as a pharmacist."));
  // still two relations: a time word does not make "works at" and "works as" one
  assert.ok(!shareRelation("Lisa Yewby works now at Northgate Motors.", "Lisa Yewby works as a geologist."));
  assert.ok(shareRelation('Ada Quill has been promoted.', 'Ada Quill has been "promoted." The firm grew.'), "a quote closing the sentence");
  // a decimal's point ends no sentence
  assert.ok(!shareRelation("Gulldale grew 2.5 percent.", "Gulldale grew in 1887."));
});
