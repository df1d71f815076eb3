#!/usr/bin/env bash
# Tenth round: the failing CUDA test of train.projection_dtype=fp32 with its traceback; then, each
# in its own sweep process (llama3-8b b4, 50 steps, timing after 5): plain, the fast preset with
# the LM head and embedding table in host memory and 10 or 11 slim layers kept (the ninth round's
# 9 kept without slim: 2.02x at 1.04x), and lean + the streamed head again (ninth round: 0.398x).
#   source reports/benchmarks/device_setup.sh && OUT=$OUT timeout 585 bash reports/benchmarks/bench_h200_v10.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
timeout 90 python3 -m pytest -q -p no:cacheprovider --tb=long tests/test_residual.py \
  -k "projections_keep and cuda" > /tmp/rec/pytest_cuda_projections.log 2>&1
tail -60 /tmp/rec/pytest_cuda_projections.log | grep -v -i warn | tail -40
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
(while sleep 15; do keep h200v10; done) & W=$!
ARGS=(model=llama3-8b train.batch_size=4 train.max_steps=50 train.timing_warmup_steps=5)
HOST=(train.head_on_cpu=true train.embeddings_on_cpu=true train.slim_activations=true)
sweep h200_v10_plain "${ARGS[@]}" engine=plain
sweep h200_v10_fast_slim_069 "${ARGS[@]}" engine=fast "${HOST[@]}" train.checkpoint_fraction=0.6875
sweep h200_v10_fast_slim_066 "${ARGS[@]}" engine=fast "${HOST[@]}" train.checkpoint_fraction=0.65625
sweep h200_v10_lean_head "${ARGS[@]}" engine=lean train.head_on_cpu=true
kill $W; keep h200v10
