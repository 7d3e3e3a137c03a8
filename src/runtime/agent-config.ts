// Agent definitions: YAML files in agents/, validated with errors that name the field.
import { readFileSync, existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { z } from "zod";
import { parse as parseYaml } from "yaml";
import cron from "node-cron";
import { LORA_TARGETS } from "../lora/adapter.js";
import { OPEN_QUESTIONS } from "../bake/probes.js";
import { BAKE_LIMITS, BAKE_OBJECTIVES, bakeSettingsProblem } from "../bake/trainer.js";
import { feedUrlKey } from "../feeds/feeds.js";

/**
 * Why `expr` cannot be one of an agent's cron schedules (`bake.schedule`, a feed's `schedule`), or
 * null. node-cron reads five fields (minute hour day-of-month month day-of-week) or six, the first
 * seconds; a schedule runs at most once a minute, so a seconds field names one second: "* * * * * *"
 * would poll a server, or start a bake, every second. `runs` says what the schedule does ("polls").
 */
export function cronScheduleProblem(expr: string, runs: string): string | null {
  const check = cron.validateDetailed(expr);
  if (!check.valid || !check.fields) {
    const why = check.errors.map((e) => e.message).join("; ") || "node-cron gives no reason";
    return `not a valid cron expression: ${why} (five fields, minute hour day-of-month month day-of-week, as "*/30 * * * *"; or six, the first seconds)`;
  }
  if (check.fields.second.length > 1) return `${runs} more than once a minute (the first of six fields is seconds: give it one number, or use five fields)`;
  return null;
}

const cronSchedule = (runs: string) =>
  z.string().superRefine((s, ctx) => {
    const problem = cronScheduleProblem(s, runs);
    if (problem) ctx.addIssue({ code: "custom", message: problem });
  });

/** Why `zone` is not a time zone this process knows (Intl's IANA names: Europe/Berlin, UTC), or null. */
function timeZoneProblem(zone: string): string | null {
  try {
    new Intl.DateTimeFormat("en-US", { timeZone: zone });
    return null;
  } catch {
    return `"${zone}" is not a time zone this server knows: give an IANA time zone name, as Europe/Berlin, America/New_York or UTC, or leave timezone out for the server's local time zone`;
  }
}

/** A whole number in [min, max], the range named in the error (zod's says only the side crossed). */
const wholeIn = (min: number, max: number) => {
  const message = `a whole number from ${min} to ${max}`;
  return z.number({ message }).int(message).min(min, message).max(max, message);
};

/** A number in [min, max], or in (min, max] with `above`, the range named in the error. */
const numberIn = (min: number, max: number, above = false) => {
  const message = above ? `a number above ${min}, at most ${max}` : `a number from ${min} to ${max}`;
  const n = z.number({ message });
  return (above ? n.gt(min, message) : n.min(min, message)).max(max, message);
};

/**
 * Upper bounds on an agent file's counts, far past what any agent has wanted, so a slip of the
 * keyboard is refused rather than run (bake.settings' are BAKE_LIMITS, shared with kiln bake).
 * A feed is polled at most once a minute, so it cannot change an item more than 1,440 times a
 * day; a bake carries at least 4 trajectories an item, so 512 items fill BAKE_LIMITS.trajectories.
 */
const AGENT_LIMITS = {
  feedItems: 1000,
  timeoutMs: 600_000,
  days: 3650,
  revisionsPerDay: 1440,
  bakeItems: BAKE_LIMITS.trajectories / 4,
  minPending: 10_000,
  probesPerItem: 20,
  maxAttempts: 100,
  rebuildRetries: 20,
  rebuildRetryMs: 86_400_000,
  chunkItems: 100,
  replay: 1000,
  retentionChecks: 10_000,
  keepVersions: 100,
} as const;

/** Agent names and feed ids are parts of the admin API's URL paths, and an agent's name its folder's. */
const safeName = z.string().regex(/^[a-z0-9][a-z0-9-_]*$/i, "letters, digits, - and _ only, starting with a letter or digit (it is part of the admin API's URLs)");

const BakeSettingsSchema = z
  .object({
    objective: z.enum(BAKE_OBJECTIVES),
    trajectories: wholeIn(1, BAKE_LIMITS.trajectories),
    temperature: numberIn(0, BAKE_LIMITS.temperature),
    maxReplyTokens: wholeIn(1, BAKE_LIMITS.maxReplyTokens),
    learningRate: numberIn(0, BAKE_LIMITS.learningRate, true),
    epochs: wholeIn(1, BAKE_LIMITS.epochs),
    batchSize: wholeIn(1, BAKE_LIMITS.batchSize),
    clipNorm: numberIn(0, BAKE_LIMITS.clipNorm),
    validationFraction: z.number().gt(0).lt(1),
    laterTurns: z.number().min(0).max(0.9),
    patience: wholeIn(1, BAKE_LIMITS.patience),
    // strict: {kind: full, k: 3} was taken with k dropped, as if the writer had not meant top-K
    kl: z.discriminatedUnion("kind", [z.object({ kind: z.literal("full") }).strict(), z.object({ kind: z.literal("topk"), k: wholeIn(1, BAKE_LIMITS.topK).default(20) }).strict()], {
      error: `must be {kind: full} (the default) or {kind: topk, k: 1 to ${BAKE_LIMITS.topK}} (k: 20 when left out)`,
    }),
    seed: z.number().int(),
    lora: z
      .object({
        r: wholeIn(1, BAKE_LIMITS.rank),
        alpha: numberIn(0, BAKE_LIMITS.alpha, true),
        dropout: z.number().min(0).lt(1),
        useRslora: z.boolean(),
        targetModules: z.array(z.enum(LORA_TARGETS)).min(1),
      })
      .partial()
      .strict(),
  })
  .partial()
  .strict()
  .superRefine((s, ctx) => {
    const problem = bakeSettingsProblem(s);
    if (problem) ctx.addIssue({ code: "custom", message: problem });
  });

export const AgentConfigSchema = z
  .object({
    name: safeName,
    description: z.string().optional(),
    /** "default" (the embedded model), a directory (relative to the agent file) or a pulled repo id */
    model: z.string().default("default"),
    /** the IANA time zone the agent's cron schedules (feed polls, bakes) are read in; default: the server's local one */
    timezone: z
      .string({ message: "an IANA time zone name, as Europe/Berlin or UTC (left out: the server's local time zone)" })
      .superRefine((zone, ctx) => {
        const problem = timeZoneProblem(zone);
        if (problem) ctx.addIssue({ code: "custom", message: problem });
      })
      .optional(),
    persona: z
      .object({
        text: z.string().min(1),
        /** a sign-off every reply should end with; lets kiln measure persona adherence */
        suffix: z.string().min(1).optional(),
      })
      .strict()
      .optional(),
    feeds: z
      .array(
        z
          .object({
            id: safeName,
            url: z.string().min(1),
            schedule: cronSchedule("polls").default("*/30 * * * *"),
            maxItems: wholeIn(1, AGENT_LIMITS.feedItems).default(50),
            timeoutMs: wholeIn(1, AGENT_LIMITS.timeoutMs).default(15000),
            /** items dated more than this many days before a poll are skipped (undated ones are kept) */
            maxAgeDays: numberIn(0, AGENT_LIMITS.days, true).optional(),
            /** changes of one item's text taken in any 24 hours; a change is taken once it holds for a poll */
            maxRevisionsPerDay: wholeIn(1, AGENT_LIMITS.revisionsPerDay).default(3),
          })
          .strict(),
      )
      .default([]),
    bake: z
      .object({
        /** when bakes start on their own (none without it: only on demand) */
        schedule: cronSchedule("bakes").optional(),
        /** do not bake until this many items are pending */
        minPending: wholeIn(1, AGENT_LIMITS.minPending).default(1),
        /** most pending items per bake (the rest wait for the next one) */
        maxItems: wholeIn(1, AGENT_LIMITS.bakeItems).default(20),
        probesPerItem: wholeIn(1, AGENT_LIMITS.probesPerItem).default(2),
        /**
         * an item none of whose probe questions passes the checks (src/bake/probes.ts) is rejected
         * unbaked; false keeps its first question unchecked (absorption is then unproven)
         */
        checkProbes: z.boolean().default(true),
        /** bakes an item may go through without being absorbed before it is rejected */
        maxAttempts: wholeIn(1, AGENT_LIMITS.maxAttempts).default(3),
        /**
         * A retraction's rebuild that failed (a write error, a worker that died) is tried again by
         * itself this many times, the first after rebuildRetryMs and each next one after twice as
         * long as the last; then it is left to the next retraction, which carries it on.
         */
        rebuildRetries: wholeIn(0, AGENT_LIMITS.rebuildRetries).default(4),
        rebuildRetryMs: wholeIn(10, AGENT_LIMITS.rebuildRetryMs).default(60_000),
        /**
         * The teacher: "base" (the base model with the prompt) or "live" (the live weights with
         * it). Live weights answer from what they hold over what the prompt says, so news that
         * updates a baked fact would be taught with the old value.
         */
        teacher: z.enum(["base", "live"]).default("base"),
        /** ask, when a bake starts, whether new items update ones the agent knows; the older is superseded */
        checkUpdates: z.boolean().default(true),
        /** items per teacher prompt (0 = all in one prompt): small models read a few lines far better than many */
        chunkItems: wholeIn(0, AGENT_LIMITS.chunkItems).default(4),
        /** asked in bakes beside the items' questions; persona adherence is measured on them */
        openQuestions: z
          .array(z.string().refine((q) => q.trim() !== "", { message: "an empty question: write one, or leave openQuestions out for the defaults" }))
          .min(1, "at least one question (persona adherence is measured on them); leave openQuestions out for the defaults (to not gate on persona, set gate.minPersona: 0)")
          .default(OPEN_QUESTIONS),
        settings: BakeSettingsSchema.default({}),
      })
      .strict()
      .default({ minPending: 1, maxItems: 20, probesPerItem: 2, checkProbes: true, maxAttempts: 3, rebuildRetries: 4, rebuildRetryMs: 60_000, teacher: "base", checkUpdates: true, chunkItems: 4, openQuestions: OPEN_QUESTIONS, settings: {} }),
    gate: z
      .object({
        minAbsorption: z.number().min(0).max(1).default(0.6),
        minRetention: z.number().min(0).max(1).default(0.6),
        minPersona: z.number().min(0).max(1).default(0.8),
        /** an item counts as absorbed when this share of its probes pass unprompted */
        itemPass: z.number().min(0).max(1).default(0.5),
      })
      .strict()
      .default({ minAbsorption: 0.6, minRetention: 0.6, minPersona: 0.8, itemPass: 0.5 }),
    /** how facts users state are captured: by the model (rules when it finds nothing), by rules only, or not at all */
    capture: z.enum(["model", "rules", "off"]).default("model"),
    /**
     * what a "forget ..." in chat may retract: any item (all: a one-user agent, its news too), or
     * only facts told in the same conversation (conversation: on a server many users talk to, one
     * user cannot retract the news or another user's facts, each retraction a rebuild)
     */
    chatForget: z.enum(["all", "conversation"]).default("all"),
    /** absorbed items replayed into each bake so old knowledge is kept */
    replay: wholeIn(0, AGENT_LIMITS.replay).default(20),
    /**
     * absorbed items, not replayed, that a bake checks for retention (those checked longest ago
     * first); the others are carried over unchecked, so a bake's cost does not grow with all it
     * knows (kiln knowledge verify checks everything)
     */
    retentionChecks: wholeIn(0, AGENT_LIMITS.retentionChecks).default(40),
    /**
     * feed items whose news (the feed's date, else when stored) is older than this many days are
     * expired when a bake starts: no longer baked, replayed or checked, so a news agent works on a
     * window of recent news and what it keeps stays bounded (default: kept for good)
     */
    forgetNewsAfterDays: numberIn(0, AGENT_LIMITS.days, true).optional(),
    /** versions kept on disk besides the live one (for rollback) */
    keepVersions: wholeIn(1, AGENT_LIMITS.keepVersions).default(5),
    /** where the ledger and checkpoints live (relative to the agent file); default checkpoints/<name> */
    home: z.string().optional(),
  })
  .strict();

export type AgentConfig = z.infer<typeof AgentConfigSchema> & { file?: string; homeDir: string; feedsBase: string };

export class AgentConfigError extends Error {
  constructor(where: string, problem: string) {
    super(`${where}: ${problem}`);
    this.name = "AgentConfigError";
  }
}

/** Validates a parsed agent definition; `baseDir` resolves relative paths (the agent file's folder). */
export function parseAgentConfig(raw: unknown, where: string, baseDir: string, checkpointsRoot: string): AgentConfig {
  if (raw === null || raw === undefined) throw new AgentConfigError(where, "is empty: an agent file needs at least a name: (see agents/demo.yaml)");
  // `feeds:` with every entry commented out reads as null: no feeds, as a missing key
  if (typeof raw === "object" && !Array.isArray(raw) && (raw as Record<string, unknown>).feeds === null) raw = { ...(raw as Record<string, unknown>), feeds: [] };
  const parsed = AgentConfigSchema.safeParse(raw);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; ");
    throw new AgentConfigError(where, problems);
  }
  const c = parsed.data;
  const ids = new Map<string, number>();
  const urls = new Map<string, number>();
  c.feeds.forEach((f, i) => {
    const first = ids.get(f.id);
    if (first !== undefined) throw new AgentConfigError(where, `feeds.${i}.id: "${f.id}" is already the id of feeds.${first}`);
    ids.set(f.id, i);
    f.url = resolveFeedUrl(f.url, baseDir, (problem) => new AgentConfigError(where, `feeds.${i}.url: ${problem}`));
    // Two ids for one URL would be one feed polled twice, the ledger's poll state (and, on a
    // rename, its items) going to whichever came first; compared as polled (resolveFeedUrl, then
    // feedUrlKey: "https://example.com/rss#latest" asks for https://example.com/rss).
    const key = feedUrlKey(f.url);
    const same = urls.get(key);
    if (same !== undefined) {
      const first = c.feeds[same]!;
      const what = first.url === f.url ? `is already the url of feeds.${same} (id ${first.id})` : `is the url of feeds.${same} (id ${first.id}, "${first.url}") but for its #fragment, which a poll never sends`;
      throw new AgentConfigError(where, `feeds.${i}.url: "${f.url}" ${what}; feed ${f.id} would poll the same feed: keep one of them`);
    }
    urls.set(key, i);
  });
  const homeDir = c.home ? path.resolve(baseDir, c.home) : path.join(checkpointsRoot, c.name);
  return { ...c, homeDir, feedsBase: baseDir };
}

/**
 * Why two of `feeds` are one feed by where the other moved for good, or null: `records` are the
 * agent's feed records (its ledger's, named `ledgerFile`), and a record's movedTo is where polls
 * of its URL go now (FeedState.movedTo), so a feed at that address beside the one at the old
 * address would poll one feed twice. Only the ledger knows of a move, and reading an agent file
 * asks no server: this is asked when the agent opens its ledger, not when the file is read.
 * `edited`: one of the two has no record yet, so the agent file was changed to poll it (refused);
 * otherwise both were polled before the server moved one onto the other, which no edit caused
 * and which must not keep the agent from starting (a warning).
 */
export function movedFeedProblem(
  feeds: readonly { id: string; url: string }[],
  records: readonly { id: string; url: string; movedTo?: string }[],
  ledgerFile: string,
): { problem: string; edited: boolean } | null {
  const at = new Map(feeds.map((f, i) => [feedUrlKey(f.url), i]));
  const recorded = (f: { id: string; url: string }) => records.some((r) => r.id === f.id && feedUrlKey(r.url) === feedUrlKey(f.url));
  for (const r of records) {
    if (!r.movedTo) continue;
    const from = at.get(feedUrlKey(r.url));
    const to = at.get(feedUrlKey(r.movedTo));
    if (from === undefined || to === undefined || from === to) continue;
    const [old, now] = [feeds[from]!, feeds[to]!];
    const problem =
      `feeds.${to}.url: "${now.url}" is where feeds.${from}'s url "${old.url}" (id ${old.id}) has moved for good (a 301/308 redirect, as ${ledgerFile} records); ` +
      `feed ${now.id} would poll the same feed: keep one of them (to follow the move, give ${old.id} the new url and remove ${now.id})`;
    return { problem, edited: !recorded(old) || !recorded(now) };
  }
  return null;
}

/**
 * An http(s) URL as written, or the absolute path of a local feed (relative paths are relative to
 * the agent file's folder). A mistyped URL is refused here, naming the field, rather than read as a
 * relative file name that fails at every poll with "no such file".
 */
function resolveFeedUrl(raw: string, baseDir: string, error: (problem: string) => Error): string {
  const url = raw.trim();
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):/.exec(url)?.[1]?.toLowerCase();
  if (scheme === "http" || scheme === "https") {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      throw error(`"${url}" is not a valid URL`);
    }
    if (!parsed.hostname) throw error(`"${url}" names no host`);
    return parsed.href;
  }
  if (scheme === "file") {
    try {
      return fileURLToPath(url); // decodes %20 and friends, refuses a host
    } catch (err) {
      throw error(`"${url}" is not a usable file URL (${(err as Error).message}); write a path relative to the agent file instead`);
    }
  }
  // A scheme, unless it is a Windows drive letter ("C:\\feeds\\x.xml").
  if (scheme && !/^[A-Za-z]:[\\/]/.test(url)) {
    throw error(`unsupported scheme "${scheme}:" in "${url}" (a feed is an http(s) URL, a file:// URL, or a path relative to the agent file)`);
  }
  return path.resolve(baseDir, url);
}

export function loadAgentConfig(file: string, checkpointsRoot: string): AgentConfig {
  if (!existsSync(file)) throw new AgentConfigError(file, "no such agent file");
  let raw: unknown;
  try {
    raw = parseYaml(readFileSync(file, "utf8"));
  } catch (err) {
    throw new AgentConfigError(file, `is not valid YAML (${(err as Error).message.split("\n")[0]!.replace(/:$/, "")})`);
  }
  return { ...parseAgentConfig(raw, file, path.dirname(path.resolve(file)), checkpointsRoot), file: path.resolve(file) };
}
