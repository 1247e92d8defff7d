// The peers' speculative decoding for `bun run bench spec`, on the same prompt ids:
// mlx-lm's with a draft model (bench/engines/mlx_lm_speculative.py, --mlx-lm) and
// llama.cpp's prompt lookup (node-llama-cpp's InputLookupTokenPredictor,
// bench/engines/llamacpp-lookup.mjs, --llama-cpp). Each runs its own off and on
// runs, taking turns, after Pensieve's; medians per prompt.
import { writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BENCH_DIR } from "./peers";

interface PeerRun {
  tokens: number[];
  decodeTokPerS: number;
  decodeTokPerCpuS: number;
}

const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)] as number;
const same = (a: number[], b: number[] | undefined) => JSON.stringify(a) === JSON.stringify(b);

/** What each peer row reports: off and on medians, whether every on run equals the first off run. */
function perPrompt<R extends PeerRun>(x: { off: R[]; on: R[] }) {
  return {
    off: median(x.off.map((y) => y.decodeTokPerS)),
    on: median(x.on.map((y) => y.decodeTokPerS)),
    cpuOff: median(x.off.map((y) => y.decodeTokPerCpuS)),
    cpuOn: median(x.on.map((y) => y.decodeTokPerCpuS)),
    identical: x.on.every((y) => same(y.tokens, x.off[0]?.tokens)),
    offTokens: x.off[0]?.tokens ?? [],
  };
}

const PROMPTS = "{prompts}";
/** Runs a peer's command, PROMPTS standing for the prompts' JSON file, and parses its last stdout line. */
function runPeer<T>(command: string[], prompts: number[][], stops: number[], what: string): T {
  const file = join(tmpdir(), `pensieve-spec-prompts-${process.pid}.json`);
  writeFileSync(file, JSON.stringify({ prompts, stops }));
  const r = Bun.spawnSync(
    command.map((a) => (a === PROMPTS ? file : a)),
    { stdout: "pipe", stderr: "inherit" },
  );
  if (r.exitCode !== 0) throw new Error(`${what} failed (${r.exitCode})`);
  return JSON.parse(r.stdout.toString().trim().split("\n").pop() as string) as T;
}

/** mlx-lm's speculative decoding with a draft model on MLX folders of the same pair. */
export function mlxLmSpeculative(
  python: string,
  targetDir: string,
  draftDir: string,
  prompts: number[][],
  stops: number[],
  gen: number,
  numDraft: number,
  repeat: number,
) {
  const script = join(BENCH_DIR, "engines", "mlx_lm_speculative.py");
  const out = runPeer<{
    version: string;
    numDraftTokens: number;
    results: Array<{ off: Array<PeerRun & { fromDraft: number }>; on: Array<PeerRun & { fromDraft: number }> }>;
  }>(
    [python, script, targetDir, draftDir, PROMPTS, String(gen), String(numDraft), String(repeat)],
    prompts,
    stops,
    "mlx-lm speculative run",
  );
  return {
    version: out.version,
    numDraftTokens: out.numDraftTokens,
    perPrompt: out.results.map((x) => ({
      ...perPrompt(x),
      fromDraft:
        x.on.reduce((n, y) => n + y.fromDraft, 0) /
        Math.max(
          1,
          x.on.reduce((n, y) => n + y.tokens.length, 0),
        ),
    })),
  };
}

/**
 * llama.cpp's prompt lookup (CPU, `threads` threads) on the same GGUF, drafting at most `maxPrediction` tokens from
 * matches of at least `minPattern` tokens.
 */
export function llamaCppLookup(
  gguf: string,
  prompts: number[][],
  stops: number[],
  gen: number,
  threads: number,
  repeat: number,
  maxPrediction: number,
  minPattern: number,
) {
  const script = join(BENCH_DIR, "engines", "llamacpp-lookup.mjs");
  const out = runPeer<{
    version: string;
    threads: number;
    maxPrediction: number;
    minPattern: number;
    results: Array<{
      off: Array<PeerRun & { validated: number; refuted: number }>;
      on: Array<PeerRun & { validated: number; refuted: number }>;
    }>;
  }>(
    [
      process.execPath,
      script,
      gguf,
      PROMPTS,
      String(gen),
      String(threads),
      String(repeat),
      String(maxPrediction),
      String(minPattern),
    ],
    prompts,
    stops,
    "llama.cpp lookup run",
  );
  return {
    version: out.version,
    threads: out.threads,
    maxPrediction: out.maxPrediction,
    minPattern: out.minPattern,
    perPrompt: out.results.map((x) => {
      const validated = x.on.reduce((n, y) => n + y.validated, 0);
      const refuted = x.on.reduce((n, y) => n + y.refuted, 0);
      return { ...perPrompt(x), acceptance: validated + refuted > 0 ? validated / (validated + refuted) : 0 };
    }),
  };
}
