// Peak resident memory of this process (Linux VmHWM), for the benchmarks.
import { readFileSync } from "node:fs";

export function peakRssBytes(): number | null {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}
