#!/usr/bin/env python
"""Whole-model benchmark: ours vs transformers' BigBirdModel (see bigbird/benchmark.py for options).

    python benchmarks/bench_model.py                                   # CPU, fp32, B=1, 4096 tokens
    python benchmarks/bench_model.py --device cuda --dtype bf16 --batch 8
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bigbird.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
