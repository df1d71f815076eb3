"""`python -m harness [overrides]` runs one trial; `python -m harness -m k=a,b` sweeps."""

from harness.cli import main

if __name__ == "__main__":
    main()
