#!/usr/bin/env bash
# The issue #5 benchmark on the lent H200, second round, in one call: llama3-8b shape (random
# weights), nf4 + double quant, seq 2048 rows, batch 4, 40 steps, dropout 0.05; ONE 6-trial sweep:
# engine=plain (the reference, as the seeds run it), fast, lean, each with and without
# train.flat_optimizer (one quantized base, adapter swap): its wall time against the records'
# train + eval phases is the sweep overhead.
#   source reports/benchmarks/device_setup.sh && OUT=$OUT bash reports/benchmarks/bench_h200_v2.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
(while sleep 20; do keep h200v2; done) & W=$!
sweep h200_v2 model=llama3-8b train.batch_size=4 train.max_steps=40 train.timing_warmup_steps=5 \
  engine=plain,fast,lean train.flat_optimizer=false,true
kill $W; keep h200v2
