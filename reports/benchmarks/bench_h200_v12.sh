#!/usr/bin/env bash
# Twelfth round (written in the seventh session, not yet run): (1) where lean's reserved memory
# outgrows its allocated peak (alloc_trace.py: per-step peaks and the allocations that map new
# memory); (2) engine=exact (plain's loss curve, 1.26x memory in v9) with offloaded recompute,
# every layer and 26 of 32, for its memory; each in its own process, llama3-8b b4, 50 steps.
#   source reports/benchmarks/device_setup.sh && OUT=$OUT timeout 585 bash reports/benchmarks/bench_h200_v12.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
timeout 150 python3 reports/benchmarks/alloc_trace.py --out /tmp/rec/alloc_lean.json engine=lean \
  2>&1 | grep -v -i warn | tail -40
(while sleep 15; do keep h200v12; done) & W=$!
ARGS=(model=llama3-8b train.batch_size=4 train.max_steps=50 train.timing_warmup_steps=5)
sweep h200_v12_plain "${ARGS[@]}" engine=plain
sweep h200_v12_exact_offload "${ARGS[@]}" engine=exact train.checkpointing=offload \
  train.checkpoint_fraction=null train.embeddings_on_cpu=true train.head_on_cpu=true
sweep h200_v12_exact_hybrid "${ARGS[@]}" engine=exact train.checkpointing=offload
kill $W; keep h200v12
