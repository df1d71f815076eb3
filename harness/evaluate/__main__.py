"""python -m harness.evaluate <trial dir>: reproduce a trial's lm-eval scores (reproduce.py)."""

import sys

from harness.evaluate.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
