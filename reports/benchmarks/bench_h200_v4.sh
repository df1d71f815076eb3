#!/usr/bin/env bash
# Fourth H200 round, the headline in one call: llama3-8b shape (random weights), nf4 + double
# quant, seq 2048 rows, batch 4, 40 steps (timing after 5), dropout 0.05.
# Sweep A, the 6-trial sweep (its wall time against the records' train + eval phases is the sweep
# overhead): engine=plain,fast,lean x train.frozen_dtype=fp32,bf16. plain + fp32 is the plain
# stack (the reference); fast and lean + bf16 are the presets; the other three say which lever
# moves the loss: the residual stream's dtype (plain + bf16) or the kernels (fast/lean + fp32).
# Sweep B: the fast preset with train.slim_activations=false,true at the same fraction (slim's
# own gain; the loss curves must agree).
#   source reports/benchmarks/device_setup.sh && OUT=$OUT bash reports/benchmarks/bench_h200_v4.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
(while sleep 20; do keep h200v4; done) & W=$!
ARGS=(model=llama3-8b train.batch_size=4 train.max_steps=40 train.timing_warmup_steps=5)
sweep h200_v4_a "${ARGS[@]}" engine=plain,fast,lean train.frozen_dtype=fp32,bf16
sweep h200_v4_b "${ARGS[@]}" engine=fast train.slim_activations=true,false
kill $W; keep h200v4
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_slim.py -k cuda 2>&1 | tail -2 \
  | tee "$OUT/pytest_cuda.log"
