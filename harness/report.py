"""Build the HTML/Markdown report from records or a study.

python -m harness.report outputs/sweeps/<dir>      # -> <output root>/reports/<dir>/
"""

import sys

from harness.logs import quiet_third_party

if __name__ == "__main__":
    quiet_third_party()
    from harness.analysis.report import main

    sys.exit(main())
