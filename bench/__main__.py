"""``python -m bench``: the whole suite (see bench/suite.py and bench/README.md)."""

import sys

from bench.suite import main

# Guarded: the latency scenario's writer processes are spawned, and a spawned
# child imports the main module again (as __mp_main__).
if __name__ == "__main__":
    sys.exit(main())
