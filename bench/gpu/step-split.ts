// Where a one-row decode step's wall time goes, in three parts on the host's clock:
//   build: the graph in TypeScript (forward + argmax: FFI calls, MLX's lazy arrays);
//   eval:  mx.asyncEval's call, i.e. MLX's own host work for every node (graph walk,
//          eval_gpu of each primitive, CUDA graph build / update / launch), GPU still running;
//   wait:  from there until the token is on the host (the GPU's remaining work).
// A step is host-bound when build + eval is most of it. Unpipelined steps (each read back
// before the next is built) and pipelined ones (step n+1 queued before step n's token is
// read, as generateTokens does) at the given context.
//   bun bench/gpu/step-split.ts MODEL [--prompt 128] [--steps 48] [--nodes]
// --nodes: also MLX's host cost per graph node: chains of 200 one-block custom kernels
// whose source is ~0.3 KB or ~16 KB (MLX hashes the whole generated source at every launch,
// custom_kernel.cpp), and chains of 200 mx.add, timed the same way.
// MLX_MAX_OPS_PER_BUFFER / MLX_USE_CUDA_GRAPHS (MLX's own variables) change how MLX batches
// nodes into CUDA graphs; bench/gpu/device.sh step-split runs it under several.
import { cacheFor, prefill } from "../../src/engine/one-sequence";
import * as mx from "../../src/mlx";
import { CustomKernel } from "../../src/mlx/kernels";
import { loadModel } from "../../src/models/loader";
import { gpuName, median } from "./timing";

const args = process.argv.slice(2);
const modelPath = args[0];
if (!modelPath) throw new Error("usage: step-split.ts MODEL [--prompt N] [--steps N] [--nodes]");
const flag = (name: string, fallback: number) =>
  args.includes(name) ? Number(args[args.indexOf(name) + 1]) : fallback;
const promptLength = flag("--prompt", 128);
const steps = flag("--steps", 48);
// STEP_SPLIT_DEVICE=cpu: the decode split on the CPU (a dry run of this file; no custom kernels there).
const device = process.env.STEP_SPLIT_DEVICE === "cpu" ? "cpu" : "gpu";
mx.setDevice(device);

const env = ["MLX_MAX_OPS_PER_BUFFER", "MLX_MAX_MB_PER_BUFFER", "MLX_USE_CUDA_GRAPHS"]
  .map((k) => `${k}=${process.env[k] ?? "(default)"}`)
  .join(" ");
console.log(`# step-split, ${new Date().toISOString()}\nGPU: ${gpuName()}. ${env}. Context ${promptLength} tokens.\n`);

const fmt = (xs: number[]) => median(xs).toFixed(3);

function decodeSplit(): void {
  const { model } = loadModel(modelPath as string);
  const prompt = Array.from({ length: promptLength }, (_, i) => 100 + ((i * 7919) % 20000));
  const cache = cacheFor(model);
  try {
    let token = mx.tidy(() => mx.argmax(prefill(model, cache, prompt), -1).item() as number);
    const forward = (t: number | mx.MxArray) =>
      mx.keep(
        mx.tidy(() =>
          mx.argmax(model.forward(typeof t === "number" ? mx.int32([t], [1, 1]) : mx.reshape(t, [1, 1]), cache), -1),
        ),
      );
    const build: number[] = [];
    const evalMs: number[] = [];
    const wait: number[] = [];
    for (let i = 0; i < steps + 8; i++) {
      const t0 = performance.now();
      const next = forward(token);
      const t1 = performance.now();
      mx.asyncEval(next);
      const t2 = performance.now();
      token = next.item() as number;
      const t3 = performance.now();
      next.dispose();
      if (i < 8) continue; // warm-up: compiles, cache growth
      build.push(t1 - t0);
      evalMs.push(t2 - t1);
      wait.push(t3 - t2);
    }
    const total = build.map((b, i) => b + (evalMs[i] as number) + (wait[i] as number));
    console.log("| unpipelined one-row step | build ms | eval (MLX host) ms | wait ms | total ms |");
    console.log("|---|---:|---:|---:|---:|");
    console.log(`| median of ${steps} | ${fmt(build)} | ${fmt(evalMs)} | ${fmt(wait)} | ${fmt(total)} |`);
    // Pipelined: step n+1 built and queued before step n's token is read (the token stays on the GPU: a
    // uint32 index, whose first use compiles MLX's gather for it, so 8 warm-up steps first).
    let current = forward(token);
    mx.asyncEval(current);
    const pBuild: number[] = [];
    const pEval: number[] = [];
    const pWait: number[] = [];
    let t0 = performance.now();
    for (let i = -8; i < steps; i++) {
      if (i === 0) {
        pBuild.length = pEval.length = pWait.length = 0;
        t0 = performance.now();
      }
      const a = performance.now();
      const next = forward(current);
      const b = performance.now();
      mx.asyncEval(next);
      const c = performance.now();
      current.item();
      const d = performance.now();
      current.dispose();
      current = next;
      pBuild.push(b - a);
      pEval.push(c - b);
      pWait.push(d - c);
    }
    const perToken = (performance.now() - t0) / steps;
    current.item();
    current.dispose();
    console.log(
      `| pipelined, ${steps} steps: ${perToken.toFixed(3)} ms a token (${(1000 / perToken).toFixed(1)} tok/s) | ${fmt(pBuild)} | ${fmt(pEval)} | ${fmt(pWait)} | ${perToken.toFixed(3)} |\n`,
    );
  } finally {
    cache.dispose();
    model.dispose();
  }
}

/** MLX's host time per node: a chain of `count` nodes made by `op`, split as above (median of 15). */
function chain(label: string, count: number, op: (x: mx.MxArray) => mx.MxArray): void {
  const x0 = mx.keep(mx.zeros([1024], mx.Dtype.float16));
  mx.evaluate(x0);
  const build: number[] = [];
  const evalMs: number[] = [];
  const wait: number[] = [];
  for (let r = 0; r < 18; r++) {
    mx.tidy(() => {
      const t0 = performance.now();
      let y = x0;
      for (let i = 0; i < count; i++) y = op(y);
      const t1 = performance.now();
      mx.asyncEval(y);
      const t2 = performance.now();
      mx.evaluate(y);
      const t3 = performance.now();
      if (r >= 3) {
        build.push(((t1 - t0) * 1000) / count);
        evalMs.push(((t2 - t1) * 1000) / count);
        wait.push(((t3 - t2) * 1000) / count);
      }
    });
  }
  x0.dispose();
  console.log(`| ${label} | ${fmt(build)} | ${fmt(evalMs)} | ${fmt(wait)} |`);
}

function nodeCosts(): void {
  const body = `const int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < 1024) y[i] = x[i] + T(1);`;
  const padding = `/*${"pad ".repeat(4000)}*/\n`;
  const small = new CustomKernel({ name: "pv_bench_node_small", inputs: ["x"], outputs: ["y"], source: body });
  const large = new CustomKernel({
    name: "pv_bench_node_large",
    inputs: ["x"],
    outputs: ["y"],
    source: body,
    header: padding,
  });
  const plan = (k: CustomKernel) =>
    k.plan({
      outputs: [{ shape: [1024], dtype: mx.Dtype.float16 }],
      grid: [1024, 1, 1],
      threadgroup: [1024, 1, 1],
      template: { T: { dtype: mx.Dtype.float16 } },
    });
  const ps = plan(small);
  const pl = plan(large);
  console.log("| chain of 200 nodes | build us a node | eval (MLX host) us a node | wait us a node |");
  console.log("|---|---:|---:|---:|");
  chain("custom kernel, ~0.3 KB source", 200, (x) => ps.run([x])[0] as mx.MxArray);
  chain("custom kernel, ~16 KB source", 200, (x) => pl.run([x])[0] as mx.MxArray);
  chain("mx.add", 200, (x) => mx.add(x, x));
  console.log("");
}

decodeSplit();
if (args.includes("--nodes") && device === "gpu") nodeCosts();
