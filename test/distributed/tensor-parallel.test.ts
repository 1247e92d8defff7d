// Tensor parallelism on this CPU: the engine as two ranks of one MLX group over
// the ring backend on 127.0.0.1 (started by the supervisor, as mlx.launch
// would), against the same engine as one process. Greedy tokens must be equal
// and log-probabilities within 1e-4, alone and batched, for a Llama (grouped
// KV heads, 4-bit) and a Phi-3 (fused qkv and gate|up, LongRoPE). Killing one
// rank fails the requests in flight with a 5xx and restarts the whole group.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type EngineConfig, samplingParams } from "../../src/engine/protocol";
import { EngineSupervisor, type StreamEvent } from "../../src/engine/supervisor";
import { shrinkConfig, writeRandomModel } from "../../src/models/random";
import { selfCommand } from "../../src/paths";
import { silentLogger } from "../../src/server/log";
import { type RunningServer, startServer } from "../../src/server/server";
import { PHI3_FILES, TEST_TMP, tinyModel } from "../support/models";
import { promptIds } from "../support/reference";

/** Phi-3 with 4 heads, so each rank's o_proj input (192) is whole 64-wide quantization groups. */
function tpPhi3(): string {
  const dir = join(TEST_TMP, "models", "tp-phi3");
  writeRandomModel(dir, {
    config: shrinkConfig(join(PHI3_FILES, "config.json"), {
      hidden_size: 384,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      num_key_value_heads: 4,
      intermediate_size: 256,
      original_max_position_embeddings: 64,
      max_position_embeddings: 2048,
    }),
    tokenizerFrom: PHI3_FILES,
    seed: 11,
    // Peakier logits than the default 0.02: no near-ties for greedy decoding to fall on either side of.
    std: 0.04,
  });
  return dir;
}

interface Run {
  tokens: number[];
  logprobs: number[];
  events: StreamEvent[];
}

async function generate(engine: EngineSupervisor, prompt: number[], maxTokens: number): Promise<Run> {
  const run: Run = { tokens: [], logprobs: [], events: [] };
  const stream = engine.generate({
    prompt,
    maxTokens,
    sampling: samplingParams({ logprobs: true }),
    stopTokenIds: [],
  });
  for await (const e of stream) {
    run.events.push(e);
    if (e.type === "token") {
      run.tokens.push(e.token);
      run.logprobs.push(e.logprob ?? Number.NaN);
    }
  }
  return run;
}

function supervisor(model: string, tensorParallel: EngineConfig["tensorParallel"]): EngineSupervisor {
  return new EngineSupervisor({
    engine: { model, device: "cpu", maxContext: 256, maxConcurrent: 4, tensorParallel },
    command: [...selfCommand(), "engine"],
    restartDelayMs: 100,
  });
}

const PROMPTS = [promptIds(12, 1), promptIds(30, 2), promptIds(7, 3)];

function expectSame(a: Run, b: Run): void {
  expect(b.events.at(-1)?.type).toBe("finished");
  expect(b.tokens).toEqual(a.tokens);
  for (let i = 0; i < a.logprobs.length; i++) {
    expect(Math.abs((a.logprobs[i] as number) - (b.logprobs[i] as number))).toBeLessThan(1e-4);
  }
}

for (const [name, model] of [
  ["tiny Llama", () => tinyModel("tiny-llama")],
  ["Phi-3 (4 heads)", tpPhi3],
] as const) {
  describe(`two ranks over ring equal one process: ${name}`, () => {
    let one: EngineSupervisor;
    let two: EngineSupervisor;
    beforeAll(async () => {
      const dir = model();
      one = supervisor(dir, null);
      two = supervisor(dir, { size: 2, backend: "ring" });
      await Promise.all([one.start(), two.start()]);
      expect(two.pids).toHaveLength(2);
    }, 120_000);
    afterAll(async () => {
      await Promise.all([one?.stop(), two?.stop()]);
    });

    test("single requests: same greedy tokens, log-probabilities within 1e-4", async () => {
      for (const prompt of PROMPTS) {
        const a = await generate(one, prompt, 8);
        const b = await generate(two, prompt, 8);
        expectSame(a, b);
      }
    }, 120_000);

    test("batched requests: same greedy tokens, log-probabilities within 1e-4", async () => {
      const a = await Promise.all(PROMPTS.map((p) => generate(one, p, 8)));
      const b = await Promise.all(PROMPTS.map((p) => generate(two, p, 8)));
      for (let i = 0; i < PROMPTS.length; i++) expectSame(a[i] as Run, b[i] as Run);
    }, 120_000);
  });
}

describe("a tensor-parallel group fails and restarts as a whole", () => {
  let two: EngineSupervisor;
  beforeAll(async () => {
    two = supervisor(tinyModel("tiny-llama"), { size: 2, backend: "ring" });
    await two.start();
  }, 120_000);
  afterAll(async () => {
    await two?.stop();
  });

  test("killing rank 1 gives a 5xx for the request in flight, then the group serves again", async () => {
    const before = two.pids;
    const stream = two.generate({
      prompt: promptIds(10, 4),
      maxTokens: 200,
      sampling: samplingParams(),
      stopTokenIds: [],
    });
    const events: StreamEvent[] = [];
    for await (const e of stream) {
      events.push(e);
      if (e.type === "token" && events.filter((x) => x.type === "token").length === 2) two.kill("SIGKILL", 1);
    }
    const last = events.at(-1);
    expect(last?.type).toBe("error");
    expect(last?.type === "error" && last.status >= 500).toBe(true);
    const until = Date.now() + 60_000;
    while (two.state !== "ready" && Date.now() < until) await Bun.sleep(50);
    expect(two.state).toBe("ready");
    expect(two.restarts).toBe(1);
    const after = two.pids;
    expect(after).toHaveLength(2);
    for (const pid of before) expect(after).not.toContain(pid);
    const again = await generate(two, promptIds(10, 5), 4);
    expect(again.tokens).toHaveLength(4);
  }, 120_000);
});

describe("--hosts: rank 1 started over ssh as mlx.launch does (a stand-in ssh runs the script here)", () => {
  let one: EngineSupervisor;
  let two: EngineSupervisor;
  const log = join(TEST_TMP, "fake-ssh.log");
  const savedSsh = process.env.PENSIEVE_SSH;
  beforeAll(async () => {
    mkdirSync(TEST_TMP, { recursive: true });
    const fake = join(TEST_TMP, "fake-ssh.sh");
    // Records its arguments, then runs the last one (the remote script) through sh, as sshd would.
    writeFileSync(
      fake,
      `#!/bin/sh\nprintf '%s\\n' "$*" >> '${log}'\nfor a; do last=$a; done\nexec /bin/sh -c "$last"\n`,
    );
    chmodSync(fake, 0o755);
    rmSync(log, { force: true });
    process.env.PENSIEVE_SSH = fake;
    const model = tinyModel("tiny-llama");
    one = supervisor(model, null);
    two = supervisor(model, {
      size: 2,
      backend: "ring",
      hosts: [
        { ssh: "this-machine", ips: ["127.0.0.1"] },
        { ssh: "user@second-mac", ips: ["127.0.0.1"], cwd: tmpdir() },
      ],
    });
    await Promise.all([one.start(), two.start()]);
  }, 120_000);
  afterAll(async () => {
    await Promise.all([one?.stop(), two?.stop()]);
    if (savedSsh === undefined) delete process.env.PENSIEVE_SSH;
    else process.env.PENSIEVE_SSH = savedSsh;
  });

  test("the remote rank runs through ssh -tt with MLX_RANK and the host file, and decodes as one process", async () => {
    const calls = readFileSync(log, "utf8").trim().split("\n");
    expect(calls).toHaveLength(1);
    expect(calls[0]).toStartWith("-tt -o LogLevel=QUIET user@second-mac ");
    expect(calls[0]).toContain("export MLX_RANK=1;");
    expect(calls[0]).toContain("export MLX_HOSTFILE=");
    const a = await generate(one, PROMPTS[1] as number[], 6);
    const b = await generate(two, PROMPTS[1] as number[], 6);
    expectSame(a, b);
  }, 120_000);
});

describe("over HTTP: a tensor-parallel server whose rank dies", () => {
  let server: RunningServer;
  beforeAll(async () => {
    server = await startServer({
      host: "127.0.0.1",
      port: 0,
      modelPath: tinyModel("tiny-llama"),
      modelId: "m",
      engine: { device: "cpu", maxContext: 2048, tensorParallel: { size: 2, backend: "ring" } },
      log: silentLogger,
    });
  }, 120_000);
  afterAll(async () => {
    await server?.stop(1000);
  });

  test("the request in flight gets a 5xx; the group restarts and serves", async () => {
    const engine = server.engine as EngineSupervisor;
    const body = { model: "m", messages: [{ role: "user", content: "Tell a long story." }], max_tokens: 1500 };
    const pending = fetch(`${server.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const until = Date.now() + 30_000;
    while (engine.activeStreams === 0 && Date.now() < until) await Bun.sleep(2);
    engine.kill("SIGKILL", 1);
    const response = await pending;
    expect(response.status).toBeGreaterThanOrEqual(500);
    const ready = Date.now() + 60_000;
    while (engine.state !== "ready" && Date.now() < ready) await Bun.sleep(50);
    expect(engine.restarts).toBe(1);
    const again = await fetch(`${server.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ ...body, max_tokens: 4 }),
    });
    expect(again.status).toBe(200);
  }, 120_000);
});
