#!/usr/bin/env bash
# Fourteenth round (ninth session): train.causal_padding (in the fast, lean, exact and max presets
# now). 8 of the 50 benchmark batches hold one right-padded row (the wrapped packing's last row of
# a chunk); with the padding mask HF's attention leaves its unmasked kernel for those steps
# (+0.08 s each, the first +0.3 s: results/h200_v13/profile_step14.json). Each configuration in
# its own sweep process, llama3-8b b4, 50 steps, timing after 5.
#   source reports/benchmarks/device_setup.sh && OUT=$OUT timeout 500 bash reports/benchmarks/bench_h200_v14.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
(while sleep 15; do keep h200v14; done) & W=$!
ARGS=(model=llama3-8b train.batch_size=4 train.max_steps=50 train.timing_warmup_steps=5)
HOST=(train.head_on_cpu=true train.embeddings_on_cpu=true)
sweep h200_v14_plain "${ARGS[@]}" engine=plain
sweep h200_v14_fast_head_075 "${ARGS[@]}" engine=fast train.checkpoint_fraction=0.75 "${HOST[@]}"
sweep h200_v14_lean_cap64 "${ARGS[@]}" engine=lean train.memory_cap_gib=6.4
sweep h200_v14_fast "${ARGS[@]}" engine=fast
sweep h200_v14_fast_head_072 "${ARGS[@]}" engine=fast train.checkpoint_fraction=0.71875 "${HOST[@]}"
kill $W; keep h200v14
