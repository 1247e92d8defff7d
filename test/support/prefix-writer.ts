// A child process for test/engine/prefix-store-pieces.test.ts: prefills a
// prompt with tiny-llama-f16, then writes its prefix to disk a piece at a
// time, as fast as it can, until it is done or killed.
//   bun test/support/prefix-writer.ts ROOT KEY LAYOUT PIECE_BYTES PROMPT_JSON
import { PrefixStore } from "../../src/engine/prefix-store";
import { loadModel } from "../../src/models/loader";
import { tinyModel } from "./models";
import { request, runScheduled, TEST_SCHEDULER_OPTIONS } from "./scheduler";

const [root, key, layout, pieceBytes, prompt] = process.argv.slice(2) as [string, string, string, string, string];
const { model } = loadModel(tinyModel("tiny-llama-f16"));
const store = new PrefixStore(root, key, 64 << 20, layout, model.config.numLayers, "cpu", Number(pieceBytes));
const run = runScheduled(
  model,
  [{ at: 0, request: request("w", JSON.parse(prompt) as number[], 2) }],
  { ...TEST_SCHEDULER_OPTIONS, prefixCacheBytes: null },
  (s) => s.attachPrefixStore(store),
);
console.log("writing");
while (run.scheduler.persistStep()) {}
console.log("done");
