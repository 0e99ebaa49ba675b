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
    # coverage: every (kernel, element type, head dim, block size) the launchers can use was compiled for
    # some target (fp16 and bf16 have the same tiles: one of them per target), and every group (same
    # tiles, warps, stages, element size) for each target
    def key(name):
        return re.sub(r"(bf|fp)16", "16-bit", re.sub(r",mask=\d", "", name))

    want = {key(c["name"]) for c in data["all_configs"]}
    got = {key(r["name"]) for r in results}
    assert want == got, sorted(want - got)[:10]
    for cc in (80, 90):
        assert any(r["cc"] == cc for r in results)


def test_ptx_only_fallback(tmp_path):
    """The path used where ptxas is missing: compile to PTX and read shared memory there."""
    data = _run(["--targets", "90", "--jobs", "1", "--ptx-only", "--filter", "_bigbird_attn_fwd_kernel[bf16,D=64,bs=64"],
                tmp_path, timeout=600)
    assert data["results"] and all(r["ok"] and r["stage"] == "ptx" and r["shared"] > 0 for r in data["results"])


def test_sm90_tensor_core_work_is_not_duplicated_and_nothing_spills(tmp_path):
    """Every bf16 configuration the launchers can choose on sm_90 (fp16 compiles to the same code, with
    and without mask), from its TTGIR / PTX / ``ptxas -v``: no register spills; shared memory within
    the limit; the D=64 forward (block 64) fits at least two CTAs per SM; every dot of 64 rows or more
    runs on wgmma (MMAv3); no two warps compute the same MMA (M >= 16 * warpsPerCTA[0]); the tensor-core FLOPs
    the PTX issues equal the useful FLOPs of the dots. Prints the table of figures."""
    data = _run(["--targets", "90", "--jobs", "2", "--full", "--static", "--filter", "bf16"], tmp_path, timeout=1800)
    results = data["results"]
    want = {c["name"] for c in data["all_configs"] if "bf16" in c["name"] and 90 in c["archs"]}
    assert {r["name"] for r in results} == want
    bad = []
    for r in results:
        if r["stage"] != "cubin" or r.get("registers") is None:
            pytest.skip("ptxas is needed for the register and spill figures")
        problems = []
        if r["spill_bytes"]:
            problems.append(f"spills {r['spill_bytes']} B")
        if not r["no_duplicate"]:
            problems.append(f"duplicated MMA: {r['dots']}")
        if r["issued_flops"] != r["useful_flops"]:
            problems.append(f"tensor-core FLOPs issued {r['issued_flops']} != useful {r['useful_flops']}")
        if any(int(d.split("x")[0]) >= 64 and " v3 " not in d for d in r["dots"]):
            problems.append(f"a 64-row dot without wgmma: {r['dots']}")
        if r["name"].startswith("_bigbird_attn_fwd_kernel[bf16,D=64,bs=64,") and r["ctas_per_sm"] < 2:
            problems.append(f"{r['ctas_per_sm']} CTA per SM")
        if problems:
            bad.append(f"{r['name']}: {'; '.join(problems)}")
    assert not bad, "\n".join(bad)
