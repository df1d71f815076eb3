"""Run an Optuna study from a sweeps/ YAML: `python -m harness.study sweeps/rank.yaml`."""

import sys

from harness.sweep.study import main

if __name__ == "__main__":
    sys.exit(main())
