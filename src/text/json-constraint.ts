// Constrained decoding for JSON: an incremental parser over output bytes,
// directed by a grammar (any JSON object, or a JSON Schema compiled by
// json-schema-grammar.ts), and the token mask it implies. At each step the
// allowed tokens are those whose bytes keep the output a valid prefix; once
// the value is complete only end-of-turn tokens are.
//
// The parser state is an immutable stack of frames (the top frame points to
// the frame that resumes when it completes), so a state is cloned for free
// and the mask is a depth-first walk of the vocabulary's byte trie that
// carries one state per trie node and prunes a subtree at the first byte that
// fails. Inside a string, subtrees made only of plain characters are allowed
// whole without walking them: that is most of the vocabulary, most of the time.
// Every prefix the automaton allows can still be completed (schema parts that
// allow no value are never started), but the model decides when: a generation
// that reaches max_tokens first ends with "length" and a valid prefix.
//
// Deliberate narrowings (every output is still valid JSON):
// - at most MAX_WHITESPACE consecutive whitespace bytes between tokens of the
//   JSON text (not inside strings), so that a model cannot loop on spaces;
// - nothing after the top-level value (no trailing whitespace);
// - numbers: at most 16 digits before the point, 16 after, 2 in the exponent;
//   "integer" allows digits only (no fraction or exponent);
// - enum/const values and declared property names must be written as compact
//   JSON (JSON.stringify's escapes), and keys that are not declared cannot
//   use backslash escapes (so they can never spell a declared name);
// - strings must be well-formed UTF-8 (lead and continuation bytes; overlong
//   forms are not checked).
// Over 400 lines: the incremental JSON parser is one state machine; its states read best together.
import {
  ANY,
  ANY_OBJECT,
  ANY_VALUE,
  ARR,
  type ArrNode,
  type CompiledSchema,
  compileJsonSchema,
  type GrammarNode,
  LIT,
  type LitNode,
  NEVER,
  NUM,
  type NumNode,
  OBJ,
  type ObjNode,
  REF,
  SchemaError,
  STR,
  type StrNode,
  UNION,
} from "./json-schema-grammar.ts";

export { SchemaError };

/** What a request asks for: any JSON object, or JSON that follows a schema. */
export type ConstraintSpec = ({ kind: "json" } | { kind: "json_schema"; schema: unknown }) & {
  /** Text of the answer already in the prompt (a continued assistant message): the output goes on from it. */
  prefix?: string;
};

/** Enough for pretty-printed JSON three levels deep with 4-space indents ("\n" + 12 spaces). */
export const MAX_WHITESPACE = 16;
const MAX_INT_DIGITS = 16;
const MAX_FRAC_DIGITS = 16;
// Two exponent digits: JSON.parse turns 1e400 into Infinity, which no schema's "number" accepts.
const MAX_EXP_DIGITS = 2;

// Frame kinds.
const F_ROOT = 0;
const F_OBJ = 1;
const F_KEY = 2;
const F_ARR = 3;
const F_STR = 4;
const F_NUM = 5;
const F_LIT = 6;

// Number phases; the starred ones are complete numbers.
const N_MINUS = 1;
const N_ZERO = 2; // *
const N_INT = 3; // *
const N_DOT = 4;
const N_FRAC = 5; // *
const N_E = 6;
const N_ESIGN = 7;
const N_EXP = 8; // *

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COMMA = 0x2c;
const COLON = 0x3a;
const LBRACE = 0x7b;
const RBRACE = 0x7d;
const LBRACKET = 0x5b;
const RBRACKET = 0x5d;

const isWs = (b: number) => b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09;
const isDigit = (b: number) => b >= 0x30 && b <= 0x39;
const isHex = (b: number) => isDigit(b) || (b >= 0x41 && b <= 0x46) || (b >= 0x61 && b <= 0x66);
/** After a backslash: " \ / b f n r t (u is handled apart). */
const isEscape = (b: number) =>
  b === QUOTE || b === BACKSLASH || b === 0x2f || b === 0x62 || b === 0x66 || b === 0x6e || b === 0x72 || b === 0x74;
/** Bytes a string takes as one character with no state change. */
const isPlainStringByte = (b: number) => b >= 0x20 && b < 0x80 && b !== QUOTE && b !== BACKSLASH;
/** UTF-8 continuation bytes a lead byte announces (0: not a lead byte). */
const utf8Continuations = (b: number) =>
  b >= 0xc2 && b <= 0xdf ? 1 : b >= 0xe0 && b <= 0xef ? 2 : b >= 0xf0 && b <= 0xf4 ? 3 : 0;

/**
 * One level of the parse: immutable. `parent` is the frame that continues
 * once this one completes (for a value inside a container: the container
 * already past that value). Field use by kind:
 *   ROOT  phase 0 (expect the value) / 1 (done); a = whitespace run
 *   OBJ   phase 0 after "{", 1 after ",", 2 after a key, 3 after ":", 4 after a value;
 *         a = whitespace run, b = property of the pending key (-1: other), c = declared keys seen,
 *         d = required keys seen, seen = 1 per declared property present
 *   KEY   parent = the object before this key; phase 0 matching declared names keys[a..b) at byte c,
 *         phase 1 any other name; d = string lexer state (escape * 4 + continuation bytes)
 *   ARR   phase 0 after "[", 1 after an item, 2 after ","; a = whitespace run, b = items so far
 *   STR   a = characters so far (only when limited), b = escape state, c = continuation bytes due
 *   NUM   phase as above; a = digits in the current part
 *   LIT   candidates cands[a..b) matched up to byte c
 */
class Frame {
  constructor(
    readonly kind: number,
    readonly node: GrammarNode,
    readonly parent: Frame | null,
    readonly phase: number,
    readonly a: number,
    readonly b: number,
    readonly c: number,
    readonly d: number,
    readonly seen: Uint8Array | null,
  ) {}
}

function frame(kind: number, node: GrammarNode, parent: Frame | null, phase = 0, a = 0, b = 0, c = 0, d = 0) {
  return new Frame(kind, node, parent, phase, a, b, c, d, null);
}

function objFrame(f: Frame, phase: number, ws: number, key: number): Frame {
  return new Frame(F_OBJ, f.node, f.parent, phase, ws, key, f.c, f.d, f.seen);
}

/** The first byte of a value: the frame that parses the rest, or null. `cont` resumes after it. */
function startValue(node: GrammarNode, b: number, cont: Frame): Frame | null {
  switch (node.k) {
    case ANY:
      return startValue(ANY_VALUE, b, cont);
    case UNION: {
      const n = node.byStart[b];
      return n ? startValue(n, b, cont) : null;
    }
    case OBJ:
      return b === LBRACE ? frame(F_OBJ, node, cont, 0, 0, -1) : null;
    case ARR:
      return b === LBRACKET ? frame(F_ARR, node, cont) : null;
    case STR:
      return b === QUOTE ? frame(F_STR, node, cont) : null;
    case NUM:
      if (b === 0x2d) return frame(F_NUM, node, cont, N_MINUS);
      if (b === 0x30) return frame(F_NUM, node, cont, N_ZERO, 1);
      if (isDigit(b)) return frame(F_NUM, node, cont, N_INT, 1);
      return null;
    case LIT:
      return literal(node, cont, 0, node.cands.length, 0, b);
    case NEVER:
      return null;
    case REF:
      return startValue(node.target as GrammarNode, b, cont);
  }
}

/** Narrows literal candidates [lo, hi), matched up to `pos`, by byte b. */
function literal(node: LitNode, cont: Frame, lo: number, hi: number, pos: number, b: number): Frame | null {
  const cands = node.cands;
  let i = lo;
  while (i < hi && !((cands[i] as Uint8Array).length > pos && (cands[i] as Uint8Array)[pos] === b)) i++;
  let j = i;
  while (j < hi && (cands[j] as Uint8Array).length > pos && (cands[j] as Uint8Array)[pos] === b) j++;
  if (i === j) {
    // No candidate goes on: a complete one ends here and the byte is the container's.
    return (cands[lo] as Uint8Array).length === pos && pos > 0 ? step(cont, b) : null;
  }
  // The only candidate left, complete: done (a string's closing quote, true, null...).
  if (j - i === 1 && (cands[i] as Uint8Array).length === pos + 1) return cont;
  return frame(F_LIT, node, cont, 0, i, j, pos + 1);
}

function itemNode(node: ArrNode, index: number): GrammarNode | null {
  return index < node.prefix.length ? (node.prefix[index] as GrammarNode) : node.items;
}

/** The state after one more output byte, or null if the byte is not allowed. */
export function step(f: Frame, b: number): Frame | null {
  switch (f.kind) {
    case F_ROOT:
      if (f.phase !== 0) return null;
      if (isWs(b)) return f.a < MAX_WHITESPACE ? frame(F_ROOT, f.node, null, 0, f.a + 1) : null;
      return startValue(f.node, b, frame(F_ROOT, f.node, null, 1));
    case F_STR:
      return stringByte(f, b);
    case F_OBJ:
      return objectByte(f, b);
    case F_KEY:
      return keyByte(f, b);
    case F_ARR:
      return arrayByte(f, b);
    case F_NUM:
      return numberByte(f, b);
    case F_LIT:
      return literal(f.node as LitNode, f.parent as Frame, f.a, f.b, f.c, b);
  }
  return null;
}

function stringByte(f: Frame, b: number): Frame | null {
  const node = f.node as StrNode;
  let len = f.a;
  let esc = f.b;
  let cont = f.c;
  if (esc === 1) {
    if (b === 0x75) esc = 5;
    else if (isEscape(b)) {
      esc = 0;
      len++;
    } else return null;
  } else if (esc > 1) {
    // \uXXXX: esc - 1 hex digits still due.
    if (!isHex(b)) return null;
    esc = esc === 2 ? 0 : esc - 1;
    if (esc === 0) len++;
  } else if (cont > 0) {
    if (b < 0x80 || b > 0xbf) return null;
    cont--;
    if (cont === 0) len++;
  } else if (b === QUOTE) {
    return len >= node.minLength ? f.parent : null;
  } else if (b < 0x80) {
    if (b < 0x20) return null;
    if (node.free && b !== BACKSLASH) return f;
    if (len >= node.maxLength) return null;
    if (b === BACKSLASH) esc = 1;
    else len++;
  } else {
    cont = utf8Continuations(b);
    if (cont === 0 || len >= node.maxLength) return null;
  }
  return new Frame(F_STR, node, f.parent, 0, node.free ? 0 : len, esc, cont, 0, null);
}

function objectByte(f: Frame, b: number): Frame | null {
  const node = f.node as ObjNode;
  const phase = f.phase;
  if (isWs(b)) return f.a < MAX_WHITESPACE ? objFrame(f, phase, f.a + 1, f.b) : null;
  switch (phase) {
    case 0:
    case 1:
      if (b === QUOTE) {
        if (node.names.length > 0) {
          if (node.additional === null && f.c >= node.usable) return null;
          return frame(F_KEY, node, f, 0, 0, node.keys.length, 0);
        }
        return node.additional === null ? null : frame(F_KEY, node, f, 1);
      }
      if (b === RBRACE && phase === 0 && f.d === node.requiredCount) return f.parent;
      return null;
    case 2:
      return b === COLON ? objFrame(f, 3, 0, f.b) : null;
    case 3: {
      const value = f.b >= 0 ? (node.values[f.b] as GrammarNode) : (node.additional as GrammarNode);
      return startValue(value, b, objFrame(f, 4, 0, -1));
    }
    default:
      if (b === COMMA) return node.additional !== null || f.c < node.usable ? objFrame(f, 1, 0, -1) : null;
      if (b === RBRACE && f.d === node.requiredCount) return f.parent;
      return null;
  }
}

/** The object once a key is read: waiting for ":", the key's property marked seen. */
function afterKey(obj: Frame, prop: number): Frame {
  const node = obj.node as ObjNode;
  if (prop < 0) return new Frame(F_OBJ, node, obj.parent, 2, 0, -1, obj.c, obj.d, obj.seen);
  const seen = obj.seen ? obj.seen.slice() : new Uint8Array(node.names.length);
  seen[prop] = 1;
  return new Frame(F_OBJ, node, obj.parent, 2, 0, prop, obj.c + 1, obj.d + node.required[prop]!, seen);
}

function keyByte(f: Frame, b: number): Frame | null {
  const node = f.node as ObjNode;
  const obj = f.parent as Frame;
  if (f.phase === 0) {
    const keys = node.keys;
    const pos = f.c;
    let i = f.a;
    const hi = f.b;
    while (i < hi && !((keys[i] as Uint8Array).length > pos && (keys[i] as Uint8Array)[pos] === b)) i++;
    let j = i;
    while (j < hi && (keys[j] as Uint8Array).length > pos && (keys[j] as Uint8Array)[pos] === b) j++;
    if (i < j) {
      const seen = obj.seen;
      if (j - i === 1 && (keys[i] as Uint8Array).length === pos + 1) {
        // The closing quote of a declared name: each may appear once.
        const prop = node.keyProp[i]!;
        return seen?.[prop] || node.never[prop] ? null : afterKey(obj, prop);
      }
      if (node.additional === null) {
        // Some name on this path must still be usable.
        let open = false;
        for (let k = i; k < j && !open; k++) {
          const p = node.keyProp[k]!;
          open = !seen?.[p] && !node.never[p];
        }
        if (!open) return null;
      }
      return new Frame(F_KEY, node, obj, 0, i, j, pos + 1, 0, null);
    }
    // Not a declared name: another property, if the schema allows them.
    if (node.additional === null) return null;
    return freeKeyByte(f, obj, b, lexState(keys[f.a] as Uint8Array, pos), false);
  }
  return freeKeyByte(f, obj, b, f.d, node.names.length === 0);
}

/** A key that is not a declared name: a plain string lexer (escapes only where no name is declared). */
function freeKeyByte(f: Frame, obj: Frame, b: number, state: number, escapes: boolean): Frame | null {
  let esc = state >> 2;
  let cont = state & 3;
  if (esc === 1) {
    if (b === 0x75) esc = 5;
    else if (isEscape(b)) esc = 0;
    else return null;
  } else if (esc > 1) {
    if (!isHex(b)) return null;
    esc = esc === 2 ? 0 : esc - 1;
  } else if (cont > 0) {
    if (b < 0x80 || b > 0xbf) return null;
    cont--;
  } else if (b === QUOTE) {
    return afterKey(obj, -1);
  } else if (b === BACKSLASH) {
    if (!escapes) return null;
    esc = 1;
  } else if (b < 0x80) {
    if (b < 0x20) return null;
    if (f.phase === 1 && state === 0) return f;
  } else {
    cont = utf8Continuations(b);
    if (cont === 0) return null;
  }
  return new Frame(F_KEY, f.node, obj, 1, 0, 0, 0, esc * 4 + cont, null);
}

/** The free-key lexer state after the first `n` bytes of a declared name (mid-escape, mid-character). */
function lexState(bytes: Uint8Array, n: number): number {
  let esc = 0;
  let cont = 0;
  for (let i = 0; i < n; i++) {
    const b = bytes[i]!;
    if (esc === 1) esc = b === 0x75 ? 5 : 0;
    else if (esc > 1) esc = esc === 2 ? 0 : esc - 1;
    else if (cont > 0) cont--;
    else if (b === BACKSLASH) esc = 1;
    else if (b >= 0x80) cont = utf8Continuations(b);
  }
  return esc * 4 + cont;
}

function arrayByte(f: Frame, b: number): Frame | null {
  const node = f.node as ArrNode;
  if (isWs(b)) return f.a < MAX_WHITESPACE ? frame(F_ARR, node, f.parent, f.phase, f.a + 1, f.b) : null;
  if (f.phase === 1) {
    if (b === COMMA) return f.b < node.maxItems ? frame(F_ARR, node, f.parent, 2, 0, f.b) : null;
    if (b === RBRACKET) return f.b >= node.minItems ? f.parent : null;
    return null;
  }
  if (b === RBRACKET) return f.phase === 0 && node.minItems === 0 ? f.parent : null;
  const item = f.b < node.maxItems ? itemNode(node, f.b) : null;
  return item ? startValue(item, b, frame(F_ARR, node, f.parent, 1, 0, f.b + 1)) : null;
}

function numberByte(f: Frame, b: number): Frame | null {
  const integer = (f.node as NumNode).integer;
  const digit = isDigit(b);
  switch (f.phase) {
    case N_MINUS:
      if (b === 0x30) return frame(F_NUM, f.node, f.parent, N_ZERO, 1);
      return digit ? frame(F_NUM, f.node, f.parent, N_INT, 1) : null;
    case N_ZERO:
    case N_INT:
      if (digit)
        return f.phase === N_INT && f.a < MAX_INT_DIGITS ? frame(F_NUM, f.node, f.parent, N_INT, f.a + 1) : null;
      if (b === 0x2e && !integer) return frame(F_NUM, f.node, f.parent, N_DOT);
      if ((b === 0x65 || b === 0x45) && !integer) return frame(F_NUM, f.node, f.parent, N_E);
      return step(f.parent as Frame, b);
    case N_DOT:
      return digit ? frame(F_NUM, f.node, f.parent, N_FRAC, 1) : null;
    case N_FRAC:
      if (digit) return f.a < MAX_FRAC_DIGITS ? frame(F_NUM, f.node, f.parent, N_FRAC, f.a + 1) : null;
      if (b === 0x65 || b === 0x45) return frame(F_NUM, f.node, f.parent, N_E);
      return step(f.parent as Frame, b);
    case N_E:
      if (b === 0x2b || b === 0x2d) return frame(F_NUM, f.node, f.parent, N_ESIGN);
      return digit ? frame(F_NUM, f.node, f.parent, N_EXP, 1) : null;
    case N_ESIGN:
      return digit ? frame(F_NUM, f.node, f.parent, N_EXP, 1) : null;
    default:
      if (digit) return f.a < MAX_EXP_DIGITS ? frame(F_NUM, f.node, f.parent, N_EXP, f.a + 1) : null;
      return step(f.parent as Frame, b);
  }
}

/** Whether the output may end here (the top-level value is complete). */
export function canEnd(f: Frame): boolean {
  let s: Frame | null = f;
  while (s) {
    if (s.kind === F_ROOT) return s.phase === 1;
    if (s.kind === F_NUM) {
      if (s.phase !== N_ZERO && s.phase !== N_INT && s.phase !== N_FRAC && s.phase !== N_EXP) return false;
    } else if (s.kind === F_LIT) {
      if (((s.node as LitNode).cands[s.a] as Uint8Array).length !== s.c) return false;
    } else return false;
    s = s.parent;
  }
  return false;
}

/** Whether the value is complete and nothing may follow it. */
function isDone(f: Frame): boolean {
  return f.kind === F_ROOT && f.phase === 1;
}

/** The start state for a grammar's top-level value. */
export function initialState(root: GrammarNode): Frame {
  return frame(F_ROOT, root, null);
}

/** Feeds bytes; null as soon as one is not allowed. */
export function stepBytes(f: Frame | null, bytes: ArrayLike<number>): Frame | null {
  for (let i = 0; i < bytes.length && f; i++) f = step(f, bytes[i] as number);
  return f;
}

// ---- grammars ----

export interface JsonGrammar {
  root: GrammarNode;
  /** Schema parts that are relaxed rather than enforced. */
  notes: string[];
}

/** The grammar a constraint asks for; throws SchemaError for a malformed schema. */
export function grammarFor(spec: ConstraintSpec): JsonGrammar {
  if (spec.kind === "json") return { root: ANY_OBJECT, notes: [] };
  if (spec.schema === null || spec.schema === undefined) return { root: ANY_VALUE, notes: [] };
  const compiled: CompiledSchema = compileJsonSchema(spec.schema);
  return compiled;
}

const encoder = new TextEncoder();

/** Whether `text` is a valid prefix of the grammar's language (tests, diagnostics). */
export function isValidPrefix(grammar: JsonGrammar, text: string): boolean {
  return stepBytes(initialState(grammar.root), encoder.encode(text)) !== null;
}

/** Whether `text` is a complete value of the grammar. */
export function isComplete(grammar: JsonGrammar, text: string): boolean {
  const f = stepBytes(initialState(grammar.root), encoder.encode(text));
  return f !== null && canEnd(f);
}

// ---- vocabulary trie ----

/**
 * The vocabulary as a byte trie, flattened in preorder: node n's subtree is
 * nodes [n, n + size[n]), its first child is n + 1 and the next sibling of a
 * child c is c + size[c]. Tokens are listed in the same order (`order`), so
 * the tokens of a subtree are order[tokStart[n] .. tokStart[n + size[n]]) and
 * those ending exactly at n are order[tokStart[n] .. tokStart[n + 1]).
 */
export class VocabTrie {
  /** Token ids that spell text, by id (null: never allowed inside the value). */
  readonly bytes: ReadonlyArray<Uint8Array | null>;
  readonly label: Uint8Array;
  readonly size: Int32Array;
  readonly tokStart: Int32Array;
  readonly order: Int32Array;
  /** Longest byte path from the node down, the node's own byte included. */
  readonly depth: Int32Array;
  /** 1 when the node's byte and all below are plain string characters. */
  readonly plain: Uint8Array;

  constructor(bytes: ReadonlyArray<Uint8Array | null>) {
    this.bytes = bytes;
    const ids: number[] = [];
    bytes.forEach((b, id) => {
      if (b && b.length > 0) ids.push(id);
    });
    ids.sort((x, y) => {
      const a = bytes[x] as Uint8Array;
      const b = bytes[y] as Uint8Array;
      const n = Math.min(a.length, b.length);
      for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
      return a.length - b.length || x - y;
    });
    // Sorted byte strings list the trie in preorder: each token adds the nodes past its common prefix with the previous.
    let total = 1;
    let prev: Uint8Array = new Uint8Array(0);
    for (const id of ids) {
      const cur = bytes[id] as Uint8Array;
      total += cur.length - commonPrefix(prev, cur);
      prev = cur;
    }
    const label = new Uint8Array(total);
    const size = new Int32Array(total);
    const tokStart = new Int32Array(total + 1);
    const path: number[] = [0];
    let nodes = 1;
    prev = new Uint8Array(0);
    ids.forEach((id, t) => {
      const cur = bytes[id] as Uint8Array;
      const keep = commonPrefix(prev, cur);
      while (path.length > keep + 1) {
        const n = path.pop() as number;
        size[n] = nodes - n;
      }
      for (let i = keep; i < cur.length; i++) {
        label[nodes] = cur[i] as number;
        tokStart[nodes] = t;
        path.push(nodes++);
      }
      prev = cur;
    });
    while (path.length > 0) {
      const n = path.pop() as number;
      size[n] = nodes - n;
    }
    tokStart[total] = ids.length;
    const depth = new Int32Array(total);
    const plain = new Uint8Array(total);
    for (let n = total - 1; n >= 1; n--) {
      let d = 0;
      let p = isPlainStringByte(label[n]!) ? 1 : 0;
      for (let c = n + 1; c < n + size[n]!; c += size[c]!) {
        d = Math.max(d, depth[c]!);
        if (!plain[c]) p = 0;
      }
      depth[n] = d + 1;
      plain[n] = p;
    }
    this.label = label;
    this.size = size;
    this.tokStart = tokStart;
    this.order = Int32Array.from(ids);
    this.depth = depth;
    this.plain = plain;
  }

  get nodeCount(): number {
    return this.label.length;
  }
}

function commonPrefix(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

/**
 * Marks in `out` (1 = allowed) every token whose bytes keep `state` a valid
 * prefix. Returns how many were marked. `out` must be zeroed by the caller.
 */
export function markAllowed(trie: VocabTrie, state: Frame, out: Uint8Array): number {
  const { label, size, tokStart, order, depth, plain } = trie;
  let marked = 0;
  const mark = (from: number, to: number) => {
    for (let i = from; i < to; i++) out[order[i]!] = 1;
    marked += to - from;
  };
  const nodes: number[] = [0];
  const states: Frame[] = [state];
  while (nodes.length > 0) {
    const n = nodes.pop() as number;
    const s = states.pop() as Frame;
    // Plain characters room left in a string with no escape or character pending (-1: not in one).
    let room = -1;
    if (s.kind === F_STR && s.b === 0 && s.c === 0) {
      const str = s.node as StrNode;
      room = str.free ? Number.MAX_SAFE_INTEGER : str.maxLength - s.a;
    } else if (s.kind === F_KEY && s.phase === 1 && s.d === 0) room = Number.MAX_SAFE_INTEGER;
    const end = n + size[n]!;
    for (let c = n + 1; c < end; c += size[c]!) {
      if (room >= 0 && plain[c] && depth[c]! <= room) {
        mark(tokStart[c]!, tokStart[c + size[c]!]!);
        continue;
      }
      const next = step(s, label[c]!);
      if (next === null) continue;
      mark(tokStart[c]!, tokStart[c + 1]!);
      if (size[c]! > 1) {
        nodes.push(c);
        states.push(next);
      }
    }
  }
  return marked;
}

// ---- per-sequence constraint ----

/** One sequence's constrained decoding: feed it the tokens, ask it for the next mask. */
export class JsonConstraint {
  readonly grammar: JsonGrammar;
  readonly trie: VocabTrie;
  /** Tokens allowed once the value is complete (end of turn). */
  readonly endIds: readonly number[];
  #state: Frame;
  #ended = false;

  constructor(grammar: JsonGrammar, trie: VocabTrie, endIds: readonly number[]) {
    this.grammar = grammar;
    this.trie = trie;
    this.endIds = endIds;
    this.#state = initialState(grammar.root);
  }

  get state(): Frame {
    return this.#state;
  }

  /** The value is complete and nothing but the end may follow. */
  get done(): boolean {
    return isDone(this.#state);
  }

  /** The value is complete (it may still go on, e.g. a top-level number). */
  get complete(): boolean {
    return canEnd(this.#state);
  }

  /** Advances by a generated token; false (state unchanged) if the token was not allowed. */
  accept(token: number): boolean {
    if (this.#ended) return false;
    if (this.endIds.includes(token)) {
      if (!canEnd(this.#state)) return false;
      this.#ended = true;
      return true;
    }
    const bytes = this.trie.bytes[token];
    if (!bytes) return false;
    const next = stepBytes(this.#state, bytes);
    if (!next) return false;
    this.#state = next;
    return true;
  }

  /** Advances by text already written (bytes); false (state unchanged) if it is not a valid continuation. */
  acceptText(text: string): boolean {
    const next = stepBytes(this.#state, encoder.encode(text));
    if (!next) return false;
    this.#state = next;
    return true;
  }

  /** Marks the allowed next tokens in `out` (zeroed by the caller, at least the tokenizer's vocabulary long). */
  allowed(out: Uint8Array): number {
    if (this.#ended) return 0;
    let n = markAllowed(this.trie, this.#state, out);
    if (canEnd(this.#state)) {
      for (const id of this.endIds) {
        if (id < out.length && !out[id]) {
          out[id] = 1;
          n++;
        }
      }
    }
    return n;
  }
}

// ---- per model ----

const GRAMMAR_CACHE = 64;

/** Builds constraints for one model: its vocabulary trie (built once) and recently used grammars. */
export class JsonConstraintFactory {
  readonly trie: VocabTrie;
  readonly #grammars = new Map<string, JsonGrammar>();

  /** `bytes`: token id → the bytes it spells, null for tokens never allowed in the text (tokenByteTable). */
  constructor(bytes: ReadonlyArray<Uint8Array | null>) {
    this.trie = new VocabTrie(bytes);
  }

  grammar(spec: ConstraintSpec): JsonGrammar {
    const key = JSON.stringify(spec.kind === "json" ? { kind: "json" } : { kind: spec.kind, schema: spec.schema });
    let grammar = this.#grammars.get(key);
    if (grammar) {
      this.#grammars.delete(key);
    } else {
      grammar = grammarFor(spec);
      if (this.#grammars.size >= GRAMMAR_CACHE) this.#grammars.delete(this.#grammars.keys().next().value as string);
    }
    this.#grammars.set(key, grammar);
    return grammar;
  }

  /** A sequence's constraint; `endIds` are the tokens that end the turn. Throws SchemaError for a bad schema or prefix. */
  create(spec: ConstraintSpec, endIds: readonly number[]): JsonConstraint {
    const constraint = new JsonConstraint(this.grammar(spec), this.trie, endIds);
    if (spec.prefix && !constraint.acceptText(spec.prefix))
      throw new SchemaError("the answer's given start is not valid under the response format");
    return constraint;
  }
}
