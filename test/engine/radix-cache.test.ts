// The radix prefix tree's policy, on plain payloads (no MLX): block-aligned
// sharing, splits, LRU leaf eviction, regimes.
import { describe, expect, test } from "bun:test";
import { type PayloadOps, RadixCache } from "../../src/engine/radix-cache";

/** A payload is the token range it covers; 10 bytes a token. */
interface Range {
  start: number;
  end: number;
  disposed: boolean;
}

function rangeOps(log: Range[]): PayloadOps<Range> {
  return {
    bytes: (p) => (p.end - p.start) * 10,
    split: (p, at) => {
      p.disposed = true;
      const head = { start: p.start, end: p.start + at, disposed: false };
      const tail = { start: p.start + at, end: p.end, disposed: false };
      log.push(head, tail);
      return [head, tail];
    },
    dispose: (p) => {
      p.disposed = true;
    },
  };
}

function seq(n: number, from = 0): number[] {
  return Array.from({ length: n }, (_, i) => from + i);
}

function cache(block = 4) {
  const log: Range[] = [];
  const produced: Array<[number, number]> = [];
  const radix = new RadixCache<Range>(rangeOps(log), block);
  const produce = (start: number, end: number) => {
    produced.push([start, end]);
    const r = { start, end, disposed: false };
    log.push(r);
    return r;
  };
  return { radix, produce, produced, log };
}

describe("RadixCache", () => {
  test("stores whole blocks and matches the longest block-aligned prefix", () => {
    const { radix, produce } = cache(4);
    expect(radix.insert(seq(10), 0, 10, produce)).toBe(8);
    expect(radix.bytes).toBe(80);
    const m = radix.match([...seq(7), 99, 100], 0);
    expect(m.length).toBe(4);
    expect(m.segments).toHaveLength(1);
    expect(m.segments[0]?.tokens).toBe(4);
    expect(m.segments[0]?.length).toBe(8);
    expect(radix.match(seq(20), 0).length).toBe(8);
    expect(radix.match(seq(20), 0, 7).length).toBe(4);
  });

  test("a shared prefix is stored once: a second branch splits the edge at a block boundary", () => {
    const { radix, produce, produced } = cache(4);
    radix.insert(seq(16), 0, 16, produce);
    // Diverges at token 10: shares blocks [0, 8), stores [8, 16) of its own.
    const other = [...seq(10), 500, 501, 502, 503, 504, 505];
    expect(radix.insert(other, 0, 16, produce)).toBe(8);
    expect(produced).toEqual([
      [0, 16],
      [8, 16],
    ]);
    expect(radix.stats().nodes).toBe(3);
    expect(radix.bytes).toBe(240);
    const a = radix.match(seq(16), 0, 16);
    expect(a.length).toBe(16);
    expect(a.segments.map((s) => s.length)).toEqual([8, 8]);
    const b = radix.match(other, 0, 16);
    expect(b.length).toBe(16);
    expect(b.segments[1]?.payload.start).toBe(8);
  });

  test("children sharing a first token but not a first block stay apart", () => {
    const { radix, produce } = cache(4);
    radix.insert([1, 2, 3, 4, 5, 6, 7, 8], 0, 8, produce);
    radix.insert([1, 2, 9, 9, 5, 6, 7, 8], 0, 8, produce);
    expect(radix.match([1, 2, 3, 4, 5, 6, 7, 8], 0).length).toBe(8);
    expect(radix.match([1, 2, 9, 9, 5, 6, 7, 8], 0).length).toBe(8);
    expect(radix.stats().nodes).toBe(2);
  });

  test("a prefix of a cached edge is not stored again", () => {
    const { radix, produce, produced } = cache(4);
    radix.insert(seq(16), 0, 16, produce);
    expect(radix.insert(seq(9), 0, 9, produce)).toBe(0);
    expect(produced).toHaveLength(1);
    expect(radix.stats().nodes).toBe(1);
  });

  test("regimes never share", () => {
    const { radix, produce } = cache(4);
    radix.insert(seq(8), 0, 8, produce);
    expect(radix.match(seq(8), 1).length).toBe(0);
    radix.insert(seq(8), 1, 8, produce);
    expect(radix.match(seq(8), 1).length).toBe(8);
    expect(radix.bytes).toBe(160);
  });

  test("eviction takes least recently used leaves first and keeps the shared trunk", () => {
    const { radix, produce } = cache(4);
    const trunk = seq(8);
    const a = [...trunk, 100, 101, 102, 103];
    const b = [...trunk, 200, 201, 202, 203];
    radix.insert(a, 0, 12, produce);
    radix.insert(b, 0, 12, produce);
    radix.match(a, 0); // a is now the most recent
    expect(radix.bytes).toBe(160);
    radix.evictTo(150);
    expect(radix.match(b, 0, 12, false).length).toBe(8);
    expect(radix.match(a, 0, 12, false).length).toBe(12);
    radix.evictTo(80);
    expect(radix.match(a, 0, 12, false).length).toBe(8);
    radix.evictTo(0);
    expect(radix.bytes).toBe(0);
    expect(radix.stats()).toMatchObject({ nodes: 0, evictions: 3 });
  });

  test("every payload is disposed exactly when it leaves (split, evict, clear)", () => {
    const { radix, produce, log } = cache(4);
    radix.insert(seq(16), 0, 16, produce);
    radix.insert([...seq(8), 7, 7, 7, 7], 0, 12, produce);
    const live = () => log.filter((r) => !r.disposed);
    expect(live()).toHaveLength(3);
    expect(live().reduce((n, r) => n + (r.end - r.start) * 10, 0)).toBe(radix.bytes);
    radix.clear();
    expect(live()).toHaveLength(0);
  });

  test("entries list each node with its prefix, most used first", () => {
    const { radix, produce } = cache(4);
    radix.insert(seq(8), 0, 8, produce);
    radix.insert([...seq(4), 9, 9, 9, 9], 0, 8, produce);
    radix.match([...seq(4), 9, 9, 9, 9], 0);
    radix.match([...seq(4), 9, 9, 9, 9], 0);
    const entries = radix.entries();
    expect(entries).toHaveLength(3);
    expect(entries[0]?.tokens).toEqual(seq(4));
    expect(entries[1]?.prefix).toEqual(seq(4));
    expect(entries[1]?.tokens).toEqual([9, 9, 9, 9]);
  });
});
