// `bun run bench [generate|load|claude-code|soak|spec|spec-verify-cost] [options]`: the benchmarks (see bench/README.md).
import { benchGenerate } from "./generate";

const [which = "generate", ...rest] = process.argv.slice(2);
if (which === "generate") await benchGenerate(rest);
else if (which === "load") await (await import("./load")).benchLoad(rest);
else if (which === "spec") await (await import("./spec")).benchSpec(rest);
else if (which === "spec-verify-cost") await (await import("./spec-verify-cost")).benchSpecVerifyCost(rest);
else if (which === "claude-code") await (await import("./claude-code")).benchClaudeCode(rest);
else if (which === "soak") await (await import("./soak")).benchSoak(rest);
else {
  console.error("usage: bun run bench [generate|load|claude-code|soak|spec|spec-verify-cost] [options]");
  process.exit(2);
}
