/**
 * Pulling kiln models from the Hugging Face Hub.
 *
 * We use @huggingface/hub for every HTTP exchange (modelInfo, listFiles, downloadFile — the last
 * one transparently handles plain, LFS and Xet-backed files) and we store files in the library's
 * own cache layout, so the cache is readable by `scanCacheDir` and shared in spirit with the
 * Python `huggingface_hub` cache:
 *
 *   <cacheDir>/models--<owner>--<name>/
 *     blobs/<etag>                        file contents, named by LFS sha256 or git blob oid
 *     snapshots/<commit>/<file>           symlink -> ../../blobs/<etag>
 *     refs/<revision>                     text file holding the commit the revision pointed to
 *
 * We do not call the library's `downloadFileToCacheDir`/`snapshotDownload` because:
 * - snapshotDownload fetches every file in the repo (pytorch .bin, onnx, gguf... gigabytes we
 *   never read);
 * - downloadFileToCacheDir gives no byte progress, does an extra paths-info request per file,
 *   and writes refs before the snapshot is complete (we write refs last, so a ref only ever
 *   points at a complete snapshot, which is what lets resolveCachedModel trust it offline).
 */
import { createWriteStream, existsSync, readFileSync, statSync } from "node:fs";
import { copyFile, mkdir, open, rename, rm, stat, symlink, writeFile } from "node:fs/promises";
import { createHash, randomBytes, type Hash } from "node:crypto";
import { homedir } from "node:os";
import { dirname, join, relative } from "node:path";
import { Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ReadableStream as NodeReadableStream } from "node:stream/web";
import {
  downloadFile,
  getRepoFolderName,
  HubApiError,
  listFiles,
  modelInfo,
  parseSafetensorsShardFilename,
  REGEX_COMMIT_HASH,
  SAFETENSORS_FILE,
  SAFETENSORS_INDEX_FILE,
  type ListFileEntry,
  type RepoId,
} from "@huggingface/hub";

export interface PullOptions {
  /** Branch, tag or commit hash. Default "main". */
  revision?: string;
  /** Cache root. Default: env KILN_CACHE, else ~/.cache/kiln/hub. */
  cacheDir?: string;
  /** Hub base URL. Default: env HF_ENDPOINT, else https://huggingface.co. */
  hubUrl?: string;
  /** Hub token ("hf_..."). Default: env HF_TOKEN. */
  accessToken?: string;
  /**
   * Called when a file starts (bytes 0), for every chunk received, and when it is complete
   * (bytes === totalBytes). Files already in the cache get a single completion event.
   * `index` is 0-based within the `count` files this pull needs.
   */
  onProgress?: (e: { file: string; bytes: number; totalBytes?: number; index: number; count: number }) => void;
  /** Custom fetch (proxy, tests). Default: global fetch. */
  fetch?: typeof fetch;
  /**
   * Milliseconds a request may wait for the Hub's answer, and a download for its next bytes, before
   * the pull gives up naming what stalled (a server that accepts and never answers held it forever).
   * Default 60,000.
   */
  stallMs?: number;
}

/**
 * `base`, giving up on a request whose answer, or whose body's next bytes, take longer than
 * `stallMs` (aborted with a "stalled" error the pull reports). A slow but moving download goes on.
 */
export function stallingFetch(base: typeof fetch, stallMs: number): typeof fetch {
  return async (input, init) => {
    const ctl = new AbortController();
    // without its query: a download's is a pre-signed CDN link (a read credential for a private repo)
    const what = (typeof input === "string" ? input : input instanceof URL ? input.href : input.url).split("?")[0];
    let timer: NodeJS.Timeout | undefined;
    const arm = (waiting: string) => {
      clearTimeout(timer);
      timer = setTimeout(() => ctl.abort(new Error(`${waiting} ${what} for ${stallMs / 1000} s: the Hub stalled (a network or proxy problem?); run the pull again to resume`)), stallMs);
      timer.unref();
    };
    // a failure ends the watch; where the watch aborted it, the failure is the stall it names
    const failed = (err: unknown) => {
      clearTimeout(timer);
      return ctl.signal.aborted ? ctl.signal.reason : err;
    };
    arm("no answer from");
    const res = await base(input, { ...init, signal: init?.signal ? AbortSignal.any([init.signal, ctl.signal]) : ctl.signal }).catch((err) => {
      throw failed(err);
    });
    if (!res.body) {
      clearTimeout(timer);
      return res;
    }
    arm("no bytes from");
    // the watch stops with the body: read to its end, cancelled (a probe's Range 0-0 answer) or failed
    const reader = res.body.getReader();
    const body = new ReadableStream<Uint8Array>({
      async pull(out) {
        try {
          const { done, value } = await reader.read();
          if (done) {
            clearTimeout(timer);
            out.close();
            return;
          }
          arm("no bytes from");
          out.enqueue(value);
        } catch (err) {
          throw failed(err);
        }
      },
      cancel(reason) {
        clearTimeout(timer);
        return reader.cancel(reason);
      },
    });
    const answer = new Response(body, { status: res.status, statusText: res.statusText, headers: res.headers });
    // (a Response made here has no url: the library reads where a redirect led)
    Object.defineProperties(answer, { url: { value: res.url }, redirected: { value: res.redirected } });
    return answer;
  };
}

/**
 * Non-weight files a kiln model may use; only config.json is mandatory. The chat template may be
 * in chat_template.jinja, tokenizer_config.json or (older processor repos) chat_template.json;
 * tokenizer.ts says which wins.
 */
const MODEL_METADATA_FILES = [
  "config.json",
  "generation_config.json",
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "chat_template.jinja",
  "chat_template.json",
] as const;

const DEFAULT_REVISION = "main";

function defaultCacheDir(): string {
  return process.env["KILN_CACHE"] || join(homedir(), ".cache", "kiln", "hub");
}

/** Env is read at call time (not import time) so a CLI or test can set it late. */
function defaultHubUrl(): string | undefined {
  const url = process.env["HF_ENDPOINT"];
  return url ? url.replace(/\/+$/, "") : undefined;
}

function modelRepo(repoId: string): RepoId {
  // Always hand the library an explicit RepoId: given a bare string it would reinterpret
  // "datasets/x" or "spaces/x/y" as other repo types.
  if (!isRepoIdForm(repoId)) {
    throw new Error(`"${repoId}" is not a Hugging Face model id of the form "owner/name"`);
  }
  return { type: "model", name: repoId };
}

function repoFolder(cacheDir: string, repoId: string): string {
  return join(cacheDir, getRepoFolderName(modelRepo(repoId)));
}

/** A shard of a sharded checkpoint: model-00001-of-00004.safetensors. */
function isModelShard(path: string): boolean {
  return !path.includes("/") && parseSafetensorsShardFilename(path)?.basePrefix === "model";
}

/** Each part: starts and ends alphanumeric, may contain "-", "_", "." (the Hub's own rule, roughly). */
const REPO_PART = /^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$/;

function isRepoIdForm(s: string): boolean {
  const parts = s.split("/");
  return parts.length === 2 && parts.every((p) => REPO_PART.test(p) && !p.includes(".."));
}

/**
 * True for "owner/name" strings that are not an existing local path, so a CLI argument like
 * "models/tiny" that exists on disk is treated as a directory, not a repo.
 */
export function isRepoId(s: string): boolean {
  return isRepoIdForm(s) && !existsSync(s);
}

/**
 * The repo id of a model pulled into a hub cache (<cache>/models--owner--name/snapshots/<commit>,
 * the layout getRepoFolderName names), else undefined: what other tools call the model.
 */
export function repoIdOfSnapshot(dir: string): string | undefined {
  const m = /(?:^|[\\/])models--([^\\/]+?)--([^\\/]+)[\\/]snapshots[\\/][^\\/]+[\\/]?$/.exec(dir);
  return m ? `${m[1]}/${m[2]}` : undefined;
}

// ---------------------------------------------------------------------------------------------
// Offline resolution

/** Weight files a snapshot dir needs to be usable, or undefined if it cannot tell (no weights). */
function requiredWeightFiles(dir: string): string[] | undefined {
  const indexPath = join(dir, SAFETENSORS_INDEX_FILE);
  if (existsSync(indexPath)) {
    const shards = weightMapFiles(readFileSync(indexPath, "utf8"));
    return shards && shards.length > 0 ? shards : undefined;
  }
  return existsSync(join(dir, SAFETENSORS_FILE)) ? [SAFETENSORS_FILE] : undefined;
}

function weightMapFiles(indexJson: string): string[] | undefined {
  try {
    const parsed = JSON.parse(indexJson) as { weight_map?: Record<string, unknown> };
    const files = Object.values(parsed.weight_map ?? {});
    return files.every((f) => typeof f === "string") ? [...new Set(files as string[])] : undefined;
  } catch {
    return undefined;
  }
}

function isCompleteSnapshot(dir: string): boolean {
  if (!isFile(join(dir, "config.json"))) return false;
  const weights = requiredWeightFiles(dir);
  return weights !== undefined && weights.every((f) => isFile(join(dir, f)));
}

function isFile(path: string): boolean {
  try {
    return statSync(path).isFile(); // follows the snapshot symlink to its blob
  } catch {
    return false;
  }
}

/**
 * Local directory of a model pulled earlier, or undefined. Never touches the network, so a kiln
 * run can start without connectivity once the model is cached.
 */
export function resolveCachedModel(
  repoId: string,
  opts: { cacheDir?: string; revision?: string } = {},
): string | undefined {
  if (!isRepoIdForm(repoId)) return undefined;
  const folder = repoFolder(opts.cacheDir ?? defaultCacheDir(), repoId);
  const revision = opts.revision ?? DEFAULT_REVISION;
  let commit: string;
  if (REGEX_COMMIT_HASH.test(revision)) {
    commit = revision;
  } else {
    try {
      commit = readFileSync(join(folder, "refs", revision), "utf8").trim();
    } catch {
      return undefined;
    }
  }
  const dir = join(folder, "snapshots", commit);
  // Refs are written only after a complete pull, but a commit-hash revision bypasses refs and a
  // user may have deleted blobs, so check anyway.
  return isCompleteSnapshot(dir) ? dir : undefined;
}

// ---------------------------------------------------------------------------------------------
// Pull

/** Decide which listed files to fetch, or throw naming what the repo lacks. */
function selectFiles(entries: ListFileEntry[]): ListFileEntry[] {
  const files = new Map(entries.filter((e) => e.type === "file").map((e) => [e.path, e]));

  if (!files.has("config.json")) {
    throw new Error("the repo has no config.json, so it is not a transformers model kiln can load");
  }

  const wanted: ListFileEntry[] = [];
  for (const name of MODEL_METADATA_FILES) {
    const entry = files.get(name);
    if (entry) wanted.push(entry);
  }

  // Weights last: metadata (and the shard index, which we validate) are small and fail fast.
  const index = files.get(SAFETENSORS_INDEX_FILE);
  const shards = [...files.values()].filter((e) => isModelShard(e.path));
  const single = files.get(SAFETENSORS_FILE);
  if (index && (shards.length > 0 || single)) {
    wanted.push(index, ...shards);
    // Some repos ship an index that maps everything to model.safetensors.
    if (single) wanted.push(single);
  } else if (single) {
    wanted.push(single);
  } else {
    const others = [...files.keys()].filter((p) => /\.(bin|pt|pth|gguf|onnx|h5|msgpack)$/.test(p));
    throw new Error(
      `the repo has no safetensors weights (expected ${SAFETENSORS_FILE}, or ${SAFETENSORS_INDEX_FILE} ` +
        `with model-*-of-*.safetensors shards)` +
        (others.length ? `; it only has ${others.join(", ")}, which kiln does not load` : ""),
    );
  }
  return wanted;
}

/** The cache's blob name, matching @huggingface/hub's downloadFileToCacheDir. */
function etagOf(entry: ListFileEntry): string {
  const etag = entry.lfs?.oid ?? entry.xetHash ?? entry.oid;
  if (!etag) throw new Error(`no oid for ${entry.path} in the repo listing`);
  return etag;
}

function sizeOf(entry: ListFileEntry): number {
  return entry.lfs?.size ?? entry.size;
}

/**
 * Expected digest of the content, so a corrupt or truncated download is never published:
 * LFS oids are sha256 of the content, plain git oids are sha1 of "blob <size>\0" + content.
 */
function contentHasher(entry: ListFileEntry): { hash: Hash; expected: string } | undefined {
  if (entry.lfs?.oid) return { hash: createHash("sha256"), expected: entry.lfs.oid };
  if (entry.oid && /^[0-9a-f]{40}$/.test(entry.oid) && !entry.xetHash) {
    const hash = createHash("sha1").update(`blob ${entry.size}\0`);
    return { hash, expected: entry.oid };
  }
  return undefined;
}

function tempName(path: string): string {
  // Unique per attempt so two concurrent pulls never write the same temp file.
  return `${path}.${process.pid}.${randomBytes(4).toString("hex")}.incomplete`;
}

/** Atomically point snapshots/<commit>/<file> at its blob (copy where symlinks are refused). */
async function publishPointer(blobPath: string, pointerPath: string): Promise<void> {
  await mkdir(dirname(pointerPath), { recursive: true });
  const tmp = tempName(pointerPath);
  try {
    await symlink(relative(dirname(pointerPath), blobPath), tmp);
  } catch {
    // Windows without developer mode cannot create symlinks.
    await copyFile(blobPath, tmp);
  }
  await rename(tmp, pointerPath);
}

async function writeFileAtomic(path: string, data: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const tmp = tempName(path);
  await writeFile(tmp, data);
  await rename(tmp, path);
}

/** Turn library/network errors into messages that name the repo and suggest the fix. */
function describeError(err: unknown, repoId: string, revision: string, hubUrl: string): Error {
  if (err instanceof HubApiError) {
    const status = err.statusCode;
    const hint =
      status === 404
        ? "not found (check the repo id and revision)"
        : status === 401
          ? "not found or private: unauthorized (401); if it exists, set HF_TOKEN to a token that can read it"
          : status === 403
            ? "access denied (403); the model may be gated: accept its terms on the Hub and set HF_TOKEN"
            : `request failed with HTTP ${status}`;
    return new Error(`Cannot pull "${repoId}" (revision "${revision}") from ${hubUrl}: ${hint}. ${err.message}`, {
      cause: err,
    });
  }
  let message = err instanceof Error ? err.message : String(err);
  // fetch() reports network failures as "fetch failed" with the useful part in `cause`.
  const cause = err instanceof Error ? err.cause : undefined;
  if (cause instanceof Error && !message.includes(cause.message)) message += ` (${cause.message})`;
  return new Error(`Cannot pull "${repoId}" (revision "${revision}") from ${hubUrl}: ${message}`, { cause: err });
}

/**
 * Download the files a kiln model needs from the Hub into the cache; returns the snapshot dir.
 * Safe to interrupt: each file is written to a temp name, verified, then renamed into place,
 * and the revision ref is only written once every file is present.
 */
export async function pullModel(repoId: string, opts: PullOptions = {}): Promise<string> {
  const revision = opts.revision ?? DEFAULT_REVISION;
  const cacheDir = opts.cacheDir ?? defaultCacheDir();
  const hubUrl = opts.hubUrl?.replace(/\/+$/, "") || defaultHubUrl();
  const accessToken = opts.accessToken ?? (process.env["HF_TOKEN"] || undefined);
  const repo = modelRepo(repoId);
  const common = { hubUrl, fetch: stallingFetch(opts.fetch ?? fetch, opts.stallMs ?? 60_000), ...(accessToken ? { accessToken } : {}) };
  const shownHub = hubUrl ?? "https://huggingface.co";

  // A commit hash never moves, so a complete cached snapshot can be used without asking the Hub.
  if (REGEX_COMMIT_HASH.test(revision)) {
    const cached = resolveCachedModel(repoId, { cacheDir, revision });
    if (cached) return cached;
  }

  const storage = repoFolder(cacheDir, repoId);
  try {
    // Pin the revision to one commit so every file comes from the same snapshot even if the
    // branch moves mid-pull; the commit also names the snapshot dir, as in the library's layout.
    const info = await modelInfo({ ...common, name: repo.name, revision, additionalFields: ["sha"] });
    const commit = info.sha;
    if (!commit || !REGEX_COMMIT_HASH.test(commit)) {
      throw new Error(`the Hub returned no commit hash for revision "${revision}"`);
    }

    // Only the repo root: every file kiln needs lives there, and skipping subfolders avoids
    // listing e.g. onnx/ or original/ checkpoints.
    const entries: ListFileEntry[] = [];
    for await (const entry of listFiles({ ...common, repo, revision: commit, recursive: false })) {
      entries.push(entry);
    }
    const wanted = selectFiles(entries);
    const snapshot = join(storage, "snapshots", commit);

    for (const [index, entry] of wanted.entries()) {
      const progress = (bytes: number) =>
        opts.onProgress?.({ file: entry.path, bytes, totalBytes: sizeOf(entry), index, count: wanted.length });
      await fetchIntoCache(repo, commit, entry, storage, snapshot, common, progress);

      if (entry.path === SAFETENSORS_INDEX_FILE) {
        // Check the index against the listing before spending time on multi-GB shards.
        const shards = weightMapFiles(readFileSync(join(snapshot, entry.path), "utf8"));
        const have = new Set(wanted.map((e) => e.path));
        if (!shards || shards.length === 0) {
          throw new Error(`${SAFETENSORS_INDEX_FILE} has no usable weight_map`);
        }
        const missing = shards.filter((s) => !have.has(s));
        if (missing.length > 0) {
          throw new Error(`${SAFETENSORS_INDEX_FILE} references ${missing.join(", ")}, which the repo does not have`);
        }
      }
    }

    if (revision !== commit) {
      await writeFileAtomic(join(storage, "refs", revision), commit);
    }
    return snapshot;
  } catch (err) {
    throw describeError(err, repoId, revision, shownHub);
  }
}

async function fetchIntoCache(
  repo: RepoId,
  commit: string,
  entry: ListFileEntry,
  storage: string,
  snapshot: string,
  common: { hubUrl?: string; fetch?: typeof fetch; accessToken?: string },
  progress: (bytes: number) => void,
): Promise<void> {
  const size = sizeOf(entry);
  const pointerPath = join(snapshot, entry.path);
  const blobPath = join(storage, "blobs", etagOf(entry));

  if (await hasSize(pointerPath, size)) {
    progress(size);
    return;
  }
  // The blob may already be here from another revision; just link it.
  if (await hasSize(blobPath, size)) {
    await publishPointer(blobPath, pointerPath);
    progress(size);
    return;
  }

  await mkdir(dirname(blobPath), { recursive: true });
  const tmp = tempName(blobPath);
  try {
    progress(0);
    const blob = await downloadFile({ ...common, repo, path: entry.path, revision: commit });
    if (!blob) throw new Error(`${entry.path} is listed but the Hub says it does not exist`);

    const check = contentHasher(entry);
    let bytes = 0;
    const meter = new Transform({
      transform(chunk: Buffer, _enc, done) {
        bytes += chunk.length;
        check?.hash.update(chunk);
        progress(bytes);
        done(null, chunk);
      },
    });
    await pipeline(Readable.fromWeb(blob.stream() as NodeReadableStream), meter, createWriteStream(tmp));

    if (bytes !== size) {
      throw new Error(`${entry.path}: received ${bytes} bytes, expected ${size} (download interrupted?)`);
    }
    if (check) {
      const actual = check.hash.digest("hex");
      if (actual !== check.expected) {
        throw new Error(`${entry.path}: content hash ${actual} does not match the Hub's ${check.expected}`);
      }
    }
    // Flush to disk before the rename, so a crash cannot leave a complete-looking empty blob.
    const fh = await open(tmp, "r+");
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, blobPath);
  } catch (err) {
    await rm(tmp, { force: true });
    // WebBlob.stream() aborts with the bare message string; keep errors as Errors.
    throw err instanceof Error ? err : new Error(`${entry.path}: ${String(err)}`);
  }
  await publishPointer(blobPath, pointerPath);
}

async function hasSize(path: string, size: number): Promise<boolean> {
  try {
    const s = await stat(path);
    return s.isFile() && s.size === size;
  } catch {
    return false;
  }
}
