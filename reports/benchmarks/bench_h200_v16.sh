#!/usr/bin/env bash
# Sixteenth round (tenth session): train.gc_freeze (Python's collector skips the objects alive
# before training: the fast preset's full collections held 0.42-0.50 s of its timed steps) and
# train.kept_layers=top (the layers not recomputed are the last ones, so backward frees their
# activations before any recompute: the peak is the larger side, not the sum). Under an 8.2 GiB
# cap (0.495x plain's 16.56), lean with 3, 4 and 5 kept layers at the top: the moonshot
# (2x at <= 0.5x). Each configuration in its own sweep process, llama3-8b b4, 50 steps, timing
# after 5.
#   source reports/benchmarks/device_setup.sh && OUT=$OUT timeout 585 bash reports/benchmarks/bench_h200_v16.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
(while sleep 15; do keep h200v16; done) & W=$!
ARGS=(model=llama3-8b train.batch_size=4 train.max_steps=50 train.timing_warmup_steps=5)
GC=(train.gc_freeze=true)
TOP=(train.gc_freeze=true train.kept_layers=top)
CAP=(train.memory_cap_gib=8.2)
sweep h200_v16_plain "${ARGS[@]}" engine=plain
sweep h200_v16_fast_gc "${ARGS[@]}" engine=fast "${GC[@]}"
sweep h200_v16_fast_top "${ARGS[@]}" engine=fast "${TOP[@]}"
sweep h200_v16_lean_top_k3 "${ARGS[@]}" engine=lean "${TOP[@]}" train.checkpoint_fraction=0.90625 "${CAP[@]}"
sweep h200_v16_fast_top_075 "${ARGS[@]}" engine=fast "${TOP[@]}" train.checkpoint_fraction=0.75
sweep h200_v16_lean_top_k4_slim "${ARGS[@]}" engine=lean "${TOP[@]}" train.checkpoint_fraction=0.875 \
  train.slim_activations=true "${CAP[@]}"
sweep h200_v16_lean_top_k5_slim "${ARGS[@]}" engine=lean "${TOP[@]}" train.checkpoint_fraction=0.84375 \
  train.slim_activations=true "${CAP[@]}"
kill $W; keep h200v16
