// A radix tree over token sequences whose edges carry a payload (the KV of
// exactly those tokens). Prompts that share a prefix share its nodes: two
// Claude Code sessions with the same system prompt and tools hold that ~20K-
// token prefix once. Plain data, generic over the payload, so the policy is
// tested without MLX (src/engine/prefix-cache.ts binds it to KV arrays).
//
// Node boundaries fall on multiples of `blockTokens`: a new branch starts at
// the last block boundary before the point where it diverges, so nodes are
// whole blocks and a split never cuts a block. Eviction removes the least
// recently used leaf first, so a shared prefix outlives the branches under it.
// One tree per RoPE regime (Phi-3's short and long factors give other KV).

export interface PayloadOps<T> {
  bytes(payload: T): number;
  /** Splits a payload of `length` tokens at `at` into [0, at) and [at, length); consumes it. */
  split(payload: T, at: number, length: number): [T, T];
  dispose(payload: T): void;
}

interface Node<T> {
  /** The edge's tokens (a multiple of blockTokens); empty for a root. */
  tokens: number[];
  payload: T | null;
  /** Keyed by the child's first block (two children may share a first token, never a first block). */
  children: Map<string, Node<T>>;
  parent: Node<T> | null;
  /** Tokens from the root to this node's end. */
  end: number;
  bytes: number;
  lastUsed: number;
  /** Times a lookup used this node (for choosing what to persist). */
  uses: number;
}

export interface MatchSegment<T> {
  payload: T;
  /** Tokens of the payload used: all of them, except perhaps in the last segment. */
  tokens: number;
  /** Tokens in the payload. */
  length: number;
}

export interface RadixMatch<T> {
  /** Tokens covered, a multiple of blockTokens. */
  length: number;
  segments: MatchSegment<T>[];
}

export interface RadixStats {
  nodes: number;
  bytes: number;
  tokens: number;
  evictions: number;
}

/** One root-to-node path's worth of a node, as persistence sees it. */
export interface RadixEntry<T> {
  regime: number;
  /** Tokens from the root up to this node's start. */
  prefix: number[];
  tokens: number[];
  payload: T;
  uses: number;
  lastUsed: number;
}

function common(a: readonly number[], aStart: number, b: readonly number[], bStart: number, limit: number): number {
  const n = Math.min(a.length - aStart, b.length - bStart, limit);
  let i = 0;
  while (i < n && a[aStart + i] === b[bStart + i]) i++;
  return i;
}

export class RadixCache<T> {
  readonly blockTokens: number;
  readonly #ops: PayloadOps<T>;
  readonly #roots = new Map<number, Node<T>>();
  #clock = 0;
  #bytes = 0;
  #nodes = 0;
  #evictions = 0;

  constructor(ops: PayloadOps<T>, blockTokens = 16) {
    if (!Number.isInteger(blockTokens) || blockTokens < 1)
      throw new RangeError("blockTokens must be a positive integer");
    this.#ops = ops;
    this.blockTokens = blockTokens;
  }

  get bytes(): number {
    return this.#bytes;
  }

  #root(regime: number, create: boolean): Node<T> | null {
    let root = this.#roots.get(regime) ?? null;
    if (!root && create) {
      root = { tokens: [], payload: null, children: new Map(), parent: null, end: 0, bytes: 0, lastUsed: 0, uses: 0 };
      this.#roots.set(regime, root);
    }
    return root;
  }

  #key(tokens: readonly number[], at: number): string {
    return tokens.slice(at, at + this.blockTokens).join(",");
  }

  #floor(n: number): number {
    return n - (n % this.blockTokens);
  }

  /**
   * The longest cached prefix of `tokens[0, limit)` in a regime, in whole
   * blocks. `touch` marks the path as used (for LRU and persistence).
   */
  match(tokens: readonly number[], regime: number, limit = tokens.length, touch = true): RadixMatch<T> {
    const segments: MatchSegment<T>[] = [];
    const cap = this.#floor(Math.min(limit, tokens.length));
    let node = this.#root(regime, false);
    let at = 0;
    const path: Node<T>[] = [];
    while (node && at < cap) {
      const child = node.children.get(this.#key(tokens, at));
      if (!child) break;
      const n = this.#floor(common(child.tokens, 0, tokens, at, cap - at));
      if (n === 0) break;
      segments.push({ payload: child.payload as T, tokens: n, length: child.tokens.length });
      path.push(child);
      at += n;
      if (n < child.tokens.length) break;
      node = child;
    }
    if (touch && at > 0) {
      const now = ++this.#clock;
      for (const p of path) {
        p.lastUsed = now;
        p.uses++;
      }
    }
    return { length: at, segments };
  }

  /**
   * Stores the first `length` tokens of `tokens` (rounded down to whole
   * blocks). `produce(start, end)` gives the payload for a token range not yet
   * cached; shared ranges are not produced again. Returns the tokens newly
   * stored.
   */
  insert(
    tokens: readonly number[],
    regime: number,
    length: number,
    produce: (start: number, end: number) => T,
  ): number {
    const total = this.#floor(Math.min(length, tokens.length));
    if (total === 0) return 0;
    let node = this.#root(regime, true) as Node<T>;
    let at = 0;
    const now = ++this.#clock;
    while (at < total) {
      const child = node.children.get(this.#key(tokens, at));
      if (!child) break;
      const n = this.#floor(common(child.tokens, 0, tokens, at, total - at));
      if (n === 0) break;
      if (n < child.tokens.length) {
        if (at + n >= total) {
          // Ends inside this edge: already cached.
          child.lastUsed = now;
          return 0;
        }
        // Diverges inside this edge: split it at the block boundary.
        this.#split(child, n);
      }
      child.lastUsed = now;
      node = child;
      at += n;
    }
    if (at >= total) return 0;
    const payload = produce(at, total);
    const bytes = this.#ops.bytes(payload);
    const leaf: Node<T> = {
      tokens: tokens.slice(at, total),
      payload,
      children: new Map(),
      parent: node,
      end: total,
      bytes,
      lastUsed: now,
      uses: 0,
    };
    node.children.set(this.#key(tokens, at), leaf);
    this.#bytes += bytes;
    this.#nodes++;
    return total - at;
  }

  /** Splits a node's edge at `at` tokens: the node keeps the head, a new child the tail. */
  #split(node: Node<T>, at: number): void {
    const [head, tail] = this.#ops.split(node.payload as T, at, node.tokens.length);
    const tailNode: Node<T> = {
      tokens: node.tokens.slice(at),
      payload: tail,
      children: node.children,
      parent: node,
      end: node.end,
      bytes: this.#ops.bytes(tail),
      lastUsed: node.lastUsed,
      uses: node.uses,
    };
    for (const c of tailNode.children.values()) c.parent = tailNode;
    this.#bytes -= node.bytes;
    node.tokens = node.tokens.slice(0, at);
    node.payload = head;
    node.bytes = this.#ops.bytes(head);
    node.end = node.end - tailNode.tokens.length;
    node.children = new Map([[this.#key(tailNode.tokens, 0), tailNode]]);
    this.#bytes += node.bytes + tailNode.bytes;
    this.#nodes++;
  }

  /** Evicts least recently used leaves until at most `targetBytes` remain. Returns bytes freed. */
  evictTo(targetBytes: number): number {
    let freed = 0;
    while (this.#bytes > targetBytes) {
      const leaf = this.#oldestLeaf();
      if (!leaf) break;
      freed += this.#remove(leaf);
      this.#evictions++;
    }
    return freed;
  }

  #oldestLeaf(): Node<T> | null {
    let best: Node<T> | null = null;
    const visit = (n: Node<T>) => {
      if (n.children.size === 0) {
        if (n.parent && (!best || n.lastUsed < best.lastUsed)) best = n;
        return;
      }
      for (const c of n.children.values()) visit(c);
    };
    for (const r of this.#roots.values()) visit(r);
    return best;
  }

  #remove(leaf: Node<T>): number {
    const parent = leaf.parent as Node<T>;
    parent.children.delete(this.#key(leaf.tokens, 0));
    this.#ops.dispose(leaf.payload as T);
    this.#bytes -= leaf.bytes;
    this.#nodes--;
    return leaf.bytes;
  }

  /** Every node with its full prefix, most used first (for persistence). */
  entries(): RadixEntry<T>[] {
    const out: RadixEntry<T>[] = [];
    const visit = (n: Node<T>, prefix: number[], regime: number) => {
      for (const c of n.children.values()) {
        out.push({ regime, prefix, tokens: c.tokens, payload: c.payload as T, uses: c.uses, lastUsed: c.lastUsed });
        visit(c, prefix.concat(c.tokens), regime);
      }
    };
    for (const [regime, root] of this.#roots) visit(root, [], regime);
    return out.sort((a, b) => b.uses - a.uses || b.lastUsed - a.lastUsed);
  }

  stats(): RadixStats {
    let tokens = 0;
    const visit = (n: Node<T>) => {
      tokens += n.tokens.length;
      for (const c of n.children.values()) visit(c);
    };
    for (const r of this.#roots.values()) visit(r);
    return { nodes: this.#nodes, bytes: this.#bytes, tokens, evictions: this.#evictions };
  }

  clear(): void {
    const visit = (n: Node<T>) => {
      if (n.payload !== null) this.#ops.dispose(n.payload);
      for (const c of n.children.values()) visit(c);
    };
    for (const r of this.#roots.values()) visit(r);
    this.#roots.clear();
    this.#bytes = 0;
    this.#nodes = 0;
  }
}
