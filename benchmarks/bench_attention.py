"""Attention benchmark (see `python benchmarks/bench_attention.py --help`); the code lives in
`bigbird_kernels.bench` so `bigbird bench attention` runs the same harness from a wheel."""

import sys

from bigbird_kernels.bench import main

if __name__ == "__main__":
    sys.exit(main())
