import { test } from "node:test";
import assert from "node:assert/strict";
import { extractFacts, extractFactsWithModel, extractionRequest, forgetMatches, forgetWords, NO_FACTS, parseExtraction } from "../src/agent/facts.js";

test("explicit remember and forget", () => {
  assert.deepEqual(extractFacts("Remember that the ferry leaves at noon"), [{ kind: "remember", text: "The ferry leaves at noon." }]);
  assert.deepEqual(extractFacts("please remember: my dog is called Pip!"), [{ kind: "remember", text: "My dog is called Pip." }]);
  assert.deepEqual(extractFacts("Forget about the ferry."), [{ kind: "forget", query: "the ferry" }]);
});

test("first-person statements become facts about the user", () => {
  assert.deepEqual(extractFacts("Hi! My name is Ada Lovelace, and I live in Quillport."), [
    { kind: "remember", text: "The user's name is Ada Lovelace." },
    { kind: "remember", text: "The user lives in Quillport." },
  ]);
  assert.deepEqual(extractFacts("my favorite color is teal"), [{ kind: "remember", text: "The user's favorite color is teal." }]);
});

test("questions and chit-chat state nothing", () => {
  assert.deepEqual(extractFacts("What is the capital of Dunmore?"), []);
  assert.deepEqual(extractFacts("remember"), []);
  // "That." was stored as a fact: the optional "that" gave way to the value
  for (const nothing of ["remember that", "Remember this.", "please remember that!", "remember me", "remember it", "remember everything", "remember who I am", "remember that I am", "remember where I parked the car", "Remember what I told you about Bo?"]) assert.deepEqual(extractFacts(nothing), [], nothing);
  assert.deepEqual(extractFacts("remember that I am vegetarian"), [{ kind: "remember", text: "I am vegetarian." }]);
  assert.deepEqual(extractFacts("remember that Bo is 7"), [{ kind: "remember", text: "Bo is 7." }]);
  assert.deepEqual(extractFacts("remember: x is y"), [{ kind: "remember", text: "X is y." }]);
});

test("a model's extraction is kept only where the message grounds it", () => {
  const msg = "FYI: the mayor of Hollowby is now Caka Cobbton. Who runs Oakvale?";
  assert.deepEqual(parseExtraction(" The mayor of Hollowby is now Caka Cobbton.", msg), ["The mayor of Hollowby is now Caka Cobbton."]);
  // an invented name never reaches the ledger; "None." and fragments are no facts
  assert.deepEqual(parseExtraction(" The mayor of Hollowby is Tovan Reel.\nNone.\nOakvale", msg), []);
  assert.deepEqual(parseExtraction(` ${NO_FACTS}`, msg), []);
  // a request or a question given back is no fact (seen from kiln-mini on a busy server)
  assert.deepEqual(parseExtraction(" Tell me a long story.", "Tell me a long story."), []);
  assert.deepEqual(parseExtraction(" Can you tell me about order 4512.", "Can you tell me about order 4512?"), []);
  assert.deepEqual(parseExtraction(" The mayor of Quillport? 390.", "Who is the mayor of Quillport? 390"), []);
  // facts about the user may use "The user" though the message says "I"
  assert.deepEqual(parseExtraction(" The user lives in Quillport.", "I live in Quillport."), ["The user lives in Quillport."]);
  // a line left in the first person is no fact about the user (baked, it would be the agent's own)
  const stated = "My name is Ada and I live in Saltwell.";
  assert.deepEqual(parseExtraction(" The user's name is Ada and I live in Saltwell.", stated), []);
  assert.deepEqual(parseExtraction(" My name is Ada.", stated), []);
  // an invented subject, even as the first word, and an invented plain-word value are refused
  assert.deepEqual(parseExtraction(" Tovan is the mayor of Hollowby.", msg), []);
  assert.deepEqual(parseExtraction(" The user is allergic to peanuts.", "I am allergic to shellfish."), []);
  assert.deepEqual(parseExtraction(" The ferry costs 12 coins.", "The ferry costs 9 coins."), []);
  // kiln-mini's garbage with every word borrowed or glue: a value is never a function word
  assert.deepEqual(parseExtraction(" The user's n message: Did.", "Did you know? Jolin Birchby now owns a pet tortoise."), []);
  // list markers are not part of the fact
  assert.deepEqual(parseExtraction("- The mayor of Hollowby is now Caka Cobbton.\n2. Caka Cobbton runs Oakvale now", msg), ["The mayor of Hollowby is now Caka Cobbton.", "Caka Cobbton runs Oakvale now."]);
  assert.deepEqual(parseExtraction("1. Who runs Oakvale now", msg), [], "the message's question given back");
});

test("model-based capture: explicit requests win, the rules catch what the model misses, a failing model loses nothing", async () => {
  const asked: string[] = [];
  const model = (reply: string) => async (turn: string) => {
    asked.push(turn);
    return reply;
  };
  const stated = await extractFactsWithModel("Guess what. Lisa Yewby works at Northgate Motors.", model(" Lisa Yewby works at Northgate Motors."));
  assert.equal(stated.source, "model");
  assert.deepEqual(stated.actions, [{ kind: "remember", text: "Lisa Yewby works at Northgate Motors." }]);
  assert.equal(asked.at(-1), extractionRequest("Guess what. Lisa Yewby works at Northgate Motors."));

  const n = asked.length;
  const explicit = await extractFactsWithModel("Remember that the ferry leaves at noon", model(" Something else entirely."));
  assert.deepEqual(explicit, { actions: [{ kind: "remember", text: "The ferry leaves at noon." }], source: "explicit" });
  assert.equal(asked.length, n, "explicit requests do not ask the model");

  const missed = await extractFactsWithModel("My name is Ada.", model(" The user's name is Bob."));
  assert.deepEqual(missed, { actions: [{ kind: "remember", text: "The user's name is Ada." }], source: "rules" });

  // a first-person line from the model (kiln-mini's reply in a chat) leaves the message to the rules
  const half = await extractFactsWithModel("My name is Ada and I live in Saltwell.", model(" The user's name is Ada and I live in Saltwell."));
  assert.deepEqual(half, {
    actions: [
      { kind: "remember", text: "The user's name is Ada." },
      { kind: "remember", text: "The user lives in Saltwell." },
    ],
    source: "rules",
  });

  const broken = await extractFactsWithModel("I live in Quillport.", async () => {
    throw new Error("out of memory");
  });
  assert.deepEqual(broken, { actions: [{ kind: "remember", text: "The user lives in Quillport." }], source: "rules" });

  // a message that only asks states nothing, whatever the model gives back
  const before = asked.length;
  assert.deepEqual(await extractFactsWithModel("Weather in Hollowby?", model(" Weather in Hollowby.")), { actions: [], source: "rules" });
  assert.deepEqual(await extractFactsWithModel("Who is the mayor? And the harbor master?", model(" The mayor.")), { actions: [], source: "rules" });
  assert.equal(asked.length, before, "the model is not asked");
  const mixed = await extractFactsWithModel("Lisa Yewby works at Northgate Motors. Did you know?", model(" Lisa Yewby works at Northgate Motors."));
  assert.equal(mixed.actions.length, 1, "a statement beside a question is still read");
});

test("forget names items by their words: \"forget it\" names nothing", () => {
  const items = [{ text: "The harbor fee is nine coins." }, { text: "The city wall is old." }, { text: "The harbor master is Ada." }];
  assert.deepEqual(forgetMatches("it", items), [], "not every item containing 'it'");
  assert.deepEqual(forgetWords("it"), []);
  assert.deepEqual(forgetWords("that thing about the harbor"), ["thing", "harbor"]);
  assert.deepEqual(forgetMatches("the harbor fee", items), [items[0]]);
  assert.deepEqual(forgetMatches("harbor", items), [items[0], items[2]]);
  assert.deepEqual(forgetMatches("harbors", items).length, 2, "stems match");
  assert.deepEqual(forgetMatches("wall city", items), [items[1]]);
});
