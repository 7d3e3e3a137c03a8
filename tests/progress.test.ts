// The bake progress lines the CLI writes (kiln bake, kiln demo, agents): what a log shows of a bake.
import { test } from "node:test";
import assert from "node:assert/strict";
import { bakeProgressReporter } from "../src/cli/progress.js";
import type { WorkerProgress } from "../src/bake/job.js";

/** What the reporter writes to stderr for these updates (no bar is started by validation lines). */
function written(updates: WorkerProgress[]): string[] {
  const out: string[] = [];
  const write = process.stderr.write;
  process.stderr.write = ((chunk: string | Uint8Array) => {
    out.push(String(chunk));
    return true;
  }) as typeof process.stderr.write;
  try {
    const reporter = bakeProgressReporter(true);
    for (const u of updates) reporter.update(u);
    reporter.stop();
  } finally {
    process.stderr.write = write;
  }
  return out.join("").split("\n").filter(Boolean);
}

test("the validation before training is said to be before training, and epochs count from 1 (each round has its own)", () => {
  const validate = (round: number, epoch: number, kl: number, best: number): WorkerProgress => ({ phase: "validate", round, epoch, valKlPerToken: kl, best });
  assert.deepEqual(written([validate(0, 0, 0.5, 0.5), validate(0, 1, 0.25, 0.25), validate(0, 2, 0.3, 0.25), validate(1, 0, 0.2, 0.2), validate(1, 1, 0.1, 0.1)]), [
    "before training: validation KL/token 0.50000 (best 0.50000)",
    "epoch 1: validation KL/token 0.25000 (best 0.25000)",
    "epoch 2: validation KL/token 0.30000 (best 0.25000)",
    "before training (round 2): validation KL/token 0.20000 (best 0.20000)",
    "epoch 1 (round 2): validation KL/token 0.10000 (best 0.10000)",
  ]);
});
