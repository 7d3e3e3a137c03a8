// The JSON constraint on its own: which texts the matcher accepts for a schema, and the token mask
// over kiln-mini's real vocabulary driving random logits to text that parses and fits the schema.
import { test } from "node:test";
import assert from "node:assert/strict";
import { z } from "zod";
import { ChatTokenizer } from "../src/model/tokenizer.js";
import { seededRandom } from "../src/model/sampling.js";
import { constrainToJson, JsonMatcher, schemaGaps, tokenTexts, type JsonSchema } from "../src/model/json-constraint.js";
import { PACKAGE_ROOT } from "../src/model/resolve.js";
import path from "node:path";

/** Whether the matcher accepts the whole text as a finished value. */
function accepts(schema: JsonSchema, text: string): boolean {
  return JsonMatcher.of(schema).feed(text)?.complete ?? false;
}

/** The length of the longest prefix of `text` the matcher can still grow from. */
function acceptedPrefix(schema: JsonSchema, text: string): number {
  let m = JsonMatcher.of(schema);
  let n = 0;
  for (const ch of text) {
    const next = m.feed(ch);
    if (!next) break;
    m = next;
    n += ch.length;
  }
  return n;
}

const Person = z.object({
  name: z.string(),
  age: z.number().int().min(0).max(150).optional(),
  role: z.enum(["mayor", "baker"]),
  tags: z.array(z.string()).max(2),
  nick: z.string().nullable(),
  score: z.number().min(-1).max(1).optional(),
});
const personSchema = z.toJSONSchema(Person) as JsonSchema;

test("the matcher accepts JSON that fits the schema, in either layout, and nothing past its end", () => {
  for (const text of [
    '{"name":"Ada","role":"mayor","tags":[],"nick":null}',
    '{"name": "Ada", "role": "baker", "tags": ["a", "b"], "nick": "A", "age": 37}',
    '{"tags":["x"],"nick":null,"role":"mayor","name":"Tovan \\"T\\" Reel \\u00e9","score":-0.25}',
    '{"name":"","role":"mayor","tags":[],"nick":null,"age":0,"score":1}',
  ]) {
    assert.ok(accepts(personSchema, text), text);
    assert.ok(Person.safeParse(JSON.parse(text)).success, `the test's own text fits: ${text}`);
    assert.equal(JsonMatcher.of(personSchema).feed(text + " "), null, "nothing may follow the value");
  }
  assert.equal(JsonMatcher.of(personSchema).feed('{"name":"Ada"')?.complete, false, "an open object is not whole");
});

test("the matcher rejects a text at the first character that cannot fit", () => {
  const cases: [string, string][] = [
    ['{"name":"Ada","nick":null,"role":"mayor","tags":[]}', ""], // valid: the whole text
    ['{"nam":1', '{"nam'], // a key no property has
    ['{"name":"A","name"', '{"name":"A","n'], // no key twice ("n" may still start "nick")
    ['{"name":1', '{"name":'], // wrong type
    ['{"role":"mayo"}', '{"role":"mayo'], // not an enum value
    ['{"name":"A"}', '{"name":"A"'], // required keys missing
    ['{"age":151', '{"age":15'], // above the maximum: 151 cannot be reached
    ['{"age":-1', '{"age":'], // below the minimum
    ['{"age":1.5', '{"age":1'], // an integer has no fraction
    ['{"score":1.5', '{"score":1.'], // 1.5 > 1: no number starting 1.5 fits
    ['{"tags":["a","b","c"]', '{"tags":["a","b"'], // maxItems
    ['{ "name"', "{"], // no space after the brace
    ['{"name":  "A"', '{"name": '], // one space at most
    ['{"name":"a\nb"', '{"name":"a'], // raw control characters are escaped in JSON
    ['{"name":"\\x"', '{"name":"\\'], // not an escape
    ['{"nick":nul', '{"nick":nul'], // a prefix of null is fine so far
  ];
  for (const [text, kept] of cases) {
    const n = acceptedPrefix(personSchema, text);
    assert.equal(text.slice(0, n), kept || text, `${JSON.stringify(text)} is accepted up to ${JSON.stringify(kept || text)}`);
  }
});

test("unions, enums of any type, $refs, recursion and fixed heads", () => {
  const union: JsonSchema = { anyOf: [{ type: "object", properties: { a: { type: "integer" } }, required: ["a"] }, { type: "object", properties: { b: { const: true } }, required: ["b"] }, { type: "string", maxLength: 3 }] };
  for (const t of ['{"a":12}', '{"b":true}', '"abc"']) assert.ok(accepts(union, t), t);
  for (const t of ['{"a":true}', '{"b":false}', '"abcd"', '{"c":1}']) assert.ok(!accepts(union, t), t);

  assert.ok(accepts({ enum: [1, 10, "x", null, { k: [1] }] }, "10"));
  assert.ok(accepts({ enum: [1, 10, "x", null, { k: [1] }] }, '{"k":[1]}'));
  assert.ok(!accepts({ enum: [1, 10] }, "100"));

  const tree: JsonSchema = { $ref: "#/$defs/node", $defs: { node: { type: "object", properties: { v: { type: "number" }, kids: { type: "array", items: { $ref: "#/$defs/node" } } }, required: ["v"] } } };
  assert.ok(accepts(tree, '{"v":1,"kids":[{"v":2,"kids":[{"v":3e2}]}]}'));
  assert.ok(!accepts(tree, '{"v":1,"kids":[{"kids":[]}]}'));

  const free: JsonSchema = { type: "object" };
  assert.ok(accepts(free, '{"anything": [1, {"x": "y"}], "more": false}'));
  // a free key is read as a run (the matcher's shortcut) and still kept: no key twice
  assert.equal(JsonMatcher.of(free).feed('{"ab":1,"ab"'), null);
  assert.equal(JsonMatcher.of(free).feed('{"ab":1,"a')!.feed('b"'), null);
  assert.ok(accepts(free, '{"ab":1,"abc":2,"a\\"b":3}'), "an escaped quote is part of the key");
  assert.equal(JsonMatcher.of(free).feed('{"ab":1,"a\\u0062"'), null, "the same key, escaped");
  // lengths count code points (an emoji is two UTF-16 units, one character)
  assert.ok(accepts({ type: "string", maxLength: 2 }, '"\u{1F600}x"'));
  assert.ok(!accepts({ type: "string", maxLength: 2 }, '"\u{1F600}xy"'));
  assert.ok(accepts(true, "-0.5e3"));

  const calls = JsonMatcher.afterHeads([
    { head: '{"name": "get_weather", "arguments": ', schema: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } },
    { head: '{"name": "get_time", "arguments": ', schema: { type: "object", properties: {} } },
  ]);
  assert.ok(calls.feed('{"name": "get_weather", "arguments": {"city": "Quillport"}')?.complete);
  assert.ok(calls.feed('{"name": "get_time", "arguments": {}')?.complete);
  assert.equal(calls.feed('{"name": "get_timer'), null);
  assert.equal(calls.feed('{"name": "get_weather", "arguments": {}'), null, "city is required");
});

test("the token mask over kiln-mini's vocabulary turns random logits into JSON that fits the schema", () => {
  const tokenizer = ChatTokenizer.fromDirectory(path.join(PACKAGE_ROOT, "models", "kiln-mini"));
  const V = 2048;
  const vocab = tokenTexts(tokenizer, V);
  const eos = tokenizer.eosTokenIds;
  // tokens that close things are made likelier, or a random walk writes one endless string
  const closing = vocab.texts.map((t) => (/["\]},]/.test(t) ? 3 : 0));
  let finished = 0;
  for (let seed = 1; seed <= 20; seed++) {
    const random = seededRandom(seed);
    const mask = constrainToJson(vocab, eos, JsonMatcher.of(personSchema));
    const tokens: number[] = [];
    let ended = false;
    for (let step = 0; step < 300 && !ended; step++) {
      // random logits with the end-of-turn token the likeliest: the mask must keep out whatever does not fit
      const logits = Float32Array.from({ length: V }, (_, id) => random() * 4 + closing[id]!);
      for (const id of eos) logits[id] = 10;
      const allowedBefore = logits.slice();
      mask(logits, tokens);
      let best = 0;
      for (let i = 1; i < V; i++) if (logits[i]! > logits[best]!) best = i;
      assert.ok(Number.isFinite(logits[best]!), "some token is always allowed");
      assert.equal(logits[best], allowedBefore[best], "allowed tokens keep their logits");
      if (eos.includes(best)) ended = true;
      else tokens.push(best);
    }
    const text = tokenizer.decode(tokens);
    if (!ended) {
      assert.ok(JsonMatcher.of(personSchema).feed(text), `an unfinished text is still a valid prefix: ${text}`);
      continue;
    }
    finished++;
    const parsed = Person.safeParse(JSON.parse(text));
    assert.ok(parsed.success, `${text}: ${parsed.error?.message}`);
  }
  assert.ok(finished >= 10, `${finished} of 20 random walks finished within 300 tokens`);
});

test("schemaGaps lists what the matcher does not enforce, where it is; annotations and what it enforces are not listed", () => {
  // everything the matcher reads, and annotations: no gaps (the Person schema above included)
  assert.deepEqual(schemaGaps(personSchema), []);
  const enforced: JsonSchema = {
    $schema: "http://json-schema.org/draft-07/schema#",
    title: "t",
    type: "object",
    properties: { a: { type: ["string", "null"], minLength: 1, maxLength: 3, description: "d" }, b: { $ref: "#/definitions/b" }, c: { anyOf: [{ const: 1 }, { enum: ["x"] }] } },
    required: ["a"],
    additionalProperties: false,
    definitions: { b: { type: "array", items: { type: "number", exclusiveMinimum: 0 }, minItems: 1 } },
    "x-vendor": true, // unknown keywords say nothing about validity, in JSON Schema too
  };
  assert.deepEqual(schemaGaps(enforced), []);

  const gappy: JsonSchema = {
    type: "object",
    properties: {
      "e/mail": { type: "string", format: "email", pattern: "@" },
      list: { type: "array", items: [{ type: "string" }], uniqueItems: true },
      n: { type: "number", multipleOf: 2, exclusiveMaximum: true },
      r: { $ref: "#/$defs/r", description: "an annotation beside $ref is fine", minimum: 3 },
      both: { allOf: [{ type: "string" }], not: { const: "" } },
    },
    minProperties: 1,
    $defs: { r: { type: "integer", if: { minimum: 0 }, then: { maximum: 9 } } },
  };
  assert.deepEqual(
    schemaGaps(gappy).map((g) => `${g.keyword} ${g.at}${g.detail ? ` (${g.detail})` : ""}`),
    [
      "minProperties #",
      "format #/properties/e~1mail",
      "pattern #/properties/e~1mail",
      "items #/properties/list (a list of schemas (tuple items))",
      "uniqueItems #/properties/list",
      "multipleOf #/properties/n",
      "exclusiveMaximum #/properties/n (as a boolean (draft 4))",
      "minimum #/properties/r (beside $ref (the reference is read alone))",
      "allOf #/properties/both",
      "not #/properties/both",
      "if #/$defs/r",
      "then #/$defs/r",
    ],
  );

  // oneOf is matched as anyOf: exact only when no value fits two branches (types or a discriminator tell)
  const byKind: JsonSchema = { oneOf: [{ type: "object", properties: { kind: { const: "a" } }, required: ["kind"] }, { type: "object", properties: { kind: { enum: ["b", "c"] } }, required: ["kind"] }] };
  assert.deepEqual(schemaGaps(byKind), []);
  assert.deepEqual(schemaGaps({ oneOf: [{ type: "string" }, { type: "null" }] }), []);
  assert.deepEqual(schemaGaps({ oneOf: [{ type: "integer" }, { type: "number" }] }).map((g) => g.keyword), ["oneOf"], "1 fits both");
  assert.deepEqual(schemaGaps({ oneOf: [{ type: "object", properties: { kind: { const: "a" } } }, { type: "object", properties: { kind: { const: "b" } } }] }).map((g) => g.keyword), ["oneOf"], "kind is not required: {} fits both");
});

test("a required key the properties leave out is written with additionalProperties' schema; with additionalProperties false no object fits", () => {
  const schema: JsonSchema = { type: "object", properties: { a: { type: "integer" } }, required: ["a", "b"], additionalProperties: { type: "boolean" } };
  assert.ok(accepts(schema, '{"a":1,"b":true}'));
  assert.ok(!accepts(schema, '{"a":1}'));
  assert.ok(!accepts(schema, '{"a":1,"b":2}'));
  assert.ok(accepts({ type: "object", properties: { a: { type: "integer" } }, required: ["b"] }, '{"b":[1,{}]}'), "additionalProperties unset: any value");
  assert.throws(() => JsonMatcher.of({ type: "object", properties: { a: { type: "integer" } }, required: ["b"], additionalProperties: false }), /"b" is required but additionalProperties is false/);
});

test("the token mask allows exactly the tokens the matcher accepts next, inside strings (its shortcut) and out", () => {
  const tokenizer = ChatTokenizer.fromDirectory(path.join(PACKAGE_ROOT, "models", "kiln-mini"));
  const V = 2048;
  const vocab = tokenTexts(tokenizer, V);
  const eos = tokenizer.eosTokenIds;
  const named: JsonSchema = { type: "object", properties: { name: { type: "string", maxLength: 5 }, note: { type: "string" }, n: { type: "integer", maximum: 50 } }, required: ["name"] };
  const cases: [JsonSchema, string[]][] = [
    [named, ['{"name":"', '{"name":"ab', '{"name":"abcd', '{"name":"abcde', '{"note":"x\\', '{"note":"x\\\\', '{"note":"long text', '{"na', '{"n":4', '{"name":"a"', '']],
    [{ type: "object" }, ['{"', '{"ab', '{"a\\', '{"ab":"c', '{"ab":1,"', '{"ab":{"', '{"ab":["x", "']], // any keys (json_object)
  ];
  for (const [schema, prefixes] of cases) {
    for (const prefix of prefixes) {
      const matcher = JsonMatcher.of(schema);
      const state = matcher.feed(prefix)!;
      assert.ok(state, prefix);
      const tokens = tokenizer.encode(prefix);
      assert.equal(tokens.map((t) => vocab.texts[t]).join(""), prefix, "the prefix's tokens spell it");
      const logits = new Float32Array(V);
      constrainToJson(vocab, eos, matcher)(logits, tokens);
      const allowed = [...logits.keys()].filter((id) => logits[id] === 0);
      const expected = [...logits.keys()].filter((id) => (eos.includes(id) ? state.complete : vocab.texts[id] !== "" && state.feed(vocab.texts[id]!) !== null));
      assert.deepEqual(allowed, expected, JSON.stringify(prefix));
    }
  }
});
