"""``python -m bigbird_kernels.info``: versions, build, and each backend's availability (or why not)."""

from __future__ import annotations

import platform
import sys

import torch

from .dispatch import (
    SELF_CHECKED,
    AttentionInputs,
    BACKEND_NAMES,
    not_supported_reasons,
    self_check_enabled,
    self_check_failure,
)


def _version(mod: str) -> str:
    try:
        return __import__(mod).__version__
    except Exception as e:
        return f"not installed ({type(e).__name__})"


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
    return "\n".join(lines)


def main() -> int:
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
