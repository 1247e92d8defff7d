import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  CONFIG_KEYS,
  ConfigError,
  configHelp,
  defaultConfig,
  defaultConfigPath,
  loadConfig,
  parseBytes,
  parseFlags,
  writeConfig,
} from "../../src/config";

let dir: string;
let env: Record<string, string>;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "pensieve-config-"));
  // A HOME without a config, so the real ~/.config is never read.
  env = { HOME: dir };
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function writeJson(path: string, value: unknown) {
  mkdirSync(join(path, ".."), { recursive: true });
  writeFileSync(path, typeof value === "string" ? value : JSON.stringify(value));
}

function errorOf(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
  throw new Error("expected a ConfigError");
}

describe("defaults", () => {
  test("every key has its documented default", () => {
    const { config, sources, file } = loadConfig({ env });
    expect(config).toEqual({
      host: "127.0.0.1",
      port: 7777,
      apiKey: null,
      corsOrigins: [],
      bodyLimitBytes: 8 * 1024 * 1024,
      model: "smollm2-135m",
      maxContext: null,
      kvBudgetBytes: null,
      maxConcurrent: null,
      queueSize: 64,
      prefixCacheBytes: null,
      prefixDiskBytes: null,
      kvBits: null,
      speculative: null,
      draftModel: null,
      strictModelNames: false,
      logLevel: "info",
      logFormat: "json",
      backend: "auto",
      threads: null,
    });
    expect(file).toBeNull();
    expect(Object.values(sources).every((s) => s.kind === "default")).toBe(true);
  });

  test("each key has one env variable and one flag", () => {
    const names = CONFIG_KEYS.map((k) => [k.key, k.env, k.flag]);
    expect(names).toContainEqual(["port", "PENSIEVE_PORT", "--port"]);
    expect(names).toContainEqual(["apiKey", "PENSIEVE_API_KEY", "--api-key"]);
    expect(names).toContainEqual(["corsOrigins", "PENSIEVE_CORS_ORIGINS", "--cors-origin"]);
    expect(names).toContainEqual(["maxContext", "PENSIEVE_MAX_CONTEXT", "--max-context"]);
    expect(names).toContainEqual(["backend", "PENSIEVE_BACKEND", "--backend"]);
    expect(new Set(CONFIG_KEYS.map((k) => k.env)).size).toBe(CONFIG_KEYS.length);
    expect(configHelp().split("\n").length).toBe(CONFIG_KEYS.length);
  });

  test("defaultConfig returns fresh objects", () => {
    const a = defaultConfig();
    a.corsOrigins.push("http://x");
    expect(defaultConfig().corsOrigins).toEqual([]);
  });

  test("the default file location follows XDG_CONFIG_HOME, else ~/.config", () => {
    expect(defaultConfigPath({ HOME: "/home/u" })).toBe("/home/u/.config/pensieve/config.json");
    expect(defaultConfigPath({ HOME: "/home/u", XDG_CONFIG_HOME: "/x" })).toBe("/x/pensieve/config.json");
  });
});

describe("layers", () => {
  test("file < env < flags, with the source of each value", () => {
    const path = join(dir, ".config", "pensieve", "config.json");
    writeJson(path, { port: 8000, host: "0.0.0.0", model: "phi3-mini-mlx", maxConcurrent: 2 });
    const { config, sources, file } = loadConfig({
      env: { ...env, PENSIEVE_PORT: "8001", PENSIEVE_MODEL: "llama3.2-1b-mlx" },
      argv: ["serve", "--port", "8002", "--verbose"],
    });
    expect(file).toBe(path);
    expect(config.port).toBe(8002);
    expect(config.model).toBe("llama3.2-1b-mlx");
    expect(config.host).toBe("0.0.0.0");
    expect(config.maxConcurrent).toBe(2);
    expect(sources.port).toEqual({ kind: "flag", name: "--port" });
    expect(sources.model).toEqual({ kind: "env", name: "PENSIEVE_MODEL" });
    expect(sources.host).toEqual({ kind: "file", path });
    expect(sources.queueSize).toEqual({ kind: "default" });
  });

  test("XDG_CONFIG_HOME, PENSIEVE_CONFIG, the configPath option and --config pick the file", () => {
    const xdg = join(dir, "xdg");
    writeJson(join(xdg, "pensieve", "config.json"), { port: 1001 });
    writeJson(join(dir, "env.json"), { port: 1002 });
    writeJson(join(dir, "option.json"), { port: 1003 });
    writeJson(join(dir, "flag.json"), { port: 1004 });
    const base = { ...env, XDG_CONFIG_HOME: xdg };
    expect(loadConfig({ env: base }).config.port).toBe(1001);
    const withEnv = { ...base, PENSIEVE_CONFIG: join(dir, "env.json") };
    expect(loadConfig({ env: withEnv }).config.port).toBe(1002);
    expect(loadConfig({ env: withEnv, configPath: join(dir, "option.json") }).config.port).toBe(1003);
    expect(
      loadConfig({ env: withEnv, configPath: join(dir, "option.json"), argv: ["--config", join(dir, "flag.json")] })
        .config.port,
    ).toBe(1004);
  });

  test("an explicitly named file that does not exist is an error", () => {
    const e = errorOf(() => loadConfig({ env: { ...env, PENSIEVE_CONFIG: join(dir, "nope.json") } }));
    expect(e.message).toBe(`config: the file ${join(dir, "nope.json")} (from PENSIEVE_CONFIG) does not exist`);
  });

  test("environment values are parsed by type", () => {
    const { config } = loadConfig({
      env: {
        ...env,
        PENSIEVE_CORS_ORIGINS: "http://localhost:3000, https://app.example.com/",
        PENSIEVE_BODY_LIMIT_BYTES: "16MiB",
        PENSIEVE_KV_BUDGET_BYTES: "2GiB",
        PENSIEVE_PREFIX_CACHE_BYTES: "1.5GB",
        PENSIEVE_MAX_CONTEXT: "32768",
        PENSIEVE_STRICT_MODEL_NAMES: "yes",
        PENSIEVE_API_KEY: "sk-local",
        PENSIEVE_LOG_FORMAT: "pretty",
        PENSIEVE_BACKEND: "cpu",
      },
    });
    expect(config.corsOrigins).toEqual(["http://localhost:3000", "https://app.example.com"]);
    expect(config.bodyLimitBytes).toBe(16 * 1024 * 1024);
    expect(config.kvBudgetBytes).toBe(2 * 1024 ** 3);
    expect(config.prefixCacheBytes).toBe(1_500_000_000);
    expect(config.maxContext).toBe(32768);
    expect(config.strictModelNames).toBe(true);
    expect(config.apiKey).toBe("sk-local");
    expect(config.logFormat).toBe("pretty");
    expect(config.backend).toBe("cpu");
  });

  test("auto / empty set nullable keys back to null over the file", () => {
    writeJson(join(dir, "c.json"), { maxContext: 4096, apiKey: "secret" });
    const { config, sources } = loadConfig({
      env: { ...env, PENSIEVE_MAX_CONTEXT: "auto", PENSIEVE_API_KEY: "" },
      configPath: join(dir, "c.json"),
    });
    expect(config.maxContext).toBeNull();
    expect(config.apiKey).toBeNull();
    expect(sources.apiKey).toEqual({ kind: "env", name: "PENSIEVE_API_KEY" });
  });

  test("speculative: automatic by default; PENSIEVE_SPECULATIVE=0 or --no-speculative turns it off", () => {
    expect(loadConfig({ env }).config.speculative).toBeNull();
    expect(loadConfig({ env: { ...env, PENSIEVE_SPECULATIVE: "0" } }).config.speculative).toBe(false);
    expect(loadConfig({ env, argv: ["--no-speculative"] }).config.speculative).toBe(false);
    expect(CONFIG_KEYS.map((k) => [k.key, k.env, k.flag])).toContainEqual([
      "speculative",
      "PENSIEVE_SPECULATIVE",
      "--speculative",
    ]);
  });

  test("draftModel: none by default; PENSIEVE_DRAFT_MODEL or --draft-model names one", () => {
    expect(loadConfig({ env }).config.draftModel).toBeNull();
    expect(loadConfig({ env: { ...env, PENSIEVE_DRAFT_MODEL: "smollm2-135m" } }).config.draftModel).toBe(
      "smollm2-135m",
    );
    expect(loadConfig({ env, argv: ["--draft-model", "/models/small"] }).config.draftModel).toBe("/models/small");
    expect(CONFIG_KEYS.map((k) => [k.key, k.env, k.flag])).toContainEqual([
      "draftModel",
      "PENSIEVE_DRAFT_MODEL",
      "--draft-model",
    ]);
  });

  test("kvBits: 0, 8 or 4 from the file, PENSIEVE_KV_BITS or --kv-bits; auto is null; other widths are refused", () => {
    writeJson(join(dir, "c.json"), { kvBits: 4 });
    expect(loadConfig({ env, configPath: join(dir, "c.json") }).config.kvBits).toBe(4);
    expect(loadConfig({ env: { ...env, PENSIEVE_KV_BITS: "8" } }).config.kvBits).toBe(8);
    expect(loadConfig({ env, argv: ["--kv-bits", "0"] }).config.kvBits).toBe(0);
    expect(loadConfig({ env: { ...env, PENSIEVE_KV_BITS: "8" }, argv: ["--kv-bits=auto"] }).config.kvBits).toBeNull();
    expect(errorOf(() => parseFlags(["--kv-bits", "6"])).message).toBe(
      "config: kvBits (from --kv-bits): expected one of 0, 8, 4 or null, got 6",
    );
  });

  test("sizes in the file may carry units", () => {
    writeJson(join(dir, "c.json"), { bodyLimitBytes: "1MiB", kvBudgetBytes: 1048576 });
    const { config } = loadConfig({ env, configPath: join(dir, "c.json") });
    expect(config.bodyLimitBytes).toBe(1048576);
    expect(config.kvBudgetBytes).toBe(1048576);
  });

  test("a $schema pointer in the file is allowed", () => {
    writeJson(join(dir, "c.json"), { $schema: "./schema.json", port: 9 });
    expect(loadConfig({ env, configPath: join(dir, "c.json") }).config.port).toBe(9);
  });
});

describe("errors name the key, the source and the reason", () => {
  test("a bad environment value", () => {
    const e = errorOf(() => loadConfig({ env: { ...env, PENSIEVE_PORT: "abc" } }));
    expect(e.message).toBe('config: port (from PENSIEVE_PORT): expected an integer between 1 and 65535, got "abc"');
    expect(e.key).toBe("port");
  });

  test("a bad flag value", () => {
    const e = errorOf(() => loadConfig({ env, argv: ["--port=70000"] }));
    expect(e.message).toBe("config: port (from --port): expected an integer between 1 and 65535, got 70000");
    const level = errorOf(() => parseFlags(["--log-level", "loud"]));
    expect(level.message).toBe(
      'config: logLevel (from --log-level): expected one of "debug", "info", "warn", "error", got "loud"',
    );
    const ctx = errorOf(() => parseFlags(["--max-context", "12k"]));
    expect(ctx.message).toBe(
      'config: maxContext (from --max-context): expected an integer of at least 256 or null, got "12k"',
    );
  });

  test("a bad file value names the file", () => {
    const path = join(dir, "c.json");
    writeJson(path, { maxConcurrent: 0 });
    const e = errorOf(() => loadConfig({ env, configPath: path }));
    expect(e.message).toBe(
      `config: maxConcurrent (from ${path}): expected an integer between 1 and 1024 or null, got 0`,
    );
    writeJson(path, { corsOrigins: "http://x" });
    expect(errorOf(() => loadConfig({ env, configPath: path })).message).toBe(
      `config: corsOrigins (from ${path}): expected a list of non-empty strings, got "http://x"`,
    );
    writeJson(path, { bodyLimitBytes: "lots" });
    expect(errorOf(() => loadConfig({ env, configPath: path })).message).toContain(
      'expected a size in bytes (or with a unit, e.g. 512MiB) of at least 1024, got "lots"',
    );
  });

  test("an unknown key in the file is an error, with a suggestion", () => {
    const path = join(dir, "c.json");
    writeJson(path, { prot: 8080 });
    expect(errorOf(() => loadConfig({ env, configPath: path })).message).toBe(
      `config: unknown key "prot" in ${path}: did you mean "port"?`,
    );
    writeJson(path, { max_context: 8192 });
    expect(errorOf(() => loadConfig({ env, configPath: path })).message).toContain('did you mean "maxContext"?');
    writeJson(path, { zzzzzzzz: 1 });
    expect(errorOf(() => loadConfig({ env, configPath: path })).message).toContain("known keys: host, port");
  });

  test("a file that is not a JSON object", () => {
    const path = join(dir, "c.json");
    writeJson(path, "{ port: 1 ");
    expect(errorOf(() => loadConfig({ env, configPath: path })).message).toStartWith(
      `config: ${path} is not valid JSON`,
    );
    writeJson(path, "[1]");
    expect(errorOf(() => loadConfig({ env, configPath: path })).message).toContain("must hold a JSON object");
  });

  test("a CORS entry that is not an origin", () => {
    const e = errorOf(() => parseFlags(["--cors-origin", "localhost:3000"]));
    expect(e.message).toBe(
      'config: corsOrigins (from --cors-origin): "localhost:3000" is not an origin: use scheme://host[:port], e.g. http://localhost:3000, or "*"',
    );
    expect(errorOf(() => parseFlags(["--cors-origin", "http://a.com/path"])).message).toContain('"http://a.com/path"');
  });

  test("a flag without its value", () => {
    expect(errorOf(() => parseFlags(["--port"])).message).toBe("config: --port needs a value");
    expect(errorOf(() => parseFlags(["--model", "--port", "1"])).message).toBe("config: --model needs a value");
  });
});

describe("parseFlags", () => {
  test("reads every form and passes the rest through", () => {
    const flags = parseFlags([
      "serve",
      "--host=0.0.0.0",
      "--cors-origin",
      "http://a.test",
      "--cors-origin=http://b.test,http://c.test:8080",
      "--strict-model-names",
      "--no-api-key",
      "--max-context",
      "auto",
      "--kv-budget-bytes",
      "3GiB",
      "--config",
      "/tmp/x.json",
      "--yes",
      "extra",
      "--",
      "--port",
      "1",
    ]);
    expect(flags.values).toEqual({
      host: "0.0.0.0",
      corsOrigins: ["http://a.test", "http://b.test", "http://c.test:8080"],
      strictModelNames: true,
      apiKey: null,
      maxContext: null,
      kvBudgetBytes: 3 * 1024 ** 3,
    });
    expect(flags.configPath).toBe("/tmp/x.json");
    expect(flags.rest).toEqual(["serve", "--yes", "extra", "--", "--port", "1"]);
    expect(flags.unknown).toEqual(["--yes"]);
    expect(flags.flagNames.apiKey).toBe("--no-api-key");
  });

  test("booleans: --x, --x=false, --no-x", () => {
    expect(parseFlags(["--strict-model-names=false"]).values.strictModelNames).toBe(false);
    expect(parseFlags(["--strict-model-names", "--no-strict-model-names"]).values.strictModelNames).toBe(false);
    expect(parseFlags(["--no-cors-origin"]).values.corsOrigins).toEqual([]);
  });

  test("parseBytes units", () => {
    expect(parseBytes("1024")).toBe(1024);
    expect(parseBytes("8MiB")).toBe(8 * 1024 * 1024);
    expect(parseBytes("8M")).toBe(8 * 1024 * 1024);
    expect(parseBytes("8 MB")).toBe(8_000_000);
    expect(parseBytes("1.5GiB")).toBe(1.5 * 1024 ** 3);
    expect(parseBytes("12 parsecs")).toBeNull();
    expect(parseBytes("-1")).toBeNull();
  });
});

describe("writeConfig", () => {
  test("creates the file (owner-only), merges, removes undefined keys, and loads back", () => {
    const path = join(dir, "cfg", "pensieve", "config.json");
    writeConfig(path, { model: "phi3-mini-mlx", apiKey: "sk-1", bodyLimitBytes: "2MiB" });
    expect(statSync(path).mode & 0o777).toBe(0o600);
    writeConfig(path, { port: 9000, apiKey: undefined });
    const written = JSON.parse(readFileSync(path, "utf8"));
    expect(written).toEqual({ port: 9000, bodyLimitBytes: 2 * 1024 * 1024, model: "phi3-mini-mlx" });
    expect(Object.keys(written)).toEqual(["port", "bodyLimitBytes", "model"]);
    const { config, sources } = loadConfig({ env, configPath: path });
    expect(config.port).toBe(9000);
    expect(config.apiKey).toBeNull();
    expect(sources.model).toEqual({ kind: "file", path });
  });

  test("refuses unknown keys and bad values without touching the file", () => {
    const path = join(dir, "config.json");
    writeConfig(path, { port: 1234 });
    const before = readFileSync(path, "utf8");
    expect(errorOf(() => writeConfig(path, { hots: "x" } as never)).message).toContain('did you mean "host"?');
    expect(errorOf(() => writeConfig(path, { port: -1 })).message).toBe(
      `config: port (from ${path}): expected an integer between 1 and 65535, got -1`,
    );
    expect(readFileSync(path, "utf8")).toBe(before);
  });
});
