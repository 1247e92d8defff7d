// Download progress: the events a download emits (DownloadReporter) and a
// renderer for a terminal (one bar rewritten in place) or a log (a plain line
// every few seconds). The renderer only needs something with write(), so tests
// can hand it a buffer.
import { formatBytes, formatDuration } from "./format";

export interface DownloadPlan {
  /** What is being downloaded, e.g. the repo id. */
  label: string;
  files: number;
  totalBytes: number;
}

export interface DownloadReporter {
  begin(plan: DownloadPlan): void;
  /** New bytes received over the network. */
  transferred(bytes: number): void;
  /** Bytes found on disk from an earlier, interrupted run (no time spent on them). */
  skipped(bytes: number): void;
  /** Bytes thrown away (a corrupt file, or a server that ignored the resume range). */
  rewound(bytes: number): void;
  fileDone(filename: string): void;
  end(outcome: { ok: boolean; error?: string }): void;
}

export const silentReporter: DownloadReporter = {
  begin() {},
  transferred() {},
  skipped() {},
  rewound() {},
  fileDone() {},
  end() {},
};

export interface ProgressStream {
  write(chunk: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export interface ProgressRendererOptions {
  stream?: ProgressStream;
  /** Draw a bar in place; default: the stream's isTTY. */
  tty?: boolean;
  /** Non-TTY: at most one line per this many ms (default 5000). */
  intervalMs?: number;
  /** TTY: redraws at most this often (default 100 ms). */
  redrawMs?: number;
  /** Clock in ms, for tests. */
  now?: () => number;
}

/** Speed is measured over this window, so a stall shows quickly and one burst does not dominate. */
const SPEED_WINDOW_MS = 5000;

export class ProgressRenderer implements DownloadReporter {
  readonly #stream: ProgressStream;
  readonly #tty: boolean;
  readonly #intervalMs: number;
  readonly #redrawMs: number;
  readonly #now: () => number;
  #plan: DownloadPlan = { label: "", files: 0, totalBytes: 0 };
  #done = 0;
  #networkBytes = 0;
  #filesDone = 0;
  #startedAt = 0;
  #lastOutput = 0;
  #samples: { at: number; bytes: number }[] = [];

  constructor(options: ProgressRendererOptions = {}) {
    this.#stream = options.stream ?? process.stderr;
    this.#tty = options.tty ?? this.#stream.isTTY === true;
    this.#intervalMs = options.intervalMs ?? 5000;
    this.#redrawMs = options.redrawMs ?? 100;
    this.#now = options.now ?? (() => performance.now());
  }

  begin(plan: DownloadPlan): void {
    this.#plan = plan;
    this.#startedAt = this.#now();
    this.#lastOutput = this.#startedAt;
    this.#samples = [{ at: this.#startedAt, bytes: 0 }];
    if (this.#tty) this.#draw();
    else {
      const files = plan.files === 1 ? "1 file" : `${plan.files} files`;
      this.#stream.write(`downloading ${plan.label}: ${files}, ${formatBytes(plan.totalBytes)}\n`);
    }
  }

  transferred(bytes: number): void {
    this.#done += bytes;
    this.#networkBytes += bytes;
    this.#tick();
  }

  skipped(bytes: number): void {
    this.#done += bytes;
    this.#tick();
  }

  rewound(bytes: number): void {
    this.#done = Math.max(0, this.#done - bytes);
    this.#tick();
  }

  fileDone(_filename?: string): void {
    this.#filesDone++;
    this.#tick();
  }

  end(outcome: { ok: boolean; error?: string }): void {
    const seconds = (this.#now() - this.#startedAt) / 1000;
    if (this.#tty) {
      this.#draw();
      this.#stream.write("\n");
    }
    if (outcome.ok) {
      const speed = seconds > 0 ? `, ${formatBytes(this.#networkBytes / seconds)}/s` : "";
      this.#stream.write(
        `downloaded ${this.#plan.label}: ${formatBytes(this.#done)} in ${formatDuration(seconds)}${speed}\n`,
      );
    } else {
      this.#stream.write(
        `download of ${this.#plan.label} stopped at ${this.#percent()}%: ${outcome.error ?? "failed"}\n`,
      );
    }
  }

  /** Bytes per second over the last few seconds. */
  speed(): number {
    const first = this.#samples[0];
    const last = this.#samples[this.#samples.length - 1];
    if (!first || !last || last.at - first.at <= 0) return 0;
    return ((last.bytes - first.bytes) * 1000) / (last.at - first.at);
  }

  /** The text of the current status, without bar or newline. */
  status(): string {
    const speed = this.speed();
    const left = this.#plan.totalBytes - this.#done;
    const eta = speed > 0 ? formatDuration(left / speed) : "?";
    return (
      `${this.#percent()}% ${formatBytes(this.#done)} / ${formatBytes(this.#plan.totalBytes)}, ` +
      `${formatBytes(speed)}/s, ETA ${eta} (${this.#filesDone}/${this.#plan.files} files)`
    );
  }

  #percent(): number {
    if (this.#plan.totalBytes <= 0) return 100;
    return Math.min(100, Math.floor((this.#done / this.#plan.totalBytes) * 100));
  }

  #tick(): void {
    const now = this.#now();
    const last = this.#samples[this.#samples.length - 1];
    // One sample per 50 ms keeps the window small at high chunk rates.
    if (!last || now - last.at >= 50) this.#samples.push({ at: now, bytes: this.#networkBytes });
    while (this.#samples.length > 2 && now - this.#samples[0]!.at > SPEED_WINDOW_MS) this.#samples.shift();
    if (now - this.#lastOutput < (this.#tty ? this.#redrawMs : this.#intervalMs)) return;
    this.#lastOutput = now;
    if (this.#tty) this.#draw();
    else this.#stream.write(`${this.#plan.label}: ${this.status()}\n`);
  }

  #draw(): void {
    const width = Math.max(10, Math.min(30, (this.#stream.columns ?? 100) - 90));
    const filled = Math.round((this.#percent() / 100) * width);
    const bar = `[${"#".repeat(filled)}${".".repeat(width - filled)}]`;
    // \r and "erase line" keep the bar on one line as it is redrawn.
    this.#stream.write(`\r\x1b[2K${this.#plan.label} ${bar} ${this.status()}`);
  }
}
