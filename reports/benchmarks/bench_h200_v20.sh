#!/usr/bin/env bash
# Twentieth round (eleventh session): train.host_layers again. v19: fast + 6 host layers 2.115x at
# 0.956x (allocated 13.50 GiB, below fast's 13.86, but 15.84 reserved: blocks a parking copy still
# reads cannot be handed out again until it has run, so the allocator grows). Here: the same
# repeated, the same under a cap at fast's reserved memory (the allocator waits for those copies
# instead of growing), 4 host layers, and lean with 4 slim top layers kept and 2 host layers under
# the moonshot's cap. llama3-8b b4, 50 steps, timing after 5, each in its own sweep process.
#   source reports/benchmarks/device_setup.sh && OUT=$OUT timeout 500 bash reports/benchmarks/bench_h200_v20.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
(while sleep 15; do keep h200v20; done) & W=$!
ARGS=(model=llama3-8b train.batch_size=4 train.max_steps=50 train.timing_warmup_steps=5)
LEAN4=(engine=lean train.checkpoint_fraction=0.875 train.slim_activations=true
  train.memory_cap_gib=8.2)
sweep h200_v20_plain "${ARGS[@]}" engine=plain
sweep h200_v20_fast_host6 "${ARGS[@]}" engine=fast train.host_layers=6
sweep h200_v20_fast_host6_cap142 "${ARGS[@]}" engine=fast train.host_layers=6 train.memory_cap_gib=14.2
sweep h200_v20_fast_host4 "${ARGS[@]}" engine=fast train.host_layers=4
sweep h200_v20_lean4_host2 "${ARGS[@]}" "${LEAN4[@]}" train.host_layers=2
kill $W; keep h200v20
