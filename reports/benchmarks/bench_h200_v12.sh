#!/usr/bin/env bash
# Twelfth round (eighth session): (1) offloaded recompute with fetch-ahead (each layer's backward
# starts the copy back of the layer below's input on the side stream; before, the copy ran on the
# main stream and stalled it): 9 layers kept, 23 recomputed with their inputs in host memory, head
# and embeddings on the host: 2x under plain's memory? (2) lean with fetch-ahead, and with the
# allocator capped at 6.4 GiB (train.memory_cap_gib): robust 0.4x? (3) 10 kept, 22 offloaded;
# (4) lean's allocator trace.
# Each configuration in its own sweep process, llama3-8b b4, 50 steps, timing after 5; first the
# CUDA tests of the levers.
#   source reports/benchmarks/device_setup.sh && OUT=$OUT timeout 585 bash reports/benchmarks/bench_h200_v12.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_levers.py -k "cuda" 2>&1 \
  | tail -5 | tee /tmp/rec/pytest_cuda.log
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
(while sleep 15; do keep h200v12; done) & W=$!
ARGS=(model=llama3-8b train.batch_size=4 train.max_steps=50 train.timing_warmup_steps=5)
sweep h200_v12_plain "${ARGS[@]}" engine=plain
sweep h200_v12_fast_off_072 "${ARGS[@]}" engine=fast train.checkpointing=offload \
  train.checkpoint_fraction=0.71875 train.head_on_cpu=true train.embeddings_on_cpu=true
sweep h200_v12_lean "${ARGS[@]}" engine=lean
sweep h200_v12_lean_cap64 "${ARGS[@]}" engine=lean train.memory_cap_gib=6.4
sweep h200_v12_fast_off_069 "${ARGS[@]}" engine=fast train.checkpointing=offload \
  train.checkpoint_fraction=0.6875 train.head_on_cpu=true train.embeddings_on_cpu=true
timeout 100 python3 reports/benchmarks/alloc_trace.py --out /tmp/rec/alloc_lean.json engine=lean \
  2>&1 | grep -v -i warn | tail -30
kill $W; keep h200v12
