#!/usr/bin/env bash
# GPU verification of the core trial (issue #2) and a first run of the speed levers (issue #5),
# on the lent H100. Run from the repo root after the wheels are installed into /tmp/site and the
# embedded GGUF is reassembled there (README.md in this folder has the whole call).
#   OUT=/tmp/out bash reports/device/part1.sh
set -uo pipefail
export PYTHONPATH=/tmp/site HARNESS_CACHE=/tmp/hcache PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/rec
keep() { tar czf "$OUT/records.tgz" --exclude='*.safetensors' --exclude='*.bin' -C /tmp rec; }

# 1. the embedded SmolLM2-135M (real weights): the default trial, with its lm-eval task
python3 -m harness 'eval.tasks=[qh_embedded]' train.device=cuda out_dir=/tmp/rec/embedded \
  2>&1 | grep -v -i warn | tail -4
keep
# 2. llama3-8b shape, random weights, seeds' recipe (engine=plain), seq 2048 rows (wrapped
#    packing), batch 4, 30 steps; then the presets in the same sweep process (one quantized base)
python3 -m harness -m model=llama3-8b engine=plain,fast,lean,max 'eval.tasks=[]' \
  data.max_seq_len=2048 data.packing=true data.packing_strategy=wrapped data.num_train=10000 \
  train.batch_size=4 train.max_steps=30 train.save_adapter=false train.device=cuda \
  hydra.sweep.dir=/tmp/rec/llama hydra.callbacks.sweep_summary.report=false \
  2>&1 | grep -v -i warn | tail -14
keep
# 3. the CUDA-only lever tests (Liger kernels, offloading) on a tiny model
python3 -m pytest -q -p no:cacheprovider tests/test_levers.py -k cuda 2>&1 | tail -4
