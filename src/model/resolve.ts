// Where a model comes from: a local directory, a hub repo already pulled into the cache, or the
// embedded default model that ships with kiln.
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { isRepoId, resolveCachedModel } from "./hub.js";

/** The package root (holds package.json), from the compiled location dist/src/model/. */
export const PACKAGE_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
export const DEFAULT_MODEL_DIR = path.join(PACKAGE_ROOT, "models", "kiln-mini");

export function resolveModelDir(spec: string | undefined): string {
  if (!spec) {
    if (!existsSync(path.join(DEFAULT_MODEL_DIR, "config.json"))) {
      throw new Error(`the embedded default model is missing at ${DEFAULT_MODEL_DIR}; pass --model DIR or a pulled repo id`);
    }
    return DEFAULT_MODEL_DIR;
  }
  if (existsSync(spec)) return path.resolve(spec);
  // owner/name, or owner/name@revision for a branch, tag or commit pulled with --revision
  const at = spec.lastIndexOf("@");
  const [repo, revision] = at > 0 ? [spec.slice(0, at), spec.slice(at + 1)] : [spec, undefined];
  if (isRepoId(repo) && revision !== "") {
    const cached = resolveCachedModel(repo, revision ? { revision } : {});
    if (cached) return cached;
    throw new Error(
      `${spec} is not a local directory and has not been pulled into ${process.env.KILN_CACHE ? "$KILN_CACHE" : "the cache"}; ` +
        `run: kiln model pull ${repo}${revision ? ` --revision ${revision}` : ""} (a pull into another --cache-dir is found with KILN_CACHE=<dir>)`,
    );
  }
  throw new Error(`${spec}: no such model directory`);
}
