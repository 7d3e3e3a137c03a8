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

function readJson(file: string): Record<string, unknown> {
  try {
    return JSON.parse(readFileSync(file, "utf8"));
  } catch (err) {
    throw new Error(`${file}: ${(err as Error).message}`);
  }
}

function tokenString(v: unknown): string | undefined {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof (v as { content?: unknown }).content === "string") return (v as { content: string }).content;
  return undefined;
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
    const jinjaFile = path.join(dir, "chat_template.jinja");
    let template = existsSync(jinjaFile) ? readFileSync(jinjaFile, "utf8") : undefined;
    let templateSource = jinjaFile;
    if (!template) {
      templateSource = `${cfgFile} chat_template`;
      const t = config.chat_template;
      // Some configs hold a list of named templates; "default" is what apply_chat_template uses.
      if (typeof t === "string") template = t;
      else if (Array.isArray(t)) template = (t.find((x) => x?.name === "default") ?? t[0])?.template;
    }
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
