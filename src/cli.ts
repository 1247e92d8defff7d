#!/usr/bin/env bun
// pensieve: the command line. Each subcommand lives in src/cli/ or its room
// and is loaded only when it runs: `serve`, `models` and `doctor` must work
// (and say what is wrong) when MLX cannot load, and only `engine`, `generate`
// and `convert` open it.
import type { EngineConfig } from "./engine/protocol";

const USAGE = `usage: pensieve <command> [options]

commands:
  setup [--model M]     prepare a model (alias, Hugging Face org/name, or path) and make it the default
  serve                 start the HTTP server on 127.0.0.1:7777 (default model: SmolLM2-135M-Instruct)
  generate --prompt P   generate text from the command line
  models [list]         models on this machine
  models rm M           remove a downloaded model
  doctor                check the backend, device, memory, versions and folders
  convert IN.gguf OUT   write a GGUF model out as an MLX model folder
  engine                (internal) the engine process the server supervises

configuration (file ~/.config/pensieve/config.json or --config, then PENSIEVE_* variables, then flags):
`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case "serve":
      return (await import("./cli/serve")).runServe(rest);
    case "setup":
      return (await import("./cli/setup")).runSetup(rest);
    case "models": {
      const { formatModelList, listModels, removeModel } = await import("./cli/models");
      const [sub = "list", target] = rest;
      if (sub === "list" || sub === "ls") {
        console.log(formatModelList(listModels()));
        return 0;
      }
      if ((sub === "rm" || sub === "remove") && target) {
        const r = removeModel(target);
        console.log(`removed ${r.removed.join(", ")} (${(r.freedBytes / 2 ** 20).toFixed(1)} MiB freed)`);
        return 0;
      }
      throw new Error("usage: pensieve models [list] | pensieve models rm MODEL");
    }
    case "doctor": {
      const { doctor, printDoctorReport } = await import("./cli/doctor");
      const report = await doctor({ argv: rest, loadMlx: true });
      printDoctorReport(report);
      return report.ok ? 0 : 1;
    }
    case "generate":
      return (await import("./cli/generate")).runGenerate(rest);
    case "convert": {
      const [input, output] = rest;
      if (!input || !output) throw new Error("usage: pensieve convert IN.gguf OUT_DIR");
      const { convertGguf } = await import("./models/gguf-to-mlx");
      const r = convertGguf(input, output);
      const q = r.quantization ? `${r.quantization.bits}-bit, group ${r.quantization.groupSize}` : "not quantized";
      console.log(`wrote ${output}: ${r.tensors} tensors, ${(r.bytes / 2 ** 20).toFixed(1)} MiB (${q})`);
      return 0;
    }
    case "engine": {
      const at = rest.indexOf("--config-json");
      const json = at >= 0 ? rest[at + 1] : undefined;
      if (!json) throw new Error("engine: --config-json is required");
      const { runEngineProcess } = await import("./engine/main");
      await runEngineProcess(JSON.parse(json) as EngineConfig);
      return 0;
    }
    case undefined:
    case "help":
    case "--help":
    case "-h":
      console.log(USAGE + (await import("./config")).configHelp());
      return command === undefined ? 1 : 0;
    default:
      console.error(`pensieve: unknown command "${command}"\n\n${USAGE}`);
      return 2;
  }
}

if (import.meta.main) {
  main(process.argv.slice(2)).then(
    (code) => {
      if (code !== 0) process.exit(code);
    },
    (e: Error) => {
      console.error(`pensieve: ${e.message}`);
      process.exit(1);
    },
  );
}
