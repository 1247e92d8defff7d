// Loading the configuration: defaults ← file ← environment ← flags, each layer
// overriding the one before, each value checked against the schema with the
// source named in the error:
//   config: port (from PENSIEVE_PORT): expected an integer between 1 and 65535, got "abc"
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { Value } from "@sinclair/typebox/value";
import {
  CONFIG_KEYS,
  type ConfigKey,
  ConfigSchema,
  defaultConfig,
  describeSchema,
  KEY_INFO,
  type KeyInfo,
  type PensieveConfig,
} from "./schema";

export type Env = Record<string, string | undefined>;

export type ConfigSource =
  | { kind: "default" }
  | { kind: "file"; path: string }
  | { kind: "env"; name: string }
  | { kind: "flag"; name: string };

function describeSource(source: ConfigSource): string {
  return source.kind === "default" ? "default" : source.kind === "file" ? source.path : source.name;
}

export class ConfigError extends Error {
  readonly key: string | null;
  readonly source: ConfigSource | null;

  constructor(message: string, key: string | null = null, source: ConfigSource | null = null) {
    super(message);
    this.name = "ConfigError";
    this.key = key;
    this.source = source;
  }
}

function fail(info: KeyInfo, source: ConfigSource, what: string): never {
  throw new ConfigError(`config: ${info.key} (from ${describeSource(source)}): ${what}`, info.key, source);
}

function expectedGot(info: KeyInfo, source: ConfigSource, got: unknown): never {
  const shown = typeof got === "string" ? JSON.stringify(got) : (JSON.stringify(got) ?? String(got));
  fail(info, source, `expected ${describeSchema(info.schema, info.kind)}, got ${shown}`);
}

const BYTE_UNITS: Record<string, number> = {
  "": 1,
  b: 1,
  k: 1024,
  kib: 1024,
  kb: 1000,
  m: 1024 ** 2,
  mib: 1024 ** 2,
  mb: 1000 ** 2,
  g: 1024 ** 3,
  gib: 1024 ** 3,
  gb: 1000 ** 3,
  t: 1024 ** 4,
  tib: 1024 ** 4,
  tb: 1000 ** 4,
};

/** "512MiB" → 536870912; K/M/G/T alone and KiB… are binary, KB/MB/GB/TB decimal. Null when unreadable. */
export function parseBytes(text: string): number | null {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(text);
  const factor = m ? BYTE_UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || factor === undefined) return null;
  const value = Number(m[1]) * factor;
  return Number.isSafeInteger(Math.round(value)) ? Math.round(value) : null;
}

const NULL_WORDS = new Set(["", "auto", "null", "none"]);
const TRUE_WORDS = new Set(["1", "true", "yes", "on"]);
const FALSE_WORDS = new Set(["0", "false", "no", "off"]);

/** Text (from the environment or a flag) → a value of the key's type; throws a ConfigError when it is not one. */
function parseText(info: KeyInfo, text: string, source: ConfigSource): unknown {
  const trimmed = text.trim();
  if (info.nullable && NULL_WORDS.has(trimmed.toLowerCase())) return null;
  switch (info.kind) {
    case "string":
    case "enum":
      return trimmed;
    case "integer":
      return /^[+-]?\d+$/.test(trimmed) ? Number(trimmed) : expectedGot(info, source, text);
    case "bytes":
      return parseBytes(trimmed) ?? expectedGot(info, source, text);
    case "boolean":
      if (TRUE_WORDS.has(trimmed.toLowerCase())) return true;
      if (FALSE_WORDS.has(trimmed.toLowerCase())) return false;
      return expectedGot(info, source, text);
    case "list":
      return trimmed
        .split(",")
        .map((s) => s.trim())
        .filter(Boolean);
  }
}

/** A value from a JSON file or from code: sizes may be strings with units. */
function fromJson(info: KeyInfo, value: unknown, source: ConfigSource): unknown {
  if (info.kind === "bytes" && typeof value === "string") return parseBytes(value) ?? expectedGot(info, source, value);
  return value;
}

function isOrigin(origin: string): boolean {
  if (origin === "*") return true;
  try {
    const url = new URL(origin);
    return (url.protocol === "http:" || url.protocol === "https:") && url.origin === origin.replace(/\/$/, "");
  } catch {
    return false;
  }
}

/** Checks one value against its key's schema (and the few rules a schema cannot say). */
function checkValue(info: KeyInfo, value: unknown, source: ConfigSource): unknown {
  if (!Value.Check(info.schema, value)) expectedGot(info, source, value);
  if (info.key === "corsOrigins") {
    const origins = (value as string[]).map((o) => o.replace(/\/$/, ""));
    const bad = origins.find((o) => !isOrigin(o));
    if (bad !== undefined)
      fail(info, source, `"${bad}" is not an origin: use scheme://host[:port], e.g. http://localhost:3000, or "*"`);
    return origins;
  }
  return value;
}

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let previous = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const current = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, previous + (a[i - 1] === b[j - 1] ? 0 : 1));
      previous = current;
    }
  }
  return row[b.length]!;
}

/** The nearest known key, for "did you mean". */
function suggestKey(unknown: string): string | null {
  const lower = unknown.toLowerCase().replace(/[-_]/g, "");
  let best: { key: string; distance: number } | null = null;
  for (const { key } of CONFIG_KEYS) {
    const distance = editDistance(lower, key.toLowerCase());
    if (!best || distance < best.distance) best = { key, distance };
  }
  return best && best.distance <= Math.max(2, Math.floor(best.key.length / 3)) ? best.key : null;
}

function unknownKey(key: string, where: string): ConfigError {
  const suggestion = suggestKey(key);
  const hint = suggestion
    ? `: did you mean "${suggestion}"?`
    : `; known keys: ${CONFIG_KEYS.map((k) => k.key).join(", ")}`;
  return new ConfigError(`config: unknown key "${key}" in ${where}${hint}`, key, null);
}

export function defaultConfigPath(env: Env = process.env): string {
  const base = env.XDG_CONFIG_HOME || join(env.HOME || homedir(), ".config");
  return join(base, "pensieve", "config.json");
}

function readConfigFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new ConfigError(`config: cannot read ${path}: ${(e as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`config: ${path} is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new ConfigError(`config: ${path} must hold a JSON object ({"port": 7777, ...})`);
  }
  return parsed as Record<string, unknown>;
}

/** Values of a config file, checked; unknown keys are errors (typos would otherwise be silently ignored). */
function valuesFromFile(path: string): Map<ConfigKey, unknown> {
  const values = new Map<ConfigKey, unknown>();
  const source: ConfigSource = { kind: "file", path };
  for (const [key, raw] of Object.entries(readConfigFile(path))) {
    if (key === "$schema") continue; // editors' JSON schema pointer
    const info = KEY_INFO.get(key as ConfigKey);
    if (!info) throw unknownKey(key, path);
    values.set(info.key, checkValue(info, fromJson(info, raw, source), source));
  }
  return values;
}

function valuesFromEnv(env: Env): Map<ConfigKey, { value: unknown; name: string }> {
  const values = new Map<ConfigKey, { value: unknown; name: string }>();
  for (const info of CONFIG_KEYS) {
    const text = env[info.env];
    if (text === undefined) continue;
    const source: ConfigSource = { kind: "env", name: info.env };
    values.set(info.key, { value: checkValue(info, parseText(info, text, source), source), name: info.env });
  }
  return values;
}

export interface ParsedFlags {
  /** Checked values of the configuration flags given. */
  values: Partial<PensieveConfig>;
  /** The flag each value came from. */
  flagNames: Partial<Record<ConfigKey, string>>;
  /** --config <path>, when given. */
  configPath: string | null;
  /** Everything that is not a configuration flag (subcommands, their arguments and flags), in order. */
  rest: string[];
  /** Flags in `rest` that look like flags (--x); the CLI decides whether they are errors. */
  unknown: string[];
}

const FLAGS = new Map<string, KeyInfo>(CONFIG_KEYS.map((k) => [k.flag, k]));

/**
 * Reads configuration flags: `--port 8080`, `--port=8080`, `--cors-origin a --cors-origin b`,
 * `--strict-model-names` / `--no-strict-model-names`, `--no-api-key` (null), `--config <path>`.
 * Other arguments are passed through in `rest`.
 */
export function parseFlags(argv: readonly string[]): ParsedFlags {
  const values: Record<string, unknown> = {};
  const flagNames: Partial<Record<ConfigKey, string>> = {};
  const rest: string[] = [];
  const unknown: string[] = [];
  let configPath: string | null = null;
  const lists = new Map<ConfigKey, string[]>();

  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      rest.push(...argv.slice(i));
      break;
    }
    if (!arg.startsWith("--")) {
      rest.push(arg);
      continue;
    }
    const eq = arg.indexOf("=");
    const name = eq >= 0 ? arg.slice(0, eq) : arg;
    const inline = eq >= 0 ? arg.slice(eq + 1) : null;
    const takeValue = (what: string): string => {
      if (inline !== null) return inline;
      const next = argv[i + 1];
      if (next === undefined || (next.startsWith("--") && next.length > 2)) {
        throw new ConfigError(`config: ${what} needs a value`);
      }
      i++;
      return next;
    };

    if (name === "--config") {
      configPath = takeValue("--config");
      continue;
    }
    const negated = name.startsWith("--no-") ? FLAGS.get(`--${name.slice(5)}`) : undefined;
    if (negated && inline === null && (negated.nullable || negated.kind === "boolean" || negated.kind === "list")) {
      const value = negated.kind === "boolean" ? false : negated.kind === "list" ? [] : null;
      if (negated.kind === "list") lists.set(negated.key, []);
      values[negated.key] = value;
      flagNames[negated.key] = name;
      continue;
    }
    const info = FLAGS.get(name);
    if (!info) {
      rest.push(arg);
      unknown.push(name);
      continue;
    }
    const source: ConfigSource = { kind: "flag", name };
    if (info.kind === "boolean" && inline === null) {
      values[info.key] = true;
    } else if (info.kind === "list") {
      // Repeatable, and each occurrence may also be a comma list.
      const list = [...(lists.get(info.key) ?? []), ...(parseText(info, takeValue(name), source) as string[])];
      lists.set(info.key, list);
      values[info.key] = checkValue(info, list, source);
    } else {
      values[info.key] = checkValue(info, parseText(info, takeValue(name), source), source);
    }
    flagNames[info.key] = name;
  }
  return { values: values as Partial<PensieveConfig>, flagNames, configPath, rest, unknown };
}

export interface LoadConfigOptions {
  argv?: readonly string[];
  env?: Env;
  /** A config file to use instead of the default location (--config still wins). */
  configPath?: string;
}

export interface LoadedConfig {
  config: PensieveConfig;
  /** Where each key's value came from. */
  sources: Record<ConfigKey, ConfigSource>;
  /** The file read, or null when there was none. */
  file: string | null;
  flags: ParsedFlags;
}

/**
 * The configuration: defaults, then the file (--config, else the configPath option,
 * else PENSIEVE_CONFIG, else the default location when it exists), then PENSIEVE_*
 * variables, then flags.
 */
export function loadConfig(options: LoadConfigOptions = {}): LoadedConfig {
  const env = options.env ?? process.env;
  const flags = parseFlags(options.argv ?? []);
  const config = defaultConfig() as Record<ConfigKey, unknown>;
  const sources = Object.fromEntries(CONFIG_KEYS.map((k) => [k.key, { kind: "default" }])) as Record<
    ConfigKey,
    ConfigSource
  >;

  const explicit = flags.configPath ?? options.configPath ?? env.PENSIEVE_CONFIG ?? null;
  const path = explicit ? resolve(explicit) : defaultConfigPath(env);
  let file: string | null = null;
  if (explicit && !existsSync(path)) {
    const from = flags.configPath ? "--config" : options.configPath ? "the configPath option" : "PENSIEVE_CONFIG";
    throw new ConfigError(`config: the file ${path} (from ${from}) does not exist`);
  }
  if (existsSync(path)) {
    file = path;
    for (const [key, value] of valuesFromFile(path)) {
      config[key] = value;
      sources[key] = { kind: "file", path };
    }
  }
  for (const [key, { value, name }] of valuesFromEnv(env)) {
    config[key] = value;
    sources[key] = { kind: "env", name };
  }
  for (const [key, value] of Object.entries(flags.values) as [ConfigKey, unknown][]) {
    config[key] = value;
    sources[key] = { kind: "flag", name: flags.flagNames[key]! };
  }
  if (!Value.Check(ConfigSchema, config)) {
    // Unreachable when every layer was checked; kept so a schema change cannot slip through.
    const first = [...Value.Errors(ConfigSchema, config)][0];
    throw new ConfigError(`config: ${first?.path ?? "?"}: ${first?.message ?? "invalid"}`);
  }
  return { config: config as PensieveConfig, sources, file, flags };
}

/**
 * Writes keys into a config file (for `setup`), keeping the keys already there;
 * a key set to undefined is removed (back to its default). The file is created
 * readable by its owner only, since it may hold the API key.
 */
export function writeConfig(path: string, partial: Partial<Record<ConfigKey, unknown>>): Record<string, unknown> {
  const target = resolve(path);
  const source: ConfigSource = { kind: "file", path: target };
  const current = existsSync(target) ? readConfigFile(target) : {};
  for (const key of Object.keys(current)) {
    if (key !== "$schema" && !KEY_INFO.has(key as ConfigKey)) throw unknownKey(key, target);
  }
  for (const [key, value] of Object.entries(partial)) {
    const info = KEY_INFO.get(key as ConfigKey);
    if (!info) throw unknownKey(key, "the values to write");
    if (value === undefined) delete current[key];
    else current[key] = checkValue(info, fromJson(info, value, source), source);
  }
  // Schema order, so hand-edited and written files read the same.
  const ordered: Record<string, unknown> = {};
  if ("$schema" in current) ordered.$schema = current.$schema;
  for (const { key } of CONFIG_KEYS) if (key in current) ordered[key] = current[key];
  mkdirSync(dirname(target), { recursive: true, mode: 0o700 });
  const tmp = `${target}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(ordered, null, 2)}\n`, { mode: 0o600 });
  renameSync(tmp, target);
  return ordered;
}
