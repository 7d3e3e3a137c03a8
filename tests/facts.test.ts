import { test } from "node:test";
import assert from "node:assert/strict";
import { extractFacts } from "../src/agent/facts.js";

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
});
