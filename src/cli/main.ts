#!/usr/bin/env node
// The kiln command line. Every command prints a one-line error and exits non-zero on bad input;
// --json gives machine-readable output for scripts.
import { readFileSync, existsSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { Command, Option } from "commander";
import { initBackend, memoryReport, tf } from "../tensor/backend.js";
import { parameterCount } from "../model/config.js";
import { loadModel } from "../model/load.js";
import { streamGenerate } from "../model/generate.js";
import { pullModel } from "../model/hub.js";
import { resolveModelDir } from "../model/resolve.js";
import type { ChatMessage } from "../model/tokenizer.js";
import { runBake } from "../bake/job.js";
import { BAKE_LIMITS, BAKE_OBJECTIVES, DEFAULT_BAKE, bakeSettingsProblem, type BakeSettings } from "../bake/trainer.js";
import { LORA_TARGETS, type LoraTarget } from "../lora/adapter.js";
import { ADAPTER_WEIGHTS, checkAdapterTarget, loadAdapter } from "../lora/peft.js";
import { bakeProgressReporter } from "./progress.js";
import { decimal, integer, print } from "./common.js";
import { registerAgentCommands } from "./agents.js";
import { runDemo } from "./demo.js";
import { createServer, DEFAULT_SHUTDOWN_GRACE_MS } from "../server/index.js";
import { DEFAULT_AGENTS_DIR, Runtime } from "../runtime/runtime.js";
import { concurrentReplies, DEFAULT_PREFIX_CACHE_BYTES, defaultBatchRows } from "../runtime/live.js";

const program = new Command();
program
  .name("kiln")
  .description("A runtime for chat agents that bake what they read into their own LoRA weights.")
  .version("0.1.0")
  .addOption(new Option("--backend <name>", "tensor backend").choices(["tensorflow-gpu", "tensorflow", "native", "wasm", "cpu", "webgpu"]).env("KILN_BACKEND"))
  // commander's own errors (an unknown option, a bad choice) as kiln's: one line, `kiln: ...`
  // (they said "error: ..." with the "Did you mean" on a second line); set before the commands, which inherit it
  .configureOutput({ outputError: (text, write) => write(`kiln: ${text.trim().replace(/^error: /, "").replace(/\s*[\r\n]+\s*/g, " ")}\n`) });

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

/** "full causal", or which layers see only a sliding window of recent tokens. */
function attentionSummary(windows: (number | null)[]): string {
  const sliding = windows.flatMap((w, i) => (w === null ? [] : [i]));
  if (sliding.length === 0) return "full causal";
  const sizes = [...new Set(sliding.map((i) => windows[i]))].join("/");
  return sliding.length === windows.length
    ? `sliding window ${sizes} on every layer`
    : `sliding window ${sizes} on ${sliding.length} of ${windows.length} layers (${sliding.join(", ")}), full causal on the rest`;
}

async function backend() {
  return initBackend(program.opts().backend);
}

program
  .command("info")
  .description("show the tensor backend in use, its threads and memory")
  .option("--json", "machine-readable output")
  .action(async (o: { json?: boolean }) => {
    const info = await backend();
    const mem = memoryReport();
    const out = { backend: info.name, tfjsVersion: tf.version.tfjs, threads: info.threads, gpu: info.gpu, device: info.device, cpus: os.cpus().length, totalMemoryBytes: os.totalmem(), freeMemoryBytes: os.freemem(), rssBytes: mem.rssBytes, notes: info.notes };
    print(!!o.json, out, () =>
      [
        `backend:  ${info.name} (tfjs ${tf.version.tfjs})`,
        `threads:  ${info.threads} (of ${out.cpus} CPUs)`,
        `gpu:      ${info.gpu ? "yes" : "no"}${info.device ? ` (${info.device})` : ""}`,
        `memory:   ${mib(out.freeMemoryBytes)} free of ${mib(out.totalMemoryBytes)}; this process ${mib(mem.rssBytes)}`,
        ...info.notes.map((n) => `note:     ${n}`),
      ].join("\n"),
    );
  });

const model = program.command("model").description("pull and inspect models");
model
  .command("pull <repo>")
  .description("download a Hugging Face model (only the files kiln needs) into the local cache")
  .option("--revision <rev>", "branch, tag or commit", "main")
  .option("--cache-dir <dir>", "cache directory (default $KILN_CACHE or ~/.cache/kiln/hub)")
  .option("--json", "machine-readable output")
  .action(async (repo: string, o: { revision: string; cacheDir?: string; json?: boolean }) => {
    let last = "";
    const dir = await pullModel(repo, {
      revision: o.revision,
      cacheDir: o.cacheDir,
      onProgress: (e) => {
        if (o.json) return;
        const pct = e.totalBytes ? ` ${Math.floor((100 * e.bytes) / e.totalBytes)}%` : "";
        const line = `[${e.index + 1}/${e.count}] ${e.file}${pct}`;
        if (line !== last) process.stderr.write((process.stderr.isTTY ? "\r\x1b[K" : "") + line + (process.stderr.isTTY ? "" : "\n"));
        last = line;
      },
    });
    if (process.stderr.isTTY && !o.json) process.stderr.write("\n");
    const use = `${repo}${o.revision === "main" ? "" : `@${o.revision}`}`;
    print(!!o.json, { repo, dir, model: use }, () => `pulled ${repo} into ${dir}\nuse it as --model ${use}${o.cacheDir ? ` with KILN_CACHE=${o.cacheDir}` : ""} (or model: ${use} in an agent file)`);
  });

model
  .command("info [model]")
  .description("show a model's architecture and size (a directory, a pulled repo id, or the default model)")
  .option("--json", "machine-readable output")
  .action(async (spec: string | undefined, o: { json?: boolean }) => {
    await backend();
    const m = loadModel(resolveModelDir(spec));
    const c = m.config;
    const out = { dir: m.dir, ...c, parameters: parameterCount(c), chatTemplate: m.tokenizer.hasChatTemplate };
    print(!!o.json, out, () =>
      [
        `model:       ${m.dir}`,
        `arch:        ${c.architecture}`,
        `parameters:  ${(out.parameters / 1e6).toFixed(2)}M`,
        `shape:       hidden ${c.hiddenSize}, ${c.numLayers} layers, ${c.numHeads} heads / ${c.numKvHeads} KV heads, head_dim ${c.headDim}, FFN ${c.intermediateSize}`,
        `vocab:       ${c.vocabSize}${c.tieWordEmbeddings ? " (tied embeddings)" : ""}`,
        `positions:   ${c.maxPositions}, rope_theta ${c.ropeTheta}${c.ropeScaling ? " with llama3 scaling" : ""}`,
        `attention:   ${attentionSummary(c.slidingWindows)}`,
        `chat:        ${m.tokenizer.hasChatTemplate ? "chat template" : "no chat template (plain fallback)"}; end of turn ids ${m.eosTokenIds.join(", ")}`,
      ].join("\n"),
    );
    m.dispose();
  });

program
  .command("generate")
  .description("stream a reply from a model")
  .option("--model <dir>", "model directory or pulled repo id (default: the embedded model)")
  .option("--adapter <dir>", "a LoRA adapter to apply: a PEFT directory (such as kiln bake --out writes) or its adapter_model.safetensors")
  // required, but checked in the action: commander reports a missing required option before an
  // unknown one, so "--promt hi" would say "--prompt not specified" and never "did you mean --prompt?"
  .option("--prompt <text>", "the user message (required)")
  .option("--system <text>", "a system message")
  .option("--raw", "send the prompt as-is, without the chat template")
  .option("--max-tokens <n>", "most tokens to generate", integer(1), 128)
  .option("--temperature <t>", "0 for greedy", decimal(0), 0)
  .option("--top-k <k>", "keep the k likeliest tokens (0: all)", integer(0), 0)
  .option("--top-p <p>", "nucleus sampling (0: greedy)", decimal(0, 1), 1)
  .option("--seed <n>", "sampling seed", integer())
  .action(async (o: { model?: string; adapter?: string; prompt?: string; system?: string; raw?: boolean; maxTokens: number; temperature: number; topK: number; topP: number; seed?: number }) => {
    if (o.prompt === undefined) throw new Error("give the user message with --prompt <text>");
    await backend();
    const m = loadModel(resolveModelDir(o.model));
    // kiln knowledge verify names the weights file that answered: asking it again takes that path too
    const adapterDir = o.adapter && path.basename(o.adapter) === ADAPTER_WEIGHTS && statSync(o.adapter, { throwIfNoEntry: false })?.isFile() ? path.dirname(o.adapter) : o.adapter;
    const adapter = adapterDir ? loadAdapter(adapterDir, m.config, m.fingerprint) : undefined;
    const messages: ChatMessage[] = [...(o.system ? [{ role: "system" as const, content: o.system }] : []), { role: "user", content: o.prompt }];
    const ids = o.raw ? m.tokenizer.encode(o.prompt) : m.tokenizer.applyChatTemplate(messages);
    const controller = new AbortController();
    process.once("SIGINT", () => controller.abort());
    const it = streamGenerate(m, [ids], { maxTokens: o.maxTokens, temperature: o.temperature, topK: o.topK, topP: o.topP, seed: o.seed, signal: controller.signal, adapter });
    const started = performance.now();
    let visible = false;
    for (;;) {
      const r = await it.next();
      if (r.done) {
        const s = (performance.now() - started) / 1000;
        const n = r.value[0]!.tokens.length; // chunks are not tokens: the last may carry held-back text with the end-of-turn token
        process.stdout.write("\n");
        process.stderr.write(`[${n} tokens, ${(n / s).toFixed(1)} tok/s, ${r.value[0]!.finishReason}]\n`);
        break;
      }
      const text: string = visible || o.raw ? r.value.text : r.value.text.trimStart(); // as chat replies start: at the first visible character
      visible ||= text.length > 0;
      process.stdout.write(text);
    }
    adapter?.dispose();
    m.dispose();
  });

function readQuestions(file: string): string[] {
  if (!existsSync(file)) throw new Error(`${file}: no such questions file`);
  const text = readFileSync(file, "utf8");
  let questions: string[];
  if (file.endsWith(".json")) {
    let arr: unknown;
    try {
      arr = JSON.parse(text);
    } catch (err) {
      throw new Error(`${file}: not valid JSON (${(err as Error).message.split("\n")[0]}); give a JSON array of strings, or one question a line in a .txt file`);
    }
    if (!Array.isArray(arr) || !arr.every((q) => typeof q === "string")) throw new Error(`${file}: expected a JSON array of strings`);
    questions = arr.map((q) => q.trim()).filter(Boolean);
  } else {
    questions = text.split("\n").map((l) => l.trim()).filter(Boolean);
  }
  // an empty file would silently bake on questions the model writes, as if --questions were left out
  if (!questions.length) throw new Error(`${file} holds no questions (one a line, or a JSON array of strings); leave --questions out to have the model write them`);
  return questions;
}

program
  .command("bake")
  .description("bake a prompt into a LoRA adapter (PEFT directory) with the prompt-baking KL objective")
  .option("--model <dir>", "model directory or pulled repo id (default: the embedded model)")
  .option("--prompt <text>", "the prompt to bake (it fills the system slot of the teacher)")
  .option("--prompt-file <file>", "read the prompt from a file instead")
  .option("--questions <file>", "questions to sample replies for: one per line, or a JSON array (default: the model writes them)")
  .option("--out <dir>", "where to write the adapter (required; written atomically; a new folder, or an adapter with --force)")
  .option("--force", "replace the adapter already in --out")
  .option("--from <dir>", "start from this adapter, which is also the teacher's weights (a rolling bake)")
  .option("--trajectories <n>", "replies sampled from the teacher", integer(1, BAKE_LIMITS.trajectories), DEFAULT_BAKE.trajectories)
  .option("--temperature <t>", "sampling temperature for the teacher's replies", decimal(0, BAKE_LIMITS.temperature), DEFAULT_BAKE.temperature)
  .option("--max-reply-tokens <n>", "longest sampled reply", integer(1, BAKE_LIMITS.maxReplyTokens), DEFAULT_BAKE.maxReplyTokens)
  .option("--epochs <n>", "passes over the trajectories", integer(1, BAKE_LIMITS.epochs), DEFAULT_BAKE.epochs)
  .option("--batch <n>", "trajectories per step", integer(1, BAKE_LIMITS.batchSize), DEFAULT_BAKE.batchSize)
  .option("--lr <x>", "Adam learning rate", decimal(0, BAKE_LIMITS.learningRate, { above: true }), DEFAULT_BAKE.learningRate)
  .option("--rank <r>", "LoRA rank", integer(1, BAKE_LIMITS.rank), DEFAULT_BAKE.lora.r)
  .option("--alpha <a>", "LoRA alpha (scale alpha/r)", decimal(0, BAKE_LIMITS.alpha, { above: true }), DEFAULT_BAKE.lora.alpha)
  .option("--rslora", "scale by alpha/sqrt(r)")
  .option("--targets <list>", `comma-separated modules of ${LORA_TARGETS.join(",")}`, DEFAULT_BAKE.lora.targetModules.join(","))
  .addOption(new Option("--objective <name>", "forward: KL(teacher || student) on the teacher's replies; on-policy: KL(student || teacher) on the student's own, sampled again each epoch").choices(BAKE_OBJECTIVES).default(DEFAULT_BAKE.objective))
  .addOption(new Option("--kl <mode>", "KL over the full vocabulary or the teacher's top-K with a tail bucket (forward only)").choices(["full", "topk"]).default("full"))
  .option("--top-k <k>", "K for --kl topk", integer(1, BAKE_LIMITS.topK), 20)
  .option("--half-bake <fraction>", "stop when this share of the KL is gone", decimal(0, 1, { above: true }), 1)
  .option("--pursuit <rounds>", "prompt pursuit rounds", integer(1), 1)
  .option("--later-turns <share>", "share of trajectories asked as a later turn of a chat", decimal(0, 0.9), DEFAULT_BAKE.laterTurns)
  .option("--seed <n>", "seed", integer(), 1)
  .option("--json", "print the summary as JSON (progress still goes to stderr)")
  .option("--quiet", "no progress output")
  .action(async (o: Record<string, string | number | boolean | undefined>, cmd: Command) => {
    if (o.out === undefined) throw new Error("give the folder to write the adapter to with --out <dir>");
    // An adapter continued with --from keeps its own rank, scale and modules: say so rather than ignore them.
    const shape = ["rank", "alpha", "rslora", "targets"].filter((k) => cmd.getOptionValueSource(k) === "cli");
    if (o.from && shape.length) throw new Error(`${shape.map((k) => `--${k}`).join(", ")} shape a new adapter; the one --from continues keeps its own shape (leave them out)`);
    const modelDir = resolveModelDir(o.model as string | undefined);
    if (!o.prompt === !o.promptFile) throw new Error("give the prompt to bake with --prompt <text> or --prompt-file <file> (one of the two)");
    if (o.promptFile && !existsSync(o.promptFile as string)) throw new Error(`--prompt-file: ${o.promptFile} does not exist`);
    const prompt = o.promptFile ? readFileSync(o.promptFile as string, "utf8") : (o.prompt as string);
    if (!prompt.trim()) throw new Error("the prompt to bake is empty");
    checkAdapterTarget(o.out as string, !!o.force); // before the bake, not after minutes of it
    const targets = String(o.targets).split(",").map((t) => t.trim()) as LoraTarget[];
    for (const t of targets) if (!LORA_TARGETS.includes(t)) throw new Error(`--targets: ${t} is not one of ${LORA_TARGETS.join(", ")}`);
    // Without a file, the worker has the model write questions about each line of the prompt.
    const questions = o.questions ? readQuestions(o.questions as string) : [];
    const objective = o.objective as BakeSettings["objective"];
    const kl: BakeSettings["kl"] = o.kl === "topk" ? { kind: "topk", k: o.topK as number } : { kind: "full" };
    const problem = bakeSettingsProblem({ objective, kl });
    if (problem) throw new Error(`--objective ${objective} --kl ${o.kl}: ${problem}`);
    const reporter = bakeProgressReporter(!o.quiet);
    const summary = await runBake(
      {
        modelDir,
        prompt,
        questions,
        outDir: o.out as string,
        liveAdapterDir: o.from as string | undefined,
        startFromLive: !!o.from,
        backend: program.opts().backend,
        settings: {
          trajectories: o.trajectories as number,
          temperature: o.temperature as number,
          maxReplyTokens: o.maxReplyTokens as number,
          epochs: o.epochs as number,
          batchSize: o.batch as number,
          learningRate: o.lr as number,
          objective,
          kl,
          halfBake: o.halfBake as number,
          pursuitRounds: o.pursuit as number,
          laterTurns: o.laterTurns as number,
          seed: o.seed as number,
          lora: { r: o.rank as number, alpha: o.alpha as number, dropout: 0, useRslora: !!o.rslora, targetModules: targets },
        },
      },
      (p) => reporter.update(p),
    ).finally(() => reporter.stop());
    print(!!o.json, summary, () =>
      [
        `adapter:     ${summary.outDir}`,
        `trainable:   ${summary.trainableParameters.toLocaleString()} LoRA parameters`,
        `KL/token:    ${summary.initialValKl.toFixed(5)} -> ${summary.bestValKl.toFixed(5)} (validation, ${(summary.initialValKl / summary.bestValKl).toFixed(1)}x lower)`,
        `trained:     ${summary.trainedTokens} reply tokens from ${summary.trajectories} trajectories in ${summary.seconds.toFixed(1)}s (${summary.tokensPerSecond.toFixed(0)} tok/s), stopped by ${summary.stoppedBy}`,
      ].join("\n"),
    );
  });

registerAgentCommands(program);

program
  .command("serve")
  .description("serve the agents: OpenAI-compatible API, admin API, metrics and the web dashboard")
  .option("--agents <path>", "agent file or folder (default ./agents, else the bundled agents/)")
  .option("--checkpoints <dir>", "checkpoints root: each agent's state in <dir>/<name> (default: the package's checkpoints/; an agent file's home: takes precedence)")
  .option("--host <host>", "address to bind; anything but loopback needs --token", "127.0.0.1")
  .option("--port <n>", "port (0: any free one)", integer(0, 65535), 8080)
  // no commander default: --help would print the token that is in KILN_TOKEN
  .option("--token <token>", "bearer token for every API route (default: $KILN_TOKEN)")
  .option("--max-queue <n>", "requests waiting for the model before 429", integer(1), 16)
  .option("--grace <seconds>", "on SIGTERM/SIGINT, how long replies in flight may take to finish", decimal(0), DEFAULT_SHUTDOWN_GRACE_MS / 1000)
  .option("--prefix-cache-mb <n>", "KV caches each agent keeps so a chat's next turn prefills only what is new (0: none)", decimal(0), DEFAULT_PREFIX_CACHE_BYTES / 2 ** 20)
  .option("--batch <n>", "replies generated at once, decoded together in one forward pass per token (1: one at a time; default 16 on a GPU backend, else 1)", integer(1))
  .option("--no-schedules", "do not start the agents' feed and bake schedules")
  .action(async (o: { agents?: string; checkpoints?: string; host: string; port: number; token?: string; maxQueue: number; grace: number; prefixCacheMb: number; batch?: number; schedules: boolean }) => {
    // A long-lived server logs what nothing else caught rather than dying with every agent on it.
    process.on("unhandledRejection", (err) => process.stderr.write(`kiln: unhandled error (the server keeps running; please report it): ${(err as Error)?.stack ?? String(err)}\n`));
    const info = await backend();
    const batch = o.batch ?? defaultBatchRows(info);
    const runtime = await Runtime.fromFiles(o.agents ?? (existsSync("agents") ? "agents" : DEFAULT_AGENTS_DIR), {
      checkpoints: o.checkpoints,
      events: { onLog: (a, m) => process.stderr.write(`[${a}] ${m}\n`) },
      prefixCacheBytes: Math.round(o.prefixCacheMb * 2 ** 20),
      batchRows: batch,
    });
    // each of the --batch replies running at once joins its agent's batch
    const concurrent = concurrentReplies(batch, [...runtime.agents.values()].map((a) => a.model));
    const server = await createServer(runtime, {
      host: o.host,
      port: o.port,
      token: o.token ?? process.env.KILN_TOKEN,
      maxQueue: o.maxQueue,
      maxConcurrent: concurrent,
      shutdownGraceMs: o.grace * 1000,
    }).catch(async (err: Error) => {
      await runtime.stop(); // the agents' ledger locks go with it
      throw err;
    });
    if (o.schedules) runtime.start();
    process.stderr.write(`kiln serving ${[...runtime.agents.keys()].join(", ")} on ${server.url} (${info.name} backend${concurrent > 1 ? `, up to ${concurrent} replies decoded together` : batch > 1 ? ", one reply at a time: a model with sliding-window layers decodes each alone" : ""}); dashboard at ${server.url}/\n`);
    const stop = async () => {
      await server.close();
      await runtime.stop();
      process.exit(0);
    };
    process.once("SIGINT", () => void stop());
    process.once("SIGTERM", () => void stop());
  });

program
  .command("demo")
  .description("the whole loop offline on the embedded model: read a feed, bake it, answer from the weights")
  .option("--agent <file>", "agent file (default agents/demo.yaml)")
  .option("--home <dir>", "where the demo's ledger and checkpoints go (default: a new temp folder)")
  .option("--max-items <n>", "items to bake", integer(1))
  .action(async (o: { agent?: string; home?: string; maxItems?: number }) => {
    await runDemo({ agentFile: o.agent, home: o.home, backend: program.opts().backend, maxItems: o.maxItems });
  });

program.parseAsync().catch((err: Error) => {
  // one line, as promised: V8's JSON.parse errors quote the damaged text, line breaks and all
  process.stderr.write(`kiln: ${String(err.message).replace(/\s*[\r\n]+\s*/g, " ")}\n`);
  if (process.env.KILN_DEBUG) process.stderr.write(`${err.stack}\n`);
  process.exit(1);
});
