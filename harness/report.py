"""Build the HTML/Markdown report from records or a study.

python -m harness.report outputs/sweeps/<dir>
"""

import sys

from harness.analysis.report import main

if __name__ == "__main__":
    sys.exit(main())
