// The peers the benchmarks compare against, installed on demand into ignored
// folders: mlx-lm (same MLX version and backend wheel as Pensieve) in
// bench/.venv, node-llama-cpp (prebuilt llama.cpp) in bench/.cache/node.
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { readLock } from "../src/mlx/backend";
import { REPO_ROOT } from "../src/paths";

export const BENCH_DIR = join(REPO_ROOT, "bench");
export const CACHE_DIR = join(BENCH_DIR, ".cache");
export const VENV = join(BENCH_DIR, ".venv");
export const PYTHON = join(VENV, "bin", "python");
export const MLX_LM_VERSION = "0.32.2";
export const NODE_LLAMA_CPP_VERSION = "3.22.1";

function run(argv: string[], cwd?: string): void {
  const r = Bun.spawnSync(argv, { cwd, stdout: "inherit", stderr: "inherit" });
  if (r.exitCode !== 0) throw new Error(`failed (${r.exitCode}): ${argv.join(" ")}`);
}

/** mlx-lm on the same MLX version (and, through `mlx[cpu]`/`mlx[cuda13]`, the same backend wheel). */
export function ensureMlxLm(backend: "cpu" | "cuda" = "cpu"): string {
  const mlx = readLock().mlx.version;
  const extra = backend === "cuda" ? "cuda13" : "cpu";
  if (!existsSync(join(VENV, ".ready"))) {
    if (!existsSync(PYTHON)) run(["python3", "-m", "venv", VENV]);
    run([PYTHON, "-m", "pip", "install", "-q", `mlx[${extra}]==${mlx}`, `mlx-lm==${MLX_LM_VERSION}`]);
    writeFileSync(join(VENV, ".ready"), `${mlx} ${MLX_LM_VERSION}\n`);
  }
  return PYTHON;
}

export function ensureNodeLlamaCpp(): string {
  const dir = join(CACHE_DIR, "node");
  if (!existsSync(join(dir, "node_modules", "node-llama-cpp"))) {
    mkdirSync(dir, { recursive: true });
    // Its own package.json, so npm does not walk up into Pensieve's.
    writeFileSync(join(dir, "package.json"), '{"name":"pensieve-bench-peers","private":true}\n');
    run(["npm", "install", "--no-audit", "--no-fund", `node-llama-cpp@${NODE_LLAMA_CPP_VERSION}`], dir);
  }
  return dir;
}

/** Machine facts for results files. */
export function machine(): Record<string, unknown> {
  const cpu = Bun.spawnSync(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"]).stdout.toString().trim();
  const os = require("node:os") as typeof import("node:os");
  return {
    cpu,
    cores: os.cpus().length,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    platform: `${process.platform}/${process.arch}`,
    kernel: os.release(),
    bun: Bun.version,
    // The knobs a run was given (PENSIEVE_*, MLX_*): a results file then says which path it measured.
    environment: knobs(),
  };
}

/** The PENSIEVE_* and MLX_* variables of this process, as `NAME=value` (empty: defaults). */
export function knobs(): string[] {
  return Object.entries(process.env)
    .filter(([k]) => /^(PENSIEVE|MLX)_/.test(k))
    .map(([k, v]) => `${k}=${v}`)
    .sort();
}

/** The GPU's name, memory and driver from nvidia-smi (every GPU result records its card), or null without one. */
export function gpuName(): string | null {
  try {
    const r = Bun.spawnSync(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"], {
      stderr: "ignore",
    });
    return r.exitCode === 0 ? r.stdout.toString().trim() : null;
  } catch {
    return null;
  }
}
