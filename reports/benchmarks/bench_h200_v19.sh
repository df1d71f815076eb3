#!/usr/bin/env bash
# Nineteenth round (eleventh session): train.host_layers (harness/host_layers.py). Of the layers a
# preset recomputes, N keep what their forward saves in pinned host memory instead (copied out on
# a side stream while the next layers run, back ahead of their backward): a recompute costs a
# layer's forward again, a host layer costs PCIe time, which overlaps the compute.
# llama3-8b b4, 50 steps, timing after 5, each configuration in its own sweep process, against a
# plain run of the same call; first the CUDA tests of the lever.
#   source reports/benchmarks/device_setup.sh && OUT=$OUT timeout 585 bash reports/benchmarks/bench_h200_v19.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
timeout 100 python3 -m pytest -q -p no:cacheprovider -rs tests/test_host_layers.py 2>&1 \
  | tail -6 | tee /tmp/rec/pytest_host.log
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
(while sleep 15; do keep h200v19; done) & W=$!
ARGS=(model=llama3-8b train.batch_size=4 train.max_steps=50 train.timing_warmup_steps=5)
LEAN4=(engine=lean train.checkpoint_fraction=0.875 train.slim_activations=true
  train.memory_cap_gib=8.2)
sweep h200_v19_plain "${ARGS[@]}" engine=plain
sweep h200_v19_fast "${ARGS[@]}" engine=fast
sweep h200_v19_fast_host6 "${ARGS[@]}" engine=fast train.host_layers=6
sweep h200_v19_lean4_host6 "${ARGS[@]}" "${LEAN4[@]}" train.host_layers=6
sweep h200_v19_fast_host12 "${ARGS[@]}" engine=fast train.host_layers=12
sweep h200_v19_lean4_host10 "${ARGS[@]}" "${LEAN4[@]}" train.host_layers=10
kill $W; keep h200v19
