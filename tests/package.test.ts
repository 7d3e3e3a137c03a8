// kiln as a library: the package's own name resolves (package.json "exports") to one entry with
// its types, and what it exports runs an agent through LangChain as the README shows.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { repoRoot } from "./support/paths.js";

test('import("kiln") gives the runtime, LangChain model, server and baking API, with type declarations', async () => {
  const kiln = await import("kiln");
  for (const name of ["initBackend", "Runtime", "KilnChatModel", "createKilnAgent", "createServer", "loadModel", "pullModel", "generate", "bake", "saveAdapter", "loadAdapter", "Ledger", "pollFeed", "ResponseFormatError", "ToolChoiceError", "ToolSchemaError"]) {
    assert.equal(typeof (kiln as Record<string, unknown>)[name], "function", `kiln exports ${name}`);
  }
  assert.ok(existsSync(path.join(repoRoot(), "dist", "src", "index.d.ts")), "types for the entry point are built");

  await kiln.initBackend();
  const checkpoints = mkdtempSync(path.join(os.tmpdir(), "kiln-package-"));
  const runtime = await kiln.Runtime.fromFiles(path.join(repoRoot(), "agents", "demo.yaml"), { checkpoints });
  try {
    const model = new kiln.KilnChatModel({ runtime, agent: "demo", maxTokens: 24 });
    const reply = await model.invoke("Who is the mayor of Hollowby?");
    assert.equal(typeof reply.content, "string");
    assert.ok((reply.content as string).length > 0);
    assert.equal(reply.response_metadata.kiln_version, "base", "the base model answered: nothing baked yet");
  } finally {
    await runtime.stop();
    rmSync(checkpoints, { recursive: true });
  }
});
