#!/usr/bin/env bash
# Twenty-third round (twelfth session): the moonshot configuration of v22 (lean, 4 slim top layers
# kept, 8.2 GiB cap: 2.05x at 0.495x) repeated against a new plain process, then the other shapes
# with the presets as they are now (train.trim_recompute, the pinned embedding gather):
# qwen2.5-1.5b b4, llama3-8b nf4 b1 and the smollm2-135m shape b4, engine=plain,fast,lean in one
# sweep process per shape, 20 steps, timing after 4 (as bench_h200_v17.sh).
#   source reports/benchmarks/device_setup.sh && OUT=$OUT timeout 480 bash reports/benchmarks/bench_h200_v23.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
(while sleep 15; do keep h200v23; done) & W=$!
ARGS=(model=llama3-8b train.batch_size=4 train.max_steps=50 train.timing_warmup_steps=5)
sweep h200_v23_plain "${ARGS[@]}" engine=plain
sweep h200_v23_lean4_cap82 "${ARGS[@]}" engine=lean train.checkpoint_fraction=0.875 \
  train.slim_activations=true train.memory_cap_gib=8.2
S=(train.max_steps=20 train.timing_warmup_steps=4 engine=plain,fast,lean)
sweep h200_v23_qwen_b4 model=qwen2.5-1.5b train.batch_size=4 "${S[@]}"
sweep h200_v23_b1 model=llama3-8b train.batch_size=1 "${S[@]}"
sweep h200_v23_smollm2_b4 model=llama3-8b model.shape=smollm2-135m model.name=smollm2-135m-random \
  train.batch_size=4 "${S[@]}"
kill $W; keep h200v23
