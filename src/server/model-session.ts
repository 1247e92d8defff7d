// The loaded model as the HTTP layer sees it: its tokenizer and chat template
// (text lives in the server process), and the engine that turns prompt tokens
// into generated tokens. generateText() is the one text pipeline every API
// (OpenAI, Anthropic, WebSocket) uses: detokenizing, stop strings, usage.
import { basename } from "node:path";
import type { ConstraintSpec, FinishReason, SamplingParams } from "../engine/protocol";
import type { EngineHandle, StreamEvent } from "../engine/supervisor";
import { loadTokenizer, StopMatcher, StreamingDetokenizer, type Tokenizer } from "../text";
import { ApiError, apiErrorFromStatus } from "./errors";
import type { ServerMetrics } from "./metrics";
import { checkPromptLength, type PromptContext } from "./prompt";
import { InProcessPrompts, type PromptBuilder } from "./prompt-workers";

export interface TokenLogprob {
  token: number;
  text: string;
  logprob: number;
  top: Array<{ token: number; text: string; logprob: number }>;
}

export type TextEvent =
  | { type: "started"; promptTokens: number; cachedTokens: number }
  | { type: "text"; text: string; logprobs: TokenLogprob[] }
  /** Emitted while a long prompt is prefilled, so streams can send keep-alives. */
  | { type: "waiting" }
  | {
      type: "done";
      /** The engine's reason (an engine error comes as an ApiError instead), or "stop_string": one of the request's stop strings. */
      reason: Exclude<FinishReason, "error"> | "stop_string";
      stopString: string | null;
      usage: Usage;
    };

export interface Usage {
  promptTokens: number;
  cachedTokens: number;
  completionTokens: number;
}

export interface TextRequest {
  prompt: number[];
  /** Requested maximum; clamped to the context left. */
  maxTokens: number | null;
  sampling: SamplingParams;
  stop?: string[];
  /** Extra token ids that end generation (the model's end-of-turn ids always do). */
  stopTokenIds?: number[];
  signal?: AbortSignal;
  /** Keep special tokens in the text (raw completions may want them). */
  keepSpecialTokens?: boolean;
  /** Emit a "waiting" event at this interval until the first token (SSE keep-alives). */
  keepAliveMs?: number;
  /**
   * Output format, enforced by constrained decoding in the engine: json_object
   * guarantees a JSON object, json_schema JSON that follows the schema (a
   * subset of JSON Schema: src/text/json-schema-grammar.ts). Generation that
   * reaches max_tokens first ends with "length" and a valid prefix.
   */
  responseFormat?: ResponseFormat;
  /** Text of the answer already in the prompt (a continued message): the format applies from its start. */
  answerPrefix?: string;
}

export type ResponseFormat = { type: "json_object" } | { type: "json_schema"; schema: unknown };

/** The engine's constraint for a response format. */
export function constraintFor(format: ResponseFormat, answerPrefix = ""): ConstraintSpec {
  const spec: ConstraintSpec =
    format.type === "json_object" ? { kind: "json" } : { kind: "json_schema", schema: format.schema };
  return answerPrefix ? { ...spec, prefix: answerPrefix } : spec;
}

export class ModelSession implements PromptContext {
  /** The server's own copy, for detokenizing streams (prompts are built by `prompts`). */
  readonly tokenizer: Tokenizer;
  readonly engine: EngineHandle;
  /** The id clients see in /v1/models. */
  readonly modelId: string;
  readonly metrics: ServerMetrics | null;
  /** Builds prompts off the event loop (prompt-workers.ts); in process when none is given. */
  readonly prompts: PromptBuilder;

  constructor(
    tokenizer: Tokenizer,
    engine: EngineHandle,
    modelId: string,
    metrics: ServerMetrics | null = null,
    prompts: PromptBuilder | null = null,
  ) {
    this.tokenizer = tokenizer;
    this.engine = engine;
    this.modelId = modelId;
    this.metrics = metrics;
    this.prompts = prompts ?? new InProcessPrompts(() => this);
  }

  /** Tokenizer for a model folder or GGUF file. */
  static loadTokenizer(modelPath: string): Tokenizer {
    return loadTokenizer(modelPath);
  }

  static defaultModelId(modelPath: string): string {
    return basename(modelPath).replace(/\.gguf$/i, "");
  }

  /** Longest prompt + output the engine accepts (null until the engine has loaded). */
  get contextLength(): number | null {
    return this.engine.info?.contextLength ?? null;
  }

  /** Token ids the engine's model knows (the tokenizer's count until it has loaded). */
  get vocabSize(): number {
    return this.engine.info?.vocabSize ?? this.tokenizer.vocabSize;
  }

  /** Tokenizes a raw prompt (completions API), in process: BOS as the tokenizer config says. */
  rawPrompt(text: string): number[] {
    return this.tokenizer.encode(text, { addSpecialTokens: true });
  }

  /** The request's max tokens as an upper bound within the context left. */
  clampMaxTokens(promptTokens: number, requested: number | null): number {
    const left = Math.max(0, (this.contextLength ?? promptTokens + 1) - promptTokens);
    return requested === null ? left : Math.max(0, Math.min(requested, left));
  }

  tokenText(id: number): string {
    return this.tokenizer.decode([id]);
  }

  /**
   * Generates text: yields started, text deltas (with log-probabilities when
   * asked) and done. Throws ApiError for engine failures before any text.
   */
  async *generateText(req: TextRequest): AsyncGenerator<TextEvent> {
    checkPromptLength(this, req.prompt.length);
    const maxTokens = this.clampMaxTokens(req.prompt.length, req.maxTokens);
    const stopIds = [...new Set([...this.tokenizer.eosIds, ...(req.stopTokenIds ?? [])])];
    const stream = this.engine.generate(
      {
        prompt: req.prompt,
        maxTokens,
        sampling: req.sampling,
        stopTokenIds: stopIds,
        constraint: req.responseFormat ? constraintFor(req.responseFormat, req.answerPrefix) : undefined,
      },
      req.signal,
    );
    const detok = new StreamingDetokenizer(this.tokenizer, {
      skipSpecialTokens: !req.keepSpecialTokens,
      contextIds: req.prompt.slice(-4),
    });
    const stops = new StopMatcher(req.stop ?? []);
    const wantLogprobs = req.sampling.logprobs || req.sampling.topLogprobs > 0;
    const started = performance.now();
    let lastToken = 0;
    let usage: Usage = { promptTokens: req.prompt.length, cachedTokens: 0, completionTokens: 0 };
    let pendingLogprobs: TokenLogprob[] = [];
    let firstToken = true;
    const metrics = this.metrics;
    try {
      for await (const e of withKeepAlive(stream, req.keepAliveMs)) {
        if (e === null) {
          yield { type: "waiting" };
          continue;
        }
        if (e.type === "started") {
          usage = { ...usage, cachedTokens: e.cachedTokens };
          metrics?.queueWait.observe(e.queuedMs / 1000);
          yield { type: "started", promptTokens: e.promptTokens, cachedTokens: e.cachedTokens };
        } else if (e.type === "token") {
          const now = performance.now();
          if (firstToken) metrics?.timeToFirstToken.observe((now - started) / 1000);
          else metrics?.interTokenLatency.observe((now - lastToken) / 1000);
          firstToken = false;
          lastToken = now;
          usage.completionTokens++;
          if (wantLogprobs && e.logprob !== null) {
            pendingLogprobs.push({
              token: e.token,
              text: this.tokenText(e.token),
              logprob: e.logprob,
              top: (e.top ?? []).map((t) => ({ ...t, text: this.tokenText(t.token) })),
            });
          }
          const { text, stop } = stops.push(detok.push(e.token));
          if (text || stop !== undefined) {
            yield { type: "text", text, logprobs: pendingLogprobs };
            pendingLogprobs = [];
          }
          if (stop !== undefined) {
            stream.cancel();
            yield { type: "done", reason: "stop_string", stopString: stop, usage };
            return;
          }
        } else if (e.type === "finished") {
          const tail = stops.push(detok.flush());
          const rest = tail.stop === undefined ? tail.text + stops.flush() : tail.text;
          if (rest || pendingLogprobs.length) yield { type: "text", text: rest, logprobs: pendingLogprobs };
          if (tail.stop !== undefined) {
            yield { type: "done", reason: "stop_string", stopString: tail.stop, usage };
            return;
          }
          const reason = e.reason === "error" ? "stop" : e.reason;
          yield { type: "done", reason, stopString: null, usage };
          return;
        } else if (e.type === "error") {
          throw apiErrorFromStatus(e.status, e.message, e.retryAfterSeconds);
        }
      }
    } finally {
      // A consumer that stops early (client gone) cancels the engine's work.
      stream.cancel();
      metrics?.promptTokens.inc({}, usage.promptTokens);
      metrics?.cachedTokens.inc({}, usage.cachedTokens);
      metrics?.completionTokens.inc({}, usage.completionTokens);
      metrics?.requestDuration.observe((performance.now() - started) / 1000);
    }
  }
}

/** Interleaves `null` every `intervalMs` until the stream's first event arrives. */
async function* withKeepAlive(
  stream: AsyncIterable<StreamEvent>,
  intervalMs?: number,
): AsyncGenerator<StreamEvent | null> {
  const it = stream[Symbol.asyncIterator]();
  let next = it.next();
  let gotFirstToken = false;
  while (true) {
    if (!intervalMs || gotFirstToken) {
      const r = await next;
      if (r.done) return;
      yield r.value;
      next = it.next();
      continue;
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const tick = new Promise<"tick">((resolve) => {
      timer = setTimeout(() => resolve("tick"), intervalMs);
    });
    const r = await Promise.race([next, tick]);
    clearTimeout(timer);
    if (r === "tick") {
      yield null;
      continue;
    }
    if (r.done) return;
    if (r.value.type === "token") gotFirstToken = true;
    yield r.value;
    next = it.next();
  }
}

export { ApiError };
