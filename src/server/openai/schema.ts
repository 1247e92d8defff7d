// TypeBox schemas of the OpenAI request bodies this server accepts. Unknown
// fields are allowed (clients send many we ignore); known fields are checked
// for type and range here, and for meaning in convert.ts. Most optional fields
// also accept null, as several SDKs send null for "unset".
import { type Static, Type as T, type TSchema } from "@sinclair/typebox";

const nullable = <S extends TSchema>(schema: S) => T.Optional(T.Union([schema, T.Null()]));

const TextPart = T.Object({ type: T.String(), text: T.Optional(T.String()) });

const MessageContent = T.Union([T.String(), T.Array(TextPart), T.Null()]);

const ToolCallSchema = T.Object({
  id: T.Optional(T.String()),
  type: T.Optional(T.Literal("function")),
  function: T.Object({
    name: T.String({ minLength: 1 }),
    // OpenAI sends a JSON string; some clients send the object itself.
    arguments: T.Optional(T.Union([T.String(), T.Record(T.String(), T.Unknown())])),
  }),
});

export const MessageSchema = T.Object({
  role: T.Union([
    T.Literal("system"),
    T.Literal("developer"),
    T.Literal("user"),
    T.Literal("assistant"),
    T.Literal("tool"),
    T.Literal("function"),
  ]),
  content: T.Optional(MessageContent),
  name: nullable(T.String()),
  tool_calls: nullable(T.Array(ToolCallSchema)),
  tool_call_id: nullable(T.String()),
});
export type OpenAIMessage = Static<typeof MessageSchema>;

const ToolSchema = T.Object({
  type: T.Literal("function"),
  function: T.Object({
    name: T.String({ minLength: 1, maxLength: 128 }),
    description: nullable(T.String()),
    parameters: nullable(T.Record(T.String(), T.Unknown())),
    strict: nullable(T.Boolean()),
  }),
});
export type OpenAITool = Static<typeof ToolSchema>;

const ToolChoiceSchema = T.Union([
  T.Literal("none"),
  T.Literal("auto"),
  T.Literal("required"),
  T.Object({ type: T.Literal("function"), function: T.Object({ name: T.String({ minLength: 1 }) }) }),
]);

export const ResponseFormatSchema = T.Union([
  T.Object({ type: T.Literal("text") }),
  T.Object({ type: T.Literal("json_object") }),
  T.Object({
    type: T.Literal("json_schema"),
    json_schema: T.Object({
      name: T.String({ minLength: 1 }),
      description: nullable(T.String()),
      schema: nullable(T.Record(T.String(), T.Unknown())),
      strict: nullable(T.Boolean()),
    }),
  }),
]);

/** Sampling fields shared by chat, completions and the WebSocket protocol (top_k, min_p, repetition_penalty are extensions). */
export const SamplingFields = {
  temperature: nullable(T.Number({ minimum: 0, maximum: 2 })),
  top_p: nullable(T.Number({ minimum: 0, maximum: 1 })),
  top_k: nullable(T.Integer({ minimum: 0 })),
  min_p: nullable(T.Number({ minimum: 0, maximum: 1 })),
  repetition_penalty: nullable(T.Number({ minimum: 0.01, maximum: 10 })),
  presence_penalty: nullable(T.Number({ minimum: -2, maximum: 2 })),
  frequency_penalty: nullable(T.Number({ minimum: -2, maximum: 2 })),
  logit_bias: nullable(T.Record(T.String(), T.Number({ minimum: -100, maximum: 100 }))),
  seed: nullable(T.Integer()),
  stop: nullable(T.Union([T.String(), T.Array(T.String(), { maxItems: 16 })])),
  max_tokens: nullable(T.Integer({ minimum: 1 })),
  /** Extension: false turns prompt-lookup speculation off for this request. */
  speculative: nullable(T.Boolean()),
};

const StreamOptions = nullable(T.Object({ include_usage: nullable(T.Boolean()) }));

export const ChatCompletionRequest = T.Object({
  model: nullable(T.String()),
  messages: T.Array(MessageSchema, { minItems: 1 }),
  ...SamplingFields,
  max_completion_tokens: nullable(T.Integer({ minimum: 1 })),
  n: nullable(T.Integer()),
  stream: nullable(T.Boolean()),
  stream_options: StreamOptions,
  logprobs: nullable(T.Boolean()),
  top_logprobs: nullable(T.Integer({ minimum: 0, maximum: 20 })),
  tools: nullable(T.Array(ToolSchema, { maxItems: 256 })),
  tool_choice: nullable(ToolChoiceSchema),
  parallel_tool_calls: nullable(T.Boolean()),
  response_format: nullable(ResponseFormatSchema),
  user: nullable(T.String()),
  /** Extension (as vLLM): the last assistant message is the start of the answer, which continues it. */
  continue_final_message: nullable(T.Boolean()),
});
export type ChatCompletionBody = Static<typeof ChatCompletionRequest>;

export const CompletionRequest = T.Object({
  model: nullable(T.String()),
  prompt: T.Union([
    T.String(),
    T.Array(T.String()),
    T.Array(T.Integer(), { minItems: 1 }),
    T.Array(T.Array(T.Integer(), { minItems: 1 })),
  ]),
  ...SamplingFields,
  n: nullable(T.Integer()),
  best_of: nullable(T.Integer()),
  stream: nullable(T.Boolean()),
  stream_options: StreamOptions,
  logprobs: nullable(T.Integer({ minimum: 0, maximum: 20 })),
  echo: nullable(T.Boolean()),
  suffix: nullable(T.String()),
  /** Extension (as vLLM): constrained JSON output for raw completions too. */
  response_format: nullable(ResponseFormatSchema),
  user: nullable(T.String()),
});
export type CompletionBody = Static<typeof CompletionRequest>;
