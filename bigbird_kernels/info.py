"""``python -m bigbird_kernels.info``: versions, build, and each backend's availability (or why not)."""

from __future__ import annotations

import platform
import sys

import torch

from .dispatch import (
    SELF_CHECKED,
    AttentionInputs,
    BACKEND_NAMES,
    get_backend,
    not_supported_reasons,
    self_check_enabled,
    self_check_failure,
)


def _version(mod: str) -> str:
    try:
        return __import__(mod).__version__
    except Exception as e:
        return f"not installed ({type(e).__name__})"


def _describe(value) -> str:
    """``float16, bfloat16`` for dtypes, ``64, 128`` for sizes; a rule (a string) as it is."""
    if isinstance(value, str):
        return value
    return ", ".join(str(v).replace("torch.", "") for v in value)


def capability_rows() -> list[tuple[str, str, str, str]]:
    """``(backend, dtypes, head dims, block sizes)`` per backend, from each backend's ``capabilities``
    record (the values its ``not_supported_reasons`` checks); a backend that cannot be imported here
    says so in every column."""
    rows = []
    for name in BACKEND_NAMES:
        backend = get_backend(name)
        if backend is None:
            rows.append((name, *["(not importable here)"] * 3))
            continue
        caps = backend.capabilities
        rows.append((name, _describe(caps["dtypes"]), _describe(caps["head_dims"]), _describe(caps["block_sizes"])))
    return rows


def capability_table() -> str:
    """:func:`capability_rows` as a Markdown table (the README's "### Backends" table is this one)."""
    lines = ["| backend | dtypes | head dims | block sizes |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in capability_rows()]
    return "\n".join(lines)


def report() -> str:
    """A human-readable report of the environment and the backends."""
    from . import __version__

    lines = [
        f"bigbird-kernels {__version__}",
        f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"triton {_version('triton')}, transformers {_version('transformers')}",
    ]
    if torch.cuda.is_available():
        cap = torch.cuda.get_device_capability()
        lines.append(f"device: {torch.cuda.get_device_name()} (sm_{cap[0]}{cap[1]})")
        device, dtype = torch.device("cuda"), torch.bfloat16
    else:
        lines.append("device: CPU only (torch sees no CUDA device)")
        device, dtype = torch.device("cpu"), torch.float32
    try:
        from . import _C  # noqa: F401

        lines.append("CUDA extension: built (bigbird_kernels._C)")
    except ImportError as e:
        lines.append(f"CUDA extension: not built ({e})")
    probe = AttentionInputs(device=device, dtype=dtype, batch=1, num_heads=12, seq_len=4096, head_dim=64,
                            block_size=64, num_random_blocks=3, requires_grad=True, has_mask=True,
                            deterministic=False)
    lines.append(f"backends for {device.type} {str(dtype).replace('torch.', '')}, D=64, block 64, with grad:")
    for name in BACKEND_NAMES:
        reasons = not_supported_reasons(name, probe)
        if not reasons and name in SELF_CHECKED:
            failure = self_check_failure(name, probe)
            reasons = [failure] if failure else []
            status = "available, self-check " + ("passed" if self_check_enabled() else "off (BIGBIRD_SELF_CHECK=0)")
        else:
            status = "available"
        lines.append(f"  {name:<10} {status if not reasons else 'unavailable: ' + '; '.join(reasons)}")
    lines += ["what each backend takes (on a device it runs on):", capability_table()]
    return "\n".join(lines)


def main() -> int:
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
