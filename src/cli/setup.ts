// pensieve setup [--model alias|org/name|path]: everything a model needs, in order:
//   1. the MLX backend and device (wheel, shim),
//   2. the model (the embedded default, a local path, or a Hugging Face download
//      with resume, verification and progress),
//   3. a memory estimate (a model that cannot fit is refused),
//   4. a load and a few generated tokens as validation,
//   5. the config file that `pensieve serve` reads.
import { defaultConfigPath, loadConfig, writeConfig } from "../config";
import { downloadModel, downloadRepoFile, formatBytes, ProgressRenderer, resolveModelSpec } from "../hub";
import { FROM_SOURCE } from "../paths";
import { type DoctorReport, doctor } from "./doctor";

const say = (line: string) => process.stderr.write(`[setup] ${line}\n`);

/** Downloads (or finds) the model; returns its local path. */
async function fetchModel(spec: string): Promise<string> {
  const resolved = resolveModelSpec(spec);
  const target = resolved.kind === "alias" ? resolved.target : resolved;
  if (target.kind === "local") {
    if (target.exists) return target.path;
    if (resolved.kind === "alias") {
      const { extractEmbeddedModel } = await import("../mlx/runtime");
      if (extractEmbeddedModel(target.path)) return target.path;
      const { ensureEmbeddedModel } = await import("../models/embedded");
      return ensureEmbeddedModel(say);
    }
    throw new Error(`no model at ${target.path}`);
  }
  const reporter = new ProgressRenderer({ stream: process.stderr });
  if (target.filename) {
    say(`downloading ${target.repoId}/${target.filename} (${target.revision}) from the Hugging Face Hub`);
    const file = await downloadRepoFile(target.repoId, target.filename, { revision: target.revision, reporter });
    return file.path;
  }
  say(`downloading ${target.repoId} (${target.revision}) from the Hugging Face Hub`);
  const snapshot = await downloadModel(target.repoId, { revision: target.revision, reporter });
  for (const w of snapshot.warnings) say(`warning: ${w}`);
  say(`${snapshot.files.length} files in ${snapshot.dir} (${formatBytes(snapshot.downloadedBytes)} transferred)`);
  return snapshot.dir;
}

function backendProblems(report: DoctorReport): string[] {
  return report.checks
    .filter((c) => c.status === "fail")
    .map((c) => `${c.title}: ${c.detail}${c.fix ? ` (fix: ${c.fix})` : ""}`);
}

export async function runSetup(argv: string[]): Promise<number> {
  const { config, flags, file } = loadConfig({ argv });
  if (flags.unknown.length) throw new Error(`setup: unknown option ${flags.unknown[0]}`);
  const spec = config.model;

  // 1. Backend and device.
  if (FROM_SOURCE) {
    const { provisionMlx } = await import("../mlx/provision");
    const backend = config.backend === "auto" ? undefined : config.backend;
    await provisionMlx(backend, say);
  }
  const problems = backendProblems(await doctor({ argv, loadMlx: true }));
  if (problems.length) {
    for (const p of problems) say(`problem: ${p}`);
    return 1;
  }

  // 2. The model.
  const path = await fetchModel(spec);

  // 3. Memory.
  // The same plan the engine makes when it starts (src/engine/engine-plan.ts).
  const { readModelConfig } = await import("../models/loader");
  const { planMemory } = await import("../engine/engine-plan");
  const { cpuPackedWeightBytes } = await import("../engine/memory-plan");
  const planned = readModelConfig(path);
  const mx = await import("../mlx");
  const device = config.backend === "cpu" || !mx.gpuAvailable() ? "cpu" : "gpu";
  let plan: ReturnType<typeof planMemory>;
  try {
    // On the CPU's int8 path the engine packs quantized weights at load (cpuPackedWeightBytes).
    const quantized = planned.config.quantization !== null || /\.gguf$/i.test(path);
    const weightBytes =
      device === "cpu" && quantized && mx.cpuPackingActive()
        ? cpuPackedWeightBytes(planned.weightBytes, planned.config)
        : planned.weightBytes;
    plan = planMemory(config, planned.config, weightBytes, device, device === "cpu" ? 4 : 2);
  } catch (e) {
    say(`refused: ${(e as Error).message}`);
    return 1;
  }
  for (const w of plan.estimate.warnings) say(`warning: ${w}`);
  say(plan.estimate.message);

  // 4. Load and generate a few tokens.
  say("loading the model and generating a few tokens ...");
  const started = performance.now();
  const text = await validate(path, device);
  say(`ok in ${((performance.now() - started) / 1000).toFixed(1)} s: ${JSON.stringify(text)}`);

  // 5. The config `pensieve serve` uses.
  const target = flags.configPath ?? file ?? defaultConfigPath();
  const changes: Record<string, unknown> = { model: spec };
  if (flags.values.maxContext !== undefined) changes.maxContext = config.maxContext;
  if (flags.values.backend !== undefined) changes.backend = config.backend;
  writeConfig(target, changes);
  say(`wrote ${target}: model = ${spec}`);
  say("start the server with: pensieve serve");
  return 0;
}

async function validate(path: string, device: "cpu" | "gpu"): Promise<string> {
  const mx = await import("../mlx");
  const { loadModel } = await import("../models/loader");
  const { generateTokens } = await import("../engine/one-sequence");
  const { samplingParams } = await import("../engine/protocol");
  const { ModelSession } = await import("../server/model-session");
  const { encodeChat, StreamingDetokenizer } = await import("../text");
  mx.setDevice(device);
  const tokenizer = ModelSession.loadTokenizer(path);
  const { model } = loadModel(path);
  try {
    const prompt = encodeChat(tokenizer, [{ role: "user", content: "Say hello." }], { addGenerationPrompt: true });
    const detok = new StreamingDetokenizer(tokenizer, { skipSpecialTokens: true });
    let text = "";
    for (const step of generateTokens(model, prompt, {
      maxTokens: 8,
      sampling: samplingParams(),
      stopTokenIds: [...tokenizer.eosIds],
    })) {
      text += detok.push(step.token);
    }
    return text + detok.flush();
  } finally {
    model.dispose();
  }
}
