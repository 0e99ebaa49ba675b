"""Where batch inference runs and what it loads: device, dtype, attention backend, the model folder
(a local directory or a hub id) and its tokenizer."""

from __future__ import annotations

from pathlib import Path

from .errors import InputError

__all__ = ["resolve_device", "resolve_dtype", "check_backend", "resolve_model_dir", "load_tokenizer"]

_TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def resolve_device(name: str = "auto", local_rank: int | None = None):
    """A ``torch.device`` from ``auto``/``cpu``/``cuda``/``cuda:N`` (``cuda`` under torchrun: the
    local rank's GPU)."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {name!r}; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r} asked for, but torch sees no CUDA device")
        if device.index is None:
            device = torch.device("cuda", local_rank or 0)
        if device.index >= torch.cuda.device_count():
            raise InputError(f"device {str(device)!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
    elif device.type != "cpu":
        raise InputError(f"device type {device.type!r} is not supported; expected cpu or cuda")
    return device


def resolve_dtype(name: str, device):
    """``float32``/``float16``/``bfloat16`` (also ``fp32``/``fp16``/``bf16``); ``auto`` is bfloat16
    on a GPU that supports it and float32 otherwise."""
    import torch

    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16", "float": "float32"}
    name = aliases.get(name, name)
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in ("float32", "float16", "bfloat16"):
        raise InputError(f"unknown dtype {name!r}; expected auto, float32, float16 or bfloat16")
    return getattr(torch, name)


def check_backend(name: str, device, dtype, head_dim: int = 64, block_size: int = 64, num_random_blocks: int = 3) -> str:
    """Validate an attention backend name (``auto`` or a known backend able to run on ``device``
    and ``dtype``); returns the name."""
    from bigbird_kernels.dispatch import BACKEND_NAMES, AttentionInputs, not_supported_reasons

    if name == "auto":
        return name
    if name not in BACKEND_NAMES:
        raise InputError(f"unknown backend {name!r}; expected auto, {', '.join(BACKEND_NAMES)}")
    probe = AttentionInputs(device=device, dtype=dtype, batch=1, num_heads=1, seq_len=16 * block_size,
                            head_dim=head_dim, block_size=block_size, num_random_blocks=num_random_blocks,
                            requires_grad=False, has_mask=True, deterministic=False)
    reasons = not_supported_reasons(name, probe)
    if reasons:
        raise InputError(f"backend {name!r} cannot run here ({device.type}, {str(dtype).replace('torch.', '')}): "
                         + "; ".join(reasons))
    return name


def resolve_model_dir(name: str, *, need_weights: bool = True, revision: str | None = None) -> tuple[Path, Path]:
    """The local folders ``(checkpoint, tokenizer)`` of ``--model``: an existing directory holding a
    checkpoint and its tokenizer (the same folder twice), or a hub id whose files are fetched into --
    or, offline, found in -- the Hugging Face cache.

    Raises :class:`InputError` for a missing path, a folder without a checkpoint, or a hub id that
    cannot be fetched (e.g. not cached while ``HF_HUB_OFFLINE=1``).
    """
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir():
            raise InputError(f"--model {name!r} is a file; expected a checkpoint directory or a hub id")
        if need_weights:
            if not (p / "config.json").is_file():
                raise InputError(f"directory {name!r} holds no checkpoint (no config.json)")
            if not any((p / w).is_file() for w in _WEIGHT_FILES):
                raise InputError(f"directory {name!r} holds no checkpoint weights (no model.safetensors or "
                                 "pytorch_model.bin)")
        elif not any((p / t).is_file() for t in _TOKENIZER_FILES[:2]):
            raise InputError(f"directory {name!r} holds no tokenizer (no tokenizer.json or spiece.model)")
        return p, p
    from ..hub import looks_like_local_path

    if looks_like_local_path(name):  # never looked up on the hub
        raise InputError(f"model directory {name!r} does not exist")
    return _fetch_from_hub(name, need_weights=need_weights, revision=revision)


def _fetch_from_hub(name: str, *, need_weights: bool, revision: str | None) -> tuple[Path, Path]:
    """Tokenizer files (and config + weights) of hub model ``name``; returns their snapshot folders."""
    from ..hub import offline_mode, resolve_checkpoint_dir, resolve_hub_files

    offline = offline_mode()

    def fail(e: Exception) -> InputError:
        if offline:
            return InputError(f"model {name!r} is not a local directory and not in the Hugging Face cache "
                              "(HF_HUB_OFFLINE is set, so it cannot be downloaded)")
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return InputError(f"cannot fetch model {name!r} from the Hugging Face hub: {first}")

    try:
        folder = resolve_hub_files(name, _TOKENIZER_FILES[:2], _TOKENIZER_FILES[2:], revision=revision,
                                   local_files_only=offline)
        if not need_weights:
            return folder, folder
        return resolve_checkpoint_dir(name, revision=revision, local_files_only=offline), folder
    except (OSError, ValueError) as e:
        raise fail(e) from None


def load_tokenizer(folder: Path):
    """``BigBirdTokenizer.from_pretrained(folder)``, with missing files reported as :class:`InputError`."""
    from ..tokenizer import BigBirdTokenizer

    if not any((folder / t).is_file() for t in _TOKENIZER_FILES[:2]):
        raise InputError(f"{str(folder)!r} holds no tokenizer (no tokenizer.json or spiece.model)")
    return BigBirdTokenizer.from_pretrained(folder)
