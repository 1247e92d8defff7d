// Data parallelism on this CPU: two engine replicas behind the prefix-affinity
// router, over real HTTP. A concurrent load gets no errors and spreads over
// both; each session's follow-up turn goes where its first turn's KV cache is
// (cached tokens in usage); /health and /metrics report per replica; killing
// one replica costs only its own request, and it restarts alone.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { silentLogger } from "../../src/server/log";
import { ReplicaRouter } from "../../src/server/replicas";
import { type RunningServer, startServer } from "../../src/server/server";
import { tinyModel } from "../support/models";

interface Message {
  role: "system" | "user" | "assistant";
  content: string;
}

interface Completion {
  choices: Array<{ message: { content: string } }>;
  usage: { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } };
}

const SYSTEM =
  "You are a careful assistant for a team of engineers. Answer in short sentences, name the files you mean, " +
  "and say when you are unsure. Session number";

let server: RunningServer;
let router: ReplicaRouter;

async function chat(messages: Message[], maxTokens = 6): Promise<{ status: number; body: Completion }> {
  const r = await fetch(`${server.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "m", messages, max_tokens: maxTokens, temperature: 0 }),
  });
  return { status: r.status, body: (await r.json()) as Completion };
}

beforeAll(async () => {
  server = await startServer({
    host: "127.0.0.1",
    port: 0,
    modelPath: tinyModel("tiny-llama-f16"),
    modelId: "m",
    engine: { device: "cpu", maxContext: 1024 },
    log: silentLogger,
    replicas: 2,
  });
  if (!(server.engine instanceof ReplicaRouter)) throw new Error("expected a replica router");
  router = server.engine;
}, 120_000);

afterAll(async () => {
  await server?.stop(1000);
});

describe("two replicas behind the router", () => {
  test("a concurrent load: no errors, both replicas serve", async () => {
    const results = await Promise.all(
      Array.from({ length: 12 }, (_, i) => chat([{ role: "user", content: `Question ${i}: what is ${i} + ${i}?` }])),
    );
    for (const r of results) {
      expect(r.status).toBe(200);
      expect(typeof r.body.choices[0]?.message.content).toBe("string");
    }
    const served = router.status().map((s) => s.routedByLoad + s.routedByPrefix);
    expect(served.every((n) => n > 0)).toBe(true);
  }, 120_000);

  test("each session's follow-up turn finds its first turn's cache", async () => {
    const sessions = Array.from({ length: 4 }, (_, i): Message[] => [
      { role: "system", content: `${SYSTEM} ${i}.` },
      { role: "user", content: `Where is the scheduler of session ${i}?` },
    ]);
    const first = await Promise.all(sessions.map((m) => chat(m)));
    const before = router.status().reduce((n, s) => n + s.routedByPrefix, 0);
    const second = await Promise.all(
      sessions.map((m, i) =>
        chat([
          ...m,
          { role: "assistant", content: first[i]?.body.choices[0]?.message.content ?? "" },
          { role: "user", content: "And its tests?" },
        ]),
      ),
    );
    for (const r of second) {
      expect(r.status).toBe(200);
      expect(r.body.usage.prompt_tokens_details.cached_tokens).toBeGreaterThanOrEqual(32);
    }
    const after = router.status().reduce((n, s) => n + s.routedByPrefix, 0);
    expect(after - before).toBe(sessions.length);
  }, 120_000);

  test("/health and /metrics report each replica", async () => {
    const health = (await (await fetch(`${server.url}/health`)).json()) as {
      status: string;
      replicas: Array<{ replica: number; state: string; pid: number }>;
    };
    expect(health.status).toBe("ok");
    expect(health.replicas.map((r) => r.state)).toEqual(["ready", "ready"]);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metrics).toContain('pensieve_replica_up{replica="0"} 1');
    expect(metrics).toContain('pensieve_replica_up{replica="1"} 1');
    expect(metrics).toMatch(/pensieve_replica_active_sequences\{replica="1"\} \d+/);
  }, 60_000);

  test("one replica's crash costs only its request; it restarts alone", async () => {
    const [p0, p1] = router.replicas.map((r) => r.pid);
    // Two long generations at once: the router spreads them (least loaded), one per replica.
    const long = (i: number) =>
      fetch(`${server.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          model: "m",
          messages: [{ role: "user", content: `Write a long story, number ${i}.` }],
          max_tokens: 300,
          temperature: 0,
          stream: true,
        }),
      });
    const responses = await Promise.all([long(1), long(2)]);
    expect(router.replicas.map((r) => r.activeStreams)).toEqual([1, 1]);
    router.kill("SIGKILL", 1);
    const bodies = await Promise.all(responses.map((r) => r.text()));
    // Replica 0's stream finishes; replica 1's ends with an error event (the SSE status was already 200).
    const failed = bodies.filter((b) => b.includes('"error"'));
    expect(failed).toHaveLength(1);
    const until = Date.now() + 60_000;
    while (router.replicas[1]?.state !== "ready" && Date.now() < until) await Bun.sleep(50);
    expect(router.replicas[1]?.state).toBe("ready");
    expect(router.replicas[1]?.restarts).toBe(1);
    expect(router.replicas[1]?.pid).not.toBe(p1);
    expect(router.replicas[0]?.restarts).toBe(0);
    expect(router.replicas[0]?.pid).toBe(p0);
    const again = await chat([{ role: "user", content: "Still there?" }]);
    expect(again.status).toBe(200);
  }, 120_000);
});
