#!/usr/bin/env bash
# Ran in the fifth round (BENCHMARKS.md, "Fifth round"): the 13-slim-layers configuration after
# the fix that drops each slim recipe in backward, against plain and the fast preset, one process,
# llama3-8b b4, 40 steps (timing after 5), plain last; then fast with the fp32 residual stream (does it track
# plain's loss curve now that the fused op adds its branch in fp32?). bf16 trials first: a trial
# after an fp32-frozen one on the pooled base starts with ~1 GiB more (BENCHMARKS.md).
#   source reports/benchmarks/device_setup.sh && OUT=$OUT bash reports/benchmarks/bench_h200_v4_check.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
(while sleep 15; do keep h200v4c; done) & W=$!
ARGS=(model=llama3-8b train.batch_size=4 train.max_steps=40 train.timing_warmup_steps=5)
sweep h200_v4_c "${ARGS[@]}" engine=fast,lean,plain
sweep h200_v4_d "${ARGS[@]}" engine=fast train.checkpointing=offload \
  train.checkpoint_fraction=0.59375 train.slim_activations=true train.embeddings_on_cpu=true \
  train.frozen_dtype=bf16,fp32
kill $W; keep h200v4c
