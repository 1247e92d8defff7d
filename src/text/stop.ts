// Stop strings over streamed text. Text that might be the start of a stop string is held back
// until the next chunk settles it; when a stop string completes, the text before it is released
// and the stop string and everything after it are dropped.

export interface StopMatchResult {
  /** Text safe to emit now. */
  text: string;
  /** The stop string that completed, if any; after that the matcher accepts no more text. */
  stop?: string;
}

export class StopMatcher {
  private readonly stops: string[];
  private held = "";
  private stoppedOn: string | undefined;

  constructor(stops: readonly string[]) {
    // Empty strings would match everywhere; duplicates change nothing.
    this.stops = [...new Set(stops.filter((stop) => stop.length > 0))];
  }

  /** True once a stop string has completed. */
  get stopped(): boolean {
    return this.stoppedOn !== undefined;
  }

  /** The held-back text (a possible start of a stop string). */
  get pending(): string {
    return this.held;
  }

  push(chunk: string): StopMatchResult {
    if (this.stoppedOn !== undefined) return { text: "" };
    const buffer = this.held + chunk;
    const match = this.earliestMatch(buffer);
    if (match) {
      this.held = "";
      this.stoppedOn = match.stop;
      return { text: buffer.slice(0, match.index), stop: match.stop };
    }
    const holdLength = this.longestStopPrefixAtEnd(buffer);
    this.held = buffer.slice(buffer.length - holdLength);
    return { text: buffer.slice(0, buffer.length - holdLength) };
  }

  /** End of stream without a stop: the held-back text was not a stop string after all. */
  flush(): string {
    const text = this.held;
    this.held = "";
    return text;
  }

  /** The first stop string to occur; at equal positions the longer one (it contains the shorter's start). */
  private earliestMatch(buffer: string): { index: number; stop: string } | undefined {
    let best: { index: number; stop: string } | undefined;
    for (const stop of this.stops) {
      const index = buffer.indexOf(stop);
      if (index < 0) continue;
      if (!best || index < best.index || (index === best.index && stop.length > best.stop.length))
        best = { index, stop };
    }
    return best;
  }

  /** Length of the longest buffer suffix that is a proper prefix of some stop string. */
  private longestStopPrefixAtEnd(buffer: string): number {
    let longest = 0;
    for (const stop of this.stops) {
      for (let length = Math.min(stop.length - 1, buffer.length); length > longest; length--) {
        if (buffer.endsWith(stop.slice(0, length))) {
          longest = length;
          break;
        }
      }
    }
    return longest;
  }
}
