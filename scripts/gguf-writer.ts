// A small GGUF (version 3) writer for the scripts that make benchmark models:
// metadata, then the tensor table, then each tensor's bytes streamed in order
// (aligned to 32), so a multi-gigabyte file never sits in memory.
import { closeSync, openSync, writeSync } from "node:fs";
import { type GgufValue, GgufValueType } from "../src/formats/gguf";

export const GGML_F32 = 0;
export const GGML_Q4_0 = 2;
const ALIGN = 32;

export type GgufKv = [key: string, type: GgufValueType, value: GgufValue, arrayType?: GgufValueType];

export interface GgufTensorOut {
  name: string;
  /** ggml order: the row length first. */
  dims: number[];
  type: typeof GGML_F32 | typeof GGML_Q4_0;
  /** Writes exactly the tensor's bytes, in order, through `put`. */
  write: (put: (bytes: Uint8Array) => void) => void;
}

export const elementCount = (t: { dims: number[] }) => t.dims.reduce((a, b) => a * b, 1);
export const tensorBytes = (t: { dims: number[]; type: number }) =>
  t.type === GGML_Q4_0 ? (elementCount(t) / 32) * 18 : elementCount(t) * 4;
const pad = (n: number) => Math.ceil(n / ALIGN) * ALIGN;

class Bytes {
  parts: Buffer[] = [];
  fixed(size: number, put: (x: Buffer) => void) {
    const x = Buffer.alloc(size);
    put(x);
    this.parts.push(x);
  }
  u32(v: number) {
    this.fixed(4, (x) => x.writeUInt32LE(v));
  }
  u64(v: number | bigint) {
    this.fixed(8, (x) => x.writeBigUInt64LE(BigInt(v)));
  }
  str(s: string) {
    const b = Buffer.from(s, "utf8");
    this.u64(b.length);
    this.parts.push(b);
  }
}

function writeValue(b: Bytes, type: GgufValueType, v: GgufValue, arrayType?: GgufValueType): void {
  switch (type) {
    case GgufValueType.UINT8:
      b.fixed(1, (x) => x.writeUInt8(v as number));
      break;
    case GgufValueType.INT8:
      b.fixed(1, (x) => x.writeInt8(v as number));
      break;
    case GgufValueType.UINT16:
      b.fixed(2, (x) => x.writeUInt16LE(v as number));
      break;
    case GgufValueType.INT16:
      b.fixed(2, (x) => x.writeInt16LE(v as number));
      break;
    case GgufValueType.UINT32:
      b.u32(v as number);
      break;
    case GgufValueType.INT32:
      b.fixed(4, (x) => x.writeInt32LE(v as number));
      break;
    case GgufValueType.FLOAT32:
      b.fixed(4, (x) => x.writeFloatLE(v as number));
      break;
    case GgufValueType.BOOL:
      b.fixed(1, (x) => x.writeUInt8(v ? 1 : 0));
      break;
    case GgufValueType.STRING:
      b.str(v as string);
      break;
    case GgufValueType.UINT64:
      b.u64(v as number | bigint);
      break;
    case GgufValueType.INT64:
      b.fixed(8, (x) => x.writeBigInt64LE(BigInt(v as number)));
      break;
    case GgufValueType.FLOAT64:
      b.fixed(8, (x) => x.writeDoubleLE(v as number));
      break;
    case GgufValueType.ARRAY: {
      if (arrayType === undefined) throw new Error("array without element type");
      const items = v as GgufValue[];
      b.u32(arrayType);
      b.u64(items.length);
      for (const item of items) writeValue(b, arrayType, item);
      break;
    }
  }
}

/** Writes the file; returns the bytes of tensor data. */
export function writeGguf(path: string, kv: GgufKv[], tensors: GgufTensorOut[]): number {
  const header = new Bytes();
  header.u32(0x46554747); // "GGUF"
  header.u32(3);
  header.u64(tensors.length);
  header.u64(kv.length);
  for (const [key, type, value, arrayType] of kv) {
    header.str(key);
    header.u32(type);
    writeValue(header, type, value, arrayType);
  }
  let offset = 0;
  for (const t of tensors) {
    header.str(t.name);
    header.u32(t.dims.length);
    for (const d of t.dims) header.u64(d);
    header.u32(t.type);
    header.u64(offset);
    offset += pad(tensorBytes(t));
  }
  const head = Buffer.concat(header.parts);
  const fd = openSync(path, "w");
  let data = 0;
  try {
    writeSync(fd, head);
    writeSync(fd, Buffer.alloc(pad(head.length) - head.length));
    for (const t of tensors) {
      let written = 0;
      t.write((bytes) => {
        writeSync(fd, bytes);
        written += bytes.length;
      });
      const size = tensorBytes(t);
      if (written !== size) throw new Error(`${t.name}: wrote ${written} bytes, expected ${size}`);
      writeSync(fd, Buffer.alloc(pad(size) - size));
      data += size;
    }
  } finally {
    closeSync(fd);
  }
  return data;
}

/**
 * Float values → Q4_0 blocks (ggml's quantize_row_q4_0_ref): per 32 values, d = the
 * signed value of largest magnitude / -8 (float16), q = min(15, trunc(x / d + 8.5));
 * byte j holds element j (low nibble) and element j + 16 (high nibble).
 */
export function quantizeQ4_0(x: Float32Array, out: Uint8Array, outOffset = 0): void {
  const d16 = new Float16Array(1);
  const d16bits = new Uint16Array(d16.buffer);
  for (let b = 0; b < x.length / 32; b++) {
    const base = b * 32;
    let amax = 0;
    let max = 0;
    for (let j = 0; j < 32; j++) {
      const v = x[base + j] as number;
      const a = Math.abs(v);
      if (amax < a) {
        amax = a;
        max = v;
      }
    }
    const d = Math.fround(max / -8);
    const id = d ? Math.fround(1 / d) : 0;
    d16[0] = d;
    const o = outOffset + b * 18;
    out[o] = (d16bits[0] as number) & 0xff;
    out[o + 1] = (d16bits[0] as number) >> 8;
    for (let j = 0; j < 16; j++) {
      const x0 = Math.min(15, Math.trunc(Math.fround((x[base + j] as number) * id) + 8.5));
      const x1 = Math.min(15, Math.trunc(Math.fround((x[base + 16 + j] as number) * id) + 8.5));
      out[o + 2 + j] = x0 | (x1 << 4);
    }
  }
}
