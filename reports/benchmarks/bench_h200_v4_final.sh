#!/usr/bin/env bash
# Fourth H200 round, call 3 (after two fixes the second call found: the fused op held each slim
# recipe's recomputed output until backward ended, and added its branch to an fp32 base output in
# bf16, where peft adds it in fp32). Sweep D: engine=plain,fast,lean, the presets against the
# plain stack, 40 steps; sweep E: fast with train.frozen_dtype=fp32 (the plain stack's fp32
# residual stream): does the fast stack then reproduce plain's loss curve?
#   source reports/benchmarks/device_setup.sh && OUT=$OUT bash reports/benchmarks/bench_h200_v4_final.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
(while sleep 15; do keep h200v4f; done) & W=$!
ARGS=(model=llama3-8b train.batch_size=4 train.max_steps=40 train.timing_warmup_steps=5)
sweep h200_v4_d "${ARGS[@]}" engine=plain,fast,lean
keep h200v4f
sweep h200_v4_e "${ARGS[@]}" engine=fast train.frozen_dtype=fp32
kill $W; keep h200v4f
