"""A BigBird-to-BigBird encoder-decoder (e.g. a warm-started summariser), loading ``transformers``'
``EncoderDecoderModel`` checkpoints.

>>> model = BigBirdEncoderDecoderModel.from_pretrained("path/to/bigbird2bigbird")
>>> summary_ids = model.generate(input_ids, attention_mask=mask, max_new_tokens=64)

The encoder is our :class:`~bigbird.modeling.BigBirdModel` (block-sparse attention on our kernels for
inputs longer than the short-input threshold, exactly as a ``BigBirdModel`` alone); the decoder is our
:class:`~bigbird.heads.BigBirdForCausalLM` with cross-attention (``is_decoder=True,
add_cross_attention=True``) and the key/value cache. The checkpoint is the one ``transformers``
writes: ``config.json`` with ``model_type`` "encoder-decoder", ``encoder`` and ``decoder`` sub-configs
(both BigBird) and ``decoder_start_token_id`` / ``pad_token_id``; weights ``encoder.*`` (a
``BigBirdModel``), ``decoder.*`` (a ``BigBirdForCausalLM``) and, when the two widths differ,
``enc_to_dec_proj.*``. Forward semantics are those of ``EncoderDecoderModel.forward`` (labels shifted
right into decoder inputs, plain cross-entropy over ``labels``, -100 ignored), except that the
decoder layer is the standard one (see :class:`~bigbird.heads.BigBirdForCausalLM`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CONFIG_NAME, _map_keys, _parse_dtype, read_state_dict
from .config import BigBirdConfig
from .generation import UNSET
from .heads import BigBirdForCausalLM
from .hub import resolve_checkpoint_dir
from .modeling import BigBirdModel
from .outputs import Seq2SeqLMOutput

__all__ = ["BigBirdEncoderDecoderConfig", "BigBirdEncoderDecoderModel"]


@dataclass
class BigBirdEncoderDecoderConfig:
    """The encoder and decoder configs and the generation ids of an encoder-decoder checkpoint."""

    encoder: BigBirdConfig
    decoder: BigBirdConfig
    decoder_start_token_id: int | None = None
    pad_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    extra: dict = field(default_factory=dict)  # other top-level config.json fields, kept as read

    @classmethod
    def from_dict(cls, d: dict) -> BigBirdEncoderDecoderConfig:
        if d.get("model_type") != "encoder-decoder" or not isinstance(d.get("encoder"), dict) \
                or not isinstance(d.get("decoder"), dict):
            raise ValueError("not an encoder-decoder config: expected model_type 'encoder-decoder' with 'encoder' and "
                             f"'decoder' sub-configs, got model_type {d.get('model_type')!r}")
        enc, dec = BigBirdConfig.from_dict(d["encoder"]), BigBirdConfig.from_dict(d["decoder"])
        if not (dec.is_decoder and dec.add_cross_attention):
            raise ValueError("the decoder sub-config needs is_decoder=True and add_cross_attention=True")
        rest = {k: v for k, v in d.items() if k not in ("encoder", "decoder", "decoder_start_token_id", "pad_token_id",
                                                        "eos_token_id")}
        return cls(enc, dec, d.get("decoder_start_token_id"), d.get("pad_token_id"), d.get("eos_token_id"), rest)


def _load_part(model: nn.Module, state: dict, what: str, source) -> None:
    """Load ``state`` (keys without the ``encoder.`` / ``decoder.`` prefix) into ``model``, strictly."""
    mapped, _, unexpected = _map_keys(state, model, ())
    tied = model.tied_keys()
    expected = {k: p for k, p in model.state_dict().items() if k not in tied}
    missing = [k for k in expected if k not in mapped]
    bad_shape = [f"{k} checkpoint {tuple(mapped[k].shape)} vs model {tuple(p.shape)}" for k, p in expected.items()
                 if k in mapped and mapped[k].shape != p.shape]
    if missing or unexpected or bad_shape:
        parts = [f"missing {what}.{', '.join(missing)}" if missing else "",
                 f"unexpected {what}.{', '.join(unexpected)}" if unexpected else "",
                 f"mis-shaped {'; '.join(bad_shape)}" if bad_shape else ""]
        raise ValueError(f"cannot load the {what} of {source}: " + "; ".join(p for p in parts if p))
    model.load_state_dict(mapped, strict=False)
    model.tie_weights()


class BigBirdEncoderDecoderModel(nn.Module):
    """BigBird encoder + BigBird decoder with cross-attention (``transformers``' ``EncoderDecoderModel`` layout)."""

    def __init__(self, config: BigBirdEncoderDecoderConfig):
        super().__init__()
        self.config = config
        self.encoder = BigBirdModel(config.encoder)
        self.decoder = BigBirdForCausalLM(config.decoder)
        self.enc_to_dec_proj = None
        if config.encoder.hidden_size != config.decoder.hidden_size:
            self.enc_to_dec_proj = nn.Linear(config.encoder.hidden_size, config.decoder.hidden_size)

    @classmethod
    def from_pretrained(cls, name_or_path, *, dtype=None, device=None, local_files_only: bool | None = None,
                        revision: str | None = None, cache_dir=None) -> BigBirdEncoderDecoderModel:
        """Load a ``transformers`` ``EncoderDecoderModel`` checkpoint of two BigBirds (a directory or a hub id).

        Raises:
            FileNotFoundError: no config or weights. ValueError: not an encoder-decoder of BigBirds, or
                missing / unexpected / mis-shaped keys (named).
        """
        folder = resolve_checkpoint_dir(name_or_path, local_files_only=local_files_only, revision=revision,
                                        cache_dir=cache_dir)
        try:
            d = json.loads((Path(folder) / CONFIG_NAME).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"config file not found: {Path(folder) / CONFIG_NAME}") from None
        config = BigBirdEncoderDecoderConfig.from_dict(d)
        state, source = read_state_dict(folder, _parse_dtype(dtype))
        with torch.device("meta"):
            model = cls(config)
        model.to_empty(device="cpu")
        parts = {"encoder": {}, "decoder": {}, "enc_to_dec_proj": {}}
        for k, v in state.items():
            top, _, rest = k.partition(".")
            if top not in parts:
                raise ValueError(f"cannot load {source}: unexpected key {k} (expected encoder.*, decoder.* or "
                                 "enc_to_dec_proj.*)")
            parts[top][rest] = v
        _load_part(model.encoder, parts["encoder"], "encoder", source)
        _load_part(model.decoder, parts["decoder"], "decoder", source)
        if model.enc_to_dec_proj is not None:
            if set(parts["enc_to_dec_proj"]) != {"weight", "bias"}:
                raise ValueError(f"cannot load {source}: enc_to_dec_proj.weight and .bias are needed (the encoder and "
                                 "decoder widths differ)")
            model.enc_to_dec_proj.load_state_dict(parts["enc_to_dec_proj"])
        elif parts["enc_to_dec_proj"]:
            raise ValueError(f"cannot load {source}: enc_to_dec_proj.* given but the encoder and decoder widths are equal")
        if dtype is not None:
            model.to(_parse_dtype(dtype))
        if device is not None:
            model.to(device)
        return model.eval()

    def save_pretrained(self, save_directory) -> Path:
        """Write ``config.json`` and ``model.safetensors`` as ``transformers``' ``EncoderDecoderModel`` does
        (tied decoder weights stored once); ``EncoderDecoderModel.from_pretrained`` loads the result."""
        from safetensors.torch import save_file

        c = self.config
        d = Path(save_directory)
        d.mkdir(parents=True, exist_ok=True)
        config = {**c.extra, "architectures": ["EncoderDecoderModel"], "model_type": "encoder-decoder",
                  "is_encoder_decoder": True, "encoder": c.encoder.to_dict(), "decoder": c.decoder.to_dict(),
                  "decoder_start_token_id": c.decoder_start_token_id, "pad_token_id": c.pad_token_id}
        if c.eos_token_id is not None:
            config["eos_token_id"] = c.eos_token_id
        (d / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        state = {}
        for prefix, part in (("encoder", self.encoder), ("decoder", self.decoder), ("enc_to_dec_proj", self.enc_to_dec_proj)):
            if part is None:
                continue
            tied = part.tied_keys() if hasattr(part, "tied_keys") else {}
            state.update({f"{prefix}.{k}": v.detach().to("cpu").contiguous() for k, v in part.state_dict().items()
                          if k not in tied})
        save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
        return d

    def encode(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None,
               output_attentions=None, output_hidden_states=None):
        """The encoder output (``BaseModelOutputWithPooling``) and the states the decoder attends to."""
        enc = self.encoder(input_ids, attention_mask, token_type_ids, None, inputs_embeds,
                           output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        states = enc.last_hidden_state
        if self.enc_to_dec_proj is not None:
            states = self.enc_to_dec_proj(states)
        return enc, states

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                encoder_outputs=None, past_key_values=None, inputs_embeds=None, labels=None, use_cache=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, *,
                logits_to_keep: int | torch.Tensor = 0):
        """Encode ``input_ids (B, n)`` (or reuse ``encoder_outputs``) and decode ``decoder_input_ids (B, m)``.

        ``labels (B, m)``: decoder inputs default to them shifted right (``decoder_start_token_id``
        first, -100 replaced by ``pad_token_id``), and the loss is their cross-entropy (-100 ignored).
        Returns a :class:`~bigbird.outputs.Seq2SeqLMOutput`.
        """
        c = self.config
        if encoder_outputs is None:
            enc, states = self.encode(input_ids, attention_mask, None, inputs_embeds, output_attentions,
                                      output_hidden_states)
        else:
            enc = encoder_outputs
            states = enc[0] if not isinstance(enc, torch.Tensor) else enc
            if self.enc_to_dec_proj is not None:
                states = self.enc_to_dec_proj(states)
        if labels is not None and decoder_input_ids is None:
            decoder_input_ids = self.shift_labels(labels)
            if decoder_attention_mask is None:
                decoder_attention_mask = (decoder_input_ids != c.pad_token_id).long()
        dec = self.decoder(decoder_input_ids, attention_mask=decoder_attention_mask, encoder_hidden_states=states,
                           encoder_attention_mask=attention_mask, past_key_values=past_key_values, use_cache=use_cache,
                           output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                           logits_to_keep=logits_to_keep)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(dec.logits.reshape(-1, c.decoder.vocab_size), labels.reshape(-1))
        enc_last = enc.last_hidden_state if hasattr(enc, "last_hidden_state") else states
        res = Seq2SeqLMOutput(loss=loss, logits=dec.logits, past_key_values=dec.past_key_values,
                              decoder_hidden_states=dec.hidden_states, decoder_attentions=dec.attentions,
                              cross_attentions=dec.cross_attentions, encoder_last_hidden_state=enc_last,
                              encoder_hidden_states=getattr(enc, "hidden_states", None),
                              encoder_attentions=getattr(enc, "attentions", None))
        return res.to_tuple() if return_dict is False else res

    def shift_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """``labels (B, m)`` shifted right: ``decoder_start_token_id`` first, -100 replaced by ``pad_token_id``."""
        c = self.config
        if c.decoder_start_token_id is None or c.pad_token_id is None:
            raise ValueError("labels need config.decoder_start_token_id and config.pad_token_id (set them in config.json)")
        shifted = F.pad(labels[:, :-1], (1, 0), value=c.decoder_start_token_id)
        return shifted.masked_fill(shifted == -100, c.pad_token_id)

    @torch.no_grad()
    def generate(self, input_ids=None, attention_mask=None, *, inputs_embeds=None, decoder_start_token_id=None,
                 max_new_tokens: int = 20, eos_token_id=UNSET,
                 pad_token_id=UNSET, **sampling) -> torch.Tensor:
        """Encode once, then decode from ``decoder_start_token_id`` with the cache.

        Returns ``(B, 1 + k)``: the start token and ``k <= max_new_tokens`` new tokens. ``eos_token_id``
        and ``pad_token_id`` default to the checkpoint's (top level, else the decoder's);
        ``**sampling``: ``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``generator``, ``seed``
        (see :meth:`bigbird.generation.GenerationMixin.generate`).
        """
        c = self.config
        start = c.decoder_start_token_id if decoder_start_token_id is None else decoder_start_token_id
        if start is None:
            raise ValueError("generate needs decoder_start_token_id (argument or config.json)")
        if eos_token_id is UNSET:
            eos_token_id = c.eos_token_id if c.eos_token_id is not None else c.decoder.eos_token_id
        if pad_token_id is UNSET:
            pad_token_id = c.pad_token_id if c.pad_token_id is not None else c.decoder.pad_token_id
        _, states = self.encode(input_ids, attention_mask, None, inputs_embeds)
        B = states.shape[0]
        start_ids = torch.full((B, 1), start, dtype=torch.long, device=states.device)
        return self.decoder.generate(start_ids, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                                     pad_token_id=pad_token_id, encoder_hidden_states=states,
                                     encoder_attention_mask=attention_mask, **sampling)
