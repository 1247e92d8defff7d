// GGUF metadata reader: header, key/values and tensor table, never the tensor data.
// Pure TypeScript (no MLX) so the server process can inspect model files cheaply.
// Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (little-endian only).
// Over 400 lines: one reader for the whole format (header, typed key/values, tensor table),
// which reads top to bottom.
import { closeSync, fstatSync, openSync, readSync } from "node:fs";

export enum GgufValueType {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
}

/**
 * A metadata value. 64-bit integers come back as numbers when they are safe integers,
 * as bigint otherwise. Arrays of arrays are allowed by the format and kept nested.
 */
export type GgufValue = number | bigint | boolean | string | GgufValue[];

export interface GgufTensorInfo {
  name: string;
  /** Dimensions as stored: ggml order, fastest-varying (row length) first. */
  dims: number[];
  /** Row-major shape (outermost first), the order MLX/numpy use: dims reversed. */
  shape: number[];
  /** ggml type id (see GGML_TYPES). */
  type: number;
  /** ggml type name, or "UNKNOWN_<id>". */
  typeName: string;
  /** Offset of the tensor data, relative to the start of the data section. */
  offset: number;
  /** Absolute byte offset of the tensor data in the file. */
  fileOffset: number;
  /** Bytes of tensor data, or undefined for a type this reader does not know. */
  byteSize: number | undefined;
}

export interface GgufInfo {
  path: string;
  version: number;
  /** Key/values in file order. */
  metadata: Map<string, GgufValue>;
  /** The declared type of each key; for arrays, the element type is in arrayTypes. */
  types: Map<string, GgufValueType>;
  arrayTypes: Map<string, GgufValueType>;
  tensors: GgufTensorInfo[];
  alignment: number;
  /** Absolute offset where the tensor data section starts. */
  dataOffset: number;
  fileSize: number;
}

/** Block geometry of ggml tensor types: elements per block, bytes per block. */
const GGML_TYPES: Readonly<Record<number, { name: string; blockSize: number; typeSize: number }>> = {
  0: { name: "F32", blockSize: 1, typeSize: 4 },
  1: { name: "F16", blockSize: 1, typeSize: 2 },
  2: { name: "Q4_0", blockSize: 32, typeSize: 18 },
  3: { name: "Q4_1", blockSize: 32, typeSize: 20 },
  6: { name: "Q5_0", blockSize: 32, typeSize: 22 },
  7: { name: "Q5_1", blockSize: 32, typeSize: 24 },
  8: { name: "Q8_0", blockSize: 32, typeSize: 34 },
  9: { name: "Q8_1", blockSize: 32, typeSize: 36 },
  10: { name: "Q2_K", blockSize: 256, typeSize: 84 },
  11: { name: "Q3_K", blockSize: 256, typeSize: 110 },
  12: { name: "Q4_K", blockSize: 256, typeSize: 144 },
  13: { name: "Q5_K", blockSize: 256, typeSize: 176 },
  14: { name: "Q6_K", blockSize: 256, typeSize: 210 },
  15: { name: "Q8_K", blockSize: 256, typeSize: 292 },
  16: { name: "IQ2_XXS", blockSize: 256, typeSize: 66 },
  17: { name: "IQ2_XS", blockSize: 256, typeSize: 74 },
  18: { name: "IQ3_XXS", blockSize: 256, typeSize: 98 },
  19: { name: "IQ1_S", blockSize: 256, typeSize: 50 },
  20: { name: "IQ4_NL", blockSize: 32, typeSize: 18 },
  21: { name: "IQ3_S", blockSize: 256, typeSize: 110 },
  22: { name: "IQ2_S", blockSize: 256, typeSize: 82 },
  23: { name: "IQ4_XS", blockSize: 256, typeSize: 136 },
  24: { name: "I8", blockSize: 1, typeSize: 1 },
  25: { name: "I16", blockSize: 1, typeSize: 2 },
  26: { name: "I32", blockSize: 1, typeSize: 4 },
  27: { name: "I64", blockSize: 1, typeSize: 8 },
  28: { name: "F64", blockSize: 1, typeSize: 8 },
  29: { name: "IQ1_M", blockSize: 256, typeSize: 56 },
  30: { name: "BF16", blockSize: 1, typeSize: 2 },
  34: { name: "TQ1_0", blockSize: 256, typeSize: 54 },
  35: { name: "TQ2_0", blockSize: 256, typeSize: 66 },
  39: { name: "MXFP4", blockSize: 32, typeSize: 17 },
};

const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian uint32
const SUPPORTED_VERSIONS = [2, 3];
const DEFAULT_ALIGNMENT = 32;
const CHUNK_BYTES = 1 << 20;

/** Bytes of the smallest encoding of one value of each type: bounds array counts before allocating. */
const MIN_VALUE_BYTES: Record<number, number> = {
  [GgufValueType.UINT8]: 1,
  [GgufValueType.INT8]: 1,
  [GgufValueType.UINT16]: 2,
  [GgufValueType.INT16]: 2,
  [GgufValueType.UINT32]: 4,
  [GgufValueType.INT32]: 4,
  [GgufValueType.FLOAT32]: 4,
  [GgufValueType.BOOL]: 1,
  [GgufValueType.STRING]: 8,
  [GgufValueType.ARRAY]: 12,
  [GgufValueType.UINT64]: 8,
  [GgufValueType.INT64]: 8,
  [GgufValueType.FLOAT64]: 8,
};

export class GgufError extends Error {
  override name = "GgufError";
}

/**
 * Sequential little-endian reader over a file descriptor, refilling a buffer in chunks
 * so only the header region of a multi-GB file is ever read.
 */
class ChunkedReader {
  private buffer = new Uint8Array(CHUNK_BYTES);
  private view = new DataView(this.buffer.buffer);
  private start = 0; // file offset of buffer[0]
  private end = 0; // valid bytes in buffer
  private cursor = 0; // read position within buffer
  private readonly utf8 = new TextDecoder("utf-8");

  constructor(
    private readonly fd: number,
    readonly fileSize: number,
    private readonly fail: (problem: string) => never,
  ) {}

  get position(): number {
    return this.start + this.cursor;
  }

  get remaining(): number {
    return this.fileSize - this.position;
  }

  /** Make `n` bytes available at the cursor, reading more of the file if needed. */
  private ensure(n: number, what: string): void {
    if (this.cursor + n <= this.end) return;
    if (n > this.remaining) {
      this.fail(`truncated file: needs ${n} bytes for ${what} at offset ${this.position}, only ${this.remaining} left`);
    }
    const kept = this.end - this.cursor;
    if (n > this.buffer.length) {
      const grown = new Uint8Array(Math.max(n, this.buffer.length * 2));
      grown.set(this.buffer.subarray(this.cursor, this.end));
      this.buffer = grown;
      this.view = new DataView(grown.buffer);
    } else {
      this.buffer.copyWithin(0, this.cursor, this.end);
    }
    this.start += this.cursor;
    this.cursor = 0;
    this.end = kept;
    while (this.end < n) {
      const want = Math.min(this.buffer.length - this.end, this.fileSize - (this.start + this.end));
      const got = readSync(this.fd, this.buffer, this.end, want, this.start + this.end);
      if (got <= 0) this.fail(`truncated file: read stopped at offset ${this.start + this.end} while reading ${what}`);
      this.end += got;
    }
  }

  u8(what: string): number {
    this.ensure(1, what);
    return this.view.getUint8(this.cursor++);
  }

  i8(what: string): number {
    this.ensure(1, what);
    return this.view.getInt8(this.cursor++);
  }

  u16(what: string): number {
    this.ensure(2, what);
    const value = this.view.getUint16(this.cursor, true);
    this.cursor += 2;
    return value;
  }

  i16(what: string): number {
    this.ensure(2, what);
    const value = this.view.getInt16(this.cursor, true);
    this.cursor += 2;
    return value;
  }

  u32(what: string): number {
    this.ensure(4, what);
    const value = this.view.getUint32(this.cursor, true);
    this.cursor += 4;
    return value;
  }

  i32(what: string): number {
    this.ensure(4, what);
    const value = this.view.getInt32(this.cursor, true);
    this.cursor += 4;
    return value;
  }

  f32(what: string): number {
    this.ensure(4, what);
    const value = this.view.getFloat32(this.cursor, true);
    this.cursor += 4;
    return value;
  }

  f64(what: string): number {
    this.ensure(8, what);
    const value = this.view.getFloat64(this.cursor, true);
    this.cursor += 8;
    return value;
  }

  u64(what: string): number | bigint {
    this.ensure(8, what);
    const value = this.view.getBigUint64(this.cursor, true);
    this.cursor += 8;
    return value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
  }

  i64(what: string): number | bigint {
    this.ensure(8, what);
    const value = this.view.getBigInt64(this.cursor, true);
    this.cursor += 8;
    return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
  }

  /** A u64 that must fit in a JS number (counts, lengths, offsets). */
  size(what: string): number {
    const value = this.u64(what);
    if (typeof value === "bigint") this.fail(`${what} is ${value}, too large to be real`);
    return value;
  }

  string(what: string): string {
    const length = this.size(`length of ${what}`);
    if (length > this.remaining) {
      this.fail(
        `truncated file: ${what} claims ${length} bytes at offset ${this.position}, only ${this.remaining} left`,
      );
    }
    this.ensure(length, what);
    const text = this.utf8.decode(this.buffer.subarray(this.cursor, this.cursor + length));
    this.cursor += length;
    return text;
  }
}

function readValue(reader: ChunkedReader, type: number, what: string): GgufValue {
  switch (type) {
    case GgufValueType.UINT8:
      return reader.u8(what);
    case GgufValueType.INT8:
      return reader.i8(what);
    case GgufValueType.UINT16:
      return reader.u16(what);
    case GgufValueType.INT16:
      return reader.i16(what);
    case GgufValueType.UINT32:
      return reader.u32(what);
    case GgufValueType.INT32:
      return reader.i32(what);
    case GgufValueType.FLOAT32:
      return reader.f32(what);
    case GgufValueType.BOOL:
      return reader.u8(what) !== 0;
    case GgufValueType.STRING:
      return reader.string(what);
    case GgufValueType.UINT64:
      return reader.u64(what);
    case GgufValueType.INT64:
      return reader.i64(what);
    case GgufValueType.FLOAT64:
      return reader.f64(what);
    case GgufValueType.ARRAY: {
      const elementType = reader.u32(`element type of ${what}`);
      return readArray(reader, elementType, what);
    }
    default:
      throw new GgufError(`unknown value type ${type} for ${what}`);
  }
}

function readArray(reader: ChunkedReader, elementType: number, what: string): GgufValue[] {
  const minBytes = MIN_VALUE_BYTES[elementType];
  if (minBytes === undefined) throw new GgufError(`unknown array element type ${elementType} for ${what}`);
  const count = reader.size(`length of ${what}`);
  // A corrupt count would otherwise allocate an absurd array before failing.
  if (count * minBytes > reader.remaining) {
    throw new GgufError(
      `truncated file: ${what} claims ${count} elements at offset ${reader.position}, only ${reader.remaining} bytes left`,
    );
  }
  const values: GgufValue[] = new Array(count);
  for (let i = 0; i < count; i++) values[i] = readValue(reader, elementType, what);
  return values;
}

function tensorByteSize(type: number, dims: number[]): number | undefined {
  const geometry = GGML_TYPES[type];
  if (!geometry) return undefined;
  const elements = dims.reduce((product, dim) => product * dim, 1);
  return Math.ceil(elements / geometry.blockSize) * geometry.typeSize;
}

export interface ReadGgufOptions {
  /** Skip the check that every tensor's data lies inside the file (default false). */
  allowMissingData?: boolean;
}

/**
 * Read a GGUF file's header, metadata and tensor table (synchronously; tensor data is not read).
 * Throws GgufError naming the file for: not a GGUF file, big-endian or unsupported version,
 * truncated header, tensor data running past the end of the file.
 */
export function readGguf(path: string, options: ReadGgufOptions = {}): GgufInfo {
  const fail = (problem: string): never => {
    throw new GgufError(`${path}: ${problem}`);
  };
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (error) {
    return fail(`cannot open: ${(error as Error).message}`);
  }
  try {
    const fileSize = fstatSync(fd).size;
    const reader = new ChunkedReader(fd, fileSize, fail);
    try {
      return readFromReader(path, reader, options);
    } catch (error) {
      if (error instanceof GgufError && !error.message.startsWith(`${path}:`)) fail(error.message);
      throw error;
    }
  } finally {
    closeSync(fd);
  }
}

function readFromReader(path: string, reader: ChunkedReader, options: ReadGgufOptions): GgufInfo {
  if (reader.fileSize < 4) throw new GgufError(`not a GGUF file (only ${reader.fileSize} bytes)`);
  const magic = reader.u32("magic");
  if (magic !== GGUF_MAGIC) {
    const shown = [magic & 0xff, (magic >> 8) & 0xff, (magic >> 16) & 0xff, magic >>> 24]
      .map((byte) =>
        byte >= 0x20 && byte < 0x7f ? String.fromCharCode(byte) : `\\x${byte.toString(16).padStart(2, "0")}`,
      )
      .join("");
    throw new GgufError(`not a GGUF file (starts with "${shown}", expected "GGUF")`);
  }
  const version = reader.u32("version");
  if (!SUPPORTED_VERSIONS.includes(version)) {
    // A big-endian file has its version byte-swapped: 3 reads as 0x03000000.
    const swapped =
      ((version & 0xff) << 24) | (((version >> 8) & 0xff) << 16) | (((version >> 16) & 0xff) << 8) | (version >>> 24);
    if (SUPPORTED_VERSIONS.includes(swapped))
      throw new GgufError(`big-endian GGUF (version ${swapped}) is not supported`);
    throw new GgufError(`unsupported GGUF version ${version} (supported: ${SUPPORTED_VERSIONS.join(", ")})`);
  }
  const tensorCount = reader.size("tensor count");
  const keyCount = reader.size("metadata key count");

  const metadata = new Map<string, GgufValue>();
  const types = new Map<string, GgufValueType>();
  const arrayTypes = new Map<string, GgufValueType>();
  for (let i = 0; i < keyCount; i++) {
    const key = reader.string(`metadata key #${i}`);
    const type = reader.u32(`type of ${key}`);
    if (type === GgufValueType.ARRAY) {
      const elementType = reader.u32(`element type of ${key}`);
      arrayTypes.set(key, elementType);
      metadata.set(key, readArray(reader, elementType, key));
    } else {
      metadata.set(key, readValue(reader, type, key));
    }
    types.set(key, type);
  }

  const alignmentValue = metadata.get("general.alignment");
  const alignment = typeof alignmentValue === "number" && alignmentValue > 0 ? alignmentValue : DEFAULT_ALIGNMENT;

  const tensors: GgufTensorInfo[] = [];
  for (let i = 0; i < tensorCount; i++) {
    const name = reader.string(`name of tensor #${i}`);
    const dimCount = reader.u32(`dimension count of ${name}`);
    if (dimCount > 8) throw new GgufError(`tensor ${name} has ${dimCount} dimensions (corrupt tensor table?)`);
    const dims: number[] = [];
    for (let d = 0; d < dimCount; d++) dims.push(reader.size(`dimension ${d} of ${name}`));
    const type = reader.u32(`type of ${name}`);
    const offset = reader.size(`offset of ${name}`);
    tensors.push({
      name,
      dims,
      shape: [...dims].reverse(),
      type,
      typeName: GGML_TYPES[type]?.name ?? `UNKNOWN_${type}`,
      offset,
      fileOffset: 0, // known once the data section start is known
      byteSize: tensorByteSize(type, dims),
    });
  }
  const dataOffset = Math.ceil(reader.position / alignment) * alignment;
  for (const tensor of tensors) {
    tensor.fileOffset = dataOffset + tensor.offset;
    if (!options.allowMissingData && tensor.fileOffset + (tensor.byteSize ?? 0) > reader.fileSize) {
      throw new GgufError(
        `truncated file: tensor ${tensor.name} needs bytes up to ${tensor.fileOffset + (tensor.byteSize ?? 0)}, file has ${reader.fileSize}`,
      );
    }
  }
  return { path, version, metadata, types, arrayTypes, tensors, alignment, dataOffset, fileSize: reader.fileSize };
}

// Typed accessors: undefined when the key is absent, an error when it has another type.

function wrongType(key: string, expected: string, value: GgufValue): never {
  const actual = Array.isArray(value) ? "array" : typeof value;
  throw new GgufError(`GGUF key ${key} is a ${actual}, expected ${expected}`);
}

export function ggufString(metadata: Map<string, GgufValue>, key: string): string | undefined {
  const value = metadata.get(key);
  if (value === undefined) return undefined;
  return typeof value === "string" ? value : wrongType(key, "string", value);
}

export function ggufNumber(metadata: Map<string, GgufValue>, key: string): number | undefined {
  const value = metadata.get(key);
  if (value === undefined) return undefined;
  return typeof value === "number" ? value : wrongType(key, "number", value);
}

export function ggufBool(metadata: Map<string, GgufValue>, key: string): boolean | undefined {
  const value = metadata.get(key);
  if (value === undefined) return undefined;
  return typeof value === "boolean" ? value : wrongType(key, "boolean", value);
}

export function ggufStringArray(metadata: Map<string, GgufValue>, key: string): string[] | undefined {
  const value = metadata.get(key);
  if (value === undefined) return undefined;
  if (!Array.isArray(value) || value.some((item) => typeof item !== "string")) wrongType(key, "string array", value);
  return value as string[];
}

export function ggufNumberArray(metadata: Map<string, GgufValue>, key: string): number[] | undefined {
  const value = metadata.get(key);
  if (value === undefined) return undefined;
  if (!Array.isArray(value) || value.some((item) => typeof item !== "number")) wrongType(key, "number array", value);
  return value as number[];
}
