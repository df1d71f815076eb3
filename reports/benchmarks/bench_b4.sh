#!/usr/bin/env bash
# The headline benchmark on the lent H100: llama3-8b shape (random weights), nf4, seq 2048,
# batch 4, 50 steps; presets plain | fast | max, each with the seeds' dropout 0.05 and with 0
# (no dropout: the loss curves then differ by numerics alone). 6 trials in one sweep process:
# its wall time against the records' train + eval phases gives the sweep overhead.
#   OUT=/tmp/out bash reports/benchmarks/bench_b4.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
# cache warm-up, outside the timed sweep: random weights are written once per machine (16 GB)
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
(while sleep 20; do keep b4; done) & W=$!
sweep b4_presets model=llama3-8b train.batch_size=4 train.max_steps=50 \
  train.timing_warmup_steps=5 engine=plain,fast,max lora.dropout=0.05,0
kill $W; keep b4
