// Writes a random-weight model in the real mlx-community format (see
// src/models/random.ts), e.g. the full-size Phi-3-mini-128k for benchmarks:
//   bun scripts/make-random-model.ts --config DIR/config.json --tokenizer-from DIR --out OUT [--seed 1] [--device gpu]
import { writeRandomModel, shrinkConfig } from "../src/models/random";
import * as mx from "../src/mlx";

const args = process.argv.slice(2);
const flag = (name: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};
const config = flag("config");
const tokenizerFrom = flag("tokenizer-from");
const out = flag("out");
if (!config || !tokenizerFrom || !out) {
  console.error(
    "usage: bun scripts/make-random-model.ts --config config.json --tokenizer-from DIR --out DIR [--seed N] [--device cpu|gpu] [--override JSON]",
  );
  process.exit(2);
}
mx.setDevice(flag("device") === "gpu" ? "gpu" : "cpu");
const started = performance.now();
const n = writeRandomModel(out, {
  config: shrinkConfig(config, JSON.parse(flag("override") ?? "{}")),
  tokenizerFrom,
  seed: Number(flag("seed") ?? 1),
});
console.log(`wrote ${out}: ${n} tensors in ${((performance.now() - started) / 1000).toFixed(1)} s`);
