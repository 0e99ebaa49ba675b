"""Attention benchmark: our backends against dense SDPA, FlexAttention and Hugging Face's module.

One harness times every backend on the same inputs (docs/design.md section 7): medians over repeated runs
after warm-up, effective TFLOP/s on attended blocks, peak memory, ``oom``/``unsupported`` recorded
rather than dropped. On CPU each configuration runs in its own process (so peak RSS belongs to it);
on CUDA one process times everything with CUDA events.

On a shared CPU wall time alone misleads: every CPU record also carries the process's CPU time per
call (``cpu_ms``) and a GEMM calibration measured in the same process around the timing
(``gemm_gflops``: the machine's square-matmul rate in the benchmark dtype just then), so results of
different runs compare by ``tflops / gemm_gflops``. ``--threads 1`` makes CPU time exact (no
spinning OpenMP workers).

    python -m bigbird_kernels.bench --quick            # CPU: reference, sdpa, transformers
    python -m bigbird_kernels.bench --device cuda      # GPU: every backend and peer
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

__all__ = ["run_attention_benchmark", "attention_flops", "collect_meta", "device_slug", "default_out_dir", "main"]

CPU_BACKENDS = ("reference", "sdpa", "transformers")
GPU_BACKENDS = ("cuda", "triton", "flex", "sdpa_flash", "sdpa_cudnn", "sdpa", "transformers")
PASSES = ("fwd", "bwd", "fwd+bwd")


# ------------------------------------------------------------------------------------------------
# metadata, FLOPs, output
# ------------------------------------------------------------------------------------------------


def device_slug(device: str) -> str:
    """``nvidia-h100-80gb-hbm3`` for an H100, ``cpu`` for the CPU."""
    if device == "cpu":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")


def _git_sha() -> str:
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        return "unknown"


def collect_meta(device: str) -> dict:
    """Device, driver and library versions, git sha and date for a results file."""
    meta = {
        "device": device_slug(device) if device == "cpu" else torch.cuda.get_device_name(),
        "device_slug": device_slug(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_sha": _git_sha(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    for mod in ("triton", "transformers"):
        try:
            meta[mod] = __import__(mod).__version__
        except Exception:
            meta[mod] = None
    if device != "cpu":
        meta["cuda"] = torch.version.cuda
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, check=True).stdout
            meta["driver"] = out.strip().splitlines()[0]
        except Exception:
            meta["driver"] = None
    return meta


def attention_flops(layout, batch: int, head_dim: int, pass_: str) -> float:
    """FLOPs on attended blocks only: forward ``4 B H D bs^2 n_pairs``, backward 2.5x that."""
    fwd = 4.0 * batch * layout.num_heads * head_dim * layout.block_size**2 * layout.num_pairs_per_head
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}[pass_]


# ------------------------------------------------------------------------------------------------
# one configuration
# ------------------------------------------------------------------------------------------------


def _make_call(backend, q, k, v, layout, mask):
    """A zero-argument function computing the attention output with ``backend`` on these inputs."""
    from .api import block_sparse_attention

    if backend in ("reference", "sdpa", "triton", "cuda", "flex"):
        return lambda: block_sparse_attention(q, k, v, layout, attention_mask=mask, backend=backend)
    if backend in ("sdpa_flash", "sdpa_cudnn"):
        # dense full attention, the speed-of-light of a dense kernel (no mask: flash takes none)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        which = SDPBackend.FLASH_ATTENTION if backend == "sdpa_flash" else SDPBackend.CUDNN_ATTENTION

        def dense():
            with sdpa_kernel([which]):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v)

        return dense
    if backend == "transformers":
        return _hf_call(q, k, v, layout, mask)
    raise ValueError(f"unknown benchmark backend {backend!r}")


def _hf_call(q, k, v, layout, mask):
    """Hugging Face's block-sparse attention core on our q, k, v (eval layout, same masks as the model)."""
    from transformers import BigBirdConfig
    from transformers.models.big_bird.modeling_big_bird import BigBirdBlockSparseAttention, BigBirdModel

    B, H, S, D = q.shape
    bs, r = layout.block_size, layout.num_random_blocks
    cfg = BigBirdConfig(hidden_size=H * D, num_attention_heads=H, block_size=bs, num_random_blocks=r,
                        max_position_embeddings=max(4096, S), attention_type="block_sparse")
    module = BigBirdBlockSparseAttention(cfg, seed=0).to(q.device).eval()
    m = torch.ones(B, S, device=q.device, dtype=q.dtype) if mask is None else mask.to(q.dtype)
    blocked, band, from_mask, to_mask = BigBirdModel.create_masks_for_block_sparse_attn(m, bs)

    def call():
        ctx, _ = module.bigbird_block_sparse_attention(
            q, k, v, band, from_mask, to_mask, blocked, blocked, H, r, D, bs, bs, B, S, S,
            seed=0, plan_from_length=None, plan_num_rand_blocks=None,
        )
        return ctx

    return call


def _time_cpu(fn, reps: int, warmup: int) -> tuple[list[float], list[float]]:
    """Wall and process CPU milliseconds of each of ``reps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times, cpu_times = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        cpu_times.append((time.process_time() - c0) * 1e3)
    return times, cpu_times


def gemm_gflops(dtype: torch.dtype = torch.float32, device: str = "cpu", n: int = 1024, reps: int = 5) -> float:
    """The machine's measured matmul rate: median GFLOP/s of an ``n x n @ n x n`` ``dtype`` product.

    Taken in the same process as a benchmark, it calibrates the figures against what this (possibly
    shared, possibly busy) machine delivered at that moment.
    """
    a = torch.randn(n, n, device=device).to(dtype)
    times = _time_cuda(lambda: a @ a, reps, 2) if device != "cpu" else _time_cpu(lambda: a @ a, reps, 2)[0]
    return 2.0 * n**3 / (statistics.median(times) * 1e-3) / 1e9


def _time_cuda(fn, reps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(config: dict) -> dict:
    """Time one (backend, pass, dtype, shape) configuration in this process; return its record."""
    from .layout import hf_layout

    device = config["device"]
    if config.get("threads"):
        torch.set_num_threads(config["threads"])
    dtype = getattr(torch, config["dtype"])
    B, H, S, D, bs, r = (config[k] for k in ("B", "H", "S", "D", "block_size", "r"))
    rec = {k: config[k] for k in ("backend", "pass", "dtype", "B", "H", "S", "D", "block_size", "r")}
    rec.update(ms=None, tflops=None, peak_mem_bytes=None, status="ok")
    layout = hf_layout(layer_idx=0, seq_len=S, block_size=bs, num_random_blocks=r, num_heads=H, training=False,
                       device=device)
    need_grad = config["pass"] != "fwd"
    try:
        q, k, v = (torch.randn(B, H, S, D, device=device, dtype=dtype, requires_grad=need_grad) for _ in range(3))
        mask = torch.ones(B, S, dtype=torch.bool, device=device) if config.get("mask") else None
        call = _make_call(config["backend"], q, k, v, layout, mask)
        if config["pass"] == "fwd":
            fn = torch.no_grad()(call)
        else:
            out = call()
            grad = torch.randn_like(out)
            if config["pass"] == "bwd":
                def fn():
                    torch.autograd.grad(out, (q, k, v), grad, retain_graph=True)
            else:
                def fn():
                    torch.autograd.grad(call(), (q, k, v), grad)
        if device == "cpu":
            base = _rss_bytes()
            gemm = [gemm_gflops(dtype)]
            times, cpu_times = _time_cpu(fn, config["reps"], config["warmup"])
            gemm.append(gemm_gflops(dtype))
            rec["peak_mem_bytes"] = max(0, _peak_rss_bytes() - base)
            rec["peak_rss_bytes"] = _peak_rss_bytes()
            rec["cpu_ms"] = statistics.median(cpu_times)
            rec["gemm_gflops"] = statistics.mean(gemm)  # before and after the timing
            rec["threads"] = torch.get_num_threads()
            rec["load_avg_1min"] = os.getloadavg()[0]
        else:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            times = _time_cuda(fn, config["reps"], config["warmup"])
            rec["peak_mem_bytes"] = torch.cuda.max_memory_allocated() - base
        rec["ms"] = statistics.median(times)
        rec["ms_min"], rec["ms_max"], rec["reps"] = min(times), max(times), len(times)
        rec["tflops"] = attention_flops(layout, B, D, config["pass"]) / (rec["ms"] * 1e-3) / 1e12
        if rec.get("gemm_gflops"):
            rec["fraction_of_gemm_rate"] = rec["tflops"] * 1e3 / rec["gemm_gflops"]
    except torch.cuda.OutOfMemoryError:
        rec["status"] = "oom"
    except MemoryError:
        rec["status"] = "oom"
    except Exception as e:  # a peer that cannot run this shape is recorded, not dropped
        from .dispatch import BackendNotSupportedError

        rec["status"] = "unsupported" if isinstance(e, (BackendNotSupportedError, ImportError, NotImplementedError)) else "error"
        rec["error"] = f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]
    return rec


def _measure_in_subprocess(config: dict, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "bigbird_kernels.bench", "--worker", json.dumps(config)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**{k: config[k] for k in ("backend", "pass", "dtype", "B", "H", "S", "D", "block_size", "r")},
                "ms": None, "tflops": None, "peak_mem_bytes": None, "status": "timeout"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        status = "oom" if proc.returncode in (-9, 137) else "error"
        return {**{k: config[k] for k in ("backend", "pass", "dtype", "B", "H", "S", "D", "block_size", "r")},
                "ms": None, "tflops": None, "peak_mem_bytes": None, "status": status,
                "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(lines[-1])


# ------------------------------------------------------------------------------------------------
# the whole run
# ------------------------------------------------------------------------------------------------


def run_attention_benchmark(*, device="cpu", backends=None, seq_lens=(1024, 2048, 4096), dtypes=None, passes=("fwd",),
                            batch=1, heads=12, head_dim=64, block_size=64, num_random_blocks=3, reps=None,
                            warmup=None, mask=True, threads=None, timeout=900.0, progress=print) -> dict:
    """Run every configuration and return ``{"meta": ..., "records": [...]}`` (docs/design.md section 7)."""
    backends = tuple(backends or (CPU_BACKENDS if device == "cpu" else GPU_BACKENDS))
    dtypes = tuple(dtypes or (("float32",) if device == "cpu" else ("bfloat16",)))
    reps = reps or (5 if device == "cpu" else 30)
    warmup = warmup if warmup is not None else (1 if device == "cpu" else 5)
    records = []
    for dtype in dtypes:
        for S in seq_lens:
            for pass_ in passes:
                for backend in backends:
                    config = dict(device=device, backend=backend, dtype=dtype, B=batch, H=heads, S=S, D=head_dim,
                                  block_size=block_size, r=num_random_blocks, reps=reps, warmup=warmup, mask=mask,
                                  threads=threads, **{"pass": pass_})
                    rec = _measure_in_subprocess(config, timeout) if device == "cpu" else measure(config)
                    if device != "cpu":
                        torch.cuda.empty_cache()
                    records.append(rec)
                    if progress:
                        progress(_format_row(rec))
    meta = collect_meta(device)
    if threads:
        meta["threads"] = threads
    return {"meta": meta, "records": records}


def _format_row(rec: dict) -> str:
    ms = f"{rec['ms']:.2f}" if rec.get("ms") is not None else "-"
    tf = f"{rec['tflops']:.3f}" if rec.get("tflops") is not None else "-"
    mem = f"{rec['peak_mem_bytes'] / 2**20:.0f}" if rec.get("peak_mem_bytes") is not None else "-"
    cpu = f"  {rec['cpu_ms']:.2f} cpu-ms, GEMM {rec['gemm_gflops']:.0f} GFLOP/s" if rec.get("cpu_ms") is not None else ""
    return (f"{rec['backend']:<13} {rec['pass']:<8} {rec['dtype']:<9} S={rec['S']:<6} {ms:>10} ms "
            f"{tf:>9} TFLOP/s {mem:>7} MiB  {rec['status']}{cpu}")


def _ms_cell(rec: dict | None) -> str:
    """``median (min-max)`` of a record's timings, or its status and reason when it did not run."""
    if rec is None:
        return "-"
    if rec.get("ms") is None:
        return f"{rec['status']}: {rec['error']}" if rec.get("error") else rec["status"]
    if rec.get("ms_min") is None or rec.get("ms_max") is None:
        return f"{rec['ms']:.2f}"
    return f"{rec['ms']:.2f} ({rec['ms_min']:.2f}-{rec['ms_max']:.2f})"


def summary_table(result: dict) -> str:
    """A Markdown table: one row per (S, pass, dtype) with the timed repetitions, per backend the median
    ms with its (min-max) spread (or why it did not run: ``unsupported: ...``, ``oom``) and peak MiB,
    speed-ups vs HF (wall time, and CPU time where measured), and the GEMM calibration of the row's runs."""
    recs = result["records"]
    backends = list(dict.fromkeys(r["backend"] for r in recs))
    keys = list(dict.fromkeys((r["S"], r["pass"], r["dtype"]) for r in recs))
    has_cpu = any(r.get("cpu_ms") for r in recs)
    head = ["S", "pass", "dtype", "reps"] + [f"{b} ms median (min-max)" for b in backends]
    head += [f"{b} MiB" for b in backends]
    if "transformers" in backends:
        head += [f"{b} speed-up vs transformers" for b in backends if b != "transformers"]
        if has_cpu:
            head += [f"{b} CPU-time speed-up vs transformers" for b in backends if b != "transformers"]
    if has_cpu:
        head.append("GEMM GFLOP/s")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        row = {r["backend"]: r for r in recs if (r["S"], r["pass"], r["dtype"]) == key}
        reps = sorted({r["reps"] for r in row.values() if r.get("reps")})
        cells = [str(key[0]), key[1], key[2], "/".join(map(str, reps)) or "-"]
        cells += [_ms_cell(row.get(b)).replace("|", "/") for b in backends]
        for b in backends:
            r = row.get(b)
            cells.append(f"{r['peak_mem_bytes'] / 2**20:.0f}" if r and r.get("peak_mem_bytes") is not None else "-")
        if "transformers" in backends:
            hf = row.get("transformers")
            for b in backends:
                if b == "transformers":
                    continue
                r = row.get(b)
                ok = hf and r and hf.get("ms") and r.get("ms")
                cells.append(f"{hf['ms'] / r['ms']:.1f}x" if ok else "-")
            for b in backends if has_cpu else ():
                if b == "transformers":
                    continue
                r = row.get(b)
                ok = hf and r and hf.get("cpu_ms") and r.get("cpu_ms")
                cells.append(f"{hf['cpu_ms'] / r['cpu_ms']:.1f}x" if ok else "-")
        if has_cpu:
            gemm = [r["gemm_gflops"] for r in row.values() if r.get("gemm_gflops")]
            cells.append(f"{statistics.mean(gemm):.0f}" if gemm else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_results(result: dict, out_dir: Path, name: str) -> list[Path]:
    """Write ``<name>.json`` (and ``<name>.png`` when matplotlib is installed) under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    written = [path]
    png = plot_results(result, out_dir / f"{name}.png")
    if png:
        written.append(png)
    return written


def _caption(result: dict) -> str:
    """The configuration of a run's records on one line: shape, layout, device and repetitions."""
    recs, meta = result["records"], result["meta"]

    def values(key):
        return "/".join(str(v) for v in dict.fromkeys(r[key] for r in recs if r.get(key) is not None)) or "-"

    return (f"B={values('B')}, H={values('H')}, D={values('D')}, block={values('block_size')}, r={values('r')}, "
            f"dtype={values('dtype')}, device={meta.get('device')}, reps={values('reps')}; "
            "median ms, bars min-max")


def plot_results(result: dict, path: Path) -> Path | None:
    """Draw :func:`results_figure` into the PNG ``path``; None without matplotlib or without a record that ran."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig = results_figure(result)
    if fig is None:
        return None
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def results_figure(result: dict):
    """A matplotlib figure: time (median, min-max error bars) and peak memory against sequence length
    (ticks in plain numbers) per backend, one row of titled panels per (pass, dtype), the configuration
    in a caption; None when no record ran."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    recs = [r for r in result["records"] if r.get("ms") is not None]
    groups = list(dict.fromkeys((r["pass"], r["dtype"]) for r in recs))
    if not groups:
        return None
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 4 * len(groups) + 0.6), squeeze=False)
    for row, (pass_, dtype) in enumerate(groups):
        for backend in dict.fromkeys(r["backend"] for r in recs):
            pts = sorted((r["S"], r) for r in recs
                         if r["backend"] == backend and r["pass"] == pass_ and r["dtype"] == dtype)
            if not pts:
                continue
            xs, rs = [p[0] for p in pts], [p[1] for p in pts]
            ms = [r["ms"] for r in rs]
            spread = [[m - r.get("ms_min", m) for m, r in zip(ms, rs)], [r.get("ms_max", m) - m for m, r in zip(ms, rs)]]
            axes[row][0].errorbar(xs, ms, yerr=spread, marker="o", capsize=3, label=backend)
            axes[row][1].plot(xs, [max(r["peak_mem_bytes"] or 1, 1) / 2**20 for r in rs], marker="o", label=backend)
        seq_lens = sorted({r["S"] for r in recs if r["pass"] == pass_ and r["dtype"] == dtype})
        for col, (what, label) in enumerate((("time", "time (ms)"), ("peak memory", "peak memory (MiB)"))):
            ax = axes[row][col]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.xaxis.set_major_locator(FixedLocator(seq_lens))
            ax.xaxis.set_minor_locator(NullLocator())
            plain = FuncFormatter(lambda value, _: f"{value:g}")  # 1024, 2048, 4096: no 2^10 notation
            ax.xaxis.set_major_formatter(plain)
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
            ax.set_xlabel("sequence length")
            ax.set_ylabel(label)
            ax.set_title(f"{what}: {pass_}, {dtype}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.text(0.5, 0.005, _caption(result), ha="center", va="bottom", fontsize=8)
    fig.tight_layout(rect=(0, 0.6 / (4 * len(groups) + 0.6), 1, 1))
    return fig


def default_out_dir(device: str) -> Path:
    """``./bench-results/<device slug>`` under the current directory (never inside the installed package)."""
    return Path.cwd() / "bench-results" / device_slug(device)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the attention benchmark, shared by ``bigbird bench attention`` and
    ``python -m bigbird_kernels.bench`` (the vocabulary of ``bigbird bench model`` too)."""
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="default: %(default)s")
    p.add_argument("--backends", nargs="+", metavar="NAME",
                   help=f"default: {' '.join(CPU_BACKENDS)} (CPU); {' '.join(GPU_BACKENDS)} (CUDA)")
    p.add_argument("--seq-lens", nargs="+", type=int, metavar="S", help="default: 1024 2048 4096 (CPU); 1024 .. 65536 (CUDA)")
    p.add_argument("--dtypes", nargs="+", choices=("float32", "float16", "bfloat16"),
                   help="default: float32 (CPU), bfloat16 (CUDA)")
    p.add_argument("--passes", nargs="+", choices=PASSES, default=["fwd"], help="default: fwd")
    p.add_argument("--batch", type=int, default=1, help="default: %(default)s")
    p.add_argument("--heads", type=int, default=12, help="default: %(default)s")
    p.add_argument("--head-dim", type=int, default=64, help="default: %(default)s")
    p.add_argument("--block-size", type=int, default=64, help="default: %(default)s")
    p.add_argument("--num-random-blocks", type=int, default=3, help="default: %(default)s")
    p.add_argument("--reps", type=int, help="timed repetitions (default: 5 on CPU, 30 on CUDA; 3 with --quick)")
    p.add_argument("--threads", type=int, help="torch threads per CPU worker (default: torch's)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions")
    p.add_argument("--out-dir", type=Path, help="default: ./bench-results/<device> in the current directory")
    p.add_argument("--name", default="attention", help="file name stem of the JSON and PNG (default: %(default)s)")
    p.add_argument("--no-save", action="store_true", help="print the table only")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bigbird_kernels.bench", description=__doc__.splitlines()[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    add_arguments(p)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))), flush=True)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device")
    seq_lens = args.seq_lens or ((1024, 2048, 4096) if args.device == "cpu" else (1024, 2048, 4096, 8192, 16384, 32768, 65536))
    reps = args.reps or (3 if args.quick else None)
    result = run_attention_benchmark(device=args.device, backends=args.backends, seq_lens=seq_lens, dtypes=args.dtypes,
                                     passes=tuple(args.passes), batch=args.batch, heads=args.heads,
                                     head_dim=args.head_dim, block_size=args.block_size,
                                     num_random_blocks=args.num_random_blocks, reps=reps, threads=args.threads)
    print()
    print(summary_table(result))
    if not args.no_save:
        for path in save_results(result, args.out_dir or default_out_dir(args.device), args.name):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
