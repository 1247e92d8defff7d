// Time to first token of lone requests, one after another, each with a new
// prompt length: through the engine's scheduler (as the server runs it, minus
// HTTP and IPC) and through plain generation on the same loaded model. Tells
// scheduler costs from per-shape costs (GPU kernel compilation, allocation).
//   bun bench/engines/lone-ttft.ts MODEL [cpu|gpu] [--lengths 200,420,...] [--engine-config JSON]

import { Engine } from "../../src/engine/engine";
import { generateTokens } from "../../src/engine/one-sequence";
import type { EngineEvent } from "../../src/engine/protocol";
import { samplingParams } from "../../src/engine/protocol";

const args = process.argv.slice(2);
const flag = (name: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};
const [modelPath, device = "gpu"] = args.filter((a, i) => !a.startsWith("--") && !args[i - 1]?.startsWith("--"));
if (!modelPath) throw new Error("usage: MODEL [cpu|gpu] [--lengths L,...] [--engine-config JSON]");
// Pairs that share a 64-token width: the second of each finds its shapes built.
const lengths = (flag("lengths") ?? "200,230,420,440,530,560,130,180,1000,1020").split(",").map(Number);
const extra = JSON.parse(flag("engine-config") ?? "{}") as Record<string, unknown>;

const firstToken = new Map<string, () => void>();
const finished = new Map<string, () => void>();
const engine = new Engine({ model: modelPath, device: device as "cpu" | "gpu", ...extra }, (e: EngineEvent) => {
  if (e.type === "tokens") for (const t of e.items) firstToken.get(t.id)?.();
  if (e.type === "finished" || e.type === "rejected") finished.get(e.id)?.();
});
void engine.run();

// Distinct first tokens: no prompt shares a prefix with an earlier one.
const prompt = (n: number, salt: number) =>
  Array.from({ length: n }, (_, i) => 1000 + ((i * 7919 + salt * 104729) % 20000));

async function viaScheduler(id: string, tokens: number[], maxTokens: number): Promise<number> {
  const start = performance.now();
  let ttft = Number.NaN;
  const first = new Promise<void>((resolve) => firstToken.set(id, resolve));
  const done = new Promise<void>((resolve) => finished.set(id, resolve));
  engine.submit({ id, prompt: tokens, maxTokens, sampling: samplingParams(), stopTokenIds: [] });
  await first;
  ttft = performance.now() - start;
  firstToken.delete(id);
  await done;
  return ttft;
}

function viaGenerate(tokens: number[], maxTokens: number): number {
  const start = performance.now();
  let ttft = Number.NaN;
  for (const _ of generateTokens(engine.loaded.model, tokens, { maxTokens, sampling: samplingParams() })) {
    if (Number.isNaN(ttft)) ttft = performance.now() - start;
  }
  return ttft;
}

await viaScheduler("warm", prompt(8, 999), 4);
// The engine warms prompt widths while idle (GPU): let it finish first.
const warmStart = performance.now();
while (engine.warmupsLeft > 0 || engine.scheduler.hasWork()) await Bun.sleep(20);
const warmMs = performance.now() - warmStart;
const rows: string[] = [];
let salt = 0;
for (const n of lengths) {
  const s = await viaScheduler(`r${salt}`, prompt(n, ++salt), 16);
  await Bun.sleep(50);
  rows.push(`scheduler len ${n}: ${s.toFixed(1)} ms`);
}
for (const n of lengths) rows.push(`generate  len ${n}: ${viaGenerate(prompt(n, ++salt), 16).toFixed(1)} ms`);
for (const n of lengths) {
  const s = await viaScheduler(`again${salt}`, prompt(n, ++salt), 16);
  rows.push(`scheduler (lengths seen) len ${n}: ${s.toFixed(1)} ms`);
}
console.log(`config ${JSON.stringify(extra)}; idle warm-up ${warmMs.toFixed(0)} ms\n${rows.join("\n")}`);
engine.stop();
process.exit(0);
