#!/usr/bin/env bash
# Thirteenth round (ninth session): (1) why the batches with fewer loss tokens (steps 14, 16, 21,
# 27, 31, 32, 36, 39 of every sweep: 820-1009 loss tokens against ~1,050-1,110) are slower in every
# configuration, plain included: TRL's chunked LM-head loss timed per loss-token count, and a
# profile of step 14 (825 loss tokens) against step 15 (1,068) in the fast configuration;
# (2) robustness: plain, lean capped at 6.4 GiB, and fast with head and embeddings on the host and
# 8 kept (v9's 1.97x), each in its own sweep process.
#   source reports/benchmarks/device_setup.sh && OUT=$OUT timeout 585 bash reports/benchmarks/bench_h200_v13.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
mkdir -p /tmp/rec/h200_v13
python3 reports/benchmarks/loss_head_probe.py --out /tmp/rec/h200_v13/loss_head_probe.json 2>&1 \
  | grep -v -i warn | tail -16
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
(while sleep 15; do keep h200v13; done) & W=$!
FASTH=(engine=fast train.checkpoint_fraction=0.75 train.head_on_cpu=true train.embeddings_on_cpu=true)
PCOMMON=('eval.tasks=[]' data.max_seq_len=2048 data.packing=true data.packing_strategy=wrapped
  data.num_train=10000 train.save_adapter=false train.device=cuda model=llama3-8b
  train.batch_size=4 train.timing_warmup_steps=3)  # profile_step.py's COMMON, steps set below
for s in 14 15; do
  timeout 150 python3 reports/benchmarks/profile_step.py --out /tmp/rec/h200_v13/profile_step$s.json \
    --gaps --profile-step $s --profile-steps 1 \
    --common "${PCOMMON[*]} train.max_steps=$((s + 2))" \
    "${FASTH[*]}" 2>&1 | grep -v -i warn | tail -3 | cut -c1-300
done
ARGS=(model=llama3-8b train.batch_size=4 train.max_steps=50 train.timing_warmup_steps=5)
sweep h200_v13_plain "${ARGS[@]}" engine=plain
sweep h200_v13_lean_cap64 "${ARGS[@]}" engine=lean train.memory_cap_gib=6.4
sweep h200_v13_fast_head_075 "${ARGS[@]}" "${FASTH[@]}"
kill $W; keep h200v13
