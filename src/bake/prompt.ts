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

/** One teacher prompt and the questions its trajectories are sampled for. */
export interface Lesson {
  systemPrompt: string;
  questions: string[];
}

export interface LessonItem {
  text: string;
  /** questions this item answers (its probes' questions) */
  questions: string[];
}

/**
 * Splits the knowledge of one bake into teacher prompts of at most `chunkItems` items each (0 =
 * all in one prompt), every one with the persona. A model reads a few lines far more reliably
 * than twenty (kiln-mini: docs/default-model.md), and the KL objective does not need one prompt:
 * each trajectory is matched to the prompted teacher it was sampled from. Each lesson's questions
 * are its items' questions plus the open questions, which make the teacher recite its own items.
 */
export function knowledgeLessons(o: { persona?: string; items: LessonItem[]; chunkItems: number; openQuestions?: string[] }): Lesson[] {
  const size = o.chunkItems > 0 ? o.chunkItems : Math.max(o.items.length, 1);
  const chunks: LessonItem[][] = [];
  for (let i = 0; i < o.items.length; i += size) chunks.push(o.items.slice(i, i + size));
  if (!chunks.length) chunks.push([]); // a persona alone is one lesson
  return chunks.map((chunk) => ({
    systemPrompt: buildKnowledgePrompt({ persona: o.persona, items: chunk.map((i) => i.text) }),
    questions: [...new Set([...chunk.flatMap((i) => i.questions), ...(o.openQuestions ?? [])])],
  }));
}
