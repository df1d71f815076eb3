#!/usr/bin/env bash
# Twenty-second round (twelfth session): v21 gave lean with 4 slim top layers kept under the 8.2 GiB
# cap 1.99x at 0.495x with train.trim_recompute. Here train.embeddings_on_cpu gathers the rows into
# a pinned buffer from PyTorch's host cache and copies them without blocking (it allocated a fresh
# pageable 64 MiB a step, then a blocking copy, while the GPU waited at the step's start). Its CUDA
# tests first, then each configuration in its own sweep process: lean 4 slim kept under 8.2 and
# 8.27 GiB (0.4994x of plain's 16.56), the fast preset, lean under its 6.4 GiB cap, fast + 6 host
# layers under 14.2 GiB. llama3-8b b4, 50 steps, timing after 5.
#   source reports/benchmarks/device_setup.sh && OUT=$OUT timeout 585 bash reports/benchmarks/bench_h200_v22.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
timeout 100 python3 -m pytest -q -p no:cacheprovider -rs tests/test_levers.py -k "embeddings or head" \
  2>&1 | tail -8 | tee /tmp/rec/pytest_cuda.log
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
(while sleep 15; do keep h200v22; done) & W=$!
ARGS=(model=llama3-8b train.batch_size=4 train.max_steps=50 train.timing_warmup_steps=5)
LEAN4=(engine=lean train.checkpoint_fraction=0.875 train.slim_activations=true)
sweep h200_v22_plain "${ARGS[@]}" engine=plain
sweep h200_v22_lean4_cap82 "${ARGS[@]}" "${LEAN4[@]}" train.memory_cap_gib=8.2
sweep h200_v22_lean4_cap827 "${ARGS[@]}" "${LEAN4[@]}" train.memory_cap_gib=8.27
sweep h200_v22_fast "${ARGS[@]}" engine=fast
sweep h200_v22_lean_cap64 "${ARGS[@]}" engine=lean train.memory_cap_gib=6.4
sweep h200_v22_fast_host6_cap142 "${ARGS[@]}" engine=fast train.host_layers=6 train.memory_cap_gib=14.2
kill $W; keep h200v22
