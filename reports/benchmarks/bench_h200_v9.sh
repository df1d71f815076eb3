#!/usr/bin/env bash
# Ninth round: (1) train.head_on_cpu (the frozen LM head streamed from pinned host memory once per
# forward) on the lean preset against the 0.4x memory target, and on the fast preset with more
# layers kept under plain's memory; (2) train.projection_dtype=fp32 (q, k, v, gate, up return
# base + branch in fp32, as in the plain stack) with the fp32 residual: does the presets'
# early-step loss gap close? Each configuration in its own sweep process, llama3-8b b4, 50 steps,
# timing after 5. First the CUDA tests of both levers.
#   source reports/benchmarks/device_setup.sh && OUT=$OUT timeout 585 bash reports/benchmarks/bench_h200_v9.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_residual.py \
  tests/test_levers.py -k "cuda" 2>&1 | tail -5 | tee /tmp/rec/pytest_cuda.log
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
(while sleep 15; do keep h200v9; done) & W=$!
ARGS=(model=llama3-8b train.batch_size=4 train.max_steps=50 train.timing_warmup_steps=5)
sweep h200_v9_plain "${ARGS[@]}" engine=plain
sweep h200_v9_lean_head "${ARGS[@]}" engine=lean train.head_on_cpu=true
sweep h200_v9_fast_r32_p32 "${ARGS[@]}" engine=fast train.residual_dtype=fp32 train.projection_dtype=fp32
sweep h200_v9_fast_head_075 "${ARGS[@]}" engine=fast train.head_on_cpu=true train.embeddings_on_cpu=true train.checkpoint_fraction=0.75
sweep h200_v9_fast_head_072 "${ARGS[@]}" engine=fast train.head_on_cpu=true train.embeddings_on_cpu=true train.checkpoint_fraction=0.71875
kill $W; keep h200v9
