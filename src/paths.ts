// Where Pensieve keeps things on disk. Everything else asks here.
import { existsSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join, resolve } from "node:path";

/**
 * The source checkout: the nearest folder above this module with a
 * package.json (this file lives in <repo>/src, or in a bundle under <repo>/dist).
 */
function findRepoRoot(start: string): string {
  for (let dir = start; ; dir = dirname(dir)) {
    if (existsSync(join(dir, "package.json"))) return dir;
    if (dirname(dir) === dir) return resolve(start, "..");
  }
}

export const REPO_ROOT = findRepoRoot(import.meta.dir);

/** True when running from a source checkout (not a compiled binary). */
export const FROM_SOURCE = !import.meta.path.startsWith("/$bunfs") && existsSync(join(REPO_ROOT, "package.json"));

/**
 * Pensieve's data folder: models, prompt caches, runtime libraries.
 * PENSIEVE_HOME wins; a source checkout keeps its data inside the checkout so a
 * fresh clone is self-contained; an installed binary uses ~/.local/share/pensieve.
 */
export function pensieveHome(env: Record<string, string | undefined> = process.env): string {
  if (env.PENSIEVE_HOME) return resolve(env.PENSIEVE_HOME);
  if (FROM_SOURCE) return join(REPO_ROOT, ".pensieve");
  const xdg = env.XDG_DATA_HOME || join(homedir(), ".local", "share");
  return join(xdg, "pensieve");
}

export function modelsDir(env: Record<string, string | undefined> = process.env): string {
  return join(pensieveHome(env), "models");
}

/** Unpacked MLX backend wheels, one folder per backend and version. */
export const VENDOR_DIR = join(REPO_ROOT, "vendor");

/** Build outputs (the shim), one folder per backend and version. */
export const BUILD_DIR = join(REPO_ROOT, "build");

/** True inside a `bun build --compile` binary (its modules live in Bun's virtual /$bunfs). */
export const COMPILED = import.meta.path.startsWith("/$bunfs") || import.meta.path.startsWith("B:/~BUN");

/**
 * The command that runs this program again (the engine child process uses it):
 * the compiled binary itself, else Bun with the CLI entry (PENSIEVE_CLI names a
 * bundled entry, e.g. dist/pensieve.js on a machine without node_modules).
 */
export function selfCommand(): string[] {
  if (COMPILED) return [process.execPath];
  return [process.execPath, process.env.PENSIEVE_CLI ?? join(REPO_ROOT, "src", "cli.ts")];
}
