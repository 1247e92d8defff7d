// Whether a prefix kept on disk is worth reading back, or prefilling it again
// is quicker. On an H100, prefilling Claude Code's 13K-token prefix took 1.1 s
// while reading its 5 GB of fp16 KV back took 2.0 s (bench/results/
// gpu-h100-2026-12-06b-kv); on a CPU or a laptop GPU, prefill runs at hundreds
// of tokens a second and the disk wins by far. Both rates start from a prior
// for the device and follow what this process measures.
// Plain data, no MLX.

/** Priors until measured: tokens of prefill per second by device, bytes read back per second. */
const PRIOR_PREFILL_TOKENS_PER_S = { gpu: 12_000, cpu: 300 } as const;
const PRIOR_DISK_BYTES_PER_S = 2.5e9;
/** Weight of a new measurement in the running average. */
const ALPHA = 0.3;

export class LoadOrPrefill {
  #prefillTokensPerS: number;
  #diskBytesPerS = PRIOR_DISK_BYTES_PER_S;
  prefillMeasured = 0;
  loadsMeasured = 0;
  /** Reads skipped because prefilling was expected to be quicker. */
  skipped = 0;

  constructor(device: "cpu" | "gpu") {
    this.#prefillTokensPerS = PRIOR_PREFILL_TOKENS_PER_S[device];
  }

  /** A prefill chunk of `tokens` (all rows) took `ms`, evaluated. */
  recordPrefill(tokens: number, ms: number): void {
    if (tokens < 64 || ms <= 0) return; // too small to say anything about a long prefix
    this.#prefillTokensPerS = mix(this.#prefillTokensPerS, (tokens * 1000) / ms, this.prefillMeasured++);
  }

  /** `bytes` read back from disk in `ms`, evaluated. */
  recordLoad(bytes: number, ms: number): void {
    if (bytes < 1e6 || ms <= 0) return;
    this.#diskBytesPerS = mix(this.#diskBytesPerS, (bytes * 1000) / ms, this.loadsMeasured++);
  }

  /** Reading `bytes` beats prefilling `tokens` (expected seconds of each); a read skipped is counted. */
  worthLoading(bytes: number, tokens: number): boolean {
    const worth = this.wouldLoad(bytes, tokens);
    if (!worth) this.skipped++;
    return worth;
  }

  /** The same comparison, for asking ahead (whether writing a prefix to disk can pay back). */
  wouldLoad(bytes: number, tokens: number): boolean {
    return bytes / this.#diskBytesPerS < tokens / this.#prefillTokensPerS;
  }

  get rates(): { prefillTokensPerS: number; diskBytesPerS: number } {
    return { prefillTokensPerS: this.#prefillTokensPerS, diskBytesPerS: this.#diskBytesPerS };
  }
}

/** The first measurement replaces the prior; later ones move the average. */
function mix(average: number, sample: number, seen: number): number {
  return seen === 0 ? sample : average + ALPHA * (sample - average);
}
