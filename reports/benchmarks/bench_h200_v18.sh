#!/usr/bin/env bash
# Eighteenth round (eleventh session): the tenth session's two fixes on the GPU.
# (1) The CUDA tests of the levers, among them the offloaded recompute under autocast.
# (2) The sweep-process leak fix (models.forget_optimizer_overrides): in h200_v17_*, the fast and
#     lean trials that followed plain in one sweep process started with the plain trial's fp32
#     embedding table still allocated. qwen2.5-1.5b b4, engine=plain,fast,lean in one process,
#     20 steps, timing after 4, as v17.
# (3) engine=exact with lean's memory levers, now that the offloaded recompute keeps the forward's
#     autocast (v15: 0.78x at 0.95x, 12.70 GiB allocated), against a plain run of the same call;
#     llama3-8b b4, 50 steps, timing after 5, each configuration in its own sweep process.
#   source reports/benchmarks/device_setup.sh && OUT=$OUT timeout 585 bash reports/benchmarks/bench_h200_v18.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
timeout 150 python3 -m pytest -q -p no:cacheprovider -rs tests/test_levers.py -k cuda 2>&1 \
  | tail -12 | tee /tmp/rec/pytest_cuda.log
(while sleep 15; do keep h200v18; done) & W=$!
sweep h200_v18_qwen_b4 model=qwen2.5-1.5b train.batch_size=4 train.max_steps=20 \
  train.timing_warmup_steps=4 engine=plain,fast,lean
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
ARGS=(model=llama3-8b train.batch_size=4 train.max_steps=50 train.timing_warmup_steps=5)
sweep h200_v18_plain "${ARGS[@]}" engine=plain
sweep h200_v18_exact_lean "${ARGS[@]}" engine=exact train.checkpointing=offload \
  train.checkpoint_fraction=1.0 train.head_on_cpu=true train.embeddings_on_cpu=true
kill $W; keep h200v18
