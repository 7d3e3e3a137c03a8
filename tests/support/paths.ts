import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root, found from the compiled test's location (dist/tests/...). */
export function repoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, "package.json"))) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error("package.json not found above the tests");
    dir = up;
  }
  return dir;
}

export const FIXTURE_NAMES = ["llama", "llama3-rope", "qwen2", "mistral", "qwen3"] as const;

export function fixtureDir(name: string): string {
  return path.join(repoRoot(), "tests", "fixtures", "models", name);
}
