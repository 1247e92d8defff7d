// `bun run compile`: one self-contained binary, dist/pensieve. Bun's runtime,
// all of Pensieve, the MLX shim, libmlx with its libraries, and the embedded
// default model go inside it; the binary writes the native parts out to
// ~/.cache/pensieve/runtime/ on first run (see src/mlx/runtime.ts) and starts
// its engine process by running itself with the `engine` subcommand.
//
//   bun scripts/compile.ts [--no-model] [--out dist/pensieve]
import { existsSync, mkdirSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { installedBackend, readLock, runtimeLayout } from "../src/mlx/backend";
import { MANIFEST_NAME, type RuntimeManifest } from "../src/mlx/runtime";
import { embeddedModelPath } from "../src/models/embedded";
import { REPO_ROOT } from "../src/paths";

const args = process.argv.slice(2);
const outAt = args.indexOf("--out");
const out = outAt >= 0 ? (args[outAt + 1] as string) : join(REPO_ROOT, "dist", "pensieve");
const backend = installedBackend();
if (!backend) throw new Error("set-up first: npm run setup");
const layout = runtimeLayout(backend);
if (!existsSync(layout.shimPath)) throw new Error(`no shim at ${layout.shimPath}: npm run setup`);

// Embedded file → where it goes in the runtime folder (the layout RUNPATH expects).
const files: Record<string, string> = {};
const assets: string[] = [];
const add = (path: string, rel: string) => {
  files[basename(path)] = rel;
  assets.push(path);
};
add(layout.shimPath, "libpensieve_mlx.so");
for (const f of readdirSync(layout.libDir)) {
  if (f.endsWith(".so") || f.endsWith(".dylib") || f.endsWith(".metallib")) add(join(layout.libDir, f), `mlx/lib/${f}`);
}
for (const d of readdirSync(layout.wheelDir)) {
  if (!d.endsWith(".libs")) continue;
  for (const f of readdirSync(join(layout.wheelDir, d))) add(join(layout.wheelDir, d, f), `${d}/${f}`);
}
const model = args.includes("--no-model") ? null : embeddedModelPath();
if (model && !existsSync(model)) throw new Error(`the default model is missing at ${model}: npm run setup`);
const manifest: RuntimeManifest = {
  backend,
  mlxVersion: readLock().mlx.version,
  files,
  defaultModel: model ? basename(model) : null,
};
mkdirSync(join(REPO_ROOT, "dist"), { recursive: true });
const manifestPath = join(REPO_ROOT, "dist", MANIFEST_NAME);
writeFileSync(manifestPath, JSON.stringify(manifest, null, 2));
// Workers are entry points of their own (src/server/prompt-workers.ts starts this one).
const entries = [join(REPO_ROOT, "src", "cli.ts"), join(REPO_ROOT, "src", "server", "prompt-worker.ts")];
const argv = [process.execPath, "build", "--compile", ...entries, "--outfile", out, "--minify"];
for (const a of [...assets, manifestPath, ...(model ? [model] : [])]) argv.push("--asset", a);
const started = performance.now();
const r = Bun.spawnSync(argv, { stdout: "inherit", stderr: "inherit" });
if (r.exitCode !== 0) process.exit(r.exitCode ?? 1);
const mib = (statSync(out).size / 2 ** 20).toFixed(1);
console.log(
  `${out}: ${mib} MiB (${backend} backend${model ? ", default model inside" : ""}) in ${((performance.now() - started) / 1000).toFixed(1)} s`,
);
