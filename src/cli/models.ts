// `pensieve models` and `pensieve rm`: the models on this machine (GGUF files and
// model folders in modelsDir(), model repos in the Hugging Face cache) and their
// removal. Removal never leaves those two folders.
import { existsSync, readdirSync, realpathSync, rmSync, statSync } from "node:fs";
import { basename, dirname, isAbsolute, join, relative, resolve } from "node:path";
import { loadConfig } from "../config";
import {
  EMBEDDED_MODEL_FILE,
  type HubModelSpec,
  type LocalModelSpec,
  MODEL_ALIASES,
  type ResolvedModelSpec,
  resolveModelSpec,
} from "../hub/aliases";
import {
  blobNameOf,
  blobPath,
  diskUsage,
  fileSize,
  listCachedRepos,
  modelFolderProblems,
  repoCacheDir,
  repoFolderName,
  snapshotDir,
  snapshotFiles,
} from "../hub/cache";
import { formatBytes } from "../hub/format";
import { type Env, hubSettings } from "../hub/settings";
import { modelsDir } from "../paths";

export interface ModelEntry {
  /** What to pass as `model`: a repo id, repo/file.gguf, or a path. */
  name: string;
  /** embedded: the default shipped by setup; local: other files in modelsDir; hub-cache: the HF cache. */
  kind: "embedded" | "local" | "hub-cache";
  format: "gguf" | "folder";
  /** The file, the model folder, or the snapshot folder. */
  path: string;
  /** Bytes that removing it frees (for a cached repo: all of its blobs). */
  sizeBytes: number;
  repoId: string | null;
  commit: string | null;
  /** Revisions (refs) pointing at this snapshot. */
  refs: string[];
  /** Aliases that lead here. */
  aliases: string[];
  /** True for the model the configuration selects. */
  selected: boolean;
  /** Why the model would not load (e.g. missing shards); empty when complete. */
  problems: string[];
}

export interface ModelList {
  models: ModelEntry[];
  /** The configured model and whether it is on this machine. */
  selected: { spec: string; present: boolean; error: string | null };
}

export interface ModelsOptions {
  env?: Env;
  cwd?: string;
  /** The model spec the configuration selects (default: loaded from the configuration). */
  selected?: string;
}

function target(resolved: ResolvedModelSpec): LocalModelSpec | HubModelSpec {
  return resolved.kind === "alias" ? resolved.target : resolved;
}

function matches(entry: ModelEntry, spec: LocalModelSpec | HubModelSpec): boolean {
  if (spec.kind === "local") return resolve(spec.path) === resolve(entry.path);
  if (entry.repoId?.toLowerCase() !== spec.repoId.toLowerCase()) return false;
  if (spec.filename) return entry.format === "gguf" && entry.name.endsWith(`/${spec.filename}`);
  return (
    entry.format === "folder" &&
    (spec.revision === "main" || entry.refs.includes(spec.revision) || entry.commit === spec.revision)
  );
}

function localModels(dir: string): ModelEntry[] {
  let names: string[];
  try {
    names = readdirSync(dir).sort();
  } catch {
    return [];
  }
  const out: ModelEntry[] = [];
  for (const name of names) {
    if (name.startsWith(".")) continue;
    const path = join(dir, name);
    const base = { repoId: null, commit: null, refs: [], aliases: [], selected: false };
    if (name.endsWith(".gguf") && statSync(path).isFile()) {
      const kind = name === EMBEDDED_MODEL_FILE ? "embedded" : "local";
      out.push({ ...base, name: path, kind, format: "gguf", path, sizeBytes: statSync(path).size, problems: [] });
    } else if (statSync(path).isDirectory() && existsSync(join(path, "config.json"))) {
      const problems = modelFolderProblems(path);
      out.push({ ...base, name: path, kind: "local", format: "folder", path, sizeBytes: diskUsage(path), problems });
    }
  }
  return out;
}

/** The snapshot a repo's listing shows: the one refs/main names, else the newest. */
function preferredSnapshot(repoDir: string, refs: Record<string, string>, snapshots: string[]): string | null {
  if (refs.main && snapshots.includes(refs.main)) return refs.main;
  let best: { commit: string; mtime: number } | null = null;
  for (const commit of snapshots) {
    const mtime = statSync(snapshotDir(repoDir, commit)).mtimeMs;
    if (!best || mtime > best.mtime) best = { commit, mtime };
  }
  return best?.commit ?? null;
}

function cachedModels(cacheDir: string): ModelEntry[] {
  const out: ModelEntry[] = [];
  for (const repo of listCachedRepos(cacheDir)) {
    const commit = preferredSnapshot(repo.repoDir, repo.refs, repo.snapshots);
    if (!commit) continue;
    const dir = snapshotDir(repo.repoDir, commit);
    const files = snapshotFiles(dir);
    const refs = Object.entries(repo.refs)
      .filter(([, c]) => c === commit)
      .map(([r]) => r);
    const base = { kind: "hub-cache" as const, repoId: repo.repoId, commit, refs, aliases: [], selected: false };
    if (files.includes("config.json") && files.some((f) => f.endsWith(".safetensors"))) {
      out.push({
        ...base,
        name: repo.repoId,
        format: "folder",
        path: dir,
        sizeBytes: repo.sizeOnDisk,
        problems: modelFolderProblems(dir),
      });
    }
    for (const file of files.filter((f) => f.endsWith(".gguf"))) {
      const path = join(dir, file);
      out.push({
        ...base,
        name: `${repo.repoId}/${file}`,
        format: "gguf",
        path,
        sizeBytes: fileSize(path) ?? 0,
        problems: [],
      });
    }
  }
  return out;
}

/** Models on this machine, with the aliases that lead to each and the one the configuration selects. */
export function listModels(options: ModelsOptions = {}): ModelList {
  const env = options.env ?? process.env;
  const models = [...localModels(modelsDir(env)), ...cachedModels(hubSettings(env).cacheDir)];
  for (const alias of MODEL_ALIASES) {
    const spec = target(resolveModelSpec(alias.name, { env, cwd: options.cwd }));
    for (const entry of models) if (matches(entry, spec)) entry.aliases.push(alias.name);
  }

  let spec = options.selected ?? null;
  let error: string | null = null;
  if (spec === null) {
    try {
      spec = loadConfig({ env }).config.model;
    } catch (e) {
      error = (e as Error).message;
    }
  }
  let present = false;
  if (spec !== null) {
    try {
      const wanted = target(resolveModelSpec(spec, { env, cwd: options.cwd }));
      const hit = models.find((m) => matches(m, wanted));
      if (hit) hit.selected = present = true;
    } catch (e) {
      error = (e as Error).message;
    }
  }
  return { models, selected: { spec: spec ?? "", present, error } };
}

/** A table for the terminal. */
export function formatModelList(list: ModelList): string {
  if (list.models.length === 0) return "no models yet: run `npm run setup` for the default, or pull one";
  const rows = list.models.map((m) => {
    const tags = [
      m.kind,
      m.format,
      ...m.aliases.map((a) => `alias ${a}`),
      ...m.problems.map((p) => `INCOMPLETE: ${p}`),
    ];
    return `${m.selected ? "*" : " "} ${m.name.padEnd(48)} ${formatBytes(m.sizeBytes).padStart(10)}  ${tags.join(", ")}`;
  });
  const note = list.selected.present
    ? ""
    : `\n(configured model "${list.selected.spec}" is not on this machine${list.selected.error ? `: ${list.selected.error}` : ""})`;
  return rows.join("\n") + note;
}

export interface RemoveResult {
  removed: string[];
  freedBytes: number;
}

function isInside(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel !== "" && !rel.startsWith("..") && !isAbsolute(rel);
}

function realOrSelf(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return resolve(path);
  }
}

/** Removes one GGUF file of a cached repo: its snapshot links, and its blobs no other link uses. */
function removeCachedFile(repoDir: string, filename: string): RemoveResult {
  const snapshotsDir = join(repoDir, "snapshots");
  const commits = existsSync(snapshotsDir) ? readdirSync(snapshotsDir) : [];
  const removed: string[] = [];
  const blobs = new Set<string>();
  let freedBytes = 0;
  for (const commit of commits) {
    const link = join(snapshotsDir, commit, filename);
    const blob = blobNameOf(link);
    if (blob) blobs.add(blob);
    else if (existsSync(link)) freedBytes += fileSize(link) ?? 0;
    if (existsSync(link) || blob) {
      rmSync(link, { force: true });
      removed.push(link);
    }
  }
  const stillUsed = new Set(
    commits.flatMap((c) => snapshotFiles(join(snapshotsDir, c)).map((f) => blobNameOf(join(snapshotsDir, c, f)))),
  );
  for (const blob of blobs) {
    if (stillUsed.has(blob)) continue;
    freedBytes += fileSize(blobPath(repoDir, blob)) ?? 0;
    rmSync(blobPath(repoDir, blob), { force: true });
    removed.push(blobPath(repoDir, blob));
  }
  return { removed, freedBytes };
}

/**
 * Removes a model: a cached Hub repo (every revision), one GGUF file of a cached repo,
 * or a file or folder under modelsDir(). Anything else (a path elsewhere) is refused.
 */
export function removeModel(spec: string, options: { env?: Env; cwd?: string } = {}): RemoveResult {
  const env = options.env ?? process.env;
  const { cacheDir } = hubSettings(env);
  const wanted = target(resolveModelSpec(spec, { env, cwd: options.cwd }));

  if (wanted.kind === "hub") {
    const repoDir = repoCacheDir(cacheDir, wanted.repoId);
    if (!existsSync(repoDir)) throw new Error(`${wanted.repoId} is not in the Hugging Face cache (${cacheDir})`);
    if (wanted.filename) {
      const result = removeCachedFile(repoDir, wanted.filename);
      if (result.removed.length === 0) {
        throw new Error(`${wanted.repoId}/${wanted.filename} is not in the Hugging Face cache (${cacheDir})`);
      }
      return result;
    }
    const freedBytes = diskUsage(repoDir);
    rmSync(repoDir, { recursive: true, force: true });
    rmSync(join(cacheDir, ".locks", repoFolderName(wanted.repoId)), { recursive: true, force: true });
    return { removed: [repoDir], freedBytes };
  }

  if (!wanted.exists) throw new Error(`no such model file or folder: ${wanted.path}`);
  // Resolve the parent, not the path: a link in modelsDir is removed as a link, never its target.
  const path = join(realOrSelf(dirname(wanted.path)), basename(wanted.path));
  const models = realOrSelf(modelsDir(env));
  const cache = realOrSelf(cacheDir);
  if (isInside(models, path)) {
    const freedBytes = diskUsage(path);
    rmSync(path, { recursive: true, force: true });
    return { removed: [path], freedBytes };
  }
  if (isInside(cache, path)) {
    const folder = relative(cache, path).split("/")[0]!;
    if (folder.startsWith("models--")) {
      const repoDir = join(cache, folder);
      const freedBytes = diskUsage(repoDir);
      rmSync(repoDir, { recursive: true, force: true });
      return { removed: [repoDir], freedBytes };
    }
  }
  throw new Error(
    `refusing to remove ${path}: Pensieve only deletes models in ${models} or in the Hugging Face cache (${cache})`,
  );
}
