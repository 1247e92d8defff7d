// One rank of a two-process MLX group (ring backend), for test/distributed/ops.test.ts:
// runs each collective of the shim once and prints the results as one JSON line.
import { Dtype } from "../../src/mlx/array";
import {
  allGather,
  allMax,
  allSum,
  distributedAvailable,
  distributedGroup,
  initDistributed,
  recv,
  recvLike,
  send,
} from "../../src/mlx/distributed";
import { evaluate, float32 } from "../../src/mlx/ops";

const before = distributedGroup();
const g = initDistributed("ring");
const mine = float32([g.rank + 1, 10 * (g.rank + 1), -g.rank]);
const sum = allSum(mine);
const max = allMax(mine);
const gathered = allGather(float32([g.rank, g.rank], [1, 2]));
evaluate(sum, max, gathered);
let received: number[] = [];
if (g.rank === 0) {
  evaluate(send(float32([42, 43]), 1));
  received = Array.from(recvLike(float32([0, 0, 0]), 1).read() as Float32Array);
} else {
  received = Array.from(recv([2], Dtype.float32, 0).read() as Float32Array);
  evaluate(send(float32([7, 8, 9]), 0));
}
console.log(
  JSON.stringify({
    before,
    rank: g.rank,
    size: g.size,
    ring: distributedAvailable("ring"),
    sum: Array.from(sum.read() as Float32Array),
    max: Array.from(max.read() as Float32Array),
    gathered: { shape: gathered.shape, values: Array.from(gathered.read() as Float32Array) },
    received,
  }),
);
