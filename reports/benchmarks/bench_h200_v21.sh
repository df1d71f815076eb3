#!/usr/bin/env bash
# Twenty-first round (twelfth session): train.trim_recompute (harness/trim.py), now in the fast and
# lean presets: a recomputed layer skips down_proj's frozen matmul, whose output backward never
# reads (27% of a llama3-8b layer's matmul FLOPs; the same math bit for bit). Its CUDA test first,
# then each configuration in its own sweep process, with and without the trim: the fast preset,
# lean with 4 slim top layers kept under the moonshot's 8.2 GiB cap, and fast + 6 host layers under
# a 14.2 GiB cap. llama3-8b b4, 50 steps, timing after 5.
#   source reports/benchmarks/device_setup.sh && OUT=$OUT timeout 585 bash reports/benchmarks/bench_h200_v21.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
timeout 120 python3 -m pytest -q -p no:cacheprovider -rs tests/test_trim.py 2>&1 \
  | tail -8 | tee /tmp/rec/pytest_cuda.log
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
(while sleep 15; do keep h200v21; done) & W=$!
ARGS=(model=llama3-8b train.batch_size=4 train.max_steps=50 train.timing_warmup_steps=5)
LEAN4=(engine=lean train.checkpoint_fraction=0.875 train.slim_activations=true
  train.memory_cap_gib=8.2)
sweep h200_v21_plain "${ARGS[@]}" engine=plain
sweep h200_v21_lean4_trim "${ARGS[@]}" "${LEAN4[@]}"
sweep h200_v21_fast_trim "${ARGS[@]}" engine=fast
sweep h200_v21_lean4_notrim "${ARGS[@]}" "${LEAN4[@]}" train.trim_recompute=false
sweep h200_v21_fast_notrim "${ARGS[@]}" engine=fast train.trim_recompute=false
sweep h200_v21_fast_host6_cap142_trim "${ARGS[@]}" engine=fast train.host_layers=6 train.memory_cap_gib=14.2
kill $W; keep h200v21
