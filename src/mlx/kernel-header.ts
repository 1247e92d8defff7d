// A custom CUDA kernel's header delivered by #include instead of inline. MLX
// 0.32's CustomKernel::eval_gpu (custom_kernel.cpp) hashes its whole generated
// source, default header + our header + signature + body, at every launch to
// name the module: 2.0 us of host work a node for ~0.3 KB against 4.8 us for
// ~16 KB, and a decode step runs ~165 fused GEMVs of ~9 KB each. A header of
// HEADER_FILE_MIN_BYTES or more is written once to
// <MLX's include dir>/pensieve/<first 16 hex of sha256(header)>.cuh (temp file +
// rename) and MLX gets `#include "pensieve/<hash>.cuh"` instead: MLX's NVRTC
// searches that folder (jit_module.cpp include_path_args: <libmlx dir>/../include).
// The name follows the content, so the include line, hence MLX's module name
// and its PTX cache entry, changes whenever the header does: no stale kernel.
// The kernel body goes the same way (mlxKernelBody: an #include inside the
// function), after a comment naming the <input>_shape / _strides / _ndim it
// reads: MLX adds those parameters where the source text mentions them.
// Any failure (PENSIEVE_KERNEL_HEADER_FILES=0, no include dir, not writable)
// leaves the header inline, as before. CUDA only: Metal kernels stay inline.
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, unlinkSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";

/** Shorter headers stay inline (the include line is ~40 bytes). */
export const HEADER_FILE_MIN_BYTES = 256;

/** The folder under the include dir that holds our headers. */
export const HEADER_FOLDER = "pensieve";

export interface KernelHeader {
  /** What MLX gets as the header: the include line, or the header itself. */
  header: string;
  /** The file the include line names, or null (inline). */
  file: string | null;
  /** The folder to search for it (--include-path), or null (inline). */
  includeDir: string | null;
  /** Why a header long enough for a file stayed inline (null when it did not, or was meant to). */
  failure: string | null;
}

/** The include line for a header: content-addressed by sha256. */
export function headerFileName(header: string): string {
  return `${HEADER_FOLDER}/${createHash("sha256").update(header).digest("hex").slice(0, 16)}.cuh`;
}

/**
 * The header MLX should get: an include line once the header's file is in
 * includeDir/pensieve/ (written here when missing or different), else the
 * header itself. A file already holding these bytes is not rewritten.
 */
export function headerInclude(
  header: string,
  includeDir: string | null,
  env: Record<string, string | undefined> = process.env,
): KernelHeader {
  const inline = (failure: string | null = null): KernelHeader => ({ header, file: null, includeDir: null, failure });
  if (env.PENSIEVE_KERNEL_HEADER_FILES === "0" || header.length < HEADER_FILE_MIN_BYTES) return inline();
  if (!includeDir) return inline("no MLX include dir found");
  if (!existsSync(includeDir)) return inline(`${includeDir} does not exist`);
  const name = headerFileName(header);
  const file = join(includeDir, name);
  try {
    if (!sameContent(file, header)) {
      mkdirSync(dirname(file), { recursive: true });
      const tmp = `${file}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
      try {
        writeFileSync(tmp, header);
        renameSync(tmp, file);
      } catch (e) {
        if (existsSync(tmp)) unlinkSync(tmp);
        throw e;
      }
    }
  } catch (e) {
    return inline(`cannot write ${file}: ${e instanceof Error ? e.message : e}`);
  }
  return { header: `#include "${name}"\n`, file, includeDir, failure: null };
}

function sameContent(file: string, header: string): boolean {
  try {
    return readFileSync(file, "utf8") === header;
  } catch {
    return false;
  }
}

/**
 * The include dir MLX's NVRTC searches: <folder of the libmlx.so this process
 * loaded>/../include (MLX's current_binary_dir()), read from /proc/self/maps
 * (Linux, where the CUDA backend runs). Null when no libmlx.so is mapped.
 */
export function loadedMlxIncludeDir(maps?: string): string | null {
  let text = maps;
  if (text === undefined) {
    try {
      text = readFileSync("/proc/self/maps", "utf8");
    } catch {
      return null;
    }
  }
  const lib = /\s(\/\S*\/libmlx\.so)\s*$/m.exec(text)?.[1];
  return lib ? join(dirname(dirname(lib)), "include") : null;
}

const known = new Map<string, KernelHeader>();
let mlxIncludeDir: string | null | undefined;
let noted = false;

/** headerInclude into MLX's loaded include dir, once per header text; a failure is said once on stderr. */
export function mlxKernelHeader(header: string): KernelHeader {
  let h = known.get(header);
  if (!h) {
    if (mlxIncludeDir === undefined) mlxIncludeDir = loadedMlxIncludeDir();
    h = headerInclude(header, mlxIncludeDir);
    known.set(header, h);
    if (h.failure && !noted) {
      noted = true;
      process.stderr.write(`[kernels] kernel headers stay inline: ${h.failure}\n`);
    }
  }
  return h;
}

/**
 * What MLX gets as a kernel body once `h` (the body through headerInclude) went to a file: a comment naming each
 * `<input>_shape`, `_strides` and `_ndim` the body reads (MLX decides the kernel's parameters by searching its
 * source for them), then the include line. Inline bodies pass through.
 */
export function asBodyInclude(h: KernelHeader, source: string, inputs: readonly string[]): KernelHeader {
  if (!h.file) return h;
  const read = inputs
    .flatMap((n) => ["_shape", "_strides", "_ndim"].map((s) => n + s))
    .filter((m) => source.includes(m));
  return { ...h, header: `${read.length ? `  // reads ${read.join(" ")}\n` : ""}  ${h.header}` };
}

/** mlxKernelHeader for a kernel body (asBodyInclude). */
export function mlxKernelBody(source: string, inputs: readonly string[]): KernelHeader {
  return asBodyInclude(mlxKernelHeader(source), source, inputs);
}
