"""The ``bigbird`` command with hostile input and failing runs: nothing lost, no NaN in JSON, one line.

* ``--output`` is checked before any work, written as ``OUTPUT.partial`` and renamed at the end; a
  failed or interrupted run leaves an existing output untouched and keeps its finished records in the
  partial file, and ``--resume`` continues from there (end to end).
* A record holding NaN or infinity is an error naming the document, never bare ``NaN`` in JSON.
* Bad input of every kind gets one line on stderr and exit code 1 (no traceback), and hints name
  command-line options, not Python arguments.
* JSONL lines end at ``\\n`` only, a BOM is accepted, ``\\r\\n`` works and line numbers stay right.
* ``--dtype bfloat16`` runs on CPU end to end.

The tiny checkpoints and helpers are those of ``test_cli``.
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import bigbird.inference as inference
from test_cli import _close, _doc, _env, _offline, _text, ckpt, records, run_cli, tok, tok_dir, words  # noqa: F401


def _one_line_error(code, out, err, needle, exit_code=1):
    assert code == exit_code and out == "", (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("bigbird "), err
    assert needle in lines[0], err
    return lines[0]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


@pytest.fixture
def no_model_work(monkeypatch):
    """Fail the test if the command reads its inputs or loads a model."""
    def refuse(*_a, **_k):
        raise AssertionError("the command started work before checking --output")

    monkeypatch.setattr(inference.Predictor, "load", refuse)
    monkeypatch.setattr(inference, "read_documents", refuse)


# ------------------------------------------------------------------------------------------------
# --output: checked first, replaced atomically
# ------------------------------------------------------------------------------------------------


def test_output_is_checked_before_any_work(capsys, ckpt, tmp_path, no_model_work):
    m = ckpt["mlm"]
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    (tmp_path / "left.jsonl.partial").write_text("")
    cases = {
        tmp_path: "is a directory",
        tmp_path / "no" / "o.jsonl": "does not exist",
        a_file / "o.jsonl": "is not a directory",
        "/dev/null": "not a regular file",
        tmp_path / "left.jsonl": "add --resume to continue it, or delete it",
    }
    if sys.platform.startswith("linux"):
        cases["/proc/o.jsonl"] = "cannot create '/proc/o.jsonl.partial'"
    for out, needle in cases.items():
        line = _one_line_error(*run_cli(capsys, "embed", "--model", m, "--text", "ka", "--output", out), needle)
        assert "--output" in line or ".partial" in line


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permissions do not bind root")
def test_output_folder_or_file_not_writable(capsys, ckpt, tmp_path, no_model_work):
    folder = tmp_path / "ro"
    folder.mkdir()
    kept = tmp_path / "kept.jsonl"
    kept.write_text("old\n")
    kept.chmod(0o444)
    folder.chmod(0o555)
    try:
        _one_line_error(*run_cli(capsys, "embed", "--model", ckpt["mlm"], "--text", "ka", "-o", folder / "o.jsonl"),
                        "cannot create")
        _one_line_error(*run_cli(capsys, "embed", "--model", ckpt["mlm"], "--text", "ka", "-o", kept), "read-only")
    finally:
        folder.chmod(0o755)


def test_success_replaces_the_output_and_leaves_no_partial(capsys, ckpt, words, tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text("old\n")
    code, stdout, err = run_cli(capsys, "tokens", "--model", ckpt["mlm"], "--text", _text(_doc(words, 5, 1)),
                                "--text", _text(_doc(words, 7, 2)), "--chunk-size", 1, "-o", out)
    assert code == 0 and stdout == "", err
    assert [r["index"] for r in _read_jsonl(out)] == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.jsonl"]
    link = tmp_path / "link.jsonl"
    link.symlink_to(out)  # a link to the output: the file it points to is replaced, the link stays
    code, _, err = run_cli(capsys, "tokens", "--model", ckpt["mlm"], "--text", "ka", "-o", link)
    assert code == 0 and link.is_symlink() and [r["num_tokens"] for r in _read_jsonl(out)] == [3], err


def test_disk_full_leaves_the_existing_output_untouched(ckpt, words, tmp_path):
    """A write that fails (file size limit: EFBIG, as a full disk gives ENOSPC) keeps the old output."""
    out = tmp_path / "o.jsonl"
    out.write_text("precious\n" * 10)
    texts = sum((["--text", _text(_doc(words, 40, i))] for i in range(12)), [])  # records of ~0.7 kB

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, resource.RLIM_INFINITY))

    cmd = ["tokens", "--model", ckpt["mlm"], *texts, "--chunk-size", 1, "-o", out]
    proc = subprocess.run([sys.executable, "-m", "bigbird", *map(str, cmd)], capture_output=True, text=True,
                          env=_env(), preexec_fn=limit, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "cannot write" in proc.stderr and "o.jsonl.partial" in proc.stderr and "--resume" in proc.stderr
    assert out.read_text() == "precious\n" * 10
    kept = (tmp_path / "o.jsonl.partial").read_bytes()
    assert 0 < len(kept) <= 3000


# ------------------------------------------------------------------------------------------------
# interrupted and failed runs keep their finished records; --resume continues
# ------------------------------------------------------------------------------------------------


_RUN = inference.Predictor.run
_LOAD = inference.Predictor.load


def _fail_on_call(monkeypatch, n, exc):
    """Predictor.run raises ``exc`` on its ``n``-th call (1-based; 0: never); returns the indices of the
    documents each call got."""
    calls = []

    def run(self, docs, **kw):
        calls.append([d.index for d in docs])
        if len(calls) == n:
            raise exc
        return _RUN(self, docs, **kw)

    monkeypatch.setattr(inference.Predictor, "run", run)
    return calls


def _docs_file(tmp_path, words, n=7):
    return _jsonl(tmp_path / "in.jsonl", [{"id": f"d{i}", "text": _text(_doc(words, 10 + 9 * i, 30 + i))}
                                          for i in range(n)])


def test_interrupt_keeps_finished_records_and_resume_completes(capsys, ckpt, words, tmp_path, monkeypatch):
    inp = _docs_file(tmp_path, words)
    args = ["embed", "--model", ckpt["mlm"], "--jsonl", inp, "--pooling", "mean", "--chunk-size", 2]
    whole = records(capsys, *args)
    out = tmp_path / "o.jsonl"
    out.write_text("previous results\n")
    partial = tmp_path / "o.jsonl.partial"

    calls = _fail_on_call(monkeypatch, 3, KeyboardInterrupt())
    line = _one_line_error(*run_cli(capsys, *args, "-o", out), "interrupted", exit_code=130)
    assert f"4 finished records are kept in '{partial}'" in line and "--resume" in line
    assert calls == [[0, 1], [2, 3], [4, 5]]
    assert out.read_text() == "previous results\n"
    assert [r["id"] for r in _read_jsonl(partial)] == ["d0", "d1", "d2", "d3"]

    # without --resume the partial file is in the way; a write cut short leaves an incomplete last line
    _one_line_error(*run_cli(capsys, *args, "-o", out), "add --resume")
    with partial.open("a", encoding="utf-8") as f:
        f.write('{"index": 4, "source": "cut sh')
    calls = _fail_on_call(monkeypatch, 0, None)
    code, stdout, err = run_cli(capsys, *args, "-o", out, "--resume")
    assert code == 0 and stdout == "", err
    assert calls == [[4, 5], [6]]  # only the documents not done
    assert not partial.exists()
    resumed = _read_jsonl(out)
    assert [r["index"] for r in resumed] == list(range(7)) and [r["id"] for r in resumed] == [r["id"] for r in whole]
    for a, b in zip(resumed, whole):
        assert a["source"] == b["source"]
        _close(a["embedding"], b["embedding"])


def test_failed_run_keeps_finished_records_and_resume_needs_the_same_input(capsys, ckpt, words, tmp_path,
                                                                             monkeypatch):
    inp = _docs_file(tmp_path, words, 5)
    args = ["tokens", "--model", ckpt["mlm"], "--jsonl", inp, "--chunk-size", 2]
    out = tmp_path / "o.jsonl"
    partial = tmp_path / "o.jsonl.partial"
    _fail_on_call(monkeypatch, 2, inference.InputError("boom"))
    line = _one_line_error(*run_cli(capsys, *args, "-o", out), "boom")
    assert f"2 finished records are kept in '{partial}'" in line and not out.exists()

    (tmp_path / "elsewhere").mkdir()
    other = _docs_file(tmp_path / "elsewhere", words, 5)  # the same texts from another file: other sources
    for argv, needle in (([*args[:3], "--jsonl", other, "--chunk-size", 2], "line 1 of"),
                         ([*args[:3], "--jsonl", inp, "--text", "ka lo"], "line 1 of"),  # text[0] comes first
                         (["embed", *args[1:]], "not the embed record"),
                         ([*args[:3], "--text", "ka"], "holds 2 records but this input only 1")):
        line = _one_line_error(*run_cli(capsys, *argv, "-o", out, "--resume"), needle)
        assert "delete it to start over" in line
        assert len(_read_jsonl(partial)) == 2  # a refused resume keeps the partial file

    _fail_on_call(monkeypatch, 0, None)
    code, _, err = run_cli(capsys, *args, "-o", out, "--resume")
    assert code == 0 and [r["id"] for r in _read_jsonl(out)] == [f"d{i}" for i in range(5)], err


def test_nothing_finished_leaves_no_partial_file(capsys, ckpt, words, tmp_path, monkeypatch):
    out = tmp_path / "o.jsonl"
    _fail_on_call(monkeypatch, 1, KeyboardInterrupt())
    line = _one_line_error(*run_cli(capsys, "tokens", "--model", ckpt["mlm"], "--text", "ka", "-o", out),
                           "interrupted", exit_code=130)
    assert line == "bigbird tokens: interrupted" and list(tmp_path.iterdir()) == []


def test_resume_without_partial_starts_afresh_and_needs_a_file(capsys, ckpt, tmp_path):
    out = tmp_path / "o.jsonl"
    code, _, err = run_cli(capsys, "tokens", "--model", ckpt["mlm"], "--text", "ka lo", "-o", out, "--resume")
    assert code == 0 and len(_read_jsonl(out)) == 1, err
    _one_line_error(*run_cli(capsys, "tokens", "--model", ckpt["mlm"], "--text", "ka", "--resume"),
                    "--resume needs --output")


# ------------------------------------------------------------------------------------------------
# non-finite results
# ------------------------------------------------------------------------------------------------


def _poison_model(monkeypatch, bad_call, value):
    """The loaded model's ``bad_call``-th forward (1-based) returns ``value`` in every float output."""
    calls = []

    def load(*a, **k):
        predictor = _LOAD(*a, **k)
        forward = predictor.model.forward

        def poisoned(*args, **kwargs):
            out = forward(*args, **kwargs)
            calls.append(1)
            if len(calls) == bad_call:
                for key, t in out.items():
                    if torch.is_tensor(t) and t.is_floating_point():
                        t.fill_(value)
            return out

        predictor.model.forward = poisoned
        return predictor

    monkeypatch.setattr(inference.Predictor, "load", load)


@pytest.mark.parametrize("task,value,where", [("classify", float("nan"), "logits[0]"),
                                              ("qa", float("inf"), "score"),
                                              ("embed", float("-inf"), "embedding[0]")])
def test_non_finite_result_is_an_error_naming_the_document(capsys, ckpt, words, tmp_path, monkeypatch, task,
                                                           value, where):
    model = {"classify": ckpt["cls"], "qa": ckpt["qa"], "embed": ckpt["mlm"]}[task]
    texts = sum((["--text", _text(_doc(words, 12, 40 + i))] for i in range(3)), [])
    args = [task, "--model", model, *texts, "--chunk-size", 1, *(["--question", "ka lo"] if task == "qa" else [])]
    _poison_model(monkeypatch, 2, value)
    code, out, err = run_cli(capsys, *args)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"text[1]: the model gave a non-finite value (NaN or infinity) in {where}" in err
    assert [json.loads(line)["index"] for line in out.splitlines()] == [0]
    assert "NaN" not in out and "Infinity" not in out

    _poison_model(monkeypatch, 2, value)
    dest = tmp_path / "o.jsonl"
    line = _one_line_error(*run_cli(capsys, *args, "-o", dest), "text[1]")
    assert "1 finished record is kept" in line and not dest.exists()
    assert [r["index"] for r in _read_jsonl(tmp_path / "o.jsonl.partial")] == [0]


# ------------------------------------------------------------------------------------------------
# bad input: one line, exit 1, hints in terms of the command line
# ------------------------------------------------------------------------------------------------


def _bad_input_cases(ckpt, tmp_path):
    def write(name, data: bytes):
        (tmp_path / name).write_bytes(data)
        return tmp_path / name

    m = ckpt["mlm"]
    corrupt = tmp_path / "corrupt"
    shutil.copytree(m, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    extra = tmp_path / "extra_key"
    shutil.copytree(m, extra)
    from safetensors.torch import load_file, save_file

    state = load_file(extra / "model.safetensors")
    state["bert.embeddings.surprise"] = torch.zeros(2)
    save_file(state, extra / "model.safetensors", metadata={"format": "pt"})
    return {
        "surrogate in --text": (["tokens", "--model", m, "--text", "ka \udcff lo"],
                                "text[0] holds byte 0xff, which is not UTF-8"),
        "surrogate in --question": (["qa", "--model", ckpt["qa"], "--text", "ka", "--question", "\ud800"],
                                    "--question holds a lone surrogate U+D800"),
        "non-UTF-8 --file": (["tokens", "--model", m, "--file", write("latin1.txt", b"caf\xe9")],
                             "is not UTF-8 text (unexpected end of data at byte 3)"),
        "non-UTF-8 --jsonl": (["tokens", "--model", m, "--jsonl", write("l.jsonl", b'{"text": "\xff"}\n')],
                              "is not UTF-8 text"),
        "surrogate escape in JSONL": (["tokens", "--model", m, "--jsonl",
                                       write("s.jsonl", b'{"text": "ok"}\n{"text": "a\\udc00b"}\n')],
                                      "s.jsonl:2: field 'text' holds a lone surrogate U+DC00 at character 1"),
        "surrogate in JSONL id": (["tokens", "--model", m, "--jsonl",
                                   write("i.jsonl", b'{"text": "a", "id": "\\ud83d"}')],
                                  "i.jsonl:1: field 'id' holds a lone surrogate"),
        "surrogate in JSONL question": (["qa", "--model", ckpt["qa"], "--jsonl",
                                         write("q.jsonl", b'{"text": "a", "question": "\\udfff"}')],
                                        "q.jsonl:1: field 'question' holds a lone surrogate U+DFFF"),
        "deeply nested JSON": (["tokens", "--model", m, "--jsonl", write("deep.jsonl", b"[" * 100000)],
                               "deep.jsonl:1: JSON nested too deeply"),
        "deeply nested id": (["tokens", "--model", m, "--jsonl",
                              write("deep_id.jsonl", b'{"text": "a", "id": ' + b"[" * 100000 + b"]" * 100000 + b"}")],
                             "deep_id.jsonl:1: JSON nested too deeply"),
        "JSONL array line": (["tokens", "--model", m, "--jsonl", write("arr.jsonl", b'["ka"]')],
                             "arr.jsonl:1: expected a JSON object, got list"),
        "JSONL string line": (["tokens", "--model", m, "--jsonl", write("str.jsonl", b'"ka"')],
                              "expected a JSON object, got str"),
        "JSONL without the field": (["tokens", "--model", m, "--jsonl", write("nof.jsonl", b'{"body": "ka"}')],
                                    "no field 'text' (choose another with --field)"),
        "JSONL field not a string": (["tokens", "--model", m, "--jsonl", write("num.jsonl", b'{"text": 3}')],
                                     "field 'text' must be a string, got int"),
        "JSONL NaN literal": (["tokens", "--model", m, "--jsonl", write("nan.jsonl", b'{"text": "a", "id": NaN}')],
                              "nan.jsonl:1: NaN is not valid JSON"),
        "JSONL id out of range": (["tokens", "--model", m, "--jsonl",
                                   write("big.jsonl", b'{"text": "a", "id": 1e999}')],
                                  "big.jsonl:1: field 'id' holds a number out of range"),
        "JSONL question not a string": (["qa", "--model", ckpt["qa"], "--jsonl",
                                         write("qn.jsonl", b'{"text": "a", "question": 1}')],
                                        "field 'question' must be a string, got int"),
        "classify on an MLM checkpoint": (["classify", "--model", m, "--text", "ka"],
                                          "the command line cannot start a new head"),
        "qa on an MLM checkpoint": (["qa", "--model", m, "--text", "ka", "--question", "lo"],
                                    "the command line cannot start a new head"),
        "classify on a QA checkpoint": (["classify", "--model", ckpt["qa"], "--text", "ka"],
                                        "has no weights for the classify head"),
        "fill-mask on a classifier": (["fill-mask", "--model", ckpt["cls"], "--text", "[MASK]"],
                                      "fill-mask needs a pretrained (masked-LM) checkpoint"),
        "pooled embedding without pooler": (["embed", "--model", ckpt["qa"], "--text", "ka"], "use --pooling mean"),
        "checkpoint with an unexpected key": (["embed", "--model", extra, "--text", "ka"],
                                              "the command line cannot adapt this checkpoint to `bigbird embed`"),
        "corrupt weights": (["embed", "--model", corrupt, "--text", "ka"], "model.safetensors"),
        "mistyped local path": (["embed", "--model", "./no-such-dir", "--text", "ka"], "no-such-dir"),
        "chunk size 0": (["tokens", "--model", m, "--text", "ka", "--chunk-size", 0], "--chunk-size must be >= 1"),
    }


_BAD_INPUT = ["surrogate in --text", "surrogate in --question", "non-UTF-8 --file", "non-UTF-8 --jsonl",
              "surrogate escape in JSONL", "surrogate in JSONL id", "surrogate in JSONL question", "deeply nested JSON",
              "deeply nested id", "JSONL array line", "JSONL string line", "JSONL without the field",
              "JSONL field not a string", "JSONL NaN literal", "JSONL id out of range", "JSONL question not a string",
              "classify on an MLM checkpoint", "qa on an MLM checkpoint", "classify on a QA checkpoint",
              "fill-mask on a classifier", "pooled embedding without pooler", "checkpoint with an unexpected key",
              "corrupt weights", "mistyped local path", "chunk size 0"]


@pytest.mark.parametrize("case", _BAD_INPUT)
def test_bad_input_gets_one_line(capsys, ckpt, tmp_path, case):
    argv, needle = _bad_input_cases(ckpt, tmp_path)[case]
    line = _one_line_error(*run_cli(capsys, *argv), needle)
    assert "allow_missing" not in line and "ignore_unexpected" not in line  # hints name CLI options only


@pytest.mark.parametrize("name", ["{existing}/typo", ".typo", "my model", "a/b/c"])
def test_mistyped_model_path_is_never_looked_up_on_the_hub(capsys, monkeypatch, tmp_path, name):
    import huggingface_hub

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("hub looked up"))
    name = name.format(existing="runs")
    _one_line_error(*run_cli(capsys, "tokens", "--model", name, "--text", "ka"), f"model directory {name!r} does not exist")


@pytest.mark.parametrize("data,needle", [
    (b"ka \xff lo", "file '<stdin>' is not UTF-8 text (invalid start byte at byte 3)"),
    (b"\xef\xbb\xbf\xc3", "at byte 3"),  # the offset counts the BOM
    (b"  \n", "<stdin> is empty"),
])
def test_bad_stdin_gets_one_line(capsys, ckpt, monkeypatch, data, needle):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    _one_line_error(*run_cli(capsys, "tokens", "--model", ckpt["mlm"], "--file", "-"), needle)


def test_stdin_is_read_as_utf8_without_bom(capsys, ckpt, tok, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\ufeffka lo".encode()), encoding="latin-1"))
    (rec,) = records(capsys, "tokens", "--model", ckpt["mlm"], "--file", "-")
    assert rec["source"] == "<stdin>" and rec["ids"] == tok.encode("ka lo")


# ------------------------------------------------------------------------------------------------
# JSONL lines
# ------------------------------------------------------------------------------------------------


def test_jsonl_splits_on_newline_only_with_bom_crlf_and_blank_lines(capsys, ckpt, tok, tmp_path):
    texts = ["ka\u2028lo", "mi\u2029ne", "su\x85ta", "ri\rbo"]  # all legal inside a JSON string (\r escaped)
    lines = [json.dumps(t, ensure_ascii=False) for t in texts]
    content = ("\ufeff" + '{"text": ' + lines[0] + ', "id": 1}\r\n' + "\r\n" + " \t\n"
               + '{"text": ' + lines[1] + "}\n" + '{"text": ' + lines[2] + "}\r\n\n" + '{"text": ' + lines[3] + "}")
    path = tmp_path / "in.jsonl"
    path.write_bytes(content.encode("utf-8"))
    recs = records(capsys, "tokens", "--model", ckpt["mlm"], "--jsonl", path)
    assert [r["source"] for r in recs] == [f"{path}:{n}" for n in (1, 4, 5, 7)]
    assert recs[0]["id"] == 1
    for r, t in zip(recs, texts):
        assert r["ids"] == tok.encode(t)
    path.write_bytes((content + "\n\n{oops}\n").encode("utf-8"))
    _one_line_error(*run_cli(capsys, "tokens", "--model", ckpt["mlm"], "--jsonl", path), f"{path}:9: not valid JSON")


# ------------------------------------------------------------------------------------------------
# bfloat16 on CPU
# ------------------------------------------------------------------------------------------------


def test_bfloat16_on_cpu_end_to_end(capsys, ckpt, words):
    """Every task runs in bfloat16 on CPU and agrees with float32 to bfloat16 precision (long documents
    included: windows of block-sparse attention)."""
    short, long = _text(_doc(words, 20, 50, masks=(3,))), _text(_doc(words, 300, 51, masks=(7, 250)))
    for task, model, extra in (("fill-mask", ckpt["mlm"], []), ("embed", ckpt["mlm"], ["--pooling", "mean"]),
                               ("classify", ckpt["cls"], []), ("qa", ckpt["qa"], ["--question", "ka lo"])):
        args = [task, "--model", model, "--text", short, "--text", long, "--device", "cpu", *extra]
        f32 = records(capsys, *args, "--dtype", "float32")
        b16 = records(capsys, *args, "--dtype", "bfloat16")
        for a, b in zip(b16, f32):
            assert a["num_windows"] == b["num_windows"] and a["num_tokens"] == b["num_tokens"]
            if task == "fill-mask":
                for ma, mb in zip(a["masks"], b["masks"]):
                    _close([p["score"] for p in ma["predictions"]][:1], [p["score"] for p in mb["predictions"]][:1],
                           tol=5e-2)
            elif task == "embed":
                _close(a["embedding"], b["embedding"], tol=5e-2)
            elif task == "classify":
                _close(a["probabilities"], b["probabilities"], tol=5e-2)
            else:
                assert a["score"] == pytest.approx(b["score"], abs=0.1 * (1 + abs(b["score"])))


def test_closed_stdout_pipe_is_one_line(ckpt, words, tmp_path):
    """`bigbird ... | head`: the reader goes away; one line on stderr, no second error at exit."""
    inp = _jsonl(tmp_path / "in.jsonl", [{"text": _text(_doc(words, 60, i))} for i in range(200)])  # ~150 kB out
    proc = subprocess.Popen([sys.executable, "-m", "bigbird", "tokens", "--model", ckpt["mlm"], "--jsonl", str(inp),
                             "--chunk-size", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    assert proc.stdout.read(10) == b'{"index": '
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert err.splitlines() == ["bigbird tokens: error: standard output was closed before every record was written"]


def test_real_ctrl_c_keeps_finished_records(ckpt, words, tmp_path):
    """SIGINT to a running command (once its first record is on disk): exit 130, one line naming the partial file."""
    inp = _jsonl(tmp_path / "in.jsonl", [{"text": _text(_doc(words, 50, i))} for i in range(2000)])
    out = tmp_path / "o.jsonl"
    partial = tmp_path / "o.jsonl.partial"
    proc = subprocess.Popen([sys.executable, "-m", "bigbird", "embed", "--model", ckpt["mlm"], "--jsonl", str(inp),
                             "--chunk-size", "1", "--pooling", "mean", "--no-progress", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 120
    while not (partial.exists() and b"\n" in partial.read_bytes()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and stdout == "", stderr
    (line,) = stderr.splitlines()
    n = partial.read_bytes().count(b"\n")  # complete records (a write cut short leaves a partial last line)
    assert 1 <= n < 2000 and not out.exists()
    assert line.startswith("bigbird embed: interrupted; ") and f"kept in '{partial}'" in line and "--resume" in line
