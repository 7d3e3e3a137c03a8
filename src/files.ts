// Folders kiln makes where a user or a request says (an export's `to`, `bake --out`, an agent's home).
import { existsSync, mkdirSync, statSync } from "node:fs";
import path from "node:path";

/**
 * `mkdir -p` that fails where it cannot make the folder. Node 20's own recursive mkdir (sync and
 * async) loops forever where mkdir answers ENOENT under a folder that exists, as it does anywhere
 * under /proc: one admin-API export to "/proc/x" held the server's event loop for good.
 */
export function makeDirs(dir: string): void {
  const missing: string[] = [];
  const target = path.resolve(dir);
  // a file where the folder should be is mkdir's EEXIST, as with fs.mkdirSync(recursive)
  if (existsSync(target) && !statSync(target).isDirectory()) mkdirSync(target);
  for (let at = target; !existsSync(at); at = path.dirname(at)) {
    missing.unshift(at);
    if (path.dirname(at) === at) break;
  }
  for (const d of missing) {
    try {
      mkdirSync(d);
    } catch (err) {
      // made meanwhile by another writer: fine if it is a folder now
      if ((err as NodeJS.ErrnoException).code !== "EEXIST" || !statSync(d).isDirectory()) throw err;
    }
  }
}
