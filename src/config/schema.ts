// Pensieve's configuration: one TypeBox schema (types, limits, defaults) and,
// per key, its environment variable and command-line flag.
//
//   key               env                           flag                  default
//   host              PENSIEVE_HOST                 --host                "127.0.0.1"
//   port              PENSIEVE_PORT                 --port                7777
//   apiKey            PENSIEVE_API_KEY              --api-key             null (no auth; --no-api-key)
//   corsOrigins       PENSIEVE_CORS_ORIGINS (a,b)   --cors-origin (repeat) [] (no cross-origin)
//   bodyLimitBytes    PENSIEVE_BODY_LIMIT_BYTES     --body-limit-bytes    8 MiB
//   model             PENSIEVE_MODEL                --model               "smollm2-135m"
//   maxContext        PENSIEVE_MAX_CONTEXT          --max-context         null (automatic)
//   kvBudgetBytes     PENSIEVE_KV_BUDGET_BYTES      --kv-budget-bytes     null (automatic)
//   maxConcurrent     PENSIEVE_MAX_CONCURRENT       --max-concurrent      8 (CPU), 32 (GPU)
//   queueSize         PENSIEVE_QUEUE_SIZE           --queue-size          64
//   prefixCacheBytes  PENSIEVE_PREFIX_CACHE_BYTES   --prefix-cache-bytes  null (the KV pool bounds it)
//   prefixDiskBytes   PENSIEVE_PREFIX_DISK_BYTES    --prefix-disk-bytes   null (automatic)
//   kvBits            PENSIEVE_KV_BITS              --kv-bits             null (automatic: float, 8-bit when memory is short)
//   speculative       PENSIEVE_SPECULATIVE          --speculative         null (on; GPU: short drafts, up to 32,768 tokens)
//   draftModel        PENSIEVE_DRAFT_MODEL          --draft-model         null (none; prompt lookup only)
//   strictModelNames  PENSIEVE_STRICT_MODEL_NAMES   --strict-model-names  false
//   logLevel          PENSIEVE_LOG_LEVEL            --log-level           "info"
//   logFormat         PENSIEVE_LOG_FORMAT           --log-format          "json"
//   backend           PENSIEVE_BACKEND              --backend             "auto"
//   threads           PENSIEVE_THREADS              --threads             null (automatic)
//
// Values from the environment and flags are text: numbers are decimal, sizes
// also accept units (512MiB, 2GiB, 1.5GB; K/M/G alone are binary), booleans
// true/false/1/0/yes/no/on/off, and "auto", "null" or "" set a nullable key to
// null. In the file, sizes may be numbers or such strings.
import { type Static, type TSchema, Type } from "@sinclair/typebox";
import { DEFAULT_MODEL_ALIAS } from "../hub/aliases";

const nullable = <T extends TSchema>(schema: T, description: string) =>
  Type.Union([schema, Type.Null()], { default: null, description });

export const ConfigSchema = Type.Object(
  {
    host: Type.String({ minLength: 1, default: "127.0.0.1", description: "Address to listen on" }),
    port: Type.Integer({ minimum: 1, maximum: 65535, default: 7777, description: "TCP port" }),
    apiKey: nullable(Type.String({ minLength: 1 }), "Bearer token clients must send; null: no authentication"),
    corsOrigins: Type.Array(Type.String({ minLength: 1 }), {
      default: [],
      description: 'Origins allowed to call from a browser ("*" for any); empty: no cross-origin access',
    }),
    bodyLimitBytes: Type.Integer({
      minimum: 1024,
      default: 8 * 1024 * 1024,
      description: "Largest request body accepted",
    }),
    model: Type.String({
      minLength: 1,
      default: DEFAULT_MODEL_ALIAS,
      description: "Alias, Hugging Face repo id (org/name) or local path",
    }),
    maxContext: nullable(
      Type.Integer({ minimum: 256 }),
      "Context length cap (sizes the KV cache); null: the largest that fits in memory",
    ),
    kvBudgetBytes: nullable(Type.Integer({ minimum: 1 }), "Memory for KV caches; null: automatic"),
    maxConcurrent: nullable(
      Type.Integer({ minimum: 1, maximum: 1024 }),
      "Sequences generated at once; null: 8 on the CPU, 32 on a GPU",
    ),
    queueSize: Type.Integer({
      minimum: 0,
      maximum: 1_000_000,
      default: 64,
      description: "Requests waiting beyond maxConcurrent; more get 429 with Retry-After",
    }),
    prefixCacheBytes: nullable(
      Type.Integer({ minimum: 0 }),
      "Cap on cached prefixes inside the KV pool; null: the pool alone bounds them; 0: no prefix cache",
    ),
    prefixDiskBytes: nullable(
      Type.Integer({ minimum: 0 }),
      "Disk for cached prefixes kept across restarts; null: up to 16 GiB and a quarter of the free disk; 0: off",
    ),
    kvBits: nullable(
      Type.Union([Type.Literal(0), Type.Literal(8), Type.Literal(4)]),
      "KV cache storage: 0 float, 8 or 4 group-quantized bits; null: automatic",
    ),
    speculative: nullable(
      Type.Boolean(),
      "Prompt-lookup speculative decoding for a lone decoding stream (requests may opt out with speculative: false); null: on (on a GPU, for models whose layers take the fused verify kernels: drafts of at most 3 tokens through them, chosen by cost, up to 32,768 tokens of context)",
    ),
    draftModel: nullable(
      Type.String({ minLength: 1 }),
      "A small model of the same tokenizer that drafts tokens for speculative decoding where prompt lookup finds nothing (alias, repo id or path); null: none",
    ),
    strictModelNames: Type.Boolean({
      default: false,
      description: "Reject requests naming another model (default: serve the loaded one)",
    }),
    logLevel: Type.Union([Type.Literal("debug"), Type.Literal("info"), Type.Literal("warn"), Type.Literal("error")], {
      default: "info",
      description: "Least severe log level written",
    }),
    logFormat: Type.Union([Type.Literal("json"), Type.Literal("pretty")], {
      default: "json",
      description: "json: one object per line; pretty: for people",
    }),
    backend: Type.Union([Type.Literal("auto"), Type.Literal("cpu"), Type.Literal("cuda"), Type.Literal("metal")], {
      default: "auto",
      description: "MLX backend; auto: from the hardware",
    }),
    threads: nullable(
      Type.Integer({ minimum: 1, maximum: 256 }),
      "Threads of the CPU kernels; null: every core for large products, one for small ones",
    ),
  },
  { additionalProperties: false },
);

export type PensieveConfig = Static<typeof ConfigSchema>;
export type ConfigKey = keyof PensieveConfig;

/** How text from the environment or a flag becomes a value. */
export type ValueKind = "string" | "integer" | "bytes" | "boolean" | "list" | "enum";

export interface KeyInfo {
  key: ConfigKey;
  env: string;
  flag: string;
  kind: ValueKind;
  nullable: boolean;
  schema: TSchema;
}

const KINDS: Record<ConfigKey, ValueKind> = {
  host: "string",
  port: "integer",
  apiKey: "string",
  corsOrigins: "list",
  bodyLimitBytes: "bytes",
  model: "string",
  maxContext: "integer",
  kvBudgetBytes: "bytes",
  maxConcurrent: "integer",
  queueSize: "integer",
  prefixCacheBytes: "bytes",
  prefixDiskBytes: "bytes",
  kvBits: "integer",
  speculative: "boolean",
  draftModel: "string",
  strictModelNames: "boolean",
  logLevel: "enum",
  logFormat: "enum",
  backend: "enum",
  threads: "integer",
};

/** A flag is the key in kebab case, except where a repeatable flag reads better singular. */
const FLAG_NAMES: Partial<Record<ConfigKey, string>> = { corsOrigins: "--cors-origin" };

const snake = (key: string) => key.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase();
const kebab = (key: string) => key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

export const CONFIG_KEYS: readonly KeyInfo[] = (Object.keys(ConfigSchema.properties) as ConfigKey[]).map((key) => {
  const schema = ConfigSchema.properties[key] as TSchema;
  const nullableKey = Array.isArray(schema.anyOf) && schema.anyOf.some((s: TSchema) => s.type === "null");
  return {
    key,
    env: `PENSIEVE_${snake(key)}`,
    flag: FLAG_NAMES[key] ?? `--${kebab(key)}`,
    kind: KINDS[key],
    nullable: nullableKey,
    schema,
  };
});

export const KEY_INFO = new Map<ConfigKey, KeyInfo>(CONFIG_KEYS.map((k) => [k.key, k]));

/** The defaults, from the schema. */
export function defaultConfig(): PensieveConfig {
  const out: Record<string, unknown> = {};
  for (const { key, schema } of CONFIG_KEYS) out[key] = structuredClone(schema.default);
  return out as PensieveConfig;
}

/** What a key accepts, in words, from its schema (for error messages and help). */
export function describeSchema(schema: TSchema, kind?: ValueKind): string {
  if (Array.isArray(schema.anyOf)) {
    const options = schema.anyOf as TSchema[];
    const literals = options.filter((s) => s.const !== undefined).map((s) => JSON.stringify(s.const));
    if (literals.length === options.length) return `one of ${literals.join(", ")}`;
    const rest = options.filter((s) => s.type !== "null").map((s) => describeSchema(s, kind));
    return options.some((s) => s.type === "null") ? `${rest.join(" or ")} or null` : rest.join(" or ");
  }
  if (schema.type === "integer") {
    const unit = kind === "bytes" ? "a size in bytes (or with a unit, e.g. 512MiB)" : "an integer";
    const { minimum: min, maximum: max } = schema as { minimum?: number; maximum?: number };
    if (min !== undefined && max !== undefined) return `${unit} between ${min} and ${max}`;
    if (min !== undefined) return `${unit} of at least ${min}`;
    return unit;
  }
  if (schema.type === "string") return schema.minLength ? "a non-empty string" : "a string";
  if (schema.type === "boolean") return "true or false";
  if (schema.type === "array") return `a list of ${describeSchema(schema.items as TSchema).replace(/^an? /, "")}s`;
  return "a valid value";
}

/** One help line per key, for the CLI's --help. */
export function configHelp(): string {
  return CONFIG_KEYS.map(({ key, flag, env, schema }) => {
    const value = schema.default === null ? "auto/none" : JSON.stringify(schema.default);
    return `  ${flag.padEnd(22)} ${env.padEnd(30)} ${schema.description ?? key} (default ${value})`;
  }).join("\n");
}
