import { afterAll, describe, expect, test } from "bun:test";
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GgufError, GgufValueType, ggufNumber, ggufString, ggufStringArray, readGguf } from "../../src/formats/gguf.ts";
import { FIXTURES, fixture, SMOLLM2_GGUF } from "./helpers.ts";

// Expected values come from llama.cpp's gguf-py reader (scripts/fixtures/text/gen_gguf_info.py).
interface MetadataEntry {
  type: number;
  value?: unknown;
  elementType?: number;
  length?: number;
  head?: unknown[];
}
interface FileInfo {
  version: number;
  alignment: number;
  dataOffset: number;
  metadata: Record<string, MetadataEntry>;
  tensors: { name: string; dims: number[]; type: number; typeName: string; fileOffset: number; byteSize: number }[];
}
const info = fixture<{ files: Record<string, FileInfo> }>("gguf-info.json");

function expectMatchesReference(path: string, reference: FileInfo) {
  const gguf = readGguf(path);
  expect(gguf.version).toBe(reference.version);
  expect(gguf.alignment).toBe(reference.alignment);
  expect(gguf.dataOffset).toBe(reference.dataOffset);
  expect([...gguf.metadata.keys()]).toEqual(Object.keys(reference.metadata));
  for (const [key, entry] of Object.entries(reference.metadata)) {
    const value = gguf.metadata.get(key);
    expect(gguf.types.get(key)).toBe(entry.type);
    if (entry.type === GgufValueType.ARRAY) {
      expect(gguf.arrayTypes.get(key)).toBe(entry.elementType!);
      expect(Array.isArray(value)).toBe(true);
      const array = value as unknown[];
      expect(array.length).toBe(entry.length!);
      const head = array.slice(0, 5);
      if (entry.elementType === GgufValueType.FLOAT32) {
        head.forEach((item, i) => {
          expect(item as number).toBeCloseTo(entry.head![i] as number, 6);
        });
      } else {
        expect(head).toEqual(entry.head!);
      }
    } else if (entry.type === GgufValueType.UINT64 || entry.type === GgufValueType.INT64) {
      expect(String(value)).toBe(entry.value as string);
    } else if (entry.type === GgufValueType.FLOAT32) {
      expect(value as number).toBeCloseTo(entry.value as number, 6);
    } else {
      expect(value as unknown).toEqual(entry.value);
    }
  }
  expect(
    gguf.tensors.map(({ name, dims, type, typeName, fileOffset, byteSize }) => ({
      name,
      dims,
      type,
      typeName,
      fileOffset,
      byteSize,
    })),
  ).toEqual(reference.tensors);
  return gguf;
}

describe("readGguf against gguf-py", () => {
  test("all value types (all-types.gguf written by gguf.GGUFWriter)", () => {
    const gguf = expectMatchesReference(join(FIXTURES, "all-types.gguf"), info.files["all-types.gguf"]!);
    // 2^53 + 2 is not a safe integer: it must come back exact, as a bigint.
    expect(gguf.metadata.get("t.u64")).toBe(9007199254740994n);
    expect(gguf.metadata.get("t.i64")).toBe(-1099511627776);
    expect(gguf.tensors.find((t) => t.name === "weight.f32")!.shape).toEqual([2, 3]);
  });

  test("SmolLM2 header, metadata and tensor table", () => {
    const gguf = expectMatchesReference(SMOLLM2_GGUF, info.files["SmolLM2-135M-Instruct.Q4_1.gguf"]!);
    expect(ggufString(gguf.metadata, "general.architecture")).toBe("llama");
    expect(ggufNumber(gguf.metadata, "llama.block_count")).toBe(30);
    expect(ggufStringArray(gguf.metadata, "tokenizer.ggml.tokens")).toHaveLength(49152);
    expect(() => ggufNumber(gguf.metadata, "general.architecture")).toThrow(/is a string, expected number/);
    // The last tensor ends exactly at the end of the file.
    const end = Math.max(...gguf.tensors.map((t) => t.fileOffset + t.byteSize!));
    expect(end).toBe(gguf.fileSize);
  });

  test("reads the 100 MB file's header (49K tokens, 49K merges) quickly", () => {
    const start = performance.now();
    readGguf(SMOLLM2_GGUF);
    expect(performance.now() - start).toBeLessThan(1000);
  });
});

describe("readGguf errors name the file and the problem", () => {
  const dir = mkdtempSync(join(tmpdir(), "pensieve-gguf-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  function prefixOfSmolLM2(bytes: number): Uint8Array {
    const buffer = new Uint8Array(bytes);
    const fd = openSync(SMOLLM2_GGUF, "r");
    readSync(fd, buffer, 0, bytes, 0);
    closeSync(fd);
    return buffer;
  }

  function expectGgufError(path: string, pattern: RegExp) {
    let caught: unknown;
    try {
      readGguf(path);
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(GgufError);
    const message = (caught as Error).message;
    expect(message.startsWith(`${path}: `)).toBe(true);
    expect(message).toMatch(pattern);
  }

  test("not a GGUF file", () => {
    const path = join(dir, "model.safetensors");
    writeFileSync(path, '{"__metadata__": {}}');
    expectGgufError(path, /not a GGUF file \(starts with "\{"__", expected "GGUF"\)/);
  });

  test("empty file", () => {
    const path = join(dir, "empty.gguf");
    writeFileSync(path, "");
    expectGgufError(path, /not a GGUF file/);
  });

  test("missing file", () => {
    expectGgufError(join(dir, "nope.gguf"), /cannot open/);
  });

  test("unsupported version", () => {
    const bytes = prefixOfSmolLM2(4096);
    new DataView(bytes.buffer).setUint32(4, 99, true);
    const path = join(dir, "v99.gguf");
    writeFileSync(path, bytes);
    expectGgufError(path, /unsupported GGUF version 99/);
  });

  test("big-endian file", () => {
    const bytes = prefixOfSmolLM2(4096);
    new DataView(bytes.buffer).setUint32(4, 3, false);
    const path = join(dir, "big-endian.gguf");
    writeFileSync(path, bytes);
    expectGgufError(path, /big-endian GGUF/);
  });

  test("truncated inside the header", () => {
    const path = join(dir, "cut-header.gguf");
    writeFileSync(path, prefixOfSmolLM2(10));
    expectGgufError(path, /truncated file/);
  });

  test("truncated inside the metadata (token list)", () => {
    const path = join(dir, "cut-metadata.gguf");
    writeFileSync(path, prefixOfSmolLM2(500_000));
    expectGgufError(path, /truncated file: .*tokenizer\.ggml\.tokens/);
  });

  test("truncated inside the tensor data", () => {
    const path = join(dir, "cut-data.gguf");
    writeFileSync(path, prefixOfSmolLM2(4_000_000));
    expectGgufError(path, /truncated file: tensor token_embd\.weight needs bytes up to \d+, file has 4000000/);
    // Metadata-only readers can opt out of the data check.
    expect(readGguf(path, { allowMissingData: true }).tensors).toHaveLength(272);
  });
});
