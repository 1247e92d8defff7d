// What a model's chat template does with system turns and tools, probed once
// per template by rendering marker conversations: some templates drop system
// turns (Phi-3's April 2024 template), some accept them only first. The APIs
// move system text where it would be lost, and pick the tool format.
import { applyChatTemplate, type ChatMessage, type Tokenizer } from "../text";
import { TOOL_CALL_OPEN, templateSupportsTools } from "./tools";

export interface TemplateTraits {
  /** A leading system turn shows up in the prompt. */
  leadingSystem: boolean;
  /** System turns after user/assistant turns show up too. */
  systemAnywhere: boolean;
  /** The template renders `tools`. */
  tools: boolean;
  /** The template's own tool format is the <tool_call> JSON block (Qwen, Hermes). */
  toolCallTags: boolean;
}

const PROBE = "pensieve-probe-7f3a9c";
const traitsByTemplate = new Map<string, TemplateTraits>();

function rendersProbe(tokenizer: Tokenizer, messages: ChatMessage[]): boolean {
  try {
    return applyChatTemplate(tokenizer, messages, { addGenerationPrompt: true }).includes(PROBE);
  } catch {
    return false;
  }
}

/** The template's traits (probed once per template source). */
export function templateTraits(tokenizer: Tokenizer): TemplateTraits {
  const key = tokenizer.chatTemplate ?? "";
  let traits = traitsByTemplate.get(key);
  if (!traits) {
    const leadingSystem = rendersProbe(tokenizer, [
      { role: "system", content: PROBE },
      { role: "user", content: "hi" },
    ]);
    const systemAnywhere =
      leadingSystem &&
      rendersProbe(tokenizer, [
        { role: "user", content: "hi" },
        { role: "system", content: PROBE },
      ]) &&
      rendersProbe(tokenizer, [
        { role: "user", content: "hi" },
        { role: "assistant", content: "hello" },
        { role: "system", content: PROBE },
        { role: "user", content: "go on" },
      ]);
    traits = {
      leadingSystem,
      systemAnywhere,
      tools: templateSupportsTools(tokenizer.chatTemplate),
      toolCallTags: tokenizer.chatTemplate?.includes(TOOL_CALL_OPEN) ?? false,
    };
    traitsByTemplate.set(key, traits);
  }
  return traits;
}
