// A real kiln runtime process for crash tests: `node agent-process.js <agent.yaml> <mode>`.
// It prints one JSON line per event so the test can kill it at the right moment.
import cron from "node-cron";
import { initBackend } from "../../src/tensor/backend.js";
import { Runtime } from "../../src/runtime/runtime.js";

const [file, mode] = process.argv.slice(2);
const say = (o: object) => process.stdout.write(JSON.stringify(o) + "\n");

await initBackend();
const runtime = await Runtime.fromFiles(file!, {
  events: { onBakeProgress: (_a, p) => say({ event: "progress", phase: p.phase }), onLog: (_a, message) => say({ event: "log", message }) },
});
const agent = runtime.agent("tester");

if (mode === "bake") {
  // New text each run, so every run has something pending to bake.
  const run = agent.ledger.data.bakes.length + 1;
  await agent.remember(`The ferry to Quillport leaves at ${run} o'clock.`);
  await agent.remember(`Dunmore's mill closed on day ${run}.`);
  say({ event: "ready" });
  const outcome = await agent.bake("crash-test");
  say({ event: "baked", outcome });
} else if (mode === "write") {
  for (let i = 0; ; i++) {
    await agent.remember(`Fact number ${i} about the harbor.`);
    say({ event: "stored", i });
  }
} else if (mode === "status") {
  runtime.start();
  say({
    event: "status",
    live: agent.ledger.data.live,
    liveModel: agent.live.version,
    items: agent.ledger.data.items.map((i) => ({ text: i.text, status: i.status })),
    bakes: agent.ledger.data.bakes.map((b) => ({ status: b.status, error: b.error })),
    versions: agent.ledger.data.versions.map((v) => v.id),
    schedules: [...cron.getTasks().values()].map((t) => t.name),
  });
  await runtime.stop();
  process.exit(0);
}
await runtime.stop();
