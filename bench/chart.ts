// Charts for bench results: an SVG drawn here, turned into a PNG by headless
// Chromium (playwright-core with Debian's chromium, as the browser tests use).
import { existsSync, writeFileSync } from "node:fs";

export interface Series {
  name: string;
  points: Array<{
    concurrency: number;
    aggregateTokPerS: number;
    ttftMs: { p50: number };
    interTokenMs: { p50: number };
  }>;
}

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea"];

function panel(
  series: Series[],
  title: string,
  value: (p: Series["points"][number]) => number,
  x0: number,
  y0: number,
): string {
  const w = 360;
  const h = 240;
  const pad = 44;
  const xs = [...new Set(series.flatMap((s) => s.points.map((p) => p.concurrency)))].sort((a, b) => a - b);
  const ys = series.flatMap((s) => s.points.map(value)).filter(Number.isFinite);
  const yMax = Math.max(1e-9, ...ys) * 1.1;
  const xPos = (c: number) =>
    x0 + pad + ((w - pad - 10) * Math.log2(c / xs[0]!)) / Math.max(1, Math.log2(xs.at(-1)! / xs[0]!));
  const yPos = (v: number) => y0 + h - pad + -((h - pad - 24) * v) / yMax;
  const parts = [
    `<text x="${x0 + w / 2}" y="${y0 + 16}" text-anchor="middle" font-size="14" font-weight="600">${title}</text>`,
    `<line x1="${x0 + pad}" y1="${y0 + h - pad}" x2="${x0 + w - 10}" y2="${y0 + h - pad}" stroke="#333"/>`,
    `<line x1="${x0 + pad}" y1="${y0 + 24}" x2="${x0 + pad}" y2="${y0 + h - pad}" stroke="#333"/>`,
    ...xs.map((c) => `<text x="${xPos(c)}" y="${y0 + h - pad + 16}" text-anchor="middle" font-size="11">${c}</text>`),
    `<text x="${x0 + w / 2}" y="${y0 + h - 8}" text-anchor="middle" font-size="11">concurrent clients</text>`,
    ...[0, 0.5, 1].map(
      (f) =>
        `<text x="${x0 + pad - 4}" y="${yPos(f * yMax) + 4}" text-anchor="end" font-size="10">${(f * yMax).toPrecision(3)}</text>`,
    ),
  ];
  series.forEach((s, i) => {
    const pts = s.points
      .filter((p) => Number.isFinite(value(p)))
      .map((p) => `${xPos(p.concurrency)},${yPos(value(p))}`);
    parts.push(
      `<polyline fill="none" stroke="${COLORS[i % COLORS.length]}" stroke-width="2" points="${pts.join(" ")}"/>`,
    );
    for (const p of pts) {
      const [cx, cy] = p.split(",");
      parts.push(`<circle cx="${cx}" cy="${cy}" r="3" fill="${COLORS[i % COLORS.length]}"/>`);
    }
  });
  return parts.join("\n");
}

export function chartSvg(series: Series[]): string {
  const legend = series
    .map(
      (s, i) =>
        `<rect x="${20 + i * 180}" y="8" width="12" height="12" fill="${COLORS[i % COLORS.length]}"/><text x="${36 + i * 180}" y="19" font-size="13">${s.name}</text>`,
    )
    .join("");
  return `<svg xmlns="http://www.w3.org/2000/svg" width="1120" height="300" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>${legend}
${panel(series, "aggregate output tok/s", (p) => p.aggregateTokPerS, 0, 40)}
${panel(series, "time to first token p50 (ms)", (p) => p.ttftMs.p50, 370, 40)}
${panel(series, "inter-token latency p50 (ms)", (p) => p.interTokenMs.p50, 740, 40)}
</svg>`;
}

/** Writes `<path>.svg` and, when Chromium is there, `<path>` as PNG. Returns the PNG path or null. */
export async function renderChartPng(series: Series[], path: string): Promise<string | null> {
  const svg = chartSvg(series);
  writeFileSync(path.replace(/\.png$/, ".svg"), svg);
  const chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => existsSync(p));
  if (!chromium) return null;
  const { chromium: launcher } = await import("playwright-core");
  const browser = await launcher.launch({ executablePath: chromium });
  try {
    const page = await browser.newPage({ viewport: { width: 1120, height: 340 } });
    await page.setContent(`<html><body style="margin:0">${svg}</body></html>`);
    await page.screenshot({ path, clip: { x: 0, y: 0, width: 1120, height: 340 } });
    return path;
  } finally {
    await browser.close();
  }
}

export interface TimePanel {
  title: string;
  /** Values are divided by this (2^20 for MiB). */
  unit: number;
  keys: string[];
}

/** Time series (x: the sample's `ms`), one panel per group of keys. */
export function timeSeriesSvg(panels: TimePanel[], samples: Array<Record<string, number>>): string {
  const w = 360;
  const h = 260;
  const pad = 48;
  const tMax = Math.max(1, ...samples.map((s) => s.ms ?? 0));
  const parts: string[] = [];
  panels.forEach((p, n) => {
    const x0 = n * (w + 10);
    const y0 = 10;
    const values = samples.flatMap((s) => p.keys.map((k) => (s[k] ?? 0) / p.unit)).filter(Number.isFinite);
    const yMax = Math.max(1e-9, ...values) * 1.1;
    const xPos = (t: number) => x0 + pad + ((w - pad - 10) * t) / tMax;
    const yPos = (v: number) => y0 + h - pad - ((h - pad - 40) * v) / yMax;
    parts.push(
      `<text x="${x0 + w / 2}" y="${y0 + 16}" text-anchor="middle" font-size="14" font-weight="600">${p.title}</text>`,
      `<line x1="${x0 + pad}" y1="${y0 + h - pad}" x2="${x0 + w - 10}" y2="${y0 + h - pad}" stroke="#333"/>`,
      `<line x1="${x0 + pad}" y1="${y0 + 40}" x2="${x0 + pad}" y2="${y0 + h - pad}" stroke="#333"/>`,
      `<text x="${x0 + w / 2}" y="${y0 + h - 14}" text-anchor="middle" font-size="11">seconds (0..${(tMax / 1000).toFixed(0)})</text>`,
      ...[0, 0.5, 1].map(
        (f) =>
          `<text x="${x0 + pad - 4}" y="${yPos(f * yMax) + 4}" text-anchor="end" font-size="10">${(f * yMax).toPrecision(3)}</text>`,
      ),
    );
    p.keys.forEach((k, i) => {
      const color = COLORS[i % COLORS.length];
      const pts = samples
        .filter((s) => Number.isFinite(s[k]))
        .map((s) => `${xPos(s.ms ?? 0).toFixed(1)},${yPos((s[k] as number) / p.unit).toFixed(1)}`);
      parts.push(
        `<polyline fill="none" stroke="${color}" stroke-width="1.5" points="${pts.join(" ")}"/>`,
        `<rect x="${x0 + pad + 4}" y="${y0 + 24 + i * 13}" width="9" height="9" fill="${color}"/>`,
        `<text x="${x0 + pad + 17}" y="${y0 + 32 + i * 13}" font-size="10">${k}</text>`,
      );
    });
  });
  const width = panels.length * (w + 10);
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${h + 20}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
${parts.join("\n")}
</svg>`;
}

/** Writes `<path>.svg` and, when Chromium is there, `<path>` as PNG. Returns the PNG path or null. */
export async function renderTimeSeriesPng(
  panels: TimePanel[],
  samples: Array<Record<string, number>>,
  path: string,
): Promise<string | null> {
  const svg = timeSeriesSvg(panels, samples);
  writeFileSync(path.replace(/\.png$/, ".svg"), svg);
  const chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => existsSync(p));
  if (!chromium) return null;
  const { chromium: launcher } = await import("playwright-core");
  const browser = await launcher.launch({ executablePath: chromium });
  try {
    const width = panels.length * 370;
    const page = await browser.newPage({ viewport: { width, height: 280 } });
    await page.setContent(`<html><body style="margin:0">${svg}</body></html>`);
    await page.screenshot({ path, clip: { x: 0, y: 0, width, height: 280 } });
    return path;
  } finally {
    await browser.close();
  }
}
