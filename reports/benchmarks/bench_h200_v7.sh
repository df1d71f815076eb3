#!/usr/bin/env bash
# Seventh round: the fused op rounds base + branch once (the base matmul accumulates onto the
# LoRA branch), with the bf16 and the fp32 residual stream, against plain; each configuration in
# its own sweep process, llama3-8b b4, 50 steps, timing after 5. First the CUDA tests of it.
#   source reports/benchmarks/device_setup.sh && OUT=$OUT timeout 590 bash reports/benchmarks/bench_h200_v7.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_residual.py \
  tests/test_lora_op.py -k "rounds_base or residual or cuda" 2>&1 | tail -5 | tee /tmp/rec/pytest_cuda.log
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
(while sleep 15; do keep h200v7; done) & W=$!
ARGS=(model=llama3-8b train.batch_size=4 train.max_steps=50 train.timing_warmup_steps=5)
sweep h200_v7_plain "${ARGS[@]}" engine=plain
sweep h200_v7_fast "${ARGS[@]}" engine=fast
sweep h200_v7_fast_r32 "${ARGS[@]}" engine=fast train.residual_dtype=fp32
sweep h200_v7_lean "${ARGS[@]}" engine=lean
kill $W; keep h200v7
