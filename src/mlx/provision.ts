// Provisioning MLX for this machine: the backend wheel (pip download, sha256
// from scripts/mlx.lock.json, unpacked under vendor/) and the shim built
// against it. Idempotent: finished steps are skipped.
import { createHash } from "node:crypto";
import {
  cpSync,
  createReadStream,
  existsSync,
  mkdirSync,
  readdirSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { BUILD_DIR, VENDOR_DIR } from "../paths";
import { type Backend, chooseBackend, readLock, runtimeLayout } from "./backend";
import { buildShim } from "./build-shim";

export type Log = (line: string) => void;

async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

function python(): string {
  for (const p of [process.env.PYTHON, "python3", "python"]) {
    if (p && Bun.which(p)) return p;
  }
  throw new Error("pip is needed to download MLX: install python3 with pip (Debian: apt-get install python3-pip)");
}

/** pip download --no-deps of one pinned wheel, verified against the lock's sha256. */
export async function downloadWheel(
  pkg: string,
  version: string,
  file: string,
  expected: string,
  options: { platform?: string; log?: Log } = {},
): Promise<string> {
  const cache = join(VENDOR_DIR, ".downloads");
  mkdirSync(cache, { recursive: true });
  const path = join(cache, file);
  if (existsSync(path) && (await sha256File(path)) === expected) return path;
  rmSync(path, { force: true });
  options.log?.(`downloading ${pkg}==${version} with pip ...`);
  const argv = [python(), "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", cache];
  if (options.platform) argv.push("--only-binary=:all:", "--platform", options.platform, "--python-version", "3.12");
  argv.push(`${pkg}==${version}`);
  const r = Bun.spawnSync(argv, { stdout: "inherit", stderr: "inherit" });
  if (r.exitCode !== 0) throw new Error(`pip download ${pkg}==${version} failed (exit ${r.exitCode})`);
  if (!existsSync(path)) throw new Error(`pip did not produce ${file}: found ${readdirSync(cache).join(", ")}`);
  const got = await sha256File(path);
  if (got !== expected) {
    rmSync(path, { force: true });
    throw new Error(`${file}: sha256 ${got} does not match the lock (${expected})`);
  }
  return path;
}

export function unzip(archive: string, dest: string, members: string[] = []): void {
  const r = Bun.spawnSync(["unzip", "-q", "-o", archive, ...members, "-d", dest], {
    stdout: "inherit",
    stderr: "inherit",
  });
  if (r.exitCode !== 0) throw new Error(`unzip ${archive} failed (exit ${r.exitCode}); is unzip installed?`);
}

/**
 * The backend wheel, unpacked under vendor/ (reused when present). `fromDir`:
 * an already unpacked wheel (a machine with no network gets it carried in).
 */
export async function ensureMlx(backend: Backend, log?: Log, fromDir?: string): Promise<string> {
  const lock = readLock();
  const layout = runtimeLayout(backend, lock);
  const done = join(layout.wheelDir, ".complete");
  if (!existsSync(done)) {
    const wheel = lock.mlx.wheels[backend];
    const tmp = `${layout.wheelDir}.partial`;
    rmSync(tmp, { recursive: true, force: true });
    if (fromDir) {
      cpSync(fromDir, tmp, { recursive: true });
    } else {
      const host = backend === "cpu" && process.platform === "linux" && process.arch === "x64";
      const archive = await downloadWheel(wheel.package, lock.mlx.version, wheel.file, wheel.sha256, {
        platform: host ? undefined : wheel.platform,
        log,
      });
      unzip(archive, tmp);
    }
    rmSync(layout.wheelDir, { recursive: true, force: true });
    renameSync(tmp, layout.wheelDir);
    writeFileSync(done, `${wheel.file}\n${fromDir ? `unpacked from ${fromDir}` : wheel.sha256}\n`);
    log?.(`MLX ${lock.mlx.version} (${wheel.package}) unpacked in ${layout.wheelDir}`);
  }
  if (backend === "cuda") linkNvidiaLibraries(layout.wheelDir, log);
  return layout.wheelDir;
}

/** Where Python's nvidia-* packages live (site-packages/nvidia), if any. */
function pythonNvidiaDir(): string | null {
  for (const py of [process.env.PYTHON, "python3", "python"]) {
    if (!py || !Bun.which(py)) continue;
    const r = Bun.spawnSync([py, "-c", "import nvidia, os; print(list(nvidia.__path__)[0])"], {
      stdout: "pipe",
      stderr: "ignore",
    });
    const dir = r.stdout.toString().trim();
    if (r.exitCode === 0 && dir && existsSync(dir)) return dir;
  }
  return null;
}

/**
 * libmlx (CUDA) looks for the NVIDIA libraries at $ORIGIN/../../nvidia/<pkg>/lib,
 * the site-packages layout. Link that folder beside the unpacked wheel to the
 * Python nvidia-* packages when there are some; otherwise the system CUDA
 * (ld.so's paths) must provide them.
 */
export function linkNvidiaLibraries(wheelDir: string, log?: Log): void {
  const link = join(wheelDir, "nvidia");
  if (existsSync(link)) return;
  const found = pythonNvidiaDir();
  if (found) {
    symlinkSync(found, link);
    log?.(`NVIDIA libraries: ${found} (Python nvidia-* packages)`);
  } else {
    log?.("NVIDIA libraries: no Python nvidia-* packages; relying on the system CUDA libraries");
  }
}

/** MLX and the shim for the chosen backend; records it as the installed one. */
export async function provisionMlx(explicitBackend?: string, log: Log = () => {}, fromDir?: string) {
  const choice = chooseBackend(explicitBackend);
  log(`backend: ${choice.backend} (${choice.reason})`);
  await ensureMlx(choice.backend, log, fromDir);
  const shim = buildShim(choice.backend, log);
  mkdirSync(BUILD_DIR, { recursive: true });
  writeFileSync(join(BUILD_DIR, "backend"), `${choice.backend}\n`);
  return { backend: choice.backend, reason: choice.reason, shim };
}
