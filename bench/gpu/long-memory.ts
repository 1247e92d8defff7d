// Memory over time while `serve` (default settings) prefills one prompt of the
// advertised context less 32 tokens: MLX active/peak/cache from /metrics and the
// card's used memory from nvidia-smi, every 500 ms. Issue 10's long-context check.
//   bun dist/bench/gpu/long-memory.js MODEL [TOKENS] [--port 7810]
import { selfCommand } from "../../src/paths";

const [model, tokensArg] = process.argv.slice(2).filter((a) => !a.startsWith("--"));
if (!model) throw new Error("usage: long-memory MODEL [TOKENS]");
const port = 7810;
const base = `http://127.0.0.1:${port}`;
const server = Bun.spawn([...selfCommand(), "serve", "--model", model, "--port", String(port)], {
  stdout: "ignore",
  stderr: "inherit",
});
const gib = (n: number) => (n / 1024 ** 3).toFixed(2);

async function metric(name: string): Promise<number> {
  const text = await (await fetch(`${base}/metrics`)).text();
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.e+]+)$`, "m").exec(text);
  return m ? Number(m[1]) : Number.NaN;
}

function cardUsed(): number {
  const r = Bun.spawnSync(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]);
  return Number.parseInt(r.stdout.toString(), 10) * 1024 * 1024;
}

try {
  for (let i = 0; ; i++) {
    if (i > 600) throw new Error("server not ready");
    const ok = await fetch(`${base}/health`)
      .then((r) => r.ok)
      .catch(() => false);
    if (ok) break;
    await Bun.sleep(500);
  }
  const health = (await (await fetch(`${base}/health`)).json()) as { contextLength: number };
  const length = Number(tokensArg ?? health.contextLength - 32);
  let x = 7;
  const prompt = Array.from({ length }, () => {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    return 1 + (x % 32000);
  });
  console.log(`context ${health.contextLength}; prompt ${length} tokens; card used ${gib(cardUsed())} GiB at start`);
  const started = performance.now();
  let done = false;
  const request = fetch(`${base}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ prompt, max_tokens: 4, temperature: 0 }),
    timeout: false,
  }).then(async (r) => {
    done = true;
    return { status: r.status, body: (await r.text()).slice(0, 400) };
  });
  while (!done) {
    await Bun.sleep(500);
    const [active, peak, cache, reserved] = await Promise.all([
      metric("pensieve_mlx_active_memory_bytes"),
      metric("pensieve_mlx_peak_memory_bytes"),
      metric("pensieve_mlx_cache_memory_bytes"),
      metric("pensieve_kv_reserved_bytes"),
    ]);
    const t = ((performance.now() - started) / 1000).toFixed(1);
    console.log(
      `${t} s: MLX active ${gib(active)} peak ${gib(peak)} cache ${gib(cache)} GiB; KV reserved ${gib(reserved)} GiB; card ${gib(cardUsed())} GiB`,
    );
  }
  const r = await request;
  console.log(`done in ${((performance.now() - started) / 1000).toFixed(1)} s: ${r.status} ${r.body}`);
  console.log(`MLX peak ${gib(await metric("pensieve_mlx_peak_memory_bytes"))} GiB`);
} finally {
  server.kill("SIGTERM");
  await server.exited;
}
