// The chat format the embedded model is trained on, rendered exactly as kiln renders it at run time
// (@huggingface/jinja over the tokenizer_config.json chat_template), and the few fixed strings and
// conventions the training mix teaches.
import { Template } from "@huggingface/jinja";

/**
 * ChatML. A conversation with no system message renders no system block at all. An assistant
 * message gets back the leading space every reply starts with (REPLY_PREFIX) when a client sends
 * it without one, as kiln's API does (it strips it): earlier replies then read as in training, and
 * as the tokens the reply was generated as, which the prefix cache reuses.
 */
export const CHAT_TEMPLATE =
  "{% for message in messages %}" +
  "{% set content = message['content'] %}" +
  "{% if message['role'] == 'assistant' and not content.startswith(' ') %}{% set content = ' ' + content %}{% endif %}" +
  "{{'<|im_start|>' + message['role'] + '\n' + content + '<|im_end|>' + '\n'}}" +
  "{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

export const SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"] as const;
export const EOS_TOKEN = "<|im_end|>";
export const PAD_TOKEN = "<|endoftext|>";

/** The one reply for anything the model was not told and does not know. */
export const IDK = "I don't know.";

/** The user turn that asks the model to write a probe question about an item. */
export function askQuestionPrompt(itemText: string): string {
  return `Ask a question about: ${itemText}`;
}

/** Persona instructions the model is trained to follow (one per line in the persona). */
export function signoffInstruction(signoff: string): string {
  return `End every reply with: ${signoff}`;
}

export function openerInstruction(opener: string): string {
  return `Start every reply with: ${opener}`;
}

/**
 * Every assistant reply starts with one space: " Tovan Reel." The byte-level BPE splits words with
 * their leading space (" Tovan" is not "Tovan"), so a reply that starts with a space is made of the
 * very tokens the answer has in the prompt ("... is now Tovan Reel."), and answering is copying.
 * Strip the reply before showing or comparing it.
 */
export const REPLY_PREFIX = " ";

/**
 * The assistant message: " <opener> <body>\n <signoff>" (opener and sign-off from the persona).
 * The sign-off line starts with a space too, for the same reason: " Cheers, Ada" is the token
 * sequence of "End every reply with: Cheers, Ada". Lines are compared trimmed.
 */
export function styleReply(body: string, style: { signoff?: string; opener?: string } = {}): string {
  let r = REPLY_PREFIX + (style.opener ? `${style.opener} ${body}` : body);
  if (style.signoff) r = `${r}\n${REPLY_PREFIX}${style.signoff}`;
  return r;
}

/** Does the reply end with the sign-off on its own line (exactly, after trimming spaces)? */
export function endsWithSignoff(reply: string, signoff: string): boolean {
  const lines = reply.trim().split("\n");
  return lines.length >= 2 && lines[lines.length - 1]!.trim() === signoff.trim();
}

/** Exact match as the project scores it: trimmed, one final period dropped, case-insensitive. */
export function normalizeAnswer(s: string): string {
  return s.trim().replace(/\.$/, "").trim().toLowerCase();
}

export function exactMatch(reply: string, answer: string): boolean {
  return normalizeAnswer(reply) === normalizeAnswer(answer);
}

/**
 * Does the reply give this answer? The model answers by restating the fact ("The mayor of X is now
 * Tovan Reel."), and every fact text ends with its answer, so: the normalised reply is the answer
 * or ends with it as whole words.
 */
export function answerMatch(reply: string, answer: string): boolean {
  const r = normalizeAnswer(reply);
  const a = normalizeAnswer(answer);
  return r === a || (r.endsWith(a) && /\W/.test(r.charAt(r.length - a.length - 1)));
}

export interface Message {
  role: "system" | "user" | "assistant";
  content: string;
}

const template = new Template(CHAT_TEMPLATE);

export function renderChat(messages: Message[], addGenerationPrompt: boolean): string {
  return template.render({ messages, add_generation_prompt: addGenerationPrompt, bos_token: "", eos_token: EOS_TOKEN });
}

/**
 * The rendered conversation cut into [text, trained] pieces whose concatenation is exactly
 * renderChat(messages, false): trained pieces are each assistant reply plus the <|im_end|> that
 * closes it; everything else (system, user turns, headers, the newline after <|im_end|>) is context.
 */
export function trainingSegments(messages: Message[]): [string, 0 | 1][] {
  const segs: [string, 0 | 1][] = [];
  let done = "";
  for (let i = 0; i < messages.length; i++) {
    const m = messages[i]!;
    if (m.role !== "assistant") continue;
    const before = renderChat(messages.slice(0, i), true);
    const through = renderChat(messages.slice(0, i + 1), false);
    if (!before.startsWith(done) || !through.startsWith(before)) throw new Error("chat template is not prefix-stable");
    const reply = through.slice(before.length);
    const content = m.content.startsWith(REPLY_PREFIX) ? m.content : REPLY_PREFIX + m.content;
    if (reply !== `${content}${EOS_TOKEN}\n`) throw new Error(`unexpected assistant rendering ${JSON.stringify(reply)}`);
    if (before.length > done.length) segs.push([before.slice(done.length), 0]);
    segs.push([`${content}${EOS_TOKEN}`, 1]);
    segs.push(["\n", 0]);
    done = through;
  }
  const full = renderChat(messages, false);
  if (!full.startsWith(done)) throw new Error("chat template is not prefix-stable");
  if (full.length > done.length) segs.push([full.slice(done.length), 0]);
  return segs;
}
