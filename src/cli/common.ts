// What every kiln command shares: output in text or JSON, and option values checked on the way
// in (a bare parseInt turns "--epochs abc" into a bake of zero epochs that reports success).
import { InvalidArgumentError } from "commander";

export function print(json: boolean | undefined, value: unknown, text: () => string): void {
  process.stdout.write(json ? JSON.stringify(value, null, 2) + "\n" : text() + "\n");
}

/** An option parser for whole numbers in [min, max]; commander names the option in its error. */
export function integer(min = -Infinity, max = Infinity): (value: string) => number {
  return (value) => {
    const n = Number(value.trim());
    if (!/^[+-]?\d+$/.test(value.trim()) || n < min || n > max) throw new InvalidArgumentError(`expected a whole number${range(min, max)}.`);
    return n;
  };
}

/** An option parser for numbers in [min, max] (or above min, exclusive, when `above` is set). */
export function decimal(min = -Infinity, max = Infinity, opts: { above?: boolean } = {}): (value: string) => number {
  return (value) => {
    const n = Number(value.trim());
    const low = opts.above ? n > min : n >= min;
    if (value.trim() === "" || !Number.isFinite(n) || !low || n > max) throw new InvalidArgumentError(`expected a number${range(min, max, opts.above)}.`);
    return n;
  };
}

function range(min: number, max: number, above = false): string {
  const lo = Number.isFinite(min) ? `${above ? ">" : ">="} ${min}` : "";
  const hi = Number.isFinite(max) ? `<= ${max}` : "";
  return lo && hi ? ` ${lo} and ${hi}` : lo || hi ? ` ${lo || hi}` : "";
}

/**
 * A model's answer on one line of text output: a persona's sign-off often comes after a line
 * break, which split a probe's line in two and left the sign-off where the next line belongs.
 * The break is written as \n so the answer still reads as the model gave it (--json has it raw).
 */
export function oneLine(text: string): string {
  return text.replace(/\r?\n/g, "\\n");
}

/**
 * Ctrl-C (or SIGTERM) while a command has agents open: stop them as kiln serve does (a bake in
 * progress is stopped and recorded failed, its items pending again; the ledger written and its lock
 * let go), then exit 130 (143). Left to the default, the process died with the ledger saying
 * "baking" and its lock behind. A second Ctrl-C ends it at once.
 */
export function stopOnSignal(stop: () => Promise<void>): void {
  const on = (signal: NodeJS.Signals) => {
    process.stderr.write(`\nkiln: ${signal}: stopping (a bake in progress is recorded failed and its items pending again); Ctrl-C again to quit at once\n`);
    void stop().finally(() => process.exit(signal === "SIGINT" ? 130 : 143));
  };
  process.once("SIGINT", on);
  process.once("SIGTERM", on);
}
