// The experimental webgpu backend (tfjs-backend-webgpu on Dawn): the golden tests again, in a
// child process started with KILN_BACKEND=webgpu (a process has one backend). Dawn takes a GPU's
// Vulkan where there is one; on a machine without, its OpenGL ES backend on Mesa's software
// renderer (CI installs libegl-mesa0 and libgles2 for it).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import os from "node:os";
import { fileURLToPath } from "node:url";

test("on the webgpu backend, logits and greedy continuations match PyTorch for every fixture", () => {
  const golden = fileURLToPath(new URL("./golden.test.js", import.meta.url));
  // XDG_RUNTIME_DIR: Mesa warns on every start without one
  const env: NodeJS.ProcessEnv = { ...process.env, KILN_BACKEND: "webgpu", XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? os.tmpdir() };
  delete env.NODE_TEST_CONTEXT; // else the child reports to this runner instead of printing its results
  const r = spawnSync(process.execPath, ["--test", golden], { env, encoding: "utf8", timeout: 300_000 });
  const out = `${r.stdout}\n${r.stderr}`;
  assert.equal(r.status, 0, out.split("\n").filter((l) => /^not ok|error|backend/i.test(l)).slice(0, 20).join("\n"));
  assert.match(r.stdout, /# pass 24\b/, "all 24 golden tests ran");
});
