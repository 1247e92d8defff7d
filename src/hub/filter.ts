// Which files of a repo to download. A model needs its config, tokenizer and
// safetensors weights; PyTorch (*.bin, *.pth), ONNX, GGUF and other variants of
// the same weights are skipped so a download is not several times too large.

/** Root-level files of an MLX / safetensors model repo. */
const MODEL_FILE_GLOBS = [
  "config.json",
  "generation_config.json",
  "tokenizer*.json",
  "special_tokens_map.json",
  "*.safetensors",
  "model.safetensors.index.json",
  // Newer conversions keep the chat template out of tokenizer_config.json.
  "chat_template.jinja",
  "chat_template.json",
] as const;

/** A glob as a regular expression: `*` and `?` stay within a path segment, `**` crosses them. */
function globToRegExp(glob: string): RegExp {
  let source = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === "*" && glob[i + 1] === "*") {
      source += ".*";
      i++;
    } else if (c === "*") source += "[^/]*";
    else if (c === "?") source += "[^/]";
    else source += c.replace(/[.+^${}()|[\]\\]/g, "\\$&");
  }
  return new RegExp(`^${source}$`);
}

export type FileFilter = (filename: string) => boolean;

function fileFilter(globs: readonly string[]): FileFilter {
  const patterns = globs.map(globToRegExp);
  return (filename) => patterns.some((p) => p.test(filename));
}

/** The files of a model repo Pensieve needs. */
export const isModelFile: FileFilter = fileFilter(MODEL_FILE_GLOBS);

/** The weight shards an index names, so stray extra copies of the weights are not fetched. */
export function shardsFromIndex(indexJson: unknown): Set<string> {
  const map = (indexJson as { weight_map?: unknown } | null)?.weight_map;
  if (!map || typeof map !== "object") return new Set();
  return new Set(Object.values(map as Record<string, unknown>).filter((v): v is string => typeof v === "string"));
}
