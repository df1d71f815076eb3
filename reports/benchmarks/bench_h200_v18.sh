#!/usr/bin/env bash
# Eighteenth round (tenth session): the sweep-process leak fix (models.forget_optimizer_overrides)
# on the GPU. In h200_v17_*, the fast and lean trials that followed plain in one sweep process
# started with the plain trial's fp32 embedding table still allocated (held by bitsandbytes'
# GlobalOptimManager). qwen2.5-1.5b b4, engine=plain,fast,lean, 20 steps, timing after 4, as v17.
#   source reports/benchmarks/device_setup.sh && OUT=$OUT timeout 130 bash reports/benchmarks/bench_h200_v18.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
(while sleep 10; do keep h200v18; done) & W=$!
sweep h200_v18_qwen_b4 model=qwen2.5-1.5b train.batch_size=4 train.max_steps=20 \
  train.timing_warmup_steps=4 engine=plain,fast,lean
kill $W; keep h200v18
