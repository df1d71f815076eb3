#!/usr/bin/env bash
# build_devcache.sh: fills .devcache/ (git-ignored) with the embedded tokenizer's small files, which
# the random-weight shapes borrow. The lent GPU cannot take the embedded model's 98 MB GGUF; these
# files (tokenizer, its config and the model config, without the weights) are enough there.
# Usage, from the repo root:  bash benchmarks/device/build_devcache.sh
# then name `.devcache` in the device call's carry; benchmarks/device/device_setup.sh copies it into
# the harness cache there. Converts the embedded model here first if the cache lacks it.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PYTHON:-.venv/bin/python}
src=$("$PY" -c 'from harness.assets.embedded_model import embedded_tokenizer_dir as d; print(d())')
dst=.devcache/models/$(basename "$src")
rm -rf .devcache && mkdir -p "$dst"
find "$src" -maxdepth 1 -type f ! -name '*.safetensors' -exec cp {} "$dst"/ \;
ls -l "$dst" && du -sh .devcache
