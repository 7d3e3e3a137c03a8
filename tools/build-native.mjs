// Builds native/blas (OpenBLAS matMul for the "native" backend) with node-gyp. Optional: when
// the compiler or libopenblas-dev is missing, kiln runs on wasm and this says why, once.
import { spawnSync } from "node:child_process";
import { existsSync, statSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const dir = path.join(root, "native", "blas");
const out = path.join(dir, "build", "Release", "kiln_blas.node");
const newest = Math.max(...["blas.c", "binding.gyp"].map((f) => statSync(path.join(dir, f)).mtimeMs));
if (existsSync(out) && statSync(out).mtimeMs >= newest) process.exit(0);
if (process.env.KILN_SKIP_NATIVE) process.exit(0);
// npm puts its bundled node-gyp on PATH for scripts; npm's nodedir setting reaches it as env.
const r = spawnSync("node-gyp", ["rebuild", "--silent"], { cwd: dir, stdio: ["ignore", "ignore", "pipe"], encoding: "utf8", shell: process.platform === "win32" });
if (r.status !== 0) {
  const why = (r.error?.message ?? r.stderr ?? "").trim().split("\n").filter(Boolean).slice(-3).join(" | ");
  console.error(`kiln: the native OpenBLAS backend was not built (${why || `node-gyp exit ${r.status}`}); kiln will use wasm. ` +
    "To build it: apt-get install g++ make python3 libopenblas-dev, then npm run build:native.");
}
