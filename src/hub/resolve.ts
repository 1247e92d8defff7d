// Turns what a user names (nothing, an alias, a path, a Hugging Face repo id)
// into a local model path: the embedded default, a folder or .gguf on disk, or
// a snapshot in the Hugging Face cache that `pensieve setup` downloaded.
import { join } from "node:path";
import { extractEmbeddedModel } from "../mlx/runtime";
import { COMPILED } from "../paths";
import { DEFAULT_MODEL_ALIAS, resolveModelSpec } from "./aliases";
import { findCachedSnapshot, modelFolderProblems } from "./cache";
import { hubSettings } from "./settings";

export { DEFAULT_MODEL_ALIAS };

/** A local model path for `spec`, or an error that says how to get it. */
export function resolveLocalModel(
  spec: string | undefined,
  env: Record<string, string | undefined> = process.env,
): string {
  const name = spec ?? DEFAULT_MODEL_ALIAS;
  const resolved = resolveModelSpec(name, { env });
  const target = resolved.kind === "alias" ? resolved.target : resolved;
  if (target.kind === "local") {
    if (target.exists) return target.path;
    // A compiled binary carries the default model: write it out on first use.
    if (resolved.kind === "alias" && COMPILED && extractEmbeddedModel(target.path)) return target.path;
    if (resolved.kind === "alias")
      throw new Error(`the default model is not extracted yet (${target.path}): run \`npm run setup\``);
    throw new Error(`no model at "${name}": give a model folder, a .gguf file, an alias or a Hugging Face repo id`);
  }
  const snapshot = findCachedSnapshot(hubSettings(env).cacheDir, target.repoId, target.revision);
  if (!snapshot) throw new Error(`model "${name}" is not downloaded yet: run \`pensieve setup --model ${name}\``);
  if (target.filename) return join(snapshot.dir, target.filename);
  const problems = modelFolderProblems(snapshot.dir);
  if (problems.length) {
    throw new Error(
      `the download of "${name}" is incomplete (${problems.join("; ")}): run \`pensieve setup --model ${name}\` again`,
    );
  }
  return snapshot.dir;
}
