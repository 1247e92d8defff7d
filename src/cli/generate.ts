// pensieve generate: streams an answer to stdout from an in-process engine.
import { generateTokens } from "../engine/one-sequence";
import { samplingParams } from "../engine/protocol";
import { resolveLocalModel } from "../hub/resolve";
import * as mx from "../mlx";
import { loadModel } from "../models/loader";
import { ModelSession } from "../server/model-session";
import { applyChatTemplate, type ChatMessage, StopMatcher, StreamingDetokenizer } from "../text";
import { numberFlag, parseArgs, stringFlag } from "./args";

const GENERATE_USAGE = `usage: pensieve generate --prompt TEXT [options]
  --model PATH|ALIAS     model folder, .gguf file or alias (default: smollm2-135m)
  --system TEXT          system message
  --raw                  send the prompt as is (no chat template)
  --max-tokens N         default 256
  --temperature T        default 0 (greedy)
  --top-p P --top-k K --min-p P --repetition-penalty R --seed S
  --stop TEXT            stop string (repeatable as --stop=a --stop=b is not supported; use one)
  --device cpu|gpu
  --quiet                no statistics on stderr`;

export async function runGenerate(argv: string[]): Promise<number> {
  const args = parseArgs(argv, ["raw", "quiet"]);
  const prompt = stringFlag(args, "prompt") ?? args.positional.join(" ");
  if (!prompt) {
    console.error(GENERATE_USAGE);
    return 2;
  }
  // As the engine's main does: MLX reads MLX_PTX_CACHE_DIR once, at its first JIT.
  if ((await import("../mlx/kernel-cache")).kernelCacheMode() === "mlx") {
    (await import("../mlx/kernel-cache-mlx")).useHomePtxCacheDir();
  }
  const modelPath = resolveLocalModel(stringFlag(args, "model"));
  const device = stringFlag(args, "device");
  if (device === "gpu" || device === "cpu") mx.setDevice(device);
  else mx.setDevice(mx.gpuAvailable() ? "gpu" : "cpu");
  const tokenizer = ModelSession.loadTokenizer(modelPath);
  const loaded = loadModel(modelPath);
  let promptTokens: number[];
  if (args.flags.has("raw")) {
    promptTokens = tokenizer.encode(prompt, { addSpecialTokens: true });
  } else {
    const messages: ChatMessage[] = [];
    const system = stringFlag(args, "system");
    if (system) messages.push({ role: "system", content: system });
    messages.push({ role: "user", content: prompt });
    const text = applyChatTemplate(tokenizer, messages, { addGenerationPrompt: true });
    promptTokens = tokenizer.encode(text, { addSpecialTokens: false });
  }
  const sampling = samplingParams({
    temperature: numberFlag(args, "temperature") ?? 0,
    topP: numberFlag(args, "top-p") ?? 1,
    topK: numberFlag(args, "top-k") ?? 0,
    minP: numberFlag(args, "min-p") ?? 0,
    repetitionPenalty: numberFlag(args, "repetition-penalty") ?? 1,
    seed: numberFlag(args, "seed") ?? null,
  });
  const detok = new StreamingDetokenizer(tokenizer, { skipSpecialTokens: true, contextIds: promptTokens.slice(-4) });
  const stop = stringFlag(args, "stop");
  const stops = new StopMatcher(stop ? [stop] : []);
  const maxTokens = Math.min(
    numberFlag(args, "max-tokens") ?? 256,
    loaded.config.maxPositionEmbeddings - promptTokens.length,
  );
  const gen = generateTokens(loaded.model, promptTokens, {
    maxTokens,
    sampling,
    stopTokenIds: [...tokenizer.eosIds, ...loaded.config.eosTokenIds],
  });
  let result: IteratorResult<
    unknown,
    { finishReason: string; promptTokens: number; completionTokens: number; prefillMs: number; totalMs: number }
  >;
  let stopped = false;
  for (result = gen.next(); !result.done; result = gen.next()) {
    const step = result.value as { token: number };
    const out = stops.push(detok.push(step.token));
    process.stdout.write(out.text);
    if (out.stop !== undefined) {
      stopped = true;
      gen.return(undefined as never);
      break;
    }
  }
  if (!stopped) process.stdout.write(stops.push(detok.flush()).text + stops.flush());
  process.stdout.write("\n");
  if (!args.flags.has("quiet") && result.done) {
    const r = result.value;
    const decodeMs = r.totalMs - r.prefillMs;
    console.error(
      `[${r.promptTokens} prompt tokens, ${r.completionTokens} generated; first token ${r.prefillMs.toFixed(0)} ms; ` +
        `${r.completionTokens > 1 ? ((1000 * (r.completionTokens - 1)) / decodeMs).toFixed(1) : "-"} tok/s; ` +
        `stop: ${r.finishReason}; peak MLX memory ${(mx.memory.peak() / 2 ** 20).toFixed(0)} MiB]`,
    );
  }
  loaded.model.dispose();
  return 0;
}
