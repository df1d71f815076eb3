"""Name the best settings for a GPU budget.

python -m harness.pick outputs/sweeps/<dir> --budget-gib 24
"""

import sys

from harness.logs import quiet_third_party

if __name__ == "__main__":
    quiet_third_party()
    from harness.analysis.pick import main

    sys.exit(main())
