// The MLX runtime inside a compiled binary (`bun run compile`): the shim,
// libmlx and its libraries are embedded; on first run they are written under
// their real names into a versioned cache folder, in the layout their RUNPATHs
// expect (shim/, shim/mlx/lib/libmlx.so, shim/mlx_<backend>.libs/), and loaded
// from there. Bun's own extraction uses hashed names, which RUNPATH cannot find.
import { createHash } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { linkNvidiaLibraries } from "./provision";

/** The manifest the compile script embeds: which embedded file goes where. */
export interface RuntimeManifest {
  backend: string;
  mlxVersion: string;
  /** Embedded file name → path relative to the runtime folder. */
  files: Record<string, string>;
  /** The embedded default model's file name, if any. */
  defaultModel: string | null;
}

export const MANIFEST_NAME = "pensieve-runtime.json";

function embedded(name: string): Blob | null {
  return (Bun.embeddedFiles as Array<Blob & { name: string }>).find((f) => f.name === name) ?? null;
}

/**
 * Synchronous read of an embedded file (the FFI library opens at import time,
 * before anything asynchronous could run): they sit in Bun's virtual /$bunfs.
 */
function bytesOf(blob: Blob): Uint8Array {
  return readFileSync(join("/$bunfs/root", (blob as Blob & { name: string }).name));
}

function cacheRoot(env: Record<string, string | undefined>): string {
  return join(env.XDG_CACHE_HOME || join(homedir(), ".cache"), "pensieve", "runtime");
}

/**
 * Writes the embedded runtime out (once per content) and returns the shim's path.
 * Null when this binary embeds none.
 */
export function extractRuntime(env: Record<string, string | undefined> = process.env): string | null {
  const manifestBlob = embedded(MANIFEST_NAME);
  if (!manifestBlob) return null;
  const manifestText = new TextDecoder().decode(bytesOf(manifestBlob));
  const manifest = JSON.parse(manifestText) as RuntimeManifest;
  const digest = createHash("sha256").update(manifestText).digest("hex").slice(0, 12);
  const dir = join(cacheRoot(env), `mlx-${manifest.backend}-${manifest.mlxVersion}-${digest}`);
  const shim = join(dir, manifest.files["libpensieve_mlx.so"] ?? "libpensieve_mlx.so");
  if (existsSync(join(dir, ".complete"))) return shim;
  const tmp = `${dir}.partial-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  for (const [name, rel] of Object.entries(manifest.files)) {
    const blob = embedded(name);
    if (!blob) throw new Error(`the binary lacks its embedded ${name}: rebuild it with \`bun run compile\``);
    const target = join(tmp, rel);
    mkdirSync(dirname(target), { recursive: true });
    writeFileSync(target, bytesOf(blob));
    chmodSync(target, 0o755);
  }
  writeFileSync(join(tmp, ".complete"), `${manifest.mlxVersion}\n`);
  // Another process may have finished first: its copy is as good as ours.
  if (existsSync(join(dir, ".complete"))) rmSync(tmp, { recursive: true, force: true });
  else {
    rmSync(dir, { recursive: true, force: true });
    renameSync(tmp, dir);
  }
  if (manifest.backend === "cuda") linkNvidiaLibraries(dir);
  return shim;
}

/** Writes the embedded default model to `target` when it is missing there. */
export function extractEmbeddedModel(target: string): boolean {
  const manifestBlob = embedded(MANIFEST_NAME);
  if (!manifestBlob || existsSync(target)) return false;
  const manifest = JSON.parse(new TextDecoder().decode(bytesOf(manifestBlob))) as RuntimeManifest;
  const blob = manifest.defaultModel ? embedded(manifest.defaultModel) : null;
  if (!blob) return false;
  mkdirSync(dirname(target), { recursive: true });
  writeFileSync(`${target}.partial`, bytesOf(blob));
  renameSync(`${target}.partial`, target);
  return true;
}
