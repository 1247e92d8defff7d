// The prefix cache written to disk in pieces (src/engine/prefix-store.ts): a
// node larger than a piece takes several short steps, new work is served
// between pieces, a stop or kill mid-node keeps the whole pieces (and never a
// partial file), and a restart reads them back with the same greedy tokens as
// a fresh prefill. Real MLX on the CPU, tiny-llama-f16.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Engine } from "../../src/engine/engine";
import { KVCache } from "../../src/engine/kv-cache";
import { cacheShape } from "../../src/engine/one-sequence";
import { modelKey, PrefixStore } from "../../src/engine/prefix-store";
import { type EngineEvent, samplingParams } from "../../src/engine/protocol";
import * as mx from "../../src/mlx";
import { loadModel } from "../../src/models/loader";
import { TEST_TMP, tinyModel } from "../support/models";
import { promptIds } from "../support/reference";
import { request, runScheduled, single, TEST_KV_BITS, TEST_SCHEDULER_OPTIONS } from "../support/scheduler";

const path = tinyModel("tiny-llama-f16");
const { model } = loadModel(path);
const c = model.config;
const layout = `${mx.dtypeName(model.dtype)}:L${c.numLayers}:H${c.numKvHeads}:D${c.headDim}`;
const key = modelKey({ model: "tiny-llama-f16", layout });
const root = mkdtempSync(join(TEST_TMP.replace(/\/$/, ""), "prefix-pieces-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const options = { ...TEST_SCHEDULER_OPTIONS, prefixCacheBytes: null };
/** About 40 tokens of KV: pieces of two 16-token blocks. */
const PIECE_TOKENS = 32;
const pieceBytes = (kvBits: 0 | 4 | 8) => 40 * KVCache.bytesPerToken(cacheShape(model, kvBits));

function store(dir: string) {
  return new PrefixStore(dir, key, 64 << 20, layout, c.numLayers, "cpu", pieceBytes(TEST_KV_BITS));
}

function started(events: EngineEvent[], id: string) {
  return events.find((e) => e.type === "started" && e.id === id) as Extract<EngineEvent, { type: "started" }>;
}

const system = promptIds(200, 81);
const turn1 = [...system, ...promptIds(10, 82).slice(1)];
const turn2 = [...system, ...promptIds(14, 83).slice(1)];

describe("prefix cache written in pieces (tiny-llama-f16, CPU)", () => {
  test("a node larger than a piece is written over several steps, one piece file each", () => {
    const dir = mkdtempSync(join(root, "steps-"));
    const disk = store(dir);
    const run = runScheduled(model, [{ at: 0, request: request("t1", turn1, 4) }], options, (s) =>
      s.attachPrefixStore(disk),
    );
    const cached = run.scheduler.prefixCache.entries().reduce((n, e) => n + e.tokens.length, 0);
    expect(cached).toBeGreaterThanOrEqual(192);
    const counts: number[] = [];
    const pending: number[] = [];
    for (let more = true; more; ) {
      more = run.scheduler.persistStep();
      counts.push(disk.stats().files);
      pending.push(disk.stats().pendingBytes);
    }
    // What the metrics show: bytes left to write, falling to 0.
    expect(pending[0]).toBeGreaterThan(0);
    expect(pending.at(-1)).toBe(0);
    expect(pending.every((b, i) => i === 0 || b <= (pending[i - 1] ?? 0))).toBe(true);
    // One file more per step, as many steps as pieces.
    expect(counts).toEqual(Array.from({ length: Math.ceil(cached / PIECE_TOKENS) }, (_, i) => i + 1));
    expect(run.scheduler.persistStep()).toBe(false);
    expect(disk.stats().files).toBe(counts.length);
    const biggest = Math.max(...readdirSync(join(dir, key)).map((f) => statSync(join(dir, key, f)).size));
    expect(biggest).toBeLessThan(pieceBytes(TEST_KV_BITS) + 16_384);
    run.scheduler.dispose();
  });

  test("stopped mid-node: whole pieces survive as a chain, partial files never; a restart reads them", () => {
    const dir = mkdtempSync(join(root, "partial-"));
    const first = runScheduled(model, [{ at: 0, request: request("t1", turn1, 4) }], options, (s) =>
      s.attachPrefixStore(store(dir)),
    );
    for (let i = 0; i < 3; i++) expect(first.scheduler.persistStep()).toBe(true);
    first.scheduler.dispose();
    const folder = join(dir, key);
    const kept = readdirSync(folder).sort();
    expect(kept.length).toBe(3);
    // What a kill leaves: a temporary file cut mid-write, and (a disk fault) a cut-off piece.
    writeFileSync(join(folder, `${"a".repeat(32)}.tmp.safetensors`), Buffer.alloc(1000, 7));
    const bad = join(folder, `${"b".repeat(32)}.safetensors`);
    writeFileSync(bad, Buffer.alloc(2000, 0));
    truncateSync(bad, 1500);

    const disk = store(dir);
    expect(disk.stats().files).toBe(3);
    expect(readdirSync(folder).sort()).toEqual(kept);
    const expected = single(model, turn2, 8, request("x", [], 0).sampling);
    const second = runScheduled(model, [{ at: 0, request: request("t2", turn2, 8) }], options, (s) =>
      s.attachPrefixStore(disk),
    );
    expect(started(second.events, "t2").cachedTokens).toBe(3 * PIECE_TOKENS);
    expect(second.tokens.get("t2")).toEqual(expected);
    expect(disk.stats().loaded).toBe(3);
    // Written on: the three pieces are reused, not written again.
    while (second.scheduler.persistStep()) {}
    const files = readdirSync(folder);
    for (const f of kept) expect(files).toContain(f);
    expect(disk.stats().written).toBe(files.length - 3);
    second.scheduler.dispose();
  });

  test("a process killed while writing leaves only whole pieces; the prefix they hold reads back exactly", async () => {
    const dir = mkdtempSync(join(root, "kill-"));
    const folder = join(dir, key);
    const long = promptIds(1200, 84);
    const writer = Bun.spawn(
      [
        process.execPath,
        join(import.meta.dir, "../support/prefix-writer.ts"),
        dir,
        key,
        layout,
        String(pieceBytes(TEST_KV_BITS) / 2),
        JSON.stringify(long),
      ],
      { stdout: "ignore", stderr: "inherit" },
    );
    const pieces = () => {
      try {
        return readdirSync(folder).filter((f) => !f.includes(".tmp")).length;
      } catch {
        return 0;
      }
    };
    const deadline = Date.now() + 120_000;
    while (pieces() < 3 && writer.exitCode === null && Date.now() < deadline) await Bun.sleep(1);
    writer.kill("SIGKILL");
    await writer.exited;
    const left = pieces();
    expect(left).toBeGreaterThanOrEqual(3);

    const disk = store(dir);
    // Every file left is trusted whole, or removed (a temporary file cut by the kill).
    expect(readdirSync(folder).filter((f) => f.includes(".tmp"))).toEqual([]);
    expect(disk.stats().files).toBe(readdirSync(folder).length);
    expect(disk.stats().files).toBeGreaterThanOrEqual(left - 1);
    const prompt = [...long.slice(0, 1100), ...promptIds(9, 85).slice(1)];
    const expected = single(model, prompt, 6, request("x", [], 0).sampling);
    const run = runScheduled(model, [{ at: 0, request: request("k", prompt, 6) }], options, (s) =>
      s.attachPrefixStore(disk),
    );
    const cachedTokens = started(run.events, "k").cachedTokens;
    expect(cachedTokens).toBeGreaterThanOrEqual(32);
    expect(cachedTokens % 16).toBe(0);
    expect(run.tokens.get("k")).toEqual(expected);
    run.scheduler.dispose();
  });
});

describe("the engine writes pieces while idle (tiny-llama-f16, CPU)", () => {
  const config = (dir: string) => ({
    model: path,
    device: "cpu" as const,
    maxContext: 512,
    prefillChunk: 64,
    kvBits: 0 as const,
    prefixCacheBytes: 64 << 20,
    prefixDiskBytes: 64 << 20,
    prefixDiskDir: dir,
    prefixDiskPieceBytes: pieceBytes(0),
    cacheReleaseIdleMs: 60_000,
  });
  const submit = (engine: Engine, id: string, prompt: number[], maxTokens: number) =>
    engine.submit({ id, prompt, maxTokens, sampling: samplingParams(), stopTokenIds: [] });
  const until = async (done: () => boolean, ms = 60_000) => {
    const deadline = Date.now() + ms;
    while (!done() && Date.now() < deadline) await Bun.sleep(10);
    expect(done()).toBe(true);
  };
  const tokensOf = (events: EngineEvent[], id: string) =>
    events.flatMap((e) => (e.type === "tokens" ? e.items.filter((t) => t.id === id).map((t) => t.token) : []));

  test("after a short quiet spell, a piece at a time; a request arriving between pieces is served first", async () => {
    const dir = mkdtempSync(join(root, "engine-"));
    const timeline: string[] = [];
    const events: EngineEvent[] = [];
    const engine = new Engine(config(dir), (e) => {
      events.push(e);
      if (e.type === "started" || e.type === "finished") timeline.push(`${e.type} ${e.id}`);
    });
    // Instrumentation only: records each piece, and sends a request as the first one ends (as an IPC
    // message between two pieces would arrive).
    const persistStep = engine.scheduler.persistStep.bind(engine.scheduler);
    engine.scheduler.persistStep = () => {
      const more = persistStep();
      if (!timeline.includes("piece")) setImmediate(() => submit(engine, "between", turn2, 4));
      timeline.push("piece");
      return more;
    };
    const running = engine.run();
    try {
      submit(engine, "first", turn1, 4);
      await until(() => timeline.includes("finished first"));
      const idleAt = performance.now();
      await until(() => timeline.includes("piece"));
      // The quiet spell (1 s), not the buffer-cache release (60 s here).
      expect(performance.now() - idleAt).toBeLessThan(20_000);
      await until(
        () => timeline.includes("finished between") && timeline.at(-1) === "piece" && !engine.scheduler.hasWork(),
      );
      await until(() => !engine.scheduler.persistStep());
      const first = timeline.indexOf("piece");
      const served = timeline.indexOf("finished between");
      expect(timeline.slice(first + 1, served + 1)).toEqual(["started between", "finished between"]);
      expect(timeline.slice(served + 1).every((t) => t === "piece")).toBe(true);
      expect(timeline.filter((t) => t === "piece").length).toBeGreaterThan(3);
    } finally {
      engine.stop();
      await running;
    }
  });

  test("stop() with no quiet spell writes the pieces; a restarted engine reads them, same tokens", async () => {
    const dir = mkdtempSync(join(root, "restart-"));
    const events: EngineEvent[] = [];
    const engine = new Engine(config(dir), (e) => events.push(e));
    const running = engine.run();
    submit(engine, "before", turn1, 6);
    await until(() => events.some((e) => e.type === "finished"));
    engine.stop();
    await running;
    const files = readdirSync(dir, { recursive: true }).filter((f) => String(f).endsWith(".safetensors"));
    expect(files.length).toBeGreaterThan(3);

    const after: EngineEvent[] = [];
    const restarted = new Engine(config(dir), (e) => after.push(e));
    const again = restarted.run();
    try {
      submit(restarted, "after", turn1, 6);
      await until(() => after.some((e) => e.type === "finished"));
      expect(started(after, "after").cachedTokens).toBeGreaterThanOrEqual(192);
      expect(tokensOf(after, "after")).toEqual(tokensOf(events, "before"));
      expect(restarted.stats().prefixDisk?.loaded ?? 0).toBeGreaterThan(3);
    } finally {
      restarted.stop();
      await again;
    }
  });
});
