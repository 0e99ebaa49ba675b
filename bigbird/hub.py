"""Finding checkpoint and tokenizer files: a local folder, or a Hugging Face hub id in the hub cache.

Both :mod:`bigbird.config` and :mod:`bigbird.checkpoint` (and :mod:`bigbird.tokenizer`) resolve names
here, so the dependencies point one way: ``hub`` <- ``config`` <- ``checkpoint``. The hub is reached
only through ``huggingface_hub.hf_hub_download`` into its cache (``cache_dir``, else ``HF_HUB_CACHE`` /
``HF_HOME``), offline when ``local_files_only`` or ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` say so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PureWindowsPath

__all__ = [
    "CONFIG_NAME",
    "SAFE_WEIGHTS_NAME",
    "SAFE_WEIGHTS_INDEX_NAME",
    "WEIGHTS_NAME",
    "WEIGHTS_INDEX_NAME",
    "WEIGHTS_NAMES",
    "looks_like_local_path",
    "resolve_checkpoint_dir",
    "resolve_hub_files",
    "read_index",
    "refuse_push_to_hub",
]

CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
WEIGHTS_NAMES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)




def offline_mode() -> bool:
    """Whether the environment forbids hub downloads (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set
    to 1 / on / yes / true)."""
    return any(os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _default_cache_dir() -> Path:
    """The hub cache as the environment says *now* (HF_HUB_CACHE, else HF_HOME/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "huggingface")
    return Path(home).expanduser() / "hub"


def looks_like_local_path(name: str) -> bool:
    """Whether ``name`` can only mean a local path, never a Hugging Face hub id (``org/name``).

    True when it starts with ``.``, ``~`` or ``/``, contains a backslash, is not a valid hub id
    (``huggingface_hub.utils.validate_repo_id``: e.g. more than one ``/``, a trailing ``/``, a drive
    ``C:``, spaces), or its first component is an existing local directory (``runs/ckpt-1`` with
    ``runs/`` present). Such a name that does not exist is reported as a missing directory at once,
    with no hub look-up.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.startswith((".", "~", "/")) or "\\" in name:
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return "/" in name and os.path.isdir(name.split("/", 1)[0])


def resolve_checkpoint_dir(name_or_path, *, local_files_only=None, revision=None, cache_dir=None,
                           config_only: bool = False) -> Path:
    """A local folder holding ``config.json`` (and, unless ``config_only``, the weights).

    ``name_or_path`` is a directory, or a hub id resolved with ``huggingface_hub.hf_hub_download`` in
    the hub cache (``cache_dir``, else ``HF_HUB_CACHE`` / ``HF_HOME``). ``local_files_only`` defaults to
    True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set.

    Raises:
        FileNotFoundError: a directory without ``config.json`` or weights; a name that looks like a
            local path (:func:`looks_like_local_path`: ``./x``, ``~/x``, ``x/y/z``, ``dir/typo`` where
            ``dir`` exists, ...) and does not exist, at once (no hub look-up); a hub id that cannot be
            fetched or is not cached (offline). Each names the directory or the hub repo.
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
    if path.exists():
        raise FileNotFoundError(f"checkpoint path {path} is not a directory")
    if looks_like_local_path(name):
        raise FileNotFoundError(f"checkpoint directory {name!r} does not exist ({path.absolute()}); a name that "
                                "looks like a path is never looked up on the Hugging Face hub")
    return _download(name, local_files_only=local_files_only, revision=revision, cache_dir=cache_dir,
                      config_only=config_only)


def _hub_fetcher(repo_id: str, *, local_files_only, revision, cache_dir):
    """``(fetch, where)``: ``fetch(filename)`` downloads one file of ``repo_id`` into the hub cache (or
    finds it there offline) and returns its path; ``where`` describes the repo for error messages."""
    from huggingface_hub import hf_hub_download

    if local_files_only is None:
        local_files_only = offline_mode()
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    where = f"hub repo {repo_id!r} (revision {revision or 'main'}, cache {cache_dir}" + (
        ", offline)" if local_files_only else ")")

    def fetch(filename):
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir,
                                    local_files_only=local_files_only, library_name="bigbird-kernels"))

    return fetch, where


def _download(repo_id: str, *, local_files_only, revision, cache_dir, config_only) -> Path:
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    fetch, where = _hub_fetcher(repo_id, local_files_only=local_files_only, revision=revision, cache_dir=cache_dir)
    try:
        cfg = fetch(CONFIG_NAME)
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
            p = fetch(w)
        except (EntryNotFoundError, FileNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
            errors.append(f"{w}: {type(e).__name__}")
            continue
        if w.endswith(".index.json"):
            for shard in sorted(set(read_index(p).values())):
                fetch(shard)
        return p.parent
    raise FileNotFoundError(f"no weights found for {where}: looked for {', '.join(WEIGHTS_NAMES)} ({'; '.join(errors)})")


def resolve_hub_files(repo_id: str, required: tuple[str, ...], optional: tuple[str, ...] = (), *,
                      local_files_only=None, revision=None, cache_dir=None) -> Path:
    """The hub-cache snapshot folder of ``repo_id`` holding at least one of ``required`` (and whichever
    of ``optional`` the repo has), fetched as :func:`resolve_checkpoint_dir` fetches checkpoints.

    Raises:
        FileNotFoundError: none of ``required`` can be fetched (or found in the cache offline); names
            the hub repo and every file looked for.
    """
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    fetch, where = _hub_fetcher(repo_id, local_files_only=local_files_only, revision=revision, cache_dir=cache_dir)
    found, errors = {}, []
    for name in (*required, *optional):
        try:
            found[name] = fetch(name)
        except (EntryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:  # absent, not cached offline, ...
            errors.append(f"{name}: {type(e).__name__}")
    if not any(name in found for name in required):
        raise FileNotFoundError(f"no {' or '.join(required)} found for {where} ({'; '.join(errors)})")
    return next(iter(found.values())).parent


def read_index(path: Path) -> dict[str, str]:
    """The ``weight_map`` of a shard index: ``{tensor key: shard file name}``.

    Raises ``ValueError`` naming the index when it is not JSON, has no ``weight_map`` object, or a
    shard name is not a string, or not a relative path inside the checkpoint folder (an absolute path,
    a drive or a ``..`` component, with ``/`` or ``\\`` separators, is refused: the index must not make
    us read, fetch or delete a file elsewhere).
    """
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"corrupt shard index {path}: {type(e).__name__}: {e}") from None
    for key, shard in weight_map.items():
        if not isinstance(shard, str):
            raise ValueError(f"corrupt shard index {path}: the shard of {key!r} is {shard!r}, not a file name")
        as_windows = PureWindowsPath(shard)  # both separators; catches "/x", "C:x", "\\\\host\\x" too
        if not as_windows.parts or as_windows.drive or as_windows.root or ".." in as_windows.parts:
            raise ValueError(f"shard index {path} names {shard!r} for {key!r}: shard files must lie inside "
                             "the checkpoint folder (relative names, no '..')")
    return weight_map


def refuse_push_to_hub(what: str):
    """Raise ``NotImplementedError`` for ``push_to_hub`` on a ``what`` ("model", "config", "tokenizer").

    This package never uploads (it runs offline); the message says how to publish with ``huggingface_hub``.
    """
    raise NotImplementedError(
        f"push_to_hub is not supported: bigbird-kernels never uploads. Save the {what} with "
        f"{what}.save_pretrained(folder), then upload the folder with huggingface_hub: "
        "HfApi().upload_folder(repo_id='org/name', folder_path=folder)"
    )
