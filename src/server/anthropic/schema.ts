// Request bodies of the Anthropic Messages API, as TypeBox schemas (checked by ../validate.ts).
//
// Only the fields Pensieve reads are declared; the others (thinking,
// output_config, context_management, metadata, ...) are ignored, so clients
// that send more than we use are never rejected. Message content is free-form here
// and checked block by block in convert.ts, which names the exact field at fault
// (a TypeBox union would only say "should be one of").
import { type Static, Type as t } from "@sinclair/typebox";

const Message = t.Object({
  role: t.String(),
  content: t.Unknown(),
});

const Tool = t.Object({
  name: t.String({ minLength: 1 }),
  description: t.Optional(t.String()),
  // JSON Schema is open-ended: keep every key.
  input_schema: t.Optional(t.Record(t.String(), t.Unknown())),
  // Anthropic's tool search: a deferred tool stays out of the prompt until needed.
  defer_loading: t.Optional(t.Boolean()),
});

const ToolChoice = t.Object({
  type: t.String(),
  name: t.Optional(t.String()),
  disable_parallel_tool_use: t.Optional(t.Boolean()),
});

/** What /v1/messages and /v1/messages/count_tokens share: the conversation and its tools. */
const conversationFields = {
  model: t.Optional(t.Unknown()),
  messages: t.Array(Message, { minItems: 1 }),
  system: t.Optional(t.Unknown()),
  tools: t.Optional(t.Array(Tool)),
  tool_choice: t.Optional(ToolChoice),
};

export const MessagesBody = t.Object({
  ...conversationFields,
  max_tokens: t.Integer({ minimum: 1 }),
  stream: t.Optional(t.Boolean()),
  stop_sequences: t.Optional(t.Array(t.String())),
  temperature: t.Optional(t.Number({ minimum: 0, maximum: 1 })),
  top_p: t.Optional(t.Number({ minimum: 0, maximum: 1 })),
  top_k: t.Optional(t.Integer({ minimum: 0 })),
  /** Extension: false turns prompt-lookup speculation off for this request. */
  speculative: t.Optional(t.Boolean()),
});

export const CountTokensBody = t.Object(conversationFields);

export type MessagesRequest = Static<typeof MessagesBody>;
export type CountTokensRequest = Static<typeof CountTokensBody>;
export type ConversationRequest = CountTokensRequest;
export type ToolDefinition = Static<typeof Tool>;
export type ToolChoiceParam = Static<typeof ToolChoice>;
