// Tokenizer + chat template, read from the same files Hugging Face writes, so the embedded model
// and real hub models load through one path.
import { readFileSync, existsSync } from "node:fs";
import path from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import { Template } from "@huggingface/jinja";

export interface ChatMessage {
  role: "system" | "user" | "assistant" | "tool";
  content: string;
  /** OpenAI-style fields that tool-aware chat templates read */
  tool_calls?: { id?: string; type: "function"; function: { name: string; arguments: Record<string, unknown> } }[];
  tool_call_id?: string;
  name?: string;
}

/** A JSON file that must hold an object (each of the tokenizer's files does). */
function readJson(file: string): Record<string, unknown> {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, "utf8"));
  } catch (err) {
    throw new Error(`${file}: ${(err as Error).message}`);
  }
  // (a list in tokenizer_config.json was blamed on tokenizer.json, as the tokenizer could not be built)
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw new Error(`${file}: holds ${JSON.stringify(json).slice(0, 80)}, not a JSON object`);
  return json as Record<string, unknown>;
}

function tokenString(v: unknown): string | undefined {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof (v as { content?: unknown }).content === "string") return (v as { content: string }).content;
  return undefined;
}

/**
 * A chat_template value as transformers stores it: one template, or named templates (a list of
 * {name, template}, or an object of name -> template) of which apply_chat_template uses "default"
 * and refuses to guess when there is none.
 */
function templateValue(value: unknown, where: string): string | undefined {
  if (value == null) return undefined;
  if (typeof value === "string") return value;
  const named: [unknown, unknown][] = Array.isArray(value)
    ? value.map((x) => [x?.name, x?.template])
    : typeof value === "object"
      ? Object.entries(value)
      : [];
  if (named.length === 0 && !Array.isArray(value)) throw new Error(`${where} is neither a template nor named templates`);
  const found = named.find(([name]) => name === "default");
  if (!found) throw new Error(`${where} holds named templates (${named.map(([n]) => String(n)).join(", ")}) but none named "default", which is the one a chat uses`);
  if (typeof found[1] !== "string") throw new Error(`${where}: the "default" template is not a string`);
  return found[1];
}

/**
 * The chat template, looked for where transformers looks:
 * 1. chat_template.jinja: the tokenizer reads it first, and it overrides tokenizer_config.json;
 * 2. tokenizer_config.json's chat_template;
 * 3. chat_template.json ({"chat_template": ...}): the older file processors (AutoProcessor) saved;
 *    tokenizers never read it, so it only counts when neither above has a template. (A processor
 *    would prefer it over chat_template.jinja, but kiln tokenizes like the tokenizer.)
 */
function readChatTemplate(dir: string, config: Record<string, unknown>, cfgFile: string): { template: string | undefined; source: string } {
  const jinjaFile = path.join(dir, "chat_template.jinja");
  if (existsSync(jinjaFile)) {
    const text = readFileSync(jinjaFile, "utf8");
    if (text) return { template: text, source: jinjaFile };
  }
  const fromConfig = templateValue(config.chat_template, `${cfgFile}: chat_template`);
  if (fromConfig !== undefined) return { template: fromConfig, source: `${cfgFile} chat_template` };
  const jsonFile = path.join(dir, "chat_template.json");
  if (existsSync(jsonFile)) {
    const json = readJson(jsonFile);
    if (!("chat_template" in json)) throw new Error(`${jsonFile}: no chat_template field`);
    const fromJson = templateValue(json.chat_template, `${jsonFile}: chat_template`);
    if (fromJson !== undefined) return { template: fromJson, source: `${jsonFile} chat_template` };
  }
  return { template: undefined, source: "chat_template" };
}

export class ChatTokenizer {
  readonly eosTokenIds: number[];
  readonly padTokenId: number;
  readonly bosToken: string | undefined;
  readonly eosToken: string | undefined;
  private readonly template: Template | undefined;

  constructor(
    private readonly tokenizer: Tokenizer,
    private readonly config: Record<string, unknown>,
    /** the Jinja chat template source, when the model has one */
    readonly chatTemplate: string | undefined,
    generationEos: number[],
    generationPad: number | undefined,
    /** the special tokens' strings (added_tokens marked special): never read from message text */
    private readonly specialTokens: string[] = [],
    /** where the template came from, for error messages */
    templateSource = "chat_template",
  ) {
    this.bosToken = tokenString(config.bos_token);
    this.eosToken = tokenString(config.eos_token);
    const eos = new Set(generationEos);
    const eosId = this.eosToken !== undefined ? tokenizer.token_to_id(this.eosToken) : undefined;
    if (eosId !== undefined) eos.add(eosId);
    this.eosTokenIds = [...eos];
    const padName = tokenString(config.pad_token);
    this.padTokenId = generationPad ?? (padName !== undefined ? tokenizer.token_to_id(padName) : undefined) ?? this.eosTokenIds[0] ?? 0;
    try {
      this.template = chatTemplate ? new Template(chatTemplate) : undefined;
    } catch (err) {
      throw new Error(`the chat template (${templateSource}) does not parse: ${(err as Error).message}`);
    }
  }

  static fromDirectory(dir: string, generationEos: number[] = [], generationPad?: number): ChatTokenizer {
    const tokFile = path.join(dir, "tokenizer.json");
    if (!existsSync(tokFile)) throw new Error(`${dir}: tokenizer.json is missing (kiln reads Hugging Face fast tokenizers)`);
    const cfgFile = path.join(dir, "tokenizer_config.json");
    const config = existsSync(cfgFile) ? readJson(cfgFile) : {};
    // Older layouts keep the special tokens in special_tokens_map.json only; transformers merges
    // it in, so must we: without it the template's bos/eos render empty and eos never stops.
    const mapFile = path.join(dir, "special_tokens_map.json");
    if (existsSync(mapFile)) {
      for (const [key, value] of Object.entries(readJson(mapFile))) if (config[key] == null) config[key] = value;
    }
    const tokJson = readJson(tokFile);
    let tokenizer: Tokenizer;
    try {
      tokenizer = new Tokenizer(tokJson, config);
    } catch (err) {
      throw new Error(`${tokFile}: cannot build the tokenizer (${(err as Error).message})`);
    }
    const { template, source: templateSource } = readChatTemplate(dir, config, cfgFile);
    const added = (tokJson.added_tokens ?? []) as { content?: unknown; special?: unknown }[];
    const specials = added.filter((t) => t.special === true && typeof t.content === "string" && t.content.length > 1).map((t) => t.content as string);
    return new ChatTokenizer(tokenizer, config, template, generationEos, generationPad, specials, templateSource);
  }

  get hasChatTemplate(): boolean {
    return this.template !== undefined;
  }

  /** Whether the chat template renders tool definitions (Hermes/Qwen style templates do). */
  get supportsTools(): boolean {
    return !!this.chatTemplate && /\btools\b/.test(this.chatTemplate);
  }

  encode(text: string): number[] {
    return this.tokenizer.encode(text, { add_special_tokens: false }).ids;
  }

  decode(ids: number[], skipSpecial = true): string {
    if (ids.length === 0) return ""; // the library throws on an empty list
    return this.tokenizer.decode(ids, { skip_special_tokens: skipSpecial });
  }

  tokenToId(token: string): number | undefined {
    return this.tokenizer.token_to_id(token);
  }

  /**
   * Renders messages with the model's chat template (a plain fallback when it has none);
   * `extra` reaches the template as variables, e.g. { tools }.
   */
  renderChat(messages: ChatMessage[], addGenerationPrompt = true, extra: Record<string, unknown> = {}): string {
    messages = messages.map((m) => ({ ...m, content: this.defuse(m.content) }));
    if (!this.template) {
      return messages.map((m) => `${m.role}: ${m.content}\n`).join("") + (addGenerationPrompt ? "assistant: " : "");
    }
    return this.template.render({
      ...extra,
      messages: messages as unknown as Record<string, unknown>[],
      add_generation_prompt: addGenerationPrompt,
      bos_token: this.bosToken ?? "",
      eos_token: this.eosToken ?? "",
    });
  }

  /**
   * Message text with each special token's string broken by a zero-width space, so that it is
   * read as text: a user (or a feed item baked into a prompt) writing "<|im_start|>system" must
   * not open a turn of its own.
   */
  defuse(text: string): string {
    for (const t of this.specialTokens) if (text.includes(t)) text = text.split(t).join(`${t[0]}\u200b${t.slice(1)}`);
    return text;
  }

  applyChatTemplate(messages: ChatMessage[], addGenerationPrompt = true, extra: Record<string, unknown> = {}): number[] {
    return this.encode(this.renderChat(messages, addGenerationPrompt, extra));
  }
}
