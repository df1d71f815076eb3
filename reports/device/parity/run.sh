#!/usr/bin/env bash
# lm-eval parity (tests/test_lmeval_parity.py) on a random-weight SmolLM2-135M-shaped model.
# Run from the repo root, with lm_eval & co. importable (on the device: wheels in /tmp/site).
#   OUT=/tmp/out LIMIT=200 BS=8 TASKS=qh_arc_easy,... bash reports/device/parity/run.sh
set -uo pipefail
export HARNESS_CACHE=${HARNESS_CACHE:-/tmp/hcache} HARNESS_DATA_DIR=${HARNESS_DATA_DIR:-$PWD/.carry_data}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
MODEL=$(python3 - <<'PY'
from transformers import AutoTokenizer
from harness.models import _random_weights_dir
path = _random_weights_dir("smollm2-135m", 0)  # random bf16 weights, seed 0
AutoTokenizer.from_pretrained(".carry_w/tok").save_pretrained(path)  # embedded tokenizer beside them
print(path)
PY
) || exit 1
echo "model dir: $MODEL"
rm -rf /tmp/parity
HARNESS_PARITY_MODEL=$MODEL HARNESS_PARITY_OUT=/tmp/parity \
HARNESS_PARITY_LIMIT=${LIMIT:-200} HARNESS_PARITY_BATCH_SIZE=${BS:-8} \
HARNESS_PARITY_TASKS=${TASKS:-qh_arc_easy,qh_lambada,qh_winogrande,qh_piqa,qh_hellaswag} \
  python3 -m pytest -q -p no:cacheprovider tests/test_lmeval_parity.py 2>&1 | tee "$OUT/pytest.log"
for form in adapter merged; do
  for f in harness_scores cli_scores parity; do
    cp "/tmp/parity/$form/$f.json" "$OUT/${form}_$f.json" 2>/dev/null
  done
done
tar czf "$OUT/parity_raw.tgz" --exclude='*.safetensors' -C /tmp parity 2>/dev/null
ls -la "$OUT"
