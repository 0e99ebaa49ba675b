"""The BigBird encoder: embeddings, attention, post-LN layers, pooler and :class:`BigBirdModel`.

Module and parameter names equal Hugging Face's (``embeddings.word_embeddings``,
``encoder.layer.{i}.attention.self.query``, ``pooler`` as a bare ``Linear``, ...), so a
``transformers`` state dict maps onto ours key for key (see :mod:`bigbird.checkpoint`).

What one forward does (as ``transformers``' ``modeling_big_bird.py`` computes it):

* **Attention type, per call.** ``attention_type="block_sparse"`` runs
  :func:`bigbird_kernels.block_sparse_attention` when the un-padded length ``n`` exceeds
  ``(5 + 2 r) * block_size``; shorter inputs run full attention *for that call only* (Hugging Face
  switches the whole model to full attention permanently; we do not). ``"original_full"`` always runs
  full attention (``torch.nn.functional.scaled_dot_product_attention``; additive ``finfo.min`` on
  padded keys; padded queries are not zeroed; attention-probability dropout in training), as does a
  decoder (``is_decoder=True`` or :class:`~bigbird.heads.BigBirdForCausalLM`), which is always causal.
* **Padding.** Block-sparse calls pad on the right to a block multiple (ids with ``pad_token_id``,
  mask with 0, token types with 0, given position ids with ``pad_token_id``; default position ids run
  ``0..L-1`` over the padded length; ``inputs_embeds`` are extended with the embedding of the pad
  token, as Hugging Face does) and un-pad ``last_hidden_state``, ``hidden_states`` and
  ``attentions`` (Hugging Face un-pads only the first).
* **Layouts.** Layer ``i`` reads ``bigbird_kernels.get_layout(config.layout_mode, layer_idx=i, ...)``
  for the padded length and ``self.training``; ``"hf"`` reproduces Hugging Face bit for bit. Under
  ``torch.export`` (:mod:`bigbird.export`) the ``"hf"`` eval layout is computed in the graph from the
  symbolic length (:mod:`bigbird_kernels.exportable`); other modes are refused by name.
* **Decoder.** Causal calls take and return a key/value cache (``past_key_values``, ``use_cache``;
  :mod:`bigbird.kv_cache`); default position ids continue from the cached length. With
  ``add_cross_attention`` (and ``is_decoder``) every layer has a ``crossattention`` block over
  ``encoder_hidden_states`` (its projected keys/values are cached too).
* **Attentions** (``output_attentions=True`` only): for block-sparse layers the true probabilities,
  a dense ``(B, H, n, n)`` tensor computed from the scores, the ``log(count)`` bias of duplicated
  blocks (duplicates summed) and the key mask; rows of padded queries are 0. Hugging Face's matrix
  overwrites duplicates and is built on every call; ours only when asked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from bigbird_kernels import BigBirdLayout, block_sparse_attention, block_sparse_attention_probs, get_layout
from bigbird_kernels.exportable import hf_eval_block_sparse_attention

from .config import BigBirdConfig
from .kv_cache import PastKeyValues, read_past, write_past
from .outputs import BaseModelOutputWithPooling

__all__ = [
    "BigBirdPreTrainedModel",
    "BigBirdModel",
    "BigBirdEmbeddings",
    "BigBirdSelfAttention",
    "BigBirdAttention",
    "BigBirdLayer",
    "BigBirdEncoder",
    "get_activation",
]


# --------------------------------------------------------------------------------------------------
# activations (names as in transformers' ACT2FN)
# --------------------------------------------------------------------------------------------------


def _gelu_python(x):
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _gelu_fast(x):
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def _gelu_accurate(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_python": _gelu_python,
    # gelu_new is the tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": _gelu_fast,
    "gelu_accurate": _gelu_accurate,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "relu2": lambda x: torch.square(F.relu(x)),
    "relu6": F.relu6,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "linear": lambda x: x,
    "mish": F.mish,
    "leaky_relu": F.leaky_relu,
}


def get_activation(name: str):
    """The activation function called ``name`` (``transformers`` naming)."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unsupported activation {name!r}; expected one of {sorted(_ACTIVATIONS)}") from None


# --------------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------------


class BigBirdEmbeddings(nn.Module):
    """word + token type + position embeddings, then dropout, then LayerNorm (dropout first, as HF)."""

    def __init__(self, config: BigBirdConfig):
        super().__init__()
        h = config.hidden_size
        # _weight skips nn.Embedding's own init: init_weights() initialises every weight once (and on the
        # meta device, used by from_pretrained, torch's normal_ would allocate the full table on the host)
        self.word_embeddings = nn.Embedding(config.vocab_size, h, padding_idx=config.pad_token_id,
                                            _weight=torch.empty(config.vocab_size, h))
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, h,
                                                _weight=torch.empty(config.max_position_embeddings, h))
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, h, _weight=torch.empty(config.type_vocab_size, h))
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.rescale_embeddings = config.rescale_embeddings
        self.hidden_size = config.hidden_size

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None):
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        S = inputs_embeds.shape[1]
        device = inputs_embeds.device
        if position_ids is None:
            position_ids = torch.arange(S, device=device)[None, :]
        if token_type_ids is None:
            token_type_ids = torch.zeros(1, S, dtype=torch.long, device=device)
        if self.rescale_embeddings:
            inputs_embeds = inputs_embeds * (self.hidden_size**0.5)
        x = inputs_embeds + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(position_ids)
        x = self.dropout(x)
        return self.LayerNorm(x)


@dataclass
class _AttentionPlan:
    """How the attention of one forward runs (shared by every layer)."""

    sparse: bool  # block-sparse kernel (else full attention)
    key_mask: torch.Tensor | None  # (B, L) bool, True = real token; None = no padding (sparse path)
    # full path: (B|1, 1, 1|n, T+n) additive, finfo.min where masked; always set when causal and output_attentions
    # or with cached keys (T > 0)
    additive_mask: torch.Tensor | None
    causal: bool  # full path without an additive mask: SDPA's is_causal
    output_attentions: bool
    n: int  # un-padded length (attentions are cropped to it)
    backend: str
    # cross-attention: (B, 1, 1, S_enc) additive mask of the encoder states (None = every key is real)
    cross_mask: torch.Tensor | None = None


def _full_attention(q, k, v, additive, causal: bool, output_attentions: bool, p_drop: float, training: bool):
    """Softmax attention of ``q (B, H, n, d)`` over ``k, v (B, H, T, d)``; returns (ctx, probs or None).

    ``additive`` is a float mask broadcastable to ``(B, H, n, T)`` (or None); ``causal`` (only without
    a mask) is SDPA's top-left causal mask.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    if output_attentions:
        s = torch.matmul(q, k.transpose(-1, -2)) * scale
        if additive is not None:
            s = s + additive
        probs = F.dropout(torch.softmax(s, dim=-1), p_drop, training)
        return torch.matmul(probs, v), probs
    mask = additive.to(q.dtype) if additive is not None else None
    ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p_drop, is_causal=causal and mask is None,
                                         scale=scale)
    return ctx, None


class BigBirdSelfAttention(nn.Module):
    """``query``/``key``/``value`` projections; block-sparse or full attention over them.

    The same module serves as the cross-attention of a decoder layer (:meth:`cross`).
    """

    def __init__(self, config: BigBirdConfig, layer_idx: int):
        super().__init__()
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.hidden_size // config.num_attention_heads
        self.all_head_size = config.hidden_size
        self.layer_idx = layer_idx
        self.query = nn.Linear(config.hidden_size, self.all_head_size, bias=config.use_bias)
        self.key = nn.Linear(config.hidden_size, self.all_head_size, bias=config.use_bias)
        self.value = nn.Linear(config.hidden_size, self.all_head_size, bias=config.use_bias)
        self.attention_probs_dropout_prob = config.attention_probs_dropout_prob
        # the hf eval layout's parameters, for torch.export (which computes the layout in the graph)
        self._layout_args = dict(block_size=config.block_size, num_random_blocks=config.num_random_blocks,
                                 window=config.window_blocks, global_blocks=config.global_blocks)

    def _heads(self, x):
        """``(B, S, hidden)`` -> ``(B, H, S, head_size)``."""
        B, S, _ = x.shape
        return x.view(B, S, self.num_attention_heads, self.attention_head_size).transpose(1, 2)

    def _merge(self, ctx):
        """``(B, H, S, d)`` -> ``(B, S, H * d)``."""
        B, _, S, _ = ctx.shape
        return ctx.transpose(1, 2).reshape(B, S, self.all_head_size)

    def forward(self, hidden_states, plan: _AttentionPlan, layout: BigBirdLayout | None, past=None):
        """Self-attention of ``hidden_states (B, n, hidden)``.

        ``past``: cached ``(k, v)`` of earlier tokens, each ``(B, H, T, d)`` (full causal path only).
        Returns ``(ctx (B, n, hidden), probs or None, (k, v))``, ``k, v (B, H, T + n, d)`` for the cache.
        """
        q = self._heads(self.query(hidden_states))
        k = self._heads(self.key(hidden_states))
        v = self._heads(self.value(hidden_states))
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        probs = None
        if plan.sparse:
            scale = 1.0 / math.sqrt(self.attention_head_size)
            if layout is None:  # torch.export: the hf eval layout from the symbolic length (bigbird.export)
                ctx = hf_eval_block_sparse_attention(q, k, v, plan.key_mask, scale=scale, **self._layout_args)
            else:
                ctx = block_sparse_attention(q, k, v, layout, attention_mask=plan.key_mask, scale=scale,
                                             backend=plan.backend)
            if plan.output_attentions:
                # true probabilities at the unpadded length (duplicated blocks summed)
                probs = block_sparse_attention_probs(q, k, layout, plan.key_mask, scale)[:, :, : plan.n, : plan.n]
        else:
            p_drop = self.attention_probs_dropout_prob if self.training else 0.0
            ctx, probs = _full_attention(q, k, v, plan.additive_mask, plan.causal, plan.output_attentions,
                                         p_drop, self.training)
        return self._merge(ctx), probs, (k, v)

    def cross(self, hidden_states, encoder_hidden_states, plan: _AttentionPlan, cached=None):
        """Attention of ``hidden_states (B, n, hidden)`` over ``encoder_hidden_states (B, S_enc, hidden)``.

        ``cached``: the projected encoder ``(k, v)`` of an earlier call (then ``encoder_hidden_states``
        is not read). Returns ``(ctx (B, n, hidden), probs or None, (k, v))``.
        """
        q = self._heads(self.query(hidden_states))
        if cached is None:
            cached = (self._heads(self.key(encoder_hidden_states)), self._heads(self.value(encoder_hidden_states)))
        p_drop = self.attention_probs_dropout_prob if self.training else 0.0
        ctx, probs = _full_attention(q, cached[0], cached[1], plan.cross_mask, False, plan.output_attentions,
                                     p_drop, self.training)
        return self._merge(ctx), probs, cached


class BigBirdSelfOutput(nn.Module):
    def __init__(self, config: BigBirdConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor):
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class BigBirdAttention(nn.Module):
    def __init__(self, config: BigBirdConfig, layer_idx: int):
        super().__init__()
        self.self = BigBirdSelfAttention(config, layer_idx)
        self.output = BigBirdSelfOutput(config)

    def forward(self, hidden_states, plan, layout, past=None):
        ctx, probs, kv = self.self(hidden_states, plan, layout, past)
        return self.output(ctx, hidden_states), probs, kv

    def cross(self, hidden_states, encoder_hidden_states, plan, cached=None):
        ctx, probs, kv = self.self.cross(hidden_states, encoder_hidden_states, plan, cached)
        return self.output(ctx, hidden_states), probs, kv


class BigBirdIntermediate(nn.Module):
    def __init__(self, config: BigBirdConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = get_activation(config.hidden_act)

    def forward(self, hidden_states):
        return self.intermediate_act_fn(self.dense(hidden_states))


class BigBirdOutput(nn.Module):
    def __init__(self, config: BigBirdConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor):
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


@dataclass
class _LayerOutput:
    hidden_states: torch.Tensor
    probs: torch.Tensor | None  # self-attention probabilities (output_attentions)
    cross_probs: torch.Tensor | None  # cross-attention probabilities (output_attentions and cross-attention ran)
    kv: tuple  # (k, v) of the T + n tokens, for the cache
    cross_kv: tuple | None  # projected encoder (k, v), for the cache


class BigBirdLayer(nn.Module):
    """Post-LN layer: ``x1 = LN(x + attn(x))``, [``x1 = LN(x1 + cross_attn(x1, enc))``], ``x2 = LN(x1 + FFN(x1))``.

    ``crossattention`` exists when ``config.add_cross_attention``; it runs when encoder states (or
    their cached keys/values) are given.
    """

    def __init__(self, config: BigBirdConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.attention = BigBirdAttention(config, layer_idx)
        if config.add_cross_attention:
            self.crossattention = BigBirdAttention(config, layer_idx)
        self.intermediate = BigBirdIntermediate(config)
        self.output = BigBirdOutput(config)

    def forward(self, hidden_states, plan: _AttentionPlan, layout: BigBirdLayout | None, past=None,
                encoder_hidden_states=None, cross_past=None) -> _LayerOutput:
        attention_output, probs, kv = self.attention(hidden_states, plan, layout, past)
        cross_probs = cross_kv = None
        if encoder_hidden_states is not None or cross_past is not None:
            attention_output, cross_probs, cross_kv = self.crossattention.cross(
                attention_output, encoder_hidden_states, plan, cross_past)
        layer_output = self.output(self.intermediate(attention_output), attention_output)
        return _LayerOutput(layer_output, probs, cross_probs, kv, cross_kv)


class BigBirdEncoder(nn.Module):
    def __init__(self, config: BigBirdConfig):
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList([BigBirdLayer(config, i) for i in range(config.num_hidden_layers)])

    def forward(self, hidden_states, plan: _AttentionPlan, layouts, *, output_hidden_states: bool,
                past: PastKeyValues | None = None, encoder_hidden_states=None):
        """Run every layer. Returns ``(hidden, all_hidden, all_probs, all_cross_probs, kvs, cross_kvs)``."""
        all_hidden = [hidden_states] if output_hidden_states else None
        all_probs = [] if plan.output_attentions else None
        all_cross = [] if plan.output_attentions else None
        kvs, cross_kvs = [], []
        use_ckpt = self.config.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.layer):
            args = (hidden_states, plan, layouts[i] if layouts is not None else None,
                    past.self_kv[i] if past is not None else None, encoder_hidden_states,
                    past.cross_kv[i] if past is not None else None)
            if use_ckpt:
                # the layout is an explicit argument: the recomputation replays exactly the same one
                out = checkpoint(layer, *args, use_reentrant=False)
            else:
                out = layer(*args)
            hidden_states = out.hidden_states
            kvs.append(out.kv)
            cross_kvs.append(out.cross_kv)
            if output_hidden_states:
                all_hidden.append(hidden_states)
            if plan.output_attentions:
                all_probs.append(out.probs)
                if out.cross_probs is not None:
                    all_cross.append(out.cross_probs)
        return hidden_states, all_hidden, all_probs, all_cross, kvs, cross_kvs


# --------------------------------------------------------------------------------------------------
# the pretrained-model base: init, tying, loading and saving
# --------------------------------------------------------------------------------------------------


class BigBirdPreTrainedModel(nn.Module):
    """Base of every BigBird model: weight init, weight tying, ``from_pretrained`` / ``save_pretrained``.

    Subclasses set ``base_model_prefix`` ("bert" for the task heads, "" for :class:`BigBirdModel`)
    and ``_tied_weights_keys`` (target key -> source key, applied when
    ``config.tie_word_embeddings``).
    """

    config_class = BigBirdConfig
    base_model_prefix = "bert"
    _tied_weights_keys: dict[str, str] = {}

    def __init__(self, config: BigBirdConfig):
        super().__init__()
        if not isinstance(config, BigBirdConfig):
            raise TypeError(f"config must be a BigBirdConfig, got {type(config).__name__}")
        config.validate()
        if config.add_cross_attention and not config.is_decoder:
            raise ValueError("add_cross_attention=True needs is_decoder=True (cross-attention is part of a decoder, "
                             "as in transformers)")
        self.config = config

    # ---- init

    def init_weights(self) -> None:
        """Hugging Face's initialisation: normal(0, initializer_range) weights, zero biases, unit LayerNorm."""
        for module in self.modules():
            self._init_module(module)
        self.tie_weights()

    def _init_module(self, module: nn.Module) -> None:
        if any(p.is_meta for p in module.parameters(recurse=False)):
            return  # built on the meta device by from_pretrained: weights come from the checkpoint
        std = self.config.initializer_range
        with torch.no_grad():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, std)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
            for name, p in module.named_parameters(recurse=False):
                if name == "bias" and not isinstance(module, (nn.Linear, nn.LayerNorm)):
                    p.zero_()  # e.g. cls.predictions.bias

    def _init_parameter(self, name: str, param: torch.Tensor) -> None:
        """Initialise one parameter (by its key) the way :meth:`init_weights` would."""
        module_name, _, attr = name.rpartition(".")
        module = self.get_submodule(module_name) if module_name else self
        std = self.config.initializer_range
        with torch.no_grad():
            if isinstance(module, nn.LayerNorm):
                param.fill_(1.0 if attr == "weight" else 0.0)
            elif attr == "bias":
                param.zero_()
            else:
                param.normal_(0.0, std)
                if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                    param[module.padding_idx].zero_()

    # ---- tying

    def tie_weights(self) -> None:
        """Point tied parameters at their source (decoder.weight = word embeddings, decoder.bias = bias)."""
        if not self.config.tie_word_embeddings:
            return
        for target, source in self._tied_weights_keys.items():
            mod_name, _, attr = target.rpartition(".")
            setattr(self.get_submodule(mod_name), attr, self.get_parameter(source))

    def tied_keys(self) -> dict[str, str]:
        """State-dict keys that alias another key (target -> source); empty when not tied."""
        return dict(self._tied_weights_keys) if self.config.tie_word_embeddings else {}

    # ---- gradient checkpointing (the transformers spelling)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None) -> None:
        self.config.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.config.gradient_checkpointing = False

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    # ---- loading and saving (bigbird.checkpoint)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path,
        *,
        config: BigBirdConfig | None = None,
        dtype=None,
        torch_dtype=None,
        device=None,
        device_map=None,
        attn_implementation: str | None = None,
        local_files_only: bool | None = None,
        revision: str | None = None,
        cache_dir=None,
        allow_missing=(),
        ignore_unexpected=(),
        output_loading_info: bool = False,
        **config_overrides,
    ):
        """Load a Hugging Face BigBird checkpoint (a directory or a hub id) into this class.

        Args:
            name_or_path: a directory with ``config.json`` and ``model.safetensors`` (or a sharded
                ``model.safetensors.index.json``, or ``pytorch_model.bin``, read with
                ``torch.load(weights_only=True)``), or a hub id such as ``"google/bigbird-roberta-base"``
                fetched with ``huggingface_hub`` into its cache (offline when ``HF_HUB_OFFLINE=1``).
            config: use this config instead of the checkpoint's ``config.json``.
            dtype: cast floating weights to this dtype (``torch.dtype`` or a name such as "bfloat16");
                None takes the config's ``dtype`` (``torch_dtype``), else the first floating tensor's, so
                a checkpoint mixing fp16 and fp32 loads in one dtype (``model.dtype``), as in transformers.
            torch_dtype: transformers' name for ``dtype`` ("auto" = the checkpoint's); both given and
                different is an error.
            device: move the model there after loading.
            device_map: transformers' spelling of the device: "auto" (CUDA when available, else the CPU),
                "cpu", "cuda", "cuda:N", a CUDA index or a ``torch.device``. The model loads on one
                device: a dict device map is refused, as is a ``device`` that disagrees.
            attn_implementation: transformers' attention choice mapped onto ``attention_backend``:
                "eager" -> "reference", "sdpa" -> "sdpa", "flex_attention" -> "flex",
                "flash_attention_2" -> "auto" (our fused CUDA / Triton kernels on a GPU, the reference
                on a CPU). Other values are refused by name.
            local_files_only, revision, cache_dir: hub options (``local_files_only`` defaults to True
                when ``HF_HUB_OFFLINE`` is set).
            allow_missing: glob patterns of our parameter names (e.g. ``("classifier.*",)``) that may be
                absent from, or shaped differently in, the checkpoint; they are freshly initialised.
                Anything else missing or mis-shaped is an error.
            ignore_unexpected: glob patterns of checkpoint keys to drop silently. Keys of heads this
                class does not have (e.g. ``cls.*`` when loading a pre-training checkpoint into a
                classifier, ``bert.pooler.*`` into question answering), the non-persistent buffers
                ``*.position_ids`` / ``*.token_type_ids`` of old checkpoints and stored copies of tied
                weights are always dropped; any other unexpected key is an error.
            output_loading_info: also return a dict with ``missing_keys`` (initialised),
                ``unexpected_keys`` (dropped), ``mismatched_keys`` and ``ignored_head_keys``.
            **config_overrides: fields replacing those of the checkpoint's config (e.g. ``num_labels=3``,
                ``layout_mode="seeded"``, ``attention_backend="reference"``), and ``add_pooling_layer``
                for :class:`BigBirdModel`. A keyword that is neither an option above, a config field nor
                a key of the checkpoint's ``config.json`` is a ``TypeError`` naming it.

        Raises:
            FileNotFoundError: no config or weights where looked (names the folder and the files); a
                name that looks like a local path (``./x``, ``~/x``, ``dir/typo`` with ``dir`` present)
                and does not exist, at once, with no hub look-up.
            ValueError: corrupt weights file or shard index (names it; a shard outside the folder too),
                or missing / unexpected / mis-shaped / wrongly typed keys (one error naming all of them);
                ``dtype`` / ``torch_dtype``, ``device`` / ``device_map`` that disagree; an unsupported
                ``device_map`` or ``attn_implementation``.
            TypeError: an unknown keyword (named).
        """
        from .checkpoint import load_pretrained

        return load_pretrained(
            cls,
            name_or_path,
            config=config,
            dtype=dtype,
            torch_dtype=torch_dtype,
            device=device,
            device_map=device_map,
            attn_implementation=attn_implementation,
            local_files_only=local_files_only,
            revision=revision,
            cache_dir=cache_dir,
            allow_missing=allow_missing,
            ignore_unexpected=ignore_unexpected,
            output_loading_info=output_loading_info,
            config_overrides=config_overrides,
        )

    def save_pretrained(self, save_directory, *, safe_serialization: bool = True):
        """Write ``config.json`` and ``model.safetensors`` (tied weights stored once, HF's keys).

        ``transformers``' ``BigBirdFor*.from_pretrained(save_directory)`` loads the result with no missing
        or unexpected keys. ``safe_serialization=False`` writes ``pytorch_model.bin`` instead.
        Returns the directory as a ``Path``. The files are swapped in atomically once written: a save
        that fails or is interrupted leaves the previous checkpoint loadable and complete.

        Raises:
            OSError: a file cannot be written (disk full, no permission; names it).
        """
        from .checkpoint import save_pretrained

        return save_pretrained(self, save_directory, safe_serialization=safe_serialization)

    def push_to_hub(self, *args, **kwargs):
        """Refused: this package works offline (see :func:`bigbird.hub.refuse_push_to_hub`)."""
        from .hub import refuse_push_to_hub

        refuse_push_to_hub("model")


# --------------------------------------------------------------------------------------------------
# the bare model
# --------------------------------------------------------------------------------------------------


class BigBirdModel(BigBirdPreTrainedModel):
    """The BigBird encoder (embeddings, ``num_hidden_layers`` post-LN layers, optional tanh pooler).

    Parameter names equal ``transformers.BigBirdModel``'s state-dict keys. ``forward`` takes
    ``input_ids`` or ``inputs_embeds`` of any length up to ``max_position_embeddings`` (after padding
    to a block multiple in block-sparse mode) and returns a :class:`BaseModelOutputWithPooling`
    at the input's length. See the module docstring for the attention rules.
    """

    base_model_prefix = ""

    def __init__(self, config: BigBirdConfig, add_pooling_layer: bool = True, *, _init_weights: bool = True):
        super().__init__(config)
        self.embeddings = BigBirdEmbeddings(config)
        self.encoder = BigBirdEncoder(config)
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if add_pooling_layer else None
        self._generators: dict = {}
        if _init_weights:  # the task heads initialise everything once, at the end of their __init__
            self.init_weights()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def _layout_generator(self, device):
        seed = self.config.layout_seed
        if seed is None:
            return None
        key = (str(device), seed)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(seed)
        return self._generators[key]

    def layouts_for(self, seq_len: int, device) -> list[BigBirdLayout]:
        """The block-sparse layout of every layer for a padded length, as this forward would use them.

        Layouts of ``"hf"`` and ``"seeded"`` are cached (no host work after the first call);
        ``"resample"`` draws new ones on every call.
        """
        c = self.config
        gen = self._layout_generator(device) if c.layout_mode == "resample" else None
        return [
            get_layout(
                c.layout_mode,
                layer_idx=i,
                seq_len=seq_len,
                block_size=c.block_size,
                num_random_blocks=c.num_random_blocks,
                num_heads=c.num_attention_heads,
                max_position_embeddings=c.max_position_embeddings,
                training=self.training,
                window=c.window_blocks,
                global_blocks=c.global_blocks,
                generator=gen,
                device=device,
            )
            for i in range(c.num_hidden_layers)
        ]

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        *,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values=None,
        use_cache: bool | None = None,
        causal: bool | None = None,
        compute_pooler: bool = True,
    ):
        """Encode a batch (or, as a decoder, continue one).

        Args:
            input_ids: ``(B, n)`` int64 or int32 token ids in ``[0, vocab_size)``; or
                ``inputs_embeds (B, n, hidden)``. Any other dtype (float, bool, unsigned, int8, int16)
                raises ``TypeError``; ids out of range or wrong shapes raise ``ValueError``.
            attention_mask: ``(B, T + n)``, 1/True = real token, ``T`` the cached length (0 without a
                cache). Right padding for the encoder; a decoder also takes left padding.
            token_type_ids: ``(B, n)`` (default zeros).
            position_ids: ``(B, n)`` or ``(1, n)``; default ``T..T+n-1`` (as transformers, also with left
                padding: pass positions from the mask, as :func:`bigbird.generation.generate` does, to
                skip the pads).
            output_attentions, output_hidden_states: return per-layer probabilities / hidden states
                (defaults from the config), un-padded to ``n``. Decoders with cross-attention also return
                ``cross_attentions``.
            return_dict: False returns ``to_tuple()`` of the output.
            encoder_hidden_states: ``(B, S_enc, hidden)`` states attended by the cross-attention of every
                layer (``config.add_cross_attention`` only).
            encoder_attention_mask: ``(B, S_enc)``, 1/True = real encoder token.
            past_key_values: the cache of earlier calls (causal attention only): our tuple format or a
                transformers ``DynamicCache`` / ``EncoderDecoderCache`` (see :mod:`bigbird.kv_cache`).
            use_cache: return ``past_key_values`` (default: True when ``past_key_values`` is given).
            causal: causal full attention (default ``config.is_decoder``).
            compute_pooler: skip the pooler when False (heads that do not use it).
        """
        c = self.config
        output_attentions = c.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = c.output_hidden_states if output_hidden_states is None else output_hidden_states
        causal = c.is_decoder if causal is None else causal
        use_cache = past_key_values is not None if use_cache is None else use_cache
        if (past_key_values is not None or use_cache) and not causal:
            raise ValueError("past_key_values / use_cache need causal attention (is_decoder=True or BigBirdForCausalLM)")
        ref = input_ids if input_ids is not None else inputs_embeds
        past = None
        if past_key_values is not None and isinstance(ref, torch.Tensor) and ref.dim() >= 2:
            past = read_past(past_key_values, num_layers=c.num_hidden_layers, num_heads=c.num_attention_heads,
                             head_dim=c.head_dim, batch=ref.shape[0], has_cross=c.add_cross_attention)
        T = past.length if past is not None else 0
        B, n, device = _check_inputs(c, input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids,
                                     past_length=T)
        cross = encoder_hidden_states is not None or (past is not None and any(kv is not None for kv in past.cross_kv))
        if cross:
            _check_encoder_inputs(c, B, encoder_hidden_states, encoder_attention_mask, past)

        if attention_mask is not None:
            attention_mask = attention_mask != 0
        sparse = c.attention_type == "block_sparse" and not causal and n > c.short_input_threshold
        # torch.export: the length is symbolic; pad unconditionally (by a symbolic amount, maybe 0)
        exporting = sparse and torch.compiler.is_exporting()
        L = (n + c.block_size - 1) // c.block_size * c.block_size if sparse else n
        pad = L - n
        if T + L > c.max_position_embeddings:
            raise ValueError(
                f"sequence length {n}" + (f" (padded to {L}, a multiple of block_size {c.block_size})" if pad else "")
                + (f" after {T} cached tokens" if T else "")
                + f" exceeds max_position_embeddings={c.max_position_embeddings}"
            )
        if position_ids is None and T:
            position_ids = torch.arange(T, T + n, device=device)[None, :]

        if exporting or pad:
            # right-pad to a block multiple exactly as transformers' _pad_to_block_size does
            if input_ids is not None:
                input_ids = F.pad(input_ids, (0, pad), value=c.pad_token_id)
            if position_ids is not None:
                position_ids = F.pad(position_ids.expand(B, n), (0, pad), value=c.pad_token_id)
            if inputs_embeds is not None:
                pad_ids = torch.full((B, pad), c.pad_token_id, dtype=torch.long, device=device)
                inputs_embeds = torch.cat([inputs_embeds, self.embeddings(input_ids=pad_ids)], dim=1)
            if attention_mask is None:
                attention_mask = torch.ones(B, n, dtype=torch.bool, device=device)
            attention_mask = F.pad(attention_mask, (0, pad), value=False)
            if token_type_ids is not None:
                token_type_ids = F.pad(token_type_ids, (0, pad), value=0)

        hidden = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids,
                                 position_ids=position_ids, inputs_embeds=inputs_embeds)

        cross_mask = None
        if cross and encoder_attention_mask is not None:
            cross_mask = _additive((encoder_attention_mask != 0)[:, None, None, :], hidden.dtype)
        layouts = None
        if sparse:
            plan = _AttentionPlan(True, attention_mask, None, False, output_attentions, n, c.attention_backend, cross_mask)
            if exporting:
                _check_exportable(c, self.training, output_attentions)
            else:
                layouts = self.layouts_for(L, device)
        else:
            keep = None if attention_mask is None else attention_mask[:, None, None, :]  # (B, 1, 1, T + n)
            if causal and (keep is not None or output_attentions or T):
                # query i (absolute position T + i) reads keys 0..T + i
                tri = torch.arange(T + n, device=device)[None, :] <= torch.arange(T, T + n, device=device)[:, None]
                keep = tri[None, None] if keep is None else keep & tri[None, None]
            additive = _additive(keep, hidden.dtype) if keep is not None else None
            plan = _AttentionPlan(False, None, additive, causal, output_attentions, n, c.attention_backend, cross_mask)

        seq, all_hidden, all_probs, all_cross, kvs, cross_kvs = self.encoder(
            hidden, plan, layouts, output_hidden_states=output_hidden_states, past=past,
            encoder_hidden_states=encoder_hidden_states)
        pooled = None
        if self.pooler is not None and compute_pooler:
            pooled = torch.tanh(self.pooler(seq[:, 0]))
        if exporting:  # a symbolic crop: a slice would guard on n <= L, which export cannot prove
            keep = torch.arange(n, device=device)
            seq = seq.index_select(1, keep)
            all_hidden = None if all_hidden is None else [h.index_select(1, keep) for h in all_hidden]
        elif pad:
            seq = seq[:, :n]
            if all_hidden is not None:
                all_hidden = [h[:, :n] for h in all_hidden]
        out = BaseModelOutputWithPooling(
            last_hidden_state=seq,
            pooler_output=pooled,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            past_key_values=write_past(past, kvs, cross_kvs) if use_cache else None,
            attentions=tuple(all_probs) if all_probs is not None else None,
            cross_attentions=tuple(all_cross) if cross and all_cross is not None else None,
        )
        return out.to_tuple() if return_dict is False else out


def _check_exportable(c: BigBirdConfig, training: bool, output_attentions: bool) -> None:
    """torch.export traces block-sparse attention only for layouts computable from the symbolic length."""
    if c.layout_mode != "hf" or training:
        mode = f"layout_mode={c.layout_mode!r}" + (" in training" if training else "")
        raise ValueError(
            f"cannot export block-sparse attention with {mode}: only layout_mode='hf' in eval has a layout that "
            "depends on the length alone ('seeded' draws fixed random blocks per length, 'resample' draws on "
            "every call, and so does 'hf' in training); call model.eval() and set config.layout_mode='hf'"
        )
    if output_attentions:
        raise ValueError("cannot export block-sparse attention with output_attentions=True")


def _additive(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean keep-mask as an additive float mask: 0 where kept, ``finfo(dtype).min`` elsewhere."""
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)


def _check_encoder_inputs(c: BigBirdConfig, B: int, encoder_hidden_states, encoder_attention_mask,
                          past: PastKeyValues | None):
    """Validate the cross-attention inputs of a decoder forward."""
    if not c.add_cross_attention:
        raise ValueError("encoder_hidden_states given but this model has no cross-attention "
                         "(build it with is_decoder=True, add_cross_attention=True)")
    cached = past is not None and past.cross_kv[0] is not None
    if encoder_hidden_states is not None:
        e = encoder_hidden_states
        if not isinstance(e, torch.Tensor) or e.dim() != 3:
            raise ValueError(f"encoder_hidden_states must be a (batch, enc_len, hidden) tensor, got {_shape(e)}")
        if e.shape[-1] != c.hidden_size:
            raise ValueError(f"encoder_hidden_states last dim must be hidden_size={c.hidden_size}, got {e.shape[-1]}")
        if e.shape[0] != B:
            raise ValueError(f"encoder_hidden_states has batch size {e.shape[0]} but the input has {B} rows")
    S_enc = past.cross_kv[0][0].shape[2] if cached else encoder_hidden_states.shape[1]
    if encoder_attention_mask is not None:
        if not isinstance(encoder_attention_mask, torch.Tensor) or tuple(encoder_attention_mask.shape) != (B, S_enc):
            raise ValueError(f"encoder_attention_mask must have shape (batch, enc_len) = {(B, S_enc)}, "
                             f"got {_shape(encoder_attention_mask)}")


def _check_inputs(c: BigBirdConfig, input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids,
                  past_length: int = 0):
    """Validate a forward's inputs; return (B, n, device). ``attention_mask`` covers ``past_length + n`` tokens.

    Shapes and dtypes are checked first; the value ranges of ``input_ids``, ``token_type_ids`` and
    ``position_ids`` then cost one device-to-host copy in all (a single synchronisation on CUDA).
    """
    if input_ids is not None and inputs_embeds is not None:
        raise ValueError("pass either input_ids or inputs_embeds, not both")
    if input_ids is None and inputs_embeds is None:
        raise ValueError("pass input_ids or inputs_embeds")
    if input_ids is not None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError(f"input_ids must be a (batch, seq_len) tensor, got {_shape(input_ids)}")
        if input_ids.dtype not in (torch.int64, torch.int32):  # what the embedding takes
            raise TypeError(f"input_ids must be integer token ids of dtype int64 or int32, got {input_ids.dtype}")
        B, n = input_ids.shape
        device = input_ids.device
    else:
        if not isinstance(inputs_embeds, torch.Tensor) or inputs_embeds.dim() != 3:
            raise ValueError(f"inputs_embeds must be a (batch, seq_len, hidden) tensor, got {_shape(inputs_embeds)}")
        if inputs_embeds.shape[-1] != c.hidden_size:
            raise ValueError(f"inputs_embeds last dim must be hidden_size={c.hidden_size}, got {inputs_embeds.shape[-1]}")
        B, n = inputs_embeds.shape[:2]
        device = inputs_embeds.device
    if B == 0 or n == 0:
        raise ValueError(f"empty input: batch size {B}, sequence length {n} (both must be >= 1)")
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (B, past_length + n):
            what = "(batch, cached + seq_len)" if past_length else "(batch, seq_len)"
            raise ValueError(f"attention_mask must have shape {what} = {(B, past_length + n)}, got {_shape(attention_mask)}")
    if token_type_ids is not None:
        if not isinstance(token_type_ids, torch.Tensor) or tuple(token_type_ids.shape) != (B, n):
            raise ValueError(f"token_type_ids must have shape {(B, n)}, got {_shape(token_type_ids)}")
    if position_ids is not None:
        if not isinstance(position_ids, torch.Tensor) or position_ids.dim() != 2 or position_ids.shape[1] != n \
                or position_ids.shape[0] not in (1, B):
            raise ValueError(f"position_ids must have shape {(B, n)} or {(1, n)}, got {_shape(position_ids)}")

    # (name, tensor, exclusive upper bound) of every index tensor given; one host copy of all their minima and maxima
    ranged = [(name, t, hi) for name, t, hi in (
        ("input_ids", input_ids, c.vocab_size),
        ("token_type_ids", token_type_ids, c.type_vocab_size),
        ("position_ids", position_ids, c.max_position_embeddings),
    ) if t is not None]
    if not ranged or torch.compiler.is_exporting():  # an exported graph cannot raise: no value checks
        return B, n, device
    bounds = torch.stack([
        torch.stack([t.min(), t.max()]).to(device=device, dtype=torch.long) for _, t, _ in ranged
    ]).tolist()  # (len(ranged), 2) [min, max] per tensor
    for (name, _, limit), (lo, hi) in zip(ranged, bounds):
        if lo < 0 or hi >= limit:
            if name == "input_ids":
                raise ValueError(f"input_ids must lie in [0, vocab_size={limit}), found token id {lo if lo < 0 else hi}")
            field = "type_vocab_size" if name == "token_type_ids" else "max_position_embeddings"
            raise ValueError(f"{name} must lie in [0, {field}={limit}), found [{lo}, {hi}]")
    return B, n, device


def _shape(x):
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
