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

/**
 * C0 and C1 control characters but tab, line feed and carriage return (which sanitizeItem makes
 * spaces): invisible in a prompt, so in an item they could only hide what the agent is told, and
 * a NUL ends the text early for tools that read the ledger or an export as C strings.
 */
export const CONTROL_CHARACTERS = "\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F";
const CONTROL = new RegExp(`[${CONTROL_CHARACTERS}]`);

/**
 * Why a fact told by hand or in chat cannot be an item, or null: past MAX_ITEM_CHARS a bake's
 * prompt would hold only its start, so the ledger would call absorbed what the model never read;
 * a control character is refused rather than dropped, since what was told would not be what is kept.
 * (Feed text is cut to fit and has its control characters taken out as it is read: news is not asked for.)
 */
export function itemTextProblem(text: string): string | null {
  const control = CONTROL.exec(text);
  if (control) {
    const code = `U+${control[0].charCodeAt(0).toString(16).toUpperCase().padStart(4, "0")}`;
    return `a fact cannot hold control characters (${code} at character ${control.index + 1}), which a prompt does not show: remove them`;
  }
  const n = text.replace(/\s+/g, " ").trim().length;
  return n > MAX_ITEM_CHARS ? `a fact is at most ${MAX_ITEM_CHARS} characters, as much as a bake's prompt holds of one (this one has ${n}): split it into shorter facts` : null;
}

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
 * each trajectory is matched to the prompted teacher it was sampled from. Chunks are near-equal
 * in size, so no item gets a larger share of the trajectories. A lesson's questions run probe by
 * probe (every item's first question, then the open questions, then every item's second...), so
 * however few trajectories a lesson gets, they spread over all its items.
 */
export function knowledgeLessons(o: { persona?: string; items: LessonItem[]; chunkItems: number; openQuestions?: string[] }): Lesson[] {
  const n = o.items.length;
  const lessons = o.chunkItems > 0 ? Math.max(1, Math.ceil(n / o.chunkItems)) : 1;
  const chunks: LessonItem[][] = [];
  for (let l = 0, start = 0; l < lessons; l++) {
    const size = Math.floor(n / lessons) + (l < n % lessons ? 1 : 0);
    chunks.push(o.items.slice(start, start + size));
    start += size;
  }
  return chunks.map((chunk) => {
    const rounds = Math.max(0, ...chunk.map((i) => i.questions.length));
    const questions: string[] = [];
    for (let k = 0; k < Math.max(rounds, 1); k++) {
      questions.push(...chunk.flatMap((i) => (i.questions[k] !== undefined ? [i.questions[k]!] : [])));
      if (k === 0) questions.push(...(o.openQuestions ?? []));
    }
    return { systemPrompt: buildKnowledgePrompt({ persona: o.persona, items: chunk.map((i) => i.text) }), questions: [...new Set(questions)] };
  });
}
