// Memory stays flat over hundreds of decode steps: apart from the KV cache's
// growth, MLX active memory and live array handles do not grow.
import { expect, test } from "bun:test";
import { samplingParams } from "../../src/engine/protocol";
import { Scheduler } from "../../src/engine/scheduler";
import * as mx from "../../src/mlx";
import { loadModel } from "../../src/models/loader";
import { EMBEDDED_MODEL, tinyModel } from "../support/models";
import { promptIds } from "../support/reference";

function decodeAndWatch(modelPath: string, steps: number, sampling = samplingParams()) {
  const { model } = loadModel(modelPath);
  let generated = 0;
  const s = new Scheduler(
    model,
    {
      maxConcurrent: 4,
      queueSize: 4,
      kvBudgetBytes: 1 << 30,
      contextLength: 4096,
      prefillChunk: 64,
      interleavedPrefillChunk: 16,
      prefixCacheBytes: 0,
    },
    (e) => {
      if (e.type === "tokens") generated += e.items.length;
    },
  );
  s.submit({ id: "long", prompt: promptIds(20, 7), maxTokens: steps, sampling, stopTokenIds: [] });
  const samples: Array<{ step: number; nonKv: number; handles: number }> = [];
  while (s.hasWork()) {
    s.step();
    if (generated > 0 && generated < steps && generated % 50 === 0) {
      const stats = s.stats();
      samples.push({ step: generated, nonKv: mx.memory.active() - stats.kvCacheBytes, handles: mx.liveHandleCount() });
    }
  }
  model.dispose();
  return { samples, generated };
}

test("500 decode steps: MLX memory outside the KV cache and live handles stay flat (tiny model)", () => {
  const { samples, generated } = decodeAndWatch(
    tinyModel("tiny-llama-f16"),
    500,
    samplingParams({
      temperature: 0.8,
      topP: 0.9,
      repetitionPenalty: 1.1,
      presencePenalty: 0.2,
      seed: 1,
      logprobs: true,
    }),
  );
  expect(generated).toBe(500);
  const first = samples.find((x) => x.step >= 100) as { nonKv: number; handles: number };
  const last = samples.at(-1) as { nonKv: number; handles: number };
  expect(last.handles).toBe(first.handles);
  // Allow 1 MiB of allocator noise; a leak of one small array per step would exceed it.
  expect(Math.abs(last.nonKv - first.nonKv)).toBeLessThan(1 << 20);
});

test("SmolLM2: 120 decode steps keep memory outside the KV cache flat", () => {
  const { samples } = decodeAndWatch(EMBEDDED_MODEL, 120);
  const first = samples[0] as { nonKv: number; handles: number };
  const last = samples.at(-1) as { nonKv: number; handles: number };
  expect(last.handles).toBe(first.handles);
  expect(Math.abs(last.nonKv - first.nonKv)).toBeLessThan(1 << 20);
});
