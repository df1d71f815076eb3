#!/usr/bin/env bash
# The issue #5 benchmark on the lent H200, third round, in one call: llama3-8b shape (random
# weights), nf4 + double quant, seq 2048 rows, batch 4, 40 steps, dropout 0.05.
# Sweep A, the 6-trial sweep (its wall time against the records' train + eval phases is the sweep
# overhead): engine=plain,fast,lean x train.dequant_kernel=bnb,triton. The Triton dequant acts
# inside the fused op only, so plain runs twice with the same math: run-to-run noise, in speed
# and loss. Sweep B: engine=fast with more layers kept (checkpoint_fraction 0.75, 0.71875), with
# and without the input embedding table in host memory: what fits under plain's reserved memory.
#   source reports/benchmarks/device_setup.sh && OUT=$OUT bash reports/benchmarks/bench_h200_v3.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
(while sleep 20; do keep h200v3; done) & W=$!
ARGS=(model=llama3-8b train.batch_size=4 train.max_steps=40 train.timing_warmup_steps=5)
sweep h200_v3_a "${ARGS[@]}" engine=plain,fast,lean train.dequant_kernel=bnb,triton
sweep h200_v3_b "${ARGS[@]}" engine=fast train.checkpoint_fraction=0.75,0.71875 \
  train.embeddings_on_cpu=false,true
kill $W; keep h200v3
