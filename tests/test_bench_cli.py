"""`bigbird bench attention` and `bigbird bench model`: one vocabulary, results under ./bench-results/<device>,
tables with min / median / max, repetitions and reasons, and a readable PNG (tiny shapes only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bigbird import benchmark
from bigbird.cli import main
from bigbird_kernels import bench

REPO = Path(__file__).resolve().parents[1]
SHARED_OPTIONS = ("--device", "--backends", "--seq-lens", "--dtypes", "--out-dir", "--reps")


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.mark.parametrize("what", ["attention", "model"])
def test_bench_help_shares_one_vocabulary_with_defaults(capsys, what):
    code, out, err = run_cli(capsys, "bench", what, "--help")
    assert code == 0, err
    assert out.startswith(f"usage: bigbird bench {what} ")
    for option in SHARED_OPTIONS:
        assert option in out, option
    assert "--backends NAME [NAME ...]" in out and "--seq-lens S [S ...]" in out
    assert "./bench-results/<device>" in out
    assert "default: float32" in out


@pytest.mark.parametrize("cmd", [
    [sys.executable, "-m", "bigbird.benchmark", "--help"],
    [sys.executable, "-m", "bigbird_kernels.bench", "--help"],
    [sys.executable, "benchmarks/bench_model.py", "--help"],
    [sys.executable, "benchmarks/bench_attention.py", "--help"],
])
def test_module_and_script_entry_points_take_the_same_options(cmd):
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    for option in SHARED_OPTIONS:
        assert option in proc.stdout, option


def test_bench_model_refuses_unknown_backend_by_name(capsys):
    code, _, err = run_cli(capsys, "bench", "model", "--backends", "ours", "nope")
    assert code == 2 and "nope" in err and len(err.strip().splitlines()) == 1


def test_bench_model_refuses_bad_seq_len(capsys):
    code, _, err = run_cli(capsys, "bench", "model", "--seq-lens", 0, "--backends", "ours")
    assert code == 1 and "--seq-lens" in err and len(err.strip().splitlines()) == 1


def test_bench_attention_default_out_dir_is_under_the_current_directory(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "bench", "attention", "--seq-lens", 128, "--heads", 1, "--block-size", 32,
                             "--backends", "reference", "cuda", "--reps", 2)
    assert code == 0, err
    written = tmp_path / "bench-results" / "cpu" / "attention.json"
    assert f"wrote {written}" in out
    recs = {r["backend"]: r for r in json.loads(written.read_text())["records"]}
    ok = recs["reference"]
    assert ok["status"] == "ok" and ok["reps"] == 2 and ok["ms_min"] <= ok["ms"] <= ok["ms_max"]
    row = next(line for line in out.splitlines() if line.startswith("| 128 |"))
    assert "| 2 |" in row  # the repetitions
    assert f"{ok['ms']:.2f} ({ok['ms_min']:.2f}-{ok['ms_max']:.2f})" in row
    assert recs["cuda"]["status"] == "unsupported"
    assert "unsupported: " in row and "block size 32 not supported" in row  # the reason, in the table


def test_bench_model_runs_every_seq_len_into_the_default_out_dir(capsys, tmp_path, monkeypatch):
    pytest.importorskip("transformers")  # it builds the random weights
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "bench", "model", "--layers", 1, "--seq-lens", 256, 512, "--reps", 2,
                             "--warmup", 0, "--backends", "ours", "--dtypes", "float32")
    assert code == 0, err
    written = tmp_path / "bench-results" / "cpu" / "model.json"
    assert f"wrote {written}" in out
    recs = json.loads(written.read_text())["records"]
    assert [(r["backend"], r["S"], r["dtype"]) for r in recs] == [("ours", 256, "float32"), ("ours", 512, "float32")]
    assert all(r["status"] == "ok" and r["reps"] == 2 and r["ms_min"] <= r["ms"] <= r["ms_max"] for r in recs)
    header = next(line for line in out.splitlines() if line.startswith("backend"))
    assert header.split() == ["backend", "pass", "dtype", "B", "S", "reps", "min", "ms", "median", "ms", "max", "ms",
                              "cpu", "ms", "peak", "MiB", "GEMM", "GFLOP/s", "status", "reason"]


def test_model_table_shows_why_a_configuration_did_not_run():
    rec = dict(backend="transformers", dtype="float32", B=1, S=4096, ms=None, peak_mem_bytes=None,
               status="error: exit 1: ImportError: no transformers")
    rec["pass"] = "fwd"
    table = benchmark.format_table({"meta": {}, "records": [rec]})
    row = table.splitlines()[2]
    assert row.split()[:6] == ["transformers", "fwd", "float32", "1", "4096", "-"]
    assert "error" in row and "exit 1: ImportError: no transformers" in row


def _record(backend, S, ms, lo, hi):
    return {"backend": backend, "pass": "fwd", "dtype": "bfloat16", "B": 2, "H": 12, "S": S, "D": 64,
            "block_size": 64, "r": 3, "reps": 7, "ms": ms, "ms_min": lo, "ms_max": hi,
            "peak_mem_bytes": S * 2**12, "status": "ok"}


def test_png_has_plain_ticks_titles_caption_and_error_bars():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.container import ErrorbarContainer

    seq_lens = (1024, 2048, 4096)
    result = {"meta": {"device": "cpu"},
              "records": [_record(b, S, S / 100 * f, S / 110 * f, S / 90 * f)
                          for b, f in (("reference", 1.0), ("sdpa", 3.0)) for S in seq_lens]}
    fig = bench.results_figure(result)
    fig.canvas.draw()
    time_ax, mem_ax = fig.axes
    assert time_ax.get_title() == "time: fwd, bfloat16" and mem_ax.get_title() == "peak memory: fwd, bfloat16"
    for ax in (time_ax, mem_ax):
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1024", "2048", "4096"]
    bars = [c for c in time_ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2
    caption = " ".join(t.get_text() for t in fig.texts)
    for part in ("B=2", "H=12", "D=64", "block=64", "r=3", "dtype=bfloat16", "device=cpu", "reps=7"):
        assert part in caption, part


# ------------------------------------------------------------------------------------------------
# `bigbird info`: what each backend takes, from the backends' own capability records
# ------------------------------------------------------------------------------------------------

DTYPES = ("float16", "bfloat16", "float32", "float64")


def _refuses(name: str, what: str, **inputs) -> bool:
    """Whether backend ``name`` gives a reason about ``what`` ("dtype", "head", "block") for these inputs."""
    import torch

    from bigbird_kernels.dispatch import AttentionInputs, not_supported_reasons

    fields = dict(device=torch.device("cuda"), dtype=torch.bfloat16, batch=1, num_heads=2, seq_len=1024, head_dim=64,
                  block_size=64, num_random_blocks=3, requires_grad=False, has_mask=False, deterministic=False)
    fields.update(inputs)
    return any(r.startswith((f"{what} ", f"{what}_")) for r in not_supported_reasons(name, AttentionInputs(**fields)))


def test_info_capabilities_are_what_the_backends_check():
    import torch

    from bigbird_kernels.info import capability_rows

    rows = capability_rows()
    assert [r[0] for r in rows] == ["cuda", "triton", "reference", "sdpa", "flex"]
    for name, dtypes, head_dims, block_sizes in rows:
        listed = dtypes.split(", ")
        for dtype in DTYPES:
            assert _refuses(name, "dtype", dtype=getattr(torch, dtype)) == (dtype not in listed), (name, dtype)
        for what, column, field in (("head", head_dims, "head_dim"), ("block", block_sizes, "block_size")):
            if column == "any":
                assert not any(_refuses(name, what, **{field: n}) for n in (16, 24, 64, 96, 128)), name
            elif column[0].isdigit():
                sizes = [int(n) for n in column.split(", ")]
                for n in (8, 16, 24, 32, 64, 96, 128, 256):
                    assert _refuses(name, what, **{field: n}) == (n not in sizes), (name, what, n)


def test_bigbird_info_prints_the_capability_table(capsys):
    from bigbird_kernels.info import capability_table

    code, out, err = run_cli(capsys, "info")
    assert code == 0, err
    assert capability_table() in out


def _markdown_table_under(text: str, heading: str) -> list[list[str]] | None:
    """The rows (cells stripped, separator row dropped) of the first Markdown table after ``heading``."""
    lines = text.splitlines()
    if heading not in lines:
        return None
    rows = []
    for line in lines[lines.index(heading) + 1:]:
        if line.startswith("|"):
            cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
        elif rows or line.startswith("#"):
            break
    return rows


def test_readme_backends_table_matches_info():
    from bigbird_kernels.info import capability_rows

    rows = _markdown_table_under((REPO / "README.md").read_text(), "### Backends")
    assert rows is not None, 'README.md has no table under a "### Backends" heading'
    assert rows[0] == ["backend", "dtypes", "head dims", "block sizes"]
    assert rows[1:] == [list(r) for r in capability_rows()]
