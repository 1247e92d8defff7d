// Server-sent events. Elysia's generator streaming cannot write SSE comment
// lines (`: keep-alive`), so streams are plain Responses over a pull-based
// ReadableStream: the next event is produced only when the socket wants more
// (no unbounded buffering), and a client that goes away cancels the stream.
import type { AppContext } from "../app";
import { ApiError, openaiErrorBody } from "../errors";
import type { ModelSession, TextEvent, TextRequest } from "../model-session";

export type SseItem = { data: unknown } | { comment: string } | { done: true };

const encoder = new TextEncoder();

export function encodeSse(item: SseItem): Uint8Array {
  if ("comment" in item) return encoder.encode(`: ${item.comment}\n\n`);
  if ("done" in item) return encoder.encode("data: [DONE]\n\n");
  return encoder.encode(`data: ${JSON.stringify(item.data)}\n\n`);
}

export const SSE_HEADERS = {
  "content-type": "text/event-stream; charset=utf-8",
  "cache-control": "no-cache",
  // Reverse proxies (nginx) must not buffer a token stream.
  "x-accel-buffering": "no",
} as const;

export function sseResponse(items: AsyncGenerator<SseItem>): Response {
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const next = await items.next();
        if (next.done) controller.close();
        else controller.enqueue(encodeSse(next.value));
      } catch (e) {
        controller.error(e);
      }
    },
    async cancel() {
      // The client went away: end the producer (its finally cancels generation).
      await items.return(undefined);
    },
  });
  return new Response(body, { status: 200, headers: SSE_HEADERS });
}

/**
 * Starts a generation and waits for its first event, so that failures before
 * any output (prompt too long, queue full, engine restarting) answer with
 * their own HTTP status rather than a 200 stream that carries an error.
 */
export async function startGeneration(session: ModelSession, req: TextRequest): Promise<AsyncGenerator<TextEvent>> {
  const events = session.generateText(req);
  const first = await events.next();
  return (async function* () {
    try {
      if (first.done) return;
      yield first.value;
      yield* events;
    } finally {
      await events.return(undefined);
    }
  })();
}

/** An error in the middle of a stream, as the data event OpenAI's SDKs turn into an exception. */
export function sseError(error: ApiError): SseItem {
  return { data: openaiErrorBody(error) };
}

/** What a stream reports when generation fails after it started. */
export function streamFailure(ctx: AppContext, e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  ctx.log.error("generation failed mid-stream", { error: (e as Error)?.stack ?? String(e) });
  return new ApiError(500, "api_error", "internal server error");
}
