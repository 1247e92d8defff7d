// What the int8-activation CPU matmul costs against the exact float one, on a
// model: perplexity over test/fixtures/text/lighthouses.txt (about 2,500
// tokens), and greedy agreement over --gen tokens on ten prompts (the common
// prefix of each pair of continuations). Writes bench/results/quality-*.{json,md}.
//
//   bun bench/quality.ts [--model PATH] [--gen 128] [--out bench/results]
import { mkdirSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import * as mx from "../src/mlx";
import { loadModel } from "../src/models/loader";
import { REPO_ROOT } from "../src/paths";
import { loadTokenizer } from "../src/text/tokenizer";
import { EMBEDDED_MODEL } from "../test/support/models";
import {
  commonPrefix,
  greedy,
  perplexity,
  QUALITY_PROMPTS,
  QUALITY_TEXT,
  withCpuMatmul,
} from "../test/support/quality";
import { machine } from "./peers";

const args = process.argv.slice(2);
const flag = (name: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};
const modelPath = flag("model") ?? EMBEDDED_MODEL;
const gen = Number(flag("gen") ?? 128);
const outDir = flag("out") ?? join(REPO_ROOT, "bench/results");

mx.setDevice("cpu");
const tokenizer = loadTokenizer(modelPath);
const { model } = loadModel(modelPath);
const text = tokenizer.encode(QUALITY_TEXT);
const started = performance.now();
const ppl = {
  exact: withCpuMatmul("exact", () => perplexity(model, text)),
  int8: withCpuMatmul("int8", () => perplexity(model, text)),
};
const prefixes = QUALITY_PROMPTS.map((p) => {
  const ids = tokenizer.encode(p);
  const exact = withCpuMatmul("exact", () => greedy(model, ids, gen));
  const int8 = withCpuMatmul("int8", () => greedy(model, ids, gen));
  return commonPrefix(exact, int8);
});
const result = {
  model: modelPath,
  textTokens: text.length,
  perplexity: ppl,
  relativeChange: ppl.int8 / ppl.exact - 1,
  greedyTokens: gen,
  commonPrefixes: prefixes,
  isa: mx.cpuIsa(),
  seconds: (performance.now() - started) / 1000,
  machine: machine(),
  command: `bun bench/quality.ts ${args.join(" ")}`.trim(),
};
mkdirSync(outDir, { recursive: true });
const stem = join(outDir, `quality-${basename(modelPath).replace(/\.gguf$/i, "")}`);
writeFileSync(`${stem}.json`, `${JSON.stringify(result, null, 2)}\n`);
const md = [
  `# int8-activation CPU matmul vs the exact one: ${basename(modelPath)}`,
  "",
  `Command: \`${result.command}\` (int8 path: ${result.isa}).`,
  "",
  `| text tokens | perplexity, exact | perplexity, int8 | change |`,
  "|---:|---:|---:|---:|",
  `| ${text.length} | ${ppl.exact.toFixed(4)} | ${ppl.int8.toFixed(4)} | ${(result.relativeChange * 100).toFixed(3)}% |`,
  "",
  `Greedy agreement over ${gen} tokens, common-prefix length per prompt: ${prefixes.join(", ")} (${prefixes.filter((p) => p === gen).length} of ${prefixes.length} identical).`,
  "",
];
writeFileSync(`${stem}.md`, md.join("\n"));
console.log(md.join("\n"));
model.dispose();
