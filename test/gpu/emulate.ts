// Compiles a CUDA kernel's source, wrapped in a C++ program over
// cuda-emulation.h, with the machine's C++ compiler and runs it: the program
// prints one JSON line (the test's measures against its float64 reference).
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

/** The emulation header, for the programs' #include. */
export const EMULATION_HEADER = join(import.meta.dir, "cuda-emulation.h");

/** The C++ compiler the emulated tests use, or undefined (they skip). */
export const emulationCompiler = ["g++", "c++", "clang++"].find((c) => Bun.which(c));

/** Builds `program` as test/.tmp/<folder>/<name> and returns what it prints, parsed. */
export function runEmulated<T>(folder: string, name: string, program: string): T {
  const dir = join(import.meta.dir, "..", ".tmp", folder);
  mkdirSync(dir, { recursive: true });
  const src = join(dir, `${name}.cpp`);
  const exe = join(dir, name);
  writeFileSync(src, program);
  const build = Bun.spawnSync([emulationCompiler as string, "-std=c++20", "-O1", "-pthread", src, "-o", exe], {
    stderr: "pipe",
  });
  if (build.exitCode !== 0) throw new Error(`g++ failed:\n${build.stderr.toString().slice(0, 4000)}`);
  const out = Bun.spawnSync([exe], { stdout: "pipe", stderr: "pipe" });
  if (out.exitCode !== 0) throw new Error(`emulated kernel failed: ${out.stderr.toString()}`);
  return JSON.parse(out.stdout.toString()) as T;
}

/**
 * A kernel source's `__shared__` declarations made per block for emu_launch_all
 * (cuda-emulation.h): each becomes a static array of EMU_MAX_BLOCKS copies and a
 * reference to the running block's copy.
 */
export function perBlockShared(source: string): string {
  return source.replace(/__shared__\s+(\w+)\s+([^;]+);/g, (_, type: string, list: string) =>
    list
      .split(/,(?![^[]*\])/)
      .map((decl) => {
        const m = /^\s*(\w+)(.*)$/.exec(decl) as RegExpExecArray;
        const [, name, dims] = m;
        return `static ${type} ${name}_emu[EMU_MAX_BLOCKS]${dims}; auto& ${name} = ${name}_emu[emu_block_id];`;
      })
      .join(" "),
  );
}

/**
 * C++ statements that fill `std::vector<float> rope_cs` (the fused path's RoPE table, ropeTable: cos of pair i
 * at column i, sin at hd/2 + i) from `pos` and `inv_freq` as the table's kernel computes it; hd and scale are
 * C++ expressions.
 */
export function ropeTableCode(hd: string, scale: string): string {
  return `  std::vector<float> rope_cs(pos.size() * ${hd});
  for (size_t m = 0; m < pos.size(); ++m)
    for (int i = 0; i < ${hd} / 2; ++i) {
      const float theta = (${scale} * (float)pos[m]) * inv_freq[i];
      rope_cs[m * ${hd} + i] = std::cos(theta);
      rope_cs[m * ${hd} + ${hd} / 2 + i] = std::sin(theta);
    }
`;
}
