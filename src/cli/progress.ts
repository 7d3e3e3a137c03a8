// Progress display for long work: a bar on a terminal, one line per milestone otherwise (logs, CI).
import cliProgress from "cli-progress";
import type { WorkerProgress } from "../bake/job.js";

export function bakeProgressReporter(enabled: boolean): { update(p: WorkerProgress): void; stop(): void } {
  if (!enabled) return { update() {}, stop() {} };
  const tty = process.stderr.isTTY;
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      format: "{phase} |{bar}| {value}/{total} {info}",
      hideCursor: true,
      noTTYOutput: false,
    },
    cliProgress.Presets.shades_classic,
  );
  let phase = "";
  let started = false;
  return {
    update(p) {
      const round = "round" in p && p.round ? ` (round ${p.round + 1})` : "";
      const name = p.phase === "validate" ? "train" : `${p.phase}${round}`;
      if (p.phase === "validate") {
        // epoch 0 is the check of the starting adapter before any step: epochs count from 1, so
        // `--epochs 10` shows epochs 1-10, after the line before training (each round has one)
        const when = p.epoch === 0 ? "before training" : `epoch ${p.epoch}`;
        const line = `${when}${round}: validation KL/token ${p.valKlPerToken.toFixed(5)} (best ${p.best.toFixed(5)})`;
        if (tty && started) bar.update({ info: line });
        else process.stderr.write(line + "\n");
        return;
      }
      const [value, total] = p.phase === "train" ? [p.step, p.totalSteps] : [p.done, p.total];
      const info =
        p.phase === "train"
          ? `KL/token ${p.klPerToken.toFixed(4)} ${p.tokensPerSecond.toFixed(0)} tok/s ETA ${Math.round(p.etaSeconds)}s`
          : "";
      if (!tty) {
        if (name !== phase || value === total) process.stderr.write(`${name}: ${value}/${total} ${info}\n`);
        phase = name;
        return;
      }
      if (name !== phase) {
        if (started) bar.stop();
        bar.start(total, value, { phase: name.padEnd(8), info });
        started = true;
        phase = name;
      } else bar.update(value, { info });
    },
    stop() {
      if (started) bar.stop();
    },
  };
}
