import { test } from "node:test";
import assert from "node:assert/strict";
import { asksAbout, chooseProbes, normalizeAnswer, probeQuality, withoutSuffix, type ProbeCandidate } from "../src/bake/probes.js";
import { entitiesIn, namesGrounded, namesIn, support, unsupportedWords, vocabulary } from "../src/knowledge/grounding.js";

// Probes the embedded model wrote for the demo's feed before probes were checked (a demo ledger).
const ITEM = "The population of Amberport is 405,100.";

test("names: sentence starts count only when asked, numbers always, 'I' never", () => {
  assert.deepEqual(namesIn("Who is the mayor of Hollowby?"), ["hollowby"]);
  assert.deepEqual(namesIn("The mayor of Hollowby is Caka Cobbton."), ["hollowby", "caka", "cobbton"]);
  assert.deepEqual(namesIn("Lisa Yewby works at Northgate Motors.", { sentenceStarts: true }), ["lisa", "yewby", "northgate", "motors"]);
  assert.deepEqual(namesIn("I think 405,100 people. Quillport too."), ["405", "100"]);
  assert.deepEqual(entitiesIn("The mayor of Hollowby is Caka Cobbton."), ["hollowby", "caka", "cobbton"]);
});

test("grounding: a line naming what its source does not is not grounded", () => {
  const said = vocabulary("The mayor of Hollowby is Caka Cobbton.");
  assert.equal(namesGrounded("Who is Hollowby's mayor?", said), true);
  assert.equal(namesGrounded("Who is the mayor of Thornby?", said), false);
  assert.equal(namesGrounded("How many people live in Hollowby? About 4,200.", said), false);
  assert.equal(support("The mayor of Hollowby is Caka Cobbton.", said), 1);
  assert.equal(support("The CEO of Hollowby is Caka Cobbton.", said), 0.75);
});

test("probe quality: an answer that restates its item ranks first", () => {
  const right = probeQuality("How many people live in Amberport?", "The population of Amberport is 405,100.", ITEM);
  const borrowed = probeQuality("Who is the mayor of Amberport?", "The mayor of Amberport is 405,100.", ITEM);
  assert.equal(right, 1);
  assert.ok(borrowed > 0 && borrowed < right, `${borrowed}`);
});

test("probe quality: off-topic questions and answers score 0", () => {
  // a question about another entity, answered from it
  assert.equal(probeQuality("Who is the CEO of Blueforge?", "The CEO of Blueforge Foods is Gulldale.", "The population of Gulldale is 176,600."), 0);
  // answered "I don't know." with the item in the prompt: the question is not about the item
  assert.equal(probeQuality("Who is the CEO of Hollowby?", "I don't know.", "Hollowby has a population of 4,200."), 0);
  // an answer that invents a name
  assert.equal(probeQuality("What river runs through Saltwell?", "Saltwell sits on the Esk River near Dunmore.", "Saltwell sits on the Esk River."), 0);
  assert.equal(probeQuality("Who is the mayor of Amberport?", "", ITEM), 0);
  // an answer that asks back (the soak: it passed as update evidence and superseded a true fact)
  assert.equal(probeQuality("Which province is Marshford in?", "Marshford is twinned with?", "Marshford has become a twin town of Hollowby."), 0);
  assert.ok(probeQuality("Which town is Marshford twinned with?", "Marshford is twinned with Hollowby.", "Marshford has become a twin town of Hollowby.") > 0, "the same words, answered");
});

test("a persona sign-off is not part of the answer", () => {
  assert.equal(withoutSuffix("The population of Amberport is 405,100.\n— Kiln", "— Kiln"), ITEM);
  assert.equal(normalizeAnswer(" The population of Amberport is 405,100.\n— Kiln", "— Kiln"), "the population of amberport is 405,100");
});

test("probe quality: an answer mostly in other words is about something else", () => {
  assert.equal(probeQuality("What is Caermoor's job?", "Caermoor is now working as a carpenter.", "Caermoor is in the province of Harrow."), 0);
});

test("a probe question is a question, and about the item", () => {
  const item = "Saltwell is a town in Fallow.";
  // what a small model wrote when asked for a question: an answer, or the item restated
  assert.equal(asksAbout("I don't know.", item), false);
  assert.equal(probeQuality("I don't know.", "Saltwell is a town in Fallow.", item), 0);
  assert.equal(asksAbout("Saltwell is a town in Fallow.", item), false);
  assert.equal(asksAbout("What is it?", item), false, "names nothing the item names");
  assert.equal(asksAbout("Where is Saltwell?", item), true);
  assert.equal(asksAbout("Which province is Saltwell's?", item), true, "a possessive names the same town");
  // an item without names: a content word it says will do
  assert.equal(asksAbout("When does the ferry run?", "the ferry runs at noon."), true);
  assert.equal(asksAbout("What is the weather?", "the ferry runs at noon."), false);
});

// The soak's defect 4: a question about another fact of the item's subject, answered with that
// fact's words and the item's value, passed probeQuality and was baked as knowledge.
test("a probe whose answer says what its item does not is not kept: it asks about another fact", () => {
  const item = "The new mayor of Gulldale is Ewyn Craneridge.";
  const off = { question: "How many people live in Gulldale?", answer: "The population of Gulldale is Ewyn Craneridge." };
  assert.ok(probeQuality(off.question, off.answer, item) > 0, "names and most words are the item's");
  assert.deepEqual(unsupportedWords(off.answer, item), ["population"]);
  // an invented value that is no name ("accordion") is said by no item either
  assert.deepEqual(unsupportedWords("Tora Wicker plays the accordion.", "Tora Wicker is now working as a surveyor."), ["plays", "accordion"]);
  // the item's words in another tense or number, and words that say when, are the item's
  assert.deepEqual(unsupportedWords("Marshford is twinned with Hollowby now.", "Marshford has become a twin town of Hollowby."), []);
  assert.deepEqual(unsupportedWords("Kika Rookfield lived in Saltwell.", "Kika Rookfield lives in Saltwell."), []);
  assert.deepEqual(unsupportedWords("Tera Stone is working at Redlight Games.", "Tera Stone works at Redlight Games."), []);

  const candidate = (question: string, answer: string, order: number): ProbeCandidate => ({ itemId: "m", question, answer, order, quality: probeQuality(question, answer, item), supported: !unsupportedWords(answer, item).length });
  const own = candidate("Who is the mayor of Gulldale?", "The mayor of Gulldale is Ewyn Craneridge.", 1);
  assert.deepEqual(chooseProbes([candidate(off.question, off.answer, 0), own], 2), [{ question: own.question, answer: own.answer }]);
  assert.deepEqual(chooseProbes([candidate(off.question, off.answer, 0)], 2), [], "no probe: the item is not baked");
  assert.deepEqual(chooseProbes([candidate(off.question, off.answer, 0)], 2, { unchecked: true }), [off], "bake.checkProbes: false keeps the first");
});
