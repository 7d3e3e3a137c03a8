// One rolling bake of an agent, run inside the bake worker: write probes for items that lack
// them (on the live weights), bake persona + new items + a replay sample into the next adapter,
// then score every item's probes on the new weights. The gate decision is the runtime's.
import type { LoadedModel } from "../model/load.js";
import type { LoraAdapter } from "../lora/adapter.js";
import { saveAdapter } from "../lora/peft.js";
import { knowledgeLessons } from "./prompt.js";
import { makeProbes, personaAdherence, scoreProbes, type ItemProbeScore, type Probe, type ProbeItem } from "./probes.js";
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
}

export async function runCycle(
  model: LoadedModel,
  job: CycleJob,
  live: LoraAdapter | undefined,
  onProgress: (p: BakeProgress | { phase: "probes" | "evaluate"; done: number; total: number }) => void,
): Promise<CycleResult> {
  const probeOpts = { persona: job.persona, personaSuffix: job.personaSuffix, adapter: live };
  const all = [...job.newItems, ...job.replayItems, ...job.retainedItems, ...job.retractedItems];
  onProgress({ phase: "probes", done: 0, total: all.length });
  const made = await makeProbes(model, all, job.probesPerItem, { ...probeOpts, unchecked: job.checkProbes === false });
  const withProbes = (items: ProbeItem[]) => items.map((i) => ({ ...i, probes: i.probes?.length ? i.probes : made.get(i.id) ?? [] }));
  const fresh = withProbes(job.newItems);
  const replay = withProbes(job.replayItems);
  onProgress({ phase: "probes", done: all.length, total: all.length });
  // an item without a probe cannot be checked, and is not baked (makeProbes says why)
  const unprobed = fresh.filter((i) => !i.probes.length).map((i) => i.id);
  if (fresh.length && unprobed.length === fresh.length && !job.fromBase) {
    // nothing new can be learned, and training on the replayed items alone only risks them
    return { summary: null, probes: Object.fromEntries(made), scores: {}, unprobed, persona: null };
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
    teacherAdapter: job.fromBase ? undefined : live,
    initFrom: job.fromBase ? undefined : live,
    onProgress,
  });
  try {
    const evaluated = [...fresh, ...replay, ...withProbes(job.retainedItems), ...withProbes(job.retractedItems)];
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
    const result: CycleResult = { summary, probes: Object.fromEntries(made), scores: Object.fromEntries(scores), persona, unprobed };
    await yieldToEventLoop(); // a parent that died meanwhile ends this worker here, before anything is written
    await saveAdapter(job.outDir, report.adapter, model.dir, { "bake_report.json": JSON.stringify({ ...summary, persona, scores: result.scores }, null, 2) + "\n" });
    return result;
  } finally {
    report.adapter.dispose();
  }
}
