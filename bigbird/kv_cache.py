"""The key/value cache of a BigBird decoder: our tuple format, and ``transformers``' cache objects.

**Our format** (what a forward returns as ``past_key_values`` unless it was given a ``transformers``
cache): a tuple with one entry per layer; each entry is ``(k, v)`` or, for a model with
cross-attention once it has seen ``encoder_hidden_states``, ``(k, v, cross_k, cross_v)``. ``k`` and
``v`` are ``(B, H, T, head_dim)`` (the projected keys and values of the ``T`` tokens seen so far);
``cross_k`` and ``cross_v`` are ``(B, H, S_enc, head_dim)`` (the projected encoder states, computed
once and reused). This is ``transformers``' legacy tuple layout.

**transformers' caches** are accepted without importing ``transformers``: a ``DynamicCache`` (or any
object with ``layers[i].keys / .values`` and ``update(k, v, layer_idx)``) for self-attention, and an
``EncoderDecoderCache`` (``self_attention_cache`` + ``cross_attention_cache``) with cross-attention.
They are updated in place (the new keys and values appended) and returned, as ``transformers`` does.
A plain ``DynamicCache`` given to a model with cross-attention keeps only the self-attention keys, so
``encoder_hidden_states`` must then come with every call (they are projected again each time).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["PastKeyValues", "read_past", "write_past"]

KV = tuple[torch.Tensor, torch.Tensor]


@dataclass
class PastKeyValues:
    """The cache given to one forward, unpacked: per layer the past self and cross keys/values (or None)."""

    self_kv: list[KV | None]
    cross_kv: list[KV | None]
    length: int  # T: tokens already cached
    source: object  # what the caller passed (returned updated when it is a transformers cache)


def _hf_layer_kv(cache, i: int) -> KV | None:
    """Keys and values of layer ``i`` of a transformers ``DynamicCache`` (None when empty)."""
    layers = getattr(cache, "layers", None)
    if layers is None or i >= len(layers):
        return None
    layer = layers[i]
    k, v = getattr(layer, "keys", None), getattr(layer, "values", None)
    if not getattr(layer, "is_initialized", k is not None) or k is None or k.numel() == 0:
        return None
    return k, v


def _is_hf_cache(past) -> bool:
    return hasattr(past, "self_attention_cache") or (hasattr(past, "layers") and hasattr(past, "update"))


def read_past(past, *, num_layers: int, num_heads: int, head_dim: int, batch: int, has_cross: bool) -> PastKeyValues:
    """Unpack and validate ``past_key_values`` (our tuple format or a transformers cache).

    Raises:
        ValueError: wrong number of layers, batch size, heads or head size (a cache from another model
            or batch), layers of different lengths, or cross keys for a model without cross-attention.
    """
    if _is_hf_cache(past):
        self_cache = getattr(past, "self_attention_cache", past)
        cross_cache = getattr(past, "cross_attention_cache", None)
        n_given = len(getattr(self_cache, "layers", ()))
        if n_given > num_layers:
            raise ValueError(f"past_key_values has {n_given} layers but this model has {num_layers}")
        self_kv = [_hf_layer_kv(self_cache, i) for i in range(num_layers)]
        cross_kv = [_hf_layer_kv(cross_cache, i) if cross_cache is not None else None for i in range(num_layers)]
    else:
        if not isinstance(past, (tuple, list)) or not all(isinstance(e, (tuple, list)) for e in past):
            raise ValueError("past_key_values must be a tuple of per-layer (k, v) or (k, v, cross_k, cross_v) tuples "
                             f"or a transformers Cache, got {type(past).__name__}")
        if len(past) != num_layers:
            raise ValueError(f"past_key_values has {len(past)} layers but this model has {num_layers}")
        if any(len(e) not in (2, 4) for e in past):
            raise ValueError("each layer of past_key_values must be (k, v) or (k, v, cross_k, cross_v)")
        self_kv = [(e[0], e[1]) for e in past]
        cross_kv = [(e[2], e[3]) if len(e) == 4 else None for e in past]
    if any(kv is not None for kv in cross_kv) and not has_cross:
        raise ValueError("past_key_values holds cross-attention keys but this model has no cross-attention "
                         "(add_cross_attention=False)")

    lengths = set()
    for name, kvs in (("past_key_values", self_kv), ("past_key_values (cross-attention)", cross_kv)):
        for i, kv in enumerate(kvs):
            if kv is None:
                continue
            for t in kv:
                if not isinstance(t, torch.Tensor) or t.dim() != 4:
                    raise ValueError(f"{name} layer {i}: expected (batch, heads, length, head_dim) tensors, "
                                     f"got {tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
                B, H, _, d = t.shape
                if B != batch:
                    raise ValueError(f"{name} layer {i} has batch size {B} but the input has {batch} rows "
                                     "(a cache from another batch?)")
                if (H, d) != (num_heads, head_dim):
                    raise ValueError(f"{name} layer {i} has {H} heads of size {d}; this model has {num_heads} "
                                     f"heads of size {head_dim} (a cache from another model?)")
            if kv[0].shape != kv[1].shape:
                raise ValueError(f"{name} layer {i}: keys {tuple(kv[0].shape)} and values {tuple(kv[1].shape)} differ")
            if kvs is self_kv:
                lengths.add(kv[0].shape[2])
    if any(kv is None for kv in self_kv):
        lengths.add(0)
    if len(lengths) > 1:
        raise ValueError(f"past_key_values layers hold different lengths {sorted(lengths)}")
    length = lengths.pop() if lengths else 0
    self_kv = [kv if length else None for kv in self_kv]
    return PastKeyValues(self_kv, cross_kv, length, past)


def write_past(given: PastKeyValues | None, self_kv: list[KV], cross_kv: list[KV | None]):
    """The ``past_key_values`` to return: ``self_kv[i]`` holds all ``T + n`` keys/values of layer ``i``.

    A transformers cache that was given is updated in place with the ``n`` new keys/values (and
    the cross keys/values it did not hold yet) and returned; otherwise our tuple format.
    """
    source = given.source if given is not None else None
    if source is None or not _is_hf_cache(source):
        return tuple(kv + (ckv if ckv is not None else ()) for kv, ckv in zip(self_kv, cross_kv))
    past_len = given.length
    self_cache = getattr(source, "self_attention_cache", source)
    cross_cache = getattr(source, "cross_attention_cache", None)
    for i, (k, v) in enumerate(self_kv):
        self_cache.update(k[:, :, past_len:], v[:, :, past_len:], i)
        if cross_cache is not None and cross_kv[i] is not None and given.cross_kv[i] is None:
            cross_cache.update(cross_kv[i][0], cross_kv[i][1], i)
            if hasattr(source, "is_updated"):
                source.is_updated[i] = True
    return source
