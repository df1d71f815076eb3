#!/usr/bin/env bash
# Third H200 round, diagnostics in one call: the Triton 4-bit dequant kernel against
# bitsandbytes (bit-exactness and time per call, dequant_bench.py), the CUDA tests of the fused
# op and the kernel, and where the GPU idles in a fast step: profile_step.py --gaps (CUDA + CPU
# ops, no Python tracer), llama3-8b b4, engine=fast with bitsandbytes' and with the Triton dequant.
#   source reports/benchmarks/device_setup.sh && OUT=$OUT bash reports/benchmarks/diag_h200_v3.sh
set -uo pipefail
source reports/benchmarks/bench_common.sh
python3 reports/benchmarks/dequant_bench.py --out "$OUT/dequant.json" 2>&1 | grep -v -i warn
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_dequant.py tests/test_lora_op.py \
  2>&1 | tail -4 | tee "$OUT/pytest_cuda.log"
python3 -c "from harness.models import _random_weights_dir as w; print(w('llama3-8b', 0))"
timeout 240 python3 reports/benchmarks/profile_step.py --gaps --out "$OUT/profile_gaps.json" \
  "engine=fast train.dequant_kernel=bnb" "engine=fast train.dequant_kernel=triton" "engine=lean" \
  2>&1 | grep -v -i warn | tail -70
