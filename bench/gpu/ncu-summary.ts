// Summarizes an Nsight Compute CSV (`ncu --csv --print-units base --metrics
// gpu__time_duration.sum[,dram__bytes_read.sum,dram__bytes_write.sum]`):
// kernel count, total device time, and per kernel (name + grid) the launches,
// median time and the DRAM bandwidth those bytes took.
//   bun bench/gpu/ncu-summary.ts FILE.csv [--top 25]
import { readFileSync } from "node:fs";

function parseCsvLine(line: string): string[] {
  const out: string[] = [];
  let cur = "";
  let quoted = false;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i] as string;
    if (quoted) {
      if (ch === '"' && line[i + 1] === '"') {
        cur += '"';
        i++;
      } else if (ch === '"') quoted = false;
      else cur += ch;
    } else if (ch === '"') quoted = true;
    else if (ch === ",") {
      out.push(cur);
      cur = "";
    } else cur += ch;
  }
  out.push(cur);
  return out;
}

export interface KernelRun {
  id: string;
  name: string;
  grid: string;
  block: string;
  ns: number;
  bytes: number;
  /** Every metric by name (--metrics prints their medians). */
  metrics: Record<string, number>;
}

export function readNcuCsv(text: string): KernelRun[] {
  const lines = text.split("\n");
  const start = lines.findIndex((l) => l.startsWith('"ID"'));
  if (start < 0) return [];
  const head = parseCsvLine(lines[start] as string);
  const col = (n: string) => head.indexOf(n);
  const [cId, cName, cGrid, cBlock, cMetric, cValue] = [
    col("ID"),
    col("Kernel Name"),
    col("Grid Size"),
    col("Block Size"),
    col("Metric Name"),
    col("Metric Value"),
  ];
  const runs = new Map<string, KernelRun>();
  for (const line of lines.slice(start + 1)) {
    if (!line.startsWith('"')) continue;
    const f = parseCsvLine(line);
    const id = f[cId] as string;
    let r = runs.get(id);
    if (!r) {
      r = {
        id,
        name: f[cName] as string,
        grid: f[cGrid] as string,
        block: f[cBlock] as string,
        ns: 0,
        bytes: 0,
        metrics: {},
      };
      runs.set(id, r);
    }
    const value = Number((f[cValue] as string).replace(/,/g, ""));
    const metric = f[cMetric] as string;
    r.metrics[metric] = value;
    if (metric === "gpu__time_duration.sum") r.ns = value;
    else if (metric.startsWith("dram__bytes_")) r.bytes += value;
  }
  return [...runs.values()];
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
}

export function summarize(runs: KernelRun[], top = 25): string {
  const total = runs.reduce((s, r) => s + r.ns, 0);
  const groups = new Map<string, KernelRun[]>();
  for (const r of runs) {
    const short = r.name.replace(/\(.*$/, "").replace(/<.*>/, "<…>").slice(0, 90);
    const key = `${short} | grid ${r.grid} | block ${r.block}`;
    groups.set(key, [...(groups.get(key) ?? []), r]);
  }
  const rows = [...groups.entries()]
    .map(([key, rs]) => ({
      key,
      n: rs.length,
      sum: rs.reduce((s, r) => s + r.ns, 0),
      med: median(rs.map((r) => r.ns)),
      gbps: median(rs.map((r) => (r.ns ? r.bytes / r.ns : 0))),
    }))
    .sort((a, b) => b.sum - a.sum);
  return [
    `${runs.length} kernels, ${(total / 1000).toFixed(1)} us of device time in all`,
    "",
    "| kernel | grid | block | launches | total us | median us | DRAM GB/s (median) |",
    "|---|---|---|---:|---:|---:|---:|",
    ...rows.slice(0, top).map((r) => {
      const [name, grid, block] = r.key.split(" | ");
      return `| ${name} | ${grid?.replace("grid ", "")} | ${block?.replace("block ", "")} | ${r.n} | ${(r.sum / 1000).toFixed(1)} | ${(r.med / 1000).toFixed(2)} | ${r.gbps ? r.gbps.toFixed(0) : "-"} |`;
    }),
  ].join("\n");
}

/** Per kernel (name + grid), the median of every metric the CSV holds, one line a metric. */
export function metricTable(runs: KernelRun[]): string {
  const groups = new Map<string, KernelRun[]>();
  for (const r of runs) {
    const key = `${r.name.replace(/\(.*$/, "").replace(/<.*>/, "<…>").slice(0, 60)} grid ${r.grid}`;
    groups.set(key, [...(groups.get(key) ?? []), r]);
  }
  const lines = ["| kernel | metric | median |", "|---|---|---:|"];
  for (const [key, rs] of groups) {
    const names = Object.keys(rs[0]?.metrics ?? {}).sort();
    for (const m of names) lines.push(`| ${key} | ${m} | ${median(rs.map((r) => r.metrics[m] ?? Number.NaN))} |`);
  }
  return lines.join("\n");
}

if (import.meta.main) {
  const [file, ...rest] = process.argv.slice(2);
  if (!file) throw new Error("usage: ncu-summary.ts FILE.csv [--top N] [--metrics]");
  const top = rest.includes("--top") ? Number(rest[rest.indexOf("--top") + 1]) : 25;
  const runs = readNcuCsv(readFileSync(file, "utf8"));
  console.log(rest.includes("--metrics") ? metricTable(runs) : summarize(runs, top));
}
