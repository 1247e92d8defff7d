// Downloads a model repo (or one file of a repo) into the Hugging Face cache.
//
// Per file: HEAD for its blob name and size → skip if the blob is already there
// → else GET into blobs/<etag>.incomplete, resuming with Range from whatever an
// earlier attempt left → verify size and hash (sha256 for LFS files, git sha1
// for the rest) → rename into blobs/<etag>. Once every file is in place the
// snapshot links and refs/<revision> are written, so a snapshot folder that
// exists is complete.
// Over 400 lines: the resumable, verified per-file protocol and its cache layout are one procedure.
import { createHash, type Hash } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, open, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  blobNameOf,
  blobPath,
  fileSize,
  findCachedSnapshot,
  linkSnapshotFile,
  modelFolderProblems,
  readRef,
  repoCacheDir,
  repoFolderName,
  snapshotDir,
  snapshotFiles,
  writeRef,
} from "./cache";
import { assertRepoFilename, assertRepoId, HubClient, type RemoteFile, type RetryPolicy, withRetries } from "./client";
import { HubError } from "./errors";
import { type FileFilter, isModelFile, shardsFromIndex } from "./filter";
import { withFileLock } from "./lock";
import { type DownloadReporter, silentReporter } from "./progress";
import type { Env, HubSettings } from "./settings";

export interface DownloadOptions {
  /** Branch, tag or commit (default "main"). */
  revision?: string;
  settings?: HubSettings;
  /** Read for settings when `settings` is not given (default process.env). */
  env?: Env;
  retry?: Partial<RetryPolicy>;
  requestTimeoutMs?: number;
  /** Abort a transfer that receives nothing for this long, then retry it (default 60 s). */
  stallTimeoutMs?: number;
  /** Files transferred at once (default 8). */
  concurrency?: number;
  /** Which repo files to fetch (default: the model files, see filter.ts). */
  filter?: FileFilter;
  reporter?: DownloadReporter;
  signal?: AbortSignal;
}

export interface CachedFile {
  filename: string;
  /** The snapshot path (a link into blobs/). */
  path: string;
  size: number;
  /** The blob name, null for a snapshot file that is a plain copy. */
  etag: string | null;
  /** True when this call transferred it. */
  downloaded: boolean;
}

export interface Snapshot {
  repoId: string;
  revision: string;
  commit: string;
  /** snapshots/<commit>: pass this folder to the model loader. */
  dir: string;
  files: CachedFile[];
  /** Bytes received over the network by this call. */
  downloadedBytes: number;
  /** "cache" when no request was made (offline, or the Hub unreachable and the cache complete). */
  source: "network" | "cache";
  warnings: string[];
}

interface Context {
  client: HubClient;
  settings: HubSettings;
  repoDir: string;
  lockDir: string;
  reporter: DownloadReporter;
  signal: AbortSignal | undefined;
  stallTimeoutMs: number;
  concurrency: number;
}

function makeContext(repoId: string, options: DownloadOptions): Context {
  assertRepoId(repoId);
  const client = new HubClient({
    settings: options.settings,
    env: options.env,
    retry: options.retry,
    requestTimeoutMs: options.requestTimeoutMs,
  });
  const settings = client.settings;
  return {
    client,
    settings,
    repoDir: repoCacheDir(settings.cacheDir, repoId),
    lockDir: join(settings.cacheDir, ".locks", repoFolderName(repoId)),
    reporter: options.reporter ?? silentReporter,
    signal: options.signal,
    stallTimeoutMs: options.stallTimeoutMs ?? 60_000,
    concurrency: Math.max(1, options.concurrency ?? 8),
  };
}

/** Runs fn over items, `limit` at a time; the first failure cancels the rest and is thrown. */
async function inPool<T, R>(
  items: readonly T[],
  limit: number,
  signal: AbortSignal | undefined,
  fn: (item: T, signal: AbortSignal) => Promise<R>,
): Promise<R[]> {
  const cancel = new AbortController();
  const combined = signal ? AbortSignal.any([signal, cancel.signal]) : cancel.signal;
  const results: R[] = new Array(items.length);
  let next = 0;
  let failure: { error: unknown } | null = null;
  const worker = async () => {
    while (!failure && next < items.length) {
      const index = next++;
      try {
        results[index] = await fn(items[index]!, combined);
      } catch (error) {
        if (!failure) {
          failure = { error };
          cancel.abort(error);
        }
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure) throw (failure as { error: unknown }).error;
  return results;
}

function hashFor(file: RemoteFile): { hash: Hash; expected: string; name: string } | null {
  if (file.lfs && /^[0-9a-f]{64}$/.test(file.etag)) {
    return { hash: createHash("sha256"), expected: file.etag, name: "sha256" };
  }
  if (!file.lfs && /^[0-9a-f]{40}$/.test(file.etag)) {
    // A regular file's etag is its git blob id: sha1 of "blob <size>\0" + content.
    const hash = createHash("sha1");
    hash.update(`blob ${file.size}\0`);
    return { hash, expected: file.etag, name: "git sha1" };
  }
  return null;
}

async function hashExisting(path: string, hash: Hash): Promise<void> {
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
}

/** Blobs being fetched by this process, so two files with the same content share one transfer. */
const inFlight = new Map<string, Promise<boolean>>();

/**
 * Puts the file's blob in the cache. Returns true when it was transferred, false
 * when it was already there.
 */
function ensureBlob(ctx: Context, file: RemoteFile, signal?: AbortSignal): Promise<boolean> {
  const blob = blobPath(ctx.repoDir, file.etag);
  const running = inFlight.get(blob);
  if (running) return running.then(() => false);
  const task = (async () => {
    if (fileSize(blob) === file.size) return false;
    await mkdir(join(ctx.repoDir, "blobs"), { recursive: true });
    return withFileLock(
      join(ctx.lockDir, `${file.etag}.pensieve.lock`),
      async () => {
        // Another process may have finished it while we waited for the lock.
        if (fileSize(blob) === file.size) return false;
        await rm(blob, { force: true });
        await transfer(ctx, file, blob, signal);
        return true;
      },
      signal,
    );
  })();
  inFlight.set(blob, task);
  return task.finally(() => inFlight.delete(blob));
}

/** Downloads one blob with retries: each retry re-reads the metadata (a fresh CDN URL) and resumes. */
async function transfer(ctx: Context, first: RemoteFile, blob: string, signal?: AbortSignal): Promise<void> {
  const partial = `${blob}.incomplete`;
  // Bytes of this file currently counted in the progress, so resumes and rewinds stay exact.
  let reported = 0;
  const report = (onDisk: number, fromNetwork: boolean) => {
    const delta = onDisk - reported;
    if (delta > 0) fromNetwork ? ctx.reporter.transferred(delta) : ctx.reporter.skipped(delta);
    else if (delta < 0) ctx.reporter.rewound(-delta);
    reported = onDisk;
  };
  await withRetries(
    ctx.client.retry,
    async (attempt) => {
      let file = first;
      if (attempt > 0) {
        file = await ctx.client.fileMetadata(first.repoId, first.filename, first.commit, signal);
        if (file.etag !== first.etag) {
          throw new HubError("bad_response", `${first.filename} changed on the Hub during the download`);
        }
      }
      await transferOnce(ctx, file, partial, signal, report);
      await rename(partial, blob);
    },
    signal,
  );
}

async function transferOnce(
  ctx: Context,
  file: RemoteFile,
  partial: string,
  outerSignal: AbortSignal | undefined,
  report: (onDisk: number, fromNetwork: boolean) => void,
): Promise<void> {
  let offset = fileSize(partial) ?? 0;
  if (offset > file.size) {
    await rm(partial, { force: true });
    offset = 0;
  }
  // An empty file needs no request, but still a file to rename into place.
  if (file.size === 0) await writeFile(partial, "");
  report(offset, false);
  let check = hashFor(file);
  if (offset > 0 && check) await hashExisting(partial, check.hash);

  if (offset < file.size) {
    const stall = new AbortController();
    const signal = outerSignal ? AbortSignal.any([outerSignal, stall.signal]) : stall.signal;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        stall.abort(
          new HubError("network", `${file.filename}: no data for ${ctx.stallTimeoutMs / 1000} s`, { transient: true }),
        );
      }, ctx.stallTimeoutMs);
    };
    arm();
    let written = offset;
    try {
      const res = await ctx.client.openDownload(file, offset, signal);
      if (res.status === 416) {
        // The server does not accept our partial file: start over on the next attempt.
        await rm(partial, { force: true });
        throw new HubError("network", `${file.filename}: the server refused to resume at byte ${offset}`, {
          transient: true,
        });
      }
      const range = res.headers.get("content-range");
      if (offset > 0 && (res.status !== 206 || !range?.startsWith(`bytes ${offset}-`))) {
        // The server ignored the range and sends the whole file: take it from the start.
        offset = 0;
        written = 0;
        report(0, false);
        check = hashFor(file);
      }
      const out = await open(partial, offset > 0 ? "a" : "w");
      try {
        if (!res.body) throw new HubError("network", `${file.filename}: empty response`, { transient: true });
        for await (const chunk of res.body) {
          arm();
          if (written + chunk.byteLength > file.size) {
            const message = `${file.filename}: the server sent more than the ${file.size} bytes announced`;
            throw new HubError("integrity", message, { transient: true });
          }
          await out.write(chunk);
          check?.hash.update(chunk);
          written += chunk.byteLength;
          report(written, true);
        }
      } finally {
        await out.close();
      }
    } catch (error) {
      if (outerSignal?.aborted) throw outerSignal.reason;
      if (stall.signal.aborted) throw stall.signal.reason;
      if (error instanceof HubError) {
        if (error.code === "integrity") {
          await rm(partial, { force: true });
          report(0, false);
        }
        throw error;
      }
      throw new HubError(
        "network",
        `${file.filename}: connection lost after ${written} of ${file.size} bytes (${(error as Error).message})`,
        { transient: true, cause: error },
      );
    } finally {
      clearTimeout(timer);
    }
    if (written < file.size) {
      throw new HubError("network", `${file.filename}: connection closed after ${written} of ${file.size} bytes`, {
        transient: true,
      });
    }
  }

  const size = fileSize(partial) ?? 0;
  const digest = check?.hash.digest("hex");
  if (size !== file.size || (check && digest !== check.expected)) {
    await rm(partial, { force: true });
    report(0, false);
    const what =
      size !== file.size
        ? `${size} bytes instead of ${file.size}`
        : `${check?.name} ${digest} instead of ${check?.expected}`;
    // Transient: the retry loop fetches it again from the start.
    throw new HubError("integrity", `${file.filename} arrived corrupt (${what})`, { transient: true });
  }
}

function offlineMessage(repoId: string, revision: string, cacheDir: string, detail?: string): string {
  const where = join(cacheDir, repoFolderName(repoId));
  return (
    `HF_HUB_OFFLINE is set and ${repoId} (revision ${revision}) is not in the cache at ${where}` +
    `${detail ? ` (${detail})` : ""}: unset HF_HUB_OFFLINE to download it`
  );
}

function snapshotFromCache(
  repoId: string,
  revision: string,
  settings: HubSettings,
  filter: FileFilter,
  checkModel: boolean,
): { snapshot: Snapshot | null; problem: string | null } {
  const found = findCachedSnapshot(settings.cacheDir, repoId, revision);
  if (!found) return { snapshot: null, problem: null };
  const problems = checkModel ? modelFolderProblems(found.dir) : [];
  const files = snapshotFiles(found.dir).filter(filter);
  if (problems.length > 0 || files.length === 0) {
    return { snapshot: null, problem: problems.join("; ") || "no matching files" };
  }
  return {
    snapshot: {
      repoId,
      revision,
      commit: found.commit,
      dir: found.dir,
      files: files.map((filename) => cachedFile(found.dir, filename, false)),
      downloadedBytes: 0,
      source: "cache",
      warnings: [],
    },
    problem: null,
  };
}

function cachedFile(dir: string, filename: string, downloaded: boolean): CachedFile {
  const path = join(dir, filename);
  return { filename, path, size: fileSize(path) ?? 0, etag: blobNameOf(path), downloaded };
}

async function readJsonFile(path: string): Promise<unknown> {
  try {
    return JSON.parse(await readFile(path, "utf8"));
  } catch (e) {
    throw new HubError("bad_response", `${path} is not valid JSON: ${(e as Error).message}`);
  }
}

/** Is a cached-snapshot fallback acceptable for this error (the Hub unreachable, not a refusal)? */
function isUnreachable(error: unknown): boolean {
  return error instanceof HubError && error.code === "network";
}

/**
 * Downloads the model files of a repo (config, tokenizer, safetensors; see filter.ts)
 * into the cache and returns the snapshot folder. Files already in the snapshot
 * for the current commit cost no request.
 */
export async function downloadModel(repoId: string, options: DownloadOptions = {}): Promise<Snapshot> {
  const revision = options.revision ?? "main";
  const ctx = makeContext(repoId, options);
  const filter = options.filter ?? isModelFile;
  const checkModel = options.filter === undefined;
  const { settings, client, reporter } = ctx;

  if (settings.offline) {
    const { snapshot, problem } = snapshotFromCache(repoId, revision, settings, filter, checkModel);
    if (!snapshot) {
      throw new HubError("not_cached", offlineMessage(repoId, revision, settings.cacheDir, problem ?? undefined));
    }
    return snapshot;
  }

  let info: Awaited<ReturnType<HubClient["repoRevision"]>>;
  try {
    info = await client.repoRevision(repoId, revision, ctx.signal);
  } catch (error) {
    if (!isUnreachable(error)) throw error;
    const { snapshot } = snapshotFromCache(repoId, revision, settings, filter, checkModel);
    if (!snapshot) throw error;
    snapshot.warnings.push(`${(error as Error).message}: using the cached snapshot ${snapshot.commit}`);
    return snapshot;
  }

  let wanted = info.files.filter(filter);
  if (checkModel) {
    const hasWeights = wanted.some((f) => f.endsWith(".safetensors"));
    if (!wanted.includes("config.json") || !hasWeights) {
      const ggufs = info.files.filter((f) => f.endsWith(".gguf"));
      const hint =
        ggufs.length > 0
          ? `it holds GGUF files: name one, e.g. ${repoId}/${ggufs[0]}`
          : "Pensieve needs config.json and *.safetensors weights (an MLX or safetensors conversion)";
      throw new HubError("file_not_found", `${repoId} at ${revision} is not a safetensors model: ${hint}`);
    }
  }

  const commit = info.commit;
  const snapDir = snapshotDir(ctx.repoDir, commit);
  const metadata = new Map<string, RemoteFile>();
  const downloaded = new Set<string>();
  let downloadedBytes = 0;

  const inSnapshot = (filename: string) => fileSize(join(snapDir, filename)) !== null;
  const headAll = (names: string[]) =>
    inPool(names, ctx.concurrency, ctx.signal, async (name, signal) => {
      const meta = await client.fileMetadata(repoId, name, commit, signal);
      metadata.set(name, meta);
      return meta;
    });
  const fetchAll = async (files: RemoteFile[], quiet = false) => {
    const run = quiet ? { ...ctx, reporter: silentReporter } : ctx;
    await inPool(files, ctx.concurrency, ctx.signal, async (file, signal) => {
      if (await ensureBlob(run, file, signal)) {
        downloaded.add(file.filename);
        downloadedBytes += file.size;
        run.reporter.fileDone(file.filename);
      }
    });
  };

  // The index names the shards: fetch it first so only those shards are downloaded.
  const index = "model.safetensors.index.json";
  if (wanted.includes(index)) {
    // Not reported: it is small, and the plan (total bytes) is only known after it.
    if (!inSnapshot(index)) await fetchAll(await headAll([index]), true);
    const indexPath = inSnapshot(index) ? join(snapDir, index) : blobPath(ctx.repoDir, metadata.get(index)!.etag);
    const shards = shardsFromIndex(await readJsonFile(indexPath));
    if (shards.size > 0) wanted = wanted.filter((f) => !f.endsWith(".safetensors") || shards.has(f));
    const missing = [...shards].filter((s) => !info.files.includes(s));
    if (missing.length > 0) {
      throw new HubError("file_not_found", `${repoId}: ${index} names shards the repo lacks: ${missing.join(", ")}`);
    }
  }

  const toResolve = wanted.filter((f) => !metadata.has(f) && !inSnapshot(f));
  const resolved = await headAll(toResolve);
  const toFetch = resolved.filter((f) => fileSize(blobPath(ctx.repoDir, f.etag)) !== f.size);
  reporter.begin({ label: repoId, files: toFetch.length, totalBytes: toFetch.reduce((n, f) => n + f.size, 0) });
  try {
    await fetchAll(resolved);
  } catch (error) {
    reporter.end({ ok: false, error: (error as Error).message });
    throw error;
  }
  reporter.end({ ok: true });

  for (const [name, meta] of metadata) linkSnapshotFile(ctx.repoDir, commit, name, meta.etag);
  writeRef(ctx.repoDir, revision, commit);
  return {
    repoId,
    revision,
    commit,
    dir: snapDir,
    files: wanted.map((f) => cachedFile(snapDir, f, downloaded.has(f))),
    downloadedBytes,
    source: "network",
    warnings: [],
  };
}

export interface SingleFile extends CachedFile {
  repoId: string;
  revision: string;
  commit: string;
  source: "network" | "cache";
  warnings: string[];
}

/** Downloads one file of a repo (e.g. a GGUF) into the cache and returns its snapshot path. */
export async function downloadRepoFile(
  repoId: string,
  filename: string,
  options: DownloadOptions = {},
): Promise<SingleFile> {
  assertRepoFilename(filename);
  const revision = options.revision ?? "main";
  const ctx = makeContext(repoId, options);
  const { settings, client, reporter } = ctx;

  const fromCache = (warnings: string[]): SingleFile | null => {
    const commit = readRef(ctx.repoDir, revision);
    if (!commit) return null;
    const dir = snapshotDir(ctx.repoDir, commit);
    if (fileSize(join(dir, filename)) === null) return null;
    return { ...cachedFile(dir, filename, false), repoId, revision, commit, source: "cache", warnings };
  };

  if (settings.offline) {
    const hit = fromCache([]);
    if (!hit) throw new HubError("not_cached", offlineMessage(repoId, revision, settings.cacheDir, filename));
    return hit;
  }

  let meta: RemoteFile;
  try {
    meta = await client.fileMetadata(repoId, filename, revision, ctx.signal);
  } catch (error) {
    const hit = isUnreachable(error) ? fromCache([`${(error as Error).message}: using the cached file`]) : null;
    if (!hit) throw error;
    return hit;
  }

  const dir = snapshotDir(ctx.repoDir, meta.commit);
  let downloaded = false;
  if (fileSize(join(dir, filename)) === null) {
    const needed = fileSize(blobPath(ctx.repoDir, meta.etag)) !== meta.size;
    reporter.begin({ label: `${repoId}/${filename}`, files: needed ? 1 : 0, totalBytes: needed ? meta.size : 0 });
    try {
      downloaded = await ensureBlob(ctx, meta, ctx.signal);
      if (downloaded) reporter.fileDone(filename);
    } catch (error) {
      reporter.end({ ok: false, error: (error as Error).message });
      throw error;
    }
    reporter.end({ ok: true });
    linkSnapshotFile(ctx.repoDir, meta.commit, filename, meta.etag);
  }
  writeRef(ctx.repoDir, revision, meta.commit);
  return {
    ...cachedFile(dir, filename, downloaded),
    repoId,
    revision,
    commit: meta.commit,
    source: "network",
    warnings: [],
  };
}
