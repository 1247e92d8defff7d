// The Hub download client against the fake hub on 127.0.0.1: real HTTP, real files.
// Over 400 lines: one fake hub started once for every download case (resume, verify, errors, cache layout).
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { downloadModel, downloadRepoFile } from "../../src/hub/download";
import { HubError } from "../../src/hub/errors";
import { ProgressRenderer } from "../../src/hub/progress";
import { type FakeHub, startFakeHub } from "../support/fake-hub";
import { FAST_RETRY, MODEL_FILES, makeModelFolder, tempDir } from "./hub-fixtures";

const REPO = "test-org/tiny-llama-4bit";
const PRIVATE = "test-org/private-model";
const GATED = "test-org/gated-model";
const GGUF_REPO = "test-org/tiny-gguf";
const TOKEN = "hf_test_token_123";
const SHARD1 = "model-00001-of-00002.safetensors";
const SHARD2 = "model-00002-of-00002.safetensors";

let hub: FakeHub;
let source: ReturnType<typeof tempDir>;
let files: Record<string, Buffer>;
let home: ReturnType<typeof tempDir>;
let ggufBytes: Buffer;

const sha256 = (data: Buffer) => createHash("sha256").update(data).digest("hex");

function env(extra: Record<string, string> = {}): Record<string, string> {
  return { HOME: home.path, HF_HOME: join(home.path, "hf"), HF_ENDPOINT: hub.url, ...extra };
}

const repoDir = (repoId: string) => join(home.path, "hf", "hub", `models--${repoId.replace("/", "--")}`);

async function caught(promise: Promise<unknown>): Promise<HubError> {
  try {
    await promise;
  } catch (e) {
    if (e instanceof HubError) return e;
    throw e;
  }
  throw new Error("expected a HubError");
}

beforeAll(async () => {
  source = tempDir("hub-src");
  files = makeModelFolder(source.path);
  ggufBytes = Buffer.from(new Uint8Array(120_000).map((_, i) => (i * 7) % 256));
  hub = await startFakeHub({
    token: TOKEN,
    repos: {
      [REPO]: { dir: source.path },
      [PRIVATE]: { dir: source.path, private: true },
      [GATED]: { dir: source.path, gated: true },
      [GGUF_REPO]: { files: { "tiny.Q4_0.gguf": ggufBytes, "empty.gguf": "", "README.md": "# gguf\n" } },
    },
  });
});

afterAll(async () => {
  await hub.stop();
  source.cleanup();
});

beforeEach(() => {
  home = tempDir("hub-home");
  hub.reset();
});

afterEach(() => home.cleanup());

describe("downloadModel", () => {
  test("downloads the model files into the standard cache layout", async () => {
    const snap = await downloadModel(REPO, { env: env({ HF_TOKEN: TOKEN }), retry: FAST_RETRY });
    const commit = hub.commitOf(REPO);
    expect(snap.commit).toBe(commit);
    expect(snap.source).toBe("network");
    expect(snap.dir).toBe(join(repoDir(REPO), "snapshots", commit));
    expect(snap.files.map((f) => f.filename).sort()).toEqual(MODEL_FILES);
    expect(snap.files.every((f) => f.downloaded)).toBe(true);

    // Skipped: other weight formats, a shard the index does not name, docs.
    expect(readdirSync(snap.dir).sort()).toEqual(MODEL_FILES);
    for (const name of MODEL_FILES) {
      const link = join(snap.dir, name);
      expect(lstatSync(link).isSymbolicLink()).toBe(true);
      const info = hub.file(REPO, name);
      const etag = info.lfs ? info.sha256 : info.gitOid;
      // The same relative link huggingface_hub makes, so Python tools reuse the files.
      expect(readlinkSync(link)).toBe(`../../blobs/${etag}`);
      expect(readFileSync(link).equals(files[name]!)).toBe(true);
    }
    expect(readFileSync(join(repoDir(REPO), "refs", "main"), "utf8")).toBe(commit);
    expect(readdirSync(join(repoDir(REPO), "blobs")).filter((f) => f.endsWith(".incomplete"))).toEqual([]);
    expect(snap.downloadedBytes).toBe(MODEL_FILES.reduce((n, f) => n + files[f]!.length, 0));

    // LFS files came from the CDN, which never saw the token; the Hub did.
    expect(hub.count({ server: "cdn", method: "GET", path: SHARD1 }) + hub.count({ server: "cdn" })).toBeGreaterThan(0);
    expect(hub.requests.filter((r) => r.server === "cdn").every((r) => r.authorization === null)).toBe(true);
    expect(hub.requests.filter((r) => r.server === "hub").every((r) => r.authorization === `Bearer ${TOKEN}`)).toBe(
      true,
    );
    expect(hub.count({ path: "pytorch_model.bin" })).toBe(0);
    expect(hub.count({ path: "consolidated.safetensors" })).toBe(0);
  });

  test("reuses the cache: a second run makes one API request and downloads nothing", async () => {
    await downloadModel(REPO, { env: env(), retry: FAST_RETRY });
    hub.clearLog();
    const again = await downloadModel(REPO, { env: env(), retry: FAST_RETRY });
    expect(again.files.every((f) => !f.downloaded)).toBe(true);
    expect(again.downloadedBytes).toBe(0);
    expect(hub.requests.map((r) => `${r.method} ${r.path}`)).toEqual([`GET /api/models/${REPO}/revision/main`]);
  });

  test("reuses blobs already in the cache when only the snapshot link is missing", async () => {
    const first = await downloadModel(REPO, { env: env(), retry: FAST_RETRY });
    rmSync(join(first.dir, SHARD1));
    hub.clearLog();
    const again = await downloadModel(REPO, { env: env(), retry: FAST_RETRY });
    expect(hub.count({ method: "HEAD", path: SHARD1 })).toBe(1);
    expect(hub.count({ method: "GET", path: SHARD1 })).toBe(0);
    expect(hub.count({ server: "cdn" })).toBe(0);
    expect(readFileSync(join(again.dir, SHARD1)).equals(files[SHARD1]!)).toBe(true);
  });

  test("resumes an interrupted transfer on the next run with a Range request", async () => {
    const shardSha = hub.file(REPO, SHARD1).sha256;
    hub.cutAfter(REPO, SHARD1, 100_000);
    const error = await caught(downloadModel(REPO, { env: env(), retry: { retries: 0 } }));
    expect(error.code).toBe("network");
    expect(error.message).toContain("connection closed after 100000 of 300000 bytes");
    const partial = join(repoDir(REPO), "blobs", `${shardSha}.incomplete`);
    expect(statSync(partial).size).toBe(100_000);
    expect(existsSync(join(repoDir(REPO), "snapshots"))).toBe(false);

    hub.clearLog();
    const snap = await downloadModel(REPO, { env: env(), retry: { retries: 0 } });
    const shardRequests = hub.requests.filter((r) => r.server === "cdn" && r.path.endsWith(shardSha));
    expect(shardRequests.map((r) => r.range)).toEqual(["bytes=100000-"]);
    expect(sha256(readFileSync(join(snap.dir, SHARD1)))).toBe(shardSha);
    expect(existsSync(partial)).toBe(false);
  });

  test("resumes within one run when the connection drops, after a retry", async () => {
    hub.cutAfter(REPO, SHARD2, 64_000);
    const snap = await downloadModel(REPO, { env: env(), retry: FAST_RETRY });
    const sha = hub.file(REPO, SHARD2).sha256;
    const ranges = hub.requests.filter((r) => r.server === "cdn" && r.path.endsWith(sha)).map((r) => r.range);
    expect(ranges).toEqual([null, "bytes=64000-"]);
    expect(sha256(readFileSync(join(snap.dir, SHARD2)))).toBe(sha);
  });

  test("a transfer that goes quiet is abandoned after the stall timeout and resumed", async () => {
    hub.stallAfter(REPO, SHARD1, 30_000);
    const started = performance.now();
    const snap = await downloadModel(REPO, { env: env(), retry: FAST_RETRY, stallTimeoutMs: 300 });
    expect(performance.now() - started).toBeGreaterThanOrEqual(300);
    const sha = hub.file(REPO, SHARD1).sha256;
    const ranges = hub.requests.filter((r) => r.server === "cdn" && r.path.endsWith(sha)).map((r) => r.range);
    expect(ranges).toEqual([null, "bytes=30000-"]);
    expect(sha256(readFileSync(join(snap.dir, SHARD1)))).toBe(sha);
  });

  test("an abort signal stops the download and keeps the partial file for later", async () => {
    hub.stallAfter(REPO, SHARD1, 30_000);
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error("user cancelled")), 200);
    const result = await downloadModel(REPO, { env: env(), retry: FAST_RETRY, signal: controller.signal }).catch(
      (e: Error) => e,
    );
    expect(result).toBeInstanceOf(Error);
    expect((result as Error).message).toBe("user cancelled");
    const sha = hub.file(REPO, SHARD1).sha256;
    expect(statSync(join(repoDir(REPO), "blobs", `${sha}.incomplete`)).size).toBe(30_000);
  });

  test("detects a corrupt LFS file by its sha256 and fetches it again from the start", async () => {
    hub.corruptOnce(REPO, SHARD2);
    const snap = await downloadModel(REPO, { env: env(), retry: FAST_RETRY });
    const sha = hub.file(REPO, SHARD2).sha256;
    const gets = hub.requests.filter((r) => r.server === "cdn" && r.path.endsWith(sha));
    expect(gets.map((r) => r.range)).toEqual([null, null]);
    expect(sha256(readFileSync(join(snap.dir, SHARD2)))).toBe(sha);
  });

  test("detects a corrupt regular file by its git sha1 and fetches it again", async () => {
    hub.corruptOnce(REPO, "tokenizer.json");
    const snap = await downloadModel(REPO, { env: env(), retry: FAST_RETRY });
    expect(hub.count({ method: "GET", path: `/resolve/${hub.commitOf(REPO)}/tokenizer.json` })).toBe(2);
    expect(readFileSync(join(snap.dir, "tokenizer.json")).equals(files["tokenizer.json"]!)).toBe(true);
  });

  test("fails clearly when the file stays corrupt, leaving nothing behind", async () => {
    hub.corruptOnce(REPO, SHARD1);
    const error = await caught(downloadModel(REPO, { env: env(), retry: { retries: 0 } }));
    expect(error.code).toBe("integrity");
    expect(error.message).toMatch(/model-00001-of-00002\.safetensors arrived corrupt \(sha256 [0-9a-f]{64} instead of/);
    const sha = hub.file(REPO, SHARD1).sha256;
    expect(existsSync(join(repoDir(REPO), "blobs", sha))).toBe(false);
    expect(existsSync(join(repoDir(REPO), "blobs", `${sha}.incomplete`))).toBe(false);
  });

  test("retries transient server errors with backoff", async () => {
    hub.failNext(REPO, null, 503, 2);
    hub.failNext(REPO, "config.json", 500, 1);
    const snap = await downloadModel(REPO, { env: env(), retry: FAST_RETRY });
    expect(hub.count({ path: "/api/models/" })).toBe(3);
    expect(readFileSync(join(snap.dir, "config.json")).equals(files["config.json"]!)).toBe(true);
  });

  test("gives up on a server that keeps failing, saying so", async () => {
    hub.failNext(REPO, null, 503, 10);
    const error = await caught(
      downloadModel(REPO, { env: env(), retry: { retries: 2, baseDelayMs: 1, maxDelayMs: 2 } }),
    );
    expect(error.code).toBe("network");
    expect(error.message).toContain("HTTP 503");
    expect(hub.count({ path: "/api/models/" })).toBe(3);
  });
});

describe("errors", () => {
  test("401 without a token: gated or private, set HF_TOKEN", async () => {
    const error = await caught(downloadModel(PRIVATE, { env: env(), retry: FAST_RETRY }));
    expect(error.code).toBe("unauthorized");
    expect(error.status).toBe(401);
    expect(error.message).toContain("gated or private");
    expect(error.message).toContain("set HF_TOKEN");
    expect(error.message).toContain(PRIVATE);
  });

  test("401 with a wrong token names where the token came from", async () => {
    const error = await caught(downloadModel(PRIVATE, { env: env({ HF_TOKEN: "hf_wrong" }), retry: FAST_RETRY }));
    expect(error.code).toBe("unauthorized");
    expect(error.message).toContain("the token from HF_TOKEN has no access");
  });

  test("a private repo downloads with the right token, also from the HF_HOME token file", async () => {
    const snap = await downloadModel(PRIVATE, { env: env({ HF_TOKEN: TOKEN }), retry: FAST_RETRY });
    expect(snap.files.length).toBe(MODEL_FILES.length);
    rmSync(join(home.path, "hf"), { recursive: true });
    mkdirSync(join(home.path, "hf"), { recursive: true });
    writeFileSync(join(home.path, "hf", "token"), `${TOKEN}\n`);
    const again = await downloadModel(PRIVATE, { env: env(), retry: FAST_RETRY });
    expect(again.files.every((f) => f.downloaded)).toBe(true);
  });

  test("a gated repo says to accept its conditions", async () => {
    const error = await caught(downloadModel(GATED, { env: env(), retry: FAST_RETRY }));
    expect(error.code).toBe("gated");
    expect(error.message).toContain(`${GATED} is gated`);
    expect(error.message).toContain("accept its conditions");
    expect(error.message).toContain("HF_TOKEN");
  });

  test("404: no such repo, no such file, no such revision", async () => {
    const repo = await caught(downloadModel("nobody/nothing", { env: env(), retry: FAST_RETRY }));
    expect(repo.code).toBe("repo_not_found");
    expect(repo.message).toContain("no such repo: nobody/nothing");

    const file = await caught(downloadRepoFile(REPO, "missing.gguf", { env: env(), retry: FAST_RETRY }));
    expect(file.code).toBe("file_not_found");
    expect(file.message).toContain('no such file: "missing.gguf"');

    const rev = await caught(downloadModel(REPO, { env: env(), revision: "v9", retry: FAST_RETRY }));
    expect(rev.code).toBe("revision_not_found");
    expect(rev.message).toContain('no revision "v9"');
    // None of these is retried.
    expect(hub.count({ path: "nobody/nothing" })).toBe(1);
  });

  test("a repo without safetensors weights points at its GGUF files", async () => {
    const error = await caught(downloadModel(GGUF_REPO, { env: env(), retry: FAST_RETRY }));
    expect(error.message).toContain(`${GGUF_REPO}/tiny.Q4_0.gguf`);
  });

  test("an unreachable endpoint is a network error after the retries", async () => {
    const error = await caught(
      downloadModel(REPO, { env: env({ HF_ENDPOINT: "http://127.0.0.1:1" }), retry: { retries: 1, baseDelayMs: 1 } }),
    );
    expect(error.code).toBe("network");
    expect(error.message).toContain("cannot reach http://127.0.0.1:1");
  });
});

describe("offline", () => {
  test("HF_HUB_OFFLINE=1 uses the cache without any request", async () => {
    const online = await downloadModel(REPO, { env: env(), retry: FAST_RETRY });
    hub.clearLog();
    const offline = await downloadModel(REPO, { env: env({ HF_HUB_OFFLINE: "1" }) });
    expect(hub.requests).toEqual([]);
    expect(offline.source).toBe("cache");
    expect(offline.commit).toBe(online.commit);
    expect(offline.dir).toBe(online.dir);
    expect(offline.files.map((f) => f.filename)).toEqual(MODEL_FILES);
    expect(offline.files.find((f) => f.filename === SHARD1)?.etag).toBe(hub.file(REPO, SHARD1).sha256);
  });

  test("HF_HUB_OFFLINE=1 fails clearly when the model is not cached", async () => {
    const error = await caught(downloadModel(REPO, { env: env({ HF_HUB_OFFLINE: "1" }) }));
    expect(error.code).toBe("not_cached");
    expect(error.message).toContain("HF_HUB_OFFLINE is set");
    expect(error.message).toContain(`${REPO} (revision main) is not in the cache`);
    expect(error.message).toContain("unset HF_HUB_OFFLINE");
    expect(hub.requests).toEqual([]);
  });

  test("HF_HUB_OFFLINE=1 refuses an incomplete cached snapshot", async () => {
    const snap = await downloadModel(REPO, { env: env(), retry: FAST_RETRY });
    rmSync(join(snap.dir, SHARD2));
    const error = await caught(downloadModel(REPO, { env: env({ HF_HUB_OFFLINE: "true" }) }));
    expect(error.code).toBe("not_cached");
    expect(error.message).toContain(`missing weight shards: ${SHARD2}`);
  });

  test("an unreachable Hub falls back to a complete cached snapshot with a warning", async () => {
    await downloadModel(REPO, { env: env(), retry: FAST_RETRY });
    const snap = await downloadModel(REPO, {
      env: env({ HF_ENDPOINT: "http://127.0.0.1:1" }),
      retry: { retries: 0 },
    });
    expect(snap.source).toBe("cache");
    expect(snap.warnings[0]).toContain("using the cached snapshot");
  });

  test("HF_HUB_CACHE moves the cache", async () => {
    const cache = join(home.path, "elsewhere");
    const snap = await downloadModel(REPO, { env: env({ HF_HUB_CACHE: cache }), retry: FAST_RETRY });
    expect(snap.dir.startsWith(join(cache, `models--${REPO.replace("/", "--")}`))).toBe(true);
    expect(existsSync(join(home.path, "hf", "hub"))).toBe(false);
  });
});

describe("parallel transfers", () => {
  test("several files at once, never more than the concurrency limit", async () => {
    const slow = await startFakeHub({
      slow: { chunkBytes: 16_384, delayMs: 5 },
      repos: { [REPO]: { dir: source.path } },
    });
    try {
      const snap = await downloadModel(REPO, {
        env: env({ HF_ENDPOINT: slow.url }),
        retry: FAST_RETRY,
        concurrency: 3,
      });
      expect(slow.maxConcurrentTransfers).toBe(3);
      expect(snap.files.every((f) => f.downloaded)).toBe(true);
      for (const f of snap.files) expect(readFileSync(f.path).equals(files[f.filename]!)).toBe(true);
    } finally {
      await slow.stop();
    }
  });
});

describe("single files (GGUF)", () => {
  test("downloads one file and reuses it on the next call", async () => {
    const first = await downloadRepoFile(GGUF_REPO, "tiny.Q4_0.gguf", { env: env(), retry: FAST_RETRY });
    expect(first.downloaded).toBe(true);
    expect(first.commit).toBe(hub.commitOf(GGUF_REPO));
    expect(sha256(readFileSync(first.path))).toBe(sha256(ggufBytes));
    expect(readlinkSync(first.path)).toBe(`../../blobs/${sha256(ggufBytes)}`);
    expect(hub.count({ path: "README.md" })).toBe(0);

    hub.clearLog();
    const second = await downloadRepoFile(GGUF_REPO, "tiny.Q4_0.gguf", { env: env(), retry: FAST_RETRY });
    expect(second.downloaded).toBe(false);
    expect(second.path).toBe(first.path);
    expect(hub.requests.map((r) => r.method)).toEqual(["HEAD"]);

    const offline = await downloadRepoFile(GGUF_REPO, "tiny.Q4_0.gguf", { env: env({ HF_HUB_OFFLINE: "1" }) });
    expect(offline.source).toBe("cache");
    expect(offline.path).toBe(first.path);
  });

  test("an empty file is cached without a transfer", async () => {
    const empty = await downloadRepoFile(GGUF_REPO, "empty.gguf", { env: env(), retry: FAST_RETRY });
    expect(empty.size).toBe(0);
    expect(readFileSync(empty.path).length).toBe(0);
    expect(hub.count({ server: "cdn" })).toBe(0);
  });

  test("works without the CDN redirect too (the resolve URL serves the bytes)", async () => {
    const direct = await startFakeHub({
      redirectLfs: false,
      repos: { [GGUF_REPO]: { files: { "x.gguf": ggufBytes } } },
    });
    try {
      direct.cutAfter(GGUF_REPO, "x.gguf", 50_000);
      const file = await downloadRepoFile(GGUF_REPO, "x.gguf", {
        env: env({ HF_ENDPOINT: direct.url }),
        retry: FAST_RETRY,
      });
      expect(sha256(readFileSync(file.path))).toBe(sha256(ggufBytes));
      expect(direct.count({ server: "cdn" })).toBe(0);
      expect(direct.requests.filter((r) => r.method === "GET").map((r) => r.range)).toEqual([null, "bytes=50000-"]);
    } finally {
      await direct.stop();
    }
  });
});

describe("progress", () => {
  test("a non-TTY stream gets plain lines: the plan, periodic status, the summary", async () => {
    const lines: string[] = [];
    const stream = { isTTY: false, write: (s: string) => lines.push(s) };
    await downloadModel(REPO, {
      env: env(),
      retry: FAST_RETRY,
      concurrency: 2,
      reporter: new ProgressRenderer({ stream, intervalMs: 0 }),
    });
    const total = MODEL_FILES.reduce((n, f) => n + files[f]!.length, 0) - files["model.safetensors.index.json"]!.length;
    expect(lines.every((l) => l.endsWith("\n") && !l.includes("\r") && !l.includes("\x1b"))).toBe(true);
    expect(lines[0]).toBe(`downloading ${REPO}: 7 files, ${(total / 1024).toFixed(0)} KiB\n`);
    const status = lines.slice(1, -1);
    expect(status.length).toBeGreaterThan(0);
    for (const line of status)
      expect(line).toMatch(new RegExp(`^${REPO}: \\d+% .+ / .+, .+/s, ETA .+ \\(\\d/7 files\\)\\n$`));
    expect(status.at(-1)).toContain("100%");
    expect(lines.at(-1)).toMatch(new RegExp(`^downloaded ${REPO}: \\d+ KiB in \\d+s`));
  });
});
