#!/usr/bin/env bash
# Fourth H200 round, last call (the session's device time nearly spent): the fast preset alone,
# llama3-8b b4, 20 steps (timing after 5), after the fix that drops each slim recipe in backward:
# its peak reserved memory against plain's 16.56 GiB (every H200 round: v2, v3 twice, v4).
#   source reports/benchmarks/device_setup.sh && OUT=$OUT bash reports/benchmarks/bench_h200_v4_check.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
(while sleep 10; do keep h200v4c; done) & W=$!
sweep h200_v4_c model=llama3-8b train.batch_size=4 train.max_steps=20 train.timing_warmup_steps=5 \
  engine=fast
kill $W; keep h200v4c
