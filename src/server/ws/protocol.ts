// The WebSocket protocol's messages (see PROTOCOL.md): client messages as
// TypeBox schemas, server messages as types.
import { type Static, Type as T } from "@sinclair/typebox";
import { MessageSchema, ResponseFormatSchema, SamplingFields } from "../openai/schema";

const ConversationId = T.String({ minLength: 1, maxLength: 128 });

export const ChatRequest = T.Object({
  type: T.Literal("chat"),
  id: ConversationId,
  model: T.Optional(T.Union([T.String(), T.Null()])),
  messages: T.Array(MessageSchema, { minItems: 1 }),
  ...SamplingFields,
  response_format: T.Optional(T.Union([ResponseFormatSchema, T.Null()])),
});
export type ChatRequest = Static<typeof ChatRequest>;

export const CancelRequest = T.Object({ type: T.Literal("cancel"), id: ConversationId });

export const PingRequest = T.Object({ type: T.Literal("ping") });

export const CLIENT_MESSAGE_TYPES = ["chat", "cancel", "ping"] as const;

export interface WsUsage {
  prompt_tokens: number;
  completion_tokens: number;
  cached_tokens: number;
}

export type ServerMessage =
  | { type: "start"; id: string; model: string }
  | { type: "delta"; id: string; text: string }
  | { type: "done"; id: string; finish_reason: "stop" | "length" | "cancelled"; usage: WsUsage }
  | { type: "error"; id?: string; status: number; message: string }
  | { type: "pong" };
