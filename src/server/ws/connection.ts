// One WebSocket connection: several conversations at once, multiplexed by id.
//
// Backpressure: Bun's send() returns the bytes written, -1 when the message
// was queued because the socket is congested, or 0 when it was dropped. After
// a -1 every conversation on the socket stops pulling tokens from its
// generator until the socket drains, so the server buffers at most one message
// per conversation (the engine's own stream holds what it already made,
// bounded by max_tokens). A 0 means a token was lost: that conversation ends
// with an error and its generation is cancelled, never silently continued.
import type { AppContext } from "../app";
import { ApiError } from "../errors";
import type { TextEvent } from "../model-session";
import { startGeneration } from "../openai/stream";
import { requireShallow, validate } from "../validate";
import { CancelRequest, ChatRequest, CLIENT_MESSAGE_TYPES, PingRequest, type ServerMessage } from "./protocol";

/** What a connection needs from the socket (Bun's ServerWebSocket.send, or a test double). */
export interface MessageSink {
  send(data: string): number;
}

/** Live conversations one socket may run at once; more are refused with 429. */
export const MAX_LIVE_CONVERSATIONS = 16;

export class Connection {
  readonly #ctx: AppContext;
  readonly #sink: MessageSink;
  readonly #live = new Map<string, AbortController>();
  #congested = false;
  #drainWaiters: Array<() => void> = [];
  #closed = false;

  constructor(ctx: AppContext, sink: MessageSink) {
    this.#ctx = ctx;
    this.#sink = sink;
  }

  get liveConversations(): number {
    return this.#live.size;
  }

  /** A message from the client, as Elysia hands it over (parsed JSON when it parsed, else the raw text). */
  receive(message: unknown): void {
    if (this.#closed) return;
    let value = message;
    if (value instanceof Uint8Array || value instanceof ArrayBuffer) {
      this.#reply({ type: "error", status: 400, message: "binary messages are not supported: send JSON text" });
      return;
    }
    if (typeof value === "string") {
      try {
        value = JSON.parse(value);
      } catch {
        this.#reply({ type: "error", status: 400, message: "the message is not valid JSON" });
        return;
      }
    }
    if (!value || typeof value !== "object" || Array.isArray(value)) {
      this.#reply({ type: "error", status: 400, message: "a message must be a JSON object with a type" });
      return;
    }
    const type = (value as { type?: unknown }).type;
    const rawId = (value as { id?: unknown }).id;
    const id = typeof rawId === "string" ? rawId : undefined;
    try {
      requireShallow(value);
      if (type === "ping") {
        validate(PingRequest, value);
        this.#reply({ type: "pong" });
      } else if (type === "cancel") {
        // Cancelling an id that already finished is not an error: the two cross on the wire.
        this.#live.get(validate(CancelRequest, value).id)?.abort();
      } else if (type === "chat") {
        this.#startChat(validate(ChatRequest, value));
      } else {
        const shown = typeof type === "string" ? `"${type.slice(0, 40)}"` : "missing";
        throw new ApiError(
          400,
          "invalid_request",
          `unknown message type ${shown} (expected ${CLIENT_MESSAGE_TYPES.join(", ")})`,
          "type",
        );
      }
    } catch (e) {
      this.#reply(errorMessage(this.#ctx, e, id));
    }
  }

  /** The socket can take more: resume the conversations that were waiting. */
  drain(): void {
    this.#congested = false;
    const waiters = this.#drainWaiters;
    this.#drainWaiters = [];
    for (const wake of waiters) wake();
  }

  /** The socket closed: cancel everything it was generating. */
  close(): void {
    this.#closed = true;
    for (const abort of this.#live.values()) abort.abort();
    this.drain();
  }

  #startChat(request: ChatRequest): void {
    if (this.#live.has(request.id))
      throw new ApiError(409, "invalid_request", `conversation "${request.id}" is still running`, "id");
    if (this.#live.size >= MAX_LIVE_CONVERSATIONS)
      throw new ApiError(
        429,
        "rate_limit",
        `at most ${MAX_LIVE_CONVERSATIONS} conversations may run at once on one connection`,
      );
    const abort = new AbortController();
    this.#live.set(request.id, abort);
    void this.#runChat(request, abort);
  }

  async #runChat(request: ChatRequest, abort: AbortController): Promise<void> {
    const { id } = request;
    let events: AsyncGenerator<TextEvent> | null = null;
    try {
      const model = this.#ctx.resolveModel(request.model);
      const { type: _type, id: _id, ...fields } = request;
      const plan = await this.#ctx.session.prompts.run({ op: "chat", body: fields });
      events = await startGeneration(this.#ctx.session, {
        prompt: plan.prompt,
        maxTokens: plan.maxTokens,
        sampling: plan.sampling,
        stop: plan.stop,
        signal: abort.signal,
        responseFormat: plan.enforcedFormat,
      });
      if (!(await this.#send({ type: "start", id, model }))) return this.#lost(id, abort);
      for await (const e of events) {
        if (e.type === "text" && e.text) {
          if (!(await this.#send({ type: "delta", id, text: e.text }))) return this.#lost(id, abort);
        } else if (e.type === "done") {
          const finish = e.reason === "cancelled" ? "cancelled" : e.reason === "length" ? "length" : "stop";
          const usage = {
            prompt_tokens: e.usage.promptTokens,
            completion_tokens: e.usage.completionTokens,
            cached_tokens: e.usage.cachedTokens,
          };
          if (!(await this.#send({ type: "done", id, finish_reason: finish, usage }))) this.#lost(id, abort);
          return;
        }
      }
    } catch (e) {
      this.#reply(errorMessage(this.#ctx, e, id));
    } finally {
      abort.abort();
      if (this.#live.get(id) === abort) this.#live.delete(id);
      await events?.return(undefined);
    }
  }

  /** A message of this conversation was dropped: stop it and say so (best effort: the socket is struggling). */
  #lost(id: string, abort: AbortController): void {
    abort.abort();
    this.#reply({
      type: "error",
      id,
      status: 503,
      message: "a message to this client was dropped (the connection is congested); the conversation was stopped",
    });
  }

  /** Sends a conversation message, first waiting out backpressure. False: not delivered (dropped, or the socket closed). */
  async #send(message: ServerMessage): Promise<boolean> {
    while (this.#congested && !this.#closed) await new Promise<void>((wake) => this.#drainWaiters.push(wake));
    if (this.#closed) return false;
    const result = this.#sink.send(JSON.stringify(message));
    if (result === 0) return false;
    if (result === -1) this.#congested = true;
    return true;
  }

  /** Replies (pong, errors) go out at once: they are small and answer the client directly. */
  #reply(message: ServerMessage): void {
    if (this.#closed) return;
    if (this.#sink.send(JSON.stringify(message)) === -1) this.#congested = true;
  }
}

function errorMessage(ctx: AppContext, e: unknown, id: string | undefined): ServerMessage {
  if (e instanceof ApiError) return { type: "error", ...(id ? { id } : {}), status: e.status, message: e.message };
  ctx.log.error("websocket conversation failed", { error: (e as Error)?.stack ?? String(e) });
  return { type: "error", ...(id ? { id } : {}), status: 500, message: "internal server error" };
}
