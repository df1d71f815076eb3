#!/usr/bin/env bash
# Third H200 round, the other shapes in one call (issue #5: Llama-3-8B, Qwen2.5-1.5B, SmolLM2-135M
# shapes with random weights, seq 2048, batch 1 and 4, nf4 and fp4): engine=plain,fast,lean in one
# sweep process per shape, 20 steps, timing after 4 warm-up steps.
#   source reports/benchmarks/device_setup.sh && OUT=$OUT bash reports/benchmarks/bench_h200_v3_shapes.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
(while sleep 20; do keep h200v3s; done) & W=$!
S=(train.max_steps=20 train.timing_warmup_steps=4 engine=plain,fast,lean)
sweep h200_v3_b1 model=llama3-8b train.batch_size=1 "${S[@]}"
sweep h200_v3_qwen_b4 model=qwen2.5-1.5b train.batch_size=4 "${S[@]}"
sweep h200_v3_qwen_b1 model=qwen2.5-1.5b train.batch_size=1 "${S[@]}"
sweep h200_v3_smollm2_b4 model=llama3-8b model.shape=smollm2-135m model.name=smollm2-135m-random \
  train.batch_size=4 "${S[@]}"
sweep h200_v3_fp4 model=llama3-8b quant=fp4 train.batch_size=4 "${S[@]}"
kill $W; keep h200v3s
