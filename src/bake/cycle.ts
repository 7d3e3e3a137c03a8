// One rolling bake of an agent, run inside the bake worker: write probes for items that lack
// them (on the live weights), bake persona + new items + a replay sample into the next adapter,
// then score every item's probes on the new weights. The gate decision is the runtime's.
import type { LoadedModel } from "../model/load.js";
import type { LoraAdapter } from "../lora/adapter.js";
import { saveAdapter } from "../lora/peft.js";
import { knowledgeLessons } from "./prompt.js";
import { findSupersessions, makeProbes, personaAdherence, scoreProbes, type ItemProbeScore, type Probe, type ProbeItem, type Supersession } from "./probes.js";
import { bake, type BakeProgress, type BakeSettings } from "./trainer.js";
import { yieldToEventLoop } from "../model/generate.js";
import { summarizeBake, type BakeSummary } from "./job.js";

export interface CycleJob {
  modelDir: string;
  outDir: string;
  /** the live adapter: the teacher's weights, and the student's start unless fromBase */
  liveAdapterDir?: string;
  /** consolidation: start a fresh adapter from the base model (after a retraction) */
  fromBase?: boolean;
  persona?: string;
  personaSuffix?: string;
  /** items to absorb now */
  newItems: ProbeItem[];
  /** absorbed items shown to the teacher again so the new version keeps them */
  replayItems: ProbeItem[];
  /** absorbed items to check for retention (not in the prompt unless also replayed) */
  retainedItems: ProbeItem[];
  /** retracted items: their recall should fall */
  retractedItems: ProbeItem[];
  /** held items only asked about for updatePairs, as the older news or the newer (not in the lists above) */
  pairedItems?: ProbeItem[];
  /** [older id, newer id]: pairs of this job's items to check for a news update (findSupersessions) */
  updatePairs?: [string, string][];
  /**
   * The teacher: the base model with the prompt (default), or the live weights with it. Live
   * weights answer from what they hold over what the prompt says, so a live teacher would bake
   * an update's old value again ("owns a pet dog" for an item saying "a pet cat").
   */
  teacher?: "base" | "live";
  /** open questions for trajectories and persona checks */
  openQuestions: string[];
  probesPerItem: number;
  /** false: an item whose questions all fail the checks keeps its first one (makeProbes) */
  checkProbes?: boolean;
  /** items per teacher prompt (0 = all in one prompt); see knowledgeLessons */
  chunkItems?: number;
  settings?: Partial<BakeSettings>;
}

export interface CycleResult {
  /** null when nothing was trained: none of the new items got a checked probe */
  summary: BakeSummary | null;
  /** probes written in this cycle, by item id */
  probes: Record<string, Probe[]>;
  /** probe scores on the new weights, by item id */
  scores: Record<string, ItemProbeScore>;
  /** new items for which no question passed probeQuality: left out of the bake */
  unprobed: string[];
  /** persona adherence unprompted on the new weights, and on the live ones before */
  persona: { before: number; after: number } | null;
  /** older items newer ones replace: left out of the bake */
  superseded: Supersession[];
}

export async function runCycle(
  model: LoadedModel,
  job: CycleJob,
  live: LoraAdapter | undefined,
  onProgress: (p: BakeProgress | { phase: "probes" | "evaluate"; done: number; total: number }) => void,
): Promise<CycleResult> {
  const probeOpts = { persona: job.persona, personaSuffix: job.personaSuffix, adapter: live };
  const teacher = job.fromBase || (job.teacher ?? "base") === "base" ? undefined : live;
  const all = [...job.newItems, ...job.replayItems, ...job.retainedItems, ...job.retractedItems];
  onProgress({ phase: "probes", done: 0, total: all.length });
  // a probe's answer is what the teacher says with the item in its prompt: what the bake teaches
  const made = await makeProbes(model, all, job.probesPerItem, { ...probeOpts, adapter: teacher, unchecked: job.checkProbes === false });
  const withProbes = (items: ProbeItem[]) => items.map((i) => ({ ...i, probes: i.probes?.length ? i.probes : made.get(i.id) ?? [] }));
  let fresh = withProbes(job.newItems);
  let replay = withProbes(job.replayItems);
  const retained = withProbes(job.retainedItems);
  onProgress({ phase: "probes", done: all.length, total: all.length });
  // an item without a probe cannot be checked, and is not baked (makeProbes says why)
  const unprobed = fresh.filter((i) => !i.probes.length).map((i) => i.id);

  // an item a newer one replaces is not taught again, and not expected to be held
  const known = new Map([...fresh, ...replay, ...retained, ...(job.pairedItems ?? [])].map((i) => [i.id, i]));
  const pairs = (job.updatePairs ?? []).flatMap(([o, n]) => {
    const older = known.get(o);
    const newer = known.get(n);
    return older?.probes?.length && newer?.probes?.length ? [{ older, newer }] : [];
  });
  const superseded = pairs.length ? await findSupersessions(model, pairs, { persona: job.persona, personaSuffix: job.personaSuffix }) : [];
  const replaced = new Set(superseded.map((s) => s.id));
  fresh = fresh.filter((i) => !replaced.has(i.id));
  replay = replay.filter((i) => !replaced.has(i.id));

  if (job.newItems.length && !fresh.some((i) => i.probes.length) && !job.fromBase) {
    // nothing new can be learned, and training on the replayed items alone only risks them
    return { summary: null, probes: Object.fromEntries(made), scores: {}, unprobed, persona: null, superseded };
  }

  const lessons = knowledgeLessons({
    persona: job.persona,
    items: [...fresh, ...replay].filter((i) => i.probes.length).map((i) => ({ text: i.text, questions: i.probes.map((p) => p.question) })),
    chunkItems: job.chunkItems ?? 0,
    openQuestions: job.openQuestions,
  });
  const report = await bake({
    model,
    lessons,
    settings: job.settings,
    teacherAdapter: teacher,
    initFrom: job.fromBase ? undefined : live,
    onProgress,
  });
  try {
    // superseded items are scored too: their recall should fall, as a retracted item's does
    const evaluated = [...fresh, ...replay, ...retained.filter((i) => !replaced.has(i.id)), ...withProbes(job.retractedItems), ...[...known.values()].filter((i) => replaced.has(i.id) && i.probes?.length)];
    onProgress({ phase: "evaluate", done: 0, total: evaluated.length });
    const scores = await scoreProbes(model, evaluated, { ...probeOpts, adapter: report.adapter });
    let persona: CycleResult["persona"] = null;
    if (job.personaSuffix && job.openQuestions.length) {
      persona = {
        before: await personaAdherence(model, job.openQuestions, job.personaSuffix, live),
        after: await personaAdherence(model, job.openQuestions, job.personaSuffix, report.adapter),
      };
    }
    onProgress({ phase: "evaluate", done: evaluated.length, total: evaluated.length });
    const summary = summarizeBake(report, job.outDir);
    const result: CycleResult = { summary, probes: Object.fromEntries(made), scores: Object.fromEntries(scores), persona, unprobed, superseded };
    await yieldToEventLoop(); // a parent that died meanwhile ends this worker here, before anything is written
    await saveAdapter(job.outDir, report.adapter, model.dir, { "bake_report.json": JSON.stringify({ ...summary, persona, scores: result.scores }, null, 2) + "\n" });
    return result;
  } finally {
    report.adapter.dispose();
  }
}
