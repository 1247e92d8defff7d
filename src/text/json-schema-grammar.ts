// JSON Schema → the grammar nodes the JSON automaton (json-constraint.ts)
// walks. A practical subset is enforced exactly; what falls outside it is
// relaxed (to "any JSON value", or the keyword is ignored) and listed in
// `notes`, never rejected: the output is then valid JSON that may break the
// unsupported keyword.
//
// Enforced: type (one or a list), properties, required, additionalProperties
// (false or a schema), items / prefixItems (and draft-07 tuple items with
// additionalItems), minItems, maxItems, minLength, maxLength, enum, const,
// anyOf / oneOf whose branches start with different characters (e.g. a
// string or null), a one-branch allOf, and local $ref ("#", "#/$defs/...",
// "#/definitions/...", recursion included).
// Relaxed: pattern, format, minimum/maximum/multipleOf, min/maxProperties,
// patternProperties, uniqueItems, contains, not, if/then/else, allOf with
// several branches, anyOf branches that start alike (that first character
// allows any value of its kind), remote $ref.
// Over 400 lines: one case per supported keyword family, each small; splitting them would
// scatter the one recursive compile.

export const ANY = 0;
export const NEVER = 1;
export const OBJ = 2;
export const ARR = 3;
export const STR = 4;
export const NUM = 5;
export const LIT = 6;
export const UNION = 7;
export const REF = 8;

export interface AnyNode {
  k: typeof ANY;
}
export interface NeverNode {
  k: typeof NEVER;
}
export interface ObjNode {
  k: typeof OBJ;
  /** Declared property names (index = property index). */
  names: string[];
  values: GrammarNode[];
  /** 1 where the property is required. */
  required: Uint8Array;
  requiredCount: number;
  /** Keys as they are written: JSON-escaped name plus the closing quote, sorted bytewise. */
  keys: Uint8Array[];
  /** keys[i] → property index. */
  keyProp: Int32Array;
  /** Schema of other properties; null: none allowed (additionalProperties: false). */
  additional: GrammarNode | null;
  /** 1 where the property's schema allows no value (false): its key may not be written. */
  never: Uint8Array;
  /** Declared properties that may be written (names.length less the `never` ones). */
  usable: number;
}
export interface ArrNode {
  k: typeof ARR;
  prefix: GrammarNode[];
  /** Items after the prefix; null: none. */
  items: GrammarNode | null;
  minItems: number;
  maxItems: number;
}
export interface StrNode {
  k: typeof STR;
  minLength: number;
  maxLength: number;
  /** No length limits: the automaton need not count characters. */
  free: boolean;
}
export interface NumNode {
  k: typeof NUM;
  integer: boolean;
}
/** One of a few exact JSON texts (enum, const, true/false/null), sorted bytewise. */
export interface LitNode {
  k: typeof LIT;
  cands: Uint8Array[];
}
/** The value's first byte picks the branch. */
export interface UnionNode {
  k: typeof UNION;
  byStart: Array<GrammarNode | null>;
}
/** A schema referred to while it was being compiled (recursion): `target` is set once it is done. */
export interface RefNode {
  k: typeof REF;
  target: GrammarNode | null;
}
export type GrammarNode = AnyNode | NeverNode | ObjNode | ArrNode | StrNode | NumNode | LitNode | UnionNode | RefNode;

export class SchemaError extends Error {
  override readonly name = "SchemaError";
}

const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder();

function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return a.length - b.length;
}

function literalNode(texts: string[]): LitNode {
  const unique = [...new Set(texts)];
  return { k: LIT, cands: unique.map((t) => utf8.encode(t)).sort(compareBytes) };
}

// ---- any JSON value ----

const FREE_STRING: StrNode = { k: STR, minLength: 0, maxLength: Number.POSITIVE_INFINITY, free: true };
const NUMBER: NumNode = { k: NUM, integer: false };
const INTEGER: NumNode = { k: NUM, integer: true };
const BOOLEAN = literalNode(["true", "false"]);
const NULL = literalNode(["null"]);

function emptyObject(additional: GrammarNode | null): ObjNode {
  return {
    k: OBJ,
    names: [],
    values: [],
    required: new Uint8Array(0),
    requiredCount: 0,
    keys: [],
    keyProp: new Int32Array(0),
    additional,
    never: new Uint8Array(0),
    usable: 0,
  };
}

/** Any JSON value, dispatched on its first byte. */
export const ANY_VALUE: UnionNode = { k: UNION, byStart: new Array(256).fill(null) };
/** Any JSON object. */
export const ANY_OBJECT: ObjNode = emptyObject(ANY_VALUE);
const ANY_ARRAY: ArrNode = { k: ARR, prefix: [], items: ANY_VALUE, minItems: 0, maxItems: Number.POSITIVE_INFINITY };

/** Follows references (all are resolved once compiling is over). */
function deref(node: GrammarNode): GrammarNode {
  let n = node;
  for (let hops = 0; n.k === REF; hops++) {
    if (!n.target || hops > 64) throw new SchemaError("a $ref refers to itself without any schema in between");
    n = n.target;
  }
  return n;
}

function startBytes(node: GrammarNode): number[] {
  switch (node.k) {
    case REF:
      return startBytes(deref(node));
    case ANY:
      return startBytes(ANY_VALUE);
    case NEVER:
      return [];
    case OBJ:
      return [0x7b];
    case ARR:
      return [0x5b];
    case STR:
      return [0x22];
    case NUM:
      return [0x2d, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39];
    case LIT:
      return [...new Set(node.cands.map((c) => c[0]!))];
    case UNION:
      return node.byStart.flatMap((n, b) => (n ? [b] : []));
  }
}

/** What any value starting with this byte may be (the fallback where anyOf branches overlap). */
function anyStartingWith(b: number): GrammarNode | null {
  return ANY_VALUE.byStart[b] ?? null;
}

// The table refers to nodes that refer back to it (ANY_OBJECT's values): filled once they exist.
for (const [node, bytes] of [
  [ANY_OBJECT, startBytes(ANY_OBJECT)],
  [ANY_ARRAY, startBytes(ANY_ARRAY)],
  [FREE_STRING, startBytes(FREE_STRING)],
  [NUMBER, startBytes(NUMBER)],
] as const) {
  for (const b of bytes) ANY_VALUE.byStart[b] = node;
}
ANY_VALUE.byStart[0x74] = literalNode(["true"]);
ANY_VALUE.byStart[0x66] = literalNode(["false"]);
ANY_VALUE.byStart[0x6e] = NULL;

// ---- compiler ----

export interface CompiledSchema {
  root: GrammarNode;
  /** Parts of the schema that are not enforced (relaxed), with their JSON pointer. */
  notes: string[];
}

const MAX_NODES = 20_000;

const IGNORED_KEYWORDS: Record<string, string> = {
  pattern: "pattern is not enforced (any string)",
  format: "format is not enforced (any string)",
  minimum: "numeric bounds are not enforced",
  maximum: "numeric bounds are not enforced",
  exclusiveMinimum: "numeric bounds are not enforced",
  exclusiveMaximum: "numeric bounds are not enforced",
  multipleOf: "multipleOf is not enforced",
  minProperties: "minProperties/maxProperties are not enforced",
  maxProperties: "minProperties/maxProperties are not enforced",
  patternProperties: "patternProperties is not enforced (such keys take additionalProperties)",
  propertyNames: "propertyNames is not enforced",
  dependentRequired: "dependentRequired is not enforced",
  dependentSchemas: "dependentSchemas is not enforced",
  uniqueItems: "uniqueItems is not enforced",
  contains: "contains is not enforced",
  not: "not is not enforced",
  if: "if/then/else is not enforced",
  unevaluatedProperties: "unevaluatedProperties is not enforced",
  unevaluatedItems: "unevaluatedItems is not enforced",
};

const TYPES = ["object", "array", "string", "number", "integer", "boolean", "null"] as const;
type TypeName = (typeof TYPES)[number];

type Schema = Record<string, unknown>;

const isSchemaObject = (v: unknown): v is Schema => typeof v === "object" && v !== null && !Array.isArray(v);

/** anyOf branches, dispatched once every schema is compiled (a branch may be a reference still being compiled). */
interface PendingUnion {
  node: UnionNode;
  branches: GrammarNode[];
  path: string;
  state: "pending" | "building" | "done";
}

class Compiler {
  readonly notes: string[] = [];
  readonly #root: unknown;
  readonly #memo = new Map<object, GrammarNode>();
  readonly #unions = new Map<UnionNode, PendingUnion>();
  readonly #refs: RefNode[] = [];
  readonly #objects: Array<{ node: ObjNode; path: string }> = [];
  readonly #arrays: Array<{ node: ArrNode; path: string }> = [];
  #nodes = 0;

  constructor(root: unknown) {
    this.#root = root;
  }

  note(path: string, text: string): void {
    const line = `${path || "/"}: ${text}`;
    if (!this.notes.includes(line)) this.notes.push(line);
  }

  compile(schema: unknown, path: string): GrammarNode {
    if (schema === true || schema === undefined) return ANY_VALUE;
    if (schema === false) return { k: NEVER };
    if (!isSchemaObject(schema)) throw new SchemaError(`${path || "/"}: a schema must be an object or a boolean`);
    const known = this.#memo.get(schema);
    if (known) return known;
    if (++this.#nodes > MAX_NODES) throw new SchemaError("the schema is too large");
    // What refers to this schema while it compiles (recursion) gets a reference, resolved below.
    const ref: RefNode = { k: REF, target: null };
    this.#refs.push(ref);
    this.#memo.set(schema, ref);
    const node = this.#compileObject(schema, path);
    ref.target = node;
    this.#memo.set(schema, node);
    return node;
  }

  /** Builds every anyOf dispatch table, now that all references are resolved. */
  finish(): void {
    // A reference cycle with no schema in between throws here rather than while decoding.
    for (const r of this.#refs) deref(r);
    for (const u of this.#unions.values()) this.#build(u);
    // A property whose schema allows nothing: its key would lead nowhere, so it is never written.
    for (const { node, path } of this.#objects) {
      node.values.forEach((v, i) => {
        if (deref(v).k !== NEVER) return;
        if (node.required[i]) throw new SchemaError(`${path}: "${node.names[i]}" is required but allows no value`);
        node.never[i] = 1;
        node.usable--;
      });
    }
    // Likewise the array ends before an item that allows nothing.
    for (const { node, path } of this.#arrays) {
      const stop = node.prefix.findIndex((p) => deref(p).k === NEVER);
      if (stop >= 0) node.maxItems = Math.min(node.maxItems, stop);
      else if (node.items && deref(node.items).k === NEVER) node.maxItems = Math.min(node.maxItems, node.prefix.length);
      if (node.minItems > node.maxItems) throw new SchemaError(`${path}: minItems is more than the items allowed`);
    }
  }

  #compileObject(s: Schema, path: string): GrammarNode {
    for (const key of Object.keys(s)) {
      const why = IGNORED_KEYWORDS[key];
      if (why) this.note(path, why);
    }
    if (typeof s.$ref === "string") return this.#ref(s.$ref, path);
    if ("const" in s) return literalNode([canonical(s.const)]);
    if (Array.isArray(s.enum)) {
      if (s.enum.length === 0) return { k: NEVER };
      return literalNode(s.enum.map(canonical));
    }
    const branches = Array.isArray(s.anyOf) ? s.anyOf : Array.isArray(s.oneOf) ? s.oneOf : null;
    if (branches) {
      const key = Array.isArray(s.anyOf) ? "anyOf" : "oneOf";
      const nodes = branches.map((b, i) => this.compile(b, `${path}/${key}/${i}`));
      return this.#union(nodes, `${path}/${key}`);
    }
    if (Array.isArray(s.allOf)) {
      if (s.allOf.length === 1) return this.compile(s.allOf[0], `${path}/allOf/0`);
      this.note(`${path}/allOf`, "allOf with several schemas is not enforced (any JSON value)");
      return ANY_VALUE;
    }
    let types: TypeName[];
    if (typeof s.type === "string") types = [this.#typeName(s.type, path)];
    else if (Array.isArray(s.type)) types = s.type.map((t) => this.#typeName(t, path));
    else if (s.properties !== undefined || s.required !== undefined || s.additionalProperties !== undefined)
      types = ["object"];
    else if (s.items !== undefined || s.prefixItems !== undefined) types = ["array"];
    else return ANY_VALUE;
    // integer is a kind of number: with both, any number.
    if (types.includes("number")) types = types.filter((t) => t !== "integer");
    const nodes = [...new Set(types)].map((t) => this.#typed(t, s, path));
    return nodes.length === 1 ? (nodes[0] as GrammarNode) : this.#union(nodes, `${path}/type`);
  }

  #typeName(t: unknown, path: string): TypeName {
    if (typeof t !== "string" || !(TYPES as readonly string[]).includes(t))
      throw new SchemaError(`${path}/type: unknown type ${JSON.stringify(t)}`);
    return t as TypeName;
  }

  #typed(type: TypeName, s: Schema, path: string): GrammarNode {
    switch (type) {
      case "object":
        return this.#object(s, path);
      case "array":
        return this.#array(s, path);
      case "string": {
        const minLength = count(s.minLength, 0, `${path}/minLength`);
        const maxLength = count(s.maxLength, Number.POSITIVE_INFINITY, `${path}/maxLength`);
        if (minLength > maxLength) throw new SchemaError(`${path}: minLength is more than maxLength`);
        if (minLength === 0 && maxLength === Number.POSITIVE_INFINITY) return FREE_STRING;
        return { k: STR, minLength, maxLength, free: false };
      }
      case "number":
        return NUMBER;
      case "integer":
        return INTEGER;
      case "boolean":
        return BOOLEAN;
      case "null":
        return NULL;
    }
  }

  #object(s: Schema, path: string): ObjNode {
    const props = s.properties === undefined ? {} : s.properties;
    if (!isSchemaObject(props)) throw new SchemaError(`${path}/properties: must be an object`);
    const names = Object.keys(props);
    const values = names.map((n) => this.compile(props[n], `${path}/properties/${pointerToken(n)}`));
    let additional: GrammarNode | null;
    if (s.additionalProperties === false) additional = null;
    else if (s.additionalProperties === undefined || s.additionalProperties === true) additional = ANY_VALUE;
    else additional = this.compile(s.additionalProperties, `${path}/additionalProperties`);
    if (additional?.k === NEVER) additional = null;
    const requiredNames = s.required === undefined ? [] : s.required;
    if (!Array.isArray(requiredNames) || requiredNames.some((r) => typeof r !== "string"))
      throw new SchemaError(`${path}/required: must be an array of strings`);
    for (const r of requiredNames as string[]) {
      if (names.includes(r)) continue;
      // A required key that is not declared takes the schema of other properties.
      if (additional === null) throw new SchemaError(`${path}/required: "${r}" is required but not allowed`);
      names.push(r);
      values.push(additional);
    }
    const required = new Uint8Array(names.length);
    for (const r of requiredNames as string[]) required[names.indexOf(r)] = 1;
    const keyed = names
      .map((n, i) => ({ bytes: utf8.encode(`${JSON.stringify(n).slice(1)}`), i }))
      .sort((a, b) => compareBytes(a.bytes, b.bytes));
    const node: ObjNode = {
      k: OBJ,
      names,
      values,
      required,
      requiredCount: required.reduce((n, r) => n + r, 0),
      keys: keyed.map((k) => k.bytes),
      keyProp: Int32Array.from(keyed.map((k) => k.i)),
      additional,
      never: new Uint8Array(names.length),
      usable: names.length,
    };
    this.#objects.push({ node, path });
    return node;
  }

  #array(s: Schema, path: string): ArrNode {
    let prefix: GrammarNode[] = [];
    let items: GrammarNode | null = ANY_VALUE;
    if (Array.isArray(s.prefixItems)) {
      prefix = s.prefixItems.map((p, i) => this.compile(p, `${path}/prefixItems/${i}`));
      if (s.items !== undefined) items = s.items === false ? null : this.compile(s.items, `${path}/items`);
    } else if (Array.isArray(s.items)) {
      // Draft-07 tuples.
      prefix = s.items.map((p, i) => this.compile(p, `${path}/items/${i}`));
      if (s.additionalItems !== undefined)
        items = s.additionalItems === false ? null : this.compile(s.additionalItems, `${path}/additionalItems`);
    } else if (s.items !== undefined) {
      items = s.items === false ? null : this.compile(s.items, `${path}/items`);
    }
    if (items?.k === NEVER) items = null;
    const minItems = count(s.minItems, 0, `${path}/minItems`);
    let maxItems = count(s.maxItems, Number.POSITIVE_INFINITY, `${path}/maxItems`);
    if (items === null) maxItems = Math.min(maxItems, prefix.length);
    const node: ArrNode = { k: ARR, prefix, items, minItems, maxItems };
    this.#arrays.push({ node, path });
    return node;
  }

  #union(nodes: GrammarNode[], path: string): GrammarNode {
    if (nodes.some(isAnyValue)) return ANY_VALUE;
    const live = nodes.filter((n) => n.k !== NEVER);
    if (live.length === 0) return { k: NEVER };
    if (live.length === 1) return live[0] as GrammarNode;
    const node: UnionNode = { k: UNION, byStart: new Array(256).fill(null) };
    this.#unions.set(node, { node, branches: live, path, state: "pending" });
    return node;
  }

  /** Branches whose first bytes differ are exact; where they overlap, that byte allows any value of its kind. */
  #build(u: PendingUnion): void {
    if (u.state === "done") return;
    if (u.state === "building") throw new SchemaError(`${u.path}: an anyOf contains itself`);
    u.state = "building";
    const byStart = u.node.byStart;
    const owners: Array<GrammarNode[]> = Array.from({ length: 256 }, () => []);
    for (const branch of u.branches) {
      const n = deref(branch);
      if (n.k === UNION) {
        const inner = this.#unions.get(n);
        if (inner) this.#build(inner);
        n.byStart.forEach((m, b) => {
          if (m && !owners[b]!.includes(m)) owners[b]!.push(m);
        });
      } else {
        for (const b of startBytes(n)) if (!owners[b]!.includes(n)) owners[b]!.push(n);
      }
    }
    let overlap = false;
    owners.forEach((o, b) => {
      if (o.length === 1) byStart[b] = o[0] as GrammarNode;
      else if (o.length > 1) {
        const lits = o.every((n) => n.k === LIT);
        // Literals merge exactly (enums of several branches).
        if (lits) byStart[b] = literalNode(o.flatMap((n) => (n as LitNode).cands.map((c) => utf8Decoder.decode(c))));
        else {
          overlap = true;
          byStart[b] = anyStartingWith(b);
        }
      }
    });
    if (overlap) this.note(u.path, "branches that start alike are not told apart (any value of that kind)");
    u.state = "done";
  }

  #ref(ref: string, path: string): GrammarNode {
    if (ref !== "#" && !ref.startsWith("#/")) {
      this.note(path, `$ref ${JSON.stringify(ref)} is not resolved (only local references): any JSON value`);
      return ANY_VALUE;
    }
    let target: unknown = this.#root;
    const segments = ref === "#" ? [] : ref.slice(2).split("/");
    for (const raw of segments) {
      const key = decodeURIComponent(raw).replaceAll("~1", "/").replaceAll("~0", "~");
      target = typeof target === "object" && target !== null ? (target as Record<string, unknown>)[key] : undefined;
      if (target === undefined) throw new SchemaError(`${path}/$ref: ${JSON.stringify(ref)} points to nothing`);
    }
    return this.compile(target, ref.slice(1));
  }
}

function isAnyValue(n: GrammarNode): boolean {
  return n.k === ANY || n === ANY_VALUE;
}

function pointerToken(name: string): string {
  return name.replaceAll("~", "~0").replaceAll("/", "~1");
}

function count(v: unknown, fallback: number, path: string): number {
  if (v === undefined) return fallback;
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0)
    throw new SchemaError(`${path}: must be a non-negative integer`);
  return v;
}

/** A value as the model must write it for enum/const: compact JSON (key order as given). */
function canonical(v: unknown): string {
  const text = JSON.stringify(v);
  if (text === undefined) throw new SchemaError("enum/const values must be JSON values");
  return text;
}

/** Compiles a JSON Schema (an object or a boolean); throws SchemaError when it is malformed. */
export function compileJsonSchema(schema: unknown): CompiledSchema {
  const c = new Compiler(schema);
  const root = c.compile(schema, "");
  c.finish();
  return { root: deref(root), notes: c.notes };
}
