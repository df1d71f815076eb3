"""Run a benchmark file, or regenerate BENCHMARKS.md's tables from the committed records.

    python -m harness.bench benchmarks/presets.yaml               # each configuration, own process
    python -m harness.bench benchmarks/levers.yaml --only fast_no_trim   # + its references
    python -m harness.bench benchmarks/presets.yaml --check       # validate and compose only
    python -m harness.bench --table                               # rewrite BENCHMARKS.md's tables

The files are `benchmarks/*.yaml`; the logic is `harness/benchmark/`.
"""

import sys

from harness.logs import quiet_third_party

if __name__ == "__main__":
    quiet_third_party()
    from harness.benchmark.run import main

    sys.exit(main())
