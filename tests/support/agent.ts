// A small agent on a fixture model, with bake settings sized for tests.
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { stringify } from "yaml";
import { fixtureDir } from "./paths.js";

export const FAST_BAKE = {
  trajectories: 16,
  maxReplyTokens: 8,
  epochs: 6,
  patience: 6,
  learningRate: 0.01,
  batchSize: 8,
  temperature: 0.7,
  lora: { r: 4, alpha: 8, targetModules: ["q_proj", "v_proj", "o_proj", "down_proj"] },
};

/** Writes an agent YAML (and an RSS feed) into a fresh folder; returns the folder and file. */
/** The test agent's bake settings (the fixture model is random: the questions it writes cannot pass kiln's probe checks). */
export const TEST_BAKE = { probesPerItem: 1, checkProbes: false, openQuestions: ["hello"], settings: FAST_BAKE };

export function writeTestAgent(overrides: Record<string, unknown> = {}): { dir: string; file: string; feedFile: string } {
  const dir = mkdtempSync(path.join(os.tmpdir(), "kiln-agent-"));
  const feedFile = path.join(dir, "news.xml");
  writeFileSync(
    feedFile,
    `<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>Harbor</title>
<item><guid>h1</guid><title>Quillport opened a ferry</title><description>The ferry runs at noon.</description></item>
<item><guid>h2</guid><title>Dunmore mills closed</title><description>Workers moved to Ashby.</description></item>
</channel></rss>`,
  );
  // The fixture's byte-level tokenizer makes long prompts; give the copy room (RoPE has no limit).
  const modelDir = path.join(dir, "model");
  cpSync(fixtureDir("llama"), modelDir, { recursive: true });
  const config = JSON.parse(readFileSync(path.join(modelDir, "config.json"), "utf8"));
  writeFileSync(path.join(modelDir, "config.json"), JSON.stringify({ ...config, max_position_embeddings: 2048 }));
  const file = path.join(dir, "test-agent.yaml");
  writeFileSync(
    file,
    stringify({
      name: "tester",
      model: "model",
      feeds: [{ id: "harbor", url: "news.xml", schedule: "0 0 1 1 *" }],
      bake: TEST_BAKE,
      gate: { minAbsorption: 0, minRetention: 0, minPersona: 0, itemPass: 0 },
      replay: 4,
      // the fixture model is random: model-based capture is tested on kiln-mini (tests/kiln-mini.test.ts)
      capture: "rules",
      keepVersions: 2,
      home: "home",
      ...overrides,
    }),
  );
  return { dir, file, feedFile };
}
