"""Layouts: bit-exact with Hugging Face's random blocks, structure, caching, transposition."""

import functools
import hashlib

import numpy as np
import pytest
import torch

from bigbird_kernels.layout import (
    get_layout,
    hf_layout,
    hf_random_blocks,
    make_layout,
    resample_layout,
    seeded_layout,
)

from hf_oracle import hf_attention_module, run_hf_attention

HF_CASES = [
    # (padded L, block size, r, heads, layer, max_position_embeddings)
    (704 + 64, 64, 3, 2, 0, 4096),
    (704 + 128, 64, 3, 3, 5, 4096),
    (704 + 64 * 5, 64, 3, 2, 11, 4096),
    (1024, 64, 3, 4, 0, 4096),
    (1024, 64, 3, 2, 1, 1024),
    (2048, 64, 3, 2, 3, 4096),
    (3072, 64, 2, 2, 1, 4096),
    (4096, 64, 3, 2, 7, 4096),
    (1024, 32, 2, 3, 2, 2048),
    (1024, 16, 1, 2, 0, 4096),
    (512, 16, 3, 2, 4, 1024),
    (320, 32, 1, 5, 2, 4096),
    (448, 32, 2, 1, 9, 4096),
    (384, 64, 1, 2, 0, 4096),  # nb = 6: the (r + 5) < nb <= 2r + 5 plan branch is not reached, r small
    (512, 64, 1, 2, 1, 4096),  # nb = 8 > 2r + 5
    (384, 64, 3, 2, 1, 4096),  # nb = 6 <= r + 5: the single-plan branch
    (576, 64, 3, 2, 2, 4096),  # nb = 9: the two-plan branch with r//2 and r - r//2
]


def _ids(case):
    L, bs, r, H, layer, mp = case
    return f"L{L}-bs{bs}-r{r}-H{H}-layer{layer}-max{mp}"


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", HF_CASES, ids=_ids)
def test_hf_random_blocks_match_transformers(case, training):
    L, bs, r, H, layer, mp = case
    module = hf_attention_module(num_heads=H, head_dim=4, block_size=bs, num_random_blocks=r,
                                 layer_idx=layer, training=training, max_position_embeddings=mp)
    x = torch.randn(1, L, H * 4, dtype=torch.float64)
    try:
        _, _, _, _, hf_rand = run_hf_attention(module, x, torch.ones(1, L))
    except ValueError as e:  # HF cannot draw this layout: neither can we, with a clear message
        with pytest.raises(ValueError, match="random layout"):
            hf_random_blocks(layer_idx=layer, seq_len=L, block_size=bs, num_random_blocks=r, num_heads=H,
                             max_position_embeddings=mp, training=training)
        assert "broadcast" in str(e)
        return
    ours = hf_random_blocks(layer_idx=layer, seq_len=L, block_size=bs, num_random_blocks=r, num_heads=H,
                            max_position_embeddings=mp, training=training)
    np.testing.assert_array_equal(ours, hf_rand.numpy())
    layout = hf_layout(layer_idx=layer, seq_len=L, block_size=bs, num_random_blocks=r, num_heads=H,
                       max_position_embeddings=mp, training=training)
    assert torch.equal(layout.random_blocks[:, 1:-1], torch.from_numpy(ours))


def test_hf_reference_values_base_config():
    """Reference rows and hashes of Hugging Face's random blocks for the base config, recorded from transformers."""
    expected = {
        1024: ([[9, 14, 7], [9, 6, 7], [10, 5, 14], [6, 8, 12]], [2, 6, 5], [6, 11, 10], "14e2e195bcd819af"),
        2048: ([[4, 6, 7], [4, 8, 5], [8, 1, 5], [9, 2, 1]], [5, 3, 1], [3, 5, 4], "566d810818e3ed75"),
        4096: ([[9, 14, 7], [9, 6, 7], [10, 5, 14], [6, 8, 12]], [6, 12, 5], [6, 11, 10], "5484ec714327bdb5"),
    }
    for L, (rows, last, head1, sha) in expected.items():
        stack = np.stack([
            hf_random_blocks(layer_idx=i, seq_len=L, block_size=64, num_random_blocks=3, num_heads=12, training=True)
            for i in range(12)
        ]).astype(np.int32)
        assert stack[0, 0, :4].tolist() == rows
        assert stack[0, 0, -1].tolist() == last
        assert stack[0, 1, 0].tolist() == head1
        assert hashlib.sha1(stack.tobytes()).hexdigest()[:16] == sha


def test_hf_eval_rows_follow_hf_concatenation():
    """Eval rows: 0, window, nb-1 and r extra copies of block 0 (reference section 2.4)."""
    layout = hf_layout(layer_idx=3, seq_len=512, block_size=64, num_random_blocks=3, num_heads=2, training=False)
    nb = 8
    kv, num = layout.kv_indices[0], layout.kv_num_blocks[0]
    assert num.tolist() == [0, 7, 8, 8, 8, 8, 7, 0]
    assert sorted(kv[1, :7].tolist()) == sorted([0, 1, 2, nb - 1, 0, 0, 0])
    assert sorted(kv[4, :8].tolist()) == sorted([0, 3, 4, 5, 0, 0, 0, nb - 1])
    assert sorted(kv[6, :7].tolist()) == sorted([0, nb - 3, nb - 2, nb - 1, 0, 0, 0])
    assert layout.global_blocks == (0, nb - 1)
    assert layout.is_global.tolist() == [True] + [False] * 6 + [True]


def test_layout_is_cached_and_eval_ignores_layer():
    a = hf_layout(layer_idx=0, seq_len=1024, block_size=64, num_random_blocks=3, num_heads=4, training=True)
    b = hf_layout(layer_idx=0, seq_len=1024, block_size=64, num_random_blocks=3, num_heads=4, training=True)
    c = hf_layout(layer_idx=1, seq_len=1024, block_size=64, num_random_blocks=3, num_heads=4, training=True)
    assert a is b and a is not c
    e0 = hf_layout(layer_idx=0, seq_len=1024, block_size=64, num_random_blocks=3, num_heads=4, training=False)
    e5 = hf_layout(layer_idx=5, seq_len=1024, block_size=64, num_random_blocks=3, num_heads=4, training=False)
    assert e0 is e5


def test_seeded_equals_hf_training_in_every_mode():
    s = seeded_layout(layer_idx=2, seq_len=2048, block_size=64, num_random_blocks=3, num_heads=3)
    t = hf_layout(layer_idx=2, seq_len=2048, block_size=64, num_random_blocks=3, num_heads=3, training=True)
    assert torch.equal(s.kv_indices, t.kv_indices) and s.mode == "seeded"
    assert get_layout("seeded", layer_idx=2, seq_len=2048, block_size=64, num_random_blocks=3, num_heads=3) is s


def _check_resample(layout):
    H, nb, r = layout.random_blocks.shape
    half = layout.window // 2
    for h in range(H):
        for i in range(nb):
            if i in layout.global_blocks:
                continue
            static = set(layout.global_blocks) | set(range(max(0, i - half), min(nb, i + half + 1)))
            n_free = nb - len(static)
            rnd = layout.random_blocks[h, i].tolist()
            assert rnd[n_free:] == [i] * max(0, r - n_free), "slots beyond the free blocks repeat the own block"
            rnd = rnd[:n_free]
            assert len(set(rnd)) == len(rnd), "random blocks of a row must be distinct"
            assert not static & set(rnd), "random blocks must avoid the window and the globals"
            assert all(0 <= x < nb for x in rnd)


def test_resample_draws_distinct_fresh_blocks_and_replays_from_generator():
    g = torch.Generator().manual_seed(123)
    a = resample_layout(seq_len=64 * 40, block_size=64, num_random_blocks=3, num_heads=4, generator=g)
    b = resample_layout(seq_len=64 * 40, block_size=64, num_random_blocks=3, num_heads=4, generator=g)
    assert not torch.equal(a.random_blocks, b.random_blocks)
    g.manual_seed(123)
    c = resample_layout(seq_len=64 * 40, block_size=64, num_random_blocks=3, num_heads=4, generator=g)
    assert torch.equal(a.kv_indices, c.kv_indices)
    _check_resample(a)
    # every free block gets picked at some point: the draw is not confined to a corner
    assert set(a.random_blocks[:, 1:-1].flatten().tolist()) == set(range(1, 39))


def test_resample_with_few_free_blocks_repeats_own_block():
    layout = resample_layout(seq_len=16 * 5, block_size=16, num_random_blocks=3, num_heads=2)
    # 5 blocks, window 3, globals 0 and 4: row 2 lists 0,1,2,3,4 and has nothing free
    assert layout.random_blocks[:, 2].tolist() == [[2, 2, 2], [2, 2, 2]]
    _check_resample(resample_layout(seq_len=16 * 12, block_size=16, num_random_blocks=5, num_heads=3,
                                    window=5, global_blocks=(0, 3, -1)))


def test_custom_structure_window_globals_and_r0():
    nb = 10
    rand = torch.zeros(1, nb, 0, dtype=torch.int32)
    layout = make_layout(rand, block_size=16, window=5, global_blocks=(0, 4, -1))
    assert layout.global_blocks == (0, 4, 9)
    assert layout.num_random_blocks == 0
    row = layout.kv_indices[0, 6, : layout.kv_num_blocks[0, 6]].tolist()
    assert row == [0, 4, 5, 6, 7, 8, 9]
    row1 = layout.kv_indices[0, 1, : layout.kv_num_blocks[0, 1]].tolist()
    assert row1 == [0, 1, 2, 3, 4, 9]
    assert layout.kv_num_blocks[0, 4] == 0  # global row: flagged, not enumerated
    dense = layout.to_dense()[0]
    assert (dense[[0, 4, 9]] == 1).all()
    assert (dense[:, [0, 4, 9]] >= 1).all()


def test_transpose_matches_dense_counts():
    for layout in (
        hf_layout(layer_idx=1, seq_len=1024, block_size=64, num_random_blocks=3, num_heads=3, training=True),
        hf_layout(layer_idx=1, seq_len=1024, block_size=64, num_random_blocks=3, num_heads=3, training=False),
        resample_layout(seq_len=640, block_size=32, num_random_blocks=2, num_heads=2, global_blocks=(0, 7, -1)),
    ):
        t = layout.transpose()
        assert layout.transpose() is t
        dense = layout.to_dense()
        H, nb, _ = dense.shape
        assert t.q_offsets.shape == (H, nb + 1) and t.q_indices.shape == (H, layout.nnz_per_head)
        rebuilt = torch.zeros_like(dense)
        for h in range(H):
            for j in range(nb):
                rows = t.q_indices[h, t.q_offsets[h, j] : t.q_offsets[h, j + 1]].tolist()
                assert rows == sorted(rows)
                for i in rows:
                    rebuilt[h, i, j] += 1
        rebuilt[:, layout.is_global, :] = 1
        assert torch.equal(rebuilt, dense)


def test_num_pairs_counts_multiplicity():
    layout = hf_layout(layer_idx=0, seq_len=4096, block_size=64, num_random_blocks=3, num_heads=1, training=False)
    nb = 64
    assert layout.num_pairs_per_head == int(layout.to_dense().sum()) == 2 * nb + 2 * 7 + (nb - 4) * 8


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(seq_len=1000, block_size=64), "multiple of block_size"),
        (dict(seq_len=0, block_size=64), "multiple of block_size"),
        (dict(seq_len=4096, block_size=0), "block_size must be positive"),
    ],
)
def test_bad_layout_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hf_layout(layer_idx=0, num_random_blocks=3, num_heads=2, training=True, **kwargs)


def test_bad_structure_arguments():
    with pytest.raises(ValueError, match="odd"):
        make_layout(torch.zeros(1, 8, 1, dtype=torch.int32), block_size=16, window=2)
    with pytest.raises(ValueError, match="out of range"):
        make_layout(torch.zeros(1, 8, 1, dtype=torch.int32), block_size=16, global_blocks=(0, 8))
    with pytest.raises(TypeError, match="integer"):
        make_layout(torch.zeros(1, 8, 1), block_size=16)
    with pytest.raises(ValueError, match="unknown layout mode"):
        get_layout("bogus", layer_idx=0, seq_len=512, block_size=64, num_random_blocks=3, num_heads=2)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        hf_random_blocks(layer_idx=0, seq_len=4096, block_size=64, num_random_blocks=3, num_heads=1,
                         max_position_embeddings=1024, training=True)


def test_layout_first_built_under_inference_mode_serves_autograd_later():
    from bigbird_kernels import block_sparse_attention

    kwargs = dict(layer_idx=11, seq_len=16 * 9, block_size=16, num_random_blocks=1, num_heads=2, training=False)
    with torch.inference_mode():
        layout = hf_layout(**kwargs)
        layout.transpose()
    assert hf_layout(**kwargs) is layout
    q = torch.randn(1, 2, 16 * 9, 8, requires_grad=True)
    block_sparse_attention(q, q, q, layout, attention_mask=torch.ones(1, 16 * 9, dtype=torch.bool)).sum().backward()
    assert torch.isfinite(q.grad).all()


# --------------------------------------------------------------------------------------------------
# integer arguments
# --------------------------------------------------------------------------------------------------

_SIZES = dict(seq_len=16 * 8, block_size=16, num_random_blocks=1, num_heads=2, window=3)
BUILDERS = {
    "hf_layout": lambda **kw: hf_layout(layer_idx=1, training=True, **kw),
    "seeded_layout": lambda **kw: seeded_layout(layer_idx=1, **kw),
    "resample_layout": lambda **kw: resample_layout(**kw),
    "get_layout": lambda **kw: get_layout("hf", layer_idx=1, **kw),
}
NOT_INTEGERS = [3.0, 16.5, True, False, "16", np.float64(16.0), np.bool_(True), torch.tensor(16.0),
                torch.tensor(True), torch.tensor([16]), None]


def _ids_bad(x):
    return f"{type(x).__name__}-{x!r}".replace(" ", "")


@pytest.mark.parametrize("value", NOT_INTEGERS, ids=_ids_bad)
@pytest.mark.parametrize("arg", ["seq_len", "block_size", "num_random_blocks", "num_heads", "window"])
@pytest.mark.parametrize("builder", BUILDERS)
def test_builders_refuse_non_integer_sizes_by_name(builder, arg, value):
    kw = dict(_SIZES, **{arg: value})
    with pytest.raises(TypeError, match=f"^{arg} must be an integer, got "):
        BUILDERS[builder](**kw)


@pytest.mark.parametrize("value", NOT_INTEGERS, ids=_ids_bad)
@pytest.mark.parametrize("arg", ["layer_idx", "max_position_embeddings"])
def test_hf_builders_refuse_non_integer_layer_and_max_positions(arg, value):
    kw = {"layer_idx": 1, "max_position_embeddings": 1024, "seq_len": 128, "block_size": 16,
          "num_random_blocks": 1, "num_heads": 2, arg: value}
    for build in (functools.partial(hf_layout, training=True), seeded_layout,
                  functools.partial(hf_random_blocks, training=True)):
        with pytest.raises(TypeError, match=f"^{arg} must be an integer"):
            build(**kw)


@pytest.mark.parametrize("global_blocks, match", [
    ((0, 1.0), r"global_blocks\[1\] must be an integer, got float"),
    ((0, True), r"global_blocks\[1\] must be an integer, got bool"),
    (("0", -1), r"global_blocks\[0\] must be an integer, got str"),
    ((np.float32(0),), r"global_blocks\[0\] must be an integer, got float32"),
    ("01", "global_blocks must be a sequence of integer block ids, got str"),
    (0, "global_blocks must be a sequence of integer block ids, got int"),
    (torch.tensor(0), "global_blocks must be a sequence of integer block ids, got Tensor"),
])
def test_builders_refuse_non_integer_global_blocks_by_name(global_blocks, match):
    for build in BUILDERS.values():
        with pytest.raises(TypeError, match=match):
            build(global_blocks=global_blocks, **_SIZES)
    with pytest.raises(TypeError, match=match):
        make_layout(torch.zeros(1, 8, 1, dtype=torch.int32), block_size=16, global_blocks=global_blocks)


@pytest.mark.parametrize("arg, value", [("block_size", 16.0), ("block_size", True), ("window", 3.0),
                                        ("window", "3"), ("window", np.float64(3))])
def test_make_layout_refuses_non_integer_arguments_by_name(arg, value):
    kw = {"block_size": 16, "window": 3, arg: value}
    with pytest.raises(TypeError, match=f"^{arg} must be an integer"):
        make_layout(torch.zeros(1, 8, 1, dtype=torch.int32), **kw)
    with pytest.raises(TypeError, match="random_blocks must be a torch.Tensor"):
        make_layout([[[0]]], block_size=16)


@pytest.mark.parametrize("builder", BUILDERS)
def test_builders_accept_numpy_and_torch_integer_scalars(builder):
    plain = BUILDERS[builder](global_blocks=(0, -1), **_SIZES)
    for conv in (np.int64, np.int32, torch.tensor):
        kw = {k: conv(v) for k, v in _SIZES.items()}
        layout = BUILDERS[builder](global_blocks=(conv(0), conv(-1)), **kw)
        assert (layout.seq_len, layout.num_heads, layout.window, layout.global_blocks) == (128, 2, 3, (0, 7))
        assert all(type(x) is int for x in (layout.block_size, layout.num_blocks, layout.window, *layout.global_blocks))
        if builder != "resample_layout":
            assert layout is plain  # the same cache entry as plain ints
    layout = BUILDERS[builder](global_blocks=torch.tensor([0, -1]), **_SIZES)
    assert layout.global_blocks == (0, 7)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_heads=0), "num_heads must be positive, got 0"),
    (dict(num_random_blocks=-1), "num_random_blocks must be non-negative, got -1"),
    (dict(window=4), "window must be an odd number"),
    (dict(window=-1), "window must be an odd number"),
])
def test_builders_refuse_out_of_range_sizes_by_name(kwargs, match):
    for build in BUILDERS.values():
        with pytest.raises(ValueError, match=match):
            build(**dict(_SIZES, **kwargs))


# --------------------------------------------------------------------------------------------------
# cached layouts are read-only
# --------------------------------------------------------------------------------------------------

_WRITES = {
    "setitem": lambda t: t.__setitem__((0, 1) if t.dim() > 1 else 1, 5),
    "view-fill": lambda t: t.view(-1)[:3].fill_(1),
    "add_": lambda t: t.add_(1),
    "detach-copy": lambda t: t.detach().copy_(torch.zeros_like(t)),
}
_HF_KW = dict(layer_idx=4, seq_len=16 * 12, block_size=16, num_random_blocks=1, num_heads=2, training=True)


@pytest.mark.parametrize("write", _WRITES)
@pytest.mark.parametrize("name", ["random_blocks", "kv_indices", "kv_num_blocks", "is_global", "global_rows",
                                  "other_rows"])
def test_a_write_into_a_cached_layout_cannot_corrupt_another_caller(name, write):
    from bigbird_kernels import block_sparse_attention

    first = hf_layout(**_HF_KW)
    q, k, v = (torch.randn(1, 2, 16 * 12, 8) for _ in range(3))
    expected = block_sparse_attention(q, k, v, first)
    pristine = {n: getattr(first, n).clone() for n in ("random_blocks", "kv_indices", "kv_num_blocks", "is_global")}
    tensor = getattr(first, name)
    if tensor.dtype == torch.bool:
        tensor = tensor.view(torch.uint8)  # a view shares the version counter
    _WRITES[write](tensor)
    # the writer (and anyone holding the same object) gets an error, never a silently wrong result
    with pytest.raises(ValueError, match=f"layout tensors {name} were modified in place"):
        block_sparse_attention(q, k, v, first)
    # everyone asking the builder again gets a freshly built, intact layout
    second = hf_layout(**_HF_KW)
    assert second is not first and not second.modified_tensors()
    for n, t in pristine.items():
        assert torch.equal(getattr(second, n), t), n
    assert hf_layout(**_HF_KW) is second
    torch.testing.assert_close(block_sparse_attention(q, k, v, second), expected, atol=0, rtol=0)
    with pytest.raises(ValueError, match="modified in place"):
        first.to("meta")


def test_layouts_do_not_share_tensors_with_the_structure_cache():
    a = resample_layout(seq_len=16 * 9, block_size=16, num_random_blocks=1, num_heads=2)
    a.is_global[3] = True
    a.global_rows.zero_()
    b = resample_layout(seq_len=16 * 9, block_size=16, num_random_blocks=1, num_heads=2)
    assert b.is_global.tolist() == [True] + [False] * 7 + [True]
    assert b.global_rows.tolist() == [0, 8] and not b.modified_tensors()


def test_a_write_into_the_cached_transposed_structure_is_undone():
    layout = hf_layout(**_HF_KW)
    t = layout.transpose()
    want = (t.q_offsets.clone(), t.q_indices.clone())
    t.q_indices.zero_()
    fresh = layout.transpose()
    assert fresh is not t and layout.transpose() is fresh
    assert torch.equal(fresh.q_offsets, want[0]) and torch.equal(fresh.q_indices, want[1])


def test_layouts_made_under_inference_mode_work_and_refuse_writes_outside_it():
    from bigbird_kernels import block_sparse_attention

    q = torch.randn(1, 2, 16 * 9, 8)
    with torch.inference_mode():
        layout = resample_layout(seq_len=16 * 9, block_size=16, num_random_blocks=1, num_heads=2)
        out = block_sparse_attention(q, q, q, layout)
    assert torch.isfinite(out).all() and not layout.modified_tensors()
    with pytest.raises(RuntimeError, match="inference tensor"):
        layout.kv_indices[0, 1, 0] = 5  # torch refuses writes into inference tensors outside inference mode


# --------------------------------------------------------------------------------------------------
# FlexAttention: layout.to_block_mask() and layout.flex_score_mod()
# --------------------------------------------------------------------------------------------------


def _flex_layouts():
    return {
        "hf-eval": hf_layout(layer_idx=0, seq_len=16 * 10, block_size=16, num_random_blocks=3, num_heads=3,
                             training=False),  # every random slot reads block 0 again: counts up to 4
        "hf-train": hf_layout(layer_idx=3, seq_len=16 * 12, block_size=16, num_random_blocks=2, num_heads=3,
                              training=True),
        "custom": make_layout(torch.tensor([[[1, 1], [3, 3], [0, 2], [5, 5], [2, 2], [1, 4]]]).expand(3, 6, 2),
                              block_size=8, window=1, global_blocks=(0,)),
    }


@pytest.mark.parametrize("name", ["hf-eval", "hf-train", "custom"])
def test_block_mask_has_the_layout_block_structure(name):
    pytest.importorskip("torch.nn.attention.flex_attention")
    layout = _flex_layouts()[name]
    block_mask = layout.to_block_mask()
    assert block_mask is layout.to_block_mask()  # built once
    assert block_mask.shape == (1, layout.num_heads, layout.seq_len, layout.seq_len)
    dense = block_mask.to_dense()  # (1, H, nb, nb): 1 where a block is computed
    assert torch.equal(dense[0].bool(), layout.to_dense() > 0)
    if name != "hf-train":
        assert (layout.to_dense() > 1).any()  # the case the score_mod exists for


@pytest.mark.parametrize("with_mask", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("name", ["hf-eval", "hf-train", "custom"])
def test_flex_attention_with_block_mask_and_score_mod_equals_the_reference(name, with_mask):
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    from bigbird_kernels.reference import block_sparse_attention_ref

    layout = _flex_layouts()[name]
    B, H, S, D = 2, layout.num_heads, layout.seq_len, 16
    q, k, v = (torch.randn(B, H, S, D) for _ in range(3))
    mask = None
    if with_mask:
        mask = torch.ones(B, S, dtype=torch.bool)
        mask[1, S - layout.block_size - 3:] = False  # a partly padded block and a fully padded one
    out = flex.flex_attention(q, k, v, block_mask=layout.to_block_mask(), score_mod=layout.flex_score_mod(mask))
    ref, _ = block_sparse_attention_ref(q.double(), k.double(), v.double(), layout, mask)
    if mask is not None:  # the reference zeroes rows of padded queries; FlexAttention computes them
        out = out * mask[:, None, :, None]
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=0)


def test_flex_score_mod_refuses_a_mask_of_the_wrong_length():
    layout = _flex_layouts()["hf-eval"]
    with pytest.raises(ValueError, match=r"attention_mask must be a \(B, 160\) bool tensor"):
        layout.flex_score_mod(torch.ones(1, 150, dtype=torch.bool))
