#!/usr/bin/env python
"""ONNX Runtime (CPU) vs our eager model vs transformers: one BigBirdModel forward, fp32.

    python benchmarks/bench_onnx.py                       # base config, random weights, B=1, 4096 tokens
    python benchmarks/bench_onnx.py --seq-lens 4096 4000 --reps 7

Random weights of a transformers ``BigBirdForMaskedLM`` (base config unless ``--layers``), saved once and
loaded by both models; our model is exported with :func:`bigbird.export.export_onnx` (layout ``hf``,
eval) and run by an ONNX Runtime ``InferenceSession`` (CPU provider, as many intra-op threads as torch
uses, every graph optimisation). The three run in one process, alternating one forward each per round
(a shared, noisy CPU slows them alike); the median over the rounds is reported, with every time and
the CPU time. Also recorded: the export time, the file size, and the largest difference of the ONNX
Runtime output from ours and of ours from transformers. Writes ``benchmarks/results/cpu/onnx_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-lens", nargs="+", type=int, default=[4096], help="token counts (default: 4096)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--layers", type=int, default=12, help="hidden layers (default: 12, the base config)")
    p.add_argument("--reps", type=int, default=5, help="timed rounds (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch and ONNX Runtime threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu" / "onnx_cpu.json")
    return p


def _timed(fn, reps: int, warmup: int, rounds: dict, name: str):
    """Append ``(wall ms, cpu ms)`` of one call of ``fn`` to ``rounds[name]`` (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    rounds.setdefault(name, []).append(((time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3))
    return out


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import onnxruntime as ort
    import transformers

    import bigbird
    from bigbird.benchmark import _device_name
    from bigbird.export import export_onnx

    transformers.logging.set_verbosity_error()
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        cfg = transformers.BigBirdConfig(num_hidden_layers=args.layers, max_position_embeddings=max(4096, *args.seq_lens))
        transformers.BigBirdForMaskedLM(cfg).save_pretrained(tmp / "weights")
        ours = bigbird.BigBirdModel.from_pretrained(tmp / "weights", attention_backend="reference").eval()
        hf = transformers.BigBirdModel.from_pretrained(tmp / "weights").eval()

        t0 = time.perf_counter()
        path = export_onnx(ours, tmp / "model.onnx")
        export_s = time.perf_counter() - t0
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

        for S in args.seq_lens:
            g = torch.Generator().manual_seed(1234)
            ids = torch.randint(5, cfg.vocab_size, (args.batch, S), generator=g)
            mask = torch.ones(args.batch, S, dtype=torch.long)
            types = torch.zeros(args.batch, S, dtype=torch.long)
            feed = dict(input_ids=ids.numpy(), attention_mask=mask.numpy(), token_type_ids=types.numpy())
            runs = {
                "onnxruntime": lambda: session.run(["last_hidden_state"], feed)[0],
                "ours": lambda: ours(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state.numpy(),
                "transformers": lambda: hf(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state.numpy(),
            }
            rounds, outs = {}, {}
            with torch.inference_mode():
                for r in range(args.reps):
                    for name, fn in runs.items():
                        outs[name] = _timed(fn, 1, args.warmup if r == 0 else 0, rounds, name)
            for name, times in rounds.items():
                wall = [t for t, _ in times]
                records.append(dict(
                    backend=name, S=S, B=args.batch, dtype="fp32", ms=round(statistics.median(wall), 2),
                    ms_all=[round(t, 2) for t in wall], cpu_ms=round(statistics.median(c for _, c in times), 2),
                    max_abs_diff_vs_ours=float(np.abs(outs[name] - outs["ours"]).max()),
                ))
            print(f"S={S}: " + ", ".join(f"{r['backend']} {r['ms']:.0f} ms" for r in records if r["S"] == S), flush=True)
        size = path.stat().st_size

    result = dict(
        meta=dict(
            device=_device_name("cpu"), cpu_count=os.cpu_count(), threads=torch.get_num_threads(),
            torch=torch.__version__, transformers=transformers.__version__, onnxruntime=ort.__version__,
            python=platform.python_version(), date=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            model=f"BigBirdModel, random init, transformers BigBirdConfig base (hidden 768, 12 heads, block 64, r 3), "
                  f"{args.layers} layers",
            mode="eval, layout hf, fp32, attention_mask all ones; ours on the reference backend, torch.inference_mode",
            timing=f"one process, the three alternate one forward each per round; {args.reps} rounds after "
                   f"{args.warmup} warm-up; median wall time (ms), median process CPU time (cpu_ms)",
            export_seconds=round(export_s, 1), onnx_file_bytes=size, load_avg_1min=os.getloadavg()[0],
        ),
        records=records,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
