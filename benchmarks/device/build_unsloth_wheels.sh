#!/usr/bin/env bash
# build_unsloth_wheels.sh: fills .whl-unsloth/ (git-ignored) with Unsloth and what it needs beyond
# .whl/ on the offline GPU machine, for `engine=unsloth` (an optional extra; see BENCHMARKS.md).
# Unsloth pins trl <= 1.15 and datasets < 5, so this set also carries trl 1.15.0 and datasets
# 4.8.5; benchmarks/device/device_setup.sh installs it over .whl/ when .whl-unsloth/ is carried, and
# then every configuration of that call runs on the same trl and datasets.
# Usage, from the repo root:  bash benchmarks/device/build_unsloth_wheels.sh
# The Unsloth wheel is 28.6 MB, 25 MB of it the `studio` web app and its CLI: both are dropped
# (with their RECORD lines), leaving the library the trial imports.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
rm -rf .whl-unsloth && mkdir -p .whl-unsloth
PLAT="--python-version 3.12 --implementation cp --abi cp312 --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
# xformers is optional (Unsloth falls back to PyTorch attention); diffusers only serves
# image models. Present on the GPU machine already: torchvision, rich, typer, protobuf,
# sentencepiece, einops, pillow, psutil, regex, requests, tqdm, pyarrow, fsspec, xxhash.
PKGS="unsloth==2026.10.9 unsloth_zoo==2026.10.9 trl==1.15.0 datasets==4.8.5 dill==0.4.1
      multiprocess==0.70.19 torchao==0.18.0 cut_cross_entropy==25.1.1 tyro==1.0.17
      docstring-parser typeguard shtab hf_transfer msgspec json5 nest-asyncio structlog
      pydantic pydantic-core annotated-types typing-inspection"
for p in $PKGS; do pip download -q --no-deps --only-binary=:all: $PLAT -d .whl-unsloth "$p"; done
python3 benchmarks/device/strip_wheel.py .whl-unsloth/unsloth-2026.10.9-*.whl '(studio|unsloth_cli)/.*'
python3 -c 'import sys, zipfile; [sys.exit(f"bad zip: {w}") for w in sys.argv[1:] if zipfile.ZipFile(w).testzip()]' .whl-unsloth/*.whl
ls -l .whl-unsloth && du -sh .whl-unsloth
