"""Name the best settings for a GPU budget.

python -m harness.pick outputs/sweeps/<dir> --budget-gib 24
"""

import sys

from harness.analysis.pick import main

if __name__ == "__main__":
    sys.exit(main())
