// The JSON constraint on its own: which texts the matcher accepts for a schema, the schemas it
// refuses (nothing fits them, left recursion, too large), how far its readings grow, and the token
// mask over kiln-mini's real vocabulary and a SentencePiece (Metaspace) one driving random logits
// to text that parses and fits the schema.
import { test } from "node:test";
import assert from "node:assert/strict";
import { z } from "zod";
import { ChatTokenizer } from "../src/model/tokenizer.js";
import { seededRandom } from "../src/model/sampling.js";
import { constrainToJson, JSON_CONSTRAINT_LIMITS, JsonConstraintError, JsonMatcher, JsonSchemaError, schemaGaps, tokenTexts, type JsonSchema } from "../src/model/json-constraint.js";
import { PACKAGE_ROOT } from "../src/model/resolve.js";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { repoRoot } from "./support/paths.js";
import { walkMask } from "./support/mask.js";

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
    const mask = constrainToJson(vocab, eos, JsonMatcher.of(personSchema));
    const { tokens, ended } = walkMask(mask, { vocabSize: V, eos, seed, steps: 300, bias: (id) => closing[id]! });
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

/** A schema whose anyOf of two $refs to the next level nests `depth` deep: 2^depth readings if they were followed one by one. */
function doubling(depth: number): JsonSchema {
  const defs: Record<string, unknown> = {};
  for (let i = 0; i < depth; i++) defs[`a${i}`] = { anyOf: [{ $ref: `#/$defs/a${i + 1}` }, { $ref: `#/$defs/a${i + 1}` }] };
  defs[`a${depth}`] = { type: "string", maxLength: 5 };
  return { $defs: defs, $ref: "#/$defs/a0" };
}

test("nested anyOf and $refs start one reading per distinct schema, and ambiguity that nests stays narrow", () => {
  // 20 levels: 2^20 readings if each was followed on its own (seconds and hundreds of MB for 3 characters)
  const m = JsonMatcher.of(doubling(20));
  assert.equal(m.feed('"ab')?.width, 1);
  assert.ok(m.feed('"abcde"')?.complete);
  assert.equal(m.feed('"abcdef'), null, "the leaf's maxLength still holds");

  // a tree whose node kinds share a recursive property: which kind each level is stays open until
  // its "kind" comes, so every level is two readings; merged, the text is still only two wide
  const children = { type: "array", items: { $ref: "#" } };
  const tree: JsonSchema = { anyOf: ["div", "span"].map((kind) => ({ type: "object", properties: { children, kind: { const: kind } }, required: ["kind"] })) };
  const open = '{"children":['.repeat(30);
  assert.ok(JsonMatcher.of(tree).feed(open)!.width <= 2, "not 2^30 readings");
  let text = open + '{"kind":"div"}';
  for (let i = 0; i < 30; i++) text += `],"kind":"${i % 2 ? "div" : "span"}"}`;
  assert.ok(JsonMatcher.of(tree).feed(text)?.complete);
  assert.equal(JsonMatcher.of(tree).feed(open + '{"kind":"div"}]}'), null, "kind is still required at every level");
  // an enum is one reading however many of its values are still possible
  const many = JsonMatcher.of({ enum: Array.from({ length: 5000 }, (_, i) => `v${i}`) });
  assert.equal(many.feed('"v1')?.width, 1);
  assert.ok(many.feed('"v4999"')?.complete);
  assert.equal(many.feed('"v5000"'), null);
});

test("schemas past the matcher's limits are refused when compiled, and readings past its bound throw", () => {
  const refuses = (schema: JsonSchema, message: RegExp) => {
    assert.throws(() => JsonMatcher.of(schema), (err: unknown) => err instanceof JsonSchemaError && message.test(err.message), String(message));
  };
  const objects = (n: number) => Array.from({ length: n }, (_, i) => ({ type: "object", properties: { [`k${i}`]: { type: "string" } } }));
  refuses({ anyOf: objects(JSON_CONSTRAINT_LIMITS.alternatives + 1) }, /# has 257 alternatives once its \$refs and nested anyOf are followed; .* at most 256/);
  refuses({ anyOf: [{ anyOf: objects(200) }, { $ref: "#/$defs/more" }], $defs: { more: { anyOf: objects(100) } } }, /300 alternatives/);
  assert.ok(JsonMatcher.of({ anyOf: [...objects(200), ...Array.from({ length: 500 }, (_, i) => ({ const: i }))] }), "enum and const values count as one");
  let deep: JsonSchema = { type: "string" };
  for (let i = 0; i < 10_000; i++) deep = { items: deep };
  refuses(deep, /nests deeper than 128 levels \(at #\/items\/items/);
  assert.throws(() => schemaGaps(deep), JsonSchemaError, "schemaGaps walks no deeper");
  refuses({ type: "object", properties: Object.fromEntries(Array.from({ length: 25_000 }, (_, i) => [`p${i}`, { type: "string" }])) }, /too large .* more than 20000/);

});

test("a schema that could open more readings at once than the matcher follows is refused when compiled, naming the place, not mid-reply", () => {
  const tooAmbiguous = (at: string, readings: number) => (err: unknown) =>
    err instanceof JsonSchemaError && err.message.includes(`at ${at} in the value`) && err.message.includes(`follow ${readings} readings at once (at most 1024)`);
  // Each union is within the 256 alternatives, but they add up at one place: five kinds of array
  // whose items are each a union of 256 strings are all open after '["' (this used to compile
  // and then throw while the reply was being written).
  const strings = () => ({ anyOf: Array.from({ length: 256 }, (_, i) => ({ type: "string", maxLength: 100 + i })) });
  const arrays = (kinds: number): JsonSchema => ({ anyOf: Array.from({ length: kinds }, (_, k) => ({ type: "array", minItems: k, items: strings() })) });
  assert.throws(() => JsonMatcher.of(arrays(5)), tooAmbiguous("$[*]", 1280));
  // at the bound it is compiled, and the text that opens them all is followed
  assert.equal(JsonMatcher.of(arrays(4)).feed('["')?.width, 1024);
  // Objects: keys may come in any order, so a tag the model could write first does not help.
  const tagged = (kinds: number): JsonSchema => ({
    anyOf: Array.from({ length: kinds }, (_, k) => ({ type: "object", properties: { kind: { const: k }, v: strings() }, required: ["kind", "v"] })),
  });
  assert.throws(() => JsonMatcher.of(tagged(5)), tooAmbiguous("$.v", 1280));
  assert.throws(() => JsonMatcher.of(tagged(5)).feed('{"v":"'), JsonSchemaError, "never compiled: the 1280 readings after it are not reached");
  // types that start differently do not add up: 1280 schemas at $[*], but 640 start with '"' and 640 with '['
  const mixed = () => ({ anyOf: Array.from({ length: 256 }, (_, i) => (i % 2 ? { type: "string", maxLength: i } : { type: "array", maxItems: i + 1 })) });
  const mixedArrays = JsonMatcher.of({ anyOf: Array.from({ length: 5 }, (_, k) => ({ type: "array", minItems: k, items: mixed() })) });
  assert.equal(mixedArrays.feed('["ab",[],"')?.width, 640);
  // a recursive schema is walked once per distinct set of schemas at a place
  const tree: JsonSchema = { $defs: { n: { type: "object", properties: { kids: { type: "array", items: { $ref: "#/$defs/n" } }, v: strings() } } }, $ref: "#/$defs/n" };
  assert.ok(JsonMatcher.of(tree).feed('{"kids":[{"kids":[{"v":"x'));
  // alternatives after fixed heads (a forced call of one of several tools): the tool whose
  // parameters are too ambiguous is named; values after different heads never stand together
  const heads = [{ head: "a:", schema: strings() }, { head: "b:", schema: arrays(5) }];
  assert.throws(() => JsonMatcher.afterHeads(heads), (err: unknown) => err instanceof JsonSchemaError && err.alternative === 1 && /too ambiguous/.test(err.message));
  const eachWide = Array.from({ length: 8 }, (_, i) => ({ head: `t${i}:`, schema: arrays(4) }));
  assert.equal(JsonMatcher.afterHeads(eachWide).feed('t7:["')?.width, 1024);
  // a value with no head is read beside the others: together they may be too many
  assert.throws(() => JsonMatcher.afterHeads([...eachWide, { head: "", schema: strings() }]), (err: unknown) => err instanceof JsonSchemaError && err.alternative === undefined && /9 alternatives together .* 1280 readings at once \(at most 1024\)/.test(err.message));
});

test("a $ref/anyOf cycle that reads no character is refused, naming it; recursion through a property or items is fine", () => {
  const cycles: [JsonSchema, string][] = [
    [{ $ref: "#" }, "# -> #"],
    [{ anyOf: [{ $ref: "#" }, { type: "string" }] }, "# -> #/anyOf/0 -> #"],
    [{ $defs: { a: { $ref: "#/$defs/b" }, b: { $ref: "#/$defs/a" } }, $ref: "#/$defs/a" }, "#/$defs/a -> #/$defs/b -> #/$defs/a"],
    [{ type: "object", properties: { x: { oneOf: [{ type: "null" }, { $ref: "#/properties/x" }] } } }, "#/properties/x -> #/properties/x/oneOf/1 -> #/properties/x"],
  ];
  for (const [schema, cycle] of cycles) {
    assert.throws(
      () => JsonMatcher.of(schema),
      (err: unknown) => err instanceof JsonSchemaError && err.message.includes(`(${cycle})`) && /refers back to itself without reading any text/.test(err.message),
      cycle,
    );
  }
  assert.throws(() => JsonMatcher.afterHeads([{ head: "a", schema: { type: "string" } }, { head: "b", schema: { $ref: "#" } }]), (err: unknown) => err instanceof JsonSchemaError && err.alternative === 1, "the alternative is named");

  const list: JsonSchema = { type: "object", properties: { v: { type: "integer" }, next: { anyOf: [{ $ref: "#" }, { type: "null" }] } }, required: ["v", "next"] };
  assert.ok(accepts(list, '{"v":1,"next":{"v":2,"next":null}}'));
  const nested: JsonSchema = { $defs: { a: { type: "array", items: { $ref: "#/$defs/b" } }, b: { anyOf: [{ $ref: "#/$defs/a" }, { type: "integer" }] } }, $ref: "#/$defs/a" };
  assert.ok(accepts(nested, "[[1,[2]],3,[]]"));
  // recursion that must go on forever fits nothing
  assert.throws(() => JsonMatcher.of({ type: "object", properties: { next: { $ref: "#" } }, required: ["next"] }), /no value fits the schema: #: its required "next" fits nothing: # can only be written by nesting it in itself forever/);
});

test("a schema no value fits is refused, saying where and why; parts of a schema nothing fits are dropped", () => {
  const refused: [JsonSchema, RegExp][] = [
    [{ type: "object", required: ["a"], additionalProperties: false }, /#: "a" is required but additionalProperties is false and there are no properties, so no object fits/],
    [{ type: "object", properties: {}, required: ["a"], additionalProperties: false }, /#: "a" is required but additionalProperties is false and there are no properties/],
    [{ type: "object", properties: { b: { type: "string" } }, required: ["a"], additionalProperties: false }, /#: "a" is required but additionalProperties is false and properties do not declare it/],
    [{ type: "string", minLength: 5, maxLength: 3 }, /#: minLength 5 is above maxLength 3/],
    [{ type: "number", minimum: 5, maximum: 3 }, /#: no number lies within minimum 5 and maximum 3/],
    [{ type: "number", exclusiveMinimum: 1, exclusiveMaximum: 1 }, /no number lies within exclusiveMinimum 1 and exclusiveMaximum 1/],
    [{ type: "integer", minimum: 0.2, maximum: 0.8 }, /no integer lies within minimum 0.2 and maximum 0.8/],
    [{ type: "array", minItems: 3, maxItems: 1 }, /#: minItems 3 is above maxItems 1/],
    [{ type: "array", items: false, minItems: 1 }, /#: it needs 1 items, and they fit nothing: #\/items is false/],
    [{ type: "object", properties: { a: { type: "string", maxLength: -1 } }, required: ["a"] }, /#: its required "a" fits nothing: #\/properties\/a: minLength 0 is above maxLength -1/],
    [{ anyOf: [{ type: "string", minLength: 2, maxLength: 1 }, { type: "integer", minimum: 1, maximum: 0 }] }, /no alternative of # fits anything \(#\/anyOf\/0: minLength 2 is above maxLength 1; #\/anyOf\/1: no integer lies within minimum 1 and maximum 0\)/],
    [{ type: "string", enum: [1, 2] }, /#: none of its enum\/const values fits the rest of its schema/],
    [{ const: "abc", maxLength: 2 }, /none of its enum\/const values fits/],
    [false, /# is false/],
  ];
  for (const [schema, message] of refused) {
    assert.throws(() => JsonMatcher.of(schema), (err: unknown) => err instanceof JsonSchemaError && /^no value fits the schema: /.test(err.message) && message.test(err.message), `${JSON.stringify(schema)}: ${message}`);
  }
  // what a value need not use is dropped, so the matcher never starts what it could not finish
  const partly: JsonSchema = { type: "object", properties: { ok: { type: "string" }, never: { type: "integer", minimum: 3, maximum: 2 } } };
  assert.ok(accepts(partly, '{"ok":"x"}'));
  assert.equal(JsonMatcher.of(partly).feed('{"ne'), null, "a key whose value nothing fits is not started");
  assert.ok(accepts({ type: ["string", "null"], minLength: 3, maxLength: 2 }, "null"));
  assert.equal(JsonMatcher.of({ type: ["string", "null"], minLength: 3, maxLength: 2 }).feed('"'), null);
  const union: JsonSchema = { anyOf: [{ type: "object", required: ["x"], additionalProperties: false }, { type: "object", properties: { y: { type: "boolean" } }, required: ["y"] }] };
  assert.ok(accepts(union, '{"y":true}'));
  assert.equal(JsonMatcher.of(union).feed('{"x'), null);
  assert.ok(accepts({ type: "array", items: { type: "string", minLength: 2, maxLength: 1 } }, "[]"));
  assert.equal(JsonMatcher.of({ type: "array", items: { type: "string", minLength: 2, maxLength: 1 } }).feed('["'), null, "no item can be started, only closed");
  // enum values are checked against the rest of their schema
  const e: JsonSchema = { type: "string", enum: ["a", 1, "bb", null], maxLength: 1 };
  assert.ok(accepts(e, '"a"'));
  for (const t of ["1", '"bb"', "null"]) assert.ok(!accepts(e, t), t);
  assert.ok(accepts({ enum: ["\u{1F600}", "x"] }, '"\u{1F600}"'), "an enum value with a character beyond the BMP");
});

test("the mask throws when no token continues the value, or the text left the constraint: never an end-of-turn on broken JSON", () => {
  // a vocabulary that cannot write a closing brace
  const texts = ["", "{", '"', "a", ":", ","];
  const tokenizer = { decode: (ids: number[]) => ids.map((id) => texts[id]!).join("") };
  const vocab = tokenTexts(tokenizer, texts.length);
  const schema: JsonSchema = { type: "object", properties: { a: { const: "a" } }, required: ["a"] };
  const mask = constrainToJson(vocab, [0], JsonMatcher.of(schema));
  const logits = new Float32Array(texts.length);
  mask(logits, []);
  assert.deepEqual([...logits].map((l) => l === 0), [false, true, false, false, false, false], "only { opens it");
  const written = [1, 2, 3, 2, 4, 2, 3, 2]; // {"a":"a"
  for (let n = 1; n < written.length; n++) {
    mask(logits.fill(0), written.slice(0, n));
    assert.equal(logits[written[n]!], 0, `${tokenizer.decode(written.slice(0, n + 1))} is allowed`);
  }
  assert.throws(() => mask(logits.fill(0), written), (err: unknown) => err instanceof JsonConstraintError && /no token of the vocabulary continues the JSON after "\{\\"a\\":\\"a\\""/.test(err.message));
  // a token the mask did not allow
  assert.throws(() => constrainToJson(vocab, [0], JsonMatcher.of(schema))(logits.fill(0), [3]), (err: unknown) => err instanceof JsonConstraintError && /left the JSON constraint at "a"/.test(err.message));
});

test("schemaGaps lists enforced keywords whose values the matcher cannot read (it ignores them), so strict refuses them", () => {
  const malformed: JsonSchema = {
    type: "object",
    properties: { a: { type: "int" }, b: { type: ["string", 5] }, c: { type: "string", minLength: "3", maxLength: null }, d: 7, e: { enum: "x" }, f: { anyOf: [{ type: "string" }, null] } },
    required: "a",
    additionalProperties: "no",
    $defs: [],
  };
  assert.deepEqual(
    schemaGaps(malformed).map((g) => `${g.keyword} ${g.at} (${g.detail})`),
    [
      "required # (not a list of property names: ignored)",
      "additionalProperties # (not a schema: ignored)",
      "$defs # (not an object of schemas: ignored)",
      "type #/properties/a (not a type name (object, array, string, number, integer, boolean, null): ignored)",
      "type #/properties/b (not a list of type names (object, array, string, number, integer, boolean, null): ignored)",
      "minLength #/properties/c (not a number: ignored)",
      "maxLength #/properties/c (not a number: ignored)",
      "properties #/properties/d (not a schema: ignored)",
      "enum #/properties/e (not a list: ignored)",
      "anyOf #/properties/f/anyOf/1 (not a schema: ignored)",
    ],
  );
  // what it reads is not listed
  assert.deepEqual(schemaGaps({ type: ["integer", "null"], minimum: 0, exclusiveMaximum: 9, enum: [1, null], items: false, additionalProperties: true, required: [], $ref: "#" }).filter((g) => !g.detail?.startsWith("beside $ref")), []);
});

test("fixed text the vocabulary cannot write (an enum value, a declared key) is refused when the mask is made, naming where and the character", () => {
  // a character vocabulary without "é" or "☃" (and the bytes of a byte-level one, which decode to U+FFFD alone)
  const texts = ["", "{", "}", '"', ":", ",", " ", "a", "b", "c", "f", "x", "\uFFFD", "x☃"];
  const vocab = tokenTexts({ decode: (ids: number[]) => ids.map((id) => texts[id]!).join("") }, texts.length);
  const refused = (schema: JsonSchema, message: RegExp) =>
    assert.throws(() => JsonMatcher.of(schema).writableBy(vocab), (err: unknown) => err instanceof JsonSchemaError && message.test(err.message), JSON.stringify(schema));
  refused({ enum: ["ab", "café"] }, /^#: the enum\/const value "café" holds "é" \(U\+00E9\), which the model's vocabulary cannot write/);
  refused({ type: "object", properties: { a: { type: "array", items: { const: "b\u{1F98A}" } } } }, /^#\/properties\/a\/items: the enum\/const value "b\u{1F98A}" holds "\u{1F98A}" \(U\+1F98A\)/u);
  refused({ type: "object", properties: { caf\u00e9: { type: "string" } } }, /^#\/properties\/café: the property name "café" holds "é" \(U\+00E9\)/);
  refused({ $defs: { k: { enum: ["fé"] } }, type: "object", properties: { a: { $ref: "#/$defs/k" } } }, /^#\/\$defs\/k: the enum\/const value "fé" holds "é"/);
  // a tool's call: the alternative is named
  assert.throws(
    () => JsonMatcher.afterHeads([{ head: "x", schema: { enum: ["a"] } }, { head: "y", schema: { enum: ["é"] } }]).writableBy(vocab),
    (err: unknown) => err instanceof JsonSchemaError && err.alternative === 1,
  );
  // what the mask need not force: free strings (any character may be escaped), free keys, values dropped as unfitting
  for (const schema of [{ type: "string" }, { type: "object", additionalProperties: { type: "string" } }, { type: "string", enum: ["ab", 1.5, "ééé"], maxLength: 2 }, { enum: ["x☃"] }] as JsonSchema[]) {
    assert.doesNotThrow(() => JsonMatcher.of(schema).writableBy(vocab), JSON.stringify(schema));
  }
  // a declared key that needs an escape is refused whatever the vocabulary: the mask writes keys without escapes
  for (const key of ['a"b', "a\\b", "a\nb"]) {
    assert.throws(() => JsonMatcher.of({ type: "object", properties: { [key]: { type: "integer" } } }), (err: unknown) => err instanceof JsonSchemaError && /which JSON writes escaped/.test(err.message), key);
  }
});

test("numbers under bounds: every prefix the mask allows can still end within them (exclusive bounds, decimals that floating point adds up short)", () => {
  // each a reply that failed mid-way before: "0" under exclusiveMinimum 0 (nothing may follow an
  // integer's 0), "10" under exclusiveMaximum 10, "0.0" under minimum 0.1 (0.09 + 0.01 < 0.1)
  const cases: [JsonSchema, string[], string[]][] = [
    [{ type: "integer", exclusiveMinimum: 0, maximum: 10 }, ["1", "10"], ["0", "-"]],
    [{ type: "integer", minimum: 1, exclusiveMaximum: 10 }, ["1", "9"], ["10"]],
    [{ type: "integer", exclusiveMinimum: -10, maximum: -1 }, ["-9", "-1"], ["-10", "-0"]],
    [{ type: "number", minimum: 0.1, maximum: 0.2 }, ["0.1", "0.15", "0.2"], ["0.0", "0.09", "0.21"]],
    [{ type: "number", minimum: 1.1, maximum: 1.3 }, ["1.1", "1.29"], ["1.09", "1.31"]],
    [{ type: "number", exclusiveMinimum: 0, exclusiveMaximum: 1 }, ["0.5", "0.001"], ["1", "1.", "-", "0.0}"]],
    // not a prefix that only a run of nines Number() rounds up to the bound could finish
    [{ type: "number", minimum: 0.7, maximum: 0.8 }, ["0.7", "0.8"], ["0.69", "0.6999", "0.81"]],
  ];
  for (const [schema, whole, dead] of cases) {
    const m = JsonMatcher.of(schema);
    for (const text of whole) assert.ok(m.feed(text)?.complete, `${text} fits ${JSON.stringify(schema)}`);
    for (const text of dead) assert.equal(m.feed(text), null, `${text} cannot become a value of ${JSON.stringify(schema)}`);
  }
  // a model writing digits at random under the mask always finishes a number that fits
  const texts = ["", ...Array.from("0123456789.-"), "00", "0.", "10", "99", "1.", "-0"];
  const vocab = tokenTexts({ decode: (ids: number[]) => ids.map((id) => texts[id]!).join("") }, texts.length);
  const schemas: JsonSchema[] = [...cases.map(([schema]) => schema), { type: "number", exclusiveMaximum: 10, minimum: 9 }, { type: "integer", exclusiveMaximum: 100 }, { type: "number", minimum: -0.2, maximum: -0.1 }];
  for (const schema of schemas) {
    const b = schema as { type: string; minimum?: number; maximum?: number; exclusiveMinimum?: number; exclusiveMaximum?: number };
    const fitsBounds = (v: number) =>
      (b.type !== "integer" || Number.isInteger(v)) && v >= (b.minimum ?? -Infinity) && v <= (b.maximum ?? Infinity) && v > (b.exclusiveMinimum ?? -Infinity) && v < (b.exclusiveMaximum ?? Infinity);
    for (let seed = 1; seed <= 40; seed++) {
      const { tokens, ended } = walkMask(constrainToJson(vocab, [0], JsonMatcher.of(schema)), { vocabSize: texts.length, eos: [0], seed, steps: 80, endLogit: 3.9 });
      const text = tokens.map((id) => texts[id]).join("");
      assert.ok(ended, `${JSON.stringify(schema)}: ${text} ended`);
      assert.ok(fitsBounds(JSON.parse(text)), `${text} fits ${JSON.stringify(schema)}`);
    }
  }
});

// A SentencePiece BPE tokenizer as Hugging Face converts Llama 2, TinyLlama and Mistral (made by
// tools/fixtures/make_metaspace_tokenizer.mjs): a word-initial piece ("▁name") decodes to "name"
// alone but adds " name" after another piece.
const METASPACE = path.join(repoRoot(), "tests", "fixtures", "tokenizers", "metaspace");

/** The fixture, and the same vocabulary with the Metaspace pre-tokenizer and decoder (prepend_scheme "first", as newer conversions write it). */
function metaspaceTokenizers(): { name: string; tokenizer: ChatTokenizer; cleanup?: () => void }[] {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-metaspace-"));
  const json = JSON.parse(readFileSync(path.join(METASPACE, "tokenizer.json"), "utf8"));
  const metaspace = { type: "Metaspace", replacement: "▁", prepend_scheme: "first", split: false };
  const decoder = { type: "Sequence", decoders: [{ type: "ByteFallback" }, { type: "Fuse" }, metaspace] };
  writeFileSync(path.join(dir, "tokenizer.json"), JSON.stringify({ ...json, normalizer: null, pre_tokenizer: metaspace, decoder }));
  writeFileSync(path.join(dir, "tokenizer_config.json"), readFileSync(path.join(METASPACE, "tokenizer_config.json")));
  return [
    { name: "Llama 2 layout (Strip decoder)", tokenizer: ChatTokenizer.fromDirectory(METASPACE) },
    { name: "Metaspace decoder", tokenizer: ChatTokenizer.fromDirectory(dir), cleanup: () => rmSync(dir, { recursive: true, force: true }) },
  ];
}

test("a SentencePiece (Metaspace) vocabulary: each token is read as the reply decodes it, so keys and enums come out as the schema says", () => {
  const V = 319;
  const Reply = z.object({ name: z.string().max(12), role: z.enum(["mayor", "baker"]), city: z.string().max(12).optional() }).strict();
  const schema = z.toJSONSchema(Reply) as JsonSchema;
  for (const { name, tokenizer, cleanup } of metaspaceTokenizers()) {
    try {
      const vocab = tokenTexts(tokenizer, V);
      const id = (piece: string) => tokenizer.tokenToId(piece)!;
      assert.deepEqual([vocab.texts[id("▁name")], vocab.first.texts[id("▁name")], vocab.texts[id("▁")], vocab.texts[id("name")]], [" name", "name", " ", "name"], name);
      let spaced = 0;
      for (let seed = 1; seed <= 12; seed++) {
        const random = seededRandom(seed);
        const mask = constrainToJson(vocab, tokenizer.eosTokenIds, JsonMatcher.of(schema));
        const tokens: number[] = [];
        for (let step = 0; step < 120; step++) {
          // a SentencePiece model prefers word-initial pieces; closing ones keep the walk short
          const logits = Float32Array.from({ length: V }, (_, i) => random() * 2 + (tokenizer.decode([id("a"), i]).startsWith("a ") ? 4 : 0) + (/["}]/.test(vocab.texts[i]!) ? 2 : 0));
          mask(logits, tokens);
          let best = 0;
          for (let i = 1; i < V; i++) if (logits[i]! > logits[best]!) best = i;
          if (tokenizer.eosTokenIds.includes(best)) break;
          if (tokens.length && vocab.texts[best]!.startsWith(" ")) spaced++;
          tokens.push(best);
        }
        const text = tokenizer.decode(tokens);
        const parsed = Reply.safeParse(JSON.parse(text));
        assert.ok(parsed.success, `${name}, seed ${seed}: ${text}: ${parsed.error?.message}`);
      }
      assert.ok(spaced > 10, `${name}: the walks chose word-initial pieces after the first (${spaced})`);

      // a character written as byte pieces decodes as U+FFFD until its last byte: the constraint
      // reads the whole text again, so the string holds it as one character
      const bytes = [...Buffer.from("é")].map((b) => id(`<0x${b.toString(16).toUpperCase()}>`));
      const plan = [id("▁{"), id('"'), id("name"), id('":"'), ...bytes, id('",'), id('▁"'), id("role"), id('":"'), id("baker"), id('"}')];
      const mask = constrainToJson(vocab, tokenizer.eosTokenIds, JsonMatcher.of(schema));
      const logits = new Float32Array(V);
      for (let n = 0; n < plan.length; n++) {
        mask(logits.fill(0), plan.slice(0, n));
        assert.equal(logits[plan[n]!], 0, `${name}: ${JSON.stringify(tokenizer.decode(plan.slice(0, n + 1)))} is allowed`);
      }
      mask(logits.fill(0), plan);
      assert.deepEqual(tokenizer.eosTokenIds.map((e) => logits[e]), [0], "then only the end");
      assert.deepEqual(JSON.parse(tokenizer.decode(plan)), { name: "é", role: "baker" });
    } finally {
      cleanup?.();
    }
  }
});

test("schemaGaps follows a local $ref wherever it points, as compile() does: a schema kept outside $defs is checked too", () => {
  // an OpenAPI-style place for schemas: compile() reads the pattern's string through the $ref
  const elsewhere: JsonSchema = { type: "object", properties: { a: { $ref: "#/components/A" } }, required: ["a"], components: { A: { type: "string", pattern: "^[0-9]+$" } } };
  JsonMatcher.of(elsewhere);
  assert.deepEqual(
    schemaGaps(elsewhere).map((g) => `${g.keyword} ${g.at}`),
    ["pattern #/components/A"],
  );
  // a $ref into $defs is walked once, not listed twice
  assert.deepEqual(schemaGaps({ $ref: "#/$defs/r", $defs: { r: { type: "string", format: "date" } } }).map((g) => `${g.keyword} ${g.at}`), ["format #/$defs/r"]);
});

test("schemaGaps lists a union's own keywords beside a $ref branch: compile() reads that branch's reference alone", () => {
  const schema: JsonSchema = { type: "object", properties: { a: { type: "string" } }, required: ["a"], anyOf: [{ $ref: "#/$defs/B" }, { required: ["a", "b"] }], $defs: { B: { type: "object" } } };
  assert.ok(accepts(schema, "{}"), "the shared required is not enforced on the $ref branch");
  assert.deepEqual(
    schemaGaps(schema).map((g) => `${g.keyword} ${g.at}${g.detail ? ` (${g.detail})` : ""}`),
    ["type #/anyOf/0 (beside $ref (the reference is read alone))", "properties #/anyOf/0 (beside $ref (the reference is read alone))", "required #/anyOf/0 (beside $ref (the reference is read alone))"],
  );
  assert.deepEqual(schemaGaps({ anyOf: [{ $ref: "#/$defs/B" }, { type: "null" }], $defs: { B: { type: "object" } }, description: "d" }), [], "annotations and $defs beside the union are fine");
});

test("schemaGaps lists a $ref to what is not a schema (null, a list): compile() reads it as any value", () => {
  for (const target of [null, [{ type: "string" }]]) {
    const schema = { type: "object", properties: { a: { $ref: "#/$defs/x" } }, required: ["a"], $defs: { x: target } } as unknown as JsonSchema;
    assert.ok(accepts(schema, '{"a":[1,{}]}'), "any value is accepted");
    assert.deepEqual(
      schemaGaps(schema).map((g) => `${g.keyword} ${g.at}${g.detail ? ` (${g.detail})` : ""}`),
      ["$ref #/properties/a (not a schema: ignored)"],
      JSON.stringify(target),
    );
  }
});

test("schemaGaps lists a branch keyword that overrides the union's own: compile() gives the branch's alone, JSON Schema asks both", () => {
  const listed = (s: JsonSchema) => schemaGaps(s).map((g) => `${g.keyword} ${g.at}`);
  const required: JsonSchema = { type: "object", required: ["a"], anyOf: [{ required: ["b"] }, { required: ["a", "c"] }] };
  assert.ok(accepts(required, '{"b":1}'), "a is not asked for in the first branch");
  assert.deepEqual(listed(required), ["required #/anyOf/0"]);
  const minimum: JsonSchema = { minimum: 5, anyOf: [{ type: "integer", minimum: 0 }, { type: "integer", minimum: 6 }] };
  assert.ok(accepts(minimum, "1"));
  assert.deepEqual(listed(minimum), ["minimum #/anyOf/0"]);
  const properties: JsonSchema = { type: "object", properties: { a: { type: "string" } }, required: ["a"], anyOf: [{ properties: { b: { type: "integer" } } }] };
  assert.ok(accepts(properties, '{"a":5}'), "the union's a: string is not read");
  assert.deepEqual(listed(properties), ["properties #/anyOf/0"]);
  const type: JsonSchema = { type: "object", oneOf: [{ type: "string" }, { type: "null" }] };
  assert.deepEqual(listed(type), ["type #/oneOf/0", "type #/oneOf/1"]);
  // a branch that only narrows the union's keyword is read exactly
  assert.deepEqual(listed({ type: ["string", "null"], minLength: 1, anyOf: [{ type: "string", minLength: 2 }, { type: "null" }] }), []);
  assert.deepEqual(listed({ type: "object", required: ["a"], anyOf: [{ type: "object", required: ["a", "b"] }] }), []);
  assert.deepEqual(listed({ type: "number", anyOf: [{ type: "integer", maximum: 3 }, { type: "number", minimum: 10 }] }), []);
});

test("schemaGaps lists an enum beside a const that it leaves out: compile() reads the const alone", () => {
  assert.ok(accepts({ const: "a", enum: ["b"] }, '"a"'), "no value fits both, yet a is written");
  assert.deepEqual(schemaGaps({ const: "a", enum: ["b"] }).map((g) => `${g.keyword} ${g.at}`), ["enum #"]);
  assert.deepEqual(schemaGaps({ const: { x: 1 }, enum: ["b", { x: 1 }] }), [], "the const among the enum's values: exact");
});

test("schemaGaps: a branch redeclaring the union's properties is read exactly where it keeps them (a discriminator's const), listed where it drops one", () => {
  const listed = (s: JsonSchema) => schemaGaps(s).map((g) => `${g.keyword} ${g.at}`);
  const kind = (k: string) => ({ properties: { kind: { const: k }, id: { type: "integer" }, [k]: { type: "string" } }, required: ["kind", "id", k] });
  const tagged: JsonSchema = { type: "object", properties: { kind: { type: "string", enum: ["a", "b"] }, id: { type: "integer" } }, required: ["kind", "id"], oneOf: [kind("a"), kind("b")] };
  assert.deepEqual(listed(tagged), []);
  assert.ok(accepts(tagged, '{"kind":"a","id":1,"a":"x"}'));
  // the branch leaves out a required property of the union's: any value is written for it
  const dropped: JsonSchema = { type: "object", properties: { kind: { type: "string" }, id: { type: "integer" } }, required: ["kind", "id"], anyOf: [{ properties: { kind: { const: "a" } } }] };
  assert.ok(accepts(dropped, '{"kind":"a","id":"x"}'));
  assert.deepEqual(listed(dropped), ["properties #/anyOf/0"]);
  // a const the union's own schema for the property does not allow
  assert.deepEqual(listed({ type: "object", properties: { kind: { type: "integer" } }, anyOf: [{ properties: { kind: { const: "a" } } }] }), ["properties #/anyOf/0"]);
  // a key the union's additionalProperties false forbids
  assert.deepEqual(listed({ type: "object", properties: { kind: { type: "string" } }, additionalProperties: false, anyOf: [{ properties: { kind: { type: "string" }, x: { type: "string" } } }] }), ["properties #/anyOf/0"]);
  assert.deepEqual(
    listed({ type: "object", properties: { kind: { type: "string" } }, additionalProperties: false, anyOf: [{ properties: { kind: { type: "string" }, x: { type: "string" } }, additionalProperties: true }] }),
    ["properties #/anyOf/0", "additionalProperties #/anyOf/0"],
    "the branch's own additionalProperties does not let the union's keys through",
  );
});

// JSON Schema compares enum/const values as JSON values: an object's keys in any order are one value.
const pair = { a: 1, b: 2 };
const pairReordered = { b: 2, a: 1 };

test("an enum/const value is checked against the enum/const values inside its schema as a JSON value, not as text", () => {
  // the items' const is still a list of values when the array's const is checked against it
  const items: JsonSchema = { type: "array", items: { const: pair }, const: [pairReordered] };
  assert.ok(accepts(items, '[{"b":2,"a":1}]'), "the const fits its items' const: not refused, and written as given");
  // the $ref'd const compiled earlier (for p) is checked the same way when q's const is
  const referred = (q: unknown): JsonSchema => ({
    type: "object",
    properties: { p: { $ref: "#/$defs/pair" }, q: { type: "array", items: { $ref: "#/$defs/pair" }, const: q } },
    required: ["q"],
    $defs: { pair: { const: pair } },
  });
  assert.ok(accepts(referred([pairReordered]), '{"q":[{"b":2,"a":1}]}'));
  assert.throws(() => JsonMatcher.of(referred([{ a: 1, b: 3 }])), JsonSchemaError, "a different value is still refused");
});

test("schemaGaps: an enum beside a const holds the const whatever its keys' order", () => {
  assert.deepEqual(schemaGaps({ const: pair, enum: ["x", pairReordered] }), [], "strict must not refuse it");
  assert.deepEqual(schemaGaps({ const: { o: pair, l: [pair] }, enum: [{ l: [pairReordered], o: pairReordered }] }), [], "nested, too");
});

test("schemaGaps: a union's keyword the branch repeats with its keys in another order is read exactly", () => {
  const listed = (s: JsonSchema) => schemaGaps(s).map((g) => `${g.keyword} ${g.at}`);
  assert.deepEqual(listed({ type: "object", additionalProperties: { type: "string", maxLength: 3 }, anyOf: [{ additionalProperties: { maxLength: 3, type: "string" } }] }), []);
  assert.deepEqual(listed({ type: "object", properties: { a: { type: "string", maxLength: 3 } }, anyOf: [{ properties: { a: { maxLength: 3, type: "string" } } }] }), [], "a property redeclared alike");
  assert.deepEqual(listed({ type: "object", properties: { kind: { enum: [pair, "x"] } }, anyOf: [{ properties: { kind: { const: pairReordered } } }] }), [], "a discriminator's const among the union's enum");
  assert.deepEqual(listed({ type: "object", properties: { kind: { type: "object", const: pair } }, anyOf: [{ properties: { kind: { const: pairReordered } } }] }), [], "the union's const");
});

test("schemaGaps: oneOf branches whose discriminators are one value in two key orders could both fit: listed", () => {
  const branch = (kind: object) => ({ type: "object", properties: { kind: { const: kind } }, required: ["kind"] });
  assert.deepEqual(schemaGaps({ oneOf: [branch(pair), branch(pairReordered)] }).map((g) => `${g.keyword} ${g.at}`), ["oneOf #"]);
});

test("a character the vocabulary holds only inside longer tokens: fixed text that has it as a token does is written with that token; other fixed text is refused up front", () => {
  // "☃" only in "x☃" (and, in the second, '☃"'): "x" then "☃" is no way to write it
  const base = ["", "{", "}", "[", "]", '"', ":", ",", " ", "a", "b", "x", "y"];
  const vocabulary = (texts: string[]) => tokenTexts({ decode: (ids: number[]) => ids.map((id) => texts[id]!).join("") }, texts.length);
  const texts = [...base, "x☃"];
  const vocab = vocabulary(texts);
  const quoted = vocabulary([...base, "x☃", '☃"']);
  const refused = (schema: JsonSchema, message: RegExp) =>
    assert.throws(() => JsonMatcher.of(schema).writableBy(quoted), (err: unknown) => err instanceof JsonSchemaError && message.test(err.message), JSON.stringify(schema));
  refused({ enum: ["x☃", "y☃b"] }, /^#: the enum\/const value "y☃b" holds "☃" \(U\+2603\), which the model's vocabulary cannot write: its tokens hold it only beside other characters \("x☃", "☃\\""\), none of which fits the text around it/);
  refused({ type: "object", properties: { "b☃a": { type: "string" } } }, /^#\/properties\/b☃a: the property name "b☃a" holds "☃" \(U\+2603\)/);
  // a token that writes the character and the text's end, after "y" alone
  assert.doesNotThrow(() => JsonMatcher.of({ enum: ["y☃", "x☃b"] }).writableBy(quoted));
  // a greedy model that likes "x" alone best: the mask keeps it from the dead end "x" would lead into
  const x = texts.indexOf("x");
  const walk = (schema: JsonSchema) => {
    const mask = constrainToJson(vocab, [0], JsonMatcher.of(schema).writableBy(vocab));
    const { tokens, ended } = walkMask(mask, { vocabSize: texts.length, eos: [0], seed: 1, steps: 20, bias: (id) => (id === x ? 8 : 0), endLogit: 20 });
    assert.ok(ended, JSON.stringify(schema));
    return tokens.map((id) => texts[id]).join("");
  };
  assert.equal(walk({ enum: ["x☃"] }), '"x☃"');
  const mask = constrainToJson(vocab, [0], JsonMatcher.of({ enum: ["x☃", "xa"] }).writableBy(vocab));
  const logits = new Float32Array(texts.length);
  mask(logits, [texts.indexOf('"')]);
  assert.deepEqual(["x", "x☃"].map((t) => logits[texts.indexOf(t)]), [0, 0], '"x" may still go on as "xa"');
  const onlySnowman = constrainToJson(vocab, [0], JsonMatcher.of({ enum: ["x☃", "a"] }).writableBy(vocab));
  onlySnowman(logits.fill(0), [texts.indexOf('"')]);
  assert.deepEqual(["x", "x☃"].map((t) => logits[texts.indexOf(t)]), [-Infinity, 0], '"x" alone leads nowhere');
  assert.deepEqual(JSON.parse(walk({ type: "object", properties: { "x☃": { const: "ax☃" } }, required: ["x☃"] })), { "x☃": "ax☃" });
});

test("an enum/const value JSON cannot write (a number past a double's range: JSON.stringify writes it null) is no value the model writes", () => {
  // a request's JSON.parse reads 1e999 as Infinity, whose text is "null"
  const schema = JSON.parse('{"type": "number", "enum": [1e999, 2]}') as JsonSchema;
  assert.equal(JsonMatcher.of(schema).feed("null"), null, "null is not a number of the enum");
  assert.ok(accepts(schema, "2"));
  const inArray = JSON.parse('{"type": "array", "enum": [[1e999], [2]]}') as JsonSchema;
  assert.ok(!accepts(inArray, "[null]") && accepts(inArray, "[2]"), "nor inside an array");
  assert.throws(() => JsonMatcher.of(JSON.parse('{"enum": [-1e999]}') as JsonSchema), JsonSchemaError, "nothing else: no value fits");
});

test("an enum/const value JSON cannot write equals no value, not the null JSON.stringify writes for it", () => {
  // items may only be Infinity, so no array but [] fits; [null] must not pass as "the same value"
  const items = JSON.parse('{"type": "array", "items": {"const": 1e999}, "enum": [[null], []]}') as JsonSchema;
  assert.ok(!accepts(items, "[null]") && accepts(items, "[]"));
  const property = JSON.parse('{"type": "object", "properties": {"a": {"const": 1e999}}, "required": ["a"], "const": {"a": null}}') as JsonSchema;
  assert.throws(() => JsonMatcher.of(property), JsonSchemaError, "a must be Infinity, which no object holds");
  const gaps = schemaGaps(JSON.parse('{"const": null, "enum": [1e999]}') as JsonSchema);
  assert.deepEqual(gaps.map((g) => g.keyword), ["enum"], "an enum of Infinity beside const null does not hold its value");
});

test("a character only a token running past fixed text writes ('☃\":' after a key, '☃\",' after an enum value) is written with it where what follows fits", () => {
  const texts = ["", "{", "}", "[", "]", '"', ":", ",", " ", "1", "a", '☃":', '☃",', '☃"]', '☃"x'];
  const vocab = tokenTexts({ decode: (ids: number[]) => ids.map((id) => texts[id]!).join("") }, texts.length);
  const walk = (schema: JsonSchema, seed: number) => {
    const mask = constrainToJson(vocab, [0], JsonMatcher.of(schema).writableBy(vocab));
    const { tokens, ended } = walkMask(mask, { vocabSize: texts.length, eos: [0], seed, steps: 40, endLogit: 3.9 });
    assert.ok(ended, JSON.stringify(schema));
    return JSON.parse(tokens.map((id) => texts[id]).join("")) as unknown;
  };
  for (let seed = 1; seed <= 4; seed++) {
    assert.deepEqual(walk({ type: "object", properties: { "☃": { type: "integer", maximum: 1 } }, required: ["☃"], additionalProperties: false }, seed), { "☃": 1 });
    assert.deepEqual(walk({ type: "array", items: { const: "☃" }, minItems: 2, maxItems: 2 }, seed), ["☃", "☃"]);
  }
  // at the top level nothing follows the value: none of those tokens writes it (nor '☃"x' anywhere)
  assert.throws(() => JsonMatcher.of({ const: "☃" }).writableBy(vocab), /the enum\/const value "☃" holds "☃" \(U\+2603\), which the model's vocabulary cannot write/);
  const mask = constrainToJson(vocab, [0], JsonMatcher.of({ type: "array", items: { const: "☃" } }).writableBy(vocab));
  const logits = new Float32Array(texts.length);
  mask(logits, [texts.indexOf("["), texts.indexOf('"')]);
  assert.deepEqual(['☃",', '☃"]', '☃"x', '☃":'].map((t) => logits[texts.indexOf(t)]), [0, 0, -Infinity, -Infinity]);
});

test("fixed text the vocabulary cannot write is refused naming the character that stops it, not one a token writes", () => {
  // "☃" only in "x☃", which fits "x☃" here; "é" is in no token
  const texts = ["", "{", "}", "[", "]", '"', ":", ",", " ", "a", "b", "x", "y", "x☃"];
  const vocab = tokenTexts({ decode: (ids: number[]) => ids.map((id) => texts[id]!).join("") }, texts.length);
  assert.doesNotThrow(() => JsonMatcher.of({ enum: ["a x☃"] }).writableBy(vocab));
  assert.throws(
    () => JsonMatcher.of({ enum: ["é x☃"] }).writableBy(vocab),
    (err: unknown) => err instanceof JsonSchemaError && /holds "é" \(U\+00E9\), which the model's vocabulary cannot write: no token holds it whole/.test(err.message),
  );
  assert.throws(
    () => JsonMatcher.of({ enum: ["y☃ x☃"] }).writableBy(vocab),
    (err: unknown) => err instanceof JsonSchemaError && /holds "☃" \(U\+2603\), which the model's vocabulary cannot write: its tokens hold it only beside other characters \("x☃"\)/.test(err.message),
  );
});
