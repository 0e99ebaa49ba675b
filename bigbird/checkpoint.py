"""Loading Hugging Face BigBird checkpoints into our classes, and saving ours so ``transformers`` loads them.

Our parameter names *are* Hugging Face's state-dict keys, so the key map is the identity, plus:

* **prefix**: a ``BigBirdModel`` checkpoint (keys ``embeddings.*``, ``encoder.*``, ``pooler.*``) loads
  into a head by adding ``bert.``; a head checkpoint loads into ``BigBirdModel`` by dropping ``bert.``
  (its head keys are then ignored);
* **tied weights**: with ``tie_word_embeddings`` the LM decoder's ``weight`` is the word embedding and
  its ``bias`` is ``cls.predictions.bias``. They are stored once (like ``transformers``); a checkpoint
  that also stores the copies (older ``pytorch_model.bin`` files) is accepted, the copies dropped;
* **ignored keys**: the non-persistent buffers ``embeddings.position_ids`` / ``token_type_ids`` of old
  checkpoints, and keys of heads this class does not have (e.g. ``cls.*`` of a pre-training checkpoint
  loaded into a classifier, ``bert.pooler.*`` loaded into question answering).

Everything else is strict: every missing, unexpected, mis-shaped or wrongly typed (an integer or bool
tensor where a floating weight belongs) key is named in one ``ValueError``, unless the caller allows it
(``allow_missing`` patterns: freshly initialised; ``ignore_unexpected`` patterns: dropped). Weights are
read from ``model.safetensors`` (or its sharded index) with ``safetensors.safe_open``, else from
``pytorch_model.bin`` with ``torch.load(weights_only=True)``; nothing else is ever unpickled. Floating
weights load in one dtype: the ``dtype`` argument, else the config's ``dtype`` (``torch_dtype``), else
that of the first floating tensor of the checkpoint, so ``model.dtype`` holds for every parameter.

Saving is atomic per file (:mod:`bigbird.atomic`): a failed or interrupted save leaves the previous
checkpoint loadable and complete. Folders and hub ids are resolved by :mod:`bigbird.hub`.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import torch

from .config import BigBirdConfig, check_override_keys, read_config_dict
from .hub import (
    CONFIG_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    WEIGHTS_NAMES,
    looks_like_local_path,
    read_index,
    resolve_checkpoint_dir,
    resolve_hub_files,
)

# resolve_checkpoint_dir, resolve_hub_files and looks_like_local_path live in bigbird.hub; they stay
# importable from here, where 0.1.0 had resolve_checkpoint_dir
__all__ = [
    "load_pretrained",
    "save_pretrained",
    "resolve_checkpoint_dir",
    "resolve_hub_files",
    "looks_like_local_path",
    "read_state_dict",
    "WEIGHTS_NAMES",
    "SAFE_WEIGHTS_NAME",
    "WEIGHTS_NAME",
]

# buffers some old checkpoints store; never parameters of ours
_IGNORED_BUFFERS = ("*embeddings.position_ids", "*embeddings.token_type_ids")
_BASE_TOP = ("embeddings", "encoder", "pooler")


# --------------------------------------------------------------------------------------------------
# reading weights
# --------------------------------------------------------------------------------------------------


def _load_safetensors(path: Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file into CPU tensors with ``safetensors.safe_open``.

    The library validates the header (JSON, dtypes, shapes against byte sizes, offsets that overlap,
    leave gaps or run past the end of the file) and memory-maps the file. Each tensor is copied out of
    the map once (cast to ``dtype`` on the way for floating tensors, when given), so the weights never
    depend on the file afterwards: rewriting it in place (as other tools save) cannot change or crash
    a loaded model. Any corrupt file raises ``ValueError`` naming it.
    """
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    out = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                t = f.get_tensor(name)  # a view of the map
                cast = dtype is not None and t.is_floating_point() and t.dtype != dtype
                out[name] = t.to(dtype) if cast else t.clone()
    except Exception as e:
        raise ValueError(f"corrupt or unreadable safetensors file {path}: {type(e).__name__}: {e}") from None
    return out


def _load_bin(path: Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=False)
    except Exception as e:
        raise ValueError(
            f"cannot read {path} with torch.load(weights_only=True) (corrupt, or it needs unsafe unpickling, "
            f"which is never done): {type(e).__name__}: {e}"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    if dtype is not None:
        state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    return state


def read_state_dict(folder, dtype: torch.dtype | None = None) -> tuple[dict[str, torch.Tensor], Path]:
    """The checkpoint tensors of a folder (safetensors first, then ``pytorch_model.bin``) and the file read.

    Floating tensors are cast to ``dtype`` when given; otherwise to the dtype of the first floating
    tensor read (a checkpoint mixing fp16 and fp32 tensors loads in one dtype, as in ``transformers``).
    Integer and bool tensors keep theirs.

    Raises:
        FileNotFoundError: no weights file in ``folder``, or a shard the index names is absent.
        ValueError: a corrupt weights file or shard index (names it).
    """
    folder = Path(folder)
    if (folder / SAFE_WEIGHTS_NAME).is_file():
        state, source = _load_safetensors(folder / SAFE_WEIGHTS_NAME, dtype), folder / SAFE_WEIGHTS_NAME
    elif (folder / SAFE_WEIGHTS_INDEX_NAME).is_file() or (folder / WEIGHTS_INDEX_NAME).is_file():
        safe = (folder / SAFE_WEIGHTS_INDEX_NAME).is_file()
        source = folder / (SAFE_WEIGHTS_INDEX_NAME if safe else WEIGHTS_INDEX_NAME)
        loader = _load_safetensors if safe else _load_bin
        state = {}
        for shard in sorted(set(read_index(source).values())):
            state.update(loader(folder / shard, dtype))
    elif (folder / WEIGHTS_NAME).is_file():
        state, source = _load_bin(folder / WEIGHTS_NAME, dtype), folder / WEIGHTS_NAME
    else:
        raise FileNotFoundError(f"no weights in checkpoint directory {folder}: looked for {', '.join(WEIGHTS_NAMES)}")
    if dtype is None:
        dtype = next((v.dtype for v in state.values() if v.is_floating_point()), None)
        state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    return state, source


# --------------------------------------------------------------------------------------------------
# key matching
# --------------------------------------------------------------------------------------------------


def _matches(key: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def _parse_dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp32": torch.float32, "float32": torch.float32, "float": torch.float32, "fp16": torch.float16,
             "float16": torch.float16, "half": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp64": torch.float64, "float64": torch.float64}
    key = str(dtype).replace("torch.", "").lower()
    if key == "auto":
        return None
    if key not in names:
        raise ValueError(f"unknown dtype {dtype!r}; expected a torch.dtype or one of {sorted(names)}")
    return names[key]


# transformers' attn_implementation values -> our attention backends. "flash_attention_2" asks for
# fused kernels: "auto" picks ours (CUDA, else Triton) on a GPU and the reference on a CPU.
ATTN_IMPLEMENTATIONS = {"eager": "reference", "sdpa": "sdpa", "flash_attention_2": "auto", "flex_attention": "flex"}


def _pick_dtype(dtype, torch_dtype):
    """One dtype from ``dtype`` and its transformers alias ``torch_dtype`` (None or "auto": the checkpoint's)."""
    dtype, torch_dtype = _parse_dtype(dtype), _parse_dtype(torch_dtype)
    if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
        raise ValueError(f"dtype={dtype} and torch_dtype={torch_dtype} disagree; pass one of them")
    return dtype if dtype is not None else torch_dtype


def _pick_device(device, device_map):
    """The one device to load on, from ``device`` and transformers' ``device_map``.

    ``device_map`` may be "auto" (CUDA when available, else the CPU), "cpu", "cuda", "cuda:N", an int
    (a CUDA index) or a ``torch.device``; a dict (layers spread over devices) and the dispatch
    strategies "balanced" / "sequential" are refused: the model loads on one device.
    """
    if device_map is None:
        return device
    if isinstance(device_map, dict):
        raise ValueError("device_map as a dict (layers spread over devices) is not supported: BigBird loads on one "
                         "device; pass device_map='auto', 'cpu', 'cuda', 'cuda:N' or a torch.device")
    spec = device_map
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    elif isinstance(spec, int) and not isinstance(spec, bool) and spec >= 0:
        spec = f"cuda:{spec}"  # an index names a CUDA device, as in transformers
    try:
        target = torch.device(spec)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device_map={device_map!r} is not supported: pass 'auto', 'cpu', 'cuda', 'cuda:N', a CUDA "
                         "index or a torch.device (the model loads on one device)") from None
    if device is not None and torch.device(device) != target:
        raise ValueError(f"device={device!r} and device_map={device_map!r} disagree; pass one of them")
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device_map={device_map!r} asks for CUDA, but torch sees no CUDA device (use 'auto' or 'cpu')")
    return target


def _attention_backend(attn_implementation, config_overrides: dict):
    """Put transformers' ``attn_implementation`` into ``config_overrides`` as our ``attention_backend``."""
    if attn_implementation is None:
        return
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation={attn_implementation!r} is not supported; expected one of "
                         f"{sorted(ATTN_IMPLEMENTATIONS)} (or attention_backend= one of our backends)")
    backend = ATTN_IMPLEMENTATIONS[attn_implementation]
    given = config_overrides.setdefault("attention_backend", backend)
    if given != backend:
        raise ValueError(f"attn_implementation={attn_implementation!r} means attention_backend={backend!r}, but "
                         f"attention_backend={given!r} was passed too; pass one of them")


def _map_keys(state: dict, model, ignore_unexpected) -> tuple[dict, list[str], list[str]]:
    """Rename checkpoint keys to ours. Returns (mapped state, dropped head keys, unexpected keys)."""
    prefix = model.base_model_prefix
    ours = dict(model.state_dict(keep_vars=True))
    tied = model.tied_keys()
    modules = {name for name, _ in model.named_modules()}
    has_pooler = any(k.startswith((f"{prefix}.pooler." if prefix else "pooler.")) for k in ours)

    keys = list(state)
    if prefix and not any(k.startswith(prefix + ".") for k in keys) and any(k.split(".", 1)[0] in _BASE_TOP for k in keys):
        state = {(f"{prefix}.{k}" if k.split(".", 1)[0] in _BASE_TOP else k): v for k, v in state.items()}
    elif not prefix and any(k.startswith("bert.") for k in keys):
        state = {(k[len("bert."):] if k.startswith("bert.") else f"<head>.{k}"): v for k, v in state.items()}

    mapped, dropped, unexpected = {}, [], []
    for k, v in state.items():
        if _matches(k, _IGNORED_BUFFERS) or _matches(k, ignore_unexpected):
            dropped.append(k)
            continue
        if k in tied:  # a stored copy of a tied weight: use it only if the source itself is absent
            src = tied[k]
            if src not in state:
                mapped[src] = v
            dropped.append(k)
            continue
        if k in ours:
            mapped[k] = v
            continue
        in_base = k.startswith(prefix + ".") if prefix else not k.startswith("<head>.")
        base_pooler = k.startswith(f"{prefix}.pooler." if prefix else "pooler.")
        if not in_base and k.replace("<head>.", "").rpartition(".")[0] not in modules:
            dropped.append(k.replace("<head>.", ""))  # a head (or head part) this class does not have
            continue
        if base_pooler and not has_pooler:
            dropped.append(k)
            continue
        unexpected.append(k)
    return mapped, dropped, unexpected


def load_pretrained(cls, name_or_path, *, config=None, dtype=None, torch_dtype=None, device=None, device_map=None,
                    attn_implementation=None, local_files_only=None, revision=None, cache_dir=None,
                    allow_missing=(), ignore_unexpected=(), output_loading_info=False, config_overrides=None):
    """Implementation of :meth:`BigBirdPreTrainedModel.from_pretrained` (see there)."""
    if isinstance(allow_missing, str):
        allow_missing = (allow_missing,)
    if isinstance(ignore_unexpected, str):
        ignore_unexpected = (ignore_unexpected,)
    dtype = _pick_dtype(dtype, torch_dtype)
    device = _pick_device(device, device_map)
    config_overrides = dict(config_overrides or {})
    _attention_backend(attn_implementation, config_overrides)
    model_kwargs = {k: config_overrides.pop(k) for k in ("add_pooling_layer",) if k in config_overrides}
    hub = {"local_files_only": local_files_only, "revision": revision, "cache_dir": cache_dir}
    # keywords are checked against the config before the weights are fetched: a typo fails at once
    if config is None:
        config_dict = read_config_dict(resolve_checkpoint_dir(name_or_path, config_only=True, **hub) / CONFIG_NAME)
    else:
        config_dict = config.to_dict()
    check_override_keys(config_overrides, config_dict, f"{cls.__name__}.from_pretrained")
    folder = resolve_checkpoint_dir(name_or_path, **hub)
    if config is None:
        config = BigBirdConfig.from_dict(config_dict, **config_overrides)
    elif config_overrides:
        config = config.copy(**config_overrides)
    if dtype is None and config.dtype is not None:
        try:
            dtype = _parse_dtype(config.dtype)
        except ValueError:
            raise ValueError(f"config of {folder} has an unknown dtype {config.dtype!r}; pass dtype=...") from None
    state, source = read_state_dict(folder, dtype)

    with torch.device("meta"):
        model = cls(config, **model_kwargs)
    mapped, dropped, unexpected = _map_keys(state, model, ignore_unexpected)
    del state

    tied = model.tied_keys()
    expected = {k: p for k, p in model.state_dict(keep_vars=True).items() if k not in tied}
    missing = [k for k in expected if k not in mapped]
    mismatched = [(k, tuple(mapped[k].shape), tuple(expected[k].shape)) for k in expected
                  if k in mapped and tuple(mapped[k].shape) != tuple(expected[k].shape)]
    # an integer or bool tensor where a floating weight belongs (or the reverse) is never cast
    mistyped = [(k, mapped[k].dtype, expected[k].dtype) for k in expected
                if k in mapped and mapped[k].is_floating_point() != expected[k].is_floating_point()]
    to_init = [k for k in missing if _matches(k, allow_missing)]
    to_init += [k for k, _, _ in mismatched + mistyped if _matches(k, allow_missing) and k not in to_init]
    bad_missing = [k for k in missing if k not in to_init]
    bad_shape = [m for m in mismatched if m[0] not in to_init]
    bad_dtype = [m for m in mistyped if m[0] not in to_init]
    # a key of a head we re-initialise may also appear as an unexpected checkpoint key: drop it
    bad_unexpected = [k for k in unexpected if not _matches(k, allow_missing)]
    dropped += [k for k in unexpected if k not in bad_unexpected]
    if bad_missing or bad_shape or bad_dtype or bad_unexpected:
        lines = [f"cannot load {source} into {cls.__name__}:"]
        if bad_missing:
            lines.append(f"  missing keys ({len(bad_missing)}): {', '.join(bad_missing)}")
        if bad_unexpected:
            lines.append(f"  unexpected keys ({len(bad_unexpected)}): {', '.join(bad_unexpected)}")
        if bad_shape:
            lines.append(f"  mis-shaped keys ({len(bad_shape)}): "
                         + ", ".join(f"{k} checkpoint {a} vs model {b}" for k, a, b in bad_shape))
        if bad_dtype:
            lines.append(f"  wrongly typed keys ({len(bad_dtype)}): "
                         + ", ".join(f"{k} checkpoint {a} vs model {b}" for k, a, b in bad_dtype))
        hint = sorted({k.split(".")[0] + ".*" for k in bad_missing + [m[0] for m in bad_shape + bad_dtype]})
        if hint:
            lines.append("  to initialise missing, mis-shaped or wrongly typed weights freshly, pass "
                         f"allow_missing={tuple(hint)!r} (or narrower patterns)")
        if bad_unexpected:
            lines.append("  to drop unexpected keys, pass ignore_unexpected=(patterns, ...)")
        raise ValueError("\n".join(lines))

    for k in to_init:
        mapped.pop(k, None)
    model.load_state_dict(mapped, strict=False, assign=True)
    ref_dtype = dtype or next((v.dtype for v in mapped.values() if v.is_floating_point()), torch.float32)
    del mapped
    # parameters still on the meta device are the ones we were allowed to initialise
    for name, p in list(model.named_parameters(remove_duplicate=False)):
        if p.device.type != "meta" or name in tied:
            continue
        mod_name, _, attr = name.rpartition(".")
        module = model.get_submodule(mod_name) if mod_name else model
        new = torch.nn.Parameter(torch.empty(p.shape, dtype=ref_dtype), requires_grad=p.requires_grad)
        setattr(module, attr, new)
        model._init_parameter(name, new.data)
    model.tie_weights()
    leftovers = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if leftovers:  # pragma: no cover - would be a bug in the key accounting above
        raise RuntimeError(f"parameters left uninitialised: {leftovers}")
    if device is not None:
        model.to(device)
    model.eval()
    if output_loading_info:
        info = {"missing_keys": sorted(to_init), "unexpected_keys": sorted(k for k in dropped),
                "mismatched_keys": [m for m in mismatched if m[0] in to_init], "source": str(source)}
        return model, info
    return model


# --------------------------------------------------------------------------------------------------
# saving
# --------------------------------------------------------------------------------------------------


def save_pretrained(model, save_directory, *, safe_serialization: bool = True) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (or ``pytorch_model.bin``); tied copies stored once.

    Both files are written to temporary files in ``save_directory`` and swapped in only when both are
    complete (:func:`bigbird.atomic.write_files_atomically`); the weights files of an older save
    (another format, or a sharded index and the shards it names) are removed after that. A save that
    fails or is interrupted leaves the previous checkpoint loadable and complete.

    Raises:
        OSError: a file cannot be written (disk full, no permission; names the file).
    """
    from .atomic import write_files_atomically

    d = Path(save_directory)
    tied = model.tied_keys()
    state = {}
    for k, v in model.state_dict().items():
        if k in tied:
            continue
        state[k] = v.detach().to("cpu").contiguous()
    params = [p for p in model.parameters() if p.is_floating_point()]
    config = model.config.copy(
        architectures=[type(model).__name__],
        dtype=str(params[0].dtype).replace("torch.", "") if params else None,
    )
    config_text = config.to_json_string()
    if safe_serialization:
        from safetensors.torch import save_file

        # break storage sharing between distinct keys (safetensors refuses shared storages)
        seen = set()
        for k, v in state.items():
            ptr = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
            if v.numel() and ptr in seen:
                state[k] = v.clone()
            seen.add(ptr)
        weights_name = SAFE_WEIGHTS_NAME

        def write_weights(tmp):
            save_file(state, str(tmp), metadata={"format": "pt"})
    else:
        weights_name = WEIGHTS_NAME

        def write_weights(tmp):
            torch.save(state, tmp)
    # never leave weights of an older save next to the new ones: other formats, old shards
    stale = list(WEIGHTS_NAMES)
    for index_name in (SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_INDEX_NAME):
        if (d / index_name).is_file():
            try:
                stale += sorted(set(read_index(d / index_name).values()))
            except ValueError:  # an unreadable old index: its shards cannot be known, leave them
                pass
    write_files_atomically(d, {weights_name: write_weights,
                               CONFIG_NAME: lambda tmp: tmp.write_text(config_text, encoding="utf-8")}, stale)
    return d
