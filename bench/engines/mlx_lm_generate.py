"""One single-stream generation with mlx-lm (the peer), timed; prints one JSON line.

Usage: python mlx_lm_generate.py MODEL_DIR PROMPT_IDS_JSON GEN_TOKENS [cpu|gpu]
Greedy, EOS ignored (generate_step does not stop on EOS), same prompt ids as Pensieve.
"""
import json
import os
import resource
import sys
import time

import mlx.core as mx
import mlx_lm
from mlx_lm.generate import generate_step
from mlx_lm.utils import load_model
from pathlib import Path


def run(model, tokens, n):
    start = time.perf_counter()
    first = None
    count = 0
    for _tok, _ in generate_step(mx.array(tokens, dtype=mx.int32), model, max_tokens=n, sampler=lambda x: mx.argmax(x, axis=-1)):
        if count == 0:
            first = time.perf_counter()
        count += 1
    end = time.perf_counter()
    return (first - start) * 1000, (end - first) * 1000, count


def main():
    model_dir, prompt_file, gen, device = (sys.argv[1:] + ["cpu"])[:4]
    mx.set_default_device(mx.gpu if device == "gpu" else mx.cpu)
    prompt = json.loads(Path(prompt_file).read_text())
    t = time.perf_counter()
    model, _ = load_model(Path(model_dir))
    load_ms = (time.perf_counter() - t) * 1000
    # Warm-up: 8 tokens, or with BENCH_WARMUP=full the whole prompt (steady state), as Pensieve's twin does.
    run(model, prompt if os.environ.get("BENCH_WARMUP") == "full" else prompt[:8], 4)
    mx.reset_peak_memory()
    ttft, decode, count = run(model, prompt, int(gen))
    print(
        json.dumps(
            {
                "engine": "mlx-lm",
                "version": f"mlx-lm {mlx_lm.__version__}, mlx {mx.__version__}",
                "promptTokens": len(prompt),
                "generatedTokens": count,
                "loadMs": load_ms,
                "ttftMs": ttft,
                "prefillTokPerS": len(prompt) / (ttft / 1000),
                "decodeTokPerS": (count - 1) / (decode / 1000),
                "peakMlxBytes": mx.get_peak_memory(),
                "peakRssBytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            }
        )
    )


if __name__ == "__main__":
    main()
