// Prompts from text: the chat template, tokenizing, and the length checks
// against the engine's context. These are the slow steps of a request (a
// multi-megabyte prompt tokenizes for seconds), so the routes run them in the
// prompt workers (prompt-workers.ts); tests may call them in process.
import { applyChatTemplate, type ChatMessage, ChatTemplateError, type Tokenizer } from "../text";
import { maxInputBytesPerToken } from "../text/token-bytes";
import { badRequest } from "./errors";

/** What building a prompt needs: the tokenizer and what the engine accepts. */
export interface PromptContext {
  readonly tokenizer: Tokenizer;
  /** Longest prompt + output (null until the engine has loaded: no check). */
  readonly contextLength: number | null;
  /** Token ids the engine's model knows. */
  readonly vocabSize: number;
  /** The loaded model's name, for the over-long prompt's hint. */
  readonly modelId?: string;
}

/** UTF-8 length without encoding (a surrogate pair: 4 bytes; a lone surrogate counts 2, never more than it encodes to). */
export function utf8Length(text: string): number {
  let n = text.length;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c >= 0x80) n += c >= 0x800 && (c < 0xd800 || c > 0xdfff) ? 2 : 1;
  }
  return n;
}

/** 400 when the prompt leaves no room to generate, in the words Claude Code understands. */
export function checkPromptLength(ctx: PromptContext, promptTokens: number, param = "messages"): void {
  const context = ctx.contextLength;
  if (context !== null && promptTokens >= context)
    throw badRequest(
      `prompt is too long: ${promptTokens} tokens > ${context - 1} maximum${ctx.modelId ? `. ${longerContextHint(ctx.modelId, context, promptTokens)}` : ""}`,
      param,
    );
}

/**
 * Refuses, before tokenizing, a text that cannot fit: a token stands for at
 * most `bound` input bytes, so B bytes need at least ⌈B / bound⌉ tokens. Only
 * prompts that would be refused after tokenizing are refused here.
 */
export function checkPromptBytes(ctx: PromptContext, text: string, param = "messages"): void {
  const context = ctx.contextLength;
  const bound = context === null ? null : maxInputBytesPerToken(ctx.tokenizer);
  // A UTF-16 unit is at most 3 UTF-8 bytes: most prompts are let through without counting.
  if (context === null || bound === null || 3 * text.length <= (context - 1) * bound) return;
  const bytes = utf8Length(text);
  const atLeast = Math.ceil(bytes / bound);
  if (atLeast >= context)
    throw badRequest(
      `prompt is too long: ${atLeast} tokens > ${context - 1} maximum (at least: ${bytes} bytes, at most ${bound} bytes per token)`,
      param,
    );
}

/** Text → prompt tokens, refused when it cannot fit (`check` false: count only). */
export function encodePrompt(
  ctx: PromptContext,
  text: string,
  options: { addSpecialTokens: boolean; param?: string; check?: boolean },
): number[] {
  const check = options.check ?? true;
  if (check) checkPromptBytes(ctx, text, options.param);
  const tokens = ctx.tokenizer.encode(text, { addSpecialTokens: options.addSpecialTokens });
  if (check) checkPromptLength(ctx, tokens.length, options.param);
  return tokens;
}

/** Renders a conversation through the model's chat template; a template error is a 400. */
export function renderChat(
  tokenizer: Tokenizer,
  messages: ChatMessage[],
  options: { tools?: unknown[]; addGenerationPrompt?: boolean; variables?: Record<string, unknown> } = {},
): string {
  try {
    return applyChatTemplate(tokenizer, messages, {
      addGenerationPrompt: options.addGenerationPrompt ?? true,
      tools: options.tools,
      variables: options.variables,
    });
  } catch (e) {
    if (e instanceof ChatTemplateError && e.raisedByTemplate)
      throw badRequest(`the model's chat template rejected the conversation: ${e.message}`, "messages");
    throw badRequest(`cannot render the conversation: ${(e as Error).message}`, "messages");
  }
}

/**
 * Longer-context aliases of `pensieve setup` (src/hub/aliases.ts; the server
 * does not load the hub module) with the context they hold: the flagship.
 */
const LONG_CONTEXT_ALIASES: ReadonlyArray<[alias: string, context: number]> = [["phi3-mini-mlx", 131072]];

/** What the 400 for an over-long prompt adds: the loaded model's context and an alias that holds the prompt. */
export function longerContextHint(modelId: string, context: number, promptTokens: number): string {
  const loaded = `The loaded model, ${modelId}, holds ${context} tokens`;
  const fit = LONG_CONTEXT_ALIASES.find(([, n]) => n > promptTokens + 1024 && n > context);
  if (!fit) return `${loaded}: shorten the conversation.`;
  return `${loaded} (Claude Code's first request alone is about 20K): run one with a longer context, e.g. \`pensieve setup --model ${fit[0]}\`.`;
}
