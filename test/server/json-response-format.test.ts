// response_format through a real server and the official `openai` client:
// constrained decoding in the engine process makes the output valid JSON
// (json_object) or valid JSON that follows the schema (json_schema). The
// embedded SmolLM2 writes real JSON; a tiny model with random weights writes
// noise, so whatever structure its output has comes from the constraint.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import OpenAI from "openai";
import type { RunningServer } from "../../src/server/server";
import { grammarFor, isValidPrefix } from "../../src/text/json-constraint";
import { tinyModel } from "../support/models";
import { startTestServer } from "../support/server";
import { validate } from "../text/json-schema-check";

const LONG = 120_000;
let smol: RunningServer;
let tiny: RunningServer;
let smolClient: OpenAI;
let tinyClient: OpenAI;

beforeAll(async () => {
  [smol, tiny] = await Promise.all([startTestServer(), startTestServer({ model: tinyModel("tiny-llama-f16") })]);
  smolClient = new OpenAI({ baseURL: `${smol.url}/v1`, apiKey: "unused", maxRetries: 0, timeout: LONG });
  tinyClient = new OpenAI({ baseURL: `${tiny.url}/v1`, apiKey: "unused", maxRetries: 0, timeout: LONG });
}, LONG);

afterAll(async () => {
  await Promise.all([smol?.stop(), tiny?.stop()]);
});

const isObject = (v: unknown) => typeof v === "object" && v !== null && !Array.isArray(v);

/** A schema whose every value is bounded (lengths, items, enums): a random model must finish it. */
const PERSON = {
  type: "object",
  properties: {
    name: { type: "string", maxLength: 6 },
    age: { type: "integer" },
    member: { type: "boolean" },
    color: { enum: ["red", "green", "blue"] },
    scores: { type: "array", items: { type: "number" }, maxItems: 3 },
    pet: { anyOf: [{ type: "null" }, { type: "string", maxLength: 4 }] },
  },
  required: ["name", "age", "member", "color", "scores", "pet"],
  additionalProperties: false,
} as const;

const personFormat = {
  type: "json_schema" as const,
  json_schema: { name: "person", strict: true, schema: PERSON as unknown as Record<string, unknown> },
};

/** A whole answer that must end by itself (finish_reason "stop"): its text, parsed. */
async function finishedJson(client: OpenAI, params: OpenAI.ChatCompletionCreateParamsNonStreaming) {
  const r = await client.chat.completions.create(params);
  const choice = r.choices[0]!;
  expect(choice.finish_reason).toBe("stop");
  return { text: choice.message.content!, value: JSON.parse(choice.message.content!) as unknown };
}

async function streamed(client: OpenAI, params: OpenAI.ChatCompletionCreateParamsStreaming) {
  const stream = await client.chat.completions.create(params);
  let text = "";
  let finish: string | null = null;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta.content ?? "";
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  return { text, finish };
}

describe("SmolLM2 (real weights)", () => {
  const ask = [{ role: "user" as const, content: "Describe a cat as JSON with its name and age." }];
  const catSchema = {
    type: "object",
    properties: { name: { type: "string", maxLength: 20 }, age: { type: "integer" } },
    required: ["name", "age"],
    additionalProperties: false,
  };
  const jsonObjectRequest = {
    model: "m",
    messages: ask,
    response_format: { type: "json_object" as const },
    temperature: 0,
    max_tokens: 60,
  };
  let answer = "";

  test(
    "json_object: the answer parses to an object and ends with stop",
    async () => {
      const { text, value } = await finishedJson(smolClient, jsonObjectRequest);
      answer = text;
      expect(isObject(value)).toBe(true);
    },
    LONG,
  );

  test(
    "json_object, streamed: the chunks concatenate to the same object",
    async () => {
      const { text, finish } = await streamed(smolClient, { ...jsonObjectRequest, stream: true });
      expect(finish).toBe("stop");
      expect(text).toBe(answer);
      expect(isObject(JSON.parse(text))).toBe(true);
    },
    LONG,
  );

  for (const [temperature, seed] of [
    [0, undefined],
    [0.8, 7],
  ] as const) {
    test(
      `json_schema at temperature ${temperature}: the answer follows the schema`,
      async () => {
        const { value } = await finishedJson(smolClient, {
          model: "m",
          messages: ask,
          response_format: { type: "json_schema", json_schema: { name: "cat", schema: catSchema } },
          temperature,
          seed,
          max_tokens: 40,
        });
        expect(validate(value, catSchema)).toEqual([]);
      },
      LONG,
    );
  }
});

describe("a tiny model with random weights", () => {
  const ask = [{ role: "user" as const, content: "Give me a person." }];
  // Left alone, the random model almost never picks a closing quote, so its strings run to max_tokens.
  // A bias towards `"` and `}` makes it end in a few dozen tokens; which of them may come where,
  // and so the validity of the result, is still the constraint's doing.
  const closers = () => {
    const t = tiny.session.tokenizer;
    return { [String(t.tokenToId('"'))]: 10, [String(t.tokenToId("}"))]: 5 };
  };

  test("without response_format the output is not JSON (the control)", async () => {
    const r = await tinyClient.chat.completions.create({ model: "m", messages: ask, temperature: 0, max_tokens: 30 });
    expect(() => JSON.parse(r.choices[0]!.message.content!)).toThrow();
  });

  for (const [temperature, seed] of [
    [0, undefined],
    [1, 1],
    [1, 2],
    [1, 3],
  ] as const) {
    test(`json_object at temperature ${temperature}${seed ? ` (seed ${seed})` : ""}: parses to an object`, async () => {
      const { value } = await finishedJson(tinyClient, {
        model: "m",
        messages: ask,
        response_format: { type: "json_object" },
        temperature,
        seed,
        max_tokens: 300,
        logit_bias: closers(),
      });
      expect(isObject(value)).toBe(true);
    });

    test(`json_schema at temperature ${temperature}${seed ? ` (seed ${seed})` : ""}: parses and validates`, async () => {
      const { value } = await finishedJson(tinyClient, {
        model: "m",
        messages: ask,
        response_format: personFormat,
        temperature,
        seed,
        max_tokens: 600,
      });
      expect(validate(value, PERSON)).toEqual([]);
    });
  }

  test("json_schema, streamed: the chunks concatenate to a valid document", async () => {
    for (const [temperature, seed] of [
      [0, undefined],
      [1, 5],
    ] as const) {
      const { text, finish } = await streamed(tinyClient, {
        model: "m",
        messages: ask,
        response_format: personFormat,
        temperature,
        seed,
        max_tokens: 600,
        stream: true,
      });
      expect(finish).toBe("stop");
      expect(validate(JSON.parse(text), PERSON)).toEqual([]);
    }
  });

  test("max_tokens before the end: finish_reason length, and the text is a valid prefix", async () => {
    const r = await tinyClient.chat.completions.create({
      model: "m",
      messages: ask,
      response_format: personFormat,
      temperature: 0,
      max_tokens: 5,
    });
    const choice = r.choices[0]!;
    expect(choice.finish_reason).toBe("length");
    expect(r.usage?.completion_tokens).toBe(5);
    const text = choice.message.content!;
    expect(() => JSON.parse(text)).toThrow();
    expect(isValidPrefix(grammarFor({ kind: "json_schema", schema: PERSON }), text)).toBe(true);
  });

  test("completions (extension): response_format applies to a raw prompt too", async () => {
    const r = await tinyClient.completions.create({
      model: "m",
      prompt: "A person:",
      temperature: 0,
      max_tokens: 600,
      // @ts-expect-error extension (as in vLLM)
      response_format: personFormat,
    });
    expect(r.choices[0]!.finish_reason).toBe("stop");
    expect(validate(JSON.parse(r.choices[0]!.text), PERSON)).toEqual([]);
  });

  test("a continued assistant message: the output goes on from it", async () => {
    const start = '{"name": "Bo';
    const r = await tinyClient.chat.completions.create({
      model: "m",
      messages: [...ask, { role: "assistant", content: start }],
      response_format: personFormat,
      temperature: 0,
      max_tokens: 600,
      // @ts-expect-error extension (as in vLLM)
      continue_final_message: true,
    });
    const value = JSON.parse(start + r.choices[0]!.message.content!);
    expect(validate(value, PERSON)).toEqual([]);
    expect(value.name).toStartWith("Bo");
  });

  test("constrained and plain requests in one batch: the plain one is unchanged", async () => {
    const plain = { model: "m", messages: ask, temperature: 0, max_tokens: 40 } as const;
    const alone = (await tinyClient.chat.completions.create(plain)).choices[0]!.message.content;
    const [together, constrained] = await Promise.all([
      tinyClient.chat.completions.create(plain),
      tinyClient.chat.completions.create({ ...plain, max_tokens: 600, response_format: personFormat }),
    ]);
    expect(together.choices[0]!.message.content).toBe(alone);
    expect(validate(JSON.parse(constrained.choices[0]!.message.content!), PERSON)).toEqual([]);
  });

  test("a malformed schema is a 400 naming the field", async () => {
    const e = await tinyClient.chat.completions
      .create({
        model: "m",
        messages: ask,
        response_format: { type: "json_schema", json_schema: { name: "x", schema: { type: "strnig" } } },
      })
      .catch((x) => x);
    expect(e).toBeInstanceOf(OpenAI.BadRequestError);
    expect((e as InstanceType<typeof OpenAI.BadRequestError>).param).toBe("response_format.json_schema.schema");
    expect((e as Error).message).toContain("unknown type");
  });
});
