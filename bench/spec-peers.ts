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

/** A peer's runs per prompt, off and on, each with its own extra counts. */
type PeerResults<Extra> = Array<{ off: Array<PeerRun & Extra>; on: Array<PeerRun & Extra> }>;

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

/** What both peers run: the prompt ids, the stop tokens, tokens at most a run, runs a mode. */
export interface PeerWork {
  prompts: number[][];
  stops: number[];
  gen: number;
  repeat: number;
}

const PROMPTS = "{prompts}";
/** Runs a peer's command, PROMPTS standing for the prompts' JSON file, and parses its last stdout line. */
function runPeer<T>(command: string[], { prompts, stops }: PeerWork, what: string): T {
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
  numDraft: number,
  work: PeerWork,
) {
  const { gen, repeat } = work;
  const script = join(BENCH_DIR, "engines", "mlx_lm_speculative.py");
  const out = runPeer<{
    version: string;
    numDraftTokens: number;
    results: PeerResults<{ fromDraft: number }>;
  }>(
    [python, script, targetDir, draftDir, PROMPTS, String(gen), String(numDraft), String(repeat)],
    work,
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
  threads: number,
  maxPrediction: number,
  minPattern: number,
  work: PeerWork,
) {
  const { gen, repeat } = work;
  const script = join(BENCH_DIR, "engines", "llamacpp-lookup.mjs");
  const out = runPeer<{
    version: string;
    threads: number;
    maxPrediction: number;
    minPattern: number;
    results: PeerResults<{ validated: number; refuted: number }>;
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
    work,
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
