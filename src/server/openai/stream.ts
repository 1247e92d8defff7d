// OpenAI streams: the first event awaited before the response starts, and
// errors in the middle of a stream (the SSE writer itself is ../sse.ts).
import type { AppContext } from "../app";
import { ApiError, openaiErrorBody } from "../errors";
import type { ModelSession, TextEvent, TextRequest } from "../model-session";
import type { SseItem } from "../sse";

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
