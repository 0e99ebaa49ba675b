#!/usr/bin/env python
"""Whole-model benchmark: ours vs transformers' BigBirdModel (the options of `bigbird bench model`).

    python benchmarks/bench_model.py                                   # CPU, float32, B=1, 4096 tokens
    python benchmarks/bench_model.py --device cuda --dtypes bfloat16 --batch 8
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bigbird.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
