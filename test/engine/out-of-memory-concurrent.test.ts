// The CPU analogue of 8 Claude Code sessions at once on a full GPU (issue 10;
// bench/results/gpu-h100-2026-12-07/): the engine is capped just above what it
// uses after loading, so one long request fits but eight do not, while the KV
// plan (made before the cap) admits them all. Real MLX allocation failures
// follow; the sequences involved recompute with a smaller budget
// (src/engine/memory-pressure.ts), and every request completes: no 5xx, no
// error in a stream, one engine process throughout.
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { RunningServer } from "../../src/server/server";
import { startTestServer } from "../support/server";

let server: RunningServer;
const MiB = 2 ** 20;

beforeAll(async () => {
  server = await startTestServer({ engine: { memoryHeadroomBytes: 160 * MiB, maxContext: 4096 } });
});
afterAll(async () => {
  await server?.stop();
});

/** A long shared "system" part and a distinct question, as sessions with the same tools and prompt. */
function prompt(i: number): string {
  const shared = Array.from({ length: 200 }, (_, w) => `tool${w % 97} arg${w % 13}`).join(" ");
  return `${shared}\nSession ${i}: ${Array.from({ length: 60 }, (_, w) => `q${i}w${w}`).join(" ")}`;
}

async function metric(name: string): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  return Number(
    text
      .split("\n")
      .find((l) => l.startsWith(`${name} `))
      ?.split(" ")[1] ?? Number.NaN,
  );
}

test("eight long requests at once on a memory-capped engine: out of memory, recomputed, all complete", async () => {
  const eos = Object.fromEntries([...server.session.tokenizer.eosIds].map((id) => [id, -100]));
  const results = await Promise.all(
    Array.from({ length: 8 }, async (_, i) => {
      const response = await fetch(`${server.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          messages: [{ role: "user", content: prompt(i) }],
          max_tokens: 24,
          stream: true,
          logit_bias: eos,
        }),
      });
      return { status: response.status, text: await response.text() };
    }),
  );
  const failures = await metric("pensieve_out_of_memory_failures");
  const requeued = await metric("pensieve_out_of_memory_requeued");
  console.log(
    `statuses ${results.map((r) => r.status).join(",")}; out of memory ${failures} times, ${requeued} requeued`,
  );
  for (const r of results) {
    expect(r.status).toBe(200);
    expect(r.text).not.toContain('"error"');
    expect(r.text).toContain('"finish_reason":"length"');
    expect(r.text).toContain("data: [DONE]");
  }
  // The cap did bite: without a failure this test would prove nothing.
  expect(failures).toBeGreaterThanOrEqual(1);
  expect(requeued).toBeGreaterThanOrEqual(1);
  expect(server.engine.restarts).toBe(0);
  expect((await fetch(`${server.url}/health`)).status).toBe(200);
}, 300_000);
