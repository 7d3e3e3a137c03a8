// Structured replies: OpenAI's `response_format`, shared by the OpenAI-compatible API
// (src/server/openai.ts) and the LangChain chat model (src/agent/langchain.ts).
//
//  - {type: "text"} (the default): the reply is free text;
//  - {type: "json_object"}: the reply is one JSON object (any keys);
//  - {type: "json_schema", json_schema: {name, schema, strict}}: the reply is one JSON value that
//    fits the schema (no schema: any JSON value).
// Both JSON formats are generated under the constraint of src/model/json-constraint.ts, so even a
// model never trained to write JSON writes it, in a compact layout (no whitespace but one space
// after ':' and ','), and the reply ends when the value does. The schema is not added to the
// prompt: the constraint decides which tokens may come, the messages say what the reply is about.
//
// strict: the constraint does not enforce every keyword (see schemaGaps: pattern, format, allOf,
// not, ...). With strict true such a schema is refused, naming each keyword and where it is,
// rather than answered with JSON that might break it. With strict false (or unset, OpenAI's
// default) those keywords are ignored: the reply fits the rest of the schema, and `unenforced`
// lists what was ignored so the caller can say so. json_object has no schema, so nothing is
// ignored.
//
// With tools the model may call (tool_choice "auto"), the reply is either one tool call or the
// JSON the format asks for, as OpenAI's is (see autoCalls in src/agent/tools.ts: one constraint
// covers both; a template whose calls kiln cannot write makes that a ResponseFormatError). A
// required call (tool_choice "required" or a named tool) is the reply, and the format does not
// apply to it.
//
// A schema the constraint cannot follow is refused before generation (a ResponseFormatError, a
// 400 on the API): one no value fits, a $ref cycle that reads nothing, one too large or too deep,
// one whose unions could open more readings at once than the matcher follows, a declared property
// name that needs an escape, and fixed text (an enum/const value, a declared property name) with a
// character the model's vocabulary cannot write (a byte-level one without a token for "☃" writes
// it as three bytes, none of which an enum's text holds alone; one whose only tokens holding "☃"
// are "x☃" cannot write "y☃"). Should generation still reach a point where no token continues
// the JSON (a vocabulary that cannot write "}"), the constraint throws a JsonConstraintError and
// the reply fails with it: never a "stop" with broken JSON.
import type { LoadedModel } from "../model/load.js";
import { constrainToJson, JsonMatcher, schemaGaps, tokenTexts, type JsonSchema, type SchemaGap } from "../model/json-constraint.js";

export type ResponseFormat =
  | { type: "text" }
  | { type: "json_object" }
  | { type: "json_schema"; json_schema: { name: string; description?: string; schema?: Record<string, unknown>; strict?: boolean | null } };

/** A response_format that cannot be honoured (a schema kiln cannot enforce or use). */
export class ResponseFormatError extends Error {
  override name = "ResponseFormatError";
}

/** A JSON reply: the token mask for generation, and what of the schema it leaves unchecked. */
export interface StructuredReply {
  /** the token mask (fresh for each generation: it follows the reply as it grows) */
  constrain: (logits: Float32Array, tokens: readonly number[]) => void;
  /** keywords of a non-strict schema that were ignored; empty when the reply is checked in full */
  unenforced: SchemaGap[];
  /** the schema the reply is held to (json_object: any object) */
  schema: JsonSchema;
}

/** "pattern" at #/properties/email (a list of schemas), ... */
export function describeGaps(gaps: SchemaGap[]): string {
  return gaps.map((g) => `"${g.keyword}" at ${g.at}${g.detail ? ` (${g.detail})` : ""}`).join(", ");
}

/**
 * The constraint for a response format; null for text (or none). Throws a ResponseFormatError for
 * a strict schema with keywords kiln cannot enforce, or a schema it cannot use at all (a remote
 * $ref, a $ref to nothing, one no value fits, a $ref cycle that reads nothing, one too large or
 * too deep for the matcher, fixed text the model's vocabulary cannot write: see
 * src/model/json-constraint.ts).
 */
export function structuredReply(model: LoadedModel, format: ResponseFormat | null | undefined): StructuredReply | null {
  if (!format || format.type === "text") return null;
  const schema: JsonSchema = format.type === "json_object" ? { type: "object" } : (format.json_schema.schema ?? true);
  const vocab = tokenTexts(model.tokenizer, model.config.vocabSize);
  let matcher: JsonMatcher;
  let unenforced: SchemaGap[];
  try {
    // compiled first: it refuses what schemaGaps could not walk either (a schema nested too deep);
    // then text it would force that this model's vocabulary cannot write (an enum's "☃")
    matcher = JsonMatcher.of(schema).writableBy(vocab);
    unenforced = schemaGaps(schema);
  } catch (err) {
    // whatever the schema makes the matcher throw is the request's fault, never a server error
    throw new ResponseFormatError(`the schema of response_format cannot be used: ${(err as Error).message}`);
  }
  if (format.type === "json_schema" && format.json_schema.strict === true && unenforced.length) {
    throw new ResponseFormatError(
      `the schema of response_format "${format.json_schema.name}" uses what kiln's constrained decoding cannot enforce: ${describeGaps(unenforced)}. ` +
        `With strict true kiln refuses it rather than reply with JSON that might not fit; drop those keywords, or set strict false to have them ignored (the reply then fits the rest of the schema)`,
    );
  }
  return { constrain: constrainToJson(vocab, model.eosTokenIds, matcher), unenforced, schema };
}
