// The JSON automaton behind response_format: valid and invalid prefixes,
// completion, the whitespace bound, the JSON Schema subset, and random walks
// through the automaton whose every finished output must parse and validate.
import { describe, expect, test } from "bun:test";
import {
  canEnd,
  grammarFor,
  initialState,
  isComplete,
  isValidPrefix,
  type JsonGrammar,
  MAX_WHITESPACE,
  SchemaError,
  step,
} from "../../src/text/json-constraint";
import { mulberry32 } from "../support/random";
import { validate } from "./json-schema-check";

const json = grammarFor({ kind: "json" });
const schema = (s: unknown) => grammarFor({ kind: "json_schema", schema: s });

describe("json_object", () => {
  const valid = [
    "",
    " ",
    "\n{",
    "{",
    '{"',
    '{"a',
    '{"a"',
    '{"a" :',
    '{"a": 1',
    '{"a": -0.5e+10',
    '{"a": [1, 2.5E-3, true, false, null, {"b": "c\\n\\u00e9\\"\\\\"}]',
    '{"a": "héllo wörld ✓ 😀"',
    '{"a": {}, "b": [], "c": [[]]',
    '{"\\u0041": "x"',
    '{"a": tr',
    '{"a": nul',
  ];
  for (const text of valid) {
    test(`valid prefix ${JSON.stringify(text)}`, () => {
      expect(isValidPrefix(json, text)).toBe(true);
    });
  }

  const invalid = [
    "[", // json_object: an object at the top level
    '"x"',
    "1",
    "{a",
    "{'a'",
    '{"a" 1',
    '{"a":: 1',
    '{"a": 01',
    '{"a": -a',
    '{"a": 1.}',
    '{"a": 1e}',
    '{"a": .5',
    '{"a": +1',
    '{"a": 1,}',
    '{"a": [1,]',
    '{"a": [,',
    '{"a": tru e',
    '{"a": True',
    '{"a": "\x01',
    '{"a": "line\nbreak',
    '{"a": "\\x',
    '{"a": "\\u12G',
    '{"a": 1]',
    "{}}",
    "{} ",
    "{},",
    '{"a": 1}x',
    '{"a": NaN',
    '{"a": Infinity',
    '{"a": 1 2',
    '{"a" "b"',
    '{,"a": 1',
  ];
  for (const text of invalid) {
    test(`invalid prefix ${JSON.stringify(text)}`, () => {
      expect(isValidPrefix(json, text)).toBe(false);
    });
  }

  test("completion: a closed top-level object, nothing after it", () => {
    expect(isComplete(json, "{}")).toBe(true);
    expect(isComplete(json, ' {"a": [1, {"b": null}]}')).toBe(true);
    expect(isComplete(json, '{"a": 1')).toBe(false);
    expect(isComplete(json, '{"a": "}"')).toBe(false);
    expect(isComplete(json, "")).toBe(false);
    const done = [..."{}"].reduce(
      (f, ch) => step(f!, ch.charCodeAt(0)),
      initialState(json.root) as ReturnType<typeof step>,
    );
    for (let b = 0; b < 256; b++) expect(step(done!, b)).toBeNull();
  });

  test("strings: UTF-8 must be well formed", () => {
    const bytes = (prefix: string, extra: number[]) => {
      let f = [...new TextEncoder().encode(prefix)].reduce<ReturnType<typeof step>>(
        (s, b) => (s ? step(s, b) : null),
        initialState(json.root),
      );
      for (const b of extra) f = f ? step(f, b) : null;
      return f;
    };
    expect(bytes('{"a": "', [0xc3, 0xa9, 0x22])).not.toBeNull(); // é
    expect(bytes('{"a": "', [0xa9])).toBeNull(); // a lone continuation byte
    expect(bytes('{"a": "', [0xc3, 0x22])).toBeNull(); // a character cut short
    expect(bytes('{"a": "', [0xff])).toBeNull();
    expect(bytes('{"a": "', [0xf0, 0x9f, 0x98, 0x80, 0x22])).not.toBeNull(); // 😀
  });

  test(`whitespace: at most ${MAX_WHITESPACE} in a row outside strings, any amount inside`, () => {
    const ws = (n: number) => " ".repeat(n);
    expect(isValidPrefix(json, `${ws(MAX_WHITESPACE)}{`)).toBe(true);
    expect(isValidPrefix(json, `${ws(MAX_WHITESPACE + 1)}`)).toBe(false);
    expect(isValidPrefix(json, `{${ws(MAX_WHITESPACE)}"a"${ws(MAX_WHITESPACE)}:${ws(MAX_WHITESPACE)}1`)).toBe(true);
    expect(isValidPrefix(json, `{"a":${ws(MAX_WHITESPACE + 1)}`)).toBe(false);
    expect(isValidPrefix(json, `{"a": [${"\n".repeat(MAX_WHITESPACE + 1)}`)).toBe(false);
    expect(isValidPrefix(json, `{"a": "${ws(1000)}`)).toBe(true);
    // Pretty-printed output at usual depths fits.
    const pretty = JSON.stringify({ a: { b: { c: [1, { d: "x" }] } } }, null, 2);
    expect(isComplete(json, pretty)).toBe(true);
  });

  test("numbers are bounded (16 digits, 16 decimals, 2 exponent digits: never Infinity)", () => {
    expect(isComplete(json, `{"a": ${"9".repeat(16)}}`)).toBe(true);
    expect(isValidPrefix(json, `{"a": ${"9".repeat(17)}`)).toBe(false);
    expect(isComplete(json, `{"a": -0.${"1".repeat(16)}E+99}`)).toBe(true);
    expect(isValidPrefix(json, `{"a": 0.${"1".repeat(17)}`)).toBe(false);
    expect(isValidPrefix(json, '{"a": 1e308')).toBe(false);
  });
});

describe("json_schema", () => {
  const person = schema({
    type: "object",
    properties: {
      name: { type: "string", maxLength: 5 },
      age: { type: "integer" },
      tags: { type: "array", items: { type: "string" }, maxItems: 2 },
      mood: { enum: ["happy", "sad", 3, null] },
    },
    required: ["name", "age"],
    additionalProperties: false,
  });

  test("required keys before the end, no other keys, no repeats", () => {
    expect(isValidPrefix(person, '{"name": "Al"}')).toBe(false);
    expect(isComplete(person, '{"name": "Al", "age": 3}')).toBe(true);
    expect(isComplete(person, '{"age": 3, "name": "Al"}')).toBe(true); // any order
    expect(isValidPrefix(person, '{"nick')).toBe(false);
    expect(isValidPrefix(person, '{"name": "Al", "name"')).toBe(false);
    expect(isValidPrefix(person, '{"na')).toBe(true);
    expect(isValidPrefix(person, "{}")).toBe(false);
  });

  test("all keys used: no comma may follow", () => {
    const full = '{"name": "Al", "age": 3, "tags": [], "mood": null';
    expect(isValidPrefix(person, full)).toBe(true);
    expect(isValidPrefix(person, `${full},`)).toBe(false);
    expect(isComplete(person, `${full}}`)).toBe(true);
  });

  test("types of values: integer, string lengths, array lengths, enum", () => {
    expect(isValidPrefix(person, '{"age": 1.5')).toBe(false);
    expect(isValidPrefix(person, '{"age": 1e3')).toBe(false);
    expect(isValidPrefix(person, '{"age": "3"')).toBe(false);
    expect(isValidPrefix(person, '{"name": "Alice"')).toBe(true);
    expect(isValidPrefix(person, '{"name": "Alicia"')).toBe(false);
    expect(isValidPrefix(person, '{"name": "\\u00e9\\n\\"ab"')).toBe(true); // escapes count as one character
    expect(isValidPrefix(person, '{"tags": ["a", "b"]')).toBe(true);
    expect(isValidPrefix(person, '{"tags": ["a", "b",')).toBe(false);
    expect(isValidPrefix(person, '{"mood": "happy"')).toBe(true);
    expect(isValidPrefix(person, '{"mood": "hap"')).toBe(false);
    expect(isValidPrefix(person, '{"mood": 3')).toBe(true);
    expect(isValidPrefix(person, '{"mood": 33')).toBe(false);
    expect(isValidPrefix(person, '{"mood": true')).toBe(false);
  });

  test("top-level values of any type; a number may end or go on", () => {
    const n = schema({ type: "number" });
    expect(isComplete(n, "12")).toBe(true);
    expect(isValidPrefix(n, "123.5")).toBe(true);
    const f = step(step(initialState(n.root), 0x31)!, 0x32)!;
    expect(canEnd(f)).toBe(true);
    expect(step(f, 0x33)).not.toBeNull();
    expect(isComplete(schema({ type: "string", minLength: 2 }), '"a"')).toBe(false);
    expect(isComplete(schema({ type: "string", minLength: 2 }), '"ab"')).toBe(true);
    expect(isComplete(schema({ type: "boolean" }), "false")).toBe(true);
    expect(isComplete(schema({ type: "null" }), "null")).toBe(true);
    expect(isValidPrefix(schema({ type: "array", minItems: 1 }), "[]")).toBe(false);
    expect(isComplete(schema({ const: { a: [1, "x"] } }), '{"a":[1,"x"]}')).toBe(true);
    expect(isValidPrefix(schema({ const: { a: [1, "x"] } }), '{"a": [')).toBe(false); // const: compact JSON
  });

  test("anyOf and type lists of simple types", () => {
    const s = schema({ anyOf: [{ type: "string", maxLength: 2 }, { type: "null" }, { type: "integer" }] });
    expect(isComplete(s, '"ab"')).toBe(true);
    expect(isValidPrefix(s, '"abc')).toBe(false);
    expect(isComplete(s, "null")).toBe(true);
    expect(isComplete(s, "42")).toBe(true);
    expect(isValidPrefix(s, "true")).toBe(false);
    expect(isValidPrefix(s, "4.2")).toBe(false);
    const t = schema({ type: ["boolean", "array"], items: { type: "integer" } });
    expect(isComplete(t, "true")).toBe(true);
    expect(isComplete(t, "[1, 2]")).toBe(true);
    expect(isValidPrefix(t, '["')).toBe(false);
  });

  test("tuples (prefixItems) and nested objects", () => {
    const s = schema({
      type: "array",
      prefixItems: [{ type: "string" }, { type: "object", properties: { x: { type: "number" } }, required: ["x"] }],
      items: false,
    });
    expect(isComplete(s, '["a", {"x": 1}]')).toBe(true);
    expect(isValidPrefix(s, '["a", {"x": 1},')).toBe(false);
    expect(isValidPrefix(s, "[1")).toBe(false);
    // Declared and other keys: another key may hold anything, a declared one its schema.
    expect(isComplete(s, '["a", {"x": 1, "y": [true]}]')).toBe(true);
    expect(isValidPrefix(s, '["a", {"x": "1"')).toBe(false);
    expect(isValidPrefix(s, '["a", {"x\\u0041": 1')).toBe(false); // other keys: no escapes
  });

  test("local $ref, recursion included; a reference cycle with no schema is an error", () => {
    const tree = schema({
      $defs: {
        node: {
          type: "object",
          properties: { v: { type: "integer" }, kids: { type: "array", items: { $ref: "#/$defs/node" } } },
          required: ["v"],
          additionalProperties: false,
        },
      },
      $ref: "#/$defs/node",
    });
    expect(isComplete(tree, '{"v": 1, "kids": [{"v": 2}, {"v": 3, "kids": [{"v": 4}]}]}')).toBe(true);
    expect(isValidPrefix(tree, '{"v": 1, "kids": [{"w"')).toBe(false);
    const list = schema({
      $defs: {
        item: {
          type: "object",
          properties: { v: { type: "string" }, next: { anyOf: [{ $ref: "#/$defs/item" }, { type: "null" }] } },
          required: ["v", "next"],
          additionalProperties: false,
        },
      },
      $ref: "#/$defs/item",
    });
    expect(isComplete(list, '{"v": "a", "next": {"v": "b", "next": null}}')).toBe(true);
    expect(isValidPrefix(list, '{"v": "a", "next": {"v": "b", "next": 1')).toBe(false);
    expect(list.notes).toEqual([]);
    expect(() => schema({ $defs: { a: { $ref: "#/$defs/b" }, b: { $ref: "#/$defs/a" } }, $ref: "#/$defs/a" })).toThrow(
      SchemaError,
    );
  });

  test("parts that allow no value are never started (no dead ends)", () => {
    const s = schema({
      type: "object",
      properties: { a: false, b: { type: "integer" } },
      additionalProperties: { enum: [] },
    });
    expect(isValidPrefix(s, '{"a"')).toBe(false);
    expect(isValidPrefix(s, '{"c"')).toBe(false);
    expect(isComplete(s, '{"b": 1}')).toBe(true);
    expect(isValidPrefix(s, '{"b": 1,')).toBe(false); // no usable key is left
    const t = schema({ type: "array", prefixItems: [{ type: "null" }, { $ref: "#/$defs/no" }], $defs: { no: false } });
    expect(isComplete(t, "[null]")).toBe(true);
    expect(isValidPrefix(t, "[null,")).toBe(false);
    expect(() => schema({ type: "object", properties: { a: false }, required: ["a"] })).toThrow(SchemaError);
  });

  test("keywords outside the subset are relaxed and noted; malformed schemas throw", () => {
    const g = schema({ type: "string", pattern: "^a+$", format: "email" });
    expect(isComplete(g, '"bbb"')).toBe(true);
    expect(g.notes.join("\n")).toContain("pattern");
    const all = schema({ allOf: [{ type: "string" }, { type: "number" }] });
    expect(isComplete(all, "[1]")).toBe(true);
    expect(all.notes.join("\n")).toContain("allOf");
    expect(() => schema({ type: "strnig" })).toThrow(SchemaError);
    expect(() => schema({ $ref: "#/$defs/missing" })).toThrow(SchemaError);
    expect(() => schema({ type: "array", maxItems: -1 })).toThrow(SchemaError);
    expect(() => schema("string")).toThrow(SchemaError);
  });
});

// ---- random walks: whatever the automaton lets through must parse and validate ----

/** Bytes the automaton allows next, printable ASCII and a few UTF-8 leads (to keep walks readable). */
const CANDIDATE_BYTES = [
  ...Array.from({ length: 95 }, (_, i) => 0x20 + i),
  0x0a,
  0x09,
  0xc3,
  0xa9,
  0xe2,
  0x9c,
  0x93,
  0x80,
];
const CLOSERS = new Set([...'"}]0e'].map((c) => c.charCodeAt(0)));

/** A random output of the grammar: random allowed bytes, steering to the end after `soft` bytes. */
function randomWalk(grammar: JsonGrammar, random: () => number, soft: number): string | null {
  let f = initialState(grammar.root);
  const out: number[] = [];
  for (let n = 0; n < 4000; n++) {
    const options: number[] = [];
    for (const b of CANDIDATE_BYTES) if (step(f, b)) options.push(b);
    if (canEnd(f) && (options.length === 0 || n > soft || random() < 0.05))
      return new TextDecoder("utf-8", { fatal: true }).decode(Uint8Array.from(out));
    if (options.length === 0) return null;
    let pool = options;
    if (n > soft) {
      const closing = options.filter((b) => CLOSERS.has(b));
      if (closing.length > 0 && random() < 0.7) pool = closing;
    }
    const b = pool[Math.floor(random() * pool.length)] as number;
    out.push(b);
    f = step(f, b)!;
  }
  return null;
}

describe("random walks through the automaton", () => {
  const schemas: Array<[string, unknown]> = [
    ["json_object", null],
    [
      "person",
      {
        type: "object",
        properties: {
          name: { type: "string", minLength: 1, maxLength: 8 },
          age: { type: "integer" },
          score: { type: "number" },
          ok: { type: "boolean" },
          tags: { type: "array", items: { enum: ["a", "b\n", 1, null, { x: 1 }] }, minItems: 1, maxItems: 3 },
          pet: {
            anyOf: [{ type: "null" }, { type: "string", maxLength: 3 }, { type: "array", items: { type: "integer" } }],
          },
          'we"ird/key': { const: "é" },
        },
        required: ["name", "age", "tags"],
        additionalProperties: false,
      },
    ],
    [
      "open object with typed extras",
      {
        type: "object",
        // Nothing required: a random walk could hardly spell a required key among free ones.
        properties: { id: { type: "integer" } },
        additionalProperties: { type: "array", items: { type: "boolean" }, maxItems: 2 },
      },
    ],
    ["tuple", { type: "array", prefixItems: [{ type: "string" }, { type: "number" }], items: { type: "null" } }],
  ];
  for (const [name, s] of schemas) {
    test(`${name}: every finished walk parses${s ? " and validates" : " to an object"}`, () => {
      const grammar = s === null ? json : schema(s);
      const random = mulberry32(name.length * 7919);
      let finished = 0;
      for (let i = 0; i < 300; i++) {
        const text = randomWalk(grammar, random, 20 + (i % 60));
        if (text === null) continue;
        finished++;
        const value = JSON.parse(text);
        if (s === null) expect(typeof value === "object" && value !== null && !Array.isArray(value)).toBe(true);
        else expect(validate(value, s as Record<string, unknown>)).toEqual([]);
      }
      expect(finished).toBeGreaterThan(250);
    });
  }

  test("JSON.stringify output of random values is accepted, compact and pretty", () => {
    const random = mulberry32(42);
    const value = (depth: number): unknown => {
      const r = random();
      if (depth > 3 || r < 0.3) {
        const k = Math.floor(random() * 5);
        return [null, true, Math.round((random() - 0.5) * 1e6) / 100, 's"\\\n\tü✓😀', -7][k];
      }
      if (r < 0.65) return Array.from({ length: Math.floor(random() * 4) }, () => value(depth + 1));
      return Object.fromEntries(
        Array.from({ length: Math.floor(random() * 4) }, (_, i) => [`k${i}"`, value(depth + 1)]),
      );
    };
    for (let i = 0; i < 200; i++) {
      const v = { root: value(0) };
      expect(isComplete(json, JSON.stringify(v))).toBe(true);
      expect(isComplete(json, JSON.stringify(v, null, 2))).toBe(true);
    }
  });
});
