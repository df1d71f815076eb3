#!/usr/bin/env bash
# The issue #5 benchmark on the lent H200, in one call: llama3-8b shape (random weights), nf4,
# seq 2048 rows, batch 4, 50 steps, the seeds' dropout 0.05; engine=plain (the reference) and the
# presets fast | lean | max, in ONE sweep process (one quantized base, adapter swap): its wall time
# against the records' train + eval phases is the sweep overhead. Then the CUDA lever tests.
#   source reports/benchmarks/device_setup.sh && OUT=$OUT bash reports/benchmarks/bench_h200.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
(while sleep 20; do keep h200; done) & W=$!
sweep h200_b4 model=llama3-8b train.batch_size=4 train.max_steps=50 train.timing_warmup_steps=5 \
  engine=plain,fast,lean,max
kill $W; keep h200
