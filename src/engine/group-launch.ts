// How the supervisor starts a tensor-parallel group on this machine, the way
// mlx.launch does: the ring backend reads MLX_RANK and MLX_HOSTFILE (a JSON
// list, per rank, of "ip:port" addresses it listens on); NCCL reads MLX_RANK,
// MLX_WORLD_SIZE, NCCL_HOST_IP and NCCL_PORT (rank 0's rendezvous), and each
// rank gets its own GPU through CUDA_VISIBLE_DEVICES. Runs in the server.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface GroupLaunch {
  /** The environment of one rank. */
  env(rank: number): Record<string, string>;
  /** Removes the host file. */
  cleanup(): void;
}

/** Ports nothing listens on now (the kernel's choice; a race with other programs is possible but rare). */
export function freePorts(n: number, host = "127.0.0.1"): number[] {
  const servers = Array.from({ length: n }, () => Bun.listen({ hostname: host, port: 0, socket: { data() {} } }));
  const ports = servers.map((s) => s.port);
  for (const s of servers) s.stop(true);
  return ports;
}

/** The ring backend's host file: one address per rank, all on this machine. */
export function ringHostfile(ports: readonly number[], host = "127.0.0.1"): string[][] {
  return ports.map((p) => [`${host}:${p}`]);
}

export function groupLaunch(tp: { size: number; backend: string }): GroupLaunch {
  const size = tp.size;
  if (tp.backend === "nccl") {
    const [port] = freePorts(1);
    return {
      env: (rank) => ({
        MLX_RANK: String(rank),
        MLX_WORLD_SIZE: String(size),
        NCCL_HOST_IP: "127.0.0.1",
        NCCL_PORT: String(port),
        CUDA_VISIBLE_DEVICES: String(rank),
      }),
      cleanup: () => {},
    };
  }
  if (tp.backend !== "ring" && tp.backend !== "any") {
    throw new Error(`the supervisor starts ring and nccl groups; ${tp.backend} needs its own launcher (mpirun)`);
  }
  const dir = mkdtempSync(join(tmpdir(), "pensieve-ring-"));
  const hostfile = join(dir, "hostfile.json");
  writeFileSync(hostfile, JSON.stringify(ringHostfile(freePorts(size))));
  return {
    env: (rank) => ({ MLX_RANK: String(rank), MLX_HOSTFILE: hostfile, MLX_WORLD_SIZE: String(size) }),
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}
