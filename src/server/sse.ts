// Server-sent events, for every streaming route (OpenAI's `data:` lines and
// Anthropic's named events). Elysia's generator streaming cannot write SSE
// comment lines (`: keep-alive`), so streams are plain Responses over a
// pull-based ReadableStream: the next event is produced only when the socket
// wants more (no unbounded buffering), and a client that goes away cancels the
// stream, which ends the producer (its finally cancels generation).

export type SseItem =
  /** A data line, named with `event:` when given (Anthropic). */
  | { data: unknown; event?: string }
  | { comment: string }
  /** OpenAI's end marker, `data: [DONE]`. */
  | { done: true };

const encoder = new TextEncoder();

function encodeSse(item: SseItem): Uint8Array {
  if ("comment" in item) return encoder.encode(`: ${item.comment}\n\n`);
  if ("done" in item) return encoder.encode("data: [DONE]\n\n");
  const data = `data: ${JSON.stringify(item.data)}\n\n`;
  return encoder.encode(item.event ? `event: ${item.event}\n${data}` : data);
}

const SSE_HEADERS = {
  "content-type": "text/event-stream; charset=utf-8",
  "cache-control": "no-cache",
  // Reverse proxies (nginx) must not buffer a token stream.
  "x-accel-buffering": "no",
} as const;

export function sseResponse(items: AsyncGenerator<SseItem>, headers: Record<string, string> = {}): Response {
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
      await items.return(undefined);
    },
  });
  return new Response(body, { status: 200, headers: { ...SSE_HEADERS, ...headers } });
}
