# mlx-lm's own tensor parallelism (model.shard over mx.distributed), the peer for
# Pensieve's --tensor-parallel: greedy tokens and their log-probabilities for one
# prompt of token ids, printed as JSON by rank 0. Run under mlx.launch, e.g.
#   bench/.venv/bin/mlx.launch --backend ring -n 2 --python bench/.venv/bin/python \
#     bench/engines/mlx_lm_sharded.py --model DIR --prompt 1,2,3 --max-tokens 8
import argparse
import json

import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import generate_step

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True)
parser.add_argument("--prompt", required=True, help="comma-separated token ids")
parser.add_argument("--max-tokens", type=int, default=8)
parser.add_argument("--backend", default="ring")
args = parser.parse_args()

group = mx.distributed.init(strict=True, backend=args.backend)
model, _ = load(args.model)
if group.size() > 1:
    model.shard(group)
prompt = mx.array([int(t) for t in args.prompt.split(",")])
tokens, logprobs = [], []
for (token, lp), _ in zip(generate_step(prompt, model, max_tokens=args.max_tokens), range(args.max_tokens)):
    t = int(token)
    tokens.append(t)
    logprobs.append(float(lp[t]))
if group.rank() == 0:
    print(json.dumps({"ranks": group.size(), "tokens": tokens, "logprobs": logprobs}))
