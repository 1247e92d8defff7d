// Helpers for the Anthropic API tests: raw requests and a strict SSE parser.
import { expect } from "bun:test";
import type { RunningServer } from "../../src/server/server";

export interface SseEvent {
  event: string;
  data: Record<string, unknown>;
}

/** Parses an SSE body; every event must have a name and a JSON object as data. */
export function parseSse(body: string): SseEvent[] {
  const events: SseEvent[] = [];
  for (const chunk of body.split("\n\n")) {
    if (!chunk.trim()) continue;
    let event = "";
    let data = "";
    for (const line of chunk.split("\n")) {
      if (line.startsWith("event: ")) event = line.slice(7);
      else if (line.startsWith("data: ")) data += line.slice(6);
      else throw new Error(`unexpected SSE line: ${JSON.stringify(line)}`);
    }
    events.push({ event, data: JSON.parse(data) });
  }
  return events;
}

export function postJson(
  server: RunningServer,
  path: string,
  body: unknown,
  headers: Record<string, string> = {},
  signal?: AbortSignal,
): Promise<Response> {
  return fetch(`${server.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
    signal,
  });
}

/** Expects an Anthropic-shaped error; returns its message. */
export async function expectAnthropicError(response: Response, status: number, type: string): Promise<string> {
  expect(response.status).toBe(status);
  expect(response.headers.get("content-type")).toContain("application/json");
  const body = (await response.json()) as { type: string; error: { type: string; message: string } };
  expect(body.type).toBe("error");
  expect(body.error.type).toBe(type);
  expect(typeof body.error.message).toBe("string");
  return body.error.message;
}

/** Waits until the engine holds no sequence (running, prefilling or queued). */
export async function waitForIdleEngine(server: RunningServer, timeoutMs = 5000): Promise<number> {
  const started = performance.now();
  while (true) {
    const stats = await server.engine.stats();
    if (stats.running + stats.prefilling + stats.waiting === 0) return performance.now() - started;
    if (performance.now() - started > timeoutMs)
      throw new Error(`engine still busy after ${timeoutMs} ms: ${JSON.stringify(stats)}`);
    await Bun.sleep(20);
  }
}
