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
// A schema is compiled once, and refused (JsonSchemaError) where the matcher could not finish or
// bound its work: one no value fits (a required key nothing may hold, minLength above maxLength, an
// empty number range: the mask would otherwise leave the model nothing to write mid-value), a
// $ref/anyOf cycle that reads no character (left recursion: following it never ends), one nested
// deeper or larger than JSON_CONSTRAINT_LIMITS allows, a union of more alternatives than the
// matcher follows, one that could open more readings at once than it follows (see below), a
// declared property name that needs an escape (keys are matched as written). `writableBy` then
// refuses text the mask must force that a given vocabulary cannot write.
// Parts of a schema nothing fits but that a value need not use (an optional property, a branch of
// anyOf) are dropped, so every state the matcher reaches can still be finished.
//
// The matcher is nondeterministic: it follows every reading of the text at once (the branches of
// anyOf that share a first character), each as an immutable stack of frames, so feeding a candidate
// token copies nothing. Where readings multiply, those whose top frames are the same are merged
// into one whose frame below may be any of theirs (a graph-structured stack, as GLR parsers keep),
// so ambiguity that nests (a union whose branches share a recursive property) costs readings per
// level, not per combination of levels. Unions are flattened at compile time, so anyOf of $refs
// of anyOf... start one reading per distinct schema. The number of live readings is capped
// (JSON_CONSTRAINT_LIMITS.readings), and a schema that could pass the cap on some text is refused
// when compiled: at one place in a value the readings are at most the schemas that may stand there
// (widestPlace), which add up where unions sit inside unions (five kinds of array whose items are
// each a union of 256 strings: 1,280 readings after '["'), since the model may write keys in any
// order. Feeding still checks the cap, as a last resort: past it, it throws a JsonConstraintError
// rather than spend the server's time.

export type JsonSchema = boolean | { [key: string]: unknown };

/** A schema the matcher cannot use: nothing fits it, it refers to itself without reading, or it is too large. */
export class JsonSchemaError extends Error {
  override name = "JsonSchemaError";
  constructor(
    message: string,
    /** with JsonMatcher.afterHeads: the alternative whose schema it is */
    readonly alternative?: number,
    /** with writableBy: the alternative's fixed text before its value, or after it, that the vocabulary cannot write (not its schema's) */
    readonly part?: "head" | "tail",
  ) {
    super(message);
  }
}

/**
 * Constrained generation cannot go on: no token of the vocabulary continues the text within the
 * schema, the text decoded from the tokens left it, or its readings grew past
 * JSON_CONSTRAINT_LIMITS.readings.
 */
export class JsonConstraintError extends Error {
  override name = "JsonConstraintError";
}

/** Bounds on what a schema may make the matcher do (a request body is untrusted). */
export const JSON_CONSTRAINT_LIMITS = Object.freeze({
  /** nesting of schemas in a schema (and $ref hops without a cycle) */
  depth: 128,
  /** schemas in a schema plus enum/const values */
  size: 20_000,
  /** alternatives of one union once $refs and nested anyOf are followed (enum/const values count as one) */
  alternatives: 256,
  /** steps spent flattening unions (a chain of anyOf each holding the next would be quadratic) */
  expansion: 1_000_000,
  /** readings followed at once (a schema that could open more on some text is refused when compiled) */
  readings: 1024,
  /** steps spent finding how many readings a schema could open at once (schemas counted at each distinct place) */
  bounding: 250_000,
});

type JsonType = "object" | "array" | "string" | "number" | "integer" | "boolean" | "null";
const JSON_TYPES: readonly JsonType[] = ["object", "array", "string", "number", "integer", "boolean", "null"];

/** A schema compiled for matching. */
interface Node {
  /** unique across compilations: readings are merged by it */
  id: number;
  /** where in the schema it is (a JSON pointer), for messages */
  at: string;
  /** the types a value may have; null: any */
  types: ReadonlySet<JsonType> | null;
  /** enum/const: the only values allowed, as JSON texts, sorted (a reading narrows a range of them) */
  literals?: string[];
  /** enum/const as given, until compile() has checked them against the rest of the schema */
  values?: unknown[];
  /** their canonicalJson texts, what fits() compares a value by (as long as `values`) */
  valueKeys?: Set<string>;
  /** anyOf/oneOf/$ref: the value fits one of these (after compile(): no union among them) */
  options?: Node[];
  /** declared properties; with them, other keys are not written */
  properties?: Map<string, Node>;
  required: string[];
  /** a required key no object may hold (additionalProperties false, not a declared property) */
  unwritable?: string;
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

let nextId = 1;

function num(v: unknown, fallback: number): number {
  return typeof v === "number" && Number.isFinite(v) ? v : fallback;
}

function unbounded(at: string): Node {
  return { id: nextId++, at, types: null, required: [], extra: null, minItems: 0, maxItems: Infinity, minLength: 0, maxLength: Infinity, min: -Infinity, max: Infinity, exclusiveMin: false, exclusiveMax: false };
}

/** Any JSON value (objects with any keys). */
const ANY: Node = { ...unbounded("(any)"), id: 0 };
ANY.extra = ANY;

const pointer = (at: string, ...keys: (string | number)[]) => at + keys.map((k) => "/" + String(k).replace(/~/g, "~0").replace(/\//g, "~1")).join("");

/** Compiles one schema: its nodes, `$ref`s resolved against the root (recursive schemas compile to cycles). */
class Compiler {
  readonly nodes: Node[] = [];
  private readonly seen = new Map<object, Node>();
  private size = 0;

  constructor(private readonly root: JsonSchema) {}

  private node(at: string): Node {
    const node = unbounded(at);
    this.nodes.push(node);
    this.grow(1, at);
    return node;
  }

  private grow(n: number, at: string): void {
    this.size += n;
    if (this.size > JSON_CONSTRAINT_LIMITS.size) throw new JsonSchemaError(`the schema is too large for kiln's constrained decoding: more than ${JSON_CONSTRAINT_LIMITS.size} schemas and enum values (at ${at})`);
  }

  compile(schema: JsonSchema, at: string, depth = 0): Node {
    if (depth > JSON_CONSTRAINT_LIMITS.depth) throw new JsonSchemaError(`the schema nests deeper than ${JSON_CONSTRAINT_LIMITS.depth} levels (at ${at})`);
    if (schema === false) {
      const node = this.node(at);
      node.options = []; // a union of nothing
      return node;
    }
    // true, and what is not a schema at all (a number, null, a list), as JSON Schema validators read them: anything
    if (typeof schema !== "object" || schema === null || Array.isArray(schema)) return ANY;
    const cached = this.seen.get(schema);
    if (cached) return cached;
    const node = this.node(at);
    this.seen.set(schema, node);
    if (typeof schema.$ref === "string") {
      // as a one-branch union, so that a schema referring to itself is compiled once
      node.options = [this.compile(resolveRef(schema.$ref, this.root), schema.$ref, depth + 1)];
      return node;
    }
    const t = schema.type;
    const types = (Array.isArray(t) ? t : typeof t === "string" ? [t] : []).filter((x): x is JsonType => JSON_TYPES.includes(x as JsonType));
    if (types.length) node.types = new Set(types.includes("number") ? [...types, "integer"] : types);
    if ("const" in schema) node.values = [schema.const];
    else if (Array.isArray(schema.enum)) node.values = schema.enum;
    if (node.values) {
      this.grow(node.values.length, at);
      node.valueKeys = new Set(node.values.map(canonicalJson).filter((k) => k !== undefined));
    }
    const union = Array.isArray(schema.anyOf) ? schema.anyOf : Array.isArray(schema.oneOf) ? schema.oneOf : null;
    if (union) {
      // the schema's own keywords (a shared type, say) go with each branch
      const { anyOf: _a, oneOf: _o, ...shared } = schema;
      const key = Array.isArray(schema.anyOf) ? "anyOf" : "oneOf";
      node.options = union.map((branch, i) => this.compile(typeof branch === "object" && branch ? { ...shared, ...branch } : (branch as JsonSchema), pointer(at, key, i), depth + 1));
      return node;
    }
    if (Array.isArray(schema.required)) node.required = [...new Set(schema.required.filter((k): k is string => typeof k === "string"))];
    const props = schema.properties;
    const extra = schema.additionalProperties;
    const extraAt = pointer(at, "additionalProperties");
    if (props && typeof props === "object" && Object.keys(props).length) {
      node.properties = new Map(Object.entries(props as Record<string, JsonSchema>).map(([k, v]) => [k, this.compile(v, pointer(at, "properties", k), depth + 1)]));
      // A required key the properties leave out is an additional property: declared here, with
      // additionalProperties as its schema; with additionalProperties false no object holds it.
      for (const key of node.required) {
        if (node.properties.has(key)) continue;
        if (extra === false) node.unwritable ??= key;
        else node.properties.set(key, this.compile(extra === undefined ? true : (extra as JsonSchema), extraAt, depth + 1));
      }
    } else {
      node.extra = extra === false ? null : this.compile(extra === undefined ? true : (extra as JsonSchema), extraAt, depth + 1);
      if (!node.extra) node.unwritable = node.required[0];
    }
    if (schema.items !== undefined && !Array.isArray(schema.items)) node.items = this.compile(schema.items as JsonSchema, pointer(at, "items"), depth + 1);
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
}

function resolveRef(ref: string, root: JsonSchema): JsonSchema {
  if (!ref.startsWith("#")) throw new JsonSchemaError(`only local $refs are supported (got ${ref})`);
  let at: unknown = root;
  for (const part of ref.slice(1).split("/").filter(Boolean)) {
    let key: string;
    try {
      key = decodeURIComponent(part).replace(/~1/g, "/").replace(/~0/g, "~");
    } catch {
      throw new JsonSchemaError(`$ref ${ref} is not a valid JSON pointer`);
    }
    at = at && typeof at === "object" && Object.hasOwn(at, key) ? (at as Record<string, unknown>)[key] : undefined;
  }
  if (at === undefined || (typeof at !== "object" && typeof at !== "boolean")) throw new JsonSchemaError(`$ref ${ref} points at nothing`);
  return at as JsonSchema;
}

// --- after compiling: flatten unions, check enum values, drop what nothing fits ---

/**
 * Each union's alternatives once nested unions ($refs, anyOf of anyOf) are followed, each once:
 * a union then starts one reading per distinct schema, however its $refs repeat. A cycle of
 * unions reads no character before it comes round (left recursion), so no value could ever be
 * matched through it: refused.
 */
function flattenUnions(nodes: readonly Node[]): Map<Node, Node[]> {
  const leaves = new Map<Node, Node[]>();
  const visiting = new Set<Node>();
  let work = 0;
  for (const start of nodes) {
    if (!start.options || leaves.has(start)) continue;
    // depth-first without recursion: a long chain of $refs must not overflow the stack
    const path: { node: Node; next: number }[] = [{ node: start, next: 0 }];
    visiting.add(start);
    while (path.length) {
      const top = path.at(-1)!;
      const options = top.node.options!;
      if (top.next < options.length) {
        const child = options[top.next++]!;
        if (!child.options || leaves.has(child)) continue;
        if (visiting.has(child)) {
          const cycle = [...path.slice(path.findIndex((p) => p.node === child)).map((p) => p.node.at), child.at];
          throw new JsonSchemaError(`${child.at} refers back to itself without reading any text (${cycle.join(" -> ")}): a value of it could never be matched; recursion must go through a property or an array's items`);
        }
        visiting.add(child);
        path.push({ node: child, next: 0 });
        continue;
      }
      if (options.length === 1 && options[0]!.options) {
        // a $ref to a union is that union: its alternatives are shared, not copied
        leaves.set(top.node, leaves.get(options[0]!)!);
        visiting.delete(top.node);
        path.pop();
        continue;
      }
      const set = new Set<Node>();
      for (const child of options) {
        const more = child.options ? leaves.get(child)! : [child];
        work += more.length;
        if (work > JSON_CONSTRAINT_LIMITS.expansion) throw new JsonSchemaError(`the schema's anyOf/$ref alternatives expand too far for kiln's constrained decoding (more than ${JSON_CONSTRAINT_LIMITS.expansion} steps, at ${top.node.at})`);
        for (const leaf of more) set.add(leaf);
      }
      leaves.set(top.node, [...set]);
      visiting.delete(top.node);
      path.pop();
    }
  }
  return leaves;
}

/** A value's JSON type; null for what JSON cannot write (a number past a double's range, which JSON.stringify writes as null). */
const jsonTypeOf = (v: unknown): JsonType | null =>
  v === null ? "null" : Array.isArray(v) ? "array" : typeof v === "number" ? (!Number.isFinite(v) ? null : Number.isInteger(v) ? "integer" : "number") : typeof v === "string" || typeof v === "boolean" || typeof v === "object" ? (typeof v as JsonType) : null;

/**
 * A JSON value's text with each object's keys sorted: two values are equal as JSON Schema compares
 * them (enum, const) exactly when these texts are. Their own texts are no measure: {"a":1,"b":2}
 * and {"b":2,"a":1} are one value. (Numbers need nothing: 1.0 parses to 1, and -0 is written 0.)
 * Undefined for a value holding a number JSON has no text for (a request's 1e999 parses to
 * Infinity): JSON.stringify writes it null, which would make an enum's Infinity let null through.
 */
const canonicalJson = (value: unknown): string | undefined => {
  let writable = true;
  const text = JSON.stringify(value, (_key, v: unknown) => {
    if (typeof v === "number" && !Number.isFinite(v)) writable = false;
    return v && typeof v === "object" && !Array.isArray(v) ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : 1))) : v;
  });
  return writable ? text : undefined;
};

/** Equal as JSON values; what JSON cannot write (Infinity, undefined) equals nothing, not even itself. */
const sameJson = (a: unknown, b: unknown) => {
  const text = canonicalJson(a);
  return text !== undefined && text === canonicalJson(b);
};

const codePoints = (s: string) => {
  let n = 0;
  for (const _ of s) n++;
  return n;
};

/** Whether a (finite, parsed) value fits a node: what enum/const values are checked against. */
function fits(value: unknown, node: Node): boolean {
  if (node.options) return node.options.some((o) => fits(value, o));
  if (node.valueKeys && !node.valueKeys.has(canonicalJson(value) as string)) return false;
  const type = jsonTypeOf(value);
  if (!type) return false;
  if (node.types && !node.types.has(type) && !(type === "integer" && node.types.has("number"))) return false;
  switch (type) {
    case "string":
      return codePoints(value as string) >= node.minLength && codePoints(value as string) <= node.maxLength;
    case "number":
    case "integer": {
      const v = value as number;
      return (node.exclusiveMin ? v > node.min : v >= node.min) && (node.exclusiveMax ? v < node.max : v <= node.max);
    }
    case "array": {
      const a = value as unknown[];
      return a.length >= node.minItems && a.length <= node.maxItems && a.every((item) => fits(item, node.items ?? ANY));
    }
    case "object": {
      const o = value as Record<string, unknown>;
      if (!node.required.every((k) => Object.hasOwn(o, k))) return false;
      return Object.entries(o).every(([k, v]) => {
        const schema = node.properties ? node.properties.get(k) : node.extra;
        return !!schema && fits(v, schema);
      });
    }
    default:
      return true;
  }
}

/** A type's own bounds leave it some value (objects and arrays also need their parts: see typeFits). */
function typeFits(node: Node, type: JsonType, sat: ReadonlySet<Node>): boolean {
  switch (type) {
    case "null":
    case "boolean":
      return true;
    case "string":
      return node.minLength <= node.maxLength;
    case "number":
    case "integer": {
      const [lo, hi] = valueRange(node, type === "integer");
      return lo <= hi;
    }
    case "object":
      return node.unwritable === undefined && node.required.every((k) => {
        const schema = node.properties ? node.properties.get(k) : node.extra;
        return !!schema && sat.has(schema);
      });
    case "array":
      return node.minItems <= node.maxItems && (node.minItems <= 0 || sat.has(node.items ?? ANY));
  }
}

/** The double next to `x` towards +Infinity (dir 1) or -Infinity (dir -1). */
function nextDouble(x: number, dir: 1 | -1): number {
  if (!Number.isFinite(x)) return x;
  if (x === 0) return dir * Number.MIN_VALUE;
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, x);
  // the bits of a double order as its magnitude: one more is the next one away from 0
  view.setBigInt64(0, view.getBigInt64(0) + ((x > 0) === (dir > 0) ? 1n : -1n));
  return view.getFloat64(0);
}

/**
 * The least and greatest doubles a value of the node may parse to (integers: integral ones), with
 * exclusive bounds made inclusive: a value fits when lo <= Number(text) <= hi, as numberDone
 * checks it. Empty when lo > hi. (Math.floor(min) + 1 for an exclusive minimum is min itself
 * past 2^53, where every double is an integer.)
 */
function valueRange(node: Node, integer: boolean): readonly [number, number] {
  const lo = node.exclusiveMin ? nextDouble(node.min, 1) : node.min;
  const hi = node.exclusiveMax ? nextDouble(node.max, -1) : node.max;
  return integer ? [Math.ceil(lo), Math.floor(hi)] : [lo, hi];
}

/** The types a node's values may still have (number stands for integer too). */
function typesFitting(node: Node, sat: ReadonlySet<Node>): JsonType[] {
  const types = node.types ? [...node.types] : JSON_TYPES;
  return types.filter((t) => (t === "integer" && types.includes("number") ? false : typeFits(node, t, sat)));
}

function satisfiable(node: Node, sat: ReadonlySet<Node>): boolean {
  if (node.options) return node.options.some((o) => sat.has(o));
  if (node.literals) return node.literals.length > 0;
  return typesFitting(node, sat).length > 0;
}

/** The nodes some finite value fits: the least fixpoint (a schema that can only recurse forever fits nothing). */
function satisfiableNodes(nodes: readonly Node[]): Set<Node> {
  const sat = new Set<Node>([ANY]);
  const parents = new Map<Node, Node[]>();
  const dependsOn = (node: Node): Node[] => [...(node.options ?? []), ...(node.properties?.values() ?? []), ...(node.extra ? [node.extra] : []), node.items ?? ANY];
  for (const node of nodes) {
    for (const child of dependsOn(node)) {
      const list = parents.get(child);
      if (list) list.push(node);
      else parents.set(child, [node]);
    }
  }
  const queue = [...nodes];
  while (queue.length) {
    const node = queue.pop()!;
    if (sat.has(node) || !satisfiable(node, sat)) continue;
    sat.add(node);
    for (const parent of parents.get(node) ?? []) queue.push(parent);
  }
  return sat;
}

const bounds = (node: Node) =>
  [node.min > -Infinity ? `${node.exclusiveMin ? "exclusiveMinimum" : "minimum"} ${node.min}` : "", node.max < Infinity ? `${node.exclusiveMax ? "exclusiveMaximum" : "maximum"} ${node.max}` : ""].filter(Boolean).join(" and ");

/** Why no value fits `node` (it is not in `sat`), for the error. */
function whyNothingFits(node: Node, sat: ReadonlySet<Node>, seen = new Set<Node>()): string {
  if (seen.has(node)) return `${node.at} can only be written by nesting it in itself forever`;
  seen.add(node);
  if (node.options) {
    if (!node.options.length) return `${node.at} is false or an empty anyOf`;
    if (node.options.length === 1) return whyNothingFits(node.options[0]!, sat, seen);
    return `no alternative of ${node.at} fits anything (${node.options.slice(0, 3).map((o) => whyNothingFits(o, sat, seen)).join("; ")}${node.options.length > 3 ? "; ..." : ""})`;
  }
  if (node.literals || node.values) return node.values?.length === 0 ? `${node.at}: its enum is empty` : `${node.at}: none of its enum/const values fits the rest of its schema`;
  const why = (node.types ? [...node.types] : JSON_TYPES)
    .filter((t) => !(t === "integer" && node.types?.has("number")))
    .map((t): string => {
      switch (t) {
        case "string":
          return `minLength ${node.minLength} is above maxLength ${node.maxLength}`;
        case "number":
          return `no number lies within ${bounds(node)}`;
        case "integer":
          return `no integer lies within ${bounds(node)}`;
        case "object": {
          if (node.unwritable !== undefined) {
            return node.properties
              ? `"${node.unwritable}" is required but additionalProperties is false and properties do not declare it, so no object fits`
              : `"${node.unwritable}" is required but additionalProperties is false and there are no properties, so no object fits`;
          }
          const key = node.required.find((k) => !sat.has((node.properties ? node.properties.get(k) : node.extra)!))!;
          return `its required "${key}" fits nothing: ${whyNothingFits((node.properties ? node.properties.get(key) : node.extra)!, sat, seen)}`;
        }
        case "array":
          return node.minItems > node.maxItems ? `minItems ${node.minItems} is above maxItems ${node.maxItems}` : `it needs ${node.minItems} items, and they fit nothing: ${whyNothingFits(node.items ?? ANY, sat, seen)}`;
        default:
          return "";
      }
    })
    .filter(Boolean);
  return `${node.at}: ${why.join("; ")}`;
}

/**
 * Checks enum/const values against the rest of their schemas, then drops what no value fits (a
 * type whose bounds exclude every value, an optional property or anyOf branch nothing fits) so
 * that every text the matcher accepts can still be finished. Throws when `root` itself fits
 * nothing.
 */
function finish(compiler: Compiler, root: Node): void {
  const nodes = compiler.nodes;
  const alternatives = flattenUnions(nodes); // first: it refuses the cycles the checks below would loop on
  // Every node's values are checked before any gives way to its texts: fits() compares a value
  // with the values of the nodes inside (an items' const, a $ref'd enum compiled earlier) as JSON
  // values, which the texts, in the key order each was given in, are not.
  const literals = new Map<Node, string[]>();
  for (const node of nodes) {
    if (!node.values || node.options) continue; // a union's values go with each branch
    const texts = new Set<string>();
    for (const v of node.values) {
      const text = JSON.stringify(v);
      if (text !== undefined && fits(v, node)) texts.add(text);
    }
    literals.set(node, [...texts].sort());
  }
  for (const node of nodes) {
    delete node.values;
    delete node.valueKeys;
  }
  for (const [node, texts] of literals) node.literals = texts;
  // A declared key is written as it is: the mask takes no escape in it (stepString), so a key
  // that needs one could only be begun, never finished (the reply failed mid-way, a 500).
  for (const node of nodes) {
    for (const key of node.properties?.keys() ?? []) {
      const bad = [...key].find((ch) => !ordinary(ch.charCodeAt(0)));
      if (bad !== undefined) {
        throw new JsonSchemaError(
          `${pointer(node.at, "properties", key)}: the property name ${JSON.stringify(key)} holds ${JSON.stringify(bad)}, which JSON writes escaped; kiln's constrained decoding writes declared property names without escapes, so it cannot write this one: rename the property`,
        );
      }
    }
  }
  const sat = satisfiableNodes(nodes);
  if (!sat.has(root)) throw new JsonSchemaError(`no value fits the schema: ${whyNothingFits(root, sat)}`);
  // Unions take their flat alternatives, less those nothing fits, their enum/const ones made one
  // (its values: one reading however many there are). Unions with the same alternatives (the
  // $refs to one union) share them.
  const prepared = new Map<Node[], Node[]>();
  for (const [union, leaves] of alternatives) {
    let options = prepared.get(leaves);
    if (!options) {
      options = leaves.filter((o) => sat.has(o));
      const literal = options.filter((o) => o.literals);
      if (literal.length > 1) {
        const merged = unbounded(union.at);
        merged.literals = [...new Set(literal.flatMap((o) => o.literals!))].sort();
        options = [...options.filter((o) => !o.literals), merged];
      }
      if (options.length > JSON_CONSTRAINT_LIMITS.alternatives) {
        throw new JsonSchemaError(`${union.at} has ${options.length} alternatives once its $refs and nested anyOf are followed; kiln's constrained decoding follows at most ${JSON_CONSTRAINT_LIMITS.alternatives} (enum and const values count as one)`);
      }
      prepared.set(leaves, options);
    }
    union.options = options;
  }
  for (const node of nodes) {
    if (node.options || node.literals || !sat.has(node)) continue; // what nothing fits is no longer reached
    const types = typesFitting(node, sat);
    if (node.types !== null || types.length < JSON_TYPES.length - 1) node.types = new Set(types.includes("number") ? [...types, "integer"] : types);
    if (node.properties) for (const [key, schema] of node.properties) if (!sat.has(schema)) node.properties.delete(key);
    if (node.extra && !sat.has(node.extra)) node.extra = null;
    if (!sat.has(node.items ?? ANY)) node.maxItems = 0; // only [] fits
  }
}

// --- how many readings a schema can open at once ---

/** What a union's value may be read as (its flat alternatives, after finish()); any other node is itself. */
const leavesOf = (node: Node): readonly Node[] => node.options ?? [node];

/** A place in a JSON value, as JSONPath: $ the value, .key or ["key"], [*] an array's item, .* an undeclared key. */
const member = (path: string, key: string) => path + (/^[A-Za-z_][A-Za-z0-9_]*$/.test(key) ? `.${key}` : `[${JSON.stringify(key)}]`);

/**
 * The most readings `feed` may follow at once for values read at one place in the text by `nodes`
 * (leaves), whatever the text. At one place (a path of keys and indices) each reading's top frame
 * belongs to a value of one of the schemas that may stand there, and readings of the same schema
 * read alike, so they are merged: the readings are at most the schemas there whose values start
 * with the same character (true, false and null of schemas without enums read alike: one). Keys
 * may come in any order, so every schema a key's value may have counts, whatever was written
 * before it. One more place may be open beside it: a numeric enum value that ends ("1") while
 * another number goes on ("12") leaves its container's reading (`around`: the containers there,
 * 1 at the top, where the finished value is a reading too).
 */
function readingsAt(nodes: readonly Node[], around: number): number {
  const byFirst = new Map<string, number>();
  const shared = new Set<string>();
  for (const node of nodes) {
    const firsts = new Set<string>();
    if (node.literals) {
      for (const text of node.literals) firsts.add(/[-0-9]/.test(text[0]!) ? "0" : text[0]!);
    } else {
      if (allows(node, "string")) firsts.add('"');
      if (allows(node, "object")) firsts.add("{");
      if (allows(node, "array")) firsts.add("[");
      if (allows(node, "number") || allows(node, "integer")) firsts.add("0");
      if (allows(node, "boolean")) shared.add("t").add("f");
      if (allows(node, "null")) shared.add("n");
    }
    for (const first of firsts) byFirst.set(first, (byFirst.get(first) ?? 0) + 1);
  }
  for (const first of shared) byFirst.set(first, (byFirst.get(first) ?? 0) + 1);
  const ending = nodes.some((n) => n.literals?.some((text) => /^-?[0-9]/.test(text)));
  return Math.max(0, ...byFirst.values()) + (ending ? around : 0);
}

/**
 * The widest place in values that start as `start` (leaves): how many readings feed may follow
 * there at most (see readingsAt), and where. Places are explored by the set of schemas that may
 * stand there (each set once), so a recursive schema is walked once per distinct set. Throws a
 * JsonSchemaError when the sets run past JSON_CONSTRAINT_LIMITS.bounding steps: a schema that
 * convoluted cannot be bounded, so it is refused rather than left to fail mid-reply.
 */
function widestPlace(start: readonly Node[]): { readings: number; path: string; nodes: readonly Node[] } {
  // a place: the schemas that may stand there, and how it is reached (its path is spelt out only for a message)
  interface Place {
    nodes: readonly Node[];
    around: number;
    parent: Place | null;
    /** a key, or null: an undeclared key (key false) or an array's item (key true) */
    step: string | boolean;
  }
  const pathOf = (place: Place): string => {
    const steps: string[] = [];
    for (let p: Place | null = place; p?.parent; p = p.parent) steps.push(typeof p.step === "string" ? member("", p.step) : p.step ? "[*]" : ".*");
    return "$" + steps.reverse().join("");
  };
  let widest: { readings: number; place: Place | null } = { readings: 0, place: null };
  const places: Place[] = [];
  const byNodes = new Map<string, { around: number }>();
  let work = 0;
  const count = (place: Place) => {
    const readings = readingsAt(place.nodes, place.around);
    if (readings > widest.readings) widest = { readings, place };
  };
  const visit = (nodes: Set<Node>, around: number, parent: Place | null, step: string | boolean) => {
    work += nodes.size;
    if (!nodes.size) return;
    const list = [...nodes];
    const key = list.length === 1 ? String(list[0]!.id) : Int32Array.from(list, (n) => n.id).sort().join(","); // most places have one schema
    const seen = byNodes.get(key);
    if (seen) {
      // the same schemas read the same places further in: only the containers around may differ
      if (around > seen.around) count({ nodes: list, around: (seen.around = around), parent, step });
      return;
    }
    byNodes.set(key, { around });
    places.push({ nodes: list, around, parent, step });
  };
  visit(new Set(start), 1, null, false);
  for (let next = 0; next < places.length; next++) {
    const place = places[next]!; // breadth first: the shortest path to a place is the one named
    if (work > JSON_CONSTRAINT_LIMITS.bounding) {
      throw new JsonSchemaError(`the schema's alternatives combine in too many ways for kiln's constrained decoding to bound how many readings it follows (more than ${JSON_CONSTRAINT_LIMITS.bounding} steps, at ${pathOf(place)} in the value)`);
    }
    count(place);
    // the places one level in: each key's value (an undeclared key: .*), an array's items
    const objects = place.nodes.filter((n) => !n.literals && allows(n, "object"));
    const byKey = new Map<string, Set<Node>>();
    for (const n of objects) {
      for (const [k, child] of n.properties ?? []) {
        const set = byKey.get(k) ?? new Set<Node>();
        for (const leaf of leavesOf(child)) set.add(leaf);
        byKey.set(k, set);
      }
    }
    const extras = objects.filter((n) => !n.properties && n.extra).flatMap((n) => leavesOf(n.extra!));
    work += byKey.size * extras.length;
    for (const [k, set] of byKey) visit(extras.length ? new Set([...set, ...extras]) : set, objects.length, place, k);
    visit(new Set(extras), objects.length, place, false);
    const arrays = place.nodes.filter((n) => !n.literals && allows(n, "array") && n.maxItems >= 1);
    visit(new Set(arrays.flatMap((n) => leavesOf(n.items ?? ANY))), arrays.length, place, true);
  }
  return { readings: widest.readings, path: widest.place ? pathOf(widest.place) : "$", nodes: widest.place?.nodes ?? start };
}

/** The error for values whose readings at one place could pass JSON_CONSTRAINT_LIMITS.readings. */
function tooAmbiguous(readings: number, path: string, nodes: readonly Node[], alternative?: number): JsonSchemaError {
  const named = nodes.slice(0, 3).map((n) => n.at).join(", ");
  return new JsonSchemaError(
    `the schema is too ambiguous for kiln's constrained decoding: at ${path} in the value, ${nodes.length} schemas may stand (${named}${nodes.length > 3 ? ", ..." : ""}), ` +
      `so the matcher could have to follow ${readings} readings at once (at most ${JSON_CONSTRAINT_LIMITS.readings}); give fewer alternatives there, or ones a value's first character tells apart`,
    alternative,
  );
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
function tagsOf(schema: Record<string, unknown>): Map<string, Set<string | undefined>> {
  const tags = new Map<string, Set<string | undefined>>();
  const props = (schema.properties ?? {}) as Record<string, unknown>;
  for (const key of Array.isArray(schema.required) ? schema.required : []) {
    const p = props[key as string];
    if (!p || typeof p !== "object") continue;
    const q = p as Record<string, unknown>;
    const values = "const" in q ? [q.const] : Array.isArray(q.enum) ? q.enum : null;
    if (values) tags.set(key as string, new Set(values.map(canonicalJson)));
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
  const walk = (s: unknown, at: string, depth = 0) => {
    if (!s || typeof s !== "object" || Array.isArray(s) || visited.has(s)) return;
    // as compile() refuses it: a deeper schema would overflow the stack here
    if (depth > JSON_CONSTRAINT_LIMITS.depth) throw new JsonSchemaError(`the schema nests deeper than ${JSON_CONSTRAINT_LIMITS.depth} levels (at ${at})`);
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
      else if (keyword === "enum" && "const" in o && !(Array.isArray(value) && value.some((v) => sameJson(v, o.const)))) gaps.push({ keyword, at, detail: "beside const, without its value (only const is read)" });
      else {
        const bad = malformed(keyword, value);
        if (bad) gaps.push({ keyword, at, detail: bad });
      }
    }
    // compile() reads the schema a local $ref points at wherever it is, not only in $defs (walked last)
    if (ref && (o.$ref as string).startsWith("#")) refs.push({ ref: o.$ref as string, at, depth: depth + 1 });
    for (const key of ["properties", "$defs", "definitions"]) {
      const map = o[key];
      if (!map || typeof map !== "object") continue;
      for (const [k, v] of Object.entries(map)) {
        if (key === "properties" && !isSchema(v)) gaps.push({ keyword: key, at: pointer(at, key, k), detail: "not a schema: ignored" });
        walk(v, pointer(at, key, k), depth + 1);
      }
    }
    walk(o.additionalProperties, pointer(at, "additionalProperties"), depth + 1);
    if (!Array.isArray(o.items)) walk(o.items, pointer(at, "items"), depth + 1);
    for (const key of ["anyOf", "oneOf"]) {
      if (!Array.isArray(o[key])) continue;
      (o[key] as unknown[]).forEach((branch, i) => {
        if (!isSchema(branch)) gaps.push({ keyword: key, at: pointer(at, key, i), detail: "not a schema: ignored" });
        // compile() gives each branch the schema's own keywords, and reads a branch's $ref alone
        const read = key === "anyOf" || !Array.isArray(o.anyOf);
        if (read && !ref && isSchema(branch) && typeof branch !== "boolean") {
          const b = branch as Record<string, unknown>;
          for (const shared of Object.keys(o)) {
            if (!ENFORCED.has(shared) || ["anyOf", "oneOf", "$ref", "$defs", "definitions"].includes(shared)) continue;
            if (typeof b.$ref === "string") gaps.push({ keyword: shared, at: pointer(at, key, i), detail: "beside $ref (the reference is read alone)" });
            // the branch's own value replaces the union's: exact only where it asks at least as much
            else if (shared in b && !(shared === "properties" ? narrowsProperties(o, b) : narrows(shared, o[shared], b[shared]))) gaps.push({ keyword: shared, at: pointer(at, key, i), detail: "also in the union's schema (the branch's is read alone)" });
          }
        }
        walk(branch, pointer(at, key, i), depth + 1);
      });
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
  const refs: { ref: string; at: string; depth: number }[] = [];
  walk(schema, "#");
  for (let r = refs.shift(); r; r = refs.shift()) {
    let target: unknown;
    try {
      target = resolveRef(r.ref, schema);
    } catch {
      continue; // compile() refuses it
    }
    // null or a list passes resolveRef, and compile() reads it as any value
    if (!isSchema(target)) gaps.push({ keyword: "$ref", at: r.at, detail: "not a schema: ignored" });
    walk(target, r.ref, r.depth);
  }
  return gaps;
}

/**
 * Whether a branch's value of `keyword` asks at least what the union's own value asks (its types
 * among the union's, its required keys a superset, its bounds within), so that compile(), which
 * reads the branch's alone, enforces both.
 */
function narrows(keyword: string, outer: unknown, inner: unknown): boolean {
  if (sameJson(outer, inner)) return true;
  const list = (v: unknown) => (Array.isArray(v) ? v : [v]);
  switch (keyword) {
    case "type": {
      const allowed = list(outer);
      return list(inner).every((t) => allowed.includes(t) || (t === "integer" && allowed.includes("number")));
    }
    case "required":
      return Array.isArray(outer) && Array.isArray(inner) && outer.every((k) => inner.includes(k));
    case "minimum":
    case "minLength":
    case "minItems":
      return typeof outer === "number" && typeof inner === "number" && inner >= outer;
    case "maximum":
    case "maxLength":
    case "maxItems":
      return typeof outer === "number" && typeof inner === "number" && inner <= outer;
    default:
      return false;
  }
}

/**
 * Whether a branch's properties, which replace the union's, still ask what the union's do: each of
 * the union's that the object must hold (required) is redeclared alike or as enum/const values
 * the union's own schema allows (a discriminator), and any new key is one the union allows.
 */
function narrowsProperties(outer: Record<string, unknown>, branch: Record<string, unknown>): boolean {
  const mine = outer.properties as Record<string, unknown>;
  const theirs = branch.properties;
  if (!theirs || typeof theirs !== "object" || Array.isArray(theirs)) return false;
  const p = theirs as Record<string, unknown>;
  const required = (Array.isArray(branch.required) ? branch.required : Array.isArray(outer.required) ? outer.required : []) as unknown[];
  for (const [key, schema] of Object.entries(mine ?? {})) {
    if (!(key in p)) {
      if (required.includes(key)) return false;
      continue;
    }
    if (!sameJson(schema, p[key]) && !literalsFit(p[key], schema)) return false;
  }
  // the union's additionalProperties judges keys against the union's properties, whatever the branch says
  const extra = outer.additionalProperties;
  return Object.keys(p).every((key) => key in (mine ?? {}) || extra === undefined || extra === true);
}

/** Whether `inner` is only enum/const values (and annotations) that `outer`, only type/enum/const (and annotations), allows. */
function literalsFit(inner: unknown, outer: unknown): boolean {
  if (!isSchema(inner) || !isSchema(outer) || typeof inner === "boolean") return false;
  if (outer === true) return true;
  if (outer === false) return false;
  const i = inner as Record<string, unknown>;
  const o = outer as Record<string, unknown>;
  if (Object.keys(i).some((k) => k !== "const" && k !== "enum" && !ANNOTATIONS.has(k))) return false;
  if (Object.keys(o).some((k) => k !== "type" && k !== "const" && k !== "enum" && !ANNOTATIONS.has(k))) return false;
  const values = "const" in i ? [i.const] : Array.isArray(i.enum) ? i.enum : null;
  if (!values) return false;
  const typeOf = (v: unknown): string[] =>
    v === null ? ["null"] : Array.isArray(v) ? ["array"] : typeof v === "number" ? (Number.isInteger(v) ? ["integer", "number"] : ["number"]) : [typeof v];
  const types = o.type === undefined ? null : Array.isArray(o.type) ? o.type : [o.type];
  return values.every(
    (v) =>
      (!types || typeOf(v).some((t) => types.includes(t))) &&
      (!("const" in o) || sameJson(o.const, v)) &&
      (!Array.isArray(o.enum) || o.enum.some((e) => sameJson(e, v))),
  );
}

const isSchema = (v: unknown) => typeof v === "boolean" || (typeof v === "object" && v !== null && !Array.isArray(v));

/**
 * Why an enforced keyword's value is not one compile() can read (it then ignores it, as it does a
 * number where a schema should be): `"type": "int"` or `"minLength": "3"` must not pass a strict
 * schema as enforced while the reply is held to nothing of it. Null when the value is readable.
 */
function malformed(keyword: string, value: unknown): string | null {
  switch (keyword) {
    case "type": {
      const names = Array.isArray(value) ? value : [value];
      return names.every((t) => JSON_TYPES.includes(t as JsonType)) && names.length > 0 ? null : `not ${Array.isArray(value) ? "a list of type names" : "a type name"} (${JSON_TYPES.join(", ")}): ignored`;
    }
    case "enum":
    case "anyOf":
    case "oneOf":
      return Array.isArray(value) ? null : "not a list: ignored";
    case "required":
      return Array.isArray(value) && value.every((k) => typeof k === "string") ? null : "not a list of property names: ignored";
    case "properties":
    case "$defs":
    case "definitions":
      return typeof value === "object" && value !== null && !Array.isArray(value) ? null : "not an object of schemas: ignored";
    case "items":
    case "additionalProperties":
      return isSchema(value) ? null : "not a schema: ignored";
    case "minItems":
    case "maxItems":
    case "minLength":
    case "maxLength":
    case "minimum":
    case "maximum":
    case "exclusiveMinimum":
    case "exclusiveMaximum":
      return typeof value === "number" && Number.isFinite(value) ? null : "not a number: ignored";
    case "$ref":
      return typeof value === "string" ? null : "not a string: ignored";
    default:
      return null;
  }
}

/** JSON Schema's validation keywords that compile() does not read. */
const UNENFORCED = new Set([
  "pattern", "format", "allOf", "not", "if", "then", "else", "patternProperties", "propertyNames", "minProperties", "maxProperties",
  "dependentRequired", "dependentSchemas", "dependencies", "uniqueItems", "contains", "minContains", "maxContains", "prefixItems",
  "additionalItems", "unevaluatedProperties", "unevaluatedItems", "multipleOf", "$dynamicRef", "$recursiveRef",
]);

// --- the matcher's frames ---

type ObjectState = "open" | "colon" | "afterColon" | "afterColonSpace" | "value" | "next" | "comma" | "commaSpace";
type ArrayState = "open" | "value" | "next" | "comma" | "commaSpace";

type Frame =
  /**
   * fixed text still to come: the texts[lo..hi) (sorted, sharing their first `at` code units) of
   * an enum (`src` its node) or the text before a value (`src` its own id)
   */
  | { k: "text"; texts: readonly string[]; lo: number; hi: number; at: number; value: boolean; src: number }
  /** a value of `node` starts with the next character */
  | { k: "value"; node: Node }
  /** inside a string; `key`: an object's key (its text is kept to check the key) */
  | { k: "string"; node: Node; key: boolean; text: string; length: number; escape: string | null }
  | { k: "number"; node: Node; text: string }
  | { k: "object"; node: Node; state: ObjectState; keys: readonly string[] }
  | { k: "array"; node: Node; state: ArrayState; count: number };

/**
 * A reading of the text so far: its innermost frame, over any of `rest` (readings merged because
 * their top frames were the same). null is a finished value.
 */
interface Stack {
  top: Frame;
  rest: readonly Reading[];
}
type Reading = Stack | null;

const push = (rest: readonly Reading[], top: Frame): Stack => ({ top, rest });

/** Two readings with the same key read every further text alike until their top frame is done. */
function frameKey(f: Frame): string {
  switch (f.k) {
    case "text":
      return `t${f.src}:${f.lo}:${f.hi}:${f.at}`;
    case "value":
      return `v${f.node.id}`;
    case "string":
      return `s${f.node.id}:${f.key ? `k${JSON.stringify(f.text)}` : ""}:${f.length}:${f.escape ?? ""}`;
    case "number":
      return `n${f.node.id}:${f.text}`;
    case "object":
      return `o${f.node.id}:${f.state}:${JSON.stringify(f.keys)}`;
    case "array":
      return `a${f.node.id}:${f.state}:${f.count}`;
  }
}

/** Readings with the same top frame become one, over the frames below of both. */
function merge(readings: Reading[]): Reading[] {
  const byKey = new Map<string, Stack>();
  let done = false;
  for (const r of readings) {
    if (!r) {
      done = true;
      continue;
    }
    const key = frameKey(r.top);
    const same = byKey.get(key);
    if (!same) byKey.set(key, r);
    else if (same !== r && same.rest !== r.rest) byKey.set(key, push([...new Set([...same.rest, ...r.rest])], same.top));
  }
  const merged: Reading[] = [...byKey.values()];
  if (done) merged.push(null);
  return merged;
}

/** The value on top of `rest` is done: each container below moves on. */
function finished(rest: readonly Reading[]): Reading[] {
  return rest.map((r) => {
    if (!r) return null;
    const top = r.top;
    if ((top.k === "object" || top.k === "array") && top.state === "value") return push(r.rest, { ...top, state: "next" });
    return r; // a "value" frame: the text before it is done, the value comes next
  });
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

const allows = (node: Node, type: JsonType) => node.types === null || node.types.has(type);

const bounded = (node: Node) => node.min > -Infinity || node.max < Infinity;

/** Decimal digits (and at most one ".") plus one unit in the last place: "0.09" -> "0.10", "99" -> "100". */
function incremented(digits: string): string {
  const out = digits.split("");
  for (let i = out.length - 1; i >= 0; i--) {
    if (out[i] === ".") continue;
    if (out[i] !== "9") {
      out[i] = String(Number(out[i]) + 1);
      return out.join("");
    }
    out[i] = "0";
  }
  return "1" + out.join("");
}

/**
 * Whether some number starting with `text` (no exponent) parses to a double within the node's
 * bounds, as numberDone reads it: the numbers a prefix starts lie in [lo, sup) (more digits only
 * narrow it), taken as the doubles from Number(lo) to the one below Number(sup) (integers: up to
 * the prefix and then nines). Each end is parsed from its own decimal text: adding 10^-k in
 * floating point (0.09 + 0.01 < 0.1) left prefixes such as "0.0" allowed under minimum 0.1 with
 * no digit able to follow, and bounds were compared as if inclusive (integer exclusiveMaximum 10
 * allowed "10"): the reply then failed mid-way.
 */
function numberReachable(text: string, node: Node, integer: boolean): boolean {
  if (!bounded(node)) return true;
  if (/[eE]/.test(text)) return false; // exponents are not written when there are bounds
  const [min, max] = valueRange(node, integer);
  const negative = text.startsWith("-");
  const body = negative ? text.slice(1) : text;
  // the magnitudes [lo, hi] with the sign applied, against [min, max]
  const fits = (lo: number, hi: number) => {
    const [a, b] = negative ? [-hi, -lo] : [lo, hi];
    return Math.max(a, min) <= Math.min(b, max);
  };
  // a lone "-" only where a negative number fits (not for -0 alone)
  if (body === "") return (!negative || min < 0) && fits(0, Infinity);
  // the numbers below sup, not those that only round to it: a prefix such as "0.0" under minimum
  // 0.1 would otherwise hold the model to a run of nines until Number() reads 0.1
  const below = (sup: string) => nextDouble(Number(sup), -1);
  if (body.includes(".") || body === "0") {
    // "0" may go on only as a fraction (or stop), as a fraction may
    const digits = body.endsWith(".") ? body.slice(0, -1) : body;
    return fits(Number(digits), integer ? Number(digits) : Math.max(Number(digits), below(incremented(digits))));
  }
  // k more digits: [body·10^k, (body+1)·10^k) for a number, body·10^k up to body then k nines for an integer
  const limit = negative ? -min : max;
  if (limit === Infinity) return true; // some longer number is large enough
  const next = incremented(body);
  for (let k = 0; k <= 400; k++) {
    const lo = Number(body + "0".repeat(k));
    if (lo > limit) break;
    if (fits(lo, integer ? Number(body + "9".repeat(k)) : Math.max(lo, below(next + "0".repeat(k))))) return true;
  }
  return false;
}

function numberDone(text: string, node: Node): boolean {
  const integer = !allows(node, "number");
  if (!(integer ? INTEGER : NUMBER).test(text)) return false;
  const v = Number(text);
  return (node.exclusiveMin ? v > node.min : v >= node.min) && (node.exclusiveMax ? v < node.max : v <= node.max);
}

/** The first of texts[lo..hi) whose code unit at `at` is `unit` or above (a text that ends sorts first). */
function firstFrom(texts: readonly string[], lo: number, hi: number, at: number, unit: number): number {
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    const t = texts[mid]!;
    if ((t.length > at ? t.charCodeAt(at) : -1) < unit) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Fixed text: the candidates that go on with `ch` (one reading for all of them), and any it ends. */
function stepText(f: Extract<Frame, { k: "text" }>, ch: string, rest: readonly Reading[]): Reading[] {
  let { lo, hi, at } = f;
  for (let u = 0; u < ch.length; u++, at++) {
    const unit = ch.charCodeAt(u);
    lo = firstFrom(f.texts, lo, hi, at, unit);
    hi = firstFrom(f.texts, lo, hi, at, unit + 1);
    if (lo >= hi) return [];
  }
  const out: Reading[] = [];
  if (f.texts[lo]!.length === at) {
    out.push(...(f.value ? finished(rest) : rest));
    lo++;
  }
  if (lo < hi) out.push(push(rest, { ...f, lo, hi, at }));
  return out;
}

// true, false and null read alike whatever schema allows them (their readings merge)
const TRUE: Extract<Frame, { k: "text" }> = { k: "text", texts: ["true"], lo: 0, hi: 1, at: 0, value: true, src: -1 };
const FALSE: Extract<Frame, { k: "text" }> = { ...TRUE, texts: ["false"], src: -2 };
const NULL: Extract<Frame, { k: "text" }> = { ...TRUE, texts: ["null"], src: -3 };

/** The readings in which a value of `node` starts with `ch`, over `rest`. */
function startValue(node: Node, ch: string, rest: readonly Reading[]): Reading[] {
  // options are flat (compile() followed nested unions): no recursion here
  if (node.options) return node.options.flatMap((o) => startValue(o, ch, rest));
  if (node.literals) return stepText({ k: "text", texts: node.literals, lo: 0, hi: node.literals.length, at: 0, value: true, src: node.id }, ch, rest);
  switch (ch) {
    case '"':
      return allows(node, "string") ? [push(rest, { k: "string", node, key: false, text: "", length: 0, escape: null })] : [];
    case "{":
      return allows(node, "object") ? [push(rest, { k: "object", node, state: "open", keys: [] })] : [];
    case "[":
      return allows(node, "array") ? [push(rest, { k: "array", node, state: "open", count: 0 })] : [];
    case "t":
    case "f":
      return allows(node, "boolean") ? stepText(ch === "t" ? TRUE : FALSE, ch, rest) : [];
    case "n":
      return allows(node, "null") ? stepText(NULL, ch, rest) : [];
  }
  if (ch === "-" || (ch >= "0" && ch <= "9")) {
    if (!allows(node, "number") && !allows(node, "integer")) return [];
    return numberReachable(ch, node, !allows(node, "number")) ? [push(rest, { k: "number", node, text: ch })] : [];
  }
  return [];
}

function startKey(f: Extract<Frame, { k: "object" }>, rest: readonly Reading[]): Reading[] {
  const left = keysLeft(f);
  if (left !== "any" && !left.length) return [];
  return [push([push(rest, { ...f, state: "colon" })], { k: "string", node: f.node, key: true, text: "", length: 0, escape: null })];
}

function closeObject(f: Extract<Frame, { k: "object" }>, rest: readonly Reading[]): Reading[] {
  return f.node.required.every((k) => f.keys.includes(k)) ? finished(rest) : [];
}

/** The readings after one more character. */
function step(reading: Reading, ch: string): Reading[] {
  if (!reading) return []; // the value is finished: nothing may follow
  const f = reading.top;
  const rest = reading.rest;
  switch (f.k) {
    case "text":
      return stepText(f, ch, rest);
    case "value":
      return startValue(f.node, ch, rest);
    case "string":
      return stepString(f, ch, rest);
    case "number": {
      const text = f.text + ch;
      const integer = !allows(f.node, "number");
      if ((integer ? INTEGER_PREFIX : NUMBER_PREFIX).test(text) && numberReachable(text, f.node, integer)) return [push(rest, { ...f, text })];
      // anything else ends the number, and is read by what holds it
      return numberDone(f.text, f.node) ? finished(rest).flatMap((r) => step(r, ch)) : [];
    }
    case "object":
      return stepObject(f, ch, rest);
    case "array":
      return stepArray(f, ch, rest);
  }
}

const UNESCAPED: Record<string, string> = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };

/** The object frames a key string is read for (several, where readings were merged). */
const keyOwners = (rest: readonly Reading[]) => rest.filter((r): r is Stack & { top: Extract<Frame, { k: "object" }> } => r !== null && r.top.k === "object");

function stepString(f: Extract<Frame, { k: "string" }>, ch: string, rest: readonly Reading[]): Reading[] {
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
    if (!f.key) return f.length >= f.node.minLength ? finished(rest) : [];
    // the key is done: each object it may belong to takes it, if it is allowed there and new
    const out: Reading[] = [];
    for (const owner of keyOwners(rest)) {
      const obj = owner.top;
      const left = keysLeft(obj);
      if ((left !== "any" && !left.includes(f.text)) || obj.keys.includes(f.text)) continue;
      out.push(push(owner.rest, { ...obj, keys: [...obj.keys, f.text] }));
    }
    return out;
  }
  if (ch < " ") return []; // control characters are escaped in JSON
  if (ch === "\\") return fixedKeys || f.length + 1 > f.node.maxLength ? [] : [push(rest, { ...f, escape: "" })];
  const text = f.key ? f.text + ch : "";
  if (fixedKeys) {
    const owners = keyOwners(rest).filter((o) => (keysLeft(o.top) as string[]).some((k) => k.startsWith(text)));
    return owners.length ? [push(owners, { ...f, text, length: f.length + 1 })] : [];
  }
  if (!f.key && f.length + 1 > f.node.maxLength) return [];
  return [push(rest, { ...f, text, length: f.length + 1 })];
}

function stepObject(f: Extract<Frame, { k: "object" }>, ch: string, rest: readonly Reading[]): Reading[] {
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
      return node ? startValue(node, ch, [push(rest, { ...f, state: "value" })]) : [];
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

function stepArray(f: Extract<Frame, { k: "array" }>, ch: string, rest: readonly Reading[]): Reading[] {
  const item = f.node.items ?? ANY;
  switch (f.state) {
    case "open":
      if (ch === "]") return f.node.minItems <= 0 ? finished(rest) : [];
      return f.node.maxItems >= 1 ? startValue(item, ch, [push(rest, { ...f, state: "value", count: 1 })]) : [];
    case "next":
      if (ch === "]") return f.count >= f.node.minItems ? finished(rest) : [];
      return ch === "," && f.count < f.node.maxItems ? [push(rest, { ...f, state: "comma" })] : [];
    case "comma":
    case "commaSpace":
      if (ch === " " && f.state === "comma") return [push(rest, { ...f, state: "commaSpace" })];
      return startValue(item, ch, [push(rest, { ...f, state: "value", count: f.count + 1 })]);
    case "value":
      return [];
  }
}

/** Whether a reading is a whole value: finished, or a number that may end here. */
function whole(reading: Reading): boolean {
  if (!reading) return true;
  return reading.top.k === "number" && numberDone(reading.top.text, reading.top.node) && reading.rest.includes(null);
}

/** A character a JSON string holds as it is: not a quote, a backslash or a control character. */
const ordinary = (code: number) => code >= 0x20 && code !== 0x22 && code !== 0x5c;

/** A reading inside a string that any run of ordinary characters only lengthens (a key of fixed keys is checked as it grows). */
const inRun = (r: Reading) => r !== null && r.top.k === "string" && r.top.escape === null && !(r.top.key && r.top.node.properties);

/** The root node of a schema, compiled and checked (see finish). */
function compileRoot(schema: JsonSchema): Node {
  const compiler = new Compiler(schema);
  const root = compiler.compile(schema, "#");
  finish(compiler, root);
  return root;
}

/**
 * Refuses alternatives (fixed text, then a value) that could make feed follow more readings at
 * once than JSON_CONSTRAINT_LIMITS.readings on some text, so that a schema is refused when it is
 * compiled rather than fail mid-reply. Values after the same head stand at one place; while heads
 * are read each is a reading; a value without a head is read beside all of them. Names the
 * alternative whose value alone is too ambiguous, when one is.
 */
function boundReadings(alternatives: readonly { head: string; node: Node }[]): void {
  const limit = JSON_CONSTRAINT_LIMITS.readings;
  const groups = new Map<string, { nodes: Set<Node>; first: number; count: number }>();
  alternatives.forEach(({ head, node }, i) => {
    const group = groups.get(head) ?? { nodes: new Set<Node>(), first: i, count: 0 };
    for (const leaf of leavesOf(node)) group.nodes.add(leaf);
    group.count++;
    groups.set(head, group);
  });
  let bare = 0;
  let widestHeaded = 0;
  let allHeaded = 0;
  for (const [head, group] of groups) {
    const widest = widestPlace([...group.nodes]);
    if (widest.readings > limit) throw tooAmbiguous(widest.readings, widest.path, widest.nodes, group.count === 1 ? group.first : undefined);
    if (!head) bare = widest.readings;
    widestHeaded = head ? Math.max(widestHeaded, widest.readings) : widestHeaded;
    allHeaded += head ? widest.readings : 0;
  }
  // once a head is read, no other is still being read unless it starts with it (sorted, such a head comes right after)
  const heads = [...groups.keys()].filter(Boolean).sort();
  const nested = heads.some((h, i) => i > 0 && h.startsWith(heads[i - 1]!));
  const reading = alternatives.filter((a) => a.head).length;
  const bound = (nested ? reading + allHeaded : Math.max(reading, widestHeaded)) + bare;
  if (bound > limit) {
    throw new JsonSchemaError(`${alternatives.length} alternatives together are too ambiguous for kiln's constrained decoding: the matcher could have to follow ${bound} readings at once (at most ${limit}); offer fewer`);
  }
}

/**
 * The prefixes of JSON texts (optionally after fixed text) that fit a schema. Immutable: `feed`
 * returns a new matcher, or null when the text can no longer fit. Building one throws a
 * JsonSchemaError for a schema it cannot use (see the top of this file); feeding throws a
 * JsonConstraintError past JSON_CONSTRAINT_LIMITS.readings.
 */
export class JsonMatcher {
  private constructor(
    private readonly readings: readonly Reading[],
    /** each alternative's compiled schema and the fixed text around it (for writableBy) */
    private readonly roots: readonly { node: Node; head?: string; tail?: string }[],
  ) {}

  /** One JSON value fitting `schema`. */
  static of(schema: JsonSchema): JsonMatcher {
    const node = compileRoot(schema);
    boundReadings([{ head: "", node }]);
    return new JsonMatcher([push([null], { k: "value", node })], [{ node }]);
  }

  /** Any one of: fixed text (`head`), then a JSON value fitting its schema, then fixed text (`tail`, if any). */
  static afterHeads(alternatives: { head: string; schema: JsonSchema; tail?: string }[]): JsonMatcher {
    const compiled = alternatives.map(({ head, schema, tail }, i) => {
      try {
        return { head, tail, node: compileRoot(schema) };
      } catch (err) {
        if (err instanceof JsonSchemaError) throw new JsonSchemaError(err.message, i);
        throw err;
      }
    });
    boundReadings(compiled);
    return new JsonMatcher(
      compiled.map(({ head, tail, node }) => {
        const text = (texts: string, rest: readonly Reading[]) => push(rest, { k: "text", texts: [texts], lo: 0, hi: 1, at: 0, value: false, src: nextId++ });
        const value = push([tail ? text(tail, [null]) : null], { k: "value", node });
        return head ? text(head, [value]) : value;
      }),
      compiled,
    );
  }

  /**
   * Refuses (a JsonSchemaError, naming the alternative for afterHeads) a schema whose fixed text
   * the vocabulary cannot write: an enum/const value or a declared property name (as written,
   * quoted) holding a character no token's text holds whole, or one it holds only beside other
   * characters that the text around it does not have ("☃" only in "x☃", in an enum's "y☃"; a
   * token running past the text's end, '☃":' for a key "☃", fits when JSON of any schema may go on
   * so there: the mask holds it to the schema itself). The mask forces such text, so without this the reply would fail mid-way (a JsonConstraintError once
   * the model had begun the value), where a request's fault should be refused before any token is
   * generated. A byte-level vocabulary without a token for "é" writes it as two bytes, each
   * decoding alone to U+FFFD, which no enum text holds. Free strings need no check: any character
   * may be written there as a \u escape. Fixed text the vocabulary can write is written: the mask
   * lets no token lead into a part of it that no token can go on from (see canFinish). The text
   * afterHeads puts around each value (a tool call's template text) is checked alike, from where
   * `prefilled` (given to the model, not written by it) leaves off; a JsonSchemaError for it says
   * which `part`. Returns the matcher.
   */
  writableBy(vocab: TokenTexts, prefilled = ""): this {
    const spelling = spellingOf(vocab);
    // What may follow fixed text, for a token running past its end: JSON of any schema around it
    // (the mask checks that token against the schema itself). A value's text begins after `before`.
    const any = JsonMatcher.of(true);
    const item = { around: any, before: "[" };
    const member = { around: any, before: '{"":' };
    const key = { around: any, before: "{" };
    this.roots.forEach(({ node: root, head = "", tail }, alternative) => {
      const whole = { around: head || tail ? JsonMatcher.afterHeads([{ head, schema: true, tail }]) : any, before: head };
      const seen = new Map<Node, Set<typeof whole>>();
      const todo: [Node, typeof whole][] = [[root, whole]];
      const check = (text: string, place: typeof whole | null, what: () => string, from = 0, part?: "head" | "tail") => {
        const follows: Follows = place ? (past) => place.around.feed(place.before + text + past) !== null : NOTHING_FOLLOWS;
        if (writableFrom(text, spelling, follows)[from]) return;
        const stuck = stuckAt(text, spelling, follows, from);
        const ch = String.fromCodePoint(text.codePointAt(stuck)!);
        const code = `U+${ch.codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0")}`;
        const holders = spelling.within.get(ch);
        const why = holders
          ? `its tokens hold it only beside other characters (${holders.slice(0, 3).map((t) => JSON.stringify(t)).join(", ")}${holders.length > 3 ? ", ..." : ""}), none of which fits the text around it, and the constraint forces that text as it is`
          : "no token holds it whole, and the constraint forces that text character by character";
        throw new JsonSchemaError(
          `${what()} holds ${JSON.stringify(ch)} (${code}), which the model's vocabulary cannot write: ${why}; ${part ? "use a model whose tokenizer writes it" : "leave the character out of it, or use a model whose tokenizer has a token for it"}`,
          alternative,
          part,
        );
      };
      // the text around the value, from where a prefill given to the model leaves off
      const from = head.startsWith(prefilled) ? prefilled.length : 0;
      if (head.length > from) check(head, { around: whole.around, before: "" }, () => `the text before the value, ${JSON.stringify(head.slice(from))},`, from, "head");
      if (tail) check(tail, null, () => `the text after the value, ${JSON.stringify(tail)},`, 0, "tail");
      while (todo.length) {
        const [node, place] = todo.pop()!;
        const places = seen.get(node) ?? new Set();
        if (places.has(place)) continue;
        seen.set(node, places.add(place));
        for (const text of node.literals ?? []) check(text, place, () => `${node.at}: the enum/const value ${text}`);
        for (const [name, value] of node.properties ?? []) {
          check(`"${name}"`, key, () => `${pointer(node.at, "properties", name)}: the property name ${JSON.stringify(name)}`);
          todo.push([value, member]);
        }
        for (const option of node.options ?? []) todo.push([option, place]);
        if (node.extra) todo.push([node.extra, member]);
        if (node.items) todo.push([node.items, item]);
      }
    });
    return this;
  }

  /**
   * Whether tokens can still finish the text: false only when every reading is inside fixed text
   * (an enum/const value, a declared key, true/false/null, a head or tail) that `writable(text,
   * at, follows)` says no run of tokens writes from code unit `at` to its end (the last perhaps
   * running past it with text that `follows`, this reading after the fixed text, takes). The mask
   * asks it of the text after each token it might allow, so that a token leading into a dead end
   * of fixed text is never written (writableBy has refused fixed text no run of tokens writes at
   * all).
   */
  canFinish(writable: (text: string, at: number, follows: Follows) => boolean): boolean {
    return this.readings.some((r) => {
      if (!r) return true;
      const f = r.top;
      // a token running past the text's end must go on as this reading goes on after the text
      const after = (rest: string): Follows => (past) => new JsonMatcher([r], this.roots).feed(rest + past) !== null;
      if (f.k === "text") {
        for (let i = f.lo; i < f.hi; i++) if (writable(f.texts[i]!, f.at, after(f.texts[i]!.slice(f.at)))) return true;
        return false;
      }
      if (f.k === "string" && f.key && f.node.properties) {
        // the declared keys it may still become, as written (quoted), from after the quote and f.text
        return keyOwners(r.rest).some((o) => (keysLeft(o.top) as string[]).some((k) => k.startsWith(f.text) && writable(`"${k}"`, 1 + f.text.length, after(`${k.slice(f.text.length)}"`))));
      }
      return true;
    });
  }

  feed(text: string): JsonMatcher | null {
    let readings = this.readings;
    for (let i = 0; i < text.length; ) {
      // the common case, inside a string (a value, or a key of an object that takes any key): a
      // run of ordinary characters only adds length (a key keeps its text), in every reading
      if (readings.every(inRun)) {
        let j = i;
        let chars = 0; // lengths count code points, as JSON Schema's do
        while (j < text.length && ordinary(text.charCodeAt(j))) {
          j += text.codePointAt(j)! > 0xffff ? 2 : 1;
          chars++;
        }
        if (j > i) {
          const run = text.slice(i, j);
          const next: Reading[] = [];
          for (const r of readings as Stack[]) {
            const f = r.top as Extract<Frame, { k: "string" }>;
            const length = f.length + chars;
            if (f.key) next.push(push(r.rest, { ...f, text: f.text + run, length }));
            else if (length <= f.node.maxLength) next.push(push(r.rest, { ...f, length }));
          }
          if (!next.length) return null;
          readings = next;
          i = j;
          continue;
        }
      }
      const ch = String.fromCodePoint(text.codePointAt(i)!);
      i += ch.length;
      let next: Reading[] = [];
      for (const r of readings) for (const s of step(r, ch)) next.push(s);
      if (!next.length) return null;
      // Readings multiply only where a step gives several (a union's branches, a number that may
      // end): merging there keeps their number bounded, and elsewhere it would only cost time.
      if (next.length > readings.length) {
        next = merge(next);
        if (next.length > JSON_CONSTRAINT_LIMITS.readings) {
          throw new JsonConstraintError(`the schema is too ambiguous for kiln's constrained decoding: at ${JSON.stringify(text.slice(Math.max(0, i - 40), i))} it would follow ${next.length} readings at once (at most ${JSON_CONSTRAINT_LIMITS.readings})`);
        }
      }
      readings = next;
    }
    return new JsonMatcher(readings, this.roots);
  }

  /** Whether the text so far is a whole value (nothing more needs to be written). */
  get complete(): boolean {
    return this.readings.some(whole);
  }

  /** Whether more text may follow. */
  get open(): boolean {
    return this.readings.some((r) => r !== null);
  }

  /** How many readings it follows: what feeding it costs. */
  get width(): number {
    return this.readings.length;
  }

  /**
   * Inside a string value, or a key of an object that takes any key (in every reading, no escape
   * pending): how many more characters it may take. Any run of ordinary characters that long
   * fits; null elsewhere.
   */
  get stringRoom(): number | null {
    if (!this.readings.every(inRun)) return null;
    let room = 0;
    for (const r of this.readings as Stack[]) {
      const f = r.top as Extract<Frame, { k: "string" }>;
      room = Math.max(room, f.key ? Infinity : f.node.maxLength - f.length);
    }
    return room;
  }
}

// --- tokens ---

/** Each token's text, and the tokens grouped by first character (to reject a group at once). */
export interface TokenView {
  texts: string[];
  byFirst: Map<string, number[]>;
  /** a token's length in code points when its text is all ordinary string characters, else -1 */
  plain: Int32Array;
}

/**
 * A vocabulary as the mask sees it. `texts` (and byFirst, plain) are what each token adds after
 * another token; `first`, what it is as a reply's first token. They differ for SentencePiece
 * (Metaspace) tokenizers, Llama 2's, Mistral's, TinyLlama's: "▁name" decodes to "name" alone
 * (the decoder strips the leading space of the whole text) but adds " name" after a token.
 */
export interface TokenTexts extends TokenView {
  first: TokenView;
  /** the tokenizer's decode: the constraint follows the reply's text as it decodes, whole */
  decode(ids: number[]): string;
}

const vocabularies = new WeakMap<object, TokenTexts>();

/**
 * How a vocabulary writes characters, after another token: those a token writes alone, and for
 * each character some token holds only beside others ("x☃" but no "☃"), the texts of those tokens.
 * A character in neither is not in the vocabulary at all.
 */
interface Spelling {
  alone: Set<string>;
  within: Map<string, string[]>;
}

const spellings = new WeakMap<readonly string[], Spelling>();

/** The vocabulary's spelling (cached per vocabulary). */
function spellingOf(vocab: TokenView): Spelling {
  let spelling = spellings.get(vocab.texts);
  if (!spelling) {
    const alone = new Set<string>();
    for (const text of vocab.texts) if (text && String.fromCodePoint(text.codePointAt(0)!) === text) alone.add(text);
    const within = new Map<string, Set<string>>();
    for (const text of vocab.texts) {
      for (const ch of text) {
        if (alone.has(ch)) continue;
        const holders = within.get(ch);
        if (holders) holders.add(text);
        else within.set(ch, new Set([text]));
      }
    }
    spelling = { alone, within: new Map([...within].map(([ch, texts]) => [ch, [...texts]])) };
    spellings.set(vocab.texts, spelling);
  }
  return spelling;
}

/**
 * What may follow a fixed text, as far as a token running past its end goes: whether that token's
 * text after the end (`past`: ':' after a key, '",' after an enum value's '"') can come next.
 */
type Follows = (past: string) => boolean;

/** Nothing known to follow: only tokens that end inside the text write it. */
const NOTHING_FOLLOWS: Follows = () => false;

/**
 * Where in fixed `text` the vocabulary can write the rest of it from, token after token: 1 at each
 * code unit a run of tokens starting there writes the text to its end, and at the end. Its last
 * token ends there too, or runs past the end with text that `follows` takes: a character some
 * token holds only with what comes after the text ('☃":' for the key "☃") is written by it. The
 * mask forces fixed text, and a character the vocabulary holds only inside longer tokens ("☃"
 * only in "x☃") is written only by one of those whose other characters match the text around it:
 * a token that ends right before it ("y" of "y☃") leads nowhere. Tokens of characters that each
 * have a token alone never matter (they can be written one by one), so only the holders of the
 * others are tried.
 */
function writableFrom(text: string, spelling: Spelling, follows = NOTHING_FOLLOWS): Uint8Array {
  const n = text.length;
  const jumps = holderJumps(text, spelling);
  const writable = new Uint8Array(n + 1);
  writable[n] = 1;
  for (let j = n - 1; j >= 0; j--) {
    const ch = String.fromCodePoint(text.codePointAt(j)!);
    if ((spelling.alone.has(ch) && writable[j + ch.length]) || jumps.get(j)?.some((jump) => writable[jump.end] && (jump.past === "" || follows(jump.past)))) writable[j] = 1;
  }
  return writable;
}

/** A holder token's place in fixed text: where it ends, and what it writes past the text's end ("" for none). */
interface Jump {
  end: number;
  past: string;
}

/** Where in fixed `text` a holder of a character written only beside others could start, and where each goes. */
function holderJumps(text: string, spelling: Spelling): Map<number, Jump[]> {
  const n = text.length;
  const jumps = new Map<number, Jump[]>();
  for (let i = 0; i < n; ) {
    const ch = String.fromCodePoint(text.codePointAt(i)!);
    for (const token of spelling.within.get(ch) ?? []) {
      for (let o = token.indexOf(ch); o >= 0; o = token.indexOf(ch, o + 1)) {
        const from = i - o;
        if (from < 0) continue;
        const jump = text.startsWith(token, from) ? { end: from + token.length, past: "" } : from + token.length > n && token.startsWith(text.slice(from)) ? { end: n, past: token.slice(n - from) } : null;
        if (!jump) continue;
        const at = jumps.get(from);
        if (at) at.push(jump);
        else jumps.set(from, [jump]);
      }
    }
    i += ch.length;
  }
  return jumps;
}

/**
 * The furthest place in fixed `text` that runs of tokens from its start reach, for text they do
 * not write to its end: no token starts there, so the character there is one that stops them
 * (a place past it may be one no token starts at but that a token begun before it writes through).
 */
function stuckAt(text: string, spelling: Spelling, follows: Follows, from: number): number {
  const jumps = holderJumps(text, spelling);
  const reached = new Uint8Array(text.length + 1);
  reached[from] = 1;
  let furthest = from;
  for (let i = from; i < text.length; i++) {
    if (!reached[i]) continue;
    furthest = i;
    const ch = String.fromCodePoint(text.codePointAt(i)!);
    if (spelling.alone.has(ch)) reached[i + ch.length] = 1;
    for (const jump of jumps.get(i) ?? []) if (jump.past === "" || follows(jump.past)) reached[jump.end] = 1;
  }
  return furthest;
}

function view(texts: string[]): TokenView {
  const byFirst = new Map<string, number[]>();
  const plain = new Int32Array(texts.length).fill(-1);
  texts.forEach((text, id) => {
    if (!text) return;
    let chars = 0;
    for (const ch of text) chars = chars >= 0 && ordinary(ch.charCodeAt(0)) ? chars + 1 : -1;
    plain[id] = chars;
    const first = String.fromCodePoint(text.codePointAt(0)!);
    const group = byFirst.get(first);
    if (group) group.push(id);
    else byFirst.set(first, [id]);
  });
  return { texts, byFirst, plain };
}

/**
 * The text of every token id, alone and after another token (cached per tokenizer). The text
 * after a token is decode([anchor, id]) less decode([anchor]), with an anchor that decodes the
 * same alone and in sequence (a single letter). Tokens that decode to nothing (special tokens)
 * are never allowed inside JSON. A byte-level token holding part of a character decodes to
 * U+FFFD, which JSON allows only inside strings, where the whole text decodes right.
 */
export function tokenTexts(tokenizer: { decode(ids: number[]): string }, vocabSize: number): TokenTexts {
  const cached = vocabularies.get(tokenizer);
  if (cached && cached.texts.length === vocabSize) return cached;
  const decode = (ids: number[]) => {
    try {
      return tokenizer.decode(ids);
    } catch {
      return ""; // an id past the tokenizer's vocabulary (embeddings padded to a round size)
    }
  };
  const alone: string[] = [];
  for (let id = 0; id < vocabSize; id++) alone.push(decode([id]));
  let after = alone;
  // a letter if there is one, else any token without spaces, that decodes twice as twice itself
  const stable = (id: number) => decode([id, id]) === alone[id]! + alone[id]!;
  let anchor = alone.findIndex((t, id) => /^[A-Za-z]$/.test(t) && stable(id));
  if (anchor < 0) anchor = alone.findIndex((t, id) => /^[^\s\uFFFD]+$/u.test(t) && stable(id));
  if (anchor >= 0) {
    const base = alone[anchor]!;
    after = alone.map((t, id) => {
      const both = decode([anchor, id]);
      return both.startsWith(base) ? both.slice(base.length) : t;
    });
  }
  const next = view(after);
  const result: TokenTexts = { ...next, first: after.every((t, id) => t === alone[id]) ? next : view(alone), decode: (ids) => (ids.length ? decode(ids) : "") };
  vocabularies.set(tokenizer, result);
  return result;
}

/**
 * A logits filter for generation: only tokens that keep the output a prefix of what `matcher`
 * accepts stay possible, and an end-of-turn token only once the value is whole (then nothing
 * else). The matcher follows the output as the tokenizer decodes it (the whole output each time,
 * so a character completed by a later byte, or a space a decoder adds only between tokens, is
 * read as the reply will show it). A token into fixed text is allowed only where tokens can
 * write the rest of it (JsonMatcher.canFinish). Throws a JsonConstraintError when no token can
 * continue the value (or the text left the constraint): generation stops with an error, never
 * with JSON that does not parse. `tokens` is the row's output so far.
 */
export function constrainToJson(vocab: TokenTexts, endIds: number[], matcher: JsonMatcher): (logits: Float32Array, tokens: readonly number[]) => void {
  // the matcher after the text decoded from the last few prefixes of the output (and the empty
  // one), to go back to when a later token changes how earlier ones decode (the bytes of one
  // character, at most 4 tokens)
  const fed: { tokens: number; text: string; state: JsonMatcher }[] = [{ tokens: 0, text: "", state: matcher }];
  // where the vocabulary can write each fixed text (enum values, keys) from, as the reply meets them
  const spelling = spellingOf(vocab);
  const writableAt = new Map<string, { places: Uint8Array; crossed: boolean }>();
  const writable = (text: string, at: number, follows: Follows) => {
    let known = writableAt.get(text);
    if (!known) writableAt.set(text, (known = { places: writableFrom(text, spelling), crossed: [...holderJumps(text, spelling).values()].some((jumps) => jumps.some((j) => j.past !== "")) }));
    // where tokens ending inside it cannot, one running past its end may, as what follows allows
    return known.places[at] === 1 || (known.crossed && writableFrom(text, spelling, follows)[at] === 1);
  };
  return (logits, tokens) => {
    if (tokens.length !== fed.at(-1)!.tokens) {
      const text = vocab.decode([...tokens]);
      let from = fed.length - 1;
      while (from > 0 && (fed[from]!.tokens > tokens.length || !text.startsWith(fed[from]!.text))) from--;
      const state = fed[from]!.state.feed(text.slice(fed[from]!.text.length));
      if (!state) throw new JsonConstraintError(`constrained generation: the reply's text left the JSON constraint at ${JSON.stringify(text.slice(-60))}`);
      fed.length = from + 1;
      fed.push({ tokens: tokens.length, text, state });
      if (fed.length > 9) fed.splice(1, 1);
    }
    const state = fed.at(-1)!.state;
    const texts = tokens.length ? vocab : vocab.first;
    const allowed = new Uint8Array(logits.length);
    let any = false;
    // Inside a string, where most of a reply's tokens go, a token of ordinary characters fits
    // when the string has room for it: it need not be fed (on a large vocabulary that is slow).
    const room = state.stringRoom;
    if (room !== null) {
      for (let id = 0; id < logits.length; id++) {
        const n = texts.plain[id]!;
        if (n >= 0 && n <= room) {
          allowed[id] = 1;
          any = true;
        }
      }
    }
    if (state.open) {
      for (const [first, ids] of texts.byFirst) {
        const after = state.feed(first);
        if (!after) continue;
        for (const id of ids) {
          if (id >= logits.length || (room !== null && texts.plain[id]! >= 0)) continue; // settled above
          // a token into fixed text only where tokens can go on to its end ("x☃", not "x" then no "☃")
          if (after.feed(texts.texts[id]!.slice(first.length))?.canFinish(writable)) {
            allowed[id] = 1;
            any = true;
          }
        }
      }
    }
    if (state.complete) {
      for (const id of endIds) {
        if (id >= logits.length) continue;
        allowed[id] = 1;
        any = true;
      }
    }
    if (!any) {
      const text = fed.at(-1)!.text;
      throw new JsonConstraintError(`constrained generation: no token of the vocabulary continues the JSON after ${JSON.stringify(text.slice(-60))}`);
    }
    for (let i = 0; i < logits.length; i++) if (!allowed[i]) logits[i] = -Infinity;
  };
}

const holding = new WeakMap<TokenView, Map<string, number[]>>();

/** The tokens whose text holds `part` (cached per vocabulary view). */
function tokensHolding(view: TokenView, part: string): number[] {
  let byPart = holding.get(view);
  if (!byPart) holding.set(view, (byPart = new Map()));
  let ids = byPart.get(part);
  if (!ids) byPart.set(part, (ids = view.texts.flatMap((t, id) => (t.includes(part) ? [id] : []))));
  return ids;
}

/**
 * A logits filter for a reply that is free text until it writes `trigger` (a tool call's opening,
 * `<tool_call>`), after which the text must go on as `matcher` accepts it (the call's name,
 * arguments and closing) until the matcher is done; then the text is free again, or with
 * `endAfter`, only an end-of-turn token may follow. With `atStart` the trigger opens a call only
 * as the reply's first characters (after space): a bare JSON call (`{`) is the whole reply. A
 * token that would complete the trigger is allowed only if what it writes after it fits the
 * matcher, so no call escapes the constraint by being written in one token. The matched part is
 * masked as constrainToJson masks it (and fails as it does, with a JsonConstraintError).
 */
export function constrainOnceOpened(
  vocab: TokenTexts,
  endIds: number[],
  trigger: string,
  matcher: JsonMatcher,
  options: { atStart?: boolean; endAfter?: boolean } = {},
): (logits: Float32Array, tokens: readonly number[]) => void {
  // the tokens that can complete the trigger: after text ending in a part of it, those holding its
  // last character; otherwise only those holding all of it (few: checked at every free step)
  const closing = (view: TokenView, partial: boolean) => tokensHolding(view, partial ? trigger.at(-1)! : trigger);
  let call: { from: number; mask: (logits: Float32Array, tokens: readonly number[]) => void } | null = null;
  let freeFrom = 0; // where the text after the last closed call starts
  let ended = false;
  return (logits, tokens) => {
    const text = vocab.decode([...tokens]);
    if (call) {
      const state = matcher.feed(text.slice(call.from));
      if (state && !state.open) {
        call = null;
        freeFrom = text.length;
        ended = !!options.endAfter;
      }
    }
    if (ended) {
      for (let i = 0; i < logits.length; i++) if (!endIds.includes(i)) logits[i] = -Infinity;
      return;
    }
    if (!call) {
      const at = options.atStart ? (text.trimStart().startsWith(trigger) && freeFrom === 0 ? text.indexOf(trigger) : -1) : text.indexOf(trigger, freeFrom);
      if (at >= 0) {
        const from = at + trigger.length;
        // the matcher reads the text from the trigger on, as constrainToJson reads a reply
        call = { from, mask: constrainToJson({ ...vocab, decode: (ids) => vocab.decode(ids).slice(from) }, endIds, matcher) };
      }
    }
    if (call) return call.mask(logits, tokens);
    // free text: a token that would complete the trigger must go on as the call does
    const view = tokens.length ? vocab : vocab.first;
    if (options.atStart) {
      if (text.trim() !== "") return; // the reply did not start with a call: it is free to the end
      for (let id = 0; id < logits.length; id++) {
        const written = (text + (view.texts[id] ?? "")).trimStart();
        if (written.startsWith(trigger) && !matcher.feed(written.slice(trigger.length))) logits[id] = -Infinity;
      }
      return;
    }
    const before = text.slice(Math.max(freeFrom, text.length - trigger.length + 1));
    let partial = false;
    for (let k = before.length; k > 0 && !partial; k--) partial = trigger.startsWith(before.slice(-k));
    for (const id of closing(view, partial)) {
      if (id >= logits.length) continue;
      const written = before + view.texts[id]!;
      const at = written.indexOf(trigger);
      if (at >= 0 && !matcher.feed(written.slice(at + trigger.length))) logits[id] = -Infinity;
    }
  };
}
