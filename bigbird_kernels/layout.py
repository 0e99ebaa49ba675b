"""Block-sparse layouts: which key blocks each query block of a BigBird attention reads.

A :class:`BigBirdLayout` describes, per head, the key blocks listed for every non-global query block
(``kv_indices``), and flags the global blocks, which read every key block once as query rows and are
listed in every other row as key columns. Nothing of size ``num_blocks x num_blocks`` is stored.

Row ``i`` of a non-global query block lists, in this order:

* the union of the global blocks and the window ``i - window//2 .. i + window//2`` (each block once,
  ascending), then
* its ``r`` random blocks, with multiplicity (a random block equal to a block already listed counts
  twice, as in Hugging Face's BigBird).

For the default structure (window 3, global blocks first and last) the multiset of every row is
exactly Hugging Face's (``BigBirdBlockSparseAttention``'s key concatenation); the order differs from HF's
concatenation order only in where block ``nb-1`` sits, which changes rounding, not the result.

Builders (all return layouts on the requested device, cached where the mode allows it):

* :func:`hf_layout` - bit-exact Hugging Face random blocks: zeros in eval, NumPy's legacy RNG seeded
  by the layer index in training, with HF's choice of generator by padded length.
* :func:`seeded_layout` - HF's training layout used in eval as well (Google's original behaviour).
* :func:`resample_layout` - fresh random blocks drawn on the device from a ``torch.Generator``.
* :func:`make_layout` - any random blocks ``(H, num_blocks, r)`` the caller supplies.

Layouts are read-only: cached ones are shared by every caller with the same arguments. Torch has no
read-only tensors, so a layout records its tensors' version counters when it is built; the op refuses
a layout whose tensors were since written in place (``layout.kv_indices[...] = ...``, ``add_``, ...),
and the builders replace such a cached layout with a freshly built one. Writes that bypass torch's
version counter (through ``.numpy()``, ``.data`` or DLPack) are not seen.
"""

from __future__ import annotations

import functools
import operator
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = [
    "BigBirdLayout",
    "LayoutTooShortError",
    "TransposedLayout",
    "make_layout",
    "hf_layout",
    "seeded_layout",
    "resample_layout",
    "get_layout",
    "hf_random_blocks",
]

LAYOUT_MODES = ("hf", "seeded", "resample")


class LayoutTooShortError(ValueError):
    """Hugging Face's generator cannot place the random blocks in so few blocks (HF fails too)."""


@dataclass(frozen=True)
class TransposedLayout:
    """For every key block, the non-global query blocks that read it, in CSR form per head.

    ``q_offsets (H, num_blocks + 1)`` int32 and ``q_indices (H, nnz)`` int32: the query blocks reading
    key block ``j`` of head ``h`` are ``q_indices[h, q_offsets[h, j]:q_offsets[h, j + 1]]``, ascending,
    listed with multiplicity. Global query blocks read every key block once and are not listed.
    """

    q_offsets: torch.Tensor
    q_indices: torch.Tensor
    _versions: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_versions", _versions_of(self, _TRANSPOSED_TENSORS))

    def modified_tensors(self) -> list[str]:
        """Names of the tensors written in place since this structure was built (empty: intact)."""
        return _modified(self, _TRANSPOSED_TENSORS)


@dataclass(frozen=True, eq=False)
class BigBirdLayout:
    """Which key blocks each query block reads, per head.

    Read-only: the op refuses a layout whose tensors were written in place after it was built
    (:meth:`check_unmodified`); edit copies of the random blocks and call :func:`make_layout` instead.

    The same structure for PyTorch's FlexAttention: :meth:`to_block_mask` and :meth:`flex_score_mod`.

    Attributes:
        block_size: tokens per block.
        num_blocks: ``S // block_size``.
        num_heads: ``H``; the layout applies to every batch element.
        global_blocks: ascending block ids that are global as query rows and as key columns.
        window: width of the sliding window in blocks (odd).
        mode: how the random blocks were made (``hf``, ``seeded``, ``resample`` or ``custom``).
        random_blocks: ``(H, num_blocks, r)`` int32, the random key blocks of each query block
            (rows of global blocks are 0 and unused).
        kv_indices: ``(H, num_blocks, width)`` int32, key blocks of each non-global query block;
            entries past ``kv_num_blocks`` (and rows of global blocks) are 0 and unused.
        kv_num_blocks: ``(H, num_blocks)`` int32, listed key blocks per row; 0 for global rows.
        is_global: ``(num_blocks,)`` bool, global query/key blocks.
        nnz_per_head: total listed (row, key block) pairs of non-global rows, per head (host int).
        global_rows: ``(G,)`` int64 ids of the global blocks, on the layout's device.
        other_rows: ``(num_blocks - G,)`` int64 ids of the non-global blocks, on the layout's device.
    """

    block_size: int
    num_blocks: int
    num_heads: int
    global_blocks: tuple[int, ...]
    window: int
    mode: str
    random_blocks: torch.Tensor
    kv_indices: torch.Tensor
    kv_num_blocks: torch.Tensor
    is_global: torch.Tensor
    nnz_per_head: int
    global_rows: torch.Tensor
    other_rows: torch.Tensor
    _cache: dict = field(default_factory=dict, repr=False, compare=False)
    _versions: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_versions", _versions_of(self, _LAYOUT_TENSORS))

    def modified_tensors(self) -> list[str]:
        """Names of this layout's tensors written in place since it was built (empty: intact)."""
        return _modified(self, _LAYOUT_TENSORS)

    def check_unmodified(self) -> None:
        """Raise ValueError when a tensor of this layout was written in place after it was built."""
        modified = self.modified_tensors()
        if modified:
            raise ValueError(
                f"layout tensors {', '.join(modified)} were modified in place after the layout was built; "
                "layouts are read-only (builders share cached ones between callers): get a fresh one from its "
                "builder, or pass edited copies of the random blocks to make_layout"
            )

    @property
    def seq_len(self) -> int:
        return self.block_size * self.num_blocks

    @property
    def num_random_blocks(self) -> int:
        return self.random_blocks.shape[-1]

    @property
    def device(self) -> torch.device:
        return self.kv_indices.device

    @property
    def width(self) -> int:
        return self.kv_indices.shape[-1]

    @property
    def num_pairs_per_head(self) -> int:
        """Attended (query block, key block) pairs per head, with multiplicity (for FLOP counts)."""
        return self.nnz_per_head + len(self.global_blocks) * self.num_blocks

    def to(self, device) -> BigBirdLayout:
        """The same layout with its tensors on ``device``."""
        device = torch.device(device)
        if device == self.device:
            return self
        self.check_unmodified()
        return BigBirdLayout(
            block_size=self.block_size,
            num_blocks=self.num_blocks,
            num_heads=self.num_heads,
            global_blocks=self.global_blocks,
            window=self.window,
            mode=self.mode,
            random_blocks=self.random_blocks.to(device),
            kv_indices=self.kv_indices.to(device),
            kv_num_blocks=self.kv_num_blocks.to(device),
            is_global=self.is_global.to(device),
            nnz_per_head=self.nnz_per_head,
            global_rows=self.global_rows.to(device),
            other_rows=self.other_rows.to(device),
        )

    def to_dense(self) -> torch.Tensor:
        """``(H, num_blocks, num_blocks)`` int32: how often query block i lists key block j (oracles only)."""
        H, nb, W = self.kv_indices.shape
        slot = torch.arange(W, device=self.device)
        valid = (slot[None, None, :] < self.kv_num_blocks[..., None]).to(torch.int32)  # (H, nb, W)
        counts = torch.zeros(H, nb, nb, dtype=torch.int32, device=self.device)
        counts.scatter_add_(2, self.kv_indices.long(), valid)
        return torch.where(self.is_global[None, :, None], torch.ones_like(counts), counts)  # no host sync

    def dense_log_counts(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(H, S, S)`` additive bias ``log(count)`` per token pair, ``-inf`` outside the layout (oracles,
        dense baselines and attention probabilities only: ``S x S``)."""
        bs = self.block_size
        return torch.log(self.to_dense().to(dtype)).repeat_interleave(bs, 1).repeat_interleave(bs, 2)

    def to_block_mask(self):
        """This layout as a FlexAttention ``BlockMask`` (built once and cached on the layout).

        Every query block lists the distinct key blocks its row reads (every key block for global
        rows), all as full blocks, so compiled FlexAttention kernels compute exactly these blocks; its
        ``mask_mod`` says the same per token (FlexAttention's eager path applies it everywhere). The
        block mask cannot count: blocks a row lists more than once need :meth:`flex_score_mod` too::

            from torch.nn.attention.flex_attention import flex_attention
            out = flex_attention(q, k, v, block_mask=layout.to_block_mask(), score_mod=layout.flex_score_mod())

        equals :func:`~bigbird_kernels.block_sparse_attention` for ``(B, H, S, D)`` inputs (``H`` =
        ``num_heads``; ``enable_gqa=True`` for k, v with fewer heads). Shapes: batch 1 (broadcast),
        ``num_heads`` heads, ``seq_len x seq_len`` tokens; its tables are ``(H, nb, nb)`` (quadratic
        in the number of blocks, like every ``BlockMask``).
        """
        return self._flex_structure()[0]

    def flex_score_mod(self, attention_mask: torch.Tensor | None = None):
        """FlexAttention ``score_mod`` adding ``log(count)`` of each (query block, key block) pair.

        ``count`` is how often the row lists the key block (``1`` for single and global blocks, so
        only duplicated blocks change), the same bias as :meth:`dense_log_counts`. With
        ``attention_mask (B, S)`` bool (True = real token) padded keys score ``-inf`` too; a row with
        no real key then has no finite score (FlexAttention returns 0 there). Use with
        :meth:`to_block_mask`.
        """
        bias = self._flex_structure()[1]  # (H, nb, nb) fp32
        bs = self.block_size
        if attention_mask is None:
            def score_mod(score, b, h, q_idx, kv_idx):
                return score + bias[h, q_idx // bs, kv_idx // bs]
        else:
            if attention_mask.dtype != torch.bool or attention_mask.shape[-1] != self.seq_len:
                raise ValueError(f"attention_mask must be a (B, {self.seq_len}) bool tensor, got "
                                 f"{tuple(attention_mask.shape)} {attention_mask.dtype}")
            key_ok = attention_mask

            def score_mod(score, b, h, q_idx, kv_idx):
                s = score + bias[h, q_idx // bs, kv_idx // bs]
                return torch.where(key_ok[b, kv_idx], s, float("-inf"))
        return score_mod

    def _flex_structure(self):
        """(BlockMask, log-count bias ``(H, nb, nb)`` fp32), built once (rebuilt if the layout was
        written in place, which the op refuses anyway)."""
        hit = self._cache.get("flex")
        if hit is not None and not self.modified_tensors():
            return hit
        from torch.nn.attention.flex_attention import BlockMask  # lazy: FlexAttention users only

        nb, bs = self.num_blocks, self.block_size
        with torch.inference_mode(False):
            counts = self.to_dense()  # (H, nb, nb), global rows all 1
            present = counts > 0
            num = present.sum(-1, dtype=torch.int32)[None].contiguous()  # (1, H, nb)
            # listed key blocks first, ascending: a stable sort of the 0/1 flags
            idx = torch.sort(present.to(torch.int8), dim=-1, descending=True, stable=True).indices
            idx = idx.to(torch.int32)[None].contiguous()  # (1, H, nb, nb)

            def listed(b, h, q_idx, kv_idx):
                return present[h, q_idx // bs, kv_idx // bs]

            block_mask = BlockMask.from_kv_blocks(
                torch.zeros_like(num), idx, num, idx,  # no partial blocks: every listed block is full
                BLOCK_SIZE=bs, mask_mod=listed, seq_lengths=(self.seq_len, self.seq_len),
            )
            bias = torch.log(counts.to(torch.float32)).masked_fill(~present, 0.0)  # unlisted: skipped
        self._cache["flex"] = (block_mask, bias)
        return block_mask, bias

    def transpose(self) -> TransposedLayout:
        """The transposed structure used by backward kernels; built on the device once and cached
        (rebuilt if a caller wrote into the cached one)."""
        t = self._cache.get("transposed")
        if t is None or t.modified_tensors():
            with torch.inference_mode(False):
                t = self._cache["transposed"] = _transpose(self)
        return t


_LAYOUT_TENSORS = ("random_blocks", "kv_indices", "kv_num_blocks", "is_global", "global_rows", "other_rows")
_TRANSPOSED_TENSORS = ("q_offsets", "q_indices")


def _versions_of(obj, names) -> tuple[tuple[torch.Tensor, int | None], ...]:
    """``obj``'s tensors with their version counters (bumped by every in-place write, through any view).

    Tensors made under ``torch.inference_mode`` have no counter (None): outside inference mode torch
    itself refuses writes into them. Layouts made inside a ``torch.compile`` d graph live only there
    and record nothing.
    """
    if torch.compiler.is_compiling():
        return ()
    return tuple((t, None if t.is_inference() else t._version) for t in (getattr(obj, n) for n in names))


def _modified(obj, names) -> list[str]:
    return [n for n, (t, v) in zip(names, obj._versions) if v is not None and t._version != v]


# --------------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------------


def check_int(name: str, value, *, minimum: int | None = None) -> int:
    """``value`` as a Python int.

    Python ints and NumPy / 0-dim torch integer scalars pass; bools, floats (even ``3.0``), strings
    and anything else raise TypeError naming ``name``; a value below ``minimum`` raises ValueError.
    """
    out = None
    if type(value) is int:  # the common case first (the builders run on every model forward)
        out = value
    elif not isinstance(value, (bool, np.bool_)) and not (
        isinstance(value, torch.Tensor) and (value.dim() != 0 or value.dtype == torch.bool)
    ):
        try:
            out = operator.index(value)
        except TypeError:
            pass
    if out is None:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}: {value!r}")
    if minimum is not None and out < minimum:
        bound = {0: "non-negative", 1: "positive"}.get(minimum, f">= {minimum}")
        raise ValueError(f"{name} must be {bound}, got {out}")
    return out


def check_window(window) -> int:
    """The sliding-window width as a Python int: odd and >= 1."""
    window = check_int("window", window)
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd number of blocks >= 1, got {window}")
    return window


def global_block_ids(global_blocks) -> tuple[int, ...]:
    """``global_blocks`` as a tuple of Python ints (negative ids allowed), refusing non-integers."""
    if type(global_blocks) is tuple and all(type(g) is int for g in global_blocks):
        return global_blocks  # the common case first
    if isinstance(global_blocks, (str, bytes)) or (
        isinstance(global_blocks, torch.Tensor) and global_blocks.dim() != 1
    ):
        items = None
    else:
        try:
            items = list(global_blocks)
        except TypeError:
            items = None
    if items is None:
        raise TypeError(f"global_blocks must be a sequence of integer block ids, got {type(global_blocks).__name__}: "
                        f"{global_blocks!r}")
    return tuple(g if type(g) is int else check_int(f"global_blocks[{i}]", g) for i, g in enumerate(items))


# --------------------------------------------------------------------------------------------------
# Structure shared by every layout of one (num_blocks, window, global blocks, r)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Structure:
    static_blocks: torch.Tensor  # (nb, Ws) int64, union of globals and window per row, 0-padded
    static_count: torch.Tensor  # (nb,) int64, 0 for global rows
    is_global: torch.Tensor  # (nb,) bool
    global_blocks: tuple[int, ...]
    flat_valid: torch.Tensor  # (nnz,) int64 positions of valid entries in a flattened (nb, W) row table
    nnz: int
    global_rows: torch.Tensor  # (G,) int64
    other_rows: torch.Tensor  # (nb - G,) int64


def normalize_global_blocks(num_blocks: int, global_blocks) -> tuple[int, ...]:
    """Global block ids as an ascending tuple; negative ids count from the end."""
    out = set()
    for g in global_block_ids(global_blocks):
        gg = g + num_blocks if g < 0 else g
        if not 0 <= gg < num_blocks:
            raise ValueError(f"global block {g} is out of range for {num_blocks} blocks")
        out.add(gg)
    return tuple(sorted(out))


def _outside_inference_mode(fn):
    """Cached layout tensors must be usable by autograd later, even if first built under inference_mode."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.inference_mode(False):
            return fn(*args, **kwargs)

    return wrapper


@functools.lru_cache(maxsize=256)
@_outside_inference_mode
def _structure(num_blocks: int, window: int, global_blocks: tuple[int, ...], r: int, device: torch.device) -> _Structure:
    half = window // 2
    gset = set(global_blocks)
    rows = []
    for i in range(num_blocks):
        if i in gset:
            rows.append([])
            continue
        lo, hi = max(0, i - half), min(num_blocks - 1, i + half)
        rows.append(sorted(gset.union(range(lo, hi + 1))))
    Ws = max((len(x) for x in rows), default=0)
    static = torch.zeros(num_blocks, max(Ws, 1), dtype=torch.long)
    count = torch.zeros(num_blocks, dtype=torch.long)
    for i, row in enumerate(rows):
        static[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        count[i] = len(row)
    is_global = torch.zeros(num_blocks, dtype=torch.bool)
    is_global[list(global_blocks)] = True
    W = Ws + r
    total = count + torch.where(is_global, 0, r)
    flat = [i * W + s for i in range(num_blocks) for s in range(int(total[i]))]
    return _Structure(
        static_blocks=static.to(device),
        static_count=count.to(device),
        is_global=is_global.to(device),
        global_blocks=global_blocks,
        flat_valid=torch.tensor(flat, dtype=torch.long, device=device),
        nnz=len(flat),
        global_rows=torch.tensor(global_blocks, dtype=torch.long, device=device),
        other_rows=torch.tensor([i for i in range(num_blocks) if i not in gset], dtype=torch.long, device=device),
    )


def make_layout(
    random_blocks: torch.Tensor,
    *,
    block_size: int,
    window: int = 3,
    global_blocks=(0, -1),
    mode: str = "custom",
) -> BigBirdLayout:
    """Assemble a layout from random key blocks.

    Args:
        random_blocks: ``(H, num_blocks, r)`` integer tensor of key block ids in ``[0, num_blocks)``
            (rows of global blocks are ignored); ``r`` may be 0. Duplicates are kept.
        block_size: tokens per block.
        window: sliding-window width in blocks, odd and >= 1.
        global_blocks: block ids global as query rows and key columns (negative ids from the end).
    """
    if not isinstance(random_blocks, torch.Tensor):
        raise TypeError(f"random_blocks must be a torch.Tensor (H, num_blocks, r), got {type(random_blocks).__name__}")
    if random_blocks.dim() != 3:
        raise ValueError(f"random_blocks must be (H, num_blocks, r), got shape {tuple(random_blocks.shape)}")
    if random_blocks.dtype.is_floating_point or random_blocks.dtype == torch.bool:
        raise TypeError(f"random_blocks must be an integer tensor, got {random_blocks.dtype}")
    window = check_window(window)
    block_size = check_int("block_size", block_size, minimum=1)
    H, nb, r = random_blocks.shape
    if H < 1 or nb < 1:
        raise ValueError(f"a layout needs at least one head and one block, got H={H}, num_blocks={nb}")
    if random_blocks.device.type == "cpu" and random_blocks.numel():
        lo, hi = int(random_blocks.min()), int(random_blocks.max())
        if lo < 0 or hi >= nb:
            raise ValueError(f"random block ids must lie in [0, {nb}), found values in [{lo}, {hi}]")
    gb = normalize_global_blocks(nb, global_blocks)
    device = random_blocks.device
    st = _structure(nb, window, gb, r, device)
    rand = random_blocks.to(torch.int64)
    rand = torch.where(st.is_global[None, :, None], torch.zeros_like(rand), rand)
    Ws = st.static_blocks.shape[1]
    W = Ws + r
    kv = torch.zeros(H, nb, W, dtype=torch.int64, device=device)
    kv[:, :, :Ws] = st.static_blocks
    if r:
        # random slots go right after each row's static blocks: rows stay compact
        pos = st.static_count[:, None] + torch.arange(r, device=device)[None, :]  # (nb, r)
        kv.scatter_(2, pos.expand(H, nb, r), rand)
    num = (st.static_count + r).masked_fill(st.is_global, 0)
    kv = kv.masked_fill(st.is_global[None, :, None], 0)
    return BigBirdLayout(
        block_size=block_size,
        num_blocks=nb,
        num_heads=H,
        global_blocks=gb,
        window=window,
        mode=mode,
        random_blocks=rand.to(torch.int32),
        kv_indices=kv.to(torch.int32),
        kv_num_blocks=num.to(torch.int32).expand(H, nb).contiguous(),
        # copies: the structure cache stays private, whatever a caller writes into the layout
        is_global=st.is_global.clone(),
        nnz_per_head=st.nnz,
        global_rows=st.global_rows.clone(),
        other_rows=st.other_rows.clone(),
    )


def _transpose(layout: BigBirdLayout) -> TransposedLayout:
    """CSR of the non-global rows by key block, on the layout's device, without host synchronisation."""
    H, nb, W = layout.kv_indices.shape
    st = _structure(nb, layout.window, layout.global_blocks, layout.num_random_blocks, layout.device)
    cols = layout.kv_indices.reshape(H, nb * W)[:, st.flat_valid].long()  # (H, nnz)
    rows = (st.flat_valid // W).expand(H, -1)  # (H, nnz)
    # sort by (column, row): stable sort on the combined key keeps ascending rows within a column
    order = torch.argsort(cols * nb + rows, dim=1, stable=True)
    q_indices = torch.gather(rows, 1, order)
    counts = torch.zeros(H, nb, dtype=torch.int64, device=layout.device)
    counts.scatter_add_(1, cols, torch.ones_like(cols))
    q_offsets = torch.zeros(H, nb + 1, dtype=torch.int64, device=layout.device)
    q_offsets[:, 1:] = torch.cumsum(counts, dim=1)
    return TransposedLayout(q_offsets=q_offsets.to(torch.int32), q_indices=q_indices.to(torch.int32).contiguous())


# --------------------------------------------------------------------------------------------------
# Hugging Face's random blocks (``_bigbird_block_rand_mask`` and its variants), bit-exact
# --------------------------------------------------------------------------------------------------


def _old_plan_table(num_blocks_max: int, block_size: int, r: int, rng: np.random.RandomState, last_idx: int = 1024):
    """HF ``_bigbird_block_rand_mask`` in training mode: ``(NB - 2, r)`` for the max length's NB blocks."""
    nb = num_blocks_max
    table = np.zeros((nb - 2, r), dtype=np.int32)
    mid = np.arange(1, nb - 1, dtype=np.int32)
    last = nb - 1
    if last_idx > 2 * block_size:
        last = last_idx // block_size - 1
    for i in range(1, nb - 1):
        start, end = i - 2, i
        if i == 1:
            cand = mid[2:last]
        elif i == 2:
            cand = mid[3:last]
        elif i in (nb - 3, nb - 2):
            cand = mid[:last]
        elif start > last:
            cand = mid[:last]
        elif end + 1 == last:
            cand = mid[:start]
        else:
            cand = np.concatenate((mid[:start], mid[end + 1 : last]))
        # numpy assignment semantics on purpose: a short draw broadcasts (or fails) exactly as in HF
        table[i - 1, :] = rng.permutation(cand)[:r]
    return table


def _plan(seq_len: int, block_size: int, r: int):
    """HF ``_get_rand_attn_plan``: (plan_from_length, plan_num_rand_blocks)."""
    nb = seq_len // block_size
    if 2 * r + 5 < nb:
        return [(2 * r + 5) * block_size, seq_len], [r, 0]
    if r + 5 < nb:
        return [(r + 5) * block_size, seq_len], [r // 2, r - r // 2]
    return [seq_len], [r]


def _single_row(block_id: int, start: int, end: int, r: int, rng: np.random.RandomState) -> np.ndarray:
    """HF ``_get_single_block_row_attention`` with window 1/1 and one global block each side."""
    perm = rng.permutation(np.arange(start, end, dtype=np.int32))
    illegal = {block_id - 1, block_id, block_id + 1, 0, end - 1}
    if block_id == 1:
        illegal.add(end - 2)
    if block_id == end - 2:
        illegal.add(1)
    picked = []
    for x in perm:
        if x not in illegal:
            picked.append(x)
        if len(picked) == r:
            break
    return np.array(picked, dtype=np.int32)


def _plan_tables(seq_len: int, block_size: int, r: int, num_heads: int, rng: np.random.RandomState):
    """HF ``_bigbird_block_rand_mask_with_head`` in training mode: list of H arrays ``(nb - 2, r)``."""
    plan_len, plan_r = _plan(seq_len, block_size, r)
    nb = seq_len // block_size
    plan_blocks = np.array(plan_len) // block_size
    max_plan = plan_len.index(seq_len)
    width = int(np.sum(plan_r[: max_plan + 1]))
    tables = [np.zeros((nb, width), dtype=np.int32) for _ in range(num_heads)]
    for p in range(max_plan + 1):
        cnt = 0
        if p > 0:
            if plan_r[p] > 0:
                cnt = int(np.sum(plan_r[:p]))
                cur = int(np.sum(plan_r[: p + 1]))
                for row in range(1, plan_blocks[p - 1]):
                    for h in range(num_heads):
                        tables[h][row, cnt:cur] = _single_row(row, plan_blocks[p - 1], plan_blocks[p], plan_r[p], rng)
            for q in range(p):
                if plan_r[q] == 0:
                    continue
                for row in range(plan_blocks[p - 1], plan_blocks[p]):
                    cnt, start = 0, 0
                    if q > 0:
                        cnt, start = int(np.sum(plan_r[:q])), plan_blocks[q - 1]
                    cur = int(np.sum(plan_r[: q + 1]))
                    for h in range(num_heads):
                        tables[h][row, cnt:cur] = _single_row(row, start, plan_blocks[q], plan_r[q], rng)
        if plan_r[p] == 0:
            continue
        cur = int(np.sum(plan_r[: p + 1]))
        row0, start = 1, 0
        if p > 0:
            cnt = int(np.sum(plan_r[:p]))
            row0 = start = plan_blocks[p - 1]
        for row in range(row0, plan_blocks[p]):
            for h in range(num_heads):
                tables[h][row, cnt:cur] = _single_row(row, start, plan_blocks[p], plan_r[p], rng)
    return [t[1 : nb - 1] for t in tables]


def hf_random_blocks(
    *,
    layer_idx: int,
    seq_len: int,
    block_size: int,
    num_random_blocks: int,
    num_heads: int,
    max_position_embeddings: int = 4096,
    training: bool,
) -> np.ndarray:
    """Hugging Face's ``rand_attn`` for one layer: ``(H, nb - 2, r)`` int32, bit-exact.

    In eval every index is 0 (HF since PR #23056). In training NumPy's legacy MT19937 seeded with the
    layer index draws the old-plan table (padded length 1024, 3072 or 4096, generated for
    ``max_position_embeddings`` and truncated) or the plan tables (any other length).
    """
    seq_len, block_size, r, num_heads = _check_sizes(seq_len, block_size, num_random_blocks, num_heads)
    layer_idx, max_position_embeddings = _check_hf_args(layer_idx, max_position_embeddings)
    nb = seq_len // block_size
    if nb < 3:
        raise LayoutTooShortError(f"Hugging Face's random layout needs at least 3 blocks, got {nb}")
    if not training or r == 0:
        return np.zeros((num_heads, nb - 2, r), dtype=np.int32)
    rng = np.random.RandomState(layer_idx)
    try:
        return _draw_hf_tables(seq_len, block_size, r, num_heads, max_position_embeddings, rng)
    except ValueError as e:
        if "max_position_embeddings" in str(e):
            raise
        raise LayoutTooShortError(
            f"Hugging Face's random layout cannot be drawn for seq_len={seq_len}, block_size={block_size}, "
            f"r={r} (too few blocks: numpy says {e}); transformers fails the same way. Use the 'resample' "
            "mode or fewer random blocks."
        ) from e


def _draw_hf_tables(seq_len, block_size, r, num_heads, max_position_embeddings, rng) -> np.ndarray:
    nb = seq_len // block_size
    if seq_len in (1024, 3072, 4096):
        nb_max = max_position_embeddings // block_size
        if nb_max < nb:
            raise ValueError(
                f"seq_len {seq_len} exceeds max_position_embeddings {max_position_embeddings}: "
                "Hugging Face's old-plan layout is generated for the maximum length"
            )
        tables = [_old_plan_table(nb_max, block_size, r, rng)[: nb - 2] for _ in range(num_heads)]
    else:
        tables = _plan_tables(seq_len, block_size, r, num_heads, rng)
    return np.stack(tables, axis=0).astype(np.int32)


def _check_sizes(seq_len, block_size, num_random_blocks, num_heads) -> tuple[int, int, int, int]:
    """The builders' size arguments as Python ints (TypeError / ValueError naming a bad one)."""
    block_size = check_int("block_size", block_size, minimum=1)
    seq_len = check_int("seq_len", seq_len)
    if seq_len < block_size or seq_len % block_size:
        raise ValueError(f"sequence length {seq_len} must be a positive multiple of block_size {block_size}")
    r = check_int("num_random_blocks", num_random_blocks, minimum=0)
    return seq_len, block_size, r, check_int("num_heads", num_heads, minimum=1)


def _check_hf_args(layer_idx, max_position_embeddings) -> tuple[int, int]:
    """Hugging Face's generator arguments as Python ints (TypeError / ValueError naming a bad one)."""
    return (check_int("layer_idx", layer_idx, minimum=0),
            check_int("max_position_embeddings", max_position_embeddings, minimum=1))


def _hf_based_layout(mode, *, layer_idx, seq_len, block_size, num_random_blocks, num_heads,
                     max_position_embeddings, training, window, global_blocks, device) -> BigBirdLayout:
    rand = hf_random_blocks(
        layer_idx=layer_idx,
        seq_len=seq_len,
        block_size=block_size,
        num_random_blocks=num_random_blocks,
        num_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        training=training,
    )
    nb = seq_len // block_size
    full = np.zeros((num_heads, nb, num_random_blocks), dtype=np.int64)
    full[:, 1 : nb - 1] = rand  # (H, nb, r): HF rows are query blocks 1..nb-2
    return make_layout(
        torch.from_numpy(full).to(device),
        block_size=block_size,
        window=window,
        global_blocks=global_blocks,
        mode=mode,
    )


_HF_CACHE: OrderedDict = OrderedDict()
_HF_CACHE_SIZE = 512
_HF_CACHE_LOCK = threading.Lock()


def _cached_hf(*key) -> BigBirdLayout:
    """The ``hf``/``seeded`` layout for ``key`` (:func:`_build_hf`'s arguments), built once.

    Keeps the 512 most recently used; a cached layout a caller wrote into is replaced by a fresh one.
    """
    with _HF_CACHE_LOCK:
        layout = _HF_CACHE.get(key)
        if layout is not None and not layout.modified_tensors():
            _HF_CACHE.move_to_end(key)
            return layout
    layout = _build_hf(*key)
    with _HF_CACHE_LOCK:
        _HF_CACHE[key] = layout
        _HF_CACHE.move_to_end(key)
        while len(_HF_CACHE) > _HF_CACHE_SIZE:
            _HF_CACHE.popitem(last=False)
    return layout


@_outside_inference_mode
def _build_hf(mode, layer_idx, seq_len, block_size, r, num_heads, max_pos, training, window, global_blocks, device):
    return _hf_based_layout(
        mode,
        layer_idx=layer_idx,
        seq_len=seq_len,
        block_size=block_size,
        num_random_blocks=r,
        num_heads=num_heads,
        max_position_embeddings=max_pos,
        training=training,
        window=window,
        global_blocks=global_blocks,
        device=device,
    )


def hf_layout(
    *,
    layer_idx: int,
    seq_len: int,
    block_size: int,
    num_random_blocks: int,
    num_heads: int,
    max_position_embeddings: int = 4096,
    training: bool,
    window: int = 3,
    global_blocks=(0, -1),
    device=None,
) -> BigBirdLayout:
    """The layout Hugging Face's BigBird uses for one layer (cached per arguments and device).

    ``seq_len`` is the padded length. In eval the random blocks are all 0 (every random slot reads
    block 0 again, with multiplicity), independent of ``layer_idx``.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    seq_len, block_size, r, num_heads = _check_sizes(seq_len, block_size, num_random_blocks, num_heads)
    layer_idx, max_position_embeddings = _check_hf_args(layer_idx, max_position_embeddings)
    gb = normalize_global_blocks(seq_len // block_size, global_blocks)
    return _cached_hf(
        "hf",
        layer_idx if training else 0,
        seq_len,
        block_size,
        r,
        num_heads,
        max_position_embeddings,
        bool(training),
        check_window(window),
        gb,
        device,
    )


def seeded_layout(
    *,
    layer_idx: int,
    seq_len: int,
    block_size: int,
    num_random_blocks: int,
    num_heads: int,
    max_position_embeddings: int = 4096,
    window: int = 3,
    global_blocks=(0, -1),
    device=None,
) -> BigBirdLayout:
    """HF's training-mode layout, used in training and eval alike (Google's original implementation)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    seq_len, block_size, r, num_heads = _check_sizes(seq_len, block_size, num_random_blocks, num_heads)
    layer_idx, max_position_embeddings = _check_hf_args(layer_idx, max_position_embeddings)
    gb = normalize_global_blocks(seq_len // block_size, global_blocks)
    return _cached_hf(
        "seeded", layer_idx, seq_len, block_size, r, num_heads, max_position_embeddings,
        True, check_window(window), gb, device,
    )


def resample_layout(
    *,
    seq_len: int,
    block_size: int,
    num_random_blocks: int,
    num_heads: int,
    window: int = 3,
    global_blocks=(0, -1),
    generator: torch.Generator | None = None,
    device=None,
) -> BigBirdLayout:
    """Fresh random blocks drawn on the device, without host synchronisation.

    Each non-global row draws ``min(r, n_free)`` distinct blocks uniformly from the blocks it does not
    already list (``n_free`` = blocks outside its window and the global blocks); the remaining slots,
    when ``n_free < r``, repeat the row's own block. Draws come from ``generator`` (or the device's
    default generator), so reseeding it replays the same layout.
    """
    device = torch.device(device) if device is not None else (generator.device if generator is not None else torch.device("cpu"))
    seq_len, block_size, r, num_heads = _check_sizes(seq_len, block_size, num_random_blocks, num_heads)
    window = check_window(window)
    nb = seq_len // block_size
    gb = normalize_global_blocks(nb, global_blocks)
    st = _structure(nb, window, gb, 0, device)
    rand = torch.zeros(num_heads, nb, r, dtype=torch.int64, device=device)
    if r:
        rand = _draw_excluding(st.static_blocks, st.static_count, nb, num_heads, r, generator, device)
    return make_layout(rand, block_size=block_size, window=window, global_blocks=gb, mode="resample")


def _draw_excluding(static_blocks, static_count, nb, H, r, generator, device):
    """``(H, nb, r)`` distinct draws per row from ``[0, nb)`` minus the row's static blocks."""
    Ws = static_blocks.shape[1]
    slot = torch.arange(Ws, device=device)
    big = torch.full_like(static_blocks, nb)  # sentinel past every real block
    excluded = torch.where(slot[None, :] < static_count[:, None], static_blocks, big)  # (nb, Ws)
    excluded = excluded.expand(H, nb, Ws)
    n_free = (nb - static_count).expand(H, nb)  # (H, nb)
    u = torch.rand(H, nb, r, device=device, generator=generator)
    picks = []
    for j in range(r):
        avail = (n_free - j).clamp(min=1)
        k = torch.minimum((u[..., j] * avail).long(), avail - 1)  # index into the free blocks
        ex_sorted, _ = torch.sort(excluded, dim=-1)
        # the k-th block not excluded: walk the sorted excluded list, stepping over each one <= k
        y = k
        for e in ex_sorted.unbind(-1):
            y = y + (e <= y).long()
        own = torch.arange(nb, device=device).expand(H, nb)
        y = torch.where(n_free - j >= 1, y, own)
        picks.append(y)
        excluded = torch.cat([excluded, y[..., None]], dim=-1)
    return torch.stack(picks, dim=-1)


def get_layout(
    mode: str,
    *,
    layer_idx: int,
    seq_len: int,
    block_size: int,
    num_random_blocks: int,
    num_heads: int,
    max_position_embeddings: int = 4096,
    training: bool = False,
    window: int = 3,
    global_blocks=(0, -1),
    generator: torch.Generator | None = None,
    device=None,
) -> BigBirdLayout:
    """The layout of one layer in ``mode`` (``hf``, ``seeded`` or ``resample``)."""
    if mode == "hf":
        return hf_layout(layer_idx=layer_idx, seq_len=seq_len, block_size=block_size,
                         num_random_blocks=num_random_blocks, num_heads=num_heads,
                         max_position_embeddings=max_position_embeddings, training=training,
                         window=window, global_blocks=global_blocks, device=device)
    if mode == "seeded":
        return seeded_layout(layer_idx=layer_idx, seq_len=seq_len, block_size=block_size,
                             num_random_blocks=num_random_blocks, num_heads=num_heads,
                             max_position_embeddings=max_position_embeddings, window=window,
                             global_blocks=global_blocks, device=device)
    if mode == "resample":
        return resample_layout(seq_len=seq_len, block_size=block_size, num_random_blocks=num_random_blocks,
                               num_heads=num_heads, window=window, global_blocks=global_blocks,
                               generator=generator, device=device)
    raise ValueError(f"unknown layout mode {mode!r}; expected one of {LAYOUT_MODES}")
