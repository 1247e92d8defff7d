// Mistral (7B v0.1-v0.3 and the Mistral-shaped checkpoints): the Llama block.
// Hugging Face's Mistral windows every layer when config.json has a
// sliding_window and no layer_types; mlx-lm (which maps mistral to llama.py)
// windows only layers listed in layer_types. Mistral GGUFs say "llama" (llama.ts).
import type { Architecture } from "./architecture";
import { buildLlama, llamaShapes } from "./llama";

export const mistral: Architecture = {
  modelTypes: ["mistral"],
  hfClass: "MistralForCausalLM",
  hfAdjust: (c) =>
    c.slidingWindow && !c.layerTypes
      ? { ...c, layerTypes: Array.from({ length: c.numLayers }, () => "sliding_attention") }
      : c,
  weightShapes: (c) => llamaShapes(c),
  build: (kit, c, store) => buildLlama(kit, c, store),
};
