// Tensor parallelism inside the engine: N processes (ranks) of one MLX
// distributed group run the same scheduler in lockstep, each over its share of
// the weights (src/models/shard.ts); the model's all_sum calls keep their
// activations equal. Rank 0 speaks the server's IPC. Before each scheduler step
// it sends the steps' plain-data inputs (requests submitted, cancellations
// since the last step) to the other ranks over the group itself (two all_sum
// calls: length, then bytes), so every rank's scheduler sees the same inputs in
// the same order and makes the same decisions. Random sampling gets an explicit
// seed on rank 0, so every rank draws the same tokens.
import * as mx from "../mlx";
import { allMax, allSum, type DistributedBackend, type Group, initDistributed } from "../mlx/distributed";
import type { EngineRequest } from "./protocol";
import type { Scheduler } from "./scheduler";

/** The engine's part in a tensor-parallel group (EngineConfig.tensorParallel). */
export interface TensorParallelConfig {
  /** Ranks in the group. */
  size: number;
  /** MLX distributed backend: ring (TCP: CPUs, Macs), nccl (CUDA), mpi, any. */
  backend: DistributedBackend;
}

type Input = { op: "submit"; request: EngineRequest } | { op: "cancel"; id: string } | { op: "cancelAll" };

interface StepMessage {
  inputs: Input[];
  /** The group stops after this step (the server shut the engine down). */
  quit?: boolean;
}

/** Joins the group the supervisor described in the environment (MLX_RANK, MLX_HOSTFILE / NCCL_*). */
export function joinGroup(config: TensorParallelConfig): Group {
  const group = initDistributed(config.backend, true);
  if (group.size !== config.size) {
    throw new Error(`the ${config.backend} group has ${group.size} ranks, expected ${config.size}`);
  }
  return group;
}

/** Rank 0 sends a message; every rank returns it. Blocks until every rank has taken part. */
function broadcast(group: Group, message: StepMessage | null): StepMessage {
  const bytes = group.rank === 0 ? new TextEncoder().encode(JSON.stringify(message)) : null;
  return mx.tidy(() => {
    const length = allSum(mx.int32([bytes?.length ?? 0]));
    const n = length.item();
    const payload = bytes ?? new Uint8Array(n);
    const summed = allSum(mx.fromData(payload, [n], mx.Dtype.uint8));
    return JSON.parse(new TextDecoder().decode(summed.read() as Uint8Array)) as StepMessage;
  });
}

/** The smallest of each value over the group (every rank must plan the same context and KV budget). */
export function agreeOnMinimum(values: readonly number[]): number[] {
  return mx.tidy(() => {
    const negated = mx.int32(values.map((v) => -Math.min(v, 2 ** 31 - 1)));
    return Array.from(allMax(negated).read() as Int32Array, (v) => -v);
  });
}

/** Rank 0 draws seeds for unseeded random sampling, keeping whether the row may speculate as it was. */
function seeded(request: EngineRequest): EngineRequest {
  const s = request.sampling;
  if (s.seed !== null || s.temperature <= 0) return request;
  const seed = Math.floor(Math.random() * 2 ** 52);
  // An unseeded row speculates unless told not to; a seeded one only when asked (scheduler.#speculates).
  return { ...request, sampling: { ...s, seed, speculative: s.speculative ?? true } };
}

/**
 * Rank 0: records the scheduler's inputs and sends them to the other ranks
 * before each step. Returns a function that tells the group to stop.
 */
export function leadGroup(group: Group, scheduler: Scheduler): () => void {
  let pending: Input[] = [];
  const submit = scheduler.submit.bind(scheduler);
  const cancel = scheduler.cancel.bind(scheduler);
  const cancelAll = scheduler.cancelAll.bind(scheduler);
  const step = scheduler.step.bind(scheduler);
  scheduler.submit = (request) => {
    const r = seeded(request);
    pending.push({ op: "submit", request: structuredClone(r) });
    return submit(r);
  };
  scheduler.cancel = (id) => {
    pending.push({ op: "cancel", id });
    cancel(id);
  };
  scheduler.cancelAll = () => {
    pending.push({ op: "cancelAll" });
    cancelAll();
  };
  const send = (quit: boolean) => {
    const inputs = pending;
    pending = [];
    broadcast(group, quit ? { inputs, quit } : { inputs });
  };
  scheduler.step = () => {
    send(false);
    return step();
  };
  return () => send(true);
}

/**
 * Ranks 1..N-1: apply rank 0's inputs and step until rank 0 says the group
 * stops. Waiting for rank 0 blocks in MLX; between steps the event loop turns,
 * so that finalizers and timers run as they do on rank 0.
 */
export async function followGroup(group: Group, scheduler: Scheduler): Promise<void> {
  while (true) {
    await new Promise((resolve) => setImmediate(resolve));
    const message = broadcast(group, null);
    for (const input of message.inputs) {
      if (input.op === "submit") scheduler.submit(input.request);
      else if (input.op === "cancel") scheduler.cancel(input.id);
      else scheduler.cancelAll();
    }
    scheduler.step();
    if (message.quit) return;
  }
}
