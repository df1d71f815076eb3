#!/usr/bin/env bash
# Sixth round: the fp32 residual stream under bf16 weights (train.residual_dtype=fp32,
# harness/residual.py) with the presets' levers, against plain, each configuration in its own
# sweep process; llama3-8b b4, 50 steps (the loss window), timing after 5. First the CUDA
# residual tests (Liger's kernels and the Triton dequant against the plain stack).
#   source reports/benchmarks/device_setup.sh && OUT=$OUT timeout 590 bash reports/benchmarks/bench_h200_v6.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_residual.py 2>&1 | tail -5 \
  | tee /tmp/rec/pytest_cuda_residual.log
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
(while sleep 15; do keep h200v6; done) & W=$!
ARGS=(model=llama3-8b train.batch_size=4 train.max_steps=50 train.timing_warmup_steps=5)
R32=(train.residual_dtype=fp32)
sweep h200_v6_plain "${ARGS[@]}" engine=plain
sweep h200_v6_fast_r32 "${ARGS[@]}" engine=fast "${R32[@]}"
sweep h200_v6_lean_r32 "${ARGS[@]}" engine=lean "${R32[@]}"
sweep h200_v6_hybrid_r32 "${ARGS[@]}" engine=fast "${R32[@]}" train.checkpointing=offload
sweep h200_v6_fast "${ARGS[@]}" engine=fast
kill $W; keep h200v6
