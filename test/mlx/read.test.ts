// Reading an array to the host (pv_read: item(), read()): the array is evaluated on its own and copied
// straight out when row-contiguous; views that are not (a transpose, a broadcast, a strided slice) are made
// contiguous first. Pipelined decode relies on the first: a contiguous() node made up front was queued behind the
// next step already on the stream, so reading step n's token waited for step n+1.
import { expect, test } from "bun:test";
import * as mx from "../../src/mlx";

test("views read back in row-major order", () => {
  mx.tidy(() => {
    const a = mx.reshape(mx.arange(0, 6, 1, mx.Dtype.float32), [2, 3]);
    expect([...(a.read() as Float32Array)]).toEqual([0, 1, 2, 3, 4, 5]);
    expect([...(mx.transpose(a, [1, 0]).read() as Float32Array)]).toEqual([0, 3, 1, 4, 2, 5]);
    expect([...(mx.broadcastTo(mx.float32([7, 8]), [2, 2]).read() as Float32Array)]).toEqual([7, 8, 7, 8]);
    expect([...(mx.sliceAxis(a, 1, 1, 3).read() as Float32Array)]).toEqual([1, 2, 4, 5]);
    expect([...(mx.sliceAxis(a, 0, 1, 2).read() as Float32Array)]).toEqual([3, 4, 5]);
    expect(mx.sum(a, [0, 1]).item()).toBe(15);
  });
});

test("an array read after a later graph that uses it was queued reads its own value", () => {
  mx.tidy(() => {
    const step = mx.add(mx.float32([1, 2, 3]), 1);
    mx.asyncEval(step);
    let next = step;
    for (let i = 0; i < 50; i++) next = mx.multiply(next, 1.5);
    mx.asyncEval(next);
    expect([...(step.read() as Float32Array)]).toEqual([2, 3, 4]);
    const first = (next.read() as Float32Array)[0] as number;
    expect(Math.abs(first / (2 * 1.5 ** 50) - 1)).toBeLessThan(1e-5);
  });
});
