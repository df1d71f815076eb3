#!/usr/bin/env bash
# Seventeenth round (tenth session): the other shapes again with the presets as they are now
# (causal_padding, gc_freeze, kept_layers=top; the v3 rows had none of them): llama3-8b fp4 b4 and
# nf4 b1, qwen2.5-1.5b b4 and b1, the smollm2-135m shape (random weights) b4; engine=plain,fast,lean
# in one sweep process per shape, 20 steps, timing after 4 (as bench_h200_v3_shapes.sh).
#   source reports/benchmarks/device_setup.sh && OUT=$OUT timeout 560 bash reports/benchmarks/bench_h200_v17.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
(while sleep 15; do keep h200v17; done) & W=$!
S=(train.max_steps=20 train.timing_warmup_steps=4 engine=plain,fast,lean)
sweep h200_v17_fp4 model=llama3-8b quant=fp4 train.batch_size=4 "${S[@]}"
sweep h200_v17_b1 model=llama3-8b train.batch_size=1 "${S[@]}"
sweep h200_v17_qwen_b4 model=qwen2.5-1.5b train.batch_size=4 "${S[@]}"
sweep h200_v17_qwen_b1 model=qwen2.5-1.5b train.batch_size=1 "${S[@]}"
sweep h200_v17_smollm2_b4 model=llama3-8b model.shape=smollm2-135m model.name=smollm2-135m-random \
  train.batch_size=4 "${S[@]}"
kill $W; keep h200v17
