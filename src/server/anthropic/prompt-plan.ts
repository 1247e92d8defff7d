// Anthropic request → prompt tokens.
//
// Layout: one leading system turn holds the client's system prompt and (for
// models whose template has no tool support) the tool descriptions, so the
// part that stays the same across the turns of a session comes first and the
// engine's prefix cache reuses it (this is what cache_control asks for).
//
// Templates differ in what they render: some drop system turns (Phi-3's April
// 2024 template), some accept them only first. Each template is probed once;
// where the system prompt would be lost it is moved into the first user turn,
// and system turns inside `messages` (Claude Code sends one) become user text.
//
// A final assistant turn is a prefill: the reply continues it. tool_choice
// "any"/"tool" is served the same way, by opening the tool call in the prompt.
import type { ChatMessage, Tokenizer } from "../../text";
import { type ApiError, badRequest } from "../errors";
import { encodePrompt, renderChat } from "../prompt";
import { type TemplateTraits, templateTraits } from "../template-traits";
import {
  renderToolCalls,
  renderToolResult,
  TOOL_CALL_OPEN,
  type ToolChoice,
  type ToolSpec,
  toolInstructions,
} from "../tools";
import type { ConversationRequest, ToolChoiceParam } from "./schema";

export interface PromptPlan {
  text: string;
  tokens: number[];
  /**
   * Text after the assistant header that the reply continues (the client's
   * prefill, the opening of a forced tool call). It is not part of the reply.
   */
  continuation: string;
  /** Tools the reply may call; empty when tool calls are not parsed. */
  toolNames: string[];
  /** The reply starts inside a tool call whose JSON object begins with this text. */
  forcedCallJson: string | null;
  /** Stop after the first call (disable_parallel_tool_use). */
  singleCall: boolean;
  /** How tools reach the model: its chat template, or Pensieve's documented format. */
  toolFormat: "template" | "documented";
}

type Block = Record<string, unknown> & { type: string };

function contentBlocks(content: unknown, at: string): Block[] {
  if (typeof content === "string") return [{ type: "text", text: content }];
  if (!Array.isArray(content)) throw badRequest(`${at}: expected a string or an array of content blocks`, at);
  return content.map((block, i) => {
    if (!block || typeof block !== "object" || Array.isArray(block))
      throw badRequest(`${at}.${i}: expected a content block object`, `${at}.${i}`);
    if (typeof (block as Block).type !== "string")
      throw badRequest(`${at}.${i}.type: expected a string`, `${at}.${i}.type`);
    return block as Block;
  });
}

function stringField(block: Block, key: string, at: string): string {
  const value = block[key];
  if (typeof value !== "string") throw badRequest(`${at}.${key}: expected a string`, `${at}.${key}`);
  return value;
}

/** Blocks with no meaning for a local model: thinking comes back from Anthropic's models only. */
const IGNORED_BLOCKS = new Set(["thinking", "redacted_thinking"]);

const IMAGE_PLACEHOLDER = "[image omitted: this model reads text only]";

function unsupported(block: Block, at: string): ApiError {
  if (block.type === "image" || block.type === "document")
    return badRequest(`${at}: ${block.type} blocks are not supported (this model reads text only)`, at);
  return badRequest(`${at}.type: unsupported content block type "${block.type}" here`, `${at}.type`);
}

/** Text blocks only (system prompts, system turns). */
function plainText(content: unknown, at: string): string {
  return contentBlocks(content, at)
    .map((block, i) => {
      if (block.type !== "text") throw unsupported(block, `${at}.${i}`);
      return stringField(block, "text", `${at}.${i}`);
    })
    .join("\n");
}

/**
 * A tool result's content: a string or blocks. Blocks the model cannot read
 * (an image from a Read of a picture, a tool reference) become a note, so an
 * agent session is not stuck on one result it can never resend differently.
 */
function toolResultText(content: unknown, at: string): string {
  if (content === undefined || content === null) return "";
  return contentBlocks(content, at)
    .map((block, i) => {
      if (block.type === "text") return stringField(block, "text", `${at}.${i}`);
      if (block.type === "image") return IMAGE_PLACEHOLDER;
      return `[${block.type} omitted]`;
    })
    .join("\n");
}

function systemText(system: unknown): string {
  if (system === undefined || system === null) return "";
  return plainText(system, "system");
}

/** tool_choice in the shared form; "none" stays separate (tools are then left out of the prompt). */
function toolChoiceOf(param: ToolChoiceParam | undefined, names: Set<string>): ToolChoice {
  if (!param) return { type: "auto" };
  switch (param.type) {
    case "auto":
      return { type: "auto" };
    case "none":
      return { type: "none" };
    case "any":
      return { type: "required" };
    case "tool":
      if (!param.name)
        throw badRequest('tool_choice.name: required when tool_choice.type is "tool"', "tool_choice.name");
      if (!names.has(param.name))
        throw badRequest(`tool_choice.name: no tool named "${param.name}" in tools`, "tool_choice.name");
      return { type: "tool", name: param.name };
    default:
      throw badRequest(
        `tool_choice.type: expected "auto", "any", "tool" or "none", got "${param.type}"`,
        "tool_choice.type",
      );
  }
}

interface ConvertedTurns {
  turns: ChatMessage[];
  /** The content of a final assistant turn (rendered as text), which the reply continues. */
  prefill: string | null;
}

interface AssistantCall {
  id: string;
  name: string;
  arguments: Record<string, unknown>;
}

/** A user turn: its text, and its tool results (as tool turns, or as documented blocks in the text). */
function userTurns(blocks: Block[], at: string, toolNames: Map<string, string>, templateTools: boolean): ChatMessage[] {
  const turns: ChatMessage[] = [];
  const texts: string[] = [];
  blocks.forEach((block, j) => {
    const where = `${at}.content.${j}`;
    if (block.type === "text") texts.push(stringField(block, "text", where));
    else if (block.type === "tool_result") {
      const id = stringField(block, "tool_use_id", where);
      const result = toolResultText(block.content, `${where}.content`);
      const isError = block.is_error === true;
      const name = toolNames.get(id) ?? null;
      if (templateTools)
        turns.push({
          role: "tool",
          tool_call_id: id,
          ...(name ? { name } : {}),
          content: isError ? `Error: ${result}` : result,
        });
      else texts.push(renderToolResult(name, result, isError));
    } else if (!IGNORED_BLOCKS.has(block.type)) throw unsupported(block, where);
  });
  if (texts.length > 0 || blocks.length === 0) turns.push({ role: "user", content: texts.join("\n") });
  return turns;
}

/** An assistant turn's text and tool calls. */
function assistantParts(blocks: Block[], at: string): { text: string; calls: AssistantCall[] } {
  const texts: string[] = [];
  const calls: AssistantCall[] = [];
  blocks.forEach((block, j) => {
    const where = `${at}.content.${j}`;
    if (block.type === "text") texts.push(stringField(block, "text", where));
    else if (block.type === "tool_use") {
      const input = block.input ?? {};
      if (typeof input !== "object" || input === null || Array.isArray(input))
        throw badRequest(`${where}.input: expected an object`, `${where}.input`);
      calls.push({
        id: stringField(block, "id", where),
        name: stringField(block, "name", where),
        arguments: input as Record<string, unknown>,
      });
    } else if (!IGNORED_BLOCKS.has(block.type)) throw unsupported(block, where);
  });
  return { text: texts.join("\n"), calls };
}

/** Anthropic messages → chat turns (tool calls and results in the template's or the documented form). */
function convertMessages(messages: ConversationRequest["messages"], templateTools: boolean): ConvertedTurns {
  // Results name their tool by the call's id: remember the names.
  const toolNames = new Map<string, string>();
  const turns: ChatMessage[] = [];
  let prefill: string | null = null;
  messages.forEach((message, i) => {
    const at = `messages.${i}`;
    if (message.role === "system") {
      turns.push({ role: "system", content: plainText(message.content, `${at}.content`) });
      return;
    }
    if (message.role !== "user" && message.role !== "assistant")
      throw badRequest(`${at}.role: expected "user", "assistant" or "system", got "${message.role}"`, `${at}.role`);
    const blocks = contentBlocks(message.content, `${at}.content`);
    if (message.role === "user") {
      turns.push(...userTurns(blocks, at, toolNames, templateTools));
      return;
    }
    const { text, calls } = assistantParts(blocks, at);
    for (const call of calls) toolNames.set(call.id, call.name);
    const documented = [text, renderToolCalls(calls)].filter(Boolean).join("\n");
    if (i === messages.length - 1) prefill = documented;
    else if (templateTools && calls.length > 0)
      turns.push({
        role: "assistant",
        content: text,
        tool_calls: calls.map((c) => ({
          id: c.id,
          type: "function",
          function: { name: c.name, arguments: c.arguments },
        })),
      });
    else turns.push({ role: "assistant", content: documented });
  });
  return { turns, prefill };
}

/** Joins neighbouring user turns (and system turns): many templates require alternation. */
function mergeNeighbours(turns: ChatMessage[]): ChatMessage[] {
  const out: ChatMessage[] = [];
  for (const turn of turns) {
    const last = out.at(-1);
    if (
      last &&
      last.role === turn.role &&
      (turn.role === "user" || turn.role === "system") &&
      typeof last.content === "string" &&
      typeof turn.content === "string"
    ) {
      last.content = `${last.content}\n\n${turn.content}`;
    } else out.push({ ...turn });
  }
  return out;
}

/** Moves system text where the template would drop it. */
function placeSystemTurns(turns: ChatMessage[], traits: TemplateTraits): ChatMessage[] {
  let out = turns;
  if (!traits.systemAnywhere) {
    out = out.map((turn, i) =>
      turn.role === "system" && (i > 0 || !traits.leadingSystem) ? { ...turn, role: "user" } : turn,
    );
  }
  out = mergeNeighbours(out);
  if (!traits.leadingSystem && out[0]?.role === "system") {
    const [system, ...rest] = out as [ChatMessage, ...ChatMessage[]];
    out =
      rest[0]?.role === "user"
        ? [{ ...rest[0], content: `${system.content}\n\n${rest[0].content}` }, ...rest.slice(1)]
        : [{ ...system, role: "user" }, ...rest];
  }
  return out;
}

/**
 * The prompt for a Messages (or count_tokens) request. With `contextLength`,
 * a prompt that cannot fit is a 400 (count_tokens passes null: it only counts).
 */
export function buildPrompt(
  request: ConversationRequest,
  tokenizer: Tokenizer,
  contextLength: number | null = null,
  modelId?: string,
): PromptPlan {
  const traits = templateTraits(tokenizer);
  const toolFormat = traits.tools ? "template" : "documented";
  const declared = request.tools ?? [];
  const names = new Set(declared.map((t) => t.name));
  const choice = toolChoiceOf(request.tool_choice, names);
  const toolsOn = declared.length > 0 && choice.type !== "none";
  // Deferred tools (Anthropic's tool search) are callable but not described up front.
  const specs: ToolSpec[] = declared
    .filter((t) => !t.defer_loading)
    .map((t) => ({
      name: t.name,
      description: t.description,
      inputSchema: t.input_schema ?? { type: "object", properties: {} },
    }));

  const leading = [systemText(request.system)];
  if (toolsOn && toolFormat === "documented") leading.push(toolInstructions(specs, choice));
  const system = leading.filter(Boolean).join("\n\n");
  const { turns, prefill } = convertMessages(request.messages, traits.tools);
  const chat = placeSystemTurns(system ? [{ role: "system", content: system }, ...turns] : turns, traits);
  const templateTools =
    toolsOn && toolFormat === "template"
      ? specs.map((t) => ({
          type: "function",
          function: { name: t.name, description: t.description ?? "", parameters: t.inputSchema },
        }))
      : undefined;

  let continuation = prefill ?? "";
  let forcedCallJson: string | null = null;
  const canForce = toolFormat === "documented" || traits.toolCallTags;
  if (toolsOn && canForce && (choice.type === "required" || choice.type === "tool")) {
    forcedCallJson = choice.type === "tool" ? `{"name": ${JSON.stringify(choice.name)}, "arguments": ` : '{"name": "';
    const gap = continuation && !continuation.endsWith("\n") ? "\n" : "";
    continuation = `${continuation}${gap}${TOOL_CALL_OPEN}\n${forcedCallJson}`;
  }

  const text = renderChat(tokenizer, chat, { tools: templateTools }) + continuation;
  const context = { tokenizer, contextLength, vocabSize: tokenizer.vocabSize, modelId };
  return {
    text,
    // The template already places BOS where the model wants it.
    tokens: encodePrompt(context, text, { addSpecialTokens: false, check: contextLength !== null }),
    continuation,
    toolNames: toolsOn ? [...names] : [],
    forcedCallJson,
    singleCall: request.tool_choice?.disable_parallel_tool_use === true,
    toolFormat,
  };
}
