// Tool calling on kiln's models, shared by the OpenAI-compatible API (src/server/openai.ts) and the
// LangChain chat model (src/agent/langchain.ts).
//
// How a conversation with tools is put to a model:
//  - where the model's chat template renders `tools` (Hermes/Qwen style), the tool specs go into
//    the template as OpenAI-format function definitions and earlier tool calls / results are
//    passed as structured messages;
//  - otherwise the plain-text protocol below is used: a system section lists the tools as JSON
//    schemas and asks for `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks; tool
//    results come back as user turns holding `<tool_response>` blocks (templates without tool
//    support often accept only user/assistant/system roles).
// In both cases `<tool_call>` blocks in the output are the tool calls; where the template writes
// calls as bare JSON (Llama 3.x), so is a reply that is wholly one such call of a bound tool.
//
// tool_choice: "none" puts no tools in the prompt and reads no calls from the reply; "auto" lets
// the model decide (see autoCalls: the calls it opens are held to their tools' parameters, where
// kiln can, and a JSON response format constrains the whole reply); a required call (one named tool, or any of them) is enforced: the reply is
// started with the template's own tool-call opening (and the name, when one is named) and the rest
// is generated under a JSON constraint, so it is a call whose arguments fit the tool's schema (see
// src/model/json-constraint.ts for what is checked). The opening is found by rendering a call with
// the template; a template whose calls kiln cannot find that way cannot be forced, and says so.
import { randomUUID } from "node:crypto";
import type { LoadedModel } from "../model/load.js";
import type { ChatMessage, ChatTokenizer } from "../model/tokenizer.js";
import { constrainOnceOpened, constrainToJson, JsonMatcher, JsonSchemaError, schemaGaps, tokenTexts, type JsonSchema } from "../model/json-constraint.js";
import { describeGaps, ResponseFormatError } from "./response-format.js";

/** An OpenAI-format function definition, the shape Hugging Face chat templates take as `tools`. */
export interface KilnToolSpec {
  type: "function";
  /** strict: the arguments must fit `parameters` exactly (see checkStrictTools and autoCalls) */
  function: { name: string; description?: string; parameters: Record<string, unknown>; strict?: boolean };
}

/** A tool call read from a reply (the shape of LangChain's ToolCall). */
export interface ParsedToolCall {
  type: "tool_call";
  id: string;
  name: string;
  args: Record<string, unknown>;
}

export const TOOL_CALL_OPEN = "<tool_call>";
export const TOOL_CALL_CLOSE = "</tool_call>";

export function newToolCallId(): string {
  return `call_${randomUUID().replace(/-/g, "").slice(0, 24)}`;
}

// --- the plain-text protocol ---

/** The system section of the plain-text tool protocol (for templates without tool support). */
export function renderToolProtocol(tools: KilnToolSpec[]): string {
  const lines = tools.map((t) => JSON.stringify({ name: t.function.name, description: t.function.description ?? "", parameters: t.function.parameters }));
  return [
    "# Tools",
    "You can call these tools (JSON schemas):",
    ...lines,
    "To call a tool, reply with one block per call:",
    `${TOOL_CALL_OPEN}{"name": "<tool name>", "arguments": {<arguments as JSON>}}${TOOL_CALL_CLOSE}`,
    "Results come back in <tool_response> blocks. If no tool is needed, answer directly.",
  ].join("\n");
}

function callBlock(name: string, args: Record<string, unknown>): string {
  return `${TOOL_CALL_OPEN}${JSON.stringify({ name, arguments: args })}${TOOL_CALL_CLOSE}`;
}

/**
 * Messages for a template without tool support: tool calls become `<tool_call>` text in the
 * assistant turn, tool results become a user turn of `<tool_response>` blocks (consecutive ones
 * merged), and `tools`, when given, are listed in the (first) system message.
 */
export function toPlainMessages(messages: ChatMessage[], tools: KilnToolSpec[] = []): ChatMessage[] {
  const out: ChatMessage[] = [];
  let responses: string[] = [];
  const flush = () => {
    if (responses.length) out.push({ role: "user", content: responses.join("\n") });
    responses = [];
  };
  for (const m of messages) {
    if (m.role === "tool") {
      let content: unknown = m.content;
      try {
        content = JSON.parse(m.content); // a JSON result stays JSON, not a string of escaped JSON
      } catch {
        // plain text
      }
      responses.push(`<tool_response>\n${JSON.stringify({ ...(m.name ? { name: m.name } : {}), content })}\n</tool_response>`);
      continue;
    }
    flush();
    const calls = m.tool_calls ?? [];
    const content = calls.length ? [m.content, ...calls.map((c) => callBlock(c.function.name, c.function.arguments))].filter(Boolean).join("\n") : m.content;
    out.push({ role: m.role, content });
  }
  flush();
  if (tools.length) {
    const protocol = renderToolProtocol(tools);
    if (out[0]?.role === "system") out[0] = { role: "system", content: out[0].content ? `${out[0].content}\n\n${protocol}` : protocol };
    else out.unshift({ role: "system", content: protocol });
  }
  return out;
}

/** A conversation as it is put to the model: its template with tools, or plain messages. */
export interface ToolPrompt {
  messages: ChatMessage[];
  /** the tool specs, when the model's own template renders them */
  tools?: KilnToolSpec[];
  /** text the reply starts with (a required call's opening) */
  prefill?: string;
}

/** `messages` may hold tool calls (assistant) and tool results (role "tool"). */
export function toolPrompt(tokenizer: ChatTokenizer, messages: ChatMessage[], tools: KilnToolSpec[]): ToolPrompt {
  if (tools.length && tokenizer.supportsTools) return { messages, tools };
  return { messages: toPlainMessages(messages, tools) };
}

// --- reading calls from a reply ---

function parseCallJson(body: string): { name: string; args: Record<string, unknown> } | null {
  let v: unknown;
  try {
    v = JSON.parse(body.trim());
  } catch {
    return null;
  }
  if (!v || typeof v !== "object" || Array.isArray(v)) return null;
  const o = v as Record<string, unknown>;
  if (typeof o.name !== "string" || !o.name) return null;
  let args = o.arguments ?? o.parameters ?? {};
  if (typeof args === "string") {
    try {
      args = JSON.parse(args);
    } catch {
      return null;
    }
  }
  if (!args || typeof args !== "object" || Array.isArray(args)) return null;
  return { name: o.name, args: args as Record<string, unknown> };
}

export interface ParsedToolCalls {
  /** the text with well-formed blocks removed; the whole text, unchanged, when none parsed */
  content: string;
  toolCalls: ParsedToolCall[];
}

/**
 * A whole reply that is one bare JSON call, as Llama 3.x tool templates have the model write it:
 * `{"name": ..., "parameters": {...}}` (or "arguments"; Llama 3.1 sometimes adds `"type":
 * "function"`), of a tool in `names`. Nothing else is: an object with other keys, or naming
 * another tool, is an ordinary JSON answer.
 */
function bareCall(text: string, names: readonly string[]): { name: string; args: Record<string, unknown> } | null {
  const body = text.trim();
  if (!body.startsWith("{")) return null;
  const call = parseCallJson(body);
  if (!call || !names.includes(call.name)) return null;
  const o = JSON.parse(body) as Record<string, unknown>;
  const keys = Object.keys(o);
  const argsKeys = keys.filter((k) => k === "parameters" || k === "arguments");
  if (argsKeys.length !== 1 || typeof o[argsKeys[0]!] !== "object") return null;
  if (!keys.every((k) => k === "name" || k === argsKeys[0] || (k === "type" && o.type === "function"))) return null;
  return call;
}

/**
 * Tool calls in the Hermes/Qwen format: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
 * one block per call (a last block left unclosed at the end of the output is accepted too).
 * Malformed blocks stay in the content as plain text; when no block parses, the content is the
 * text unchanged. Otherwise the content is the text before the first block (trailing space
 * dropped) and whatever is left after the blocks, joined by a newline. With `bare` (the tools'
 * names, where the template writes calls as bare JSON: see autoCalls), a reply without blocks
 * that is wholly one call of those tools (see bareCall) is that call, with no content.
 */
export function parseToolCalls(text: string, bare?: readonly string[]): ParsedToolCalls {
  const at = text.indexOf(TOOL_CALL_OPEN);
  if (at < 0) {
    const call = bare ? bareCall(text, bare) : null;
    return call ? { content: "", toolCalls: [{ type: "tool_call", id: newToolCallId(), name: call.name, args: call.args }] } : { content: text, toolCalls: [] };
  }
  const before = text.slice(0, at).trimEnd();
  const tail = text.slice(before.length);
  const toolCalls: ParsedToolCall[] = [];
  let rest = "";
  let pos = 0;
  while (pos < tail.length) {
    const open = tail.indexOf(TOOL_CALL_OPEN, pos);
    if (open < 0) break;
    const close = tail.indexOf(TOOL_CALL_CLOSE, open + TOOL_CALL_OPEN.length);
    const end = close < 0 ? tail.length : close + TOOL_CALL_CLOSE.length;
    const body = tail.slice(open + TOOL_CALL_OPEN.length, close < 0 ? tail.length : close);
    const call = parseCallJson(body);
    rest += tail.slice(pos, open);
    if (call) toolCalls.push({ type: "tool_call", id: newToolCallId(), name: call.name, args: call.args });
    else rest += tail.slice(open, end);
    pos = end;
  }
  rest += tail.slice(pos);
  if (!toolCalls.length) return { content: text, toolCalls: [] };
  const left = rest.trim();
  return { content: before && left ? `${before}\n${left}` : before + left, toolCalls };
}

/**
 * A reply streamed while tools are bound: text from the first `<tool_call>` on (and the space
 * before it) is held back until the end, so no raw tool-call markup is shown when it parses.
 * With `bare` (as parseToolCalls takes it), a reply that starts with "{" is held back whole: it
 * may be a bare JSON call.
 */
export class ToolCallStream {
  private held = "";
  private full = "";
  private inCall = false;

  constructor(private readonly bare?: readonly string[]) {}

  /** Adds generated text; returns the part that can be shown now. */
  push(text: string): string {
    this.full += text;
    this.held += text;
    if (this.bare && this.full.trimStart().startsWith("{")) this.inCall = true;
    if (this.inCall) return "";
    const at = this.held.indexOf(TOOL_CALL_OPEN);
    let safe: number;
    if (at >= 0) {
      this.inCall = true;
      safe = this.held.slice(0, at).trimEnd().length;
    } else {
      safe = this.held.length;
      for (let k = Math.min(TOOL_CALL_OPEN.length - 1, this.held.length); k > 0; k--) {
        if (this.held.endsWith(TOOL_CALL_OPEN.slice(0, k))) {
          safe = this.held.length - k;
          break;
        }
      }
      while (safe > 0 && /\s/.test(this.held[safe - 1]!)) safe--;
    }
    const shown = this.held.slice(0, safe);
    this.held = this.held.slice(safe);
    return shown;
  }

  /** At the end: the calls in the whole reply, and the text still to show (all of it held back when none parsed). */
  finish(): { rest: string; toolCalls: ParsedToolCall[] } {
    if (!this.inCall) return { rest: this.held, toolCalls: [] };
    const parsed = parseToolCalls(this.full, this.bare);
    if (!parsed.toolCalls.length) return { rest: this.held, toolCalls: [] };
    const shown = this.full.length - this.held.length;
    return { rest: parsed.content.slice(shown), toolCalls: parsed.toolCalls };
  }
}

// --- tool_choice ---

/** Which calls a reply may or must make. */
export type ToolChoice = { mode: "none" } | { mode: "auto" } | { mode: "required"; names: string[] };

/** A tool_choice that cannot be honoured on this model or with these tools. */
export class ToolChoiceError extends Error {
  override name = "ToolChoiceError";
}

/** How a template writes a call: `open`, then a JSON object `nameHead` + name + `argsHead` + arguments + `close`. */
export interface CallFormat {
  open: string;
  nameHead: string;
  argsHead: string;
  /** after the arguments: the end of the call's object, and of its block where it has one (`}\n</tool_call>`) */
  close: string;
}

const PROBE = { id: "kilnprobe", name: "kiln_probe_tool", args: { kiln_probe_arg: "kiln_probe_value" } };

/** The balanced JSON object starting at `start`, parsed, with the index after it; null if none. */
function jsonObjectAt(text: string, start: number): { value: Record<string, unknown>; end: number } | null {
  let depth = 0;
  let inString = false;
  for (let i = start; i < text.length; i++) {
    const ch = text[i];
    if (inString) {
      if (ch === "\\") i++;
      else if (ch === '"') inString = false;
    } else if (ch === '"') inString = true;
    else if (ch === "{") depth++;
    else if (ch === "}" && --depth === 0) {
      try {
        const value: unknown = JSON.parse(text.slice(start, i + 1));
        return value && typeof value === "object" && !Array.isArray(value) ? { value: value as Record<string, unknown>, end: i + 1 } : null;
      } catch {
        return null;
      }
    }
  }
  return null;
}

/**
 * How this prompt's template writes a tool call, found by rendering one: the assistant turn that
 * holds a probe call, after the generation prompt. Returns why not when the call is not a JSON
 * object with the name before the arguments (Llama 3's bare JSON, Hermes/Qwen `<tool_call>`
 * blocks and kiln's plain protocol all are; pythonic or custom-token formats are not).
 */
export function callFormat(tokenizer: ChatTokenizer, prompt: ToolPrompt): CallFormat | string {
  const extra = prompt.tools ? { tools: prompt.tools } : {};
  const probe: ChatMessage = { role: "assistant", content: "", tool_calls: [{ id: PROBE.id, type: "function", function: { name: PROBE.name, arguments: PROBE.args } }] };
  let base: string;
  let withCall: string;
  try {
    base = tokenizer.renderChat(prompt.messages, true, extra);
    const turn = prompt.tools ? probe : toPlainMessages([probe])[0]!;
    withCall = tokenizer.renderChat([...prompt.messages, turn], false, extra);
  } catch (err) {
    return `its chat template fails on a tool call (${(err as Error).message})`;
  }
  if (!withCall.startsWith(base)) return "its chat template writes an assistant turn with a tool call that does not begin with its generation prompt";
  const turn = withCall.slice(base.length);
  const at = turn.indexOf(PROBE.name);
  if (at < 0) return "its chat template does not write the called tool's name";
  for (let start = turn.lastIndexOf("{", at); start >= 0; start = start > 0 ? turn.lastIndexOf("{", start - 1) : -1) {
    const obj = jsonObjectAt(turn, start);
    if (!obj || obj.end <= at) continue;
    const argsKey = Object.keys(obj.value).find((k) => JSON.stringify(obj.value[k]) === JSON.stringify(PROBE.args));
    if (!argsKey || !Object.values(obj.value).includes(PROBE.name)) continue;
    const key = argsKey.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    const between = new RegExp(`^("\\s*,\\s*"${key}"\\s*:\\s*)\\{`).exec(turn.slice(at + PROBE.name.length));
    if (!between || !turn.slice(start, at).endsWith('"')) return "its chat template does not write a call's name right before its arguments";
    const argsEnd = jsonObjectAt(turn, at + PROBE.name.length + between[1]!.length)!.end;
    const open = turn.slice(0, start);
    // a block's closing tag ends the call; a bare JSON call ends with its object
    const tag = open.includes(TOOL_CALL_OPEN) ? turn.indexOf(TOOL_CALL_CLOSE, obj.end) : -1;
    const close = turn.slice(argsEnd, tag >= 0 ? tag + TOOL_CALL_CLOSE.length : obj.end);
    return { open, nameHead: turn.slice(start, at), argsHead: between[1]!, close };
  }
  return "its chat template does not write a tool call as a JSON object holding the name and the arguments";
}

/** Why a call's template text (JsonMatcher.writableBy's `part`) cannot be written by the model. */
const callTextProblem = (err: JsonSchemaError) => err.message.replace(/^the text (before|after) the value/, "its text $1 the arguments");

/** A required call: what the reply starts with, the constraint on the rest, and how to read it. */
export interface ForcedCall {
  /** text the reply starts with, rendered after the generation prompt */
  prefill: string;
  /** the token mask for the rest (fresh for each generation) */
  constrain: (logits: Float32Array, tokens: readonly number[]) => void;
  /** The call from the generated text; `complete` false when it stopped before the arguments closed. */
  read(text: string): { complete: true; name: string; args: Record<string, unknown> } | { complete: false; name: string | null; argumentsText: string };
}

/**
 * Plans a required call of one of `names` (all bound `tools` are in the prompt). Throws a
 * ToolChoiceError when the model's template writes calls in a form kiln cannot start, or with
 * text past the prefill that the model's vocabulary cannot write (a name's rest), or when a
 * tool's parameters are a schema the constraint cannot follow (nothing fits it, a $ref cycle that
 * reads nothing, too large, fixed text the model's vocabulary cannot write: see
 * src/model/json-constraint.ts).
 */
export function forceToolCall(model: LoadedModel, prompt: ToolPrompt, tools: KilnToolSpec[], names: string[]): ForcedCall {
  const format = callFormat(model.tokenizer, prompt);
  if (typeof format === "string") {
    throw new ToolChoiceError(`kiln cannot make this model call a tool: ${format}. Use tool_choice "auto" (the model may then answer without a call) or a model whose template writes Hermes-style <tool_call> blocks or JSON calls`);
  }
  const alternatives = names.map((name) => {
    const tool = tools.find((t) => t.function.name === name);
    if (!tool) throw new ToolChoiceError(`tool_choice names "${name}", which is not among the tools (${tools.map((t) => t.function.name).join(", ")})`);
    return { name, head: format.nameHead + JSON.stringify(name).slice(1, -1) + format.argsHead, schema: tool.function.parameters as JsonSchema };
  });
  // The reply starts with what every alternative shares, up to its last non-space character: the
  // model writes the space itself, as its tokenizer would pair it with what follows.
  let shared = alternatives[0]!.head;
  for (const a of alternatives) while (!a.head.startsWith(shared)) shared = shared.slice(0, -1);
  shared = shared.trimEnd();
  const vocab = tokenTexts(model.tokenizer, model.config.vocabSize);
  let matcher: JsonMatcher;
  try {
    matcher = JsonMatcher.afterHeads(alternatives).writableBy(vocab, shared);
  } catch (err) {
    const alternative = err instanceof JsonSchemaError && err.alternative !== undefined ? alternatives[err.alternative] : undefined;
    // the template's text around the arguments: the model's fault, not the request's schema
    if (alternative && (err as JsonSchemaError).part) throw new ToolChoiceError(`kiln cannot make this model call "${alternative.name}": ${callTextProblem(err as JsonSchemaError)}`);
    // whatever the parameters make the matcher throw is the request's fault, never a server error
    const which = alternative ? `the parameters of "${alternative.name}"` : "a tool's parameters";
    throw new ToolChoiceError(`${which} cannot be used to constrain its arguments: ${(err as Error).message}`);
  }
  const start = matcher.feed(shared);
  if (!start) throw new Error("kiln: a forced call's opening does not fit its own constraint");
  return {
    prefill: format.open + shared,
    constrain: constrainToJson(vocab, model.eosTokenIds, start),
    read(text) {
      const call = shared + text;
      const alt = alternatives.find((a) => call.startsWith(a.head));
      const argumentsText = alt ? call.slice(alt.head.length) : "";
      if (alt && start.feed(text)?.complete) return { complete: true, name: alt.name, args: JSON.parse(argumentsText) as Record<string, unknown> };
      return { complete: false, name: alt?.name ?? null, argumentsText };
    },
  };
}

// --- strict tools, and calls in "auto" mode ---

/** A tool whose parameters kiln cannot hold its arguments to (`index`: which of the tools). */
export class ToolSchemaError extends Error {
  override name = "ToolSchemaError";
  constructor(
    message: string,
    readonly index: number,
  ) {
    super(message);
  }
}

/**
 * Checks the strict tools' parameters (OpenAI's `strict: true`: the arguments fit the schema
 * exactly). As with a strict response_format, a schema with keywords kiln's constraint does not
 * enforce (pattern, format, allOf, ...) is refused, naming them, rather than accepted and broken;
 * so is one the constraint cannot use at all, and, as OpenAI requires, one whose root is not an
 * object schema (arguments are an object). OpenAI's other strict rules (every object closed with
 * additionalProperties false, every property required) are not required: they are how OpenAI's
 * engine reads a schema, while kiln's constraint writes only declared keys and keeps optional
 * ones optional, so the arguments fit the schema as written either way.
 */
export function checkStrictTools(tools: KilnToolSpec[]): void {
  tools.forEach((tool, index) => {
    if (!tool.function.strict) return;
    const where = `the parameters of "${tool.function.name}" (strict)`;
    const schema = tool.function.parameters;
    if (schema.type !== "object") throw new ToolSchemaError(`${where} must be an object schema ({"type": "object", ...}) at their root: a call's arguments are an object`, index);
    try {
      JsonMatcher.of(schema);
    } catch (err) {
      if (err instanceof JsonSchemaError) throw new ToolSchemaError(`${where} cannot be used to constrain its arguments: ${err.message}`, index);
      throw err;
    }
    const gaps = schemaGaps(schema);
    if (gaps.length) {
      throw new ToolSchemaError(
        `${where} use what kiln's constrained decoding cannot enforce: ${describeGaps(gaps)}. With strict true kiln refuses them rather than write arguments that might not fit; drop those keywords, or set strict false`,
        index,
      );
    }
  });
}

/** How a reply is read and constrained when the model may call tools (tool_choice "auto"). */
export interface AutoCalls {
  /** the token mask, where strict tools or a JSON response format need one */
  constrain?: (logits: Float32Array, tokens: readonly number[]) => void;
  /** the calls in a whole reply, and its content */
  parse(text: string): ParsedToolCalls;
  /** a holder for a streamed reply (see ToolCallStream) */
  stream(): ToolCallStream;
}

/**
 * Auto mode: the model may answer or call. Calls are read as parseToolCalls reads them; where the
 * template writes calls as bare JSON (a Llama 3.x tool template: its rendered call is a JSON
 * object right after the generation prompt), a reply that is wholly one call of a bound tool is
 * that call. Constrained decoding comes in with:
 *  - tools: once the reply opens a call (the template's opening, `<tool_call>`; for bare JSON
 *    calls, a reply starting with "{"), the rest of the call is held to the template's layout and
 *    to the tool's parameters (as a forced call's are: a non-strict tool's keywords the constraint
 *    does not enforce are left out); the text around calls stays free. A strict tool's schema
 *    kiln cannot use is an error; a non-strict one's holds its arguments to an object;
 *  - a JSON response format (`format`, its schema): the whole reply is either one call (as above)
 *    or the JSON value, so the model may still call a tool and otherwise answers in the format.
 * Throws a ToolSchemaError (strict tools) or a ResponseFormatError (a format) when the
 * template's calls are in a form kiln cannot write.
 */
export function autoCalls(model: LoadedModel, prompt: ToolPrompt, tools: KilnToolSpec[], format?: JsonSchema): AutoCalls {
  const names = tools.map((t) => t.function.name);
  const strict = tools.findIndex((t) => t.function.strict);
  // Non-strict tools alone: their calls are held to what kiln can enforce of their parameters
  // where it can (a small model's call then parses), and left free where it cannot, as OpenAI's
  // strict false promises no more than a best effort.
  const bestEffort = strict < 0 && format === undefined;
  if (bestEffort && !tools.length) return { parse: (text) => parseToolCalls(text), stream: () => new ToolCallStream() };
  const found = callFormat(model.tokenizer, prompt);
  // only a template that renders tools can write bare JSON calls: the plain protocol's are blocks
  const bare = prompt.tools !== undefined && typeof found !== "string" && !found.open.trim() ? names : undefined;
  const reads = { parse: (text: string) => parseToolCalls(text, bare), stream: () => new ToolCallStream(bare) };
  if (typeof found === "string" && bestEffort) return reads;
  if (typeof found === "string") {
    if (format !== undefined) {
      throw new ResponseFormatError(
        `kiln cannot combine response_format with tools the model may choose to call on this model: ${found}, so a reply could not be held to either a call or the format. Use tool_choice "none" for a JSON reply, or "required" (or a named function) for a call`,
      );
    }
    throw new ToolSchemaError(`kiln cannot hold this model's calls to a strict schema: ${found}. Set strict false, or use a model whose template writes Hermes-style <tool_call> blocks or JSON calls`, strict);
  }
  const vocab = tokenTexts(model.tokenizer, model.config.vocabSize);
  // the opening a reply writes to call, and the rest of each call after it
  const trigger = found.open.trim() || "{";
  const lead = found.open.trim() ? found.open.slice(found.open.indexOf(trigger) + trigger.length) : found.open;
  // a non-strict tool whose parameters kiln cannot use at all is held to an object, not refused
  const usable = (t: KilnToolSpec): JsonSchema => {
    if (t.function.strict) return t.function.parameters as JsonSchema;
    try {
      JsonMatcher.afterHeads([{ head: "", schema: t.function.parameters as JsonSchema }]).writableBy(vocab);
      return t.function.parameters as JsonSchema;
    } catch (err) {
      if (err instanceof JsonSchemaError) return { type: "object" };
      throw err;
    }
  };
  const schemas = tools.map(usable);
  const calls = (prefix: string) =>
    tools.map((t, k) => ({ head: prefix + found.nameHead + JSON.stringify(t.function.name).slice(1, -1) + found.argsHead, schema: schemas[k]!, tail: found.close }));
  try {
    if (format !== undefined) {
      const matcher = JsonMatcher.afterHeads([...calls(found.open), { head: "", schema: format }]).writableBy(vocab);
      return { ...reads, constrain: constrainToJson(vocab, model.eosTokenIds, matcher) };
    }
    // a bare call's "{" is the trigger: the rest of its object follows
    const matcher = JsonMatcher.afterHeads(calls(lead).map((c) => (bare ? { ...c, head: c.head.slice(c.head.indexOf("{") + 1) } : c))).writableBy(vocab);
    return { ...reads, constrain: constrainOnceOpened(vocab, model.eosTokenIds, trigger, matcher, { atStart: !!bare, endAfter: !!bare }) };
  } catch (err) {
    if (!(err instanceof JsonSchemaError)) throw err;
    if (bestEffort) return reads;
    // the format is the alternative after the tools' calls
    if (format !== undefined && err.alternative === tools.length) throw new ResponseFormatError(`the schema of response_format cannot be used: ${err.message}`);
    const tool = err.alternative !== undefined ? tools[err.alternative] : undefined;
    if (tool && err.part) {
      const why = `kiln cannot hold this model's calls of "${tool.function.name}": ${callTextProblem(err)}`;
      if (format !== undefined) throw new ResponseFormatError(`response_format cannot be combined with tools on this model: ${why}. Use tool_choice "none" for a JSON reply`);
      throw new ToolSchemaError(`${why}. Set strict false`, err.alternative!);
    }
    const which = tool ? `the parameters of "${tool.function.name}"` : "the tools' parameters together";
    if (format !== undefined) throw new ResponseFormatError(`response_format cannot be combined with these tools: ${which} cannot be used to constrain a call: ${err.message}`);
    throw new ToolSchemaError(`${which} cannot be used to hold calls to strict schemas: ${err.message}`, err.alternative !== undefined && tool ? err.alternative : strict);
  }
}
