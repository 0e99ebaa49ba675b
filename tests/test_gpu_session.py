"""The one-command GPU session (benchmarks/gpu_session.sh), rehearsed on the CPU with ``--dry-run``:
every phase's plumbing runs (argument parsing, child processes, time limits, result files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("smoke", "gpu_tests", "sanitizer", "attention", "model")


def _session(out: Path, *args, timeout=900):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "OUT")}
    env["PYTHON"] = sys.executable
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh"), "--dry-run", "--out", str(out), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_dry_run_writes_every_phase(tmp_path):
    proc = _session(tmp_path)
    print(proc.stdout[-5000:], proc.stderr[-5000:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["1_smoke.json", "2_gpu_tests.json", "3_sanitizer.json", "4_attention.json", "5_model.json",
                     "logs.tar.gz", "session.json"]  # at most 8 files, no folders
    session = json.loads((tmp_path / "session.json").read_text())
    assert [p["phase"] for p in session["phases"]] == list(PHASES)
    assert all(p["status"] in ("ok", "skipped") for p in session["phases"]), session["phases"]
    assert session["meta"]["dry_run"] is True and session["meta"]["device"]
    results = {p: json.loads((tmp_path / f"{i + 1}_{p}.json").read_text()) for i, p in enumerate(PHASES)}
    for phase, data in results.items():
        assert data["meta"]["device"], phase
    smoke = {r["backend"]: r for r in results["smoke"]["records"]}
    assert smoke["reference"]["status"] == "ok" and smoke["reference"]["pass"] == "fwd+bwd"
    assert smoke["triton"]["status"] == "skipped" and "CUDA" in smoke["triton"]["reason"]
    assert "bigbird-kernels" in results["smoke"]["info"]
    assert results["gpu_tests"]["counts"]["skipped"] > 0 and results["gpu_tests"]["tests"]
    att = results["attention"]["records"]
    assert {(r["S"], r["pass"]) for r in att} == {(128, "fwd"), (128, "bwd"), (256, "fwd"), (256, "bwd")}
    assert all(r["status"] == "ok" and r["ms"] > 0 for r in att)
    assert results["model"]["status"] in ("ok", "skipped")
    with tarfile.open(tmp_path / "logs.tar.gz") as tar:
        assert {f"logs/{i + 1}_{p}.log" for i, p in enumerate(PHASES)} <= set(tar.getnames())


def test_a_phase_over_its_budget_is_recorded_and_the_next_phase_runs(tmp_path):
    proc = _session(tmp_path, "--only", "smoke,sanitizer", "--timeout", "smoke=0.2", timeout=300)
    assert proc.returncode == 1  # a phase that did not finish fails the session
    session = json.loads((tmp_path / "session.json").read_text())
    assert [(p["phase"], p["status"]) for p in session["phases"]] == [("smoke", "timeout"), ("sanitizer", "skipped")]
    assert json.loads((tmp_path / "1_smoke.json").read_text())["status"] == "timeout"


def test_bad_arguments_are_refused_in_one_line(tmp_path):
    for args, word in ((["--only", "smoke,bogus"], "bogus"), (["--timeout", "smoke=soon"], "PHASE=SECONDS")):
        proc = _session(tmp_path, *args, timeout=120)
        assert proc.returncode == 2 and word in proc.stderr.strip().splitlines()[-1], proc.stderr
