"""Compile every Triton kernel configuration for sm_80 and sm_90 without a GPU (``triton.compile`` with a
``GPUTarget``) and check shared memory against the device limits. Runs in a subprocess without
TRITON_INTERPRET (conftest sets it for this process; the interpreter replaces the kernels)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]


def _run(args, tmp_path, timeout):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out_json = tmp_path / "compile.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bigbird_kernels.backends.triton.compile_check", "--json", str(out_json), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )
    print(proc.stdout[-20000:])
    print(proc.stderr[-5000:])
    assert proc.returncode == 0, f"compile check failed (rc={proc.returncode}):\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
    return json.loads(out_json.read_text())


def test_every_config_compiles_for_sm80_and_sm90_within_shared_memory(tmp_path):
    """Deduplicated by default (about 1.5 minutes on 2 cores); BIGBIRD_COMPILE_CHECK_FULL=1 compiles all 351
    configurations for both targets (about 3 minutes)."""
    full = ["--full"] if os.environ.get("BIGBIRD_COMPILE_CHECK_FULL") == "1" else []
    data = _run(["--targets", "80,90", "--jobs", "2", *full], tmp_path, timeout=1800)
    results, summary = data["results"], data["summary"]
    assert summary["n_failed"] == 0
    limits = {80: 163 * 1024, 90: 227 * 1024}
    for r in results:
        assert r["ok"], r
        assert r["stage"] in ("cubin", "ptx"), r
        assert 0 <= r["shared"] <= limits[r["cc"]], r
    # coverage: every (kernel, dtype, head dim, block size) the launchers can use was compiled for some
    # target, and every group (same tiles, warps, stages, element size) for each target
    want = {re.sub(r",mask=\d", "", n) for n in data["all_configs"]}
    got = {re.sub(r",mask=\d", "", r["name"]) for r in results}
    assert want == got, sorted(want - got)[:10]
    for cc in (80, 90):
        assert any(r["cc"] == cc for r in results)


def test_ptx_only_fallback(tmp_path):
    """The path used where ptxas is missing: compile to PTX and read shared memory there."""
    data = _run(["--targets", "90", "--jobs", "1", "--ptx-only", "--filter", "_bigbird_attn_fwd_kernel[bf16,D=64,bs=64"],
                tmp_path, timeout=600)
    assert data["results"] and all(r["ok"] and r["stage"] == "ptx" and r["shared"] > 0 for r in data["results"])
