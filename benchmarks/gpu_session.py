#!/usr/bin/env python
"""Everything one short GPU session checks, in phases of decreasing value (run by ``gpu_session.sh``).

    bash benchmarks/gpu_session.sh [--dry-run] [--out DIR] [--only PHASE,...] [--timeout PHASE=SECONDS ...]

Phases, each in its own process with its own time limit (a hang costs that phase only), each writing
its results before the next starts:

1. ``smoke``: one forward + backward call of every backend (the first CUDA call JIT-builds the
   extension), against the reference; ``python -m bigbird_kernels.info``.
2. ``gpu_tests``: ``pytest tests/gpu`` (Triton and CUDA backends on the device).
3. ``sanitizer``: ``compute-sanitizer`` memcheck, racecheck and synccheck on one small shape per kernel
   (Triton forward/merge/backward with split-KV forced, CUDA forward/backward), when it exists.
4. ``attention``: the attention benchmark (fwd, bwd; S = 4k, 16k, 64k; ours against SDPA flash and
   cuDNN, FlexAttention with the same structure, the ``sdpa`` baseline, transformers' module), one
   sequence length at a time, the results file rewritten after each.
5. ``model``: the whole-model benchmark (bf16, batch 8, 4096 tokens; ours against transformers).

Results go to ``--out`` (default ``$OUT``, else ``benchmarks/results/<device>/session``), at most 8
files: ``session.json`` (metadata and each phase's status), one JSON per phase (docs/design.md section 7
layout, ``meta`` naming the device) and ``logs.tar.gz`` (every phase's output). The phase budgets add
up to 470 s, within 8 minutes on an H100 including the extension build; a phase out of time gets
SIGINT, then SIGKILL, and is recorded as ``timeout`` with what it had written.

``--dry-run`` runs every phase's plumbing on the CPU with tiny shapes and no CUDA (kernel backends,
which need CUDA, are recorded as skipped; each phase gets 300 s), so CI can rehearse the session. Nothing is downloaded:
what is missing (transformers, compute-sanitizer) is skipped with the reason recorded.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = ("smoke", "gpu_tests", "sanitizer", "attention", "model")
BUDGET_S = {"smoke": 150, "gpu_tests": 150, "sanitizer": 50, "attention": 80, "model": 40}
GRACE_S = 8  # after its time is up a process gets SIGINT, then this long to write what it has
DRY_RUN_BUDGET_S = 300  # per phase: a shared CI CPU is slow and uneven; the limit only catches hangs
SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck")


def _phase_file(out: Path, phase: str) -> Path:
    return out / f"{PHASES.index(phase) + 1}_{phase}.json"


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _meta(dry_run: bool) -> dict:
    from bigbird_kernels.bench import collect_meta

    meta = collect_meta("cpu" if dry_run else "cuda")
    meta["dry_run"] = dry_run
    return meta


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run(cmd, log, timeout, env=None) -> tuple[int | None, float]:
    """Run ``cmd`` (output appended to ``log``) for at most ``timeout`` s: (exit code or None on timeout, seconds).

    On timeout its whole process group (pytest, compilers) gets SIGINT (pytest then still writes its
    report), and SIGKILL :data:`GRACE_S` seconds later."""
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ {' '.join(map(str, cmd))}\n")
        f.flush()
        proc = subprocess.Popen(list(map(str, cmd)), cwd=REPO, env=env or _env(), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=max(0.1, timeout))
        except subprocess.TimeoutExpired:
            rc = None
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        finally:  # also when this process is interrupted itself: leave nothing running
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return rc, time.perf_counter() - t0


def _time_left(deadline: float) -> float:
    """Seconds a phase's own child process may use: what is left, less the grace to report."""
    return deadline - time.time() - GRACE_S - 2


# --------------------------------------------------------------------------------------------------
# phases (each runs in a child process: ``gpu_session.py --run-phase NAME``)
# --------------------------------------------------------------------------------------------------


def phase_smoke(out: Path, dry_run: bool, deadline: float) -> dict:
    """A forward + backward call of every backend, compared with the reference."""
    import torch

    from bigbird_kernels import block_sparse_attention, block_sparse_attention_ref, info, make_layout
    from bigbird_kernels.dispatch import BACKEND_NAMES, BackendNotSupportedError

    device, dtype = ("cpu", torch.float32) if dry_run else ("cuda", torch.bfloat16)
    B, H, nb, bs, D = (1, 2, 8, 16, 32) if dry_run else (2, 4, 16, 64, 64)
    S = nb * bs
    gen = torch.Generator().manual_seed(0)
    q, k, v, dout = (torch.randn(B, H, S, D, generator=gen).to(device, dtype) for _ in range(4))
    layout = make_layout(torch.randint(0, nb, (H, nb, 3), generator=gen), block_size=bs).to(device)
    mask = torch.ones(B, S, dtype=torch.bool, device=device)
    mask[-1, S - bs - 3 :] = False
    ref = block_sparse_attention_ref(q.float(), k.float(), v.float(), layout, mask)[0]
    result = dict(meta=_meta(dry_run), info=info.report(), records=[], status="running")
    # kernels first; the CUDA extension's first call builds it (the longest step), FlexAttention compiles
    order = ["triton", "reference", "sdpa", "cuda", "flex"]
    for name in order + [b for b in BACKEND_NAMES if b not in order]:
        rec = dict(backend=name, dtype=str(dtype).replace("torch.", ""), B=B, H=H, S=S, D=D, block_size=bs)
        if dry_run and name in ("cuda", "triton"):
            result["records"].append(dict(rec, status="skipped", reason="dry run: the kernel backends need CUDA"))
            continue
        for grad in (True, False):  # fwd + bwd; a backend without backward (flex on CPU) gets fwd only
            xs = [t.detach().requires_grad_(grad) for t in (q, k, v)]
            t0 = time.perf_counter()
            try:
                o = block_sparse_attention(*xs, layout, attention_mask=mask, backend=name)
                if grad:
                    torch.autograd.grad(o, xs, dout)
                if device == "cuda":
                    torch.cuda.synchronize()
            except BackendNotSupportedError as e:
                rec.update(status="unsupported", reason=str(e).splitlines()[-1].strip())
                continue
            except Exception as e:
                rec.update(status="error", reason=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                break
            err = (o.float() - ref).abs().max().item()
            rec.update(status="ok", reason=None, **{"pass": "fwd+bwd" if grad else "fwd"},
                       first_call_s=round(time.perf_counter() - t0, 3), max_err_vs_reference=err)
            break
        result["records"].append(rec)
        _write_json(_phase_file(out, "smoke"), result)  # kept if a later backend hangs
        print(rec, flush=True)
    result["status"] = "ok" if all(r["status"] in ("ok", "skipped") for r in result["records"]) else "failed"
    return result


def phase_gpu_tests(out: Path, dry_run: bool, deadline: float) -> dict:
    """``pytest tests/gpu`` (skipped there without CUDA: the dry run checks collection and the summary)."""
    import xml.etree.ElementTree as ET

    work = Path(tempfile.mkdtemp(prefix="gpu_tests_"))
    junit = work / "junit.xml"
    env = _env()
    if not dry_run:
        env["BIGBIRD_TEST_INTERPRET"] = "0"
    cmd = [sys.executable, "-m", "pytest", "-v", "-rfE", "-p", "no:cacheprovider", "tests/gpu", f"--junitxml={junit}"]
    rc, secs = _run(cmd, work / "pytest.log", _time_left(deadline), env=env)
    sys.stdout.write((work / "pytest.log").read_text())
    cases = []
    if junit.exists():
        for tc in ET.parse(junit).getroot().iter("testcase"):
            outcome, message = "passed", None
            for tag in ("failure", "error", "skipped"):
                el = tc.find(tag)
                if el is not None:
                    outcome, message = tag, (el.get("message") or "")[:500]
                    break
            cases.append(dict(test=f"{tc.get('classname')}::{tc.get('name')}", outcome=outcome,
                              seconds=float(tc.get("time") or 0), message=message))
    counts = {o: sum(c["outcome"] == o for c in cases) for o in ("passed", "failure", "error", "skipped")}
    status = "timeout" if rc is None else ("ok" if rc in (0, 5) and not counts["failure"] and not counts["error"]
                                           else "failed")
    return dict(meta=_meta(dry_run), status=status, exit_code=rc, seconds=round(secs, 1), counts=counts, tests=cases)


def sanitize_target(dry_run: bool) -> None:
    """One small call per kernel (forward, split-KV merge, backward incl. reduce) of the Triton and CUDA
    backends, for ``compute-sanitizer``; the reference backend in a dry run."""
    import torch

    from bigbird_kernels import block_sparse_attention, make_layout
    from bigbird_kernels.dispatch import BackendNotSupportedError

    device, dtype = ("cpu", torch.float32) if dry_run else ("cuda", torch.bfloat16)
    B, H, nb, bs, D = 1, 2, 6, 64, 64
    q, k, v = (torch.randn(B, H, nb * bs, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    layout = make_layout(torch.randint(0, nb, (H, nb, 1)), block_size=bs).to(device)
    mask = torch.ones(B, nb * bs, dtype=torch.bool, device=device)
    mask[:, -bs // 2 :] = False
    for name in (("reference",) if dry_run else ("triton", "cuda")):
        for m in (None, mask):
            try:
                if name == "triton":
                    from bigbird_kernels.backends.triton.launch import split_override

                    with split_override(2, 2):  # the merge and reduce kernels run too
                        o = block_sparse_attention(q, k, v, layout, attention_mask=m, backend=name)
                else:
                    o = block_sparse_attention(q, k, v, layout, attention_mask=m, backend=name)
            except BackendNotSupportedError as e:
                print(f"{name}: unsupported: {str(e).splitlines()[-1].strip()}", flush=True)
                break
            o.sum().backward()
            print(f"{name} mask={m is not None}: ran", flush=True)
    if device == "cuda":
        torch.cuda.synchronize()


def phase_sanitizer(out: Path, dry_run: bool, deadline: float) -> dict:
    tool = shutil.which("compute-sanitizer") or next(
        (p for p in ("/usr/local/cuda/bin/compute-sanitizer",) if os.path.exists(p)), None)
    work = Path(tempfile.mkdtemp(prefix="sanitizer_"))
    target = [sys.executable, str(Path(__file__).resolve()), "--sanitize-target"] + (["--dry-run"] if dry_run else [])
    runs = []
    if tool is None or dry_run:
        # without the tool (or CUDA) still run the target, so its own failures show
        rc, secs = _run(target, work / "target.log", _time_left(deadline))
        sys.stdout.write((work / "target.log").read_text())
        reason = "compute-sanitizer not found" if tool is None else "dry run: no CUDA to sanitize"
        runs.append(dict(tool=None, exit_code=rc, seconds=round(secs, 1), status="ok" if rc == 0 else "failed"))
        return dict(meta=_meta(dry_run), status="skipped" if rc == 0 else "failed", reason=reason, runs=runs)
    for i, name in enumerate(SANITIZER_TOOLS):
        share = _time_left(deadline) / (len(SANITIZER_TOOLS) - i)
        log = work / f"{name}.log"
        cmd = [tool, "--tool", name, "--error-exitcode", "86", "--print-limit", "20", *target]
        rc, secs = _run(cmd, log, share)
        text = log.read_text()
        sys.stdout.write(text)
        summary = [line for line in text.splitlines() if "ERROR SUMMARY" in line or "RACECHECK SUMMARY" in line]
        runs.append(dict(tool=name, exit_code=rc, seconds=round(secs, 1), summary=summary,
                         status="timeout" if rc is None else ("ok" if rc == 0 else "failed")))
    status = "ok" if all(r["status"] == "ok" for r in runs) else "failed"
    return dict(meta=_meta(dry_run), status=status, tool=tool, runs=runs)


def phase_attention(out: Path, dry_run: bool, deadline: float) -> dict:
    """The attention benchmark, one (group of backends, sequence length) per process, the JSON rewritten
    after each: our kernels and dense flash / cuDNN at every length first, then the other peers."""
    work = Path(tempfile.mkdtemp(prefix="attention_"))
    if dry_run:
        seq_lens, groups = (128, 256), [["reference"]]
        common = ["--device", "cpu", "--dtypes", "float32", "--heads", "2", "--head-dim", "32", "--block-size", "16",
                  "--reps", "1"]
    else:
        peers = ["flex", "sdpa"] + (["transformers"] if _has("transformers") else [])
        seq_lens, groups = (4096, 16384, 65536), [["triton", "cuda", "sdpa_flash", "sdpa_cudnn"], peers]
        common = ["--device", "cuda", "--reps", "10"]
    skipped = [] if dry_run or _has("transformers") else ["transformers: not installed"]
    result = dict(meta=_meta(dry_run), records=[], skipped=skipped, status="ok")
    for gi, group in enumerate(groups):
        for S in seq_lens:
            name = f"g{gi}_S{S}"
            cmd = [sys.executable, "-m", "bigbird_kernels.bench", *common, "--backends", *group,
                   "--passes", "fwd", "bwd", "--seq-lens", S, "--out-dir", work, "--name", name]
            rc, _ = _run(cmd, work / "bench.log", _time_left(deadline))
            part = work / f"{name}.json"
            if rc == 0 and part.exists():
                result["records"] += json.loads(part.read_text())["records"]
            else:
                result["status"] = "timeout" if rc is None else "failed"
                result["skipped"].append(f"{','.join(group)} S={S}: {'timed out' if rc is None else f'exit code {rc}'}")
            _write_json(_phase_file(out, "attention"), result)
            if _time_left(deadline) <= 0:
                result["status"] = "timeout"
                _write_json(_phase_file(out, "attention"), result)
                return result
    sys.stdout.write((work / "bench.log").read_text())
    return result


def phase_model(out: Path, dry_run: bool, deadline: float) -> dict:
    if not _has("transformers"):
        return dict(meta=_meta(dry_run), status="skipped",
                    reason="transformers not installed (the benchmark builds its random base weights with it)")
    work = Path(tempfile.mkdtemp(prefix="model_"))
    if dry_run:
        args = ["--device", "cpu", "--dtypes", "float32", "--batch", "1", "--seq-lens", "1024", "--layers", "1",
                "--reps", "1", "--warmup", "0", "--backends", "ours"]
    else:
        args = ["--device", "cuda", "--dtypes", "bfloat16", "--batch", "8", "--seq-lens", "4096", "--reps", "5",
                "--backends", "ours", "transformers", "transformers-patched"]
    result_path = work / "model.json"
    cmd = [sys.executable, "benchmarks/bench_model.py", *args, "--out-dir", work, "--name", "model"]
    rc, secs = _run(cmd, work / "model.log", _time_left(deadline))
    sys.stdout.write((work / "model.log").read_text())
    if rc == 0 and result_path.exists():
        return dict(json.loads(result_path.read_text()), status="ok")
    return dict(meta=_meta(dry_run), status="timeout" if rc is None else "failed", exit_code=rc, records=[])


PHASE_FUNCS = {"smoke": phase_smoke, "gpu_tests": phase_gpu_tests, "sanitizer": phase_sanitizer,
               "attention": phase_attention, "model": phase_model}


# --------------------------------------------------------------------------------------------------
# the session
# --------------------------------------------------------------------------------------------------


def _pack_logs(logs: Path, out: Path) -> None:
    tmp = out / "logs.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(logs, arcname="logs")
    tmp.replace(out / "logs.tar.gz")


def run_session(out: Path, phases, dry_run: bool, budgets: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="gpu_session_logs_"))
    session = dict(meta=_meta(dry_run), budgets_s={p: budgets[p] for p in phases}, phases=[])
    _write_json(out / "session.json", session)
    for phase in phases:
        log = logs / f"{PHASES.index(phase) + 1}_{phase}.log"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--run-phase", phase, "--out", out,
               "--deadline", time.time() + budgets[phase]] + (["--dry-run"] if dry_run else [])
        print(f"== phase {phase} (at most {budgets[phase]} s)", flush=True)
        rc, secs = _run(cmd, log, budgets[phase])  # the child's own processes stop 5 s before
        path = _phase_file(out, phase)
        result = json.loads(path.read_text()) if path.exists() else {}
        if rc is None:
            status = "timeout"
        elif rc != 0 and not result:
            status = "crashed"
        else:
            status = result.get("status", "failed")
        if status in ("timeout", "crashed"):
            result = dict(result, status=status, log_tail=log.read_text()[-4000:])
            _write_json(path, result)
        session["phases"].append(dict(phase=phase, status=status, seconds=round(secs, 1), file=path.name,
                                      reason=result.get("reason")))
        print(f"== phase {phase}: {status} in {secs:.0f} s -> {path.name}", flush=True)
        _write_json(out / "session.json", session)
        _pack_logs(logs, out)
    return session


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="every phase's plumbing on the CPU, tiny shapes, no CUDA")
    p.add_argument("--out", type=Path, default=None, help="results folder (default $OUT, else benchmarks/results/<device>/session)")
    p.add_argument("--only", default=",".join(PHASES), help=f"comma list of phases ({', '.join(PHASES)})")
    p.add_argument("--timeout", action="append", default=[], metavar="PHASE=SECONDS", help="override a phase's budget")
    p.add_argument("--run-phase", choices=PHASES, help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    p.add_argument("--sanitize-target", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))

    if args.sanitize_target:
        sanitize_target(args.dry_run)
        return 0
    if args.run_phase:
        result = PHASE_FUNCS[args.run_phase](args.out, args.dry_run, args.deadline)
        _write_json(_phase_file(args.out, args.run_phase), result)
        return 0

    phases = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in phases if x not in PHASES]
    if unknown:
        p.error(f"unknown phase(s) {', '.join(unknown)}; expected {', '.join(PHASES)}")
    budgets = {p: DRY_RUN_BUDGET_S for p in PHASES} if args.dry_run else dict(BUDGET_S)
    for item in args.timeout:
        name, _, secs = item.partition("=")
        if name not in PHASES or not secs.replace(".", "", 1).isdigit():
            p.error(f"--timeout wants PHASE=SECONDS with PHASE one of {', '.join(PHASES)}, got {item!r}")
        budgets[name] = float(secs)
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            p.error("torch sees no CUDA device (use --dry-run to rehearse on the CPU)")
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    if out is None:
        from bigbird_kernels.bench import device_slug

        out = REPO / "benchmarks" / "results" / device_slug("cpu" if args.dry_run else "cuda") / "session"
    session = run_session(out.resolve(), phases, args.dry_run, budgets)
    failed = [ph["phase"] for ph in session["phases"] if ph["status"] not in ("ok", "skipped")]
    print(f"results in {out}: " + ", ".join(f"{ph['phase']} {ph['status']}" for ph in session["phases"]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
