#!/usr/bin/env bash
# Fifteenth round (tenth session): the presets again with train.causal_padding, engine=exact among
# them (its identical-math claim was measured before causal_padding), exact with lean's memory
# levers (every layer recomputed from host memory, head and embeddings on the host), and two tries
# at the moonshot (2x at <= 0.5x plain's memory): lean with the LM head back on the GPU (the head
# in host memory costs ~2% of a step, a kept layer ~0.7%, each ~1 GiB) under an 8.2 GiB cap,
# without and with one kept layer. Each configuration in its own sweep process, llama3-8b b4,
# 50 steps, timing after 5.
#   source reports/benchmarks/device_setup.sh && OUT=$OUT timeout 585 bash reports/benchmarks/bench_h200_v15.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
(while sleep 15; do keep h200v15; done) & W=$!
ARGS=(model=llama3-8b train.batch_size=4 train.max_steps=50 train.timing_warmup_steps=5)
LEANISH=(train.checkpointing=offload train.checkpoint_fraction=1.0 train.head_on_cpu=true
  train.embeddings_on_cpu=true)
sweep h200_v15_plain "${ARGS[@]}" engine=plain
sweep h200_v15_fast "${ARGS[@]}" engine=fast
sweep h200_v15_exact "${ARGS[@]}" engine=exact
sweep h200_v15_lean_gpuhead_cap82 "${ARGS[@]}" engine=lean train.head_on_cpu=false train.memory_cap_gib=8.2
sweep h200_v15_exact_lean "${ARGS[@]}" engine=exact "${LEANISH[@]}"
sweep h200_v15_lean_gpuhead_k1_cap82 "${ARGS[@]}" engine=lean train.head_on_cpu=false \
  train.checkpoint_fraction=0.96875 train.memory_cap_gib=8.2
kill $W; keep h200v15
