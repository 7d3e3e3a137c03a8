/**
 * pullModel / resolveCachedModel against a fake Hugging Face Hub on 127.0.0.1.
 *
 * The fake implements exactly the endpoints @huggingface/hub calls for a pull:
 *   GET  /api/models/{repo}/revision/{rev}?expand=...   modelInfo (commit sha)
 *   GET  /api/models/{repo}/tree/{rev}[/{path}]         listFiles
 *   GET  /{repo}/resolve/{rev}/{path}                   downloadFile: a "Range: bytes=0-0" probe
 *                                                       (needs 206 + Content-Range + ETag), then
 *                                                       the full body
 * Everything (repos, cache) lives in a temp dir, so nothing depends on where the compiled test runs.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { isRepoId, pullModel, resolveCachedModel, stallingFetch } from "../src/model/hub.js";
import { resolveModelDir } from "../src/model/resolve.js";

// ---------------------------------------------------------------------------------------------
// Fake repo contents

/** A valid safetensors file holding one F32 tensor "w" of the given values. */
function tinySafetensors(values: number[]): Buffer {
  const data = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => data.writeFloatLE(v, i * 4));
  let header = JSON.stringify({ w: { dtype: "F32", shape: [values.length], data_offsets: [0, data.length] } });
  header += " ".repeat((8 - (header.length % 8)) % 8); // the format pads the header to 8 bytes
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(header.length));
  return Buffer.concat([len, Buffer.from(header), data]);
}

const text = (s: string) => Buffer.from(s);
const json = (v: unknown) => Buffer.from(JSON.stringify(v, null, 2));

interface FakeFile {
  data: Buffer;
  /** Served as an LFS file: tree entry carries lfs.oid = sha256, as on the real Hub. */
  lfs?: boolean;
}
interface FakeRepo {
  sha: string;
  files: Record<string, FakeFile>;
  /** Requires "Authorization: Bearer <TOKEN>". */
  private?: boolean;
  /** Full GETs of these paths send half the body, then drop the connection (once each). */
  truncateOnce?: Set<string>;
  /** Full GETs of these paths send half the body, then nothing more, the connection left open (once each). */
  stallOnce?: Set<string>;
}

const TOKEN = "hf_kiln_test_token";
const sha1 = (b: Buffer | string) => createHash("sha1").update(b).digest("hex");
const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");
const gitOid = (b: Buffer) => sha1(Buffer.concat([Buffer.from(`blob ${b.length}\0`), b]));
const etagOf = (f: FakeFile) => (f.lfs ? sha256(f.data) : gitOid(f.data));

/** Files kiln needs, plus things it must never download. */
function tinyModelFiles(): Record<string, FakeFile> {
  return {
    "config.json": { data: json({ model_type: "llama", hidden_size: 2, num_hidden_layers: 1 }) },
    "generation_config.json": { data: json({ eos_token_id: 2 }) },
    "tokenizer.json": { data: json({ version: "1.0", model: { type: "BPE", vocab: { a: 0, b: 1 } } }) },
    "tokenizer_config.json": { data: json({ bos_token: "<s>", eos_token: "</s>" }) },
    "special_tokens_map.json": { data: json({ bos_token: "<s>" }) },
    "chat_template.jinja": { data: text("{% for m in messages %}{{ m.content }}{% endfor %}") },
    // the older file processors saved the template in; a tokenizer without one falls back to it
    "chat_template.json": { data: json({ chat_template: "{% for m in messages %}{{ m.content }}{% endfor %}" }) },
    "model.safetensors": { data: tinySafetensors([1, 2, 3, 4]), lfs: true },
    // Must be skipped:
    "pytorch_model.bin": { data: Buffer.alloc(64, 7), lfs: true },
    "model.gguf": { data: Buffer.alloc(32, 9), lfs: true },
    "onnx/model.onnx": { data: Buffer.alloc(48, 5), lfs: true },
    "README.md": { data: text("# tiny\n![arch](images/arch.png)\n") },
    "images/arch.png": { data: Buffer.from([0x89, 0x50, 0x4e, 0x47, 1, 2, 3]), lfs: true },
    ".gitattributes": { data: text("*.safetensors filter=lfs\n") },
  };
}
const NEEDED = [
  "chat_template.jinja",
  "chat_template.json",
  "config.json",
  "generation_config.json",
  "model.safetensors",
  "special_tokens_map.json",
  "tokenizer.json",
  "tokenizer_config.json",
];
const SKIPPED = ["pytorch_model.bin", "model.gguf", "onnx", "README.md", "images", ".gitattributes"];

// ---------------------------------------------------------------------------------------------
// Fake hub server

interface FakeHub {
  url: string;
  /** "METHOD /path?query" for every request seen. */
  requests: string[];
  close(): Promise<void>;
}

async function startHub(repos: Record<string, FakeRepo>): Promise<FakeHub> {
  const requests: string[] = [];

  function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) {
    res.writeHead(status, { "Content-Type": "application/json", ...headers });
    res.end(JSON.stringify(body));
  }

  function handle(req: IncomingMessage, res: ServerResponse) {
    requests.push(`${req.method} ${req.url}`);
    const url = new URL(req.url ?? "/", "http://x");
    const parts = url.pathname.split("/").filter(Boolean).map(decodeURIComponent);

    // /api/models/{o}/{n}/{revision|tree}/{rev}/... or /{o}/{n}/resolve/{rev}/...
    const api = parts[0] === "api" && parts[1] === "models";
    const [owner, name, kind, rev, ...rest] = api ? parts.slice(2) : parts;
    const repo = repos[`${owner}/${name}`];
    if (!repo) {
      return sendJson(res, 404, { error: "Repository not found" }, { "X-Error-Code": "RepoNotFound" });
    }
    if (repo.private && req.headers.authorization !== `Bearer ${TOKEN}`) {
      // The real Hub answers 401 (not 403) so it does not reveal that a private repo exists.
      return sendJson(res, 401, { error: "Invalid username or password." }, { "X-Error-Code": "RepoNotFound" });
    }
    if (rev !== "main" && rev !== "HEAD" && rev !== repo.sha) {
      return sendJson(res, 404, { error: `Invalid rev id: ${rev}` }, { "X-Error-Code": "RevisionNotFound" });
    }
    const path = rest.join("/");

    if (api && kind === "revision") {
      return sendJson(res, 200, { _id: "x", id: `${owner}/${name}`, sha: repo.sha, private: !!repo.private });
    }

    if (api && kind === "tree") {
      const recursive = url.searchParams.get("recursive") === "true";
      const prefix = path ? `${path}/` : "";
      const seen = new Set<string>();
      const entries: unknown[] = [];
      for (const [p, f] of Object.entries(repo.files)) {
        if (!p.startsWith(prefix)) continue;
        const sub = p.slice(prefix.length);
        if (!recursive && sub.includes("/")) {
          const dir = prefix + sub.split("/")[0];
          if (!seen.has(dir)) entries.push({ type: "directory", oid: sha1(dir), size: 0, path: dir });
          seen.add(dir);
          continue;
        }
        entries.push({
          type: "file",
          oid: gitOid(f.data),
          size: f.data.length,
          path: p,
          ...(f.lfs ? { lfs: { oid: sha256(f.data), size: f.data.length, pointerSize: 134 } } : {}),
        });
      }
      return sendJson(res, 200, entries);
    }

    if (!api && kind === "resolve") {
      const file = repo.files[path];
      if (!file) {
        return sendJson(res, 404, { error: "Entry not found" }, { "X-Error-Code": "EntryNotFound" });
      }
      const headers = {
        "Content-Type": "application/octet-stream",
        "Accept-Ranges": "bytes",
        ETag: `"${etagOf(file)}"`,
        "X-Repo-Commit": repo.sha,
      };
      const size = file.data.length;
      const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "");
      if (range) {
        const start = Number(range[1]);
        const end = range[2] ? Math.min(Number(range[2]), size - 1) : size - 1;
        res.writeHead(206, { ...headers, "Content-Range": `bytes ${start}-${end}/${size}`, "Content-Length": end - start + 1 });
        return res.end(req.method === "HEAD" ? undefined : file.data.subarray(start, end + 1));
      }
      res.writeHead(200, { ...headers, "Content-Length": size });
      if (req.method === "HEAD") return res.end();
      if (repo.stallOnce?.delete(path)) {
        res.write(file.data.subarray(0, Math.floor(size / 2)));
        return;
      }
      if (repo.truncateOnce?.delete(path)) {
        // Simulate a dropped connection mid-download.
        res.write(file.data.subarray(0, Math.floor(size / 2)), () => res.destroy());
        return;
      }
      return res.end(file.data);
    }

    sendJson(res, 404, { error: `fake hub: no route for ${req.method} ${url.pathname}` });
  }

  const server = createServer(handle);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections(); // fetch keeps connections alive
        server.close(() => resolve());
      }),
  };
}

function tempCache(): string {
  return mkdtempSync(join(tmpdir(), "kiln-hub-test-"));
}

/** Every file name under dir, recursively (blobs, snapshots, refs). */
function allFiles(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((d) => !d.isDirectory())
    .map((d) => join(d.parentPath ?? (d as unknown as { path: string }).path, d.name));
}

const SHA = "0123456789abcdef0123456789abcdef01234567";

// ---------------------------------------------------------------------------------------------

test("pullModel fetches only the files kiln needs, byte-identical, then resolves offline", async () => {
  const files = tinyModelFiles();
  const hub = await startHub({ "kiln-test/tiny": { sha: SHA, files } });
  const cacheDir = tempCache();
  try {
    const events: { file: string; bytes: number; totalBytes?: number; index: number; count: number }[] = [];
    const dir = await pullModel("kiln-test/tiny", { hubUrl: hub.url, cacheDir, onProgress: (e) => events.push(e) });

    // Library cache layout: models--owner--name/snapshots/<commit>.
    assert.equal(dir, join(cacheDir, "models--kiln-test--tiny", "snapshots", SHA));
    assert.deepEqual(readdirSync(dir).sort(), NEEDED);
    for (const name of NEEDED) {
      assert.ok(readFileSync(join(dir, name)).equals(files[name]!.data), `${name} differs`);
    }

    for (const skipped of SKIPPED) {
      const hits = hub.requests.filter((r) => r.includes(`/resolve/`) && r.includes(skipped));
      assert.deepEqual(hits, [], `requested ${skipped}`);
    }
    assert.equal(allFiles(cacheDir).filter((f) => f.endsWith(".incomplete")).length, 0);

    // Progress: every needed file ends with a complete event, indices cover 0..count-1.
    const finals = events.filter((e) => e.bytes === e.totalBytes);
    assert.deepEqual([...new Set(finals.map((e) => e.file))].sort(), NEEDED);
    assert.ok(events.every((e) => e.count === NEEDED.length));
    assert.deepEqual([...new Set(events.map((e) => e.index))].sort((a, b) => a - b), [...NEEDED.keys()]);
    const weights = finals.find((e) => e.file === "model.safetensors");
    assert.equal(weights?.totalBytes, files["model.safetensors"]!.data.length);

    // A second pull re-checks the Hub but downloads nothing.
    const before = hub.requests.length;
    assert.equal(await pullModel("kiln-test/tiny", { hubUrl: hub.url, cacheDir }), dir);
    assert.deepEqual(hub.requests.slice(before).filter((r) => r.includes("/resolve/")), []);

    // Offline from here on.
    await hub.close();
    assert.equal(resolveCachedModel("kiln-test/tiny", { cacheDir }), dir);
    assert.equal(resolveCachedModel("kiln-test/tiny", { cacheDir, revision: "main" }), dir);
    assert.equal(resolveCachedModel("kiln-test/tiny", { cacheDir, revision: SHA }), dir);
    assert.equal(resolveCachedModel("kiln-test/tiny", { cacheDir, revision: "dev" }), undefined);
    assert.equal(resolveCachedModel("kiln-test/other", { cacheDir }), undefined);
    // A pinned commit that is fully cached needs no network either.
    assert.equal(await pullModel("kiln-test/tiny", { hubUrl: hub.url, cacheDir, revision: SHA }), dir);
    // ...but a branch must be checked against the Hub, and the error says so.
    await assert.rejects(pullModel("kiln-test/tiny", { hubUrl: hub.url, cacheDir }), /kiln-test\/tiny/);

    // KILN_CACHE is the default cache root.
    process.env["KILN_CACHE"] = cacheDir;
    try {
      assert.equal(resolveCachedModel("kiln-test/tiny"), dir);
      // --model and agent files name a repo, or repo@revision
      assert.equal(resolveModelDir("kiln-test/tiny"), dir);
      assert.equal(resolveModelDir(`kiln-test/tiny@${SHA}`), dir);
      assert.equal(resolveModelDir("kiln-test/tiny@main"), dir);
      assert.throws(() => resolveModelDir("kiln-test/tiny@dev"), /kiln-test\/tiny@dev .* has not been pulled .* run: kiln model pull kiln-test\/tiny --revision dev/);
    } finally {
      delete process.env["KILN_CACHE"];
    }
  } finally {
    await hub.close();
    rmSync(cacheDir, { recursive: true, force: true });
  }
});

test("sharded checkpoints: the index and its shards are pulled", async () => {
  const shard1 = tinySafetensors([1, 2]);
  const shard2 = tinySafetensors([3, 4, 5]);
  const files: Record<string, FakeFile> = {
    "config.json": { data: json({ model_type: "llama" }) },
    "model.safetensors.index.json": {
      data: json({
        metadata: { total_size: 20 },
        weight_map: { a: "model-00001-of-00002.safetensors", b: "model-00002-of-00002.safetensors" },
      }),
    },
    "model-00001-of-00002.safetensors": { data: shard1, lfs: true },
    "model-00002-of-00002.safetensors": { data: shard2, lfs: true },
    "pytorch_model-00001-of-00002.bin": { data: Buffer.alloc(8), lfs: true },
  };
  const hub = await startHub({ "kiln-test/sharded": { sha: SHA, files } });
  const cacheDir = tempCache();
  try {
    const dir = await pullModel("kiln-test/sharded", { hubUrl: hub.url, cacheDir });
    assert.deepEqual(readdirSync(dir).sort(), [
      "config.json",
      "model-00001-of-00002.safetensors",
      "model-00002-of-00002.safetensors",
      "model.safetensors.index.json",
    ]);
    assert.ok(readFileSync(join(dir, "model-00002-of-00002.safetensors")).equals(shard2));
    assert.ok(!hub.requests.some((r) => r.includes(".bin")));
    assert.equal(resolveCachedModel("kiln-test/sharded", { cacheDir }), dir);
  } finally {
    await hub.close();
    rmSync(cacheDir, { recursive: true, force: true });
  }
});

test("an index that references a shard the repo lacks fails before downloading shards", async () => {
  const files: Record<string, FakeFile> = {
    "config.json": { data: json({}) },
    "model.safetensors.index.json": {
      data: json({ weight_map: { a: "model-00001-of-00002.safetensors", b: "model-00002-of-00002.safetensors" } }),
    },
    "model-00001-of-00002.safetensors": { data: tinySafetensors([1]), lfs: true },
  };
  const hub = await startHub({ "kiln-test/broken-index": { sha: SHA, files } });
  const cacheDir = tempCache();
  try {
    await assert.rejects(
      pullModel("kiln-test/broken-index", { hubUrl: hub.url, cacheDir }),
      (err: Error) => /kiln-test\/broken-index/.test(err.message) && /model-00002-of-00002/.test(err.message),
    );
    assert.ok(!hub.requests.some((r) => r.includes("/resolve/main/model-0000")));
    assert.equal(resolveCachedModel("kiln-test/broken-index", { cacheDir }), undefined);
  } finally {
    await hub.close();
    rmSync(cacheDir, { recursive: true, force: true });
  }
});

test("missing repo, missing weights, missing config and private repos give errors naming the repo", async () => {
  const files = tinyModelFiles();
  const binOnly = { ...files };
  delete binOnly["model.safetensors"];
  const noConfig = { ...files };
  delete noConfig["config.json"];
  const hub = await startHub({
    "kiln-test/bin-only": { sha: SHA, files: binOnly },
    "kiln-test/no-config": { sha: SHA, files: noConfig },
    "kiln-test/private": { sha: SHA, files, private: true },
  });
  const cacheDir = tempCache();
  const opts = { hubUrl: hub.url, cacheDir };
  try {
    await assert.rejects(
      pullModel("kiln-test/missing", opts),
      (err: Error) => /"kiln-test\/missing"/.test(err.message) && /not found/.test(err.message),
    );
    await assert.rejects(
      pullModel("kiln-test/bin-only", opts),
      (err: Error) =>
        /"kiln-test\/bin-only"/.test(err.message) &&
        /no safetensors weights/.test(err.message) &&
        /pytorch_model\.bin/.test(err.message),
    );
    await assert.rejects(
      pullModel("kiln-test/no-config", opts),
      (err: Error) => /"kiln-test\/no-config"/.test(err.message) && /config\.json/.test(err.message),
    );
    // Nothing was downloaded for repos we rejected.
    assert.deepEqual(hub.requests.filter((r) => r.includes("/resolve/")), []);
    assert.equal(resolveCachedModel("kiln-test/bin-only", { cacheDir }), undefined);

    await assert.rejects(
      pullModel("kiln-test/private", opts),
      (err: Error) => /"kiln-test\/private"/.test(err.message) && /401/.test(err.message) && /HF_TOKEN/.test(err.message),
    );
  } finally {
    await hub.close();
    rmSync(cacheDir, { recursive: true, force: true });
  }
});

test("HF_ENDPOINT and HF_TOKEN are the defaults for hub URL and token", async () => {
  const files = tinyModelFiles();
  const hub = await startHub({ "kiln-test/private": { sha: SHA, files, private: true } });
  const cacheDir = tempCache();
  const saved = { endpoint: process.env["HF_ENDPOINT"], token: process.env["HF_TOKEN"] };
  process.env["HF_ENDPOINT"] = hub.url + "/";
  process.env["HF_TOKEN"] = TOKEN;
  try {
    const dir = await pullModel("kiln-test/private", { cacheDir });
    assert.ok(readFileSync(join(dir, "model.safetensors")).equals(files["model.safetensors"]!.data));
  } finally {
    for (const [key, value] of [["HF_ENDPOINT", saved.endpoint], ["HF_TOKEN", saved.token]] as const) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
    await hub.close();
    rmSync(cacheDir, { recursive: true, force: true });
  }
});

test("an interrupted download leaves nothing that looks complete, and a retry succeeds", async () => {
  const files = tinyModelFiles();
  // Big enough that half of it is a real partial body.
  files["model.safetensors"] = { data: tinySafetensors(Array.from({ length: 50_000 }, (_, i) => i)), lfs: true };
  const repo: FakeRepo = { sha: SHA, files, truncateOnce: new Set(["model.safetensors"]) };
  const hub = await startHub({ "kiln-test/flaky": repo });
  const cacheDir = tempCache();
  try {
    await assert.rejects(pullModel("kiln-test/flaky", { hubUrl: hub.url, cacheDir }), /kiln-test\/flaky/);

    const snapshot = join(cacheDir, "models--kiln-test--flaky", "snapshots", SHA);
    assert.ok(!readdirSync(snapshot).includes("model.safetensors"));
    const blobs = readdirSync(join(cacheDir, "models--kiln-test--flaky", "blobs"));
    assert.ok(!blobs.includes(sha256(files["model.safetensors"]!.data)), "truncated blob was published");
    assert.deepEqual(blobs.filter((b) => b.endsWith(".incomplete")), [], "temp file left behind");
    assert.equal(resolveCachedModel("kiln-test/flaky", { cacheDir }), undefined);

    const dir = await pullModel("kiln-test/flaky", { hubUrl: hub.url, cacheDir });
    assert.ok(readFileSync(join(dir, "model.safetensors")).equals(files["model.safetensors"]!.data));
    assert.equal(resolveCachedModel("kiln-test/flaky", { cacheDir }), dir);
  } finally {
    await hub.close();
    rmSync(cacheDir, { recursive: true, force: true });
  }
});

test("a Hub that stops answering fails the pull naming what stalled, not waiting forever: no answer at all, a download whose bytes stop", async () => {
  // a server that takes the connection and never answers
  const silent = createServer(() => {});
  await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
  const cacheDir = tempCache();
  const files = tinyModelFiles();
  files["model.safetensors"] = { data: tinySafetensors(Array.from({ length: 50_000 }, (_, i) => i)), lfs: true };
  const hub = await startHub({ "kiln-test/stalls": { sha: SHA, files, stallOnce: new Set(["model.safetensors"]) } });
  try {
    const url = `http://127.0.0.1:${(silent.address() as AddressInfo).port}`;
    await assert.rejects(pullModel("kiln-test/tiny", { hubUrl: url, cacheDir, stallMs: 300 }), /Cannot pull "kiln-test\/tiny".*no answer from http:\/\/127\.0\.0\.1:\d+\/api\/models\/kiln-test\/tiny\S* for 0\.3 s: the Hub stalled/);
    await assert.rejects(pullModel("kiln-test/stalls", { hubUrl: hub.url, cacheDir, stallMs: 300 }), /Cannot pull "kiln-test\/stalls".*no bytes from \S*model\.safetensors for 0\.3 s: the Hub stalled/);
    // a download's pre-signed link is a credential: the error names the address without its query
    await assert.rejects(stallingFetch(fetch, 200)(`${url}/blob?X-Amz-Signature=s3cret`), (err: Error) => err.message.startsWith(`no answer from ${url}/blob for 0.2 s`) && !err.message.includes("s3cret"));
    const blobs = readdirSync(join(cacheDir, "models--kiln-test--stalls", "blobs"));
    assert.deepEqual(blobs.filter((b) => b.endsWith(".incomplete")), [], "temp file left behind");
    const dir = await pullModel("kiln-test/stalls", { hubUrl: hub.url, cacheDir, stallMs: 300 }); // resumed: the rest comes
    assert.ok(readFileSync(join(dir, "model.safetensors")).equals(files["model.safetensors"]!.data));
  } finally {
    silent.closeAllConnections();
    silent.close();
    await hub.close();
    rmSync(cacheDir, { recursive: true, force: true });
  }
});

test("isRepoId accepts owner/name but not local paths or other shapes", () => {
  assert.equal(isRepoId("Qwen/Qwen2.5-0.5B-Instruct"), true);
  assert.equal(isRepoId("meta-llama/Llama-3.2-1B"), true);
  for (const s of ["gpt2", "./models/x", "../x/y", "/abs/path", "a/b/c", "owner/", "owner/..", "C:/x", ""]) {
    assert.equal(isRepoId(s), false, s);
  }
  // An existing relative path wins over the repo reading.
  const cwd = process.cwd();
  const dir = tempCache();
  try {
    mkdirSync(join(dir, "owner", "name"), { recursive: true });
    process.chdir(dir);
    assert.equal(isRepoId("owner/name"), false);
    assert.equal(isRepoId("owner/other"), true);
  } finally {
    process.chdir(cwd);
    rmSync(dir, { recursive: true, force: true });
  }
});
