// An independent validator for the JSON Schema subset that constrained
// decoding enforces, written straight from the specification (no code shared
// with src/text/json-schema-grammar.ts), so that tests check the automaton
// against something else. Returns the violations (empty: valid).

type Schema = boolean | Record<string, unknown>;

function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => deepEqual(x, b[i]));
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  return (
    ka.length === kb.length &&
    ka.every(
      (k) => Object.hasOwn(b, k) && deepEqual((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]),
    )
  );
}

function typeOk(value: unknown, type: string): boolean {
  switch (type) {
    case "object":
      return typeof value === "object" && value !== null && !Array.isArray(value);
    case "array":
      return Array.isArray(value);
    case "string":
      return typeof value === "string";
    case "number":
      return typeof value === "number" && Number.isFinite(value);
    case "integer":
      return typeof value === "number" && Number.isInteger(value);
    case "boolean":
      return typeof value === "boolean";
    case "null":
      return value === null;
    default:
      return false;
  }
}

function resolve(root: Schema, ref: string): Schema {
  if (ref === "#") return root;
  let target: unknown = root;
  for (const part of ref.slice(2).split("/")) {
    target = (target as Record<string, unknown>)[part.replaceAll("~1", "/").replaceAll("~0", "~")];
  }
  return target as Schema;
}

export function validate(value: unknown, schema: Schema, root: Schema = schema, path = "$"): string[] {
  if (schema === true) return [];
  if (schema === false) return [`${path}: no value is allowed`];
  const s = schema;
  const errors: string[] = [];
  if (typeof s.$ref === "string") return validate(value, resolve(root, s.$ref), root, path);
  if ("const" in s && !deepEqual(value, s.const)) errors.push(`${path}: not the const`);
  if (Array.isArray(s.enum) && !s.enum.some((e) => deepEqual(e, value))) errors.push(`${path}: not in the enum`);
  if (Array.isArray(s.anyOf) && !s.anyOf.some((b) => validate(value, b as Schema, root, path).length === 0))
    errors.push(`${path}: no anyOf branch matches`);
  if (
    Array.isArray(s.oneOf) &&
    s.oneOf.filter((b) => validate(value, b as Schema, root, path).length === 0).length !== 1
  )
    errors.push(`${path}: not exactly one oneOf branch matches`);
  if (Array.isArray(s.allOf)) for (const b of s.allOf) errors.push(...validate(value, b as Schema, root, path));
  if (s.type !== undefined) {
    const types = Array.isArray(s.type) ? (s.type as string[]) : [s.type as string];
    if (!types.some((t) => typeOk(value, t))) errors.push(`${path}: not of type ${types.join("|")}`);
  }
  if (typeOk(value, "object")) {
    const obj = value as Record<string, unknown>;
    const props = (s.properties ?? {}) as Record<string, Schema>;
    for (const r of (s.required ?? []) as string[]) if (!Object.hasOwn(obj, r)) errors.push(`${path}: missing ${r}`);
    for (const [k, v] of Object.entries(obj)) {
      if (Object.hasOwn(props, k)) errors.push(...validate(v, props[k] as Schema, root, `${path}.${k}`));
      else if (s.additionalProperties !== undefined)
        errors.push(...validate(v, s.additionalProperties as Schema, root, `${path}.${k}`));
    }
  }
  if (Array.isArray(value)) {
    const prefix = (Array.isArray(s.prefixItems) ? s.prefixItems : Array.isArray(s.items) ? s.items : []) as Schema[];
    const rest = (Array.isArray(s.prefixItems) ? s.items : Array.isArray(s.items) ? s.additionalItems : s.items) as
      | Schema
      | undefined;
    value.forEach((v, i) => {
      const sub = i < prefix.length ? prefix[i] : rest;
      if (sub !== undefined) errors.push(...validate(v, sub, root, `${path}[${i}]`));
    });
    if (typeof s.minItems === "number" && value.length < s.minItems) errors.push(`${path}: too few items`);
    if (typeof s.maxItems === "number" && value.length > s.maxItems) errors.push(`${path}: too many items`);
  }
  if (typeof value === "string") {
    const length = [...value].length;
    if (typeof s.minLength === "number" && length < s.minLength) errors.push(`${path}: too short`);
    if (typeof s.maxLength === "number" && length > s.maxLength) errors.push(`${path}: too long`);
  }
  return errors;
}
