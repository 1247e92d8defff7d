// Qwen3-MoE (Qwen3-30B-A3B, Qwen3-Coder-30B-A3B): the Qwen3 block whose MLP is
// a router over num_experts SwiGLU experts; each token runs its top-k experts
// (softmax over all, then the k largest, renormalized when norm_topk_prob) and
// sums their outputs by those weights. Every row of a batch routes on its own:
// routing is per token. Expert products go through MLX's gather_mm /
// gather_qmm (the shim's pv_gather_mm / pv_gather_qmm). All experts stay
// resident. Reads side by side with mlx-lm's models/qwen3_moe.py and
// switch_layers.py (mlx-lm sorts tokens by expert for long prompts, which only
// changes speed).
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import type { ModelConfig } from "./config";
import type { Mlp } from "./decoder";
import { buildLlama } from "./llama";
import type { LanguageModel } from "./types";
import { type ExpertWeight, expertLinear, type LinearWeight, linear, type WeightStore } from "./weights";

/** Whether layer i routes to experts (the rest use the dense MLP). */
export function isSparseLayer(c: ModelConfig, i: number): boolean {
  const moe = c.moe;
  return !!moe && !moe.mlpOnlyLayers.includes(i) && (i + 1) % moe.decoderSparseStep === 0;
}

interface Experts {
  router: LinearWeight;
  gate: ExpertWeight;
  up: ExpertWeight;
  down: ExpertWeight;
}

function routedMlp(c: ModelConfig, w: Experts): Mlp {
  const moe = c.moe;
  if (!moe) throw new Error("qwen3_moe without num_experts");
  const E = moe.numExperts;
  const k = moe.topK;
  const fused = mx.getDevice() === "gpu";
  return (x: MxArray) => {
    const [B, L, D] = x.shape as [number, number, number];
    const gates = mx.softmax(linear(x, w.router), -1, true);
    const inds = mx.sliceAxis(mx.argpartition(gates, E - k, 2), 2, E - k, E);
    let scores = mx.takeAlongAxis(gates, inds, 2);
    if (moe.normTopkProb) scores = mx.divide(scores, mx.sum(scores, -1, true));
    const xe = mx.reshape(x, [B, L, 1, 1, D]);
    const hidden = mx.swiglu(expertLinear(xe, w.gate, inds), expertLinear(xe, w.up, inds), fused);
    const y = mx.squeeze(expertLinear(hidden, w.down, inds), [3]);
    return mx.astype(mx.sum(mx.multiply(y, mx.expandDims(scores, -1)), -2), y.dtype);
  };
}

export function buildQwen3Moe(config: ModelConfig, store: WeightStore): LanguageModel {
  const c = config;
  const moe = c.moe;
  if (!moe) throw new Error("qwen3_moe: config.json has no num_experts");
  const F = moe.expertIntermediateSize;
  return buildLlama({ ...c, slidingWindow: null }, store, {
    qkNorm: true,
    mlp: (i, p) => {
      if (!isSparseLayer(c, i)) return null;
      const perExpert = (name: string) => ({ prefix: `${p}.experts`, name, count: moe.numExperts });
      return routedMlp(c, {
        router: store.linear(`${p}.gate`, c.hiddenSize),
        gate: store.experts(`${p}.switch_mlp.gate_proj`, c.hiddenSize, perExpert("gate_proj")),
        up: store.experts(`${p}.switch_mlp.up_proj`, c.hiddenSize, perExpert("up_proj")),
        down: store.experts(`${p}.switch_mlp.down_proj`, F, perExpert("down_proj")),
      });
    },
  });
}
