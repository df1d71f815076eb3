#!/usr/bin/env bash
# Each lever's own gain (llama3-8b, nf4, seq 2048, batch 4, every layer recomputed): the full
# 2x2x2 factorial of train.kernels x train.lora_kernel x train.frozen_dtype over the plain stack;
# then the presets at batch 1, and on the qwen2.5-1.5b shape at batch 4 and 1. 16 steps each.
#   OUT=/tmp/out bash reports/benchmarks/bench_more.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
S=(train.max_steps=16 train.timing_warmup_steps=4)
(while sleep 20; do keep more; done) & W=$!
sweep b4_factorial model=llama3-8b train.batch_size=4 "${S[@]}" engine=plain \
  train.kernels=none,liger train.lora_kernel=peft,fused train.frozen_dtype=fp32,bf16
sweep b1_presets model=llama3-8b train.batch_size=1 "${S[@]}" engine=plain,fast,lean,max
sweep qwen_b4 model=qwen2.5-1.5b train.batch_size=4 "${S[@]}" engine=plain,fast,lean,max
sweep qwen_b1 model=qwen2.5-1.5b train.batch_size=1 "${S[@]}" engine=plain,fast,lean,max
kill $W; keep more
