"""Property tests: for any structure (window, globals, r, block count) the reference equals the dense
log(count) oracle, and the transposed structure lists exactly the dense counts."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bigbird_kernels import block_sparse_attention_ref, make_layout, resample_layout
from bigbird_kernels.reference import dense_attention_ref


@st.composite
def structures(draw):
    nb = draw(st.integers(1, 12))
    window = draw(st.sampled_from([1, 3, 5]))
    globals_ = draw(st.lists(st.integers(-nb, nb - 1), max_size=3, unique=True))
    r = draw(st.integers(0, 3))
    H = draw(st.integers(1, 3))
    bs = draw(st.sampled_from([1, 2, 4]))
    seed = draw(st.integers(0, 2**31 - 1))
    return nb, window, tuple(globals_), r, H, bs, seed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structures(), st.booleans())
def test_any_structure_matches_dense_oracle(structure, with_mask):
    nb, window, globals_, r, H, bs, seed = structure
    g = torch.Generator().manual_seed(seed)
    rand = torch.randint(0, nb, (H, nb, r), generator=g)  # duplicates allowed, globals allowed
    layout = make_layout(rand, block_size=bs, window=window, global_blocks=globals_)
    S, B, D = nb * bs, 2, 3
    q, k, v = (torch.randn(B, H, S, D, generator=g, dtype=torch.float64) for _ in range(3))
    mask = (torch.rand(B, S, generator=g) > 0.3) if with_mask else None
    out, lse = block_sparse_attention_ref(q, k, v, layout, mask)
    out_d, lse_d = dense_attention_ref(q, k, v, layout, mask)
    torch.testing.assert_close(out, out_d, atol=1e-12, rtol=0)
    torch.testing.assert_close(lse, lse_d, atol=1e-12, rtol=0)
    assert torch.isfinite(out).all()

    t = layout.transpose()
    dense = layout.to_dense()
    rebuilt = torch.zeros_like(dense)
    for h in range(H):
        for j in range(nb):
            for i in t.q_indices[h, t.q_offsets[h, j] : t.q_offsets[h, j + 1]].tolist():
                rebuilt[h, i, j] += 1
    rebuilt[:, layout.is_global, :] = 1
    assert torch.equal(rebuilt, dense)


@settings(max_examples=30, deadline=None)
@given(st.integers(3, 40), st.sampled_from([1, 3, 5]), st.integers(0, 4), st.integers(0, 2**31 - 1))
def test_resample_rows_are_distinct_and_avoid_listed_blocks(nb, window, r, seed):
    g = torch.Generator().manual_seed(seed)
    layout = resample_layout(seq_len=nb * 2, block_size=2, num_random_blocks=r, num_heads=2, window=window,
                             generator=g)
    half = window // 2
    for h in range(2):
        for i in range(nb):
            if i in layout.global_blocks:
                continue
            static = set(layout.global_blocks) | set(range(max(0, i - half), min(nb, i + half + 1)))
            free = nb - len(static)
            rnd = layout.random_blocks[h, i].tolist()
            assert len(set(rnd[:free])) == len(rnd[:free])
            assert not static & set(rnd[:free])
            assert rnd[free:] == [i] * max(0, r - free)
