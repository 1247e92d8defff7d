// How the supervisor starts a tensor-parallel group, the way mlx.launch does.
// The ring backend reads MLX_RANK and MLX_HOSTFILE (a JSON list, per rank, of
// "ip:port" addresses that rank listens on); NCCL reads MLX_RANK,
// MLX_WORLD_SIZE, NCCL_HOST_IP and NCCL_PORT (rank 0's rendezvous), and each
// rank gets its own GPU through CUDA_VISIBLE_DEVICES. Ranks on other machines
// (--hosts) start over ssh with a shell script that exports the same variables,
// writes the host file there, and execs the engine (mlx.launch's
// make_launch_script); `ssh -tt` ties the remote process to the connection, so
// killing the local ssh ends it. Rank 0 always runs here: it speaks the server's IPC.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** One machine of a multi-host group (mlx.launch's host file entry). */
export interface GroupHost {
  /** What ssh connects to (user@host or an ssh_config alias); unused for rank 0, which runs here. */
  ssh: string;
  /** Addresses the other ranks reach this one at; the ring backend listens on the first. */
  ips: string[];
  /** The pensieve command there (default: the same command as here). */
  command?: string[];
  /** The model's path there (default: the same path as here). */
  model?: string;
  /** Working folder there. */
  cwd?: string;
}

export interface TensorParallelLaunch {
  size: number;
  backend: string;
  /** Machines, rank order; absent: every rank on this machine. */
  hosts?: GroupHost[] | null;
  /** First ring port on remote machines (default 32323, as mlx.launch). */
  startingPort?: number;
}

export interface RankSpawn {
  argv: string[];
  env: Record<string, string>;
}

export interface GroupLaunch {
  /** How to start one rank, given how the engine starts here (and the model path it is given). */
  spawn(rank: number, engineArgv: (model?: string) => string[]): RankSpawn;
  /** Removes the local host file. */
  cleanup(): void;
}

/** Ports nothing listens on now (the kernel's choice; a race with other programs is possible but rare). */
export function freePorts(n: number, host = "127.0.0.1"): number[] {
  const servers = Array.from({ length: n }, () => Bun.listen({ hostname: host, port: 0, socket: { data() {} } }));
  const ports = servers.map((s) => s.port);
  for (const s of servers) s.stop(true);
  return ports;
}

/** The ring backend's host file: one address per rank. */
export function ringHostfile(ports: readonly number[], ips: readonly string[] = []): string[][] {
  return ports.map((p, rank) => [`${ips[rank] ?? "127.0.0.1"}:${p}`]);
}

const LOOPBACK = /^(127\.|::1$|localhost$)/;

/** POSIX shell quoting. */
function quote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`;
}

/** The remote shell script of one rank: export the variables, write the host file, exec the engine. */
export function remoteScript(env: Record<string, string>, files: Record<string, string>, argv: string[], cwd?: string) {
  let script = cwd ? `cd ${quote(cwd)} || exit 1; ` : "";
  for (const [k, v] of Object.entries(env)) script += `export ${k}=${quote(v)}; `;
  for (const [k, content] of Object.entries(files)) {
    script += `fname=$(mktemp); printf '%s' ${quote(content)} > "$fname"; export ${k}="$fname"; `;
  }
  return `${script}exec ${argv.map(quote).join(" ")}`;
}

/** ssh as mlx.launch calls it (PENSIEVE_SSH replaces the program, e.g. with options or for tests). */
function sshArgv(host: string, script: string): string[] {
  const ssh = (process.env.PENSIEVE_SSH ?? "ssh").split(" ").filter(Boolean);
  return [...ssh, "-tt", "-o", "LogLevel=QUIET", host, script];
}

export function groupLaunch(tp: TensorParallelLaunch, gpuOffset = 0): GroupLaunch {
  const size = tp.size;
  const hosts = tp.hosts ?? null;
  if (hosts && hosts.length !== size) throw new Error(`--hosts lists ${hosts.length} machines for ${size} ranks`);
  const remote = (rank: number) => rank > 0 && hosts !== null;
  const start = (rank: number, env: Record<string, string>, files: Record<string, string>, argv: string[]) => {
    const host = hosts?.[rank];
    if (!remote(rank) || !host) return { argv, env: { ...env, ...files } };
    return { argv: sshArgv(host.ssh, remoteScript(env, {}, argv, host.cwd)), env: {} };
  };
  const engineFor = (rank: number, engineArgv: (model?: string) => string[]) => {
    const host = hosts?.[rank];
    if (!remote(rank) || !host) return engineArgv();
    const argv = engineArgv(host.model);
    // The command here is [bun, cli.ts] or [pensieve]; the engine's own arguments follow it.
    return host.command ? [...host.command, ...argv.slice(argv.indexOf("engine"))] : argv;
  };
  if (tp.backend === "nccl") {
    const master = hosts?.[0]?.ips[0] ?? "127.0.0.1";
    const [port] = freePorts(1);
    return {
      spawn: (rank, engineArgv) =>
        start(
          rank,
          {
            MLX_RANK: String(rank),
            MLX_WORLD_SIZE: String(size),
            NCCL_HOST_IP: master,
            NCCL_PORT: String(port),
            // One GPU per rank of this machine (mlx.launch: rank % GPUs per host).
            CUDA_VISIBLE_DEVICES: String(hosts ? 0 : gpuOffset + rank),
          },
          {},
          engineFor(rank, engineArgv),
        ),
      cleanup: () => {},
    };
  }
  if (tp.backend !== "ring" && tp.backend !== "any") {
    throw new Error(`the supervisor starts ring and nccl groups; ${tp.backend} needs its own launcher (mpirun)`);
  }
  const ips = hosts?.map((h) => h.ips[0] ?? "") ?? [];
  if (hosts && ips.some((ip) => !ip)) throw new Error("the ring backend needs an IP for every host (ips)");
  const allLocal = ips.every((ip) => LOOPBACK.test(ip));
  const ports = allLocal ? freePorts(size) : Array.from({ length: size }, (_, r) => (tp.startingPort ?? 32323) + r);
  const hostfileJson = JSON.stringify(ringHostfile(ports, ips));
  const dir = mkdtempSync(join(tmpdir(), "pensieve-ring-"));
  const hostfile = join(dir, "hostfile.json");
  writeFileSync(hostfile, hostfileJson);
  return {
    spawn: (rank, engineArgv) => {
      const env = { MLX_RANK: String(rank), MLX_WORLD_SIZE: String(size) };
      if (!remote(rank)) return start(rank, env, { MLX_HOSTFILE: hostfile }, engineFor(rank, engineArgv));
      const host = hosts?.[rank] as GroupHost;
      const script = remoteScript(env, { MLX_HOSTFILE: hostfileJson }, engineFor(rank, engineArgv), host.cwd);
      return { argv: sshArgv(host.ssh, script), env: {} };
    },
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}
