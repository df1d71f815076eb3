#!/usr/bin/env bash
# Diagnostics that choose the levers before the benchmark (issue #5), in one call: the optimizer
# step at the llama3-8b LoRA shapes (optim_step.py), the LoRA kernels' launch configs
# (tune_lora_kernels.py), and where the GPU idles in a training step: profile_step.py with CPU
# frames, llama3-8b b4, full recompute with and without train.flat_optimizer, and engine=lean.
#   source reports/benchmarks/device_setup.sh && OUT=$OUT bash reports/benchmarks/diag_h200.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
python3 reports/benchmarks/optim_step.py --out "$OUT/optim_step.json" 2>&1 | grep -v -i warn | tail -20
timeout 200 python3 reports/benchmarks/tune_lora_kernels.py --out "$OUT/tune.json" 2>&1 | grep -v -i warn
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
timeout 300 python3 reports/benchmarks/profile_step.py --stacks --out "$OUT/profile_idle.json" \
  "engine=fast train.checkpointing=full train.flat_optimizer=false" \
  "engine=fast train.checkpointing=full" "engine=lean" 2>&1 | grep -v -i warn | tail -100
