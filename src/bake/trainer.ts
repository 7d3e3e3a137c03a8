// Prompt baking: find LoRA weights so the model without the prompt behaves like the model with it.
//
//   sample replies from the prompted teacher -> cache the teacher's distributions over them
//   -> train the student adapter (no prompt) on KL(teacher || student) with Adam
//   -> keep the adapter with the best validation KL per token
//
// Variants: half-baking (stop once a fraction of the KL drop is reached) and prompt pursuit
// (several rounds, each teacher the previous round's baked model with the prompt).
//
// The on-policy objective (objective: "on-policy"; OPCD/SDFT-style) trains on replies the student
// samples itself, without the prompt, scored by the prompted teacher, with the reverse
// KL(student || teacher): the student is corrected where it actually goes, not pulled towards
// every reply the teacher might give. The student moves as it trains, so its replies are sampled
// again at the start of every epoch (an epoch is the unit the validation, early stop and
// half-bake already work in; sampling per step would cost a generation pass per step on CPU).
// Validation stays the forward KL on the teacher's replies, for both objectives: the best
// adapter, early stop, half-bake and the reported KL/token then mean the same whichever trained.
import { tf } from "../tensor/backend.js";
import { isLinearWeight, type AdapterHook, type Decoder } from "../model/decoder.js";
import type { LoadedModel } from "../model/load.js";
import { yieldToEventLoop } from "../model/generate.js";
import { AdapterStack, DEFAULT_LORA, LoraAdapter, type LoraSettings } from "../lora/adapter.js";
import { disposeTargets, klSum, stackTargets, type KlMode } from "./kl.js";
import { LoraAdam } from "./optimizer.js";
import type { Lesson } from "./prompt.js";
import { alignBatch, computeTeacherTargets, sampleTrajectories, type Trajectory } from "./trajectories.js";

/** forward: KL(teacher || student) on the teacher's replies (the paper's); on-policy: KL(student || teacher) on the student's */
export const BAKE_OBJECTIVES = ["forward", "on-policy"] as const;
export type BakeObjective = (typeof BAKE_OBJECTIVES)[number];

export interface BakeSettings {
  lora: LoraSettings;
  objective: BakeObjective;
  /** replies sampled from the teacher */
  trajectories: number;
  /** sampling temperature for the replies, the teacher's (the paper's code found 2 better than 1 on large models) or on-policy the student's */
  temperature: number;
  maxReplyTokens: number;
  learningRate: number;
  epochs: number;
  batchSize: number;
  /** global gradient-norm clip; 0 turns it off */
  clipNorm: number;
  /** share of trajectories asked as a later turn of a conversation (sampleTrajectories) */
  laterTurns: number;
  /** share of trajectories held out for validation KL */
  validationFraction: number;
  /** epochs without a better validation KL before stopping */
  patience: number;
  kl: KlMode;
  /** stop once this share of the initial validation KL is gone (0.5 = half-baked); 1 = bake fully */
  halfBake: number;
  /** prompt pursuit: rounds of baking, each teacher = the last round's model with the prompt */
  pursuitRounds: number;
  seed: number;
}

/**
 * The most an agent file or `kiln bake` may ask for, so a slip of the keyboard is refused rather
 * than run out of memory. A rank past a few hundred is wider than the projections it adapts in the
 * models kiln runs (no more expressive, and r 100,000 allocates gigabytes before the first step);
 * a bake caches the teacher's distributions over every trajectory's reply at once (with full KL,
 * vocabulary-sized per token), where kiln's agents use a few hundred trajectories. The others are
 * past what any bake has wanted by far: a reply of 4,096 tokens (the model's own context is checked
 * when an agent starts), 100 epochs (patience ends a bake long before), a batch of 512, a
 * temperature of 5 (sampling is noise well before), a learning rate of 1, alpha 4,096 (8 x the
 * widest rank), top-K 1,024 and a gradient clip of 1,000.
 */
export const BAKE_LIMITS = {
  trajectories: 2048,
  rank: 512,
  maxReplyTokens: 4096,
  epochs: 100,
  batchSize: 512,
  patience: 100,
  temperature: 5,
  learningRate: 1,
  alpha: 4096,
  topK: 1024,
  clipNorm: 1000,
} as const;

export const DEFAULT_BAKE: BakeSettings = {
  lora: DEFAULT_LORA,
  objective: "forward",
  trajectories: 64,
  temperature: 1,
  maxReplyTokens: 48,
  learningRate: 1e-3,
  epochs: 20,
  batchSize: 8,
  clipNorm: 1,
  laterTurns: 0.25,
  validationFraction: 0.125,
  patience: 3,
  kl: { kind: "full" },
  halfBake: 1,
  pursuitRounds: 1,
  seed: 1,
};

export type BakeProgress =
  | { phase: "sample"; round: number; done: number; total: number }
  | { phase: "teacher"; round: number; done: number; total: number }
  | {
      phase: "train";
      round: number;
      epoch: number;
      step: number;
      totalSteps: number;
      loss: number;
      klPerToken: number;
      tokensPerSecond: number;
      etaSeconds: number;
    }
  | { phase: "validate"; round: number; epoch: number; valKlPerToken: number; best: number };

export interface EpochStat {
  round: number;
  epoch: number;
  /** the objective's own KL: forward on the teacher's replies, or reverse on the student's (on-policy) */
  trainKlPerToken: number;
  valKlPerToken: number;
}

export interface BakeReport {
  adapter: LoraAdapter;
  /** validation KL per token of the starting adapter, first round */
  initialValKl: number;
  /** best validation KL per token, last round */
  bestValKl: number;
  history: EpochStat[];
  trajectories: number;
  trainedTokens: number;
  seconds: number;
  tokensPerSecond: number;
  stoppedBy: "epochs" | "early-stop" | "half-bake";
}

export interface BakeRequest {
  model: LoadedModel;
  /** the prompt to bake (the system slot of the teacher), and the questions to sample replies for */
  prompt?: string;
  questions?: string[];
  /** several teacher prompts baked together (knowledgeLessons); replaces prompt and questions */
  lessons?: Lesson[];
  settings?: Partial<BakeSettings>;
  /** the teacher's adapter (the live weights of a rolling chain); none = base model */
  teacherAdapter?: AdapterHook;
  /** start the student from a copy of this adapter instead of a fresh one */
  initFrom?: LoraAdapter;
  onProgress?: (p: BakeProgress) => void;
  signal?: AbortSignal;
}

/** KL per token of `adapter` (no prompt) against the cached teacher, over a set of trajectories. */
export async function evaluateKl(model: LoadedModel, trajectories: Trajectory[], adapter: AdapterHook | undefined, mode: KlMode, batchSize: number): Promise<number> {
  let total = 0;
  let tokens = 0;
  // the order of a sum does not matter: prompts of like length share a batch's padding
  const byLength = [...trajectories].sort((a, b) => a.studentPrompt.length - b.studentPrompt.length);
  for (let start = 0; start < byLength.length; start += batchSize) {
    const batch = byLength.slice(start, start + batchSize);
    const a = alignBatch(batch.map((t) => t.studentPrompt), batch.map((t) => t.reply), model.tokenizer.padTokenId);
    const targets = stackTargets(batch.map((t) => t.targets!), a.lengths, a.R, model.config.vocabSize, mode);
    const kl = tf.tidy(() => klSum(model.decoder.forward({ ids: a.ids, mask: a.mask }, { adapter, logitsFrom: a.logitsFrom }), targets));
    total += (await kl.data())[0]!;
    kl.dispose();
    tokens += targets.tokens;
    disposeTargets(targets);
  }
  return total / Math.max(tokens, 1);
}

/**
 * Training-speed copies of the frozen weights (Decoder.prepareForTraining) pay off on wasm, whose
 * transposed matMul is slow, but wasm's heap stops at 4 GB and XNNPACK keeps a packed copy of
 * every weight it multiplies by: skip them when weights + copies + packing would not fit.
 */
export function prepareDecoderForTraining(decoder: Decoder): boolean {
  if (tf.getBackend() !== "wasm") return false;
  let linearBytes = 0;
  for (const [name, t] of decoder.weights) if (isLinearWeight(name)) linearBytes += t.size * 4;
  if (4 * linearBytes > 1.5e9) return false;
  decoder.prepareForTraining();
  return true;
}

function shuffled<T>(items: T[], seed: number): T[] {
  const out = [...items];
  let s = seed >>> 0;
  for (let i = out.length - 1; i > 0; i--) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const j = s % (i + 1);
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/** Trajectories per group whose members are batched by prompt length. */
const LENGTH_GROUP_BATCHES = 8;

/**
 * One epoch's batches: the shuffled trajectories in groups of LENGTH_GROUP_BATCHES batches, each
 * group sorted by prompt length before it is cut into batches, and the batches shuffled. Every
 * prompt of a batch is padded to its longest, so a later-turn trajectory (a conversation before
 * its question) in a batch of first turns made the whole batch that long: a bake with a quarter
 * of them ran at 0.4x the tokens/s of one without.
 */
export function lengthBatches<T extends { studentPrompt: number[] }>(items: T[], batchSize: number, seed: number): T[][] {
  const order = shuffled(items, seed);
  const batches: T[][] = [];
  const group = batchSize * LENGTH_GROUP_BATCHES;
  for (let g = 0; g < order.length; g += group) {
    const sorted = order.slice(g, g + group).sort((a, b) => a.studentPrompt.length - b.studentPrompt.length);
    for (let i = 0; i < sorted.length; i += batchSize) batches.push(sorted.slice(i, i + batchSize));
  }
  return shuffled(batches, seed ^ 0x9e3779b9);
}

function lessonsOf(req: BakeRequest): Lesson[] {
  if (req.lessons) return req.lessons;
  if (req.prompt === undefined) throw new Error("a bake needs a prompt (or lessons) to bake");
  return [{ systemPrompt: req.prompt, questions: req.questions ?? [] }];
}

/** Why these settings cannot bake, or null. The agent config and `kiln bake` ask too, before any work. */
export function bakeSettingsProblem(s: Partial<Pick<BakeSettings, "objective" | "kl" | "pursuitRounds">>): string | null {
  if (s.objective !== undefined && !BAKE_OBJECTIVES.includes(s.objective)) return `objective must be one of ${BAKE_OBJECTIVES.join(", ")}, not ${JSON.stringify(s.objective)}`;
  if (s.objective === "on-policy" && s.kl?.kind === "topk") {
    return "the on-policy objective needs kl: full (its reverse KL weighs the teacher's log-probability of every token the student puts mass on; top-K targets have none outside the teacher's top K)";
  }
  if (s.pursuitRounds !== undefined && s.pursuitRounds < 1) return "pursuitRounds must be at least 1";
  return null;
}

async function bakeRound(req: BakeRequest, s: BakeSettings, round: number, teacher: AdapterHook | undefined, start: LoraAdapter | undefined, stats: { tokens: number; history: EpochStat[] }) {
  const { model } = req;
  const progress = req.onProgress ?? (() => {});
  const lessons = lessonsOf(req);
  const onPolicy = s.objective === "on-policy";
  const sample = (count: number, seed: number, sampleFrom?: { student: AdapterHook }) =>
    sampleTrajectories(model, {
      lessons,
      count,
      temperature: s.temperature,
      maxReplyTokens: s.maxReplyTokens,
      batchSize: Math.max(s.batchSize, 8),
      seed,
      teacherAdapter: teacher,
      sampleFrom,
      laterTurns: s.laterTurns,
      maxPositions: model.config.maxPositions,
      signal: req.signal,
      onProgress: (done, total) => progress({ phase: "sample", round, done, total }),
    });
  const scoreByTeacher = (ts: Trajectory[]) => computeTeacherTargets(model, ts, s.kl, s.batchSize, teacher, (done, total) => progress({ phase: "teacher", round, done, total }));

  const trajectories = await sample(s.trajectories, s.seed + round * 7919);
  if (trajectories.length < 2) throw new Error("the teacher produced fewer than 2 usable replies; give more questions or a longer maxReplyTokens");
  const mixed = shuffled(trajectories, s.seed + round);
  const nVal = Math.max(1, Math.round(mixed.length * s.validationFraction));
  const val = mixed.slice(0, nVal);
  // On-policy, the teacher's replies only validate: the rest are sampled all the same, so the
  // validation set is the one a forward bake of the same seed holds out, and not scored.
  let train = mixed.slice(nVal);
  const trainCount = onPolicy ? Math.max(train.length, lessons.length) : train.length; // a student sample covers every lesson
  await scoreByTeacher(onPolicy ? val : trajectories);
  const direction = onPolicy ? "reverse" : "forward";

  prepareDecoderForTraining(model.decoder);
  const fingerprint = model.fingerprint;
  const student = start ? start.clone() : LoraAdapter.create(model.config, s.lora, fingerprint, s.seed + round);
  const vars = student.variables();
  const optimizer = new LoraAdam({ learningRate: s.learningRate, clipNorm: s.clipNorm });
  const stepsPerEpoch = Math.ceil(trainCount / s.batchSize);
  const totalSteps = stepsPerEpoch * s.epochs;
  const initialVal = await evaluateKl(model, val, student, s.kl, s.batchSize);
  let best = initialVal;
  let bestSnapshot = await student.snapshot();
  let sinceBest = 0;
  let stoppedBy: BakeReport["stoppedBy"] = "epochs";
  const started = performance.now();
  let trainedTokens = 0;
  let step = 0;
  progress({ phase: "validate", round, epoch: 0, valKlPerToken: initialVal, best });
  try {
    epochs: for (let epoch = 1; epoch <= s.epochs; epoch++) {
      if (onPolicy) {
        train = await sample(trainCount, s.seed + round * 7919 + epoch * 104729, { student });
        await scoreByTeacher(train);
      }
      const batches = lengthBatches(train, s.batchSize, s.seed * 31 + epoch + round * 1000);
      let epochKl = 0;
      let epochTokens = 0;
      student.training = true;
      for (const batch of batches) {
        if (req.signal?.aborted) throw new Error("bake aborted");
        const a = alignBatch(batch.map((t) => t.studentPrompt), batch.map((t) => t.reply), model.tokenizer.padTokenId);
        const targets = stackTargets(batch.map((t) => t.targets!), a.lengths, a.R, model.config.vocabSize, s.kl);
        const loss = tf.tidy(() => {
          const { value, grads } = tf.variableGrads(() => {
            const logits = model.decoder.forward({ ids: a.ids, mask: a.mask }, { adapter: student, logitsFrom: a.logitsFrom }); // [B, R, V]
            return klSum(logits, targets, direction).div(batch.length) as tf.Scalar;
          }, vars);
          optimizer.apply(vars, grads);
          return value;
        });
        const lossValue = (await loss.data())[0]!;
        // A read from a host backend resolves as a microtask, so without this a whole bake could
        // run without the event loop turning: progress messages would wait, and a bake worker
        // would not see its parent die (process "disconnect") until it had written its adapter.
        await yieldToEventLoop();
        loss.dispose();
        disposeTargets(targets);
        step++;
        trainedTokens += targets.tokens;
        epochKl += lossValue * batch.length;
        epochTokens += targets.tokens;
        const elapsed = (performance.now() - started) / 1000;
        progress({
          phase: "train",
          round,
          epoch,
          step,
          totalSteps,
          loss: lossValue,
          klPerToken: (lossValue * batch.length) / targets.tokens,
          tokensPerSecond: trainedTokens / elapsed,
          etaSeconds: (elapsed / step) * (totalSteps - step),
        });
      }
      student.training = false;
      const valKl = await evaluateKl(model, val, student, s.kl, s.batchSize);
      stats.history.push({ round, epoch, trainKlPerToken: epochKl / Math.max(epochTokens, 1), valKlPerToken: valKl });
      if (valKl < best) {
        best = valKl;
        bestSnapshot = await student.snapshot();
        sinceBest = 0;
      } else sinceBest++;
      progress({ phase: "validate", round, epoch, valKlPerToken: valKl, best });
      if (s.halfBake < 1 && initialVal - best >= s.halfBake * initialVal) {
        stoppedBy = "half-bake";
        break epochs;
      }
      if (sinceBest >= s.patience) {
        stoppedBy = "early-stop";
        break epochs;
      }
    }
  } catch (err) {
    student.dispose();
    throw err;
  } finally {
    optimizer.dispose();
    for (const t of trajectories) delete t.targets;
  }
  student.training = false;
  student.restore(bestSnapshot);
  stats.tokens += trainedTokens;
  return { student, initialVal, best, trajectories: trajectories.length, stoppedBy };
}

export async function bake(req: BakeRequest): Promise<BakeReport> {
  const s: BakeSettings = { ...DEFAULT_BAKE, ...req.settings, lora: { ...DEFAULT_BAKE.lora, ...req.settings?.lora } };
  const problem = bakeSettingsProblem(s);
  if (problem) throw new Error(problem);
  const started = performance.now();
  const stats = { tokens: 0, history: [] as EpochStat[] };
  let teacher = req.teacherAdapter;
  let start = req.initFrom;
  let result: Awaited<ReturnType<typeof bakeRound>> | undefined;
  let initialValKl = NaN;
  let sampled = 0;
  for (let round = 0; round < s.pursuitRounds; round++) {
    const previous = result?.student;
    // Pursuit: the next teacher is the model just baked, still shown the prompt.
    if (previous) {
      teacher = req.teacherAdapter && !req.initFrom ? new AdapterStack([req.teacherAdapter, previous]) : previous;
      start = previous;
    }
    result = await bakeRound(req, s, round, teacher, start, stats);
    if (round === 0) initialValKl = result.initialVal;
    sampled += result.trajectories;
    previous?.dispose();
  }
  const seconds = (performance.now() - started) / 1000;
  return {
    adapter: result!.student,
    initialValKl,
    bestValKl: result!.best,
    history: stats.history,
    trajectories: sampled,
    trainedTokens: stats.tokens,
    seconds,
    tokensPerSecond: stats.tokens / seconds,
    stoppedBy: result!.stoppedBy,
  };
}
