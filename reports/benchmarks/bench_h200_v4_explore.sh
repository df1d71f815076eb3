#!/usr/bin/env bash
# Fourth H200 round, call 1: the CUDA tests of the new lever (train.slim_activations) and the
# hybrid checkpointing (offload with a fraction), then a map of what fits: profile_step.py runs
# each setting as a trial in one process (llama3-8b b4, 12 steps, timing after 4, steps 5-6
# profiled, CUDA kernels only) to choose the presets' fractions.
#   source reports/benchmarks/device_setup.sh && OUT=$OUT bash reports/benchmarks/bench_h200_v4_explore.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_slim.py tests/test_levers.py \
  -k "cuda" 2>&1 | tail -4 | tee "$OUT/pytest_cuda.log"
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
H="engine=fast train.checkpointing=offload train.embeddings_on_cpu=true train.slim_activations=true"
timeout 330 python3 reports/benchmarks/profile_step.py --out "$OUT/explore.json" \
  --common "eval.tasks=[] data.max_seq_len=2048 data.packing=true data.packing_strategy=wrapped data.num_train=10000 train.save_adapter=false train.device=cuda model=llama3-8b train.batch_size=4 train.max_steps=12 train.timing_warmup_steps=4" \
  "engine=fast" "engine=fast train.slim_activations=true" \
  "$H train.checkpoint_fraction=0.625" "$H train.checkpoint_fraction=0.59375" \
  "$H train.checkpoint_fraction=0.5625" \
  "engine=lean train.slim_activations=true train.checkpoint_fraction=0.9375" \
  "engine=lean train.slim_activations=true train.checkpoint_fraction=0.96875" \
  2>&1 | grep -v -i warn | tail -40
