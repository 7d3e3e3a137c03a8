// Trajectories for baking: replies sampled from the prompted teacher (or, for the on-policy
// objective, from the student without the prompt), each paired with the student's view of the same
// turn (no system message), plus the teacher's cached distributions.
import { tf } from "../tensor/backend.js";
import type { AdapterHook } from "../model/decoder.js";
import { generate } from "../model/generate.js";
import { seededRandom } from "../model/sampling.js";
import type { LoadedModel } from "../model/load.js";
import type { ChatMessage } from "../model/tokenizer.js";
import { teacherTargets, type KlMode, type TeacherTargets } from "./kl.js";
import type { Lesson } from "./prompt.js";

export interface Trajectory {
  question: string;
  /** earlier turns of the conversation (a later-turn trajectory), the same for teacher and student */
  history?: ChatMessage[];
  /** chat template with system = the prompt, the user question, the assistant header */
  teacherPrompt: number[];
  /** the same without a system message: what the baked model will see */
  studentPrompt: number[];
  /** sampled reply, ending with the end-of-turn id when its sampler stopped by itself */
  reply: number[];
  targets?: TeacherTargets;
}

export function teacherMessages(systemPrompt: string, question: string, history: ChatMessage[] = []): ChatMessage[] {
  return [{ role: "system", content: systemPrompt }, ...history, { role: "user", content: question }];
}

export function studentMessages(question: string, history: ChatMessage[] = []): ChatMessage[] {
  return [...history, { role: "user", content: question }];
}

export interface SampleOptions {
  /** teacher prompts and their questions; trajectories are spread over them in turn */
  lessons: Lesson[];
  count: number;
  temperature: number;
  maxReplyTokens: number;
  batchSize: number;
  seed: number;
  /** the teacher's weights: the live adapter for rolling bakes, none for the base model */
  teacherAdapter?: AdapterHook;
  /**
   * Who writes the replies (and a later turn's earlier replies): the teacher with the prompt
   * (default), or the student, without it, on these weights (the on-policy objective).
   */
  sampleFrom?: { student: AdapterHook | undefined };
  /**
   * Share of trajectories asked as a later turn of a conversation: one or two earlier questions,
   * with the teacher's replies to them, come first. A model baked on first turns only answers
   * a baked question asked later in a chat from the earlier replies instead (kiln-mini: "Who is
   * the mayor of Gulldale?" after an answer about Saltwell's mayor gave Saltwell's).
   */
  laterTurns?: number;
  /** the model's positions: a conversation that would not leave room for the reply is asked as a first turn */
  maxPositions?: number;
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
}

/**
 * Refuses a prompt and question that leave no room for a reply in the model's context. They
 * failed the first sampling batch saying only "prompt (2120 tokens) + maxTokens (48) exceeds the
 * model's 512 positions", naming neither.
 */
export function checkLessonsFit(model: LoadedModel, lessons: Lesson[], maxReplyTokens: number, maxPositions: number): void {
  for (const lesson of lessons) {
    for (const question of lesson.questions) {
      const n = model.tokenizer.applyChatTemplate(teacherMessages(lesson.systemPrompt, question, [])).length;
      if (n + maxReplyTokens > maxPositions) {
        const shown = question.length > 60 ? `${question.slice(0, 60)}...` : question;
        throw new Error(`the prompt to bake and the question ${JSON.stringify(shown)} take ${n} tokens, and a reply up to ${maxReplyTokens} more: over the model's ${maxPositions} positions; shorten the prompt or the question, or lower maxReplyTokens`);
      }
    }
  }
}

export async function sampleTrajectories(model: LoadedModel, o: SampleOptions): Promise<Trajectory[]> {
  if (!o.lessons.length || o.lessons.some((l) => l.questions.length === 0)) {
    throw new Error("baking needs at least one question to sample replies for, in every teacher prompt");
  }
  if (o.count < o.lessons.length) {
    throw new Error(`${o.count} trajectories cannot cover ${o.lessons.length} teacher prompts: raise trajectories (--trajectories), or an agent's bake.chunkItems`);
  }
  // Trajectory n: lesson n mod L, that lesson's questions in turn.
  const pick = (n: number) => {
    const lesson = o.lessons[n % o.lessons.length]!;
    return { lesson, question: lesson.questions[Math.floor(n / o.lessons.length) % lesson.questions.length]! };
  };
  // First turns first; the later turns' histories are drawn from them (any lesson: a user asks
  // about one thing, then another), with the replies the sampler gave.
  const later = Math.min(Math.floor(o.count * (o.laterTurns ?? 0)), o.count - o.lessons.length);
  const first = o.count - later;
  const out: Trajectory[] = [];
  const turns: { question: string; reply: string }[] = [];
  const random = seededRandom(o.seed ^ 0x5bd1e995);
  const room = (o.maxPositions ?? Infinity) - o.maxReplyTokens;
  if (o.maxPositions !== undefined) checkLessonsFit(model, o.lessons, o.maxReplyTokens, o.maxPositions);
  for (let start = 0; start < o.count; start += o.batchSize) {
    if (o.signal?.aborted) throw new Error("bake aborted");
    const picked = Array.from({ length: Math.min(o.batchSize, o.count - start) }, (_, i) => {
      const n = start + i;
      const { lesson, question } = pick(n < first ? n : n - first);
      const others = n < first ? [] : turns.filter((t) => t.question !== question);
      const earlier = others.length ? Array.from({ length: 1 + Math.floor(random() * 2) }, () => others[Math.floor(random() * others.length)]!) : [];
      const history = earlier.flatMap((t): ChatMessage[] => [
        { role: "user", content: t.question },
        { role: "assistant", content: t.reply },
      ]);
      // the teacher's prompt is the longer: it decides whether the conversation leaves room
      const turn = (h: ChatMessage[]) => ({
        question,
        history: h,
        teacherPrompt: model.tokenizer.applyChatTemplate(teacherMessages(lesson.systemPrompt, question, h)),
        studentPrompt: model.tokenizer.applyChatTemplate(studentMessages(question, h)),
      });
      const asked = turn(history);
      return asked.teacherPrompt.length <= room || !history.length ? asked : turn([]);
    });
    const results = await generate(
      model,
      picked.map((p) => (o.sampleFrom ? p.studentPrompt : p.teacherPrompt)),
      { maxTokens: o.maxReplyTokens, temperature: o.temperature, seed: o.seed + start, adapter: o.sampleFrom ? o.sampleFrom.student : o.teacherAdapter, signal: o.signal },
    );
    results.forEach((r, i) => {
      const p = picked[i]!;
      out.push({
        question: p.question,
        ...(p.history.length ? { history: p.history } : {}),
        teacherPrompt: p.teacherPrompt,
        studentPrompt: p.studentPrompt,
        reply: r.stopToken !== undefined ? [...r.tokens, r.stopToken] : r.tokens,
      });
      // a first turn that stopped by itself can be the history of a later one
      if (!p.history.length && r.stopToken !== undefined && r.text.trim()) turns.push({ question: p.question, reply: r.text });
    });
    o.onProgress?.(out.length, o.count);
  }
  return out.filter((t) => t.reply.length > 0);
}

/**
 * Left-pads prompts so every reply starts in the same column, then right-pads replies. The
 * logits from column P-1 on predict reply tokens 0..R-1, so the first reply token's
 * distribution P(y1 | prompt) is part of the loss.
 */
export function alignBatch(prompts: number[][], replies: number[][], pad: number) {
  const P = Math.max(...prompts.map((p) => p.length));
  const R = Math.max(...replies.map((r) => r.length));
  const ids: number[][] = [];
  const mask: number[][] = [];
  prompts.forEach((p, b) => {
    const reply = replies[b]!.slice(0, R - 1); // the last reply token predicts nothing we score
    const fill = R - 1 - reply.length;
    ids.push([...Array(P - p.length).fill(pad), ...p, ...reply, ...Array(fill).fill(pad)]);
    mask.push([...Array(P - p.length).fill(0), ...p.map(() => 1), ...reply.map(() => 1), ...Array(fill).fill(0)]);
  });
  return { ids, mask, logitsFrom: P - 1, R, lengths: replies.map((r) => r.length) };
}

/** Runs the prompted teacher once over every trajectory and caches its distributions. */
export async function computeTeacherTargets(
  model: LoadedModel,
  trajectories: Trajectory[],
  mode: KlMode,
  batchSize: number,
  teacherAdapter?: AdapterHook,
  onProgress?: (done: number, total: number) => void,
): Promise<void> {
  for (let start = 0; start < trajectories.length; start += batchSize) {
    const batch = trajectories.slice(start, start + batchSize);
    const a = alignBatch(batch.map((t) => t.teacherPrompt), batch.map((t) => t.reply), model.tokenizer.padTokenId);
    const logits = tf.tidy(() => model.decoder.forward({ ids: a.ids, mask: a.mask }, { adapter: teacherAdapter, logitsFrom: a.logitsFrom })); // [B, R, V]
    for (const [b, t] of batch.entries()) {
      const row = tf.tidy(() => logits.slice([b, 0, 0], [1, a.lengths[b]!, model.config.vocabSize]).reshape([a.lengths[b]!, model.config.vocabSize]) as tf.Tensor2D); // [R_b, V]
      t.targets = await teacherTargets(row, mode);
      row.dispose();
    }
    logits.dispose();
    onProgress?.(Math.min(start + batchSize, trajectories.length), trajectories.length);
  }
}
