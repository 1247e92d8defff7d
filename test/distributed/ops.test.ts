// The shim's distributed calls (ffi/distributed.cpp) over MLX's ring backend:
// two processes on 127.0.0.1 with MLX_RANK and MLX_HOSTFILE as mlx.launch sets
// them. Also the pure parts: sharding rules, the router's prefix shadow, flags.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { takeParallelFlags } from "../../src/cli/serve";
import { freePorts, groupLaunch, ringHostfile } from "../../src/engine/group-launch";
import { folderConfig } from "../../src/models/model-files";
import { shardedConfig, shardProblem } from "../../src/models/shard";
import { chooseReplica, PREFIX_BLOCK, PrefixShadow, resolveReplicas } from "../../src/server/replicas";
import { REPO_ROOT } from "../../src/paths";
import { tinyModel } from "../support/models";

const RANK_SCRIPT = join(REPO_ROOT, "test/support/distributed-rank.ts");

describe("MLX ring backend through the shim", () => {
  test("init, rank, size, all_sum, all_max, all_gather, send, recv over two processes", async () => {
    const launch = groupLaunch({ size: 2, backend: "ring" });
    try {
      const procs = [0, 1].map((rank) => {
        const { argv, env } = launch.spawn(rank, () => [process.execPath, RANK_SCRIPT]);
        return Bun.spawn(argv, { env: { ...process.env, ...env }, stdout: "pipe", stderr: "pipe" });
      });
      const timer = setTimeout(() => {
        for (const p of procs) p.kill("SIGKILL");
      }, 60_000);
      const outputs = await Promise.all(procs.map((p) => new Response(p.stdout).text()));
      await Promise.all(procs.map((p) => p.exited));
      clearTimeout(timer);
      expect(procs.map((p) => p.exitCode)).toEqual([0, 0]);
      const [r0, r1] = outputs.map((o) => JSON.parse(o.trim().split("\n").at(-1) as string));
      for (const r of [r0, r1]) {
        expect(r.before).toBeNull();
        expect(r.size).toBe(2);
        expect(r.ring).toBe(true);
        expect(r.sum).toEqual([3, 30, -1]);
        expect(r.max).toEqual([2, 20, 0]);
        expect(r.gathered).toEqual({ shape: [2, 2], values: [0, 0, 1, 1] });
      }
      expect([r0.rank, r1.rank]).toEqual([0, 1]);
      expect(r1.received).toEqual([42, 43]);
      expect(r0.received).toEqual([7, 8, 9]);
    } finally {
      launch.cleanup();
    }
  }, 90_000);

  test("the host file is mlx.launch's: one list of ip:port per rank", () => {
    const ports = freePorts(3);
    expect(new Set(ports).size).toBe(3);
    expect(ringHostfile(ports)).toEqual(ports.map((p) => [`127.0.0.1:${p}`]));
    const nccl = groupLaunch({ size: 2, backend: "nccl" }, 2);
    expect(nccl.spawn(1, () => ["engine"]).env).toMatchObject({
      MLX_RANK: "1",
      MLX_WORLD_SIZE: "2",
      NCCL_HOST_IP: "127.0.0.1",
      CUDA_VISIBLE_DEVICES: "3",
    });
    expect(() => groupLaunch({ size: 2, backend: "mpi" })).toThrow(/mpirun/);
  });
});

describe("sharding rules", () => {
  test("heads, KV heads and FFN width divide by the rank count", () => {
    const c = folderConfig(tinyModel("tiny-llama"));
    expect(shardProblem(c, 2)).toBeNull();
    const half = shardedConfig(c, 2);
    expect([half.numHeads, half.numKvHeads, half.intermediateSize]).toEqual([2, 1, 128]);
    expect(shardProblem(c, 4)).toMatch(/KV heads \(2\) do not divide over 4 ranks/);
    expect(shardProblem({ ...c, modelType: "gemma3_text" }, 2)).toMatch(/supports llama/);
  });
});

describe("the router's prefix shadow", () => {
  test("matches whole blocks of a shared prefix, and only from the start", () => {
    const shadow = new PrefixShadow();
    const a = Array.from({ length: 100 }, (_, i) => i);
    shadow.add(PrefixShadow.hashes(a));
    const followUp = [...a, 500, 501, 502];
    expect(shadow.matchTokens(PrefixShadow.hashes(followUp))).toBe(3 * PREFIX_BLOCK);
    const shifted = [1, ...a];
    expect(shadow.matchTokens(PrefixShadow.hashes(shifted))).toBe(0);
    const shortened = a.slice(0, 40);
    expect(shadow.matchTokens(PrefixShadow.hashes(shortened))).toBe(PREFIX_BLOCK);
  });

  test("is bounded: the oldest blocks go first", () => {
    const shadow = new PrefixShadow(2);
    shadow.add(PrefixShadow.hashes(Array.from({ length: 96 }, (_, i) => i)));
    expect(shadow.size).toBe(2);
    expect(shadow.matchTokens(PrefixShadow.hashes(Array.from({ length: 96 }, (_, i) => i)))).toBe(0);
  });
});

describe("choosing a replica", () => {
  const r = (ready: boolean, load: number, match: number) => ({ ready, load, match });

  test("the longest prefix wins; ties and misses go to the least loaded; down replicas are skipped", () => {
    expect(chooseReplica([r(true, 3, 64), r(true, 0, 32)], 8)).toEqual({ replica: 0, matchedTokens: 64 });
    expect(chooseReplica([r(true, 3, 0), r(true, 1, 0)], 8)).toEqual({ replica: 1, matchedTokens: 0 });
    expect(chooseReplica([r(true, 2, 32), r(true, 1, 32)], 8)).toEqual({ replica: 1, matchedTokens: 32 });
    expect(chooseReplica([r(false, 0, 96), r(true, 5, 0)], 8)).toEqual({ replica: 1, matchedTokens: 0 });
    expect(chooseReplica([r(false, 0, 0), r(false, 0, 0)], 8)).toEqual({ replica: 0, matchedTokens: 0 });
  });

  test("affinity yields to load past the imbalance bound", () => {
    expect(chooseReplica([r(true, 9, 64), r(true, 2, 0)], 8)).toEqual({ replica: 0, matchedTokens: 64 });
    expect(chooseReplica([r(true, 10, 64), r(true, 2, 0)], 8)).toEqual({ replica: 1, matchedTokens: 0 });
  });
});

describe("serve flags", () => {
  test("--tensor-parallel, --distributed-backend and --replicas come out of argv", () => {
    const { flags, rest } = takeParallelFlags([
      "--port",
      "9000",
      "--tensor-parallel",
      "2",
      "--distributed-backend=ring",
      "--replicas",
      "auto",
    ]);
    expect(rest).toEqual(["--port", "9000"]);
    expect(flags).toEqual({ tensorParallel: 2, distributedBackend: "ring", replicas: "auto", hosts: null });
    expect(() => takeParallelFlags(["--replicas", "0"])).toThrow(/replicas/);
    expect(() => takeParallelFlags(["--distributed-backend", "tcp"])).toThrow(/ring, nccl/);
    expect(resolveReplicas("3")).toBe(3);
    expect(resolveReplicas("auto")).toBeGreaterThanOrEqual(1);
  });
});
