// Gives freed heap memory back to the system once the engine has been idle a
// while. glibc keeps freed memory in its arenas (its mmap threshold rises after
// large frees, so later large buffers come from the heap and stay there); the
// soak measured the engine's resident memory 60% over its baseline an idle
// second after 200 requests with MLX's own memory back to the byte. One
// full garbage collection and malloc_trim(0) per idle spell return it (the
// collection first: JavaScript objects hold MLX handles). Linux/glibc only.
//
// Lives beside the engine loop rather than in it (engine.ts's idle branch is
// where it belongs, next to MLX's cache release).
import { dlopen, FFIType } from "bun:ffi";

export function startIdleTrim(busy: () => boolean, idleMs = 250): () => void {
  if (process.platform !== "linux") return () => {};
  let trim: () => number;
  try {
    const libc = dlopen("libc.so.6", { malloc_trim: { args: [FFIType.u64], returns: FFIType.i32 } });
    trim = () => libc.symbols.malloc_trim(0);
  } catch {
    return () => {};
  }
  let idleSince: number | null = null;
  let trimmed = true;
  const timer = setInterval(
    () => {
      if (busy()) {
        idleSince = null;
        trimmed = false;
        return;
      }
      idleSince ??= performance.now();
      if (!trimmed && performance.now() - idleSince >= idleMs) {
        Bun.gc(true);
        trim();
        trimmed = true;
      }
    },
    Math.max(50, idleMs / 4),
  );
  timer.unref();
  return () => clearInterval(timer);
}
