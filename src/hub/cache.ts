// The Hugging Face cache layout, shared with huggingface_hub (Python) so that
// either side reuses the other's downloads:
//   <cacheDir>/models--<org>--<name>/
//     blobs/<etag>                  file contents, named by sha256 (LFS) or git sha1
//     snapshots/<commit>/<file>     relative symlink to ../../blobs/<etag>
//     refs/<revision>               the commit a branch or tag pointed at, last we looked
import {
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { basename, dirname, join, relative } from "node:path";
import { assertRepoFilename, isCommitHash } from "./client";
import { HubError } from "./errors";

export function repoFolderName(repoId: string): string {
  return `models--${repoId.split("/").join("--")}`;
}

/** The repo id of a cache folder name, or null for anything else. */
function repoIdFromFolder(folder: string): string | null {
  const m = /^models--([^-].*?)--(.+)$/.exec(folder);
  return m ? `${m[1]}/${m[2]}` : null;
}

export function repoCacheDir(cacheDir: string, repoId: string): string {
  return join(cacheDir, repoFolderName(repoId));
}

export function blobPath(repoDir: string, etag: string): string {
  return join(repoDir, "blobs", etag);
}

export function snapshotDir(repoDir: string, commit: string): string {
  return join(repoDir, "snapshots", commit);
}

function assertRevision(revision: string): void {
  if (!revision || revision.startsWith("/") || revision.split("/").some((p) => p === "" || p === "." || p === "..")) {
    throw new HubError("invalid_request", `"${revision}" is not a usable revision name`);
  }
}

/** The commit a revision resolves to in the cache: itself for a commit hash, else refs/<revision>. */
export function readRef(repoDir: string, revision: string): string | null {
  if (isCommitHash(revision)) return revision;
  assertRevision(revision);
  try {
    const commit = readFileSync(join(repoDir, "refs", revision), "utf8").trim();
    return isCommitHash(commit) ? commit : null;
  } catch {
    return null;
  }
}

export function writeRef(repoDir: string, revision: string, commit: string): void {
  if (revision === commit) return;
  assertRevision(revision);
  const path = join(repoDir, "refs", revision);
  mkdirSync(dirname(path), { recursive: true });
  // huggingface_hub writes the bare hash, without a newline.
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, commit);
  renameSync(tmp, path);
}

/** Points snapshots/<commit>/<filename> at the blob (a relative symlink; a copy where links fail). */
export function linkSnapshotFile(repoDir: string, commit: string, filename: string, etag: string): string {
  assertRepoFilename(filename);
  const link = join(snapshotDir(repoDir, commit), filename);
  const blob = blobPath(repoDir, etag);
  const target = relative(dirname(link), blob);
  mkdirSync(dirname(link), { recursive: true });
  try {
    const existing = lstatSync(link);
    if (existing.isSymbolicLink() && readlinkSync(link) === target) return link;
    rmSync(link, { force: true });
  } catch {
    // nothing there yet
  }
  try {
    symlinkSync(target, link);
  } catch {
    copyFileSync(blob, link);
  }
  return link;
}

/** Size of a path (following links), or null when it does not exist. */
export function fileSize(path: string): number | null {
  try {
    return statSync(path).size;
  } catch {
    return null;
  }
}

/** The blob a snapshot file points at (its etag), or null for a plain copy. */
export function blobNameOf(snapshotFile: string): string | null {
  try {
    return lstatSync(snapshotFile).isSymbolicLink() ? basename(readlinkSync(snapshotFile)) : null;
  } catch {
    return null;
  }
}

/** Files of a snapshot whose content is present, relative to the snapshot and sorted. */
export function snapshotFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (sub: string) => {
    let entries: string[];
    try {
      entries = readdirSync(join(dir, sub));
    } catch {
      return;
    }
    for (const name of entries) {
      const rel = sub ? `${sub}/${name}` : name;
      let stat: ReturnType<typeof statSync>;
      try {
        stat = statSync(join(dir, rel));
      } catch {
        continue; // a dangling link: its blob is gone
      }
      if (stat.isDirectory()) walk(rel);
      else out.push(rel);
    }
  };
  walk("");
  return out.sort();
}

export interface CachedSnapshot {
  repoId: string;
  repoDir: string;
  commit: string;
  dir: string;
}

/** The cached snapshot a revision resolves to, or null when the cache does not have it. */
export function findCachedSnapshot(cacheDir: string, repoId: string, revision: string): CachedSnapshot | null {
  const repoDir = repoCacheDir(cacheDir, repoId);
  const commit = readRef(repoDir, revision);
  if (!commit) return null;
  const dir = snapshotDir(repoDir, commit);
  return existsSync(dir) ? { repoId, repoDir, commit, dir } : null;
}

/** What a model folder lacks to be loadable (config.json, every safetensors shard); empty when complete. */
export function modelFolderProblems(dir: string): string[] {
  const problems: string[] = [];
  if (!existsSync(join(dir, "config.json"))) problems.push("config.json is missing");
  const indexPath = join(dir, "model.safetensors.index.json");
  if (existsSync(indexPath)) {
    try {
      const index = JSON.parse(readFileSync(indexPath, "utf8")) as { weight_map?: Record<string, string> };
      const shards = [...new Set(Object.values(index.weight_map ?? {}))];
      const missing = shards.filter((s) => !existsSync(join(dir, s)));
      if (shards.length === 0) problems.push("model.safetensors.index.json lists no shards");
      if (missing.length > 0) problems.push(`missing weight shards: ${missing.join(", ")}`);
    } catch (e) {
      problems.push(`model.safetensors.index.json is unreadable: ${(e as Error).message}`);
    }
  } else if (!snapshotFiles(dir).some((f) => f.endsWith(".safetensors"))) {
    problems.push("no *.safetensors weights");
  }
  return problems;
}

/** Bytes used by a folder, each file counted once (links are not followed). */
export function diskUsage(path: string): number {
  let total = 0;
  let stat: ReturnType<typeof lstatSync>;
  try {
    stat = lstatSync(path);
  } catch {
    return 0;
  }
  if (stat.isDirectory()) {
    for (const name of readdirSync(path)) total += diskUsage(join(path, name));
  } else if (stat.isFile()) {
    total += stat.size;
  }
  return total;
}

export interface CachedRepo {
  repoId: string;
  repoDir: string;
  /** revision → commit, from refs/. */
  refs: Record<string, string>;
  /** Commits with a snapshot folder. */
  snapshots: string[];
  /** Bytes of every blob of the repo (all revisions). */
  sizeOnDisk: number;
}

function readRefs(refsDir: string, prefix = ""): Record<string, string> {
  const refs: Record<string, string> = {};
  let entries: string[];
  try {
    entries = readdirSync(refsDir);
  } catch {
    return refs;
  }
  for (const name of entries) {
    const path = join(refsDir, name);
    if (statSync(path).isDirectory()) Object.assign(refs, readRefs(path, `${prefix}${name}/`));
    else {
      const commit = readFileSync(path, "utf8").trim();
      if (isCommitHash(commit)) refs[`${prefix}${name}`] = commit;
    }
  }
  return refs;
}

/** Every model repo in the cache. */
export function listCachedRepos(cacheDir: string): CachedRepo[] {
  let entries: string[];
  try {
    entries = readdirSync(cacheDir);
  } catch {
    return [];
  }
  const repos: CachedRepo[] = [];
  for (const folder of entries.sort()) {
    const repoId = repoIdFromFolder(folder);
    if (!repoId) continue;
    const repoDir = join(cacheDir, folder);
    let snapshots: string[] = [];
    try {
      snapshots = readdirSync(join(repoDir, "snapshots")).filter(isCommitHash);
    } catch {
      // a repo folder without snapshots (an interrupted first download)
    }
    repos.push({
      repoId,
      repoDir,
      refs: readRefs(join(repoDir, "refs")),
      snapshots,
      sizeOnDisk: diskUsage(join(repoDir, "blobs")),
    });
  }
  return repos;
}
