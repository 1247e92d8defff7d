import { describe, expect, test } from "bun:test";
import {
  applyChatTemplate,
  CHATML_TEMPLATE,
  type ChatMessage,
  ChatTemplate,
  ChatTemplateError,
  encodeChat,
  renderChatTemplate,
  strftime,
} from "../../src/text/chat-template.ts";
import { fixture, phi3, smollm2 } from "./helpers.ts";

// References: Python Jinja2 driven by transformers (scripts/fixtures/text/gen_chat_templates.py).
interface TemplateCase {
  template: string;
  conversation: string;
  addGenerationPrompt: boolean;
  rendered: string;
  /** transformers' apply_chat_template(tokenize=True), Phi-3 only. */
  ids?: number[];
}
interface TemplatesFixture {
  conversations: Record<string, ChatMessage[]>;
  toolConversation: ChatMessage[];
  tools: unknown[];
  templates: Record<string, string>;
  specials: { generic: { bos_token: string; eos_token: string } };
  cases: TemplateCase[];
  narratorErrors: { template: string; error: string | null }[];
}
const templates = fixture<TemplatesFixture>("chat-templates.json");
const strftimeCases = fixture<{ cases: { date: number[]; format: string; text: string }[] }>("strftime.json").cases;

function render(c: TemplateCase): string {
  const messages = c.conversation === "tools" ? templates.toolConversation : templates.conversations[c.conversation]!;
  const options = { addGenerationPrompt: c.addGenerationPrompt };
  switch (c.template) {
    case "phi3-april":
      return applyChatTemplate(phi3("april"), messages, options);
    case "phi3-july":
      return applyChatTemplate(phi3("july"), messages, options);
    case "smollm2-gguf":
      return applyChatTemplate(smollm2(), messages, options);
    default: {
      const generic = templates.specials.generic;
      return renderChatTemplate(templates.templates[c.template], messages, {
        ...options,
        bosToken: generic.bos_token,
        eosToken: generic.eos_token,
        tools: c.conversation === "tools" ? templates.tools : undefined,
      });
    }
  }
}

describe("chat templates render byte-identically to Python Jinja2 (transformers)", () => {
  for (const c of templates.cases) {
    test(`${c.template} / ${c.conversation} / add_generation_prompt=${c.addGenerationPrompt}`, () => {
      expect(render(c)).toBe(c.rendered);
    });
  }

  for (const c of templates.cases.filter((c) => c.ids !== undefined)) {
    test(`prompt ids: ${c.template} / ${c.conversation} / add_generation_prompt=${c.addGenerationPrompt}`, () => {
      const tokenizer = phi3(c.template === "phi3-april" ? "april" : "july");
      const messages = templates.conversations[c.conversation]!;
      expect(encodeChat(tokenizer, messages, { addGenerationPrompt: c.addGenerationPrompt })).toEqual(c.ids!);
    });
  }

  test("the fixture's ChatML template is the fallback in use", () => {
    expect(templates.templates["chatml-fallback"]).toBe(CHATML_TEMPLATE);
    const noTemplate = { bosToken: "<s>", eosToken: "</s>" };
    expect(applyChatTemplate(noTemplate, [{ role: "user", content: "Hi" }], { addGenerationPrompt: true })).toBe(
      "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    );
  });

  test("the SmolLM2 template comes from the GGUF metadata", () => {
    expect(smollm2().chatTemplate).toBe(templates.templates["smollm2-gguf"]);
  });
});

describe("chat template errors", () => {
  for (const expected of templates.narratorErrors) {
    test(`raise_exception in ${expected.template}`, () => {
      const run = () =>
        renderChatTemplate(templates.templates[expected.template], [{ role: "narrator", content: "x" }], {
          bosToken: "<s>",
          eosToken: "</s>",
        });
      if (expected.error === null) {
        expect(run).not.toThrow();
        return;
      }
      let caught: unknown;
      try {
        run();
      } catch (error) {
        caught = error;
      }
      expect(caught).toBeInstanceOf(ChatTemplateError);
      expect((caught as ChatTemplateError).message).toBe(expected.error);
      expect((caught as ChatTemplateError).raisedByTemplate).toBe(true);
    });
  }

  test("a template with a syntax error", () => {
    expect(() => new ChatTemplate("{% for m in messages %}{{ m.content }}")).toThrow(ChatTemplateError);
  });

  test("a template that fails while rendering", () => {
    const template = new ChatTemplate("{{ messages[0].content.nope() }}");
    let caught: unknown;
    try {
      template.render([{ role: "user", content: "x" }]);
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(ChatTemplateError);
    expect((caught as ChatTemplateError).raisedByTemplate).toBe(false);
  });
});

describe("template variables", () => {
  test("tools is none unless given, bos/eos only when the tokenizer has them", () => {
    // (Printed through {% if %}: @huggingface/jinja prints booleans from variables as "true"/"false" where
    // Jinja2 prints "True"/"False"; real templates print strings.)
    const probe = new ChatTemplate(
      "{% for test in [tools is none, tools is defined, bos_token is defined, documents is none] %}" +
        "{% if test %}T{% else %}F{% endif %}{% endfor %} {{ eos_token }}",
    );
    expect(probe.render([], { eosToken: "</s>" })).toBe("TTFT </s>");
    expect(new ChatTemplate("{{ tools | length }}").render([], { tools: [{ a: 1 }, { b: 2 }] })).toBe("2");
  });

  test("extra variables are visible", () => {
    const probe = new ChatTemplate("{% if enable_thinking is false %}off{% endif %} {{ date_string }}");
    expect(probe.render([], { variables: { enable_thinking: false, date_string: "26 Jul 2024" } })).toBe(
      "off 26 Jul 2024",
    );
  });

  test("strftime_now uses the given clock", () => {
    const template = new ChatTemplate("{{ strftime_now('%d %b %Y') }}");
    expect(template.render([], { now: () => new Date(2024, 6, 9) })).toBe("09 Jul 2024");
  });

  for (const c of strftimeCases) {
    test(`strftime ${JSON.stringify(c.format)} on ${c.date.join("-")} matches Python`, () => {
      const [year, month, day, hours, minutes, seconds] = c.date as [number, number, number, number, number, number];
      expect(strftime(new Date(year, month - 1, day, hours, minutes, seconds), c.format)).toBe(c.text);
    });
  }
});
