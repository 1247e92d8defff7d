// Writes the card's name (nvidia-smi's CSV line, from a gpu.txt of the same call)
// into every results JSON under a folder that lacks it, so that H100 and H200
// figures cannot be mixed up:  bun bench/gpu/stamp-gpu.ts GPU_TXT DIR
import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const [gpuTxt, dir] = process.argv.slice(2);
if (!gpuTxt || !dir) throw new Error("usage: stamp-gpu.ts GPU_TXT DIR");
const gpu = readFileSync(gpuTxt, "utf8").trim().split("\n").slice(1).join("; ");
const walk = (d: string): string[] =>
  readdirSync(d).flatMap((f) => {
    const p = join(d, f);
    return statSync(p).isDirectory() ? walk(p) : p.endsWith(".json") ? [p] : [];
  });
for (const file of walk(dir)) {
  const data = JSON.parse(readFileSync(file, "utf8"));
  if (data && typeof data === "object" && !Array.isArray(data) && !("gpu" in data)) {
    writeFileSync(file, JSON.stringify({ gpu, ...data }, null, 2));
    console.log(`${file}: gpu = ${gpu}`);
  }
}
