// Constrained decoding for JSON. A JsonMatcher reads text one character at a time and says whether
// it can still grow into a JSON value that fits a JSON schema; `constrainToJson` turns that into a
// token mask for generation, so a model (even one never trained to write JSON) can only write text
// that parses and fits the schema.
//
// What is checked: types (`type`, also as a list), `enum` and `const`, objects' keys (only declared
// properties when `properties` is given; `required` before the object closes; no key twice;
// `additionalProperties` as the schema of other keys), `items`, `minItems`/`maxItems`,
// `minLength`/`maxLength`, `minimum`/`maximum` (and the exclusive forms), `anyOf`/`oneOf` (as
// anyOf), and local `$ref`s (#/$defs/..., #/definitions/...); a required key the properties leave
// out is written with additionalProperties' schema. Other keywords (pattern, format, allOf,
// not, ...) are not checked: `schemaGaps` lists them in a schema, so a caller can refuse it or say
// what was left unchecked. The layout is fixed: no whitespace except one optional space after ':'
// and ','.
//
// The matcher is nondeterministic: it follows every reading of the text at once (the branches of
// anyOf, the enum values that share a prefix), each as an immutable stack of frames, so feeding a
// candidate token copies nothing.

export type JsonSchema = boolean | { [key: string]: unknown };

type JsonType = "object" | "array" | "string" | "number" | "integer" | "boolean" | "null";
const JSON_TYPES: readonly JsonType[] = ["object", "array", "string", "number", "integer", "boolean", "null"];

/** A schema compiled for matching. */
interface Node {
  /** the types a value may have; null: any */
  types: ReadonlySet<JsonType> | null;
  /** enum/const: the only values allowed, as JSON texts */
  literals?: string[];
  /** anyOf/oneOf: the value fits one of these */
  options?: Node[];
  /** declared properties; with them, other keys are not written */
  properties?: Map<string, Node>;
  required: string[];
  /** the schema of undeclared keys' values (null: no undeclared keys) */
  extra: Node | null;
  items?: Node;
  minItems: number;
  maxItems: number;
  minLength: number;
  maxLength: number;
  min: number;
  max: number;
  exclusiveMin: boolean;
  exclusiveMax: boolean;
}

function num(v: unknown, fallback: number): number {
  return typeof v === "number" && Number.isFinite(v) ? v : fallback;
}

function unbounded(): Node {
  return { types: null, required: [], extra: null, minItems: 0, maxItems: Infinity, minLength: 0, maxLength: Infinity, min: -Infinity, max: Infinity, exclusiveMin: false, exclusiveMax: false };
}

/** Any JSON value (objects with any keys). */
const ANY: Node = unbounded();
ANY.extra = ANY;

/** Compiles a schema; `$ref`s resolve against the root, and recursive schemas compile to cycles. */
function compile(schema: JsonSchema, root: JsonSchema, seen = new Map<object, Node>()): Node {
  if (schema === true) return ANY;
  if (schema === false) return { ...unbounded(), options: [] };
  const cached = seen.get(schema);
  if (cached) return cached;
  const node = unbounded();
  seen.set(schema, node);
  if (typeof schema.$ref === "string") {
    // as a one-branch union, so that a schema referring to itself is compiled once
    node.options = [compile(resolveRef(schema.$ref, root), root, seen)];
    return node;
  }
  const t = schema.type;
  const types = (Array.isArray(t) ? t : typeof t === "string" ? [t] : []).filter((x): x is JsonType => JSON_TYPES.includes(x as JsonType));
  if (types.length) node.types = new Set(types.includes("number") ? [...types, "integer"] : types);
  if ("const" in schema) node.literals = [JSON.stringify(schema.const)];
  else if (Array.isArray(schema.enum)) node.literals = schema.enum.map((v) => JSON.stringify(v));
  const union = Array.isArray(schema.anyOf) ? schema.anyOf : Array.isArray(schema.oneOf) ? schema.oneOf : null;
  if (union) {
    // the schema's own keywords (a shared type, say) go with each branch
    const { anyOf: _a, oneOf: _o, ...shared } = schema;
    node.options = union.map((branch) => compile(typeof branch === "object" && branch ? { ...shared, ...branch } : (branch as JsonSchema), root, seen));
    return node;
  }
  if (Array.isArray(schema.required)) node.required = schema.required.filter((k): k is string => typeof k === "string");
  const props = schema.properties;
  const extra = schema.additionalProperties;
  if (props && typeof props === "object" && Object.keys(props).length) {
    node.properties = new Map(Object.entries(props as Record<string, JsonSchema>).map(([k, v]) => [k, compile(v, root, seen)]));
    // A required key the properties leave out is an additional property: declared here, with
    // additionalProperties as its schema, or no object could ever be closed.
    for (const key of node.required) {
      if (node.properties.has(key)) continue;
      if (extra === false) throw new Error(`JSON schema: "${key}" is required but additionalProperties is false and properties do not declare it, so no object fits`);
      node.properties.set(key, compile(extra === undefined ? true : (extra as JsonSchema), root, seen));
    }
  } else {
    node.extra = extra === false ? null : compile(extra === undefined ? true : (extra as JsonSchema), root, seen);
  }
  if (schema.items !== undefined && !Array.isArray(schema.items)) node.items = compile(schema.items as JsonSchema, root, seen);
  node.minItems = num(schema.minItems, 0);
  node.maxItems = num(schema.maxItems, Infinity);
  node.minLength = num(schema.minLength, 0);
  node.maxLength = num(schema.maxLength, Infinity);
  node.min = num(schema.minimum, -Infinity);
  node.max = num(schema.maximum, Infinity);
  if (typeof schema.exclusiveMinimum === "number" && schema.exclusiveMinimum >= node.min) {
    node.min = schema.exclusiveMinimum;
    node.exclusiveMin = true;
  }
  if (typeof schema.exclusiveMaximum === "number" && schema.exclusiveMaximum <= node.max) {
    node.max = schema.exclusiveMaximum;
    node.exclusiveMax = true;
  }
  return node;
}

function resolveRef(ref: string, root: JsonSchema): JsonSchema {
  if (!ref.startsWith("#")) throw new Error(`JSON schema: only local $refs are supported (got ${ref})`);
  let at: unknown = root;
  for (const part of ref.slice(1).split("/").filter(Boolean)) {
    const key = decodeURIComponent(part).replace(/~1/g, "/").replace(/~0/g, "~");
    at = at && typeof at === "object" ? (at as Record<string, unknown>)[key] : undefined;
  }
  if (at === undefined || (typeof at !== "object" && typeof at !== "boolean")) throw new Error(`JSON schema: $ref ${ref} points at nothing`);
  return at as JsonSchema;
}

// --- what the matcher does not enforce ---

/** Keywords that say nothing about which values fit (JSON Schema's annotations). */
const ANNOTATIONS = new Set(["$schema", "$id", "$anchor", "$comment", "$vocabulary", "title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly", "contentEncoding", "contentMediaType", "contentSchema"]);

/** Keywords compile() reads (some only in some forms: see schemaGaps). */
const ENFORCED = new Set(["type", "enum", "const", "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "anyOf", "oneOf", "$ref", "$defs", "definitions"]);

/** A keyword of a schema the matcher does not enforce, and where it is (a JSON pointer). */
export interface SchemaGap {
  keyword: string;
  at: string;
  /** why, where the keyword itself is read but not this use of it */
  detail?: string;
}

const pointer = (at: string, ...keys: (string | number)[]) => at + keys.map((k) => "/" + String(k).replace(/~/g, "~0").replace(/\//g, "~1")).join("");

/** The JSON types a schema's values may have, when it says (number and integer overlap). */
function typesOf(schema: Record<string, unknown>): Set<string> | null {
  const t = schema.type;
  let types: string[] | null = Array.isArray(t) ? t.filter((x): x is string => typeof x === "string") : typeof t === "string" ? [t] : null;
  const values = "const" in schema ? [schema.const] : Array.isArray(schema.enum) ? schema.enum : null;
  if (!types && values) types = values.map((v) => (v === null ? "null" : Array.isArray(v) ? "array" : typeof v === "number" ? "number" : typeof v));
  if (!types) return null;
  const set = new Set(types);
  if (set.has("number") || set.has("integer")) set.add("number").add("integer");
  return set;
}

/** Each required property's allowed values, where it lists them (const or enum): a discriminator. */
function tagsOf(schema: Record<string, unknown>): Map<string, Set<string>> {
  const tags = new Map<string, Set<string>>();
  const props = (schema.properties ?? {}) as Record<string, unknown>;
  for (const key of Array.isArray(schema.required) ? schema.required : []) {
    const p = props[key as string];
    if (!p || typeof p !== "object") continue;
    const q = p as Record<string, unknown>;
    const values = "const" in q ? [q.const] : Array.isArray(q.enum) ? q.enum : null;
    if (values) tags.set(key as string, new Set(values.map((v) => JSON.stringify(v))));
  }
  return tags;
}

/** Whether no value fits both schemas, as far as their types or a shared discriminator show. */
function disjoint(a: Record<string, unknown>, b: Record<string, unknown>): boolean {
  const ta = typesOf(a);
  const tb = typesOf(b);
  if (ta && tb && ![...ta].some((t) => tb.has(t))) return true;
  const tagsB = tagsOf(b);
  for (const [key, va] of tagsOf(a)) {
    const vb = tagsB.get(key);
    if (vb && ![...va].some((v) => vb.has(v))) return true;
  }
  return false;
}

/**
 * The keywords in `schema` (and the schemas inside it) that the matcher does not enforce, so a
 * value it accepts may still break them: pattern, format, allOf, not, if/then/else, uniqueItems,
 * multipleOf, min/maxProperties, tuple items, ... and oneOf whose branches are not provably
 * disjoint (it is matched as anyOf, so a value could fit two branches). Annotations and unknown
 * keywords say nothing about validity and are not listed.
 */
export function schemaGaps(schema: JsonSchema): SchemaGap[] {
  const gaps: SchemaGap[] = [];
  const visited = new Set<object>();
  const walk = (s: unknown, at: string) => {
    if (!s || typeof s !== "object" || Array.isArray(s) || visited.has(s)) return;
    visited.add(s);
    const o = s as Record<string, unknown>;
    const ref = typeof o.$ref === "string";
    for (const [keyword, value] of Object.entries(o)) {
      if (ANNOTATIONS.has(keyword)) continue;
      if (ref && keyword !== "$ref" && keyword !== "$defs" && keyword !== "definitions") {
        gaps.push({ keyword, at, detail: "beside $ref (the reference is read alone)" });
        continue;
      }
      if (!ENFORCED.has(keyword)) {
        // an unknown keyword (an extension, a typo) is ignored by JSON Schema too
        if (UNENFORCED.has(keyword)) gaps.push({ keyword, at });
        continue;
      }
      if (keyword === "items" && Array.isArray(value)) gaps.push({ keyword, at, detail: "a list of schemas (tuple items)" });
      else if ((keyword === "exclusiveMinimum" || keyword === "exclusiveMaximum") && typeof value === "boolean") gaps.push({ keyword, at, detail: "as a boolean (draft 4)" });
      else if (keyword === "$ref" && typeof value === "string" && !value.startsWith("#")) gaps.push({ keyword, at, detail: "not a local reference" });
    }
    for (const key of ["properties", "$defs", "definitions"]) {
      const map = o[key];
      if (map && typeof map === "object") for (const [k, v] of Object.entries(map)) walk(v, pointer(at, key, k));
    }
    walk(o.additionalProperties, pointer(at, "additionalProperties"));
    if (!Array.isArray(o.items)) walk(o.items, pointer(at, "items"));
    for (const key of ["anyOf", "oneOf"]) {
      if (!Array.isArray(o[key])) continue;
      (o[key] as unknown[]).forEach((branch, i) => walk(branch, pointer(at, key, i)));
    }
    if (Array.isArray(o.oneOf) && Array.isArray(o.anyOf)) gaps.push({ keyword: "oneOf", at, detail: "beside anyOf (only anyOf is read)" });
    else if (Array.isArray(o.oneOf) && !ref) {
      // as compile() reads them: the schema's own keywords go with each branch
      const { oneOf: _o, ...shared } = o;
      const branches = (o.oneOf as unknown[]).map((b) => (b && typeof b === "object" ? { ...shared, ...(b as object) } : null));
      const exclusive = branches.every((a, i) => a && branches.every((b, j) => j <= i || (b && disjoint(a, b))));
      if (!exclusive) gaps.push({ keyword: "oneOf", at, detail: "branches a value could fit together (matched as anyOf)" });
    }
  };
  walk(schema, "#");
  return gaps;
}

/** JSON Schema's validation keywords that compile() does not read. */
const UNENFORCED = new Set([
  "pattern", "format", "allOf", "not", "if", "then", "else", "patternProperties", "propertyNames", "minProperties", "maxProperties",
  "dependentRequired", "dependentSchemas", "dependencies", "uniqueItems", "contains", "minContains", "maxContains", "prefixItems",
  "additionalItems", "unevaluatedProperties", "unevaluatedItems", "multipleOf", "$dynamicRef", "$recursiveRef",
]);

const allows = (node: Node, type: JsonType) => node.types === null || node.types.has(type);

// --- the matcher's frames ---

type ObjectState = "open" | "colon" | "afterColon" | "afterColonSpace" | "value" | "next" | "comma" | "commaSpace";
type ArrayState = "open" | "value" | "next" | "comma" | "commaSpace";

type Frame =
  /** fixed text still to come: a literal value, or the text before a value */
  | { k: "text"; text: string; at: number; value: boolean }
  /** a value of `node` starts with the next character */
  | { k: "value"; node: Node }
  /** inside a string; `key`: an object's key (its text is kept to check the key) */
  | { k: "string"; node: Node; key: boolean; text: string; length: number; escape: string | null }
  | { k: "number"; node: Node; text: string }
  | { k: "object"; node: Node; state: ObjectState; keys: readonly string[] }
  | { k: "array"; node: Node; state: ArrayState; count: number };

/** A reading of the text so far: frames, innermost first. null is a finished value. */
interface Stack {
  top: Frame;
  rest: Stack | null;
}
type Reading = Stack | null;

const push = (rest: Reading, top: Frame): Stack => ({ top, rest });

/** The value on top of `rest` is done: its container moves on. */
function finished(rest: Reading): Reading {
  if (!rest) return null;
  const top = rest.top;
  if (top.k === "object" && top.state === "value") return push(rest.rest, { ...top, state: "next" });
  if (top.k === "array" && top.state === "value") return push(rest.rest, { ...top, state: "next" });
  return rest; // a "value" frame: the text before it is done, the value comes next
}

/** Keys an object may still take. */
function keysLeft(f: { node: Node; keys: readonly string[] }): string[] | "any" {
  if (!f.node.properties) return f.node.extra ? "any" : [];
  return [...f.node.properties.keys()].filter((k) => !f.keys.includes(k));
}

const NUMBER_PREFIX = /^-?(?:(?:0|[1-9]\d*)(?:\.\d*|(?:\.\d+)?[eE][+-]?\d*)?)?$/;
const INTEGER_PREFIX = /^-?(?:0|[1-9]\d*)?$/;
const NUMBER = /^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?$/;
const INTEGER = /^-?(?:0|[1-9]\d*)$/;

const bounded = (node: Node) => node.min > -Infinity || node.max < Infinity;

/** Whether some number starting with `text` (no exponent) lies within the node's bounds. */
function numberReachable(text: string, node: Node, integer: boolean): boolean {
  if (!bounded(node)) return true;
  if (/[eE]/.test(text)) return false; // exponents are not written when there are bounds
  const negative = text.startsWith("-");
  const body = negative ? text.slice(1) : text;
  const fits = (lo: number, hi: number) => {
    // the magnitudes [lo, hi] with the sign applied, against [min, max]
    const [a, b] = negative ? [-hi, -lo] : [lo, hi];
    return b >= node.min && a <= node.max;
  };
  if (body === "") return negative ? node.min < 0 : node.max >= 0;
  const dot = body.indexOf(".");
  if (dot >= 0) {
    const value = Number(body.endsWith(".") ? body.slice(0, -1) : body);
    return fits(value, value + 10 ** -(body.length - dot - 1));
  }
  const head = Number(body);
  const step = integer ? 1 : 0;
  if (head === 0) return fits(0, integer ? 0 : 1);
  // the numbers `body` starts: [head·10^k, (head+1)·10^k) for k = 0, 1, 2, ...
  const limit = negative ? -node.min : node.max;
  if (limit === Infinity) return true; // some longer number is large enough
  for (let scale = 1; head * scale <= limit; scale *= 10) if (fits(head * scale, (head + 1) * scale - step)) return true;
  return false;
}

function numberDone(text: string, node: Node): boolean {
  const integer = !allows(node, "number");
  if (!(integer ? INTEGER : NUMBER).test(text)) return false;
  const v = Number(text);
  return (node.exclusiveMin ? v > node.min : v >= node.min) && (node.exclusiveMax ? v < node.max : v <= node.max);
}

/** The readings in which a value of `node` starts with `ch`, under `rest`. */
function startValue(node: Node, ch: string, rest: Reading): Reading[] {
  if (node.options) return node.options.flatMap((o) => startValue(o, ch, rest));
  if (node.literals) {
    return node.literals.filter((l) => l[0] === ch).map((l) => (l.length === 1 ? finished(rest) : push(rest, { k: "text", text: l, at: 1, value: true })));
  }
  switch (ch) {
    case '"':
      return allows(node, "string") && node.maxLength >= 0 ? [push(rest, { k: "string", node, key: false, text: "", length: 0, escape: null })] : [];
    case "{":
      return allows(node, "object") ? [push(rest, { k: "object", node, state: "open", keys: [] })] : [];
    case "[":
      return allows(node, "array") ? [push(rest, { k: "array", node, state: "open", count: 0 })] : [];
    case "t":
    case "f":
      return allows(node, "boolean") ? [push(rest, { k: "text", text: ch === "t" ? "true" : "false", at: 1, value: true })] : [];
    case "n":
      return allows(node, "null") ? [push(rest, { k: "text", text: "null", at: 1, value: true })] : [];
  }
  if (ch === "-" || (ch >= "0" && ch <= "9")) {
    if (!allows(node, "number") && !allows(node, "integer")) return [];
    return numberReachable(ch, node, !allows(node, "number")) ? [push(rest, { k: "number", node, text: ch })] : [];
  }
  return [];
}

function startKey(f: Extract<Frame, { k: "object" }>, rest: Reading): Reading[] {
  const left = keysLeft(f);
  if (left !== "any" && !left.length) return [];
  return [push(push(rest, { ...f, state: "colon" }), { k: "string", node: f.node, key: true, text: "", length: 0, escape: null })];
}

function closeObject(f: Extract<Frame, { k: "object" }>, rest: Reading): Reading[] {
  return f.node.required.every((k) => f.keys.includes(k)) ? [finished(rest)] : [];
}

/** The readings after one more character. */
function step(reading: Reading, ch: string): Reading[] {
  if (!reading) return []; // the value is finished: nothing may follow
  const f = reading.top;
  const rest = reading.rest;
  switch (f.k) {
    case "text":
      if (ch !== f.text[f.at]) return [];
      if (f.at + 1 < f.text.length) return [push(rest, { ...f, at: f.at + 1 })];
      return [f.value ? finished(rest) : rest];
    case "value":
      return startValue(f.node, ch, rest);
    case "string":
      return stepString(f, ch, rest);
    case "number": {
      const text = f.text + ch;
      const integer = !allows(f.node, "number");
      if ((integer ? INTEGER_PREFIX : NUMBER_PREFIX).test(text) && numberReachable(text, f.node, integer)) return [push(rest, { ...f, text })];
      // anything else ends the number, and is read by what holds it
      return numberDone(f.text, f.node) ? step(finished(rest), ch) : [];
    }
    case "object":
      return stepObject(f, ch, rest);
    case "array":
      return stepArray(f, ch, rest);
  }
}

const UNESCAPED: Record<string, string> = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };

function stepString(f: Extract<Frame, { k: "string" }>, ch: string, rest: Reading): Reading[] {
  const fixedKeys = f.key && f.node.properties !== undefined;
  if (f.escape !== null) {
    // a key keeps the character an escape stands for, so that "a\"b" is not taken for "ab"
    if (f.escape === "") {
      if (ch in UNESCAPED) return [push(rest, { ...f, escape: null, length: f.length + 1, text: f.key ? f.text + UNESCAPED[ch] : "" })];
      return ch === "u" ? [push(rest, { ...f, escape: "u" })] : [];
    }
    if (!/[0-9a-fA-F]/.test(ch)) return [];
    const escape = f.escape + ch;
    if (escape.length < 5) return [push(rest, { ...f, escape })];
    return [push(rest, { ...f, escape: null, length: f.length + 1, text: f.key ? f.text + String.fromCharCode(parseInt(escape.slice(1), 16)) : "" })];
  }
  if (ch === '"') {
    if (!f.key) return f.length >= f.node.minLength ? [finished(rest)] : [];
    const obj = rest!.top as Extract<Frame, { k: "object" }>;
    const left = keysLeft(obj);
    if (left !== "any" && !left.includes(f.text)) return [];
    if (obj.keys.includes(f.text)) return [];
    return [push(rest!.rest, { ...obj, keys: [...obj.keys, f.text] })];
  }
  if (ch < " ") return []; // control characters are escaped in JSON
  if (ch === "\\") return fixedKeys || f.length + 1 > f.node.maxLength ? [] : [push(rest, { ...f, escape: "" })];
  const text = f.key ? f.text + ch : "";
  if (fixedKeys) {
    const left = keysLeft(rest!.top as Extract<Frame, { k: "object" }>) as string[];
    if (!left.some((k) => k.startsWith(text))) return [];
  } else if (!f.key && f.length + 1 > f.node.maxLength) return [];
  return [push(rest, { ...f, text, length: f.length + 1 })];
}

function stepObject(f: Extract<Frame, { k: "object" }>, ch: string, rest: Reading): Reading[] {
  switch (f.state) {
    case "open":
      if (ch === '"') return startKey(f, rest);
      return ch === "}" ? closeObject(f, rest) : [];
    case "colon":
      return ch === ":" ? [push(rest, { ...f, state: "afterColon" })] : [];
    case "afterColon":
    case "afterColonSpace": {
      if (ch === " " && f.state === "afterColon") return [push(rest, { ...f, state: "afterColonSpace" })];
      const node = f.node.properties?.get(f.keys.at(-1)!) ?? f.node.extra;
      return node ? startValue(node, ch, push(rest, { ...f, state: "value" })) : [];
    }
    case "next":
      if (ch === "}") return closeObject(f, rest);
      if (ch !== ",") return [];
      return keysLeft(f) === "any" || keysLeft(f).length ? [push(rest, { ...f, state: "comma" })] : [];
    case "comma":
    case "commaSpace":
      if (ch === " " && f.state === "comma") return [push(rest, { ...f, state: "commaSpace" })];
      return ch === '"' ? startKey(f, rest) : [];
    case "value":
      return []; // the value's own frame is on top
  }
}

function stepArray(f: Extract<Frame, { k: "array" }>, ch: string, rest: Reading): Reading[] {
  const item = f.node.items ?? ANY;
  switch (f.state) {
    case "open":
      if (ch === "]") return f.node.minItems <= 0 ? [finished(rest)] : [];
      return f.node.maxItems >= 1 ? startValue(item, ch, push(rest, { ...f, state: "value", count: 1 })) : [];
    case "next":
      if (ch === "]") return f.count >= f.node.minItems ? [finished(rest)] : [];
      return ch === "," && f.count < f.node.maxItems ? [push(rest, { ...f, state: "comma" })] : [];
    case "comma":
    case "commaSpace":
      if (ch === " " && f.state === "comma") return [push(rest, { ...f, state: "commaSpace" })];
      return startValue(item, ch, push(rest, { ...f, state: "value", count: f.count + 1 }));
    case "value":
      return [];
  }
}

/** Whether a reading is a whole value: finished, or a number that may end here. */
function whole(reading: Reading): boolean {
  if (!reading) return true;
  return reading.top.k === "number" && numberDone(reading.top.text, reading.top.node) && finished(reading.rest) === null;
}

/** A character a JSON string holds as it is: not a quote, a backslash or a control character. */
const ordinary = (code: number) => code >= 0x20 && code !== 0x22 && code !== 0x5c;

/**
 * The prefixes of JSON texts (optionally after fixed text) that fit a schema. Immutable: `feed`
 * returns a new matcher, or null when the text can no longer fit.
 */
export class JsonMatcher {
  private constructor(private readonly readings: readonly Reading[]) {}

  /** One JSON value fitting `schema`. */
  static of(schema: JsonSchema): JsonMatcher {
    return new JsonMatcher([push(null, { k: "value", node: compile(schema, schema) })]);
  }

  /** Any one of: fixed text (`head`), then a JSON value fitting its schema. */
  static afterHeads(alternatives: { head: string; schema: JsonSchema }[]): JsonMatcher {
    return new JsonMatcher(
      alternatives.map(({ head, schema }) => {
        const value = push(null, { k: "value", node: compile(schema, schema) });
        return head ? push(value, { k: "text", text: head, at: 0, value: false }) : value;
      }),
    );
  }

  feed(text: string): JsonMatcher | null {
    let readings = this.readings;
    for (let i = 0; i < text.length; ) {
      // the common case, one reading inside a string (a value, or a key of an object that takes
      // any key): a run of ordinary characters only adds length (a key keeps its text)
      const only = readings.length === 1 ? readings[0] : null;
      if (only && only.top.k === "string" && only.top.escape === null && !(only.top.key && only.top.node.properties)) {
        let j = i;
        let chars = 0; // lengths count code points, as JSON Schema's do
        while (j < text.length && ordinary(text.charCodeAt(j))) {
          j += text.codePointAt(j)! > 0xffff ? 2 : 1;
          chars++;
        }
        if (j > i) {
          const length = only.top.length + chars;
          if (only.top.key) readings = [push(only.rest, { ...only.top, text: only.top.text + text.slice(i, j), length })];
          else if (length > only.top.node.maxLength) return null;
          else readings = [push(only.rest, { ...only.top, length })];
          i = j;
          continue;
        }
      }
      const ch = String.fromCodePoint(text.codePointAt(i)!);
      i += ch.length;
      const next: Reading[] = [];
      for (const r of readings) for (const s of step(r, ch)) next.push(s);
      if (!next.length) return null;
      readings = next;
    }
    return new JsonMatcher(readings);
  }

  /** Whether the text so far is a whole value (nothing more needs to be written). */
  get complete(): boolean {
    return this.readings.some(whole);
  }

  /** Whether more text may follow. */
  get open(): boolean {
    return this.readings.some((r) => r !== null);
  }

  /**
   * Inside a string value, or a key of an object that takes any key (the only reading, no escape
   * pending): how many more characters it may take. Any run of ordinary characters that long
   * fits; null elsewhere.
   */
  get stringRoom(): number | null {
    const only = this.readings.length === 1 ? this.readings[0] : null;
    if (!only || only.top.k !== "string" || only.top.escape !== null) return null;
    if (only.top.key) return only.top.node.properties ? null : Infinity;
    return only.top.node.maxLength - only.top.length;
  }
}

// --- tokens ---

/** Each token's text, and the tokens grouped by first character (to reject a group at once). */
export interface TokenTexts {
  texts: string[];
  byFirst: Map<string, number[]>;
  /** a token's length in code points when its text is all ordinary string characters, else -1 */
  plain: Int32Array;
}

const vocabularies = new WeakMap<object, TokenTexts>();

/**
 * The text of every token id, decoded alone (cached per tokenizer). Tokens that decode to nothing
 * (special tokens) are never allowed inside JSON. A byte-level token holding part of a character
 * decodes to U+FFFD, which JSON allows only inside strings, where the whole text decodes right.
 */
export function tokenTexts(tokenizer: { decode(ids: number[]): string }, vocabSize: number): TokenTexts {
  const cached = vocabularies.get(tokenizer);
  if (cached && cached.texts.length === vocabSize) return cached;
  const texts: string[] = [];
  const byFirst = new Map<string, number[]>();
  const plain = new Int32Array(vocabSize).fill(-1);
  for (let id = 0; id < vocabSize; id++) {
    let text = "";
    try {
      text = tokenizer.decode([id]);
    } catch {
      // an id past the tokenizer's vocabulary (embeddings padded to a round size)
    }
    texts.push(text);
    if (!text) continue;
    let chars = 0;
    for (const ch of text) chars = chars >= 0 && ordinary(ch.charCodeAt(0)) ? chars + 1 : -1;
    plain[id] = chars;
    const first = String.fromCodePoint(text.codePointAt(0)!);
    const group = byFirst.get(first);
    if (group) group.push(id);
    else byFirst.set(first, [id]);
  }
  const result = { texts, byFirst, plain };
  vocabularies.set(tokenizer, result);
  return result;
}

/**
 * A logits filter for generation: only tokens that keep the output a prefix of what `matcher`
 * accepts stay possible, and an end-of-turn token only once the value is whole (then nothing
 * else). When no token fits (a schema the text cannot satisfy), the end-of-turn tokens are left so
 * generation stops; the caller sees the value unfinished. `tokens` is the row's output so far.
 */
export function constrainToJson(vocab: TokenTexts, endIds: number[], matcher: JsonMatcher): (logits: Float32Array, tokens: readonly number[]) => void {
  let state = matcher;
  let consumed = 0;
  return (logits, tokens) => {
    for (; consumed < tokens.length; consumed++) {
      const next = state.feed(vocab.texts[tokens[consumed]!] ?? "");
      if (!next) throw new Error("constrained generation: a token outside the constraint was chosen");
      state = next;
    }
    const allowed = new Uint8Array(logits.length);
    let any = false;
    // Inside a string, where most of a reply's tokens go, a token of ordinary characters fits
    // when the string has room for it: it need not be fed (on a large vocabulary that is slow).
    const room = state.stringRoom;
    if (room !== null) {
      for (let id = 0; id < logits.length; id++) {
        const n = vocab.plain[id]!;
        if (n >= 0 && n <= room) {
          allowed[id] = 1;
          any = true;
        }
      }
    }
    if (state.open) {
      for (const [first, ids] of vocab.byFirst) {
        const after = state.feed(first);
        if (!after) continue;
        for (const id of ids) {
          if (id >= logits.length || (room !== null && vocab.plain[id]! >= 0)) continue; // settled above
          if (after.feed(vocab.texts[id]!.slice(first.length))) {
            allowed[id] = 1;
            any = true;
          }
        }
      }
    }
    if (state.complete || !any) for (const id of endIds) if (id < logits.length) allowed[id] = 1;
    for (let i = 0; i < logits.length; i++) if (!allowed[i]) logits[i] = -Infinity;
  };
}
