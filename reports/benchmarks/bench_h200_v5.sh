#!/usr/bin/env bash
# Ran at commit 80d41c0 (git checkout 80d41c0 to rerun): train.gc_freeze and slim recomputes under
# offload were dropped after this run (BENCHMARKS.md, fifth round), so it does not run on later code.
# Fifth round (BENCHMARKS.md, "Fifth round"): llama3-8b b4, 40 steps (timing after 5), one sweep
# process per engine so no trial inherits another's allocator state on a pooled base:
#   A: fast's kernels + offload hybrid (19 or 20 of 32 layers recomputed, inputs in host memory),
#      every layer slim (the recomputed ones now too), embeddings in host memory, gc frozen;
#   B: lean (every layer recomputed) with and without slim recomputes, gc frozen;
#   C: plain, the reference, with and without the gc freeze (the lever's own gain).
# First the CUDA tests of slim and the gc lever. Records carry the GC's pauses per trial.
#   source reports/benchmarks/device_setup.sh && OUT=$OUT bash reports/benchmarks/bench_h200_v5.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_slim.py tests/test_gc.py \
  > /tmp/rec/pytest_cuda.log 2>&1; tail -2 /tmp/rec/pytest_cuda.log
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
(while sleep 15; do keep h200v5; done) & W=$!
ARGS=(model=llama3-8b train.batch_size=4 train.max_steps=40 train.timing_warmup_steps=5)
HYBRID=(train.checkpointing=offload train.slim_activations=true train.embeddings_on_cpu=true)
sweep h200_v5_a "${ARGS[@]}" engine=fast "${HYBRID[@]}" train.gc_freeze=true \
  train.checkpoint_fraction=0.59375,0.625
sweep h200_v5_b "${ARGS[@]}" engine=lean train.gc_freeze=true train.slim_activations=true,false
sweep h200_v5_c "${ARGS[@]}" engine=plain train.gc_freeze=false,true
kill $W; keep h200v5
