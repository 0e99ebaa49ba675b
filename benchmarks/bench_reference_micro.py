"""pytest-benchmark microbenchmarks of the CPU reference attention ``block_sparse_attention_ref``.

Not part of the default test run (pytest collects ``tests/`` and ``test_*.py`` files only); run with

    python -m pytest benchmarks/bench_reference_micro.py --benchmark-only
    python -m pytest benchmarks/bench_reference_micro.py --benchmark-only --benchmark-autosave   # keep results

Each case times one forward (no autograd) on fresh random inputs with a right-padded attention mask,
eval-mode Hugging Face layout. ``extra_info`` records the shape, the attended-block FLOPs
(docs/design.md section 7) and the effective GFLOP/s of the median.
"""

from __future__ import annotations

import pytest
import torch

from bigbird_kernels import block_sparse_attention_ref, hf_layout
from bigbird_kernels.testing import make_padding_mask, make_qkv

pytest.importorskip("pytest_benchmark")

# (B, H, S, D, block_size, r, dtype, lse)
CASES = [
    (1, 12, 1024, 64, 64, 3, torch.float32, False),
    (1, 12, 4096, 64, 64, 3, torch.float32, False),
    (2, 4, 2048, 64, 32, 3, torch.float32, False),
    (1, 12, 1024, 64, 64, 3, torch.float32, True),
    (1, 12, 1024, 64, 64, 3, torch.bfloat16, False),
]


def _id(case) -> str:
    B, H, S, D, bs, r, dtype, lse = case
    return f"B{B}-H{H}-S{S}-D{D}-bs{bs}-r{r}-{str(dtype).replace('torch.', '')}" + ("-lse" if lse else "")


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_reference_forward(benchmark, case):
    B, H, S, D, bs, r, dtype, need_lse = case
    layout = hf_layout(layer_idx=0, seq_len=S, block_size=bs, num_random_blocks=r, num_heads=H, training=False)
    q, k, v = make_qkv(B, H, S, D, dtype=dtype)
    mask = make_padding_mask(B, S, block_size=bs, kind="tail")

    @torch.inference_mode()
    def run():
        return block_sparse_attention_ref(q, k, v, layout, attention_mask=mask, need_lse=need_lse)

    out, lse = benchmark(run)
    assert out.shape == (B, H, S, D) and torch.isfinite(out).all()
    assert (lse is not None) == need_lse
    flops = 4.0 * B * H * D * bs * bs * layout.num_pairs_per_head
    benchmark.extra_info.update(B=B, H=H, S=S, D=D, block_size=bs, r=r, dtype=str(dtype), gflop=flops / 1e9,
                                threads=torch.get_num_threads())
    if benchmark.stats is not None:
        benchmark.extra_info["gflops_per_s_median"] = flops / benchmark.stats.stats.median / 1e9
