// Child-process entry of a bake (see job.ts): receives one BakeJob, reports progress, writes the
// adapter atomically, and exits.
import { initBackend } from "../tensor/backend.js";
import { sizeOutputPool } from "../tensor/native.js";
import { loadModel } from "../model/load.js";
import { parameterCount } from "../model/config.js";
import { loadAdapter, saveAdapter } from "../lora/peft.js";
import { bake, DEFAULT_BAKE } from "./trainer.js";
import { yieldToEventLoop } from "../model/generate.js";
import { runCycle } from "./cycle.js";
import { OPEN_QUESTIONS, writeQuestions } from "./probes.js";
import { checkLessonsFit } from "./trajectories.js";
import { summarizeBake, type BakeJob, type BakeSummary, type WorkerJob, type WorkerMessage } from "./job.js";

function send(m: WorkerMessage): Promise<void> {
  return new Promise((resolve) => process.send!(m, () => resolve()));
}

/** The backend, the model (its output pool sized by its weights) and the live adapter, if any. */
async function openModel(job: { modelDir: string; liveAdapterDir?: string | null }) {
  await initBackend();
  const model = loadModel(job.modelDir);
  sizeOutputPool("bake", 4 * parameterCount(model.config));
  const live = job.liveAdapterDir ? loadAdapter(job.liveAdapterDir, model.config, model.fingerprint) : undefined;
  return { model, live };
}

async function run(job: BakeJob): Promise<BakeSummary> {
  const { model, live } = await openModel(job);
  // Without given questions, the model writes its own about each line of the prompt.
  const lines = job.prompt.split("\n").map((l) => l.replace(/^[-*]\s*/, "").trim()).filter(Boolean);
  // (checked before the model writes questions on a prompt too long, which failed naming nothing)
  if (!job.questions.length) checkLessonsFit(model, [{ systemPrompt: job.prompt, questions: OPEN_QUESTIONS }], job.settings?.maxReplyTokens ?? DEFAULT_BAKE.maxReplyTokens, model.config.maxPositions);
  const questions = job.questions.length ? job.questions : [...(await writeQuestions(model, lines, 3, { adapter: live })).flat(), ...OPEN_QUESTIONS];
  const report = await bake({
    model,
    prompt: job.prompt,
    questions,
    settings: job.settings,
    teacherAdapter: live,
    initFrom: job.startFromLive ? live : undefined,
    onProgress: (progress) => void send({ type: "progress", progress }),
  });
  const summary = summarizeBake(report, job.outDir);
  await yieldToEventLoop(); // a parent that died meanwhile ends this process here, before anything is written
  await saveAdapter(job.outDir, report.adapter, model.dir, { "bake_report.json": JSON.stringify(summary, null, 2) + "\n" });
  return summary;
}

async function cycle(job: Extract<WorkerJob, { kind: "cycle" }>) {
  const { model, live } = await openModel(job);
  return runCycle(model, job, live, (progress) => void send({ type: "progress", progress }));
}

// If the parent dies, so does the bake: an orphan must not write checkpoints nobody will record.
process.on("disconnect", () => process.exit(1));

process.once("message", (job: WorkerJob) => {
  (job.kind === "cycle" ? cycle(job) : run(job))
    .then(async (result) => {
      await send({ type: "done", result });
      process.exit(0);
    })
    .catch(async (err: Error) => {
      await send({ type: "error", message: err.message });
      process.exit(1);
    });
});
