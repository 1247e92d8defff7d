import { describe, expect, test } from "bun:test";
import { formatBytes, formatDuration } from "../../src/hub/format";
import { ProgressRenderer } from "../../src/hub/progress";

const MiB = 1024 * 1024;

function harness(tty: boolean) {
  const out: string[] = [];
  let now = 0;
  const renderer = new ProgressRenderer({
    stream: { isTTY: tty, columns: 120, write: (s: string) => out.push(s) },
    intervalMs: 2000,
    redrawMs: 100,
    now: () => now,
  });
  return { out, renderer, at: (ms: number) => (now = ms) };
}

describe("ProgressRenderer", () => {
  test("non-TTY: a plan line, a status line per interval with speed and ETA, a summary", () => {
    const { out, renderer, at } = harness(false);
    renderer.begin({ label: "org/model", files: 2, totalBytes: 10 * MiB });
    at(1000);
    renderer.transferred(1 * MiB); // within the interval: no line
    at(2000);
    renderer.transferred(1 * MiB);
    at(3000);
    renderer.fileDone("a");
    at(4000);
    renderer.transferred(2 * MiB);
    at(5000);
    renderer.transferred(6 * MiB);
    renderer.fileDone("b");
    renderer.end({ ok: true });
    expect(out).toEqual([
      "downloading org/model: 2 files, 10.0 MiB\n",
      "org/model: 20% 2.00 MiB / 10.0 MiB, 1.00 MiB/s, ETA 8s (0/2 files)\n",
      "org/model: 40% 4.00 MiB / 10.0 MiB, 1.00 MiB/s, ETA 6s (1/2 files)\n",
      "downloaded org/model: 10.0 MiB in 5s, 2.00 MiB/s\n",
    ]);
  });

  test("resumed bytes count as done but not as speed; rewound bytes are taken back", () => {
    const { out, renderer, at } = harness(false);
    renderer.begin({ label: "m", files: 1, totalBytes: 4 * MiB });
    renderer.skipped(2 * MiB);
    at(2000);
    renderer.transferred(1 * MiB);
    expect(out.at(-1)).toBe("m: 75% 3.00 MiB / 4.00 MiB, 512 KiB/s, ETA 2s (0/1 files)\n");
    renderer.rewound(3 * MiB);
    at(4000);
    renderer.transferred(0);
    expect(out.at(-1)).toStartWith("m: 0% 0 B / 4.00 MiB");
    renderer.end({ ok: false, error: "boom" });
    expect(out.at(-1)).toBe("download of m stopped at 0%: boom\n");
  });

  test("TTY: one bar redrawn in place, then a newline and the summary", () => {
    const { out, renderer, at } = harness(true);
    renderer.begin({ label: "org/model", files: 1, totalBytes: 4 * MiB });
    at(50);
    renderer.transferred(1 * MiB); // under redrawMs: no redraw
    at(1000);
    renderer.transferred(1 * MiB);
    renderer.end({ ok: true });
    expect(out.length).toBe(5);
    expect(out[0]).toStartWith("\r\x1b[2Korg/model [");
    expect(out[1]).toBe(
      `\r\x1b[2Korg/model [${"#".repeat(15)}${".".repeat(15)}] 50% 2.00 MiB / 4.00 MiB, 2.00 MiB/s, ETA 1s (0/1 files)`,
    );
    expect(out[3]).toBe("\n");
    expect(out[4]).toStartWith("downloaded org/model: 2.00 MiB in 1s");
  });
});

test("formatting", () => {
  expect(formatBytes(0)).toBe("0 B");
  expect(formatBytes(1023)).toBe("1023 B");
  expect(formatBytes(1536)).toBe("1.50 KiB");
  expect(formatBytes(48 * 1024 ** 3)).toBe("48.0 GiB");
  expect(formatBytes(300 * 1024 ** 3)).toBe("300 GiB");
  expect(formatDuration(59)).toBe("59s");
  expect(formatDuration(161)).toBe("2m41s");
  expect(formatDuration(3 * 3600 + 120)).toBe("3h02m");
  expect(formatDuration(Number.POSITIVE_INFINITY)).toBe("?");
});
