// The engine child process under its supervisor: real IPC, a real model,
// crash isolation (kill -9 mid-stream), restart, and MLX failures that fail
// one request while the engine keeps serving.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { samplingParams } from "../../src/engine/protocol";
import { EngineSupervisor, type StreamEvent } from "../../src/engine/supervisor";
import { selfCommand } from "../../src/paths";
import { tinyModel } from "../support/models";
import { promptIds } from "../support/reference";

const FAULT_TOKEN = 31999;

async function collect(stream: AsyncIterable<StreamEvent>): Promise<StreamEvent[]> {
  const events: StreamEvent[] = [];
  for await (const e of stream) events.push(e);
  return events;
}

async function waitFor(check: () => boolean, timeoutMs = 30_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > until) throw new Error("timed out");
    await Bun.sleep(20);
  }
}

describe("engine process", () => {
  let engine: EngineSupervisor;
  beforeAll(async () => {
    engine = new EngineSupervisor({
      engine: { model: tinyModel("tiny-llama-f16"), device: "cpu", faultTokenId: FAULT_TOKEN, maxContext: 512 },
      command: [...selfCommand(), "engine"],
      restartDelayMs: 100,
    });
    await engine.start();
  });
  afterAll(async () => {
    await engine.stop();
  });

  test("streams tokens over IPC and reports usage", async () => {
    const events = await collect(
      engine.generate({ prompt: promptIds(10, 1), maxTokens: 8, sampling: samplingParams(), stopTokenIds: [] }),
    );
    expect(events[0]?.type).toBe("started");
    expect(events.filter((e) => e.type === "token")).toHaveLength(8);
    expect(events.at(-1)).toEqual({ type: "finished", reason: "length", completionTokens: 8 });
    expect(engine.info?.contextLength).toBe(512);
  });

  test("cancel frees the sequence in the engine", async () => {
    const stream = engine.generate({
      prompt: promptIds(10, 2),
      maxTokens: 400,
      sampling: samplingParams(),
      stopTokenIds: [],
    });
    const events: StreamEvent[] = [];
    for await (const e of stream) {
      events.push(e);
      if (events.filter((x) => x.type === "token").length === 3) stream.cancel();
    }
    expect(events.at(-1)?.type).toBe("finished");
    expect((events.at(-1) as { reason: string }).reason).toBe("cancelled");
    const stats = await engine.stats();
    expect(stats.running + stats.prefilling + stats.waiting).toBe(0);
    expect(stats.kvCacheBytes).toBe(0);
  });

  test("an MLX failure fails that request with 500 and the engine serves the next one", async () => {
    const bad = await collect(
      engine.generate({ prompt: [1, 5, FAULT_TOKEN, 7], maxTokens: 4, sampling: samplingParams(), stopTokenIds: [] }),
    );
    expect(bad.at(-1)?.type).toBe("error");
    expect((bad.at(-1) as { status: number }).status).toBe(500);
    const good = await collect(
      engine.generate({ prompt: promptIds(6, 3), maxTokens: 3, sampling: samplingParams(), stopTokenIds: [] }),
    );
    expect(good.at(-1)?.type).toBe("finished");
  });

  test("a killed engine fails its in-flight requests with 503, restarts, and serves again", async () => {
    const pid = engine.pid;
    const stream = engine.generate({
      prompt: promptIds(10, 4),
      maxTokens: 400,
      sampling: samplingParams(),
      stopTokenIds: [],
    });
    const events: StreamEvent[] = [];
    for await (const e of stream) {
      events.push(e);
      if (events.filter((x) => x.type === "token").length === 2) engine.kill("SIGKILL");
    }
    const last = events.at(-1) as Extract<StreamEvent, { type: "error" }>;
    expect(last.type).toBe("error");
    expect(last.status).toBe(503);
    expect(last.message).toContain("engine process stopped unexpectedly");
    expect(engine.state).toBe("restarting");
    const refused = await collect(
      engine.generate({ prompt: [1, 2], maxTokens: 1, sampling: samplingParams(), stopTokenIds: [] }),
    );
    expect(refused[0]).toMatchObject({ type: "error", status: 503 });
    await waitFor(() => engine.state === "ready");
    expect(engine.pid).not.toBe(pid);
    expect(engine.restarts).toBe(1);
    const again = await collect(
      engine.generate({ prompt: promptIds(6, 5), maxTokens: 2, sampling: samplingParams(), stopTokenIds: [] }),
    );
    expect(again.at(-1)?.type).toBe("finished");
  });
});

test("a model that cannot load fails start() with the loader's message", async () => {
  const engine = new EngineSupervisor({
    engine: { model: "/nonexistent/model", device: "cpu" },
    command: [...selfCommand(), "engine"],
  });
  await expect(engine.start()).rejects.toThrow("no model at /nonexistent/model");
  expect(engine.state).toBe("failed");
});
