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

Everything else is strict: every missing, unexpected or mis-shaped key is named in one ``ValueError``,
unless the caller allows it (``allow_missing`` patterns: freshly initialised; ``ignore_unexpected``
patterns: dropped). Weights are read from ``model.safetensors`` (or its sharded index), else from
``pytorch_model.bin`` with ``torch.load(weights_only=True)``; nothing else is ever unpickled.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
from pathlib import Path

import torch

from .config import CONFIG_NAME, BigBirdConfig

__all__ = [
    "load_pretrained",
    "save_pretrained",
    "resolve_checkpoint_dir",
    "read_state_dict",
    "WEIGHTS_NAMES",
    "SAFE_WEIGHTS_NAME",
    "WEIGHTS_NAME",
]

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
WEIGHTS_NAMES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)

# buffers some old checkpoints store; never parameters of ours
_IGNORED_BUFFERS = ("*embeddings.position_ids", "*embeddings.token_type_ids")
_BASE_TOP = ("embeddings", "encoder", "pooler")


# --------------------------------------------------------------------------------------------------
# locating files
# --------------------------------------------------------------------------------------------------


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _default_cache_dir() -> Path:
    """The hub cache as the environment says *now* (HF_HUB_CACHE, else HF_HOME/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "huggingface")
    return Path(home).expanduser() / "hub"


def _looks_local(name: str) -> bool:
    return (name.startswith(("/", "./", "../", "~")) or name in (".", "..") or "\\" in name
            or name.count("/") > 1 or os.path.exists(name))


def resolve_checkpoint_dir(name_or_path, *, local_files_only=None, revision=None, cache_dir=None,
                           config_only: bool = False) -> Path:
    """A local folder holding ``config.json`` (and, unless ``config_only``, the weights).

    ``name_or_path`` is a directory, or a hub id resolved with ``huggingface_hub.hf_hub_download`` in
    the hub cache (``cache_dir``, else ``HF_HUB_CACHE`` / ``HF_HOME``). ``local_files_only`` defaults to
    True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set.
    """
    name = os.fspath(name_or_path)
    path = Path(os.path.expanduser(name))
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in checkpoint directory {path}")
        if not config_only and not any((path / w).is_file() for w in WEIGHTS_NAMES):
            raise FileNotFoundError(
                f"no weights in checkpoint directory {path}: looked for {', '.join(WEIGHTS_NAMES)}"
            )
        return path
    if _looks_local(name):
        raise FileNotFoundError(f"checkpoint directory {path} does not exist (looked for {CONFIG_NAME} and "
                                f"{' or '.join(WEIGHTS_NAMES)} in it)")
    return _download(name, local_files_only=local_files_only, revision=revision, cache_dir=cache_dir,
                      config_only=config_only)


def _download(repo_id: str, *, local_files_only, revision, cache_dir, config_only) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    if local_files_only is None:
        local_files_only = _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    where = f"hub repo {repo_id!r} (revision {revision or 'main'}, cache {cache_dir}" + (
        ", offline)" if local_files_only else ")")

    def fetch(filename):
        return hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir,
                               local_files_only=local_files_only, library_name="bigbird-kernels")

    try:
        cfg = Path(fetch(CONFIG_NAME))
    except (EntryNotFoundError, FileNotFoundError) as e:
        raise FileNotFoundError(f"{CONFIG_NAME} not found for {where}: {type(e).__name__}: {e}") from None
    except (HfHubHTTPError, OSError, ValueError) as e:  # repo/revision not found, no network, ...
        raise FileNotFoundError(f"cannot fetch {CONFIG_NAME} of {where}: {type(e).__name__}: {e}") from None
    folder = cfg.parent
    if config_only:
        return folder
    errors = []
    for w in WEIGHTS_NAMES:
        try:
            p = Path(fetch(w))
        except (EntryNotFoundError, FileNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
            errors.append(f"{w}: {type(e).__name__}")
            continue
        if w.endswith(".index.json"):
            for shard in sorted(set(_read_index(p).values())):
                fetch(shard)
        return p.parent
    raise FileNotFoundError(f"no weights found for {where}: looked for {', '.join(WEIGHTS_NAMES)} ({'; '.join(errors)})")


# --------------------------------------------------------------------------------------------------
# reading weights
# --------------------------------------------------------------------------------------------------


def _read_index(path: Path) -> dict[str, str]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
        return weight_map
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"corrupt shard index {path}: {type(e).__name__}: {e}") from None


_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _load_safetensors(path: Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file into fresh CPU tensors, one tensor at a time.

    The bytes of each tensor are read straight into its storage (no memory map, no second copy), so
    loading costs the size of the weights and nothing more; floating tensors are cast to ``dtype``
    on the way when given. Any inconsistency raises ``ValueError`` naming the file.
    """
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if sys.byteorder != "little":  # safetensors data are little-endian: let the library convert
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except Exception as e:
            raise ValueError(f"corrupt or unreadable safetensors file {path}: {type(e).__name__}: {e}") from None
        return {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in state.items()}
    size = path.stat().st_size

    def corrupt(why):
        return ValueError(f"corrupt or unreadable safetensors file {path}: {why}")

    out = {}
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise corrupt("file shorter than the 8-byte header length")
        n = int.from_bytes(head, "little")
        if n <= 0 or 8 + n > size:
            raise corrupt(f"header length {n} does not fit in a file of {size} bytes")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise corrupt(f"header is not JSON ({e})") from None
        if not isinstance(header, dict):
            raise corrupt("header is not a JSON object")
        header.pop("__metadata__", None)
        base = 8 + n
        entries = []
        for name, info in header.items():
            try:
                st_dtype, shape, (begin, end) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
                tdtype = _ST_DTYPES[st_dtype]
            except (KeyError, TypeError, ValueError) as e:
                raise corrupt(f"bad entry for tensor {name!r} ({type(e).__name__}: {e})") from None
            numel = 1
            for d in shape:
                if d < 0:
                    raise corrupt(f"negative dimension in tensor {name!r}")
                numel *= d
            nbytes = numel * torch.empty((), dtype=tdtype).element_size()
            if not (isinstance(begin, int) and isinstance(end, int)) or end - begin != nbytes or begin < 0 \
                    or base + end > size:
                raise corrupt(f"tensor {name!r} ({st_dtype} {shape}) has data offsets {[begin, end]} that do not "
                              f"match its size {nbytes} or lie beyond the end of the file ({size} bytes)")
            entries.append((begin, name, tdtype, shape, nbytes))
        for begin, name, tdtype, shape, nbytes in sorted(entries, key=lambda e: e[0]):
            t = torch.empty(shape, dtype=tdtype)
            if nbytes:
                f.seek(base + begin)
                buf = memoryview(t.reshape(-1).view(torch.uint8).numpy())
                got = f.readinto(buf)
                if got != nbytes:
                    raise corrupt(f"truncated data for tensor {name!r}")
            if dtype is not None and t.is_floating_point() and t.dtype != dtype:
                t = t.to(dtype)
            out[name] = t
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

    Floating tensors are cast to ``dtype`` when given.
    """
    folder = Path(folder)
    if (folder / SAFE_WEIGHTS_NAME).is_file():
        return _load_safetensors(folder / SAFE_WEIGHTS_NAME, dtype), folder / SAFE_WEIGHTS_NAME
    for index_name, loader in ((SAFE_WEIGHTS_INDEX_NAME, _load_safetensors), (WEIGHTS_INDEX_NAME, _load_bin)):
        if (folder / index_name).is_file():
            state = {}
            weight_map = _read_index(folder / index_name)
            for shard in sorted(set(weight_map.values())):
                state.update(loader(folder / shard, dtype))
            return state, folder / index_name
    if (folder / WEIGHTS_NAME).is_file():
        return _load_bin(folder / WEIGHTS_NAME, dtype), folder / WEIGHTS_NAME
    raise FileNotFoundError(f"no weights in checkpoint directory {folder}: looked for {', '.join(WEIGHTS_NAMES)}")


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


def load_pretrained(cls, name_or_path, *, config=None, dtype=None, device=None, local_files_only=None,
                    revision=None, cache_dir=None, allow_missing=(), ignore_unexpected=(),
                    output_loading_info=False, config_overrides=None):
    """Implementation of :meth:`BigBirdPreTrainedModel.from_pretrained` (see there)."""
    if isinstance(allow_missing, str):
        allow_missing = (allow_missing,)
    if isinstance(ignore_unexpected, str):
        ignore_unexpected = (ignore_unexpected,)
    dtype = _parse_dtype(dtype)
    config_overrides = dict(config_overrides or {})
    model_kwargs = {k: config_overrides.pop(k) for k in ("add_pooling_layer",) if k in config_overrides}
    folder = resolve_checkpoint_dir(name_or_path, local_files_only=local_files_only, revision=revision,
                                    cache_dir=cache_dir)
    if config is None:
        config = BigBirdConfig.from_json_file(folder / CONFIG_NAME, **config_overrides)
    elif config_overrides:
        config = config.copy(**config_overrides)
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
    to_init = [k for k in missing if _matches(k, allow_missing)]
    to_init += [k for k, _, _ in mismatched if _matches(k, allow_missing)]
    bad_missing = [k for k in missing if k not in to_init]
    bad_shape = [m for m in mismatched if m[0] not in to_init]
    # a key of a head we re-initialise may also appear as an unexpected checkpoint key: drop it
    bad_unexpected = [k for k in unexpected if not _matches(k, allow_missing)]
    dropped += [k for k in unexpected if k not in bad_unexpected]
    if bad_missing or bad_shape or bad_unexpected:
        lines = [f"cannot load {source} into {cls.__name__}:"]
        if bad_missing:
            lines.append(f"  missing keys ({len(bad_missing)}): {', '.join(bad_missing)}")
        if bad_unexpected:
            lines.append(f"  unexpected keys ({len(bad_unexpected)}): {', '.join(bad_unexpected)}")
        if bad_shape:
            lines.append(f"  mis-shaped keys ({len(bad_shape)}): "
                         + ", ".join(f"{k} checkpoint {a} vs model {b}" for k, a, b in bad_shape))
        hint = sorted({k.split(".")[0] + ".*" for k in bad_missing + [m[0] for m in bad_shape]})
        if hint:
            lines.append(f"  to initialise missing or mis-shaped weights freshly, pass allow_missing={tuple(hint)!r} "
                         "(or narrower patterns)")
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
    """Write ``config.json`` + ``model.safetensors`` (or ``pytorch_model.bin``); tied copies stored once."""
    d = Path(save_directory)
    d.mkdir(parents=True, exist_ok=True)
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
    config.save_pretrained(d)
    for stale in WEIGHTS_NAMES:  # never leave weights of an older save next to the new ones
        if (d / stale).exists():
            (d / stale).unlink()
    if safe_serialization:
        from safetensors.torch import save_file

        # break storage sharing between distinct keys (safetensors refuses shared storages)
        seen = set()
        for k, v in state.items():
            ptr = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
            if v.numel() and ptr in seen:
                state[k] = v.clone()
            seen.add(ptr)
        save_file(state, str(d / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
    else:
        torch.save(state, d / WEIGHTS_NAME)
    return d
