#!/usr/bin/env bash
# Eighth call (diagnostic; NOT run as a whole: only the probe ran, alone: results/h200_v8): where
# the fast presets' early-step loss gap comes from. (1) Does a branch-first addmm (the seventh round's fused
# op, commit 360c0c9, since reverted) round base + branch once on the GPU (rounding_probe.py)?
# (2) The plain stack (peft's modules, HF kernels, full recompute) with bf16 frozen weights, with
# and without the fp32 residual stream, 10 steps, one process.
#   source reports/benchmarks/device_setup.sh && OUT=$OUT timeout 400 bash reports/benchmarks/diag_h200_v8.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
python3 reports/benchmarks/rounding_probe.py --out /tmp/rec/rounding.json 2>&1 | tail -3
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
(while sleep 15; do keep h200v8; done) & W=$!
sweep h200_v8_plain_dtypes model=llama3-8b train.batch_size=4 train.max_steps=10 \
  train.timing_warmup_steps=3 engine=plain train.frozen_dtype=fp32,bf16 train.residual_dtype=auto,fp32
kill $W; keep h200v8
