// The `speculative` extension field over real HTTP (tiny-llama: its greedy
// output loops, so a lone request speculates): the same text with it on or
// off, stop strings cut the same way, and a wrong type is a 400.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { RunningServer } from "../../src/server/server";
import { tinyModel } from "../support/models";
import { startTestServer } from "../support/server";

const LONG = 120_000;
let server: RunningServer;

beforeAll(async () => {
  server = await startTestServer({ model: tinyModel("tiny-llama") });
}, LONG);

afterAll(async () => {
  await server?.stop();
});

async function post(path: string, body: Record<string, unknown>) {
  const res = await fetch(`${server.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
    body: JSON.stringify(body),
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

const chat = (extra: Record<string, unknown>) =>
  post("/v1/chat/completions", {
    messages: [{ role: "user", content: "one two three one two three one two three" }],
    max_tokens: 40,
    temperature: 0,
    ...extra,
  });

const content = (r: { json: Record<string, unknown> }) =>
  ((r.json.choices as Array<{ message: { content: string } }>)[0] as { message: { content: string } }).message.content;

describe("speculative (extension field)", () => {
  test(
    "OpenAI chat: the same text with speculation on, off and by default",
    async () => {
      const off = await chat({ speculative: false });
      const on = await chat({ speculative: true });
      const plain = await chat({});
      expect([off.status, on.status, plain.status]).toEqual([200, 200, 200]);
      expect(content(on)).toBe(content(off));
      expect(content(plain)).toBe(content(off));
      // The engine process counts its verify passes (scheduler stats).
      const stats = await server.session.engine.stats(5000);
      expect(stats.speculation.passes).toBeGreaterThan(0);
      expect(stats.speculation.accepted).toBeGreaterThan(0);
      // Stop strings cut at the same place (several tokens may arrive in one step with speculation).
      const text = content(off);
      const stop = text.slice(Math.floor(text.length / 2), Math.floor(text.length / 2) + 3);
      if (stop.trim().length > 0) {
        const cutOff = await chat({ speculative: false, stop: [stop] });
        const cutOn = await chat({ stop: [stop] });
        expect(content(cutOn)).toBe(content(cutOff));
        expect(content(cutOn).length).toBeLessThan(text.length);
      }
    },
    LONG,
  );

  test(
    "Anthropic messages accept it; a wrong type is a 400",
    async () => {
      const body = {
        model: "any",
        max_tokens: 20,
        temperature: 0,
        messages: [{ role: "user", content: "one two three one two three" }],
      };
      const off = await post("/v1/messages", { ...body, speculative: false });
      const on = await post("/v1/messages", body);
      expect([off.status, on.status]).toEqual([200, 200]);
      expect(JSON.stringify(on.json.content)).toBe(JSON.stringify(off.json.content));
      expect((await chat({ speculative: "no" })).status).toBe(400);
      expect((await post("/v1/messages", { ...body, speculative: 1 })).status).toBe(400);
    },
    LONG,
  );
});
