// A small Hugging Face Hub for tests: Bun.serve on 127.0.0.1 serving repos from
// folders (or in-memory files) through the same API the client uses:
//   GET       /api/models/{org}/{name}/revision/{rev}   → {sha, siblings}
//   HEAD/GET  /{org}/{name}/resolve/{rev}/{file}        → ETag / X-Linked-Etag / X-Repo-Commit /
//             X-Linked-Size; LFS files 302 to a "CDN" (a second server on another port)
//   GET       {cdn}/cdn/{sha256}?repo=…&file=…          → the bytes, with Range (206)
// Test hooks: cut a transfer after N bytes, stall one, serve corrupt bytes once,
// fail the next requests with a status, and a log of every request.
import { createHash } from "node:crypto";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";

export interface FakeRepoSpec {
  /** A folder whose files (recursively) are the repo. */
  dir?: string;
  files?: Record<string, string | Uint8Array>;
  /** Which files are LFS (sha256 etag, CDN redirect). Default: *.safetensors, *.gguf, *.bin. */
  lfs?: (filename: string) => boolean;
  /** Needs the hub's token for everything (the API included). */
  private?: boolean;
  /** Needs the token for file downloads; the API stays public, as on the real Hub. */
  gated?: boolean;
  /** Branch names that resolve (default ["main"]). */
  branches?: string[];
  commit?: string;
}

export interface FakeHubOptions {
  repos: Record<string, FakeRepoSpec>;
  /** The token private and gated repos accept. */
  token?: string;
  /** LFS files are served by a 302 to the CDN server (default true); otherwise directly. */
  redirectLfs?: boolean;
  /** Send file bytes in chunks with a pause after each, so transfers overlap measurably. */
  slow?: { chunkBytes: number; delayMs: number };
}

export interface RecordedRequest {
  server: "hub" | "cdn";
  method: string;
  path: string;
  range: string | null;
  authorization: string | null;
}

interface FakeFile {
  bytes: Uint8Array;
  lfs: boolean;
  sha256: string;
  /** git blob id of the content (regular files) or of the LFS pointer (LFS files). */
  gitOid: string;
}

interface FakeRepo {
  spec: FakeRepoSpec;
  commit: string;
  files: Map<string, FakeFile>;
}

export interface FakeHub {
  url: string;
  cdnUrl: string;
  requests: RecordedRequest[];
  /** Requests matching all the given fields (path: substring). */
  count(match: { server?: "hub" | "cdn"; method?: string; path?: string; ranged?: boolean }): number;
  commitOf(repoId: string): string;
  file(repoId: string, filename: string): { size: number; sha256: string; gitOid: string; lfs: boolean };
  /** The next `times` transfers of the file stop (cleanly) after `bytes` bytes of the response. */
  cutAfter(repoId: string, filename: string, bytes: number, times?: number): void;
  /** The next transfer of the file sends `bytes` bytes, then nothing until the client gives up. */
  stallAfter(repoId: string, filename: string, bytes: number): void;
  /** The next transfer of the file has one byte changed. */
  corruptOnce(repoId: string, filename: string): void;
  /** The next `times` requests about the file (any method; null: the revision API) answer `status`. */
  failNext(repoId: string, filename: string | null, status: number, times?: number): void;
  /** The most file transfers that were in progress at once (with `slow`). */
  readonly maxConcurrentTransfers: number;
  /** Drops the request log. */
  clearLog(): void;
  /** Drops the request log and every pending hook. */
  reset(): void;
  stop(): Promise<void>;
}

const sha = (algo: "sha1" | "sha256", data: Uint8Array | string) => createHash(algo).update(data).digest("hex");

function gitBlobId(content: Uint8Array | string): string {
  const bytes = typeof content === "string" ? new TextEncoder().encode(content) : content;
  return createHash("sha1").update(`blob ${bytes.byteLength}\0`).update(bytes).digest("hex");
}

function readTree(dir: string, prefix = ""): Record<string, Uint8Array> {
  const out: Record<string, Uint8Array> = {};
  for (const name of readdirSync(dir).sort()) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) Object.assign(out, readTree(path, `${prefix}${name}/`));
    else out[`${prefix}${name}`] = new Uint8Array(readFileSync(path));
  }
  return out;
}

const defaultLfs = (f: string) => /\.(safetensors|gguf|bin)$/.test(f);

function buildRepo(repoId: string, spec: FakeRepoSpec): FakeRepo {
  const raw: Record<string, Uint8Array> = spec.dir ? readTree(spec.dir) : {};
  for (const [name, content] of Object.entries(spec.files ?? {})) {
    raw[name] = typeof content === "string" ? new TextEncoder().encode(content) : content;
  }
  const isLfs = spec.lfs ?? defaultLfs;
  const files = new Map<string, FakeFile>();
  for (const [name, bytes] of Object.entries(raw)) {
    const digest = sha("sha256", bytes);
    const lfs = isLfs(name);
    const pointer = `version https://git-lfs.github.com/spec/v1\noid sha256:${digest}\nsize ${bytes.byteLength}\n`;
    files.set(name, { bytes, lfs, sha256: digest, gitOid: gitBlobId(lfs ? pointer : bytes) });
  }
  const commit = spec.commit ?? sha("sha1", `${repoId}\n${[...files.values()].map((f) => f.sha256).join("\n")}`);
  return { spec, commit, files };
}

type Hook = { bytes: number; times: number };

export async function startFakeHub(options: FakeHubOptions): Promise<FakeHub> {
  const repos = new Map<string, FakeRepo>();
  for (const [id, spec] of Object.entries(options.repos)) repos.set(id, buildRepo(id, spec));
  const redirectLfs = options.redirectLfs ?? true;
  const requests: RecordedRequest[] = [];
  const cuts = new Map<string, Hook>();
  const corrupt = new Set<string>();
  const stalls = new Map<string, number>();
  const transfers = { now: 0, max: 0 };
  const failures = new Map<string, { status: number; times: number }>();
  const key = (repoId: string, filename: string | null) => `${repoId}\0${filename ?? ""}`;

  const record = (server: "hub" | "cdn", req: Request) => {
    requests.push({
      server,
      method: req.method,
      path: decodeURIComponent(new URL(req.url).pathname),
      range: req.headers.get("range"),
      authorization: req.headers.get("authorization"),
    });
  };

  const injectedFailure = (repoId: string, filename: string | null): Response | null => {
    const k = key(repoId, filename);
    const f = failures.get(k);
    if (!f) return null;
    if (--f.times <= 0) failures.delete(k);
    return new Response(`injected ${f.status}`, { status: f.status, headers: { "Retry-After": "0" } });
  };

  const errorResponse = (status: number, code: string, message: string) =>
    new Response(JSON.stringify({ error: message }), {
      status,
      headers: { "Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message },
    });

  /** null when allowed, else the Hub's answer for a missing or wrong token. */
  const denied = (req: Request, repoId: string, repo: FakeRepo, forFile: boolean): Response | null => {
    const needsToken = repo.spec.private || (repo.spec.gated && forFile);
    if (!needsToken) return null;
    const auth = req.headers.get("authorization");
    if (options.token && auth === `Bearer ${options.token}`) return null;
    if (repo.spec.gated) {
      return errorResponse(401, "GatedRepo", `Access to model ${repoId} is restricted. You must be authenticated.`);
    }
    return errorResponse(
      401,
      "RepoNotFound",
      auth ? "Invalid credentials in Authorization header" : "Repository not found",
    );
  };

  /** The bytes of a file, honouring Range and the cut/corrupt hooks. */
  const serveBytes = (req: Request, repoId: string, filename: string, file: FakeFile, headers: Headers): Response => {
    let bytes = file.bytes;
    const k = key(repoId, filename);
    if (corrupt.has(k) && req.method === "GET") {
      corrupt.delete(k);
      bytes = bytes.slice();
      const at = Math.floor(bytes.length / 2);
      bytes[at] = (bytes[at]! ^ 0xff) & 0xff;
    }
    let status = 200;
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.get("range") ?? "");
    if (range) {
      const start = Number(range[1]);
      const end = range[2] ? Math.min(Number(range[2]), bytes.length - 1) : bytes.length - 1;
      if (start >= bytes.length || start > end) {
        headers.set("Content-Range", `bytes */${bytes.length}`);
        return new Response(null, { status: 416, headers });
      }
      headers.set("Content-Range", `bytes ${start}-${end}/${bytes.length}`);
      bytes = bytes.subarray(start, end + 1);
      status = 206;
    }
    headers.set("Accept-Ranges", "bytes");
    const cut = cuts.get(k);
    const stall = stalls.get(k);
    if ((cut || stall !== undefined) && req.method === "GET") {
      if (cut && --cut.times <= 0) cuts.delete(k);
      stalls.delete(k);
      const part = bytes.subarray(0, Math.min(cut?.bytes ?? stall ?? 0, bytes.length));
      // The first bytes go out; then the connection ends early (cut) or goes quiet (stall).
      const body = new ReadableStream({
        type: "direct",
        async pull(controller: { write(b: Uint8Array): void; flush(): Promise<void> | number; close(): void }) {
          controller.write(part);
          await controller.flush();
          if (!cut) {
            await new Promise((resolve) => {
              if (req.signal.aborted) resolve(null);
              req.signal.addEventListener("abort", resolve, { once: true });
            });
          }
          controller.close();
        },
      } as unknown as UnderlyingDefaultSource<Uint8Array>);
      return new Response(body, { status, headers });
    }
    if (options.slow && req.method === "GET") {
      const { chunkBytes, delayMs } = options.slow;
      const body = new ReadableStream({
        type: "direct",
        async pull(controller: { write(b: Uint8Array): void; flush(): Promise<void> | number; close(): void }) {
          transfers.now++;
          transfers.max = Math.max(transfers.max, transfers.now);
          try {
            for (let at = 0; at < bytes.length && !req.signal.aborted; at += chunkBytes) {
              controller.write(bytes.subarray(at, at + chunkBytes));
              await controller.flush();
              await Bun.sleep(delayMs);
            }
          } finally {
            transfers.now--;
          }
          controller.close();
        },
      } as unknown as UnderlyingDefaultSource<Uint8Array>);
      return new Response(body, { status, headers });
    }
    return new Response(bytes as Uint8Array<ArrayBuffer>, { status, headers });
  };

  const cdn = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      record("cdn", req);
      const url = new URL(req.url);
      const m = /^\/cdn\/([0-9a-f]{64})$/.exec(url.pathname);
      const repoId = url.searchParams.get("repo") ?? "";
      const filename = url.searchParams.get("file") ?? "";
      const file = repos.get(repoId)?.files.get(filename);
      if (!m || !file || file.sha256 !== m[1]) return new Response("not found", { status: 404 });
      const entry = { repoId, filename, file };
      const failed = injectedFailure(entry.repoId, entry.filename);
      if (failed) return failed;
      return serveBytes(req, entry.repoId, entry.filename, entry.file, new Headers({ ETag: `"${entry.file.sha256}"` }));
    },
  });
  const cdnUrl = `http://127.0.0.1:${cdn.port}`;

  const hub = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      record("hub", req);
      const path = new URL(req.url).pathname;
      const api = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(path);
      if (api) {
        const repoId = decodeURIComponent(api[1]!);
        const revision = decodeURIComponent(api[2]!);
        const repo = repos.get(repoId);
        if (!repo) return errorResponse(404, "RepoNotFound", "Repository not found");
        const no = denied(req, repoId, repo, false);
        if (no) return no;
        const failed = injectedFailure(repoId, null);
        if (failed) return failed;
        if (!(repo.spec.branches ?? ["main"]).includes(revision) && revision !== repo.commit) {
          return errorResponse(404, "RevisionNotFound", `Invalid rev id: ${revision}`);
        }
        return Response.json({
          id: repoId,
          modelId: repoId,
          sha: repo.commit,
          private: repo.spec.private === true,
          gated: repo.spec.gated ? "manual" : false,
          siblings: [...repo.files.keys()].map((rfilename) => ({ rfilename })),
        });
      }
      // The file listing newer huggingface_hub versions use (not the Pensieve client).
      const tree = /^\/api\/models\/([^/]+\/[^/]+)\/tree\/([^/]+)$/.exec(path);
      if (tree) {
        const repoId = decodeURIComponent(tree[1]!);
        const repo = repos.get(repoId);
        if (!repo) return errorResponse(404, "RepoNotFound", "Repository not found");
        const no = denied(req, repoId, repo, false);
        if (no) return no;
        return Response.json(
          [...repo.files].map(([name, f]) => ({
            type: "file",
            path: name,
            size: f.bytes.byteLength,
            oid: f.gitOid,
            ...(f.lfs ? { lfs: { oid: f.sha256, size: f.bytes.byteLength, pointerSize: 130 } } : {}),
          })),
        );
      }
      const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(path);
      if (resolve && (req.method === "GET" || req.method === "HEAD")) {
        const repoId = decodeURIComponent(resolve[1]!);
        const revision = decodeURIComponent(resolve[2]!);
        const filename = resolve[3]!.split("/").map(decodeURIComponent).join("/");
        const repo = repos.get(repoId);
        if (!repo) return errorResponse(404, "RepoNotFound", "Repository not found");
        const no = denied(req, repoId, repo, true);
        if (no) return no;
        if (!(repo.spec.branches ?? ["main"]).includes(revision) && revision !== repo.commit) {
          return errorResponse(404, "RevisionNotFound", `Invalid rev id: ${revision}`);
        }
        const file = repo.files.get(filename);
        if (!file) return errorResponse(404, "EntryNotFound", `${filename} does not exist on "${revision}"`);
        const failed = injectedFailure(repoId, filename);
        if (failed) return failed;
        const headers = new Headers({ "X-Repo-Commit": repo.commit, ETag: `"${file.gitOid}"` });
        if (file.lfs) {
          headers.set("X-Linked-Etag", `"${file.sha256}"`);
          headers.set("X-Linked-Size", String(file.bytes.byteLength));
          if (redirectLfs) {
            // Like the real CDN URLs, signed per repo and file (here: just named).
            const query = new URLSearchParams({ repo: repoId, file: filename });
            headers.set("Location", `${cdnUrl}/cdn/${file.sha256}?${query}`);
            return new Response(null, { status: 302, headers });
          }
        }
        return serveBytes(req, repoId, filename, file, headers);
      }
      return new Response("not found", { status: 404 });
    },
  });

  const repoOf = (repoId: string) => {
    const repo = repos.get(repoId);
    if (!repo) throw new Error(`fake hub: no repo ${repoId}`);
    return repo;
  };

  return {
    url: `http://127.0.0.1:${hub.port}`,
    cdnUrl,
    requests,
    count(match) {
      return requests.filter(
        (r) =>
          (match.server === undefined || r.server === match.server) &&
          (match.method === undefined || r.method === match.method) &&
          (match.path === undefined || r.path.includes(match.path)) &&
          (match.ranged === undefined || (r.range !== null) === match.ranged),
      ).length;
    },
    get maxConcurrentTransfers() {
      return transfers.max;
    },
    commitOf: (repoId) => repoOf(repoId).commit,
    file(repoId, filename) {
      const f = repoOf(repoId).files.get(filename);
      if (!f) throw new Error(`fake hub: no file ${filename} in ${repoId}`);
      return { size: f.bytes.byteLength, sha256: f.sha256, gitOid: f.gitOid, lfs: f.lfs };
    },
    cutAfter(repoId, filename, bytes, times = 1) {
      cuts.set(key(repoId, filename), { bytes, times });
    },
    stallAfter(repoId, filename, bytes) {
      stalls.set(key(repoId, filename), bytes);
    },
    corruptOnce(repoId, filename) {
      corrupt.add(key(repoId, filename));
    },
    failNext(repoId, filename, status, times = 1) {
      failures.set(key(repoId, filename), { status, times });
    },
    clearLog() {
      requests.length = 0;
    },
    reset() {
      requests.length = 0;
      cuts.clear();
      corrupt.clear();
      stalls.clear();
      failures.clear();
    },
    async stop() {
      await Promise.all([hub.stop(true), cdn.stop(true)]);
    },
  };
}
