#!/usr/bin/env bash
# Eighth call (diagnostic): where the fast presets' early-step loss gap comes from. (1) Does the
# fused op's branch-first addmm round base + branch once on the GPU (rounding_probe.py, and the CUDA
# test with its numbers)? (2) The plain stack (peft's modules, HF kernels, full recompute) with bf16
# frozen weights, with and without the fp32 residual stream, 10 steps, one process.
#   source reports/benchmarks/device_setup.sh && OUT=$OUT timeout 400 bash reports/benchmarks/diag_h200_v8.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
python3 reports/benchmarks/rounding_probe.py --out /tmp/rec/rounding.json 2>&1 | tail -3
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_lora_op.py -k "rounds_base" 2>&1 \
  | grep -E "^E |passed|failed" | head -12 | tee /tmp/rec/pytest_rounding.log
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
(while sleep 15; do keep h200v8; done) & W=$!
sweep h200_v8_plain_dtypes model=llama3-8b train.batch_size=4 train.max_steps=10 \
  train.timing_warmup_steps=3 engine=plain train.frozen_dtype=fp32,bf16 train.residual_dtype=auto,fp32
kill $W; keep h200v8
