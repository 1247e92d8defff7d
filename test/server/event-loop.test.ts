// Nothing slow on the server's event loop: while one stream runs, multi-
// megabyte prompts arrive on every route that builds a prompt (OpenAI chat and
// completions, Anthropic messages and count_tokens, WebSocket). The running
// stream's largest gap between chunks stays under 250 ms, and every huge
// prompt gets its answer: a 400 (or a count) as before. The machine's other
// load can stall the engine process too: the bound becomes twice the stream's
// own worst gap before the huge prompts when that is over 125 ms, a failed run
// is retried (twice), and past a load average of two per core the gap is only
// reported.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { availableParallelism, loadavg } from "node:os";
import type { RunningServer } from "../../src/server/server";
import { startTestServer } from "../support/server";
import { TestSocket } from "../support/ws-client";

let server: RunningServer;

beforeAll(async () => {
  server = await startTestServer();
});
afterAll(async () => {
  await server?.stop();
});

const MiB = 2 ** 20;

/** Words that tokenize one to a few per token (not a single repeated piece). */
function hugeText(bytes: number): string {
  const words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"];
  const parts: string[] = [];
  let n = 0;
  for (let i = 0; n < bytes; i++) {
    const w = `${words[i % words.length]}${i % 97} `;
    parts.push(w);
    n += w.length;
  }
  return parts.join("");
}

test(
  "a running stream keeps flowing while multi-megabyte prompts are refused or counted",
  async () => {
    const url = server.url;
    const context = server.session.contextLength as number;
    expect(context).toBeGreaterThan(0);
    // Bodies are built before the stream starts: the client shares this event loop.
    const big = hugeText(3 * MiB);
    // Encoded up front too: only the server's work should land on the loop while we measure.
    const utf8 = new TextEncoder();
    // Small enough to be tokenized (the byte bound lets it through), far too many tokens.
    const mid = hugeText(400 * 1024);
    const chat = utf8.encode(JSON.stringify({ messages: [{ role: "user", content: big }], max_tokens: 4 }));
    const chatMid = utf8.encode(JSON.stringify({ messages: [{ role: "user", content: mid }], max_tokens: 4 }));
    const completion = utf8.encode(JSON.stringify({ prompt: big, max_tokens: 4 }));
    const messages = utf8.encode(
      JSON.stringify({ model: "m", max_tokens: 4, messages: [{ role: "user", content: big }] }),
    );
    const count = utf8.encode(JSON.stringify({ model: "m", messages: [{ role: "user", content: mid }] }));
    const countBig = utf8.encode(JSON.stringify({ model: "m", messages: [{ role: "user", content: big }] }));
    const wsChat = JSON.stringify({
      type: "chat",
      id: "huge",
      messages: [{ role: "user", content: big }],
      max_tokens: 4,
    });
    const post = (path: string, body: Uint8Array<ArrayBuffer>) =>
      fetch(`${url}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body });
    const socket = await TestSocket.open(`${url.replace("http", "ws")}/v1/ws`);

    const eos = Object.fromEntries([...server.session.tokenizer.eosIds].map((id) => [id, -100]));
    const abort = new AbortController();
    const res = await fetch(`${url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        messages: [{ role: "user", content: "Tell me a long story." }],
        max_tokens: 4000,
        stream: true,
        logit_bias: eos,
      }),
      signal: abort.signal,
    });
    expect(res.status).toBe(200);
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const arrivals: number[] = [];
    let hugeDone = false;
    let afterHuge = 0;
    const reading = (async () => {
      try {
        for (let r = await reader.read(); !r.done; r = await reader.read()) {
          arrivals.push(performance.now());
          if (hugeDone && ++afterHuge >= 5) break;
        }
      } catch {
        // aborted below
      }
    })();
    // The stream's own pace first: its largest gap over 30 chunks on this machine as it is now.
    while (arrivals.length < 31) await Bun.sleep(5);
    const before = arrivals.slice(1).map((t, i) => t - (arrivals[i] as number));
    const baselineWorst = Math.max(...before);

    // The event loop's own lag, apart from how fast the engine steps on a busy machine.
    let lag = 0;
    let tick = performance.now();
    const probe = setInterval(() => {
      const now = performance.now();
      lag = Math.max(lag, now - tick - 10);
      tick = now;
    }, 10);
    const started = performance.now();
    const [a, b, c, d, e, f] = await Promise.all([
      post("/v1/chat/completions", chat),
      post("/v1/chat/completions", chatMid),
      post("/v1/completions", completion),
      post("/v1/messages", messages),
      post("/v1/messages/count_tokens", count),
      post("/v1/messages/count_tokens", countBig),
    ]);
    socket.send(wsChat);
    const wsError = await socket.next((m) => m.type === "error" && m.id === "huge", 60_000);
    const answered = performance.now() - started;
    hugeDone = true;
    clearInterval(probe);
    const bodies = await Promise.all([a, b, c, d, e, f].map((r) => r.json() as Promise<Record<string, unknown>>));
    await reading;
    abort.abort();
    socket.socket.close();

    for (const [r, body] of [
      [a, bodies[0]],
      [b, bodies[1]],
      [c, bodies[2]],
      [d, bodies[3]],
    ] as const) {
      expect(r.status).toBe(400);
      expect(JSON.stringify(body)).toMatch(/prompt is too long: \d+ tokens > \d+ maximum/);
    }
    expect(e.status).toBe(200);
    expect(bodies[4]?.input_tokens as number).toBeGreaterThan(context);
    expect(f.status).toBe(200);
    expect(bodies[5]?.input_tokens as number).toBeGreaterThan(bodies[4]?.input_tokens as number);
    expect(String(wsError.message)).toMatch(/prompt is too long/);

    // Gaps while the huge prompts were in flight (from the chunk before they were sent, to a few chunks after).
    const during = arrivals.slice(Math.max(0, arrivals.findIndex((t) => t >= started) - 1));
    const gaps = during.slice(1).map((t, i) => t - (during[i] as number));
    const worst = Math.max(...gaps);
    console.log(
      `huge prompts answered in ${Math.round(answered)} ms; ${during.length} chunks meanwhile, largest gap ${Math.round(worst)} ms (before them: ${Math.round(baselineWorst)} ms), event-loop lag ${Math.round(lag)} ms`,
    );
    expect(during.length).toBeGreaterThan(5);
    // 250 ms; on a machine so loaded that the stream alone already stalls longer, twice its own worst gap.
    // Past two runnable tasks per core the engine process itself gets too little CPU to pace a stream:
    // then the gap is reported, not asserted (the answers above still are).
    const [load] = loadavg();
    if ((load ?? 0) > 2 * availableParallelism()) {
      console.log(`gap not asserted: load average ${load?.toFixed(1)} on ${availableParallelism()} cores`);
      return;
    }
    expect(worst).toBeLessThan(Math.max(250, 2 * baselineWorst));
  },
  { timeout: 120_000, retry: 2 },
);
