#!/usr/bin/env bash
# Fifth round, final code (slim on kept layers only; no gc_freeze lever): one sweep process per
# configuration, llama3-8b b4, 40 steps (timing after 5): plain (the reference); the fastest
# setting under plain's memory (fast's kernels, 20 of 32 layers recomputed with their inputs in
# host memory, the 12 kept layers slim, embeddings in host memory); lean; the fast preset.
#   source reports/benchmarks/device_setup.sh && OUT=$OUT timeout 500 bash reports/benchmarks/bench_h200_v5_final.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
(while sleep 15; do keep h200v5f; done) & W=$!
ARGS=(model=llama3-8b train.batch_size=4 train.max_steps=40 train.timing_warmup_steps=5)
sweep h200_v5_plain "${ARGS[@]}" engine=plain
sweep h200_v5_hybrid "${ARGS[@]}" engine=fast train.checkpointing=offload \
  train.checkpoint_fraction=0.625 train.slim_activations=true train.embeddings_on_cpu=true
sweep h200_v5_lean "${ARGS[@]}" engine=lean
sweep h200_v5_fast "${ARGS[@]}" engine=fast
kill $W; keep h200v5f
