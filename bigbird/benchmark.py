"""Whole-model benchmark: our BigBirdModel vs transformers' BigBirdModel on the same weights.

Each configuration runs in its own Python process (so peak memory is that process's alone): it loads
the shared checkpoint, runs ``warmup`` untimed forwards and ``reps`` timed ones (eval mode,
``torch.inference_mode``), and reports the median time and the peak memory (``ru_maxrss`` of the
process on CPU; ``torch.cuda.max_memory_allocated`` on CUDA, with the RSS beside it). The parent
prints a table and writes JSON::

    {"meta": {device, torch, transformers, git_sha, date, cpu_threads, ...},
     "records": [{"backend": "ours"|"transformers", "pass": "fwd", "dtype", "B", "S", "ms",
                  "peak_mem_bytes", "status", ...}]}

Usage (also ``python -m bigbird.benchmark`` and ``benchmarks/bench_model.py``, same options)::

    bigbird bench model                                          # base config, float32, B=1, S=4096, CPU
    bigbird bench model --dtypes float32 bfloat16                # + our model in bf16, its speed and error
    bigbird bench model --device cuda --dtypes bfloat16 --batch 8 --seq-lens 1024 4096

The generated checkpoint is a ``BigBirdForMaskedLM`` (random init); the timed forward is its
encoder (``model.bert``), the MLM head runs once afterwards, untimed. Every process saves its
``last_hidden_state`` and MLM top-1 predictions; the parent reports the max abs difference between
ours and transformers (so the two timings are known to compute the same thing) and, for
each further ``--dtypes`` entry, the relative L2 error of our ``last_hidden_state`` and the MLM top-1
agreement against our model in the first. On CPU each worker also measures the machine's GEMM rate
(``gemm_gflops``, fp32 and the run's dtype) before timing, and the process CPU time per forward.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main", "run_benchmark"]

DTYPES = ("float32", "float16", "bfloat16")
BACKENDS = ("ours", "transformers", "transformers-patched")
REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------
# worker (one configuration per process)
# --------------------------------------------------------------------------------------------------


def _peak_rss_bytes() -> int:
    # Linux reports ru_maxrss in KiB, macOS in bytes
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def _worker(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    rec = {"backend": args.backend, "pass": "fwd", "dtype": args.dtype, "B": args.batch, "S": args.seq_len,
           "ms": None, "peak_mem_bytes": None, "status": "ok", "threads": torch.get_num_threads()}
    try:
        if args.backend == "ours":
            import bigbird

            cls = bigbird.BigBirdForMaskedLM if args.mlm_head else bigbird.BigBirdModel
            model = cls.from_pretrained(args.weights, dtype=dtype, device=device, attention_backend=args.attention_backend)
        else:
            import transformers

            transformers.logging.set_verbosity_error()
            cls = transformers.BigBirdForMaskedLM if args.mlm_head else transformers.BigBirdModel
            model = cls.from_pretrained(args.weights, dtype=dtype).to(device)
            if args.backend == "transformers-patched":
                # transformers' model with its block-sparse attention swapped for our op (issue 7)
                from bigbird_kernels.integrations.transformers import patch_bigbird

                patch_bigbird(model, backend=args.attention_backend)
        model.eval()
        head, model = (model.cls, model.bert) if args.mlm_head else (None, model)
        cfg = model.config
        rec.update(H=cfg.num_attention_heads, D=cfg.hidden_size // cfg.num_attention_heads, layers=cfg.num_hidden_layers,
                   block_size=cfg.block_size, r=cfg.num_random_blocks, hidden=cfg.hidden_size)
        g = torch.Generator().manual_seed(1234)
        ids = torch.randint(5, cfg.vocab_size, (args.batch, args.seq_len), generator=g).to(device)
        mask = torch.ones(args.batch, args.seq_len, dtype=torch.long, device=device)

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        else:
            from bigbird_kernels.bench import gemm_gflops

            rec["gemm_gflops"] = {"float32": gemm_gflops(torch.float32), args.dtype: gemm_gflops(dtype)}
        times, cpu_times = [], []
        with torch.inference_mode():
            for i in range(args.warmup + args.reps):
                sync()
                t0, c0 = time.perf_counter(), time.process_time()
                out = model(input_ids=ids, attention_mask=mask)
                sync()
                if i >= args.warmup:
                    times.append((time.perf_counter() - t0) * 1e3)
                    cpu_times.append((time.process_time() - c0) * 1e3)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        if args.save_output:
            saved = {"hidden": hidden.float().cpu()}
            if head is not None:
                with torch.inference_mode():
                    saved["top1"] = head(hidden).argmax(-1).cpu()
            torch.save(saved, args.save_output)
        rec["ms"] = statistics.median(times)
        rec["ms_all"] = [round(t, 2) for t in times]
        # CPU time of the process per forward (all threads): less sensitive than wall time to other
        # processes competing for the cores of a shared machine
        rec["cpu_ms"] = statistics.median(cpu_times)
        rec["ms_min"], rec["ms_max"], rec["reps"] = min(times), max(times), len(times)
        rec["load_avg_1min"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        rec["rss_peak_bytes"] = _peak_rss_bytes()
        if device.type == "cuda":
            rec["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated(device))
        else:
            rec["peak_mem_bytes"] = rec["rss_peak_bytes"]
    except Exception as e:  # recorded, never dropped
        oom = isinstance(e, MemoryError) or "out of memory" in str(e).lower()
        rec["status"] = "oom" if oom else f"error: {type(e).__name__}: {str(e)[:300]}"
        rec["rss_peak_bytes"] = _peak_rss_bytes()
    return rec


# --------------------------------------------------------------------------------------------------
# parent
# --------------------------------------------------------------------------------------------------


def _make_weights(folder: Path, args) -> None:
    """A randomly initialised transformers BigBirdForMaskedLM (base config unless overridden), saved once."""
    code = (
        "import sys, torch, transformers\n"
        "transformers.logging.set_verbosity_error()\n"
        "torch.manual_seed(0)\n"
        f"cfg = transformers.BigBirdConfig(num_hidden_layers={args.layers}, "
        f"max_position_embeddings={max(4096, *args.seq_lens)})\n"
        "transformers.BigBirdForMaskedLM(cfg).save_pretrained(sys.argv[1])\n"
    )
    subprocess.run([sys.executable, "-c", code, str(folder)], check=True, env=_child_env())


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _git_sha() -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True).stdout
        return sha + ("+dirty" if dirty.strip() else "")
    except Exception:
        return None


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run_benchmark(args) -> dict:
    """Every (sequence length, backend, dtype) configuration: ``{"meta": ..., "records": [...]}``. The
    first of ``args.dtypes`` runs every backend; each further dtype runs our model, compared with the first."""
    import torch

    base = args.dtypes[0]
    configs = [(b, base) for b in dict.fromkeys(args.backends)]
    configs += [("ours", d) for d in dict.fromkeys(args.dtypes[1:]) if d != base]
    records = []
    with tempfile.TemporaryDirectory(prefix="bigbird_bench_") as tmp:
        tmp = Path(tmp)
        weights = Path(args.weights) if args.weights else tmp / "weights"
        if not args.weights:
            print(f"creating random base weights ({args.layers} layers) in {weights} ...", flush=True)
            _make_weights(weights, args)
        for seq_len in args.seq_lens:
            records += _run_seq_len(args, seq_len, configs, weights, tmp)
        meta = {
            "device": _device_name(args.device),
            "device_type": args.device,
            "torch": torch.__version__,
            "transformers": _version("transformers"),
            "git_sha": _git_sha(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "cpu_threads": next((r.get("threads") for r in records if r.get("threads")), torch.get_num_threads()),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "model": "BigBirdModel (encoder of a BigBirdForMaskedLM), random init, config: " + (
                f"base (hidden 768, 12 heads, block 64, r 3), {args.layers} layers" if not args.weights else str(weights)),
            "mode": "eval, torch.inference_mode, attention_mask all ones",
            "warmup": args.warmup,
            "reps": args.reps,
            "rounds": args.rounds,
            "peak_mem": "ru_maxrss of the process (CPU) / torch.cuda.max_memory_allocated (CUDA)",
        }
    return {"meta": meta, "records": records}


def _run_seq_len(args, seq_len: int, configs: list[tuple[str, str]], weights: Path, tmp: Path) -> list[dict]:
    """The merged records of ``configs`` at one sequence length; the base-dtype ``ours`` record carries
    its difference from transformers, each further dtype's its error against the base dtype."""
    import torch

    runs: dict[tuple[str, str], list[dict]] = {c: [] for c in configs}
    outputs = {}
    for rnd in range(args.rounds):  # rounds alternate the processes: all see the same machine drift
        for backend, dtype in configs:
            runs[backend, dtype].append(_run_worker(backend, dtype, seq_len, weights, tmp, args, rnd))
            out_file = tmp / f"out_{backend}_{dtype}.pt"
            if out_file.exists() and (backend, dtype) not in outputs:
                outputs[backend, dtype] = torch.load(out_file, weights_only=True)
                out_file.unlink()
    records = {c: _merge_rounds(runs[c]) for c in configs}
    base = args.dtypes[0]
    ours, hf = outputs.get(("ours", base)), outputs.get(("transformers", base))
    if ours and hf:
        records["ours", base]["max_abs_diff_vs_transformers"] = float((ours["hidden"] - hf["hidden"]).abs().max())
        if "top1" in ours and "top1" in hf:
            records["ours", base]["mlm_top1_agreement_vs_transformers"] = float(
                (ours["top1"] == hf["top1"]).double().mean())
    for (backend, dtype), rec in records.items():
        other = outputs.get((backend, dtype))
        if ours and other and backend == "ours" and dtype != base:
            rec["error_vs_ours_" + base] = _errors(other, ours)
    return list(records.values())


def _errors(out: dict, ref: dict) -> dict:
    """Relative L2 error of ``last_hidden_state`` and MLM top-1 agreement of ``out`` against ``ref``."""
    err = {"last_hidden_state_rel_l2": float((out["hidden"] - ref["hidden"]).norm() / ref["hidden"].norm()),
           "last_hidden_state_max_abs": float((out["hidden"] - ref["hidden"]).abs().max())}
    if "top1" in out and "top1" in ref:
        err["mlm_top1_agreement"] = float((out["top1"] == ref["top1"]).double().mean())
    return err


def _run_worker(backend: str, dtype: str, seq_len: int, weights: Path, tmp: Path, args, rnd: int) -> dict:
    out_file = tmp / f"out_{backend}_{dtype}.pt"
    cmd = [sys.executable, "-m", "bigbird.benchmark", "--worker", "--backend", backend,
           "--weights", str(weights), "--device", args.device, "--dtype", dtype,
           "--batch", str(args.batch), "--seq-len", str(seq_len), "--reps", str(args.reps),
           "--warmup", str(args.warmup), "--threads", str(args.threads or 0),
           "--attention-backend", args.attention_backend, "--save-output", str(out_file)]
    if not args.weights:
        cmd.append("--mlm-head")
    tag = f" round {rnd + 1}/{args.rounds}" if args.rounds > 1 else ""
    print(f"running {backend} ({args.device}, {dtype}, B={args.batch}, S={seq_len}){tag} ...", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env())
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("BENCH_RECORD "):
            return json.loads(line[len("BENCH_RECORD "):])
    tail = (proc.stderr or proc.stdout)[-500:]
    killed = proc.returncode in (-9, 137)
    return {"backend": backend, "pass": "fwd", "dtype": dtype, "B": args.batch, "S": seq_len,
            "ms": None, "peak_mem_bytes": None, "status": "oom" if killed else f"error: exit {proc.returncode}: {tail}"}


def _merge_rounds(recs: list[dict]) -> dict:
    """One record from the rounds of one configuration: median over every timed forward, max peak memory."""
    ok = [r for r in recs if r.get("status") == "ok"]
    if not ok:
        return recs[-1]
    rec = dict(ok[-1])
    times = [t for r in ok for t in r["ms_all"]]
    rec["ms_all"] = times
    rec["ms"] = statistics.median(times)
    rec["ms_min"], rec["ms_max"], rec["reps"] = min(times), max(times), len(times)
    cpu = [r["cpu_ms"] for r in ok if r.get("cpu_ms") is not None]
    if cpu:
        rec["cpu_ms"] = statistics.median(cpu)
    rec["peak_mem_bytes"] = max(r["peak_mem_bytes"] for r in ok)
    rec["rss_peak_bytes"] = max(r["rss_peak_bytes"] for r in ok)
    rec["rounds"] = len(ok)
    rec["load_avg_1min"] = [r.get("load_avg_1min") for r in ok]
    if ok[0].get("gemm_gflops"):
        rec["gemm_gflops"] = {k: statistics.median(r["gemm_gflops"][k] for r in ok) for k in ok[0]["gemm_gflops"]}
    return rec


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return None


def format_table(result: dict) -> str:
    """The records as an aligned table (median, min and max ms over ``reps`` timed forwards; the reason
    beside a configuration that did not run), then the speed-ups and errors between them."""
    rows = [("backend", "pass", "dtype", "B", "S", "reps", "min ms", "median ms", "max ms", "cpu ms", "peak MiB",
             "GEMM GFLOP/s", "status", "reason")]
    for r in result["records"]:
        gemm = " ".join(f"{k} {v:.0f}" for k, v in (r.get("gemm_gflops") or {}).items()) or "-"
        status, _, reason = r["status"].partition(": ")
        rows.append((r["backend"], r["pass"], r["dtype"], str(r["B"]), str(r["S"]), str(r.get("reps", "-")),
                     *(f"{r[k]:.0f}" if r.get(k) is not None else "-" for k in ("ms_min", "ms", "ms_max", "cpu_ms")),
                     f"{r['peak_mem_bytes'] / 2**20:.0f}" if r.get("peak_mem_bytes") else "-", gemm, status,
                     " ".join(reason.split())[:120] or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    base = result["records"][0]["dtype"] if result["records"] else None
    for S in dict.fromkeys(r["S"] for r in result["records"]):
        by = {r["backend"]: r for r in result["records"] if r["dtype"] == base and r["S"] == S}
        t, o = by.get("transformers"), by.get("ours")
        for name in ("ours", "transformers-patched"):
            x = by.get(name)
            if x and t and x.get("ms") and t.get("ms"):
                cpu = f" (CPU time {t['cpu_ms'] / x['cpu_ms']:.2f}x)" if x.get("cpu_ms") and t.get("cpu_ms") else ""
                lines.append(f"S={S}: speed-up {name} vs transformers: {t['ms'] / x['ms']:.2f}x{cpu}; peak memory "
                             f"saved: {(t['peak_mem_bytes'] - x['peak_mem_bytes']) / 1e9:.2f} GB "
                             f"({t['peak_mem_bytes'] / 2**20:.0f} -> {x['peak_mem_bytes'] / 2**20:.0f} MiB)")
        if o and "max_abs_diff_vs_transformers" in o:
            lines.append(f"S={S}: max |ours - transformers| on last_hidden_state: {o['max_abs_diff_vs_transformers']:.3g}")
        for r in result["records"]:
            err = r.get(f"error_vs_ours_{base}")
            if r["S"] != S or err is None or not (o and o.get("ms") and r.get("ms")):
                continue
            cpu = f" (CPU time {o['cpu_ms'] / r['cpu_ms']:.2f}x)" if o.get("cpu_ms") and r.get("cpu_ms") else ""
            top1 = f", MLM top-1 agreement {err['mlm_top1_agreement']:.4f}" if "mlm_top1_agreement" in err else ""
            lines.append(f"S={S}: ours {r['dtype']} vs ours {base}: {o['ms'] / r['ms']:.2f}x faster{cpu}; "
                         f"last_hidden_state relative L2 error {err['last_hidden_state_rel_l2']:.3g}{top1}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the model benchmark, in the vocabulary of ``bigbird bench attention``
    (``--backends``, ``--seq-lens``, ``--dtypes``, ``--out-dir``); the worker's options are hidden."""
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default: %(default)s)")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=["ours", "transformers"], metavar="NAME",
                   help=f"any of: {' '.join(BACKENDS)} (default: ours transformers)")
    p.add_argument("--seq-lens", nargs="+", type=int, default=[4096], metavar="S", help="default: 4096")
    p.add_argument("--dtypes", nargs="+", choices=DTYPES, default=["float32"],
                   help="the first runs every backend; each further one runs our model, with its speed and error "
                        "against the first (default: float32)")
    p.add_argument("--batch", type=int, default=1, help="default: %(default)s")
    p.add_argument("--layers", type=int, default=12, help="encoder layers of the generated base model (default: %(default)s)")
    p.add_argument("--reps", type=int, default=3, help="timed forwards per process (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="untimed forwards first (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run each configuration's process this many times, alternating (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: 0, torch's own)")
    p.add_argument("--attention-backend", default="auto", help="our kernel backend (default: %(default)s)")
    p.add_argument("--weights", default=None, help="existing checkpoint folder (default: fresh random base weights)")
    p.add_argument("--out-dir", type=Path, help="default: ./bench-results/<device> in the current directory")
    p.add_argument("--name", default="model", help="file name stem of the JSON (default: %(default)s)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", default=None, help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float32", choices=DTYPES, help=argparse.SUPPRESS)
    p.add_argument("--seq-len", type=int, default=4096, help=argparse.SUPPRESS)
    p.add_argument("--save-output", default=None, help=argparse.SUPPRESS)
    p.add_argument("--mlm-head", action="store_true", help=argparse.SUPPRESS)


def default_out_dir(device: str) -> Path:
    """``./bench-results/<device slug>`` under the current directory (never inside the installed package)."""
    return Path.cwd() / "bench-results" / ("cpu" if device == "cpu" else _slug(_device_name(device)))


def run(args) -> int:
    """Run the benchmark parsed into ``args`` (or, with ``--worker``, one configuration); print and save."""
    if args.worker:
        print("BENCH_RECORD " + json.dumps(_worker(args)), flush=True)
        return 0
    for name in ("batch", "layers", "reps", "rounds"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    bad = [s for s in args.seq_lens if s < 1]
    if bad:
        raise ValueError(f"--seq-lens must be positive, got {bad}")
    result = run_benchmark(args)
    print(format_table(result))
    out_dir = args.out_dir or default_out_dir(args.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{args.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bigbird.benchmark", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
