// The experimental webgpu backend (tfjs-backend-webgpu on Dawn), each check in a child process
// started with KILN_BACKEND=webgpu (a process has one backend): kiln's own WGSL kernels against
// the composed ops, then the golden tests again. Dawn takes a GPU's Vulkan where there is one; on
// a machine without, its OpenGL ES backend on Mesa's software renderer (CI installs libegl-mesa0
// and libgles2 for it).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import os from "node:os";
import { fileURLToPath } from "node:url";

/** Runs a compiled test file under node --test on webgpu; returns its stdout. */
function onWebgpu(testFile: string): string {
  const file = fileURLToPath(new URL(testFile, import.meta.url));
  // XDG_RUNTIME_DIR: Mesa warns on every start without one
  const env: NodeJS.ProcessEnv = { ...process.env, KILN_BACKEND: "webgpu", XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? os.tmpdir() };
  delete env.NODE_TEST_CONTEXT; // else the child reports to this runner instead of printing its results
  const r = spawnSync(process.execPath, ["--test", file], { env, encoding: "utf8", timeout: 300_000 });
  const out = `${r.stdout}\n${r.stderr}`;
  assert.equal(r.status, 0, out.split("\n").filter((l) => /^not ok|error|backend|at \d+:|expected|actual/i.test(l)).slice(0, 30).join("\n"));
  return r.stdout;
}

test("on the webgpu backend, kiln's fused kernels equal the composed ops, values and gradients, and a decoder step runs them", () => {
  assert.match(onWebgpu("./support/webgpu-fused.js"), /# pass 11\b/, "all 11 kernel tests ran");
});

test("on the webgpu backend, logits and greedy continuations match PyTorch for every fixture", () => {
  assert.match(onWebgpu("./golden.test.js"), /# pass 24\b/, "all 24 golden tests ran");
});

test("KILN_WEBGPU_SUBMIT_BATCH sets how many dispatches tfjs-webgpu records before a submit, and a bad value is refused by name", () => {
  const backend = fileURLToPath(new URL("../src/tensor/backend.js", import.meta.url));
  const script = `const b = await import(${JSON.stringify(backend)}); const i = await b.initBackend("webgpu"); console.log(JSON.stringify({ n: b.tf.env().get("WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE"), notes: i.notes }));`;
  const run = (value: string) =>
    spawnSync(process.execPath, ["--input-type=module", "-e", script], { env: { ...process.env, KILN_WEBGPU_SUBMIT_BATCH: value, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? os.tmpdir() }, encoding: "utf8", timeout: 60_000 });
  const ok = run("64");
  assert.equal(ok.status, 0, ok.stderr);
  const shown = JSON.parse(ok.stdout.trim().split("\n").at(-1)!) as { n: number; notes: string[] };
  assert.equal(shown.n, 64);
  assert.ok(shown.notes.some((n) => /submits every 64 dispatches/.test(n)), shown.notes.join("; "));
  const bad = run("0");
  assert.notEqual(bad.status, 0);
  assert.match(bad.stderr, /KILN_WEBGPU_SUBMIT_BATCH must be a whole number of dispatches from 1 to 100000 \(got "0"\)/);
});
