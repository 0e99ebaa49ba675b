"""``bigbird generate``: continue prompts with a causal-LM checkpoint, or summarise/translate documents
with an encoder-decoder checkpoint (``transformers`` ``EncoderDecoderModel`` of two BigBirds).

    bigbird generate --model DIR --text "Once upon a time" --max-new-tokens 40
    bigbird generate --model DIR --file article.txt --do-sample --top-p 0.9 --seed 0

One JSON line per input (in input order): ``{index, source, num_prompt_tokens, num_new_tokens, ids,
text, finished}``: ``ids`` are the new token ids (after an end-of-sequence id nothing is kept),
``text`` their decoding without special tokens, ``finished`` whether an end-of-sequence id ended it.
A causal-LM prompt is ``[CLS] text`` (no trailing ``[SEP]``), batched with left padding; an
encoder-decoder reads ``[CLS] text [SEP]`` and decodes from the checkpoint's
``decoder_start_token_id``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_generate_parser", "run_generate"]


def add_generate_parser(sub, formatter_class=argparse.RawDescriptionHelpFormatter) -> None:
    """Register the ``generate`` subcommand on the ``bigbird`` subparsers ``sub``."""
    p = sub.add_parser("generate", help="generate text (causal LM or encoder-decoder)",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=formatter_class)
    g = p.add_argument_group("inputs (processed in this order: texts, files)")
    g.add_argument("--text", action="append", default=[], metavar="TEXT", help="a prompt (repeatable)")
    g.add_argument("--file", action="append", default=[], metavar="PATH",
                   help="a file holding one prompt, UTF-8; '-' reads stdin (repeatable)")
    m = p.add_argument_group("model")
    m.add_argument("--model", required=True, metavar="DIR_OR_HUB_ID",
                   help="a BigBirdForCausalLM or encoder-decoder checkpoint directory (with tokenizer files) or hub id")
    m.add_argument("--revision", help="hub revision (branch, tag or commit) for a hub id")
    m.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    m.add_argument("--dtype", default="auto", help="auto (default: bfloat16 on a GPU, else float32), float32, float16 or bfloat16")
    m.add_argument("--batch-size", type=int, default=8, help="prompts per batch (default: %(default)s)")
    s = p.add_argument_group("generation")
    s.add_argument("--max-new-tokens", type=int, default=20, help="new tokens per prompt at most (default: %(default)s)")
    s.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    s.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: %(default)s)")
    s.add_argument("--top-k", type=int, default=None, help="sample among the k most probable tokens")
    s.add_argument("--top-p", type=float, default=None, help="sample within the nucleus of this probability")
    s.add_argument("--seed", type=int, default=None, help="seed of the sampling generator (reproducible runs)")
    o = p.add_argument_group("output")
    o.add_argument("--output", "-o", metavar="PATH",
                   help="write the JSON lines here instead of stdout (as PATH.partial, renamed at the end)")
    o.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from PATH.partial (same inputs), skipping its finished prompts")
    p.set_defaults(func=run_generate)


def _load(folder: Path, device, dtype):
    """The model of a checkpoint folder: an encoder-decoder or a causal LM (by its config.json)."""
    from .encoder_decoder import BigBirdEncoderDecoderModel
    from .heads import BigBirdForCausalLM
    from .inference import InputError

    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise InputError(f"cannot read {folder / 'config.json'}: {e}") from None
    if model_type == "encoder-decoder":
        return BigBirdEncoderDecoderModel.from_pretrained(folder, dtype=dtype, device=device)
    return BigBirdForCausalLM.from_pretrained(folder, dtype=dtype, device=device)


def run_generate(args) -> int:
    """Run ``bigbird generate`` (see the module docstring); returns the exit code. The output is
    written as the other subcommands write theirs (:class:`bigbird.inference.JsonlOutput`): checked
    before any work, batch by batch, resumable with ``--resume``."""
    from .inference import InputError, JsonlOutput, read_documents

    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = JsonlOutput(args.output, resume=args.resume, task="generate")  # checked before any work
    try:
        docs = read_documents(args.text, args.file)
        todo = docs[out.resume_point(docs):]
        if todo:
            _generate(args, todo, out)
        out.finish()
        return 0
    except BaseException as e:
        note = out.abort()
        if note:
            e.add_note(note)
        raise


def _generate(args, docs, out) -> None:
    """Generate for ``docs`` batch by batch, writing each batch's records to ``out`` as it finishes."""
    import torch

    from .encoder_decoder import BigBirdEncoderDecoderModel
    from .inference import load_tokenizer, resolve_device, resolve_dtype, resolve_model_dir

    folder, tok_folder = resolve_model_dir(args.model, revision=args.revision)
    tok = load_tokenizer(tok_folder)
    device = resolve_device(args.device)
    model = _load(folder, device, resolve_dtype(args.dtype, device))
    seq2seq = isinstance(model, BigBirdEncoderDecoderModel)
    eos = model.config.eos_token_id if not seq2seq or model.config.eos_token_id is not None \
        else model.config.decoder.eos_token_id
    eos_set = {eos} if isinstance(eos, int) else set(eos or ())
    generator = torch.Generator(device=device).manual_seed(args.seed) if args.seed is not None else None

    for start in range(0, len(docs), args.batch_size):
        batch = docs[start:start + args.batch_size]
        prompts = [[tok.cls_token_id, *tok.encode(d.text, add_special_tokens=False)] + ([tok.sep_token_id] if seq2seq else [])
                   for d in batch]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, p in enumerate(prompts):
            # left padding for a causal LM, right padding for an encoder
            cols = slice(width - len(p), width) if not seq2seq else slice(0, len(p))
            ids[row, cols] = torch.tensor(p)
            mask[row, cols] = 1
        generated = model.generate(ids.to(device), attention_mask=mask.to(device), max_new_tokens=args.max_new_tokens,
                                   do_sample=args.do_sample, temperature=args.temperature, top_k=args.top_k,
                                   top_p=args.top_p, generator=generator)
        records = []
        for d, p, row in zip(batch, prompts, generated[:, 1 if seq2seq else width:].tolist()):
            cut = next((i for i, t in enumerate(row) if t in eos_set), None)
            kept = row if cut is None else row[:cut]
            records.append({"index": d.index, "source": d.source, "num_prompt_tokens": len(p),
                            "num_new_tokens": len(kept), "ids": kept,
                            "text": tok.decode(kept, skip_special_tokens=True), "finished": cut is not None})
        out.write(records)
