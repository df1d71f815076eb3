#!/usr/bin/env bash
# build_device_wheels.sh: fills .whl/ (git-ignored) with the wheels the offline GPU machine lacks
# (Python 3.12, x86_64 manylinux; torch, transformers, peft, accelerate, triton, numpy, pandas,
# pyarrow, xxhash, huggingface-hub, ... are already there).
# Usage, from the repo root:  bash benchmarks/device/build_device_wheels.sh
# then name `.whl` in the device call's carry; benchmarks/device/device_setup.sh installs them there
# with `pip install --no-index --no-deps --target /tmp/site .whl/*.whl`, so every missing dep is listed here.
# Needs PyPI (pip) only. Idempotent: .whl/ is rebuilt from scratch each run.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
rm -rf .whl && mkdir -p .whl

# manylinux_2_24 is bitsandbytes' tag; the GPU machine's glibc (torch is manylinux_2_28) covers it
PLAT="--python-version 3.12 --implementation cp --abi cp312 --platform manylinux_2_28_x86_64
      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
# dill/multiprocess: datasets 5.2.0 pins dill<0.4.2, multiprocess<0.70.20 (0.70.19 needs dill>=0.4.1)
PKGS="bitsandbytes==0.50.2 trl==1.16.0 datasets==5.2.0 hydra-core==1.3.8 omegaconf==2.3.1
      liger-kernel==0.8.5 dill==0.4.1 multiprocess==0.70.19"
for p in $PKGS; do pip download -q --no-deps --only-binary=:all: $PLAT -d .whl "$p"; done
# antlr4-python3-runtime 4.9.3 (hydra/omegaconf pin 4.9.*) is sdist-only: build its pure-python wheel
pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3

# Strip bitsandbytes to its Python files + the CUDA 13.0 and CPU libraries; drop the other native
# libraries (other CUDA, ROCm, XPU) and their RECORD lines; the kept entries' hashes stay valid.
python3 benchmarks/device/strip_wheel.py .whl/bitsandbytes-*.whl \
    'bitsandbytes/libbitsandbytes_[^/]*\.so' 'bitsandbytes/libbitsandbytes_(cuda130|cpu)[^/]*\.so'

# Verify: every wheel is a sound zip, the stripped bitsandbytes installs and holds its two libraries.
python3 -c 'import sys, zipfile; [sys.exit(f"bad zip: {w}") for w in sys.argv[1:] if zipfile.ZipFile(w).testzip()]' .whl/*.whl
rm -rf /tmp/whltest
python3 -m pip install -q --no-index --no-deps --target /tmp/whltest .whl/bitsandbytes-*.whl
ls /tmp/whltest/bitsandbytes/libbitsandbytes_cuda130*.so /tmp/whltest/bitsandbytes/libbitsandbytes_cpu*.so
ls -l .whl && du -sh .whl
