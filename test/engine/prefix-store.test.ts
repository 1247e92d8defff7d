// The prefix cache across restarts: cached radix nodes written to disk, read
// back by a new scheduler (a restarted engine) instead of prefilled, with the
// same tokens; bad files are removed, never trusted.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { modelKey, PrefixStore } from "../../src/engine/prefix-store";
import type { EngineEvent } from "../../src/engine/protocol";
import * as mx from "../../src/mlx";
import { loadModel } from "../../src/models/loader";
import { TEST_TMP, tinyModel } from "../support/models";
import { promptIds } from "../support/reference";
import { request, runScheduled, single, TEST_SCHEDULER_OPTIONS } from "../support/scheduler";

const { model } = loadModel(tinyModel("tiny-llama-f16"));
const c = model.config;
const layout = `${mx.dtypeName(model.dtype)}:L${c.numLayers}:H${c.numKvHeads}:D${c.headDim}`;
const key = modelKey({ model: "tiny-llama-f16", layout });
const root = mkdtempSync(join(TEST_TMP.replace(/\/$/, ""), "prefix-store-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const options = { ...TEST_SCHEDULER_OPTIONS, prefixCacheBytes: null };

function store(dir = root, budget = 64 << 20) {
  return new PrefixStore(dir, key, budget, layout, c.numLayers);
}

/** One engine lifetime: run the schedule, then write every cached node as at shutdown. */
function lifetime(schedule: Parameters<typeof runScheduled>[1], disk: PrefixStore) {
  const run = runScheduled(model, schedule, options, (s) => s.attachPrefixStore(disk));
  while (run.scheduler.persistStep()) {}
  run.scheduler.dispose();
  return run;
}

function started(events: EngineEvent[], id: string) {
  return events.find((e) => e.type === "started" && e.id === id) as Extract<EngineEvent, { type: "started" }>;
}

describe("prefix cache on disk (tiny-llama-f16, float32 CPU)", () => {
  const system = promptIds(120, 71);
  const turn1 = [...system, ...promptIds(12, 72).slice(1)];
  const turn2 = [...system, ...promptIds(20, 73).slice(1)];

  test("after a restart, a prompt sharing a written prefix reads it from disk and gives the same tokens", () => {
    const first = lifetime([{ at: 0, request: request("t1", turn1, 6) }], store());
    expect(first.scheduler.stats().prefixDisk?.written).toBeGreaterThan(0);
    const files = readdirSync(join(root, key));
    expect(files.length).toBeGreaterThan(0);

    const expected = single(model, turn2, 8, request("x", [], 0).sampling);
    const disk = store();
    expect(disk.stats().files).toBe(files.length);
    const second = lifetime([{ at: 0, request: request("t2", turn2, 8) }], disk);
    expect(started(second.events, "t2").cachedTokens).toBe(112);
    expect(second.tokens.get("t2")).toEqual(expected);
    expect(disk.stats().loaded).toBeGreaterThan(0);
  });

  test("a written node is not written again, and the disk stays within its budget", () => {
    const disk = store();
    const before = disk.stats();
    lifetime([{ at: 0, request: request("t1", turn1, 6) }], disk);
    // turn1's own tail was already there; nothing new but what the run added.
    expect(disk.stats().files).toBeGreaterThanOrEqual(before.files);
    const small = store(root, 20_000);
    lifetime([{ at: 0, request: request("t3", [...promptIds(200, 74)], 4) }], small);
    expect(small.stats().bytes).toBeLessThanOrEqual(20_000);
  });

  test("truncated, foreign and orphaned files are removed, and the prompt is prefilled as usual", () => {
    const dir = mkdtempSync(join(root, "bad-"));
    lifetime([{ at: 0, request: request("t1", turn1, 6) }], store(dir));
    const folder = join(dir, key);
    const files = readdirSync(folder);
    for (const f of files) truncateSync(join(folder, f), Math.floor(statSync(join(folder, f)).size / 2));
    writeFileSync(join(folder, "0123.safetensors"), "not a safetensors file");
    writeFileSync(join(folder, "left-over.tmp.safetensors"), "");
    const disk = store(dir);
    expect(disk.stats().files).toBe(0);
    expect(readdirSync(folder)).toEqual([]);
    const expected = single(model, turn2, 8, request("x", [], 0).sampling);
    const run = lifetime([{ at: 0, request: request("t2", turn2, 8) }], disk);
    expect(started(run.events, "t2").cachedTokens).toBe(0);
    expect(run.tokens.get("t2")).toEqual(expected);
  });

  test("another model or KV layout never reads these files", () => {
    const other = new PrefixStore(root, key, 64 << 20, "float16:L2:H2:D32", c.numLayers);
    expect(other.stats().files).toBe(0);
    expect(readdirSync(join(root, key)).length).toBe(0);
  });
});
