// Prepares a checkout to run: the MLX backend wheel, the shim, and the embedded
// default model (SmolLM2-135M-Instruct). Idempotent. `npm run setup` runs it.
//
//   bun scripts/setup.ts [--backend cpu|cuda|metal] [--no-model] [--wheel-dir DIR]
// --wheel-dir: an unpacked backend wheel to use instead of pip (machines without network).
import { provisionMlx } from "../src/mlx/provision";
import { ensureEmbeddedModel } from "../src/models/embedded";

const log = (s: string) => console.log(`[setup] ${s}`);
const args = process.argv.slice(2);
const flag = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
try {
  const r = await provisionMlx(flag("--backend"), log, flag("--wheel-dir"));
  const model = args.includes("--no-model") ? null : await ensureEmbeddedModel(log);
  log(`ready: shim ${r.shim}${model ? `, default model ${model}` : ""}`);
} catch (e) {
  console.error(`[setup] ${(e as Error).message}`);
  process.exit(1);
}
