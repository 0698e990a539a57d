"""The cost of chance levels: every head site of every layer with 200 null draws per fit group against the same
analysis with nulls off, on the Pythia-160m shape (12 x 12 heads, d_model 768, vocabulary 50,304, k = 4,096).

    nice python benchmarks/bench_null.py                 # the issue's shape
    python benchmarks/bench_null.py --layers 2           # the same per-layer work on two layers (a quicker run)

Prints the ratio (goal: within 3x).  The update and gradient lenses are timed by ``bench_lenses.py``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lenses import main  # noqa: E402

if __name__ == "__main__":
    main(sections="null")
