"""The ``bigbird`` command (also ``python -m bigbird``).

    bigbird fill-mask --model DIR --text "Paris is the [MASK] of France." --top-k 3
    bigbird embed     --model DIR --file report.txt --pooling mean
    bigbird classify  --model DIR --jsonl reviews.jsonl --field body --output labels.jsonl
    bigbird qa        --model DIR --file paper.txt --question "What is proposed?"
    bigbird tokens    --model DIR --text "Hello world"
    bigbird bench attention --quick          bigbird bench model ...          bigbird info

The inference subcommands write one JSON line per input document (in input order) to stdout or
``--output``, window documents longer than the model's positions (``--max-length``, ``--stride``) and
merge the windows' results, batch by length, and run unchanged under ``torchrun`` (each rank takes a
shard of the documents, rank 0 writes). Documents run ``--chunk-size`` at a time and each finished
chunk is written at once.

``--output PATH`` is checked before any work and written as ``PATH.partial``, renamed to ``PATH`` when
the run has succeeded: a failed or interrupted run leaves an existing ``PATH`` untouched and keeps the
finished records in ``PATH.partial``; the same command with ``--resume`` skips those documents and
continues. A result holding NaN or infinity (which JSON cannot hold) is an error naming the document.

Errors in the input print one line on stderr and exit 1 (``BIGBIRD_DEBUG=1`` prints the traceback);
usage errors exit 2, Ctrl-C exits 130. The logic lives in :mod:`bigbird.inference`.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

__all__ = ["main", "build_parser"]

PROG = "bigbird"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit code 2)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _debug() -> bool:
    return os.environ.get("BIGBIRD_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


# ------------------------------------------------------------------------------------------------
# the parser
# ------------------------------------------------------------------------------------------------


def _input_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inputs (processed in this order: texts, files, JSONL lines)")
    g.add_argument("--text", action="append", default=[], metavar="TEXT", help="an inline document (repeatable)")
    g.add_argument("--file", action="append", default=[], metavar="PATH",
                   help="a file holding one document, UTF-8; '-' reads stdin (repeatable)")
    g.add_argument("--jsonl", action="append", default=[], metavar="PATH",
                   help="a JSONL file, one document per line (its 'id' is copied to the output) (repeatable)")
    g.add_argument("--field", default="text", help="the JSONL field holding the text (default: %(default)s)")


def _model_options(p: argparse.ArgumentParser, *, full: bool) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, metavar="DIR_OR_HUB_ID",
                   help="a checkpoint directory (config.json, model.safetensors, tokenizer files) or a hub id"
                   + ("" if full else "; only its tokenizer is read"))
    g.add_argument("--revision", help="hub revision (branch, tag or commit) for a hub id")
    if not full:
        return
    g.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N (under torchrun, cuda is the local rank's GPU)")
    g.add_argument("--dtype", default="auto", help="auto (default: bfloat16 on a GPU, else float32), float32, float16 or bfloat16")
    g.add_argument("--backend", default=None,
                   help="attention backend: auto, reference, sdpa, flex, triton, cuda (default: the checkpoint's)")
    g.add_argument("--batch-size", type=int, default=8, help="rows (windows) per forward (default: %(default)s)")
    g.add_argument("--max-length", type=int, default=None,
                   help="tokens per window, special tokens included (default: the model's positions)")
    g.add_argument("--stride", type=int, default=None,
                   help="tokens shared by consecutive windows of a long document (default: a quarter of a window)")


def _output_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--output", "-o", metavar="PATH",
                   help="write the JSON lines here instead of stdout: checked before any work, written as "
                        "PATH.partial while the run goes, renamed to PATH when it has succeeded")
    g.add_argument("--resume", action="store_true",
                   help="continue the unfinished run whose records are in PATH.partial (same inputs and subcommand): "
                        "its documents are skipped")
    g.add_argument("--chunk-size", type=int, default=64, metavar="N",
                   help="documents run together (batched by length) before their records are written; a failed or "
                        "interrupted run keeps every finished chunk (default: %(default)s)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


_TASK_HELP = {
    "fill-mask": ("predict every [MASK] token",
                  "Predict each [MASK] of each document. A mask in a long document is predicted from the window "
                  "where it is most central.\nRecord: {index, source, num_tokens, num_windows, masks: [{position, "
                  "window, predictions: [{token_id, token, text, score}]}]}"),
    "embed": ("one vector per document",
              "Embed each document: the pooled output (tanh pooler on [CLS]) or the mean of the token states. "
              "A long document gets the mean of its windows' vectors weighted by their token counts.\n"
              "Record: {index, source, num_tokens, num_windows, pooling, dim, embedding}"),
    "classify": ("sequence classification",
                 "Classify each document with a sequence-classification checkpoint. A long document gets the mean "
                 "of its windows' logits.\nRecord: {index, source, num_tokens, num_windows, logits, probabilities, "
                 "label_id, label, score}"),
    "qa": ("extractive question answering",
           "Answer --question from each document with a question-answering checkpoint: the best span over all "
           "windows, in document token positions (as the ids of `bigbird tokens`) and characters.\nRecord: "
           "{index, source, question, num_tokens, num_windows, answer, start, end, start_char, end_char, score, "
           "window}"),
    "tokens": ("token ids of each whole document",
               "Tokenize each document ([CLS] text [SEP], never windowed).\n"
               "Record: {index, source, num_tokens, ids, tokens}"),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``bigbird`` argument parser (one subparser per subcommand)."""
    from bigbird_kernels import __version__

    parser = _Parser(prog=PROG, formatter_class=_Formatter,
                     description="BigBird on fused block-sparse attention: inference, benchmarks, environment.",
                     epilog="Run `bigbird COMMAND --help` for a command's options. Distributed: "
                            "`torchrun --nproc_per_node N -m bigbird COMMAND ...`. BIGBIRD_DEBUG=1 shows tracebacks.")
    parser.add_argument("--version", action="version", version=f"bigbird {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for task, (short, long) in _TASK_HELP.items():
        p = sub.add_parser(task, help=short, description=long, formatter_class=_Formatter)
        _input_options(p)
        _model_options(p, full=task != "tokens")
        if task == "fill-mask":
            p.add_argument("--top-k", type=int, default=5, help="predictions per [MASK] (default: %(default)s)")
        elif task == "embed":
            p.add_argument("--pooling", choices=("pooled", "mean"), default="pooled", help="how to pool a window (default: %(default)s)")
        elif task == "qa":
            p.add_argument("--question", help="the question (for every document; a JSONL line's field overrides it)")
            p.add_argument("--question-field", default="question", help="the JSONL field holding a line's question (default: %(default)s)")
            p.add_argument("--max-answer-length", type=int, default=30, help="longest answer span, in tokens (default: %(default)s)")
        _output_options(p)
        p.set_defaults(func=_run_task, task=task)

    from .cli_generate import add_generate_parser  # `bigbird generate` (causal LM / encoder-decoder)

    add_generate_parser(sub, _Formatter)

    from .cli_export import add_export_parser  # `bigbird export onnx`

    add_export_parser(sub, _Formatter)

    bench = sub.add_parser("bench", help="benchmarks", description="Benchmarks of the attention op and the model.",
                           formatter_class=_Formatter)
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    att = bench_sub.add_parser(
        "attention", formatter_class=_Formatter, help="attention backends vs sequence length",
        description="Time and peak memory of the attention backends (bigbird_kernels.bench): prints a table, writes "
                    "JSON and, with matplotlib, a PNG of time and memory vs sequence length per backend. On CPU every "
                    "configuration runs in its own process.")
    from bigbird_kernels import bench as attention_bench

    from . import benchmark as model_bench

    attention_bench.add_arguments(att)
    att.set_defaults(func=_bench_attention)
    model = bench_sub.add_parser("model", formatter_class=_Formatter, help="our model vs transformers, same weights",
                                 description=model_bench.__doc__.split("\n\n")[0])
    model_bench.add_arguments(model)
    model.set_defaults(func=_bench_model)

    info = sub.add_parser("info", help="versions, device, built extensions, available backends",
                          description="Versions, device, built extensions and the available attention backends.",
                          formatter_class=_Formatter)
    info.set_defaults(func=_info)
    return parser


# ------------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------------


def _run_task(args) -> int:
    """An inference subcommand: documents in, one record per document out, written chunk by chunk."""
    from .inference import Distributed, InputError, JsonlOutput, Predictor, read_documents

    if args.chunk_size < 1:
        raise InputError(f"--chunk-size must be >= 1, got {args.chunk_size}")
    dist = Distributed(getattr(args, "device", "cpu") if args.task != "tokens" else "cpu")
    out = None  # rank 0's output
    try:
        def open_output() -> None:  # before reading the inputs or loading the model
            nonlocal out
            out = JsonlOutput(args.output, resume=args.resume, task=args.task)

        dist.on_main(open_output)
        docs = read_documents(args.text, args.file, args.jsonl, field=args.field,
                              question=getattr(args, "question", None),
                              question_field=getattr(args, "question_field", None))
        todo = docs[dist.on_main(lambda: out.resume_point(docs)):]
        predictor = None

        def load() -> list:
            nonlocal predictor
            predictor = Predictor.load(
                args.model, args.task, device=getattr(args, "device", "cpu"), dtype=getattr(args, "dtype", "auto"),
                backend=getattr(args, "backend", None), max_length=getattr(args, "max_length", None),
                stride=getattr(args, "stride", None), batch_size=getattr(args, "batch_size", 8),
                progress=not args.no_progress and dist.is_main, local_rank=dist.local_rank, revision=args.revision,
                pooling=getattr(args, "pooling", None))
            return []

        if todo:
            dist.run_and_gather(load)
        for start in range(0, len(todo), args.chunk_size):
            chunk = todo[start : start + args.chunk_size]
            desc = args.task if len(todo) <= args.chunk_size else (
                f"{args.task} {chunk[0].index + 1}-{chunk[-1].index + 1}/{len(docs)}")
            records = dist.run_and_gather(lambda: predictor.run(
                dist.shard(chunk), top_k=getattr(args, "top_k", 5), pooling=getattr(args, "pooling", "pooled"),
                max_answer_length=getattr(args, "max_answer_length", 30), desc=desc))
            if dist.is_main:
                out.write(sorted(records, key=lambda r: r["index"]))
        if dist.is_main:
            out.finish()
        return 0
    except BaseException as e:
        note = out.abort() if out is not None else None
        if note:
            e.add_note(note)
        raise
    finally:
        dist.close()


def _bench_attention(args) -> int:
    import torch

    from bigbird_kernels import bench

    from .inference import InputError

    known = dict.fromkeys(bench.CPU_BACKENDS + bench.GPU_BACKENDS + ("reference",))
    bad = [b for b in args.backends or () if b not in known]
    if bad:
        raise InputError(f"unknown benchmark backend(s) {', '.join(bad)}; expected {', '.join(known)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda but torch sees no CUDA device")
    for name in ("batch", "heads", "head_dim", "block_size"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1")
    seq_lens = args.seq_lens or ((1024, 2048, 4096) if args.device == "cpu" else
                                 (1024, 2048, 4096, 8192, 16384, 32768, 65536))
    bad_lens = [s for s in seq_lens if s < 1 or s % args.block_size]
    if bad_lens:
        raise InputError(f"--seq-lens {bad_lens} are not positive multiples of --block-size {args.block_size}")
    reps = args.reps or (3 if args.quick else None)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = bench.run_attention_benchmark(
        device=args.device, backends=args.backends, seq_lens=seq_lens, dtypes=args.dtypes, passes=tuple(args.passes),
        batch=args.batch, heads=args.heads, head_dim=args.head_dim, block_size=args.block_size,
        num_random_blocks=args.num_random_blocks, reps=reps, progress=progress)
    print(bench.summary_table(result))
    if not args.no_save:
        written = bench.save_results(result, args.out_dir or bench.default_out_dir(args.device), args.name)
        for path in written:
            print(f"wrote {path}")
        if not any(str(p).endswith(".png") for p in written):
            print("no PNG drawn (matplotlib is not installed, or no configuration ran)", file=sys.stderr)
    return 0


def _bench_model(args) -> int:
    from . import benchmark

    return benchmark.run(args)


def _info(args) -> int:
    import platform

    import torch

    from bigbird_kernels.info import report

    print(report())
    versions = []
    for mod in ("tokenizers", "sentencepiece", "safetensors", "huggingface_hub", "numpy", "matplotlib", "tqdm"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except Exception:  # noqa: BLE001 - optional packages
            versions.append(f"{mod} not installed")
    print("packages: " + ", ".join(versions))
    dist = torch.distributed
    backends = [name for name, ok in (("gloo", dist.is_available() and dist.is_gloo_available()),
                                      ("nccl", dist.is_available() and dist.is_nccl_available())) if ok]
    print(f"host: {platform.platform()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; "
          f"torch.distributed backends: {', '.join(backends) or 'none'}")
    return 0


# ------------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------------


def _one_line(e: BaseException) -> str:
    """An exception's message and notes (``add_note``) on one line."""
    text = " ".join(str(e).split())
    if isinstance(e, KeyError):
        text = f"missing key {text}"
    return "; ".join([text or type(e).__name__, *(" ".join(n.split()) for n in getattr(e, "__notes__", ()))])


def _expected_errors() -> tuple[type[BaseException], ...]:
    from .inference import InputError

    return (InputError, OSError, ValueError, ImportError, MemoryError)


def main(argv: list[str] | None = None) -> int:
    """Run the ``bigbird`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    where = PROG
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help, --version, usage errors
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        where = " ".join([PROG, args.command] + ([args.bench_command] if args.command == "bench" else [])
                         + ([args.export_target] if args.command == "export" else []))
        return args.func(args)
    except KeyboardInterrupt as e:
        print(f"{where}: interrupted" + "".join(f"; {n}" for n in getattr(e, "__notes__", ())), file=sys.stderr)
        return 130
    except BaseException as e:  # noqa: BLE001 - sorted below
        is_oom = type(e).__name__ == "OutOfMemoryError"
        if isinstance(e, SystemExit) or not (is_oom or isinstance(e, _expected_errors())):
            raise  # a bug: keep the traceback
        if _debug():
            traceback.print_exc()
        if os.environ.get("RANK", "0") not in ("", "0") and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            return 1  # under torchrun rank 0 reports (every rank sees every failure)
        message = "out of memory (try a smaller --batch-size or --max-length)" if is_oom else _one_line(e)
        print(f"{where}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
