// Chat templates: render a conversation to the prompt text the way transformers'
// apply_chat_template does (Jinja2 with trim_blocks + lstrip_blocks, the same variables and
// globals), using @huggingface/jinja.
import { Environment, Interpreter, Template } from "@huggingface/jinja";

export interface ChatContentPart {
  type: string;
  text?: string;
  [key: string]: unknown;
}

export interface ChatMessage {
  role: string;
  /** A string, or OpenAI-style parts; text parts are joined with "\n" before rendering. */
  content?: string | ChatContentPart[] | null;
  /** Anything else (tool_calls, name, tool_call_id...) is passed to the template unchanged. */
  [key: string]: unknown;
}

export interface ChatTemplateOptions {
  /** End the prompt with the assistant's turn header (default false, as in transformers). */
  addGenerationPrompt?: boolean;
  bosToken?: string;
  eosToken?: string;
  unkToken?: string;
  padToken?: string;
  /** Tool JSON schemas; templates see `tools` as none when absent. */
  tools?: unknown[];
  documents?: unknown[];
  /** Extra template variables (e.g. enable_thinking, date_string). */
  variables?: Record<string, unknown>;
  /** Clock for strftime_now (tests pin it). */
  now?: () => Date;
}

export class ChatTemplateError extends Error {
  override name = "ChatTemplateError";
  /** True when the template itself called raise_exception (bad conversation, not a bad template). */
  readonly raisedByTemplate: boolean;

  constructor(message: string, raisedByTemplate: boolean) {
    super(message);
    this.raisedByTemplate = raisedByTemplate;
  }
}

/** transformers' historical default: ChatML, for models that ship no template. */
export const CHATML_TEMPLATE =
  "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

const SHORT_DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const LONG_DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
const SHORT_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const LONG_MONTHS = [
  "January",
  "February",
  "March",
  "April",
  "May",
  "June",
  "July",
  "August",
  "September",
  "October",
  "November",
  "December",
];

/** Python's datetime.strftime in the C locale (what templates such as Llama 3.1's expect), local time. */
export function strftime(date: Date, format: string): string {
  const pad = (value: number, width = 2) => String(value).padStart(width, "0");
  const dayOfYear = Math.floor(
    (Date.UTC(date.getFullYear(), date.getMonth(), date.getDate()) - Date.UTC(date.getFullYear(), 0, 1)) / 86_400_000,
  );
  return format.replace(/%([a-zA-Z%])/g, (directive, code: string) => {
    switch (code) {
      case "a":
        return SHORT_DAYS[date.getDay()]!;
      case "A":
        return LONG_DAYS[date.getDay()]!;
      case "b":
        return SHORT_MONTHS[date.getMonth()]!;
      case "B":
        return LONG_MONTHS[date.getMonth()]!;
      case "d":
        return pad(date.getDate());
      case "e":
        return String(date.getDate()).padStart(2, " ");
      case "H":
        return pad(date.getHours());
      case "I":
        return pad(date.getHours() % 12 || 12);
      case "j":
        return pad(dayOfYear + 1, 3);
      case "m":
        return pad(date.getMonth() + 1);
      case "M":
        return pad(date.getMinutes());
      case "p":
        return date.getHours() < 12 ? "AM" : "PM";
      case "S":
        return pad(date.getSeconds());
      case "y":
        return pad(date.getFullYear() % 100);
      case "Y":
        return String(date.getFullYear());
      case "%":
        return "%";
      default:
        return directive;
    }
  });
}

/** Python's range(stop) / range(start, stop[, step]). */
function pythonRange(start: number, stop?: number, step = 1): number[] {
  if (stop === undefined) [start, stop] = [0, start];
  if (step === 0) throw new ChatTemplateError("range() step must not be zero", false);
  const values: number[] = [];
  for (let i = start; step > 0 ? i < stop : i > stop; i += step) values.push(i);
  return values;
}

function flattenContent(message: ChatMessage): ChatMessage {
  if (!Array.isArray(message.content)) return message;
  const text = message.content
    .filter((part) => part.type === "text" && typeof part.text === "string")
    .map((part) => part.text)
    .join("\n");
  return { ...message, content: text };
}

export class ChatTemplate {
  readonly source: string;
  private readonly template: Template;

  constructor(source: string) {
    this.source = source;
    try {
      this.template = new Template(source);
    } catch (error) {
      throw new ChatTemplateError(`invalid chat template: ${(error as Error).message}`, false);
    }
  }

  render(messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): string {
    const now = options.now ?? (() => new Date());
    const variables: Record<string, unknown> = {
      ...options.variables,
      messages: messages.map(flattenContent),
      add_generation_prompt: options.addGenerationPrompt ?? false,
      // transformers passes these as None when absent: `tools is defined` is true, `tools` is falsy.
      tools: options.tools ?? null,
      documents: options.documents ?? null,
      raise_exception: (message: unknown) => {
        throw new ChatTemplateError(String(message), true);
      },
      strftime_now: (format: unknown) => strftime(now(), String(format)),
    };
    // Special tokens are only defined when the tokenizer has them, as in transformers' special_tokens_map.
    const specials: [string, string | undefined][] = [
      ["bos_token", options.bosToken],
      ["eos_token", options.eosToken],
      ["unk_token", options.unkToken],
      ["pad_token", options.padToken],
    ];
    for (const [name, value] of specials) if (value !== undefined) variables[name] = value;
    // Template.render() installs its own raise_exception/strftime_now and refuses overrides, so
    // run the parsed program in an environment with the same globals plus ours.
    const environment = new Environment();
    const globals: Record<string, unknown> = {
      true: true,
      false: false,
      none: null,
      True: true,
      False: false,
      None: null,
      range: pythonRange,
      ...variables,
    };
    try {
      for (const [name, value] of Object.entries(globals)) environment.set(name, value);
      const result = new Interpreter(environment).run(this.template.parsed);
      return String(result.value);
    } catch (error) {
      if (error instanceof ChatTemplateError) throw error;
      throw new ChatTemplateError(`chat template failed: ${(error as Error).message}`, false);
    }
  }
}

const compiled = new Map<string, ChatTemplate>();
const COMPILED_CACHE_LIMIT = 32;

/** Render with a cached compiled template; falls back to ChatML when `source` is undefined. */
export function renderChatTemplate(
  source: string | undefined,
  messages: readonly ChatMessage[],
  options: ChatTemplateOptions = {},
): string {
  const key = source ?? CHATML_TEMPLATE;
  let template = compiled.get(key);
  if (!template) {
    template = new ChatTemplate(key);
    // Requests may bring their own templates: keep the cache bounded (oldest out first).
    if (compiled.size >= COMPILED_CACHE_LIMIT) compiled.delete(compiled.keys().next().value!);
    compiled.set(key, template);
  }
  return template.render(messages, options);
}

/** What applyChatTemplate needs from a tokenizer (Tokenizer has all of it). */
export interface ChatTokenizer {
  chatTemplate?: string;
  bosToken?: string;
  eosToken?: string;
  unkToken?: string;
  padToken?: string;
}

/** The tokenizer's template (or ChatML) with its special tokens filled in. */
export function applyChatTemplate(
  tokenizer: ChatTokenizer,
  messages: readonly ChatMessage[],
  options: Omit<ChatTemplateOptions, "bosToken" | "eosToken" | "unkToken" | "padToken"> = {},
): string {
  return renderChatTemplate(tokenizer.chatTemplate, messages, {
    ...options,
    bosToken: tokenizer.bosToken,
    eosToken: tokenizer.eosToken,
    unkToken: tokenizer.unkToken,
    padToken: tokenizer.padToken,
  });
}

/**
 * Prompt ids for a conversation, as transformers' apply_chat_template(tokenize=True): templates
 * write BOS themselves, so the rendered text is encoded without adding special tokens again.
 */
export function encodeChat(
  tokenizer: ChatTokenizer & { encode(text: string, options?: { addSpecialTokens?: boolean }): number[] },
  messages: readonly ChatMessage[],
  options: Omit<ChatTemplateOptions, "bosToken" | "eosToken" | "unkToken" | "padToken"> = {},
): number[] {
  return tokenizer.encode(applyChatTemplate(tokenizer, messages, options), { addSpecialTokens: false });
}
