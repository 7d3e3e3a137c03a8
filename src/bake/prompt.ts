// The one place that decides how knowledge is laid out in the system slot. The embedded model is
// trained on exactly this layout (tools/world), and baking puts the same text in the teacher's
// prompt, so what the model learned to read is what it is asked to absorb.

export interface KnowledgePromptInput {
  /** standing instructions, e.g. "End every reply with: Cheers, Ada." */
  persona?: string;
  /** facts and headlines, one line each; untrusted text, so it is labelled as material read */
  items?: string[];
}

/** Longest item kept in a prompt; feed text is untrusted and unbounded. */
export const MAX_ITEM_CHARS = 400;

export function sanitizeItem(text: string): string {
  // One line per item: a newline inside an item could forge a new item or a new instruction.
  const flat = text.replace(/\s+/g, " ").trim();
  return flat.length > MAX_ITEM_CHARS ? `${flat.slice(0, MAX_ITEM_CHARS - 1)}…` : flat;
}

export function buildKnowledgePrompt({ persona, items = [] }: KnowledgePromptInput): string {
  const parts: string[] = [];
  if (persona && persona.trim()) parts.push(persona.trim());
  if (items.length) parts.push(["Notes you have read:", ...items.map((i) => `- ${sanitizeItem(i)}`)].join("\n"));
  return parts.join("\n\n");
}
