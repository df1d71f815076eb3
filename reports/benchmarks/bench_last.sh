#!/usr/bin/env bash
# SmolLM2-135M with its real weights (the embedded model), fp4 on the llama3-8b shape, and the
# checkpoint_fraction knob of engine=fast (llama3-8b, nf4, batch 4). 16 steps each.
#   OUT=/tmp/out bash reports/benchmarks/bench_last.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
S=(train.max_steps=16 train.timing_warmup_steps=4)
(while sleep 20; do keep last; done) & W=$!
sweep smollm2_b4 model=smollm2-135m train.batch_size=4 "${S[@]}" engine=plain,fast,lean,max
sweep b4_fp4 model=llama3-8b quant=fp4 train.batch_size=4 "${S[@]}" engine=plain,fast,lean
sweep b4_fraction model=llama3-8b train.batch_size=4 "${S[@]}" engine=fast \
  train.checkpoint_fraction=0.5,0.75
kill $W; keep last
python3 -m pytest -q -p no:cacheprovider --tb=line tests/test_levers.py -k cuda 2>&1 | tail -6
