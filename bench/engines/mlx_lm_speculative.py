"""mlx-lm's speculative decoding with a draft model (the peer for bench/spec.ts); prints one JSON line.

Usage: python mlx_lm_speculative.py TARGET_DIR DRAFT_DIR PROMPTS_JSON GEN NUM_DRAFT [REPEAT]
PROMPTS_JSON: {"prompts": [[ids...], ...], "stops": [ids...]}. Greedy; a run ends at a stop id or GEN tokens.
Per prompt, runs without and with the draft model take turns; decode time runs from the first token
to the last, wall clock and CPU time of this process.
"""
import json
import sys
import time
from pathlib import Path

import mlx.core as mx
import mlx_lm
from mlx_lm.generate import generate_step, speculative_generate_step
from mlx_lm.utils import load_model


def greedy(x):
    return mx.argmax(x, axis=-1)


def run(model, draft, prompt, gen, stops, num_draft):
    tokens = []
    from_draft = 0
    first = cpu_first = last = cpu_last = 0.0
    p = mx.array(prompt, dtype=mx.int32)
    steps = (
        speculative_generate_step(p, model, draft, num_draft_tokens=num_draft, max_tokens=gen, sampler=greedy)
        if draft is not None
        else ((t, lp, False) for t, lp in generate_step(p, model, max_tokens=gen, sampler=greedy))
    )
    for tok, _lp, drafted in steps:
        now, cpu = time.perf_counter(), time.process_time()
        if not tokens:
            first, cpu_first = now, cpu
        last, cpu_last = now, cpu
        t = int(tok)
        if t in stops:
            break
        tokens.append(t)
        from_draft += int(bool(drafted))
    decode_s = last - first
    n = max(1, len(tokens) - 1)
    return {
        "tokens": tokens,
        "decodeTokPerS": n / decode_s if decode_s > 0 else 0.0,
        "decodeTokPerCpuS": n / (cpu_last - cpu_first) if cpu_last > cpu_first else 0.0,
        "fromDraft": from_draft,
    }


def main():
    target_dir, draft_dir, prompts_file, gen, num_draft = sys.argv[1:6]
    repeat = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    mx.set_default_device(mx.cpu)
    spec = json.loads(Path(prompts_file).read_text())
    stops = set(spec["stops"])
    model, _ = load_model(Path(target_dir))
    draft, _ = load_model(Path(draft_dir))
    run(model, None, spec["prompts"][0][:16], 8, stops, int(num_draft))
    run(model, draft, spec["prompts"][0][:16], 8, stops, int(num_draft))
    results = []
    for i, prompt in enumerate(spec["prompts"]):
        off, on = [], []
        for r in range(repeat):
            order = [False, True] if (r + i) % 2 == 0 else [True, False]
            for use in order:
                out = run(model, draft if use else None, prompt, int(gen), stops, int(num_draft))
                (on if use else off).append(out)
        results.append({"off": off, "on": on})
    print(
        json.dumps(
            {
                "engine": "mlx-lm",
                "version": f"mlx-lm {mlx_lm.__version__}, mlx {mx.__version__}",
                "numDraftTokens": int(num_draft),
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
