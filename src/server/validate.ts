// Request validation with compiled TypeBox checks and short error messages
// that name the field ("messages[0].content: expected a string, an array or
// null"). Route handlers validate themselves instead of through Elysia's body
// schema, whose error builds a pretty-printed copy of the whole body: for a
// deeply nested body that is hundreds of megabytes and seconds of CPU.
import type { Static, TSchema } from "@sinclair/typebox";
import { type TypeCheck, TypeCompiler } from "@sinclair/typebox/compiler";
import { type ValueError, ValueErrorType } from "@sinclair/typebox/errors";
import { badRequest } from "./errors";

const compiled = new WeakMap<TSchema, TypeCheck<TSchema>>();

function checker<S extends TSchema>(schema: S): TypeCheck<S> {
  let check = compiled.get(schema);
  if (!check) {
    check = TypeCompiler.Compile(schema);
    compiled.set(schema, check);
  }
  return check as TypeCheck<S>;
}

/** How a field is named in errors: "messages[0].content" (OpenAI's `param`) or "messages.0.content" (Anthropic's). */
export type FieldStyle = "brackets" | "dots";

/** "/messages/0/content" → "messages[0].content" or "messages.0.content". */
function fieldName(pointer: string, prefix = "", style: FieldStyle = "brackets"): string {
  let out = prefix;
  for (const raw of pointer.split("/").slice(1)) {
    const part = raw.replace(/~1/g, "/").replace(/~0/g, "~");
    if (style === "brackets" && /^\d+$/.test(part)) out += `[${part}]`;
    else out += out ? `.${part}` : part;
  }
  return out;
}

/** A short human description of what a schema accepts. */
function describe(schema: TSchema): string {
  const s = schema as { anyOf?: TSchema[]; const?: unknown; type?: string };
  if (s.anyOf) {
    const parts = [...new Set(s.anyOf.map(describe))];
    return parts.length > 1 ? `${parts.slice(0, -1).join(", ")} or ${parts.at(-1)}` : (parts[0] ?? "a valid value");
  }
  if (s.const !== undefined) return JSON.stringify(s.const);
  switch (s.type) {
    case "string":
      return "a string";
    case "number":
      return "a number";
    case "integer":
      return "an integer";
    case "boolean":
      return "a boolean";
    case "null":
      return "null";
    case "array":
      return "an array";
    case "object":
      return "an object";
    default:
      return "a valid value";
  }
}

/**
 * A union error (e.g. a nullable field) says only "expected an array or
 * null". When one member got further into the value (the array's item 0 is
 * missing a field), its error names the field at fault: report that one.
 */
function deepestUnionError(error: ValueError, depth = 0): ValueError {
  if (error.type !== ValueErrorType.Union || depth > 8) return error;
  let best: ValueError | null = null;
  for (const member of error.errors) {
    const first = member.First();
    if (first && first.path.length > (best?.path.length ?? error.path.length)) best = first;
  }
  return best ? deepestUnionError(best, depth + 1) : error;
}

/** Checks `value` against `schema`; throws a 400 naming the first bad field. */
export function validate<S extends TSchema>(
  schema: S,
  value: unknown,
  prefix = "",
  style: FieldStyle = "brackets",
): Static<S> {
  const check = checker(schema);
  if (check.Check(value)) return value as Static<S>;
  const found = check.Errors(value).First();
  if (!found) throw badRequest("invalid request body");
  const first = deepestUnionError(found);
  const field = fieldName(first.path, prefix, style);
  let what: string;
  if (first.type === ValueErrorType.Union) {
    what = `expected ${describe(first.schema)}`;
  } else if (first.type === ValueErrorType.ObjectRequiredProperty) {
    what = "is required";
  } else {
    what = first.message.charAt(0).toLowerCase() + first.message.slice(1);
  }
  if (!field) throw badRequest(`the request body: ${what}`);
  throw badRequest(`${field}: ${what}`, field);
}

/**
 * Deepest nesting a request may have. Real ones (JSON Schemas of tools
 * included) stay far below; a deeper one would overflow the stack of
 * JSON.stringify and of recursive checks further on.
 */
const MAX_NESTING = 128;

/** Throws a 400 when arrays and objects in `value` nest deeper than `max` (iterative: no recursion). */
export function requireShallow(value: unknown, max = MAX_NESTING): void {
  const stack: Array<[unknown, number]> = [[value, 1]];
  while (stack.length > 0) {
    const [v, depth] = stack.pop() as [unknown, number];
    if (!v || typeof v !== "object") continue;
    if (depth > max) throw badRequest(`the request nests arrays and objects deeper than ${max} levels`);
    for (const child of Array.isArray(v) ? v : Object.values(v)) {
      if (child && typeof child === "object") stack.push([child, depth + 1]);
    }
  }
}

/**
 * Elysia hands over whatever the body parsed to (a string for text/plain):
 * only a JSON object is a request, and only a reasonably shallow one.
 */
export function requireObject(body: unknown): Record<string, unknown> {
  if (!body || typeof body !== "object" || Array.isArray(body))
    throw badRequest("the request body must be a JSON object (Content-Type: application/json)");
  requireShallow(body);
  return body as Record<string, unknown>;
}
