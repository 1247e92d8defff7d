// The real Claude Code CLI for end-to-end tests: installed once from npm into
// test/.tmp/claude-code (git-ignored), run offline against a local server, and
// a recording proxy between them that keeps what went over the wire.
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { TEST_TMP } from "./models";

export const CLAUDE_CODE_VERSION = "2.1.332";
const PREFIX = join(TEST_TMP, "claude-code");
const BIN = join(PREFIX, "node_modules", ".bin", "claude");

async function installedVersion(): Promise<string | null> {
  if (!existsSync(BIN)) return null;
  const proc = Bun.spawn([BIN, "--version"], { stdout: "pipe", stderr: "pipe", env: { PATH: process.env.PATH ?? "" } });
  const [out, code] = await Promise.all([new Response(proc.stdout).text(), proc.exited]);
  return code === 0 ? out.trim() : null;
}

/** The claude binary, installed with npm on first use. */
export async function ensureClaudeCode(): Promise<string> {
  if ((await installedVersion())?.startsWith(CLAUDE_CODE_VERSION)) return BIN;
  const npm = Bun.spawn(
    [
      "npm",
      "install",
      "--prefix",
      PREFIX,
      "--no-audit",
      "--no-fund",
      `@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}`,
    ],
    { stdout: "pipe", stderr: "pipe" },
  );
  const [out, err, code] = await Promise.all([
    new Response(npm.stdout).text(),
    new Response(npm.stderr).text(),
    npm.exited,
  ]);
  const version = await installedVersion();
  if (code !== 0 || !version?.startsWith(CLAUDE_CODE_VERSION))
    throw new Error(`could not install Claude Code ${CLAUDE_CODE_VERSION} (npm exit ${code}):\n${out}\n${err}`);
  return BIN;
}

export interface ClaudeRun {
  exitCode: number;
  stdout: string;
  stderr: string;
  ms: number;
}

/** `claude -p <prompt>` offline against `baseUrl`, with a fresh HOME and working directory. */
export async function runClaude(bin: string, baseUrl: string, prompt: string, timeoutMs: number): Promise<ClaudeRun> {
  const home = mkdtempSync(join(TEST_TMP, "claude-home-"));
  const started = performance.now();
  try {
    const proc = Bun.spawn([bin, "-p", prompt], {
      cwd: home,
      env: {
        PATH: process.env.PATH ?? "",
        HOME: home,
        ANTHROPIC_BASE_URL: baseUrl,
        ANTHROPIC_API_KEY: "dummy",
        DISABLE_AUTOUPDATER: "1",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: "1",
      },
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
      timeout: timeoutMs,
    });
    const [stdout, stderr, exitCode] = await Promise.all([
      new Response(proc.stdout).text(),
      new Response(proc.stderr).text(),
      proc.exited,
    ]);
    return { exitCode, stdout, stderr, ms: performance.now() - started };
  } finally {
    rmSync(home, { recursive: true, force: true });
  }
}

export interface Exchange {
  method: string;
  /** Path and query string. */
  path: string;
  headers: Record<string, string>;
  body: unknown;
  status: number;
  /** The whole response body as the client received it (complete once `done` resolves). */
  response: string;
  done: Promise<void>;
  ms: number;
}

/** A pass-through HTTP proxy that records every exchange. */
export function recordingProxy(target: string) {
  const exchanges: Exchange[] = [];
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    // Long prefills: the client may wait long for the first bytes.
    idleTimeout: 0,
    async fetch(request) {
      const url = new URL(request.url);
      const text = await request.text();
      const headers = new Headers(request.headers);
      for (const h of ["host", "content-length", "accept-encoding"]) headers.delete(h);
      const started = performance.now();
      const upstream = await fetch(`${target}${url.pathname}${url.search}`, {
        method: request.method,
        headers,
        body: text || undefined,
        timeout: false,
      });
      const exchange: Exchange = {
        method: request.method,
        path: `${url.pathname}${url.search}`,
        headers: Object.fromEntries(request.headers),
        body: text ? JSON.parse(text) : null,
        status: upstream.status,
        response: "",
        done: Promise.resolve(),
        ms: 0,
      };
      exchanges.push(exchange);
      const outHeaders = new Headers(upstream.headers);
      outHeaders.delete("content-length");
      outHeaders.delete("content-encoding");
      if (!upstream.body) return new Response(null, { status: upstream.status, headers: outHeaders });
      const [toClient, toRecord] = upstream.body.tee();
      exchange.done = new Response(toRecord).text().then((body) => {
        exchange.response = body;
        exchange.ms = performance.now() - started;
      });
      return new Response(toClient, { status: upstream.status, headers: outHeaders });
    },
  });
  return {
    url: `http://127.0.0.1:${server.port}`,
    exchanges,
    stop: () => server.stop(true),
  };
}
