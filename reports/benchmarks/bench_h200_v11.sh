#!/usr/bin/env bash
# Eleventh round: what the small-update test of train.projection_dtype=fp32 measures on CUDA with
# the fast kernels (projection_probe.py), and lean + the streamed head with PyTorch's ordinary
# allocator segments (v9/v10 with expandable segments: 5.40 GiB allocated, 6.60 / 6.83 reserved).
#   source reports/benchmarks/device_setup.sh && OUT=$OUT timeout 300 bash reports/benchmarks/bench_h200_v11.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
timeout 60 python3 reports/benchmarks/projection_probe.py --out /tmp/rec/projection_probe.json 2>&1 \
  | grep -v -i warn | tail -6
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
ARGS=(model=llama3-8b train.batch_size=4 train.max_steps=50 train.timing_warmup_steps=5)
sweep h200_v11_lean_head_noexp "${ARGS[@]}" engine=lean train.head_on_cpu=true train.expandable_segments=false
keep h200v11
