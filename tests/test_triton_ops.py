"""The Triton backend's ``torch.library`` ops (``bigbird_kernels/backends/triton/ops.py``) register
without Triton: the kernels are imported only when an op runs, so a machine without Triton still
imports the backend, which then says why it cannot run."""

from __future__ import annotations

import subprocess
import sys

_NO_TRITON = """
import sys
sys.modules["triton"] = None  # any `import triton` now raises ImportError
import torch
from bigbird_kernels.backends import triton as backend
from bigbird_kernels.backends.triton import ops
print(torch.ops.bigbird_kernels.triton_attn_fwd.default, torch.ops.bigbird_kernels.triton_attn_bwd.default)
print(ops.triton_attention.__module__)
print(backend._TRITON_ERROR)
"""


def test_ops_register_without_triton():
    proc = subprocess.run([sys.executable, "-c", _NO_TRITON], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    fwd_bwd, module, error = proc.stdout.strip().splitlines()
    assert fwd_bwd == "bigbird_kernels.triton_attn_fwd.default bigbird_kernels.triton_attn_bwd.default"
    assert module == "bigbird_kernels.backends.triton.ops"
    assert error.startswith("triton is not importable")
