"""Nothing lost and one clear error per bad file or name: atomic saves (disk full, interrupts), mixed
dtypes, safetensors validation, shard indexes pointing elsewhere, wrongly typed weights, mistyped local
paths, input_ids dtypes and out-of-range global blocks."""

from __future__ import annotations

import json
import os
import pathlib
import struct
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from test_model_utils import hf_model, tiny_kwargs
from test_tokenizer import tiny_model  # noqa: F401 (fixture: a tiny SentencePiece model)

import bigbird
from bigbird import BigBirdConfig

REPO = pathlib.Path(__file__).resolve().parents[1]
POSIX_ONLY = pytest.mark.skipif(sys.platform == "win32", reason="resource.RLIMIT_FSIZE is POSIX")


def _model(seed: int, **cfg):
    torch.manual_seed(seed)
    return bigbird.BigBirdForMaskedLM(BigBirdConfig(**tiny_kwargs(**cfg))).eval()


def _files(folder) -> dict[str, bytes]:
    return {f: (folder / f).read_bytes() for f in sorted(os.listdir(folder))}


def _assert_loads_as(folder, model):
    back = bigbird.BigBirdForMaskedLM.from_pretrained(folder)
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


# --------------------------------------------------------------------------------------------------
# atomic saves
# --------------------------------------------------------------------------------------------------

_DISK_FULL = textwrap.dedent("""
    import json, resource, signal, sys, torch
    import bigbird
    from bigbird import BigBirdConfig
    what, folder, limit, cfg = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
    torch.manual_seed(12345)  # weights unlike the old checkpoint's
    if what == "tokenizer":
        from bigbird.tokenizer import BigBirdTokenizer
        obj = BigBirdTokenizer.from_pretrained(cfg["source"])
    else:
        obj = bigbird.BigBirdForMaskedLM(BigBirdConfig(**cfg)) if what == "model" else BigBirdConfig(**cfg)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writing past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        obj.save_pretrained(folder)
    except Exception as e:
        print(f"{type(e).__name__}: {e}")
        sys.exit(3)
    sys.exit(0)
""")


def _save_with_file_size_limit(what: str, folder, limit: int, cfg: dict) -> str:
    """Run ``save_pretrained`` of a fresh object in a subprocess where no file may exceed ``limit`` bytes."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _DISK_FULL, what, str(folder), str(limit), json.dumps(cfg)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 3, f"expected an error from the save; rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@POSIX_ONLY
@pytest.mark.parametrize("sharded", [False, True])
def test_disk_full_save_keeps_the_old_checkpoint(tmp_path, sharded):
    folder = tmp_path / "ckpt"
    if sharded:  # transformers' sharded layout: index + shards, which our save must not delete first
        old_hf = hf_model("BigBirdForMaskedLM")
        old_hf.save_pretrained(folder, max_shard_size="20KB")
        assert (folder / "model.safetensors.index.json").is_file()
        old = bigbird.BigBirdForMaskedLM.from_pretrained(folder)
    else:
        old = _model(1)
        old.save_pretrained(folder)
    before = _files(folder)
    # config.json (~2 KB) fits, the weights (~60 KB) do not
    out = _save_with_file_size_limit("model", folder, 8192, tiny_kwargs())
    assert _files(folder) == before  # nothing replaced, removed or left behind
    _assert_loads_as(folder, old)
    assert out.startswith(f"OSError: cannot write {folder / 'model.safetensors'}"), out


@POSIX_ONLY
def test_disk_full_config_save_keeps_the_old_config(tmp_path):
    BigBirdConfig(**tiny_kwargs(hidden_size=64)).save_pretrained(tmp_path)
    before = _files(tmp_path)
    out = _save_with_file_size_limit("config", tmp_path, 100, tiny_kwargs())
    assert _files(tmp_path) == before
    assert BigBirdConfig.from_pretrained(tmp_path).hidden_size == 64
    assert out.startswith(f"OSError: cannot write {tmp_path / 'config.json'}"), out


@POSIX_ONLY
def test_disk_full_tokenizer_save_keeps_the_old_files(tmp_path, tiny_model):
    from bigbird.tokenizer import BigBirdTokenizer

    folder = tmp_path / "tok"
    BigBirdTokenizer.from_pretrained(tiny_model, mask_token="<unk>").save_pretrained(folder)
    before = _files(folder)
    out = _save_with_file_size_limit("tokenizer", folder, 2048, {"source": str(tiny_model)})
    assert _files(folder) == before
    assert BigBirdTokenizer.from_pretrained(folder).special_tokens["mask_token"] == "<unk>"
    assert out.startswith("OSError: cannot write ") and str(folder) in out, out


def test_interrupted_weights_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    old = _model(1)
    old.save_pretrained(folder)
    before = _files(folder)

    def interrupted(state, filename, *args, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt

    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _model(2, hidden_size=64).save_pretrained(folder)
    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _model(2).save_pretrained(folder, safe_serialization=False)
    monkeypatch.undo()
    assert _files(folder) == before
    _assert_loads_as(folder, old)


def test_interrupted_config_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    old = _model(1)
    old.save_pretrained(folder)
    before = _files(folder)
    write_text = pathlib.Path.write_text

    def interrupted(self, text, *args, **kwargs):
        write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(pathlib.Path, "write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _model(2).save_pretrained(folder)
    with pytest.raises(KeyboardInterrupt):
        BigBirdConfig(**tiny_kwargs(hidden_size=64)).save_pretrained(folder)
    monkeypatch.undo()
    assert _files(folder) == before
    _assert_loads_as(folder, old)


def test_save_where_a_file_is_a_folder_changes_nothing(tmp_path):
    folder = tmp_path / "ckpt"
    old = _model(1)
    old.save_pretrained(folder, safe_serialization=False)
    (folder / "model.safetensors").mkdir()
    before = _files_and_folders(folder)
    with pytest.raises(IsADirectoryError, match="model.safetensors"):
        _model(2).save_pretrained(folder)
    assert _files_and_folders(folder) == before


def _files_and_folders(folder):
    return {f: (folder / f).read_bytes() if (folder / f).is_file() else "dir" for f in sorted(os.listdir(folder))}


def test_save_over_sharded_checkpoint_replaces_it(tmp_path):
    folder = tmp_path / "ckpt"
    hf_model("BigBirdForMaskedLM").save_pretrained(folder, max_shard_size="20KB")
    shards = set(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"].values())
    assert len(shards) > 1 and all((folder / s).is_file() for s in shards)
    (folder / "notes.txt").write_text("mine")  # not ours: kept
    new = _model(3)
    new.save_pretrained(folder)
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors", "notes.txt"]
    _assert_loads_as(folder, new)
    new.save_pretrained(folder, safe_serialization=False)  # and back to the pickle format
    assert sorted(os.listdir(folder)) == ["config.json", "notes.txt", "pytorch_model.bin"]
    _assert_loads_as(folder, new)


# --------------------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------------------


def _mixed_checkpoint(folder, config_dtype):
    model = _model(4)
    model.save_pretrained(folder)
    state = load_file(str(folder / "model.safetensors"))
    for i, k in enumerate(sorted(state)):
        if i % 2 == 0:
            state[k] = state[k].half()
    first = state[sorted(state)[0]].dtype  # safe_open lists keys by name: the first tensor read
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((folder / "config.json").read_text())
    cfg.pop("dtype")
    if config_dtype is not None:
        cfg["torch_dtype"] = config_dtype
    (folder / "config.json").write_text(json.dumps(cfg))
    return model, first


@pytest.mark.parametrize("config_dtype", [None, "float32", "bfloat16"])
def test_mixed_dtype_checkpoint_loads_in_one_dtype(tmp_path, config_dtype):
    model, first = _mixed_checkpoint(tmp_path, config_dtype)
    want = getattr(torch, config_dtype) if config_dtype else first
    for kw, expect in (({}, want), ({"dtype": "float64"}, torch.float64)):
        m = bigbird.BigBirdForMaskedLM.from_pretrained(tmp_path, **kw)
        assert m.dtype == expect
        assert {p.dtype for p in m.parameters()} == {expect}, kw
        ids = torch.randint(3, 100, (1, 20))
        with torch.no_grad():
            assert torch.isfinite(m(ids).logits.float()).all()


def test_loaded_weights_do_not_depend_on_the_file(tmp_path):
    """Another tool rewriting the file in place (no rename) must not change a model loaded from it."""
    _model(4).save_pretrained(tmp_path)
    m = bigbird.BigBirdForMaskedLM.from_pretrained(tmp_path)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    path = tmp_path / "model.safetensors"
    data = bytearray(path.read_bytes())
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    data[header_end:] = bytes(len(data) - header_end)
    with open(path, "r+b") as f:  # same inode: a memory map of it would see this
        f.write(data)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def test_unknown_config_dtype_is_named(tmp_path):
    _model(4).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["dtype"] = "int8"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config of .* has an unknown dtype 'int8'; pass dtype="):
        bigbird.BigBirdForMaskedLM.from_pretrained(tmp_path)
    assert bigbird.BigBirdForMaskedLM.from_pretrained(tmp_path, dtype="float32").dtype == torch.float32


def test_integer_tensor_for_a_float_weight_is_refused(tmp_path):
    _model(5).save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    key = "bert.encoder.layer.0.output.dense.weight"
    state[key] = torch.ones_like(state[key], dtype=torch.int32)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"wrongly typed keys \(1\): {key} checkpoint torch.int32"):
        bigbird.BigBirdForMaskedLM.from_pretrained(tmp_path)
    m = bigbird.BigBirdForMaskedLM.from_pretrained(tmp_path, allow_missing=(key,))  # re-initialised on request
    assert m.bert.encoder.layer[0].output.dense.weight.dtype == torch.float32


# --------------------------------------------------------------------------------------------------
# corrupt safetensors files and shard indexes
# --------------------------------------------------------------------------------------------------


def _raw_safetensors(path, header: dict, data: bytes) -> None:
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


_F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
CORRUPT = {
    "overlapping offsets": ({"a": _F32_2, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)),
    "unknown dtype": ({"a": {**_F32_2, "dtype": "F99"}}, bytes(8)),
    "shape and size disagree": ({"a": {**_F32_2, "shape": [3]}}, bytes(8)),
    "truncated data": ({"a": _F32_2}, bytes(4)),
    "trailing bytes": ({"a": _F32_2}, bytes(16)),
}


@pytest.mark.parametrize("case", list(CORRUPT) + ["bad header JSON", "truncated file", "empty file"])
def test_corrupt_safetensors_is_a_value_error_naming_the_file(tmp_path, case):
    BigBirdConfig(**tiny_kwargs()).save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    if case in CORRUPT:
        _raw_safetensors(path, *CORRUPT[case])
    elif case == "bad header JSON":
        path.write_bytes(struct.pack("<Q", 9) + b"{garbage}")
    elif case == "truncated file":
        _model(6).save_pretrained(tmp_path / "full")
        data = (tmp_path / "full" / "model.safetensors").read_bytes()
        path.write_bytes(data[: len(data) - 100])
    else:
        path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"corrupt or unreadable safetensors file .*model\.safetensors"):
        bigbird.BigBirdForMaskedLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors",
                                   "..\\x.safetensors", "C:\\x.safetensors", ".", ""])
def test_index_naming_a_file_outside_the_folder_is_refused(tmp_path, shard):
    folder = tmp_path / "ckpt"
    hf_model("BigBirdForMaskedLM").save_pretrained(folder, max_shard_size="20KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    key = sorted(index["weight_map"])[0]
    index["weight_map"][key] = shard
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "outside.safetensors").write_bytes((folder / sorted(os.listdir(folder))[-1]).read_bytes())
    with pytest.raises(ValueError, match=r"must lie inside the checkpoint folder") as e:
        bigbird.BigBirdForMaskedLM.from_pretrained(folder)
    assert "model.safetensors.index.json" in str(e.value) and repr(shard) in str(e.value) and key in str(e.value)
    # saving over it does not delete files the bad index names either
    _model(7).save_pretrained(folder)
    assert (tmp_path / "outside.safetensors").is_file()


@pytest.mark.parametrize("shard", [3, None, ["a"], {"f": 1}])
def test_index_with_a_non_string_shard_name_is_a_value_error(tmp_path, shard):
    folder = tmp_path / "ckpt"
    hf_model("BigBirdForMaskedLM").save_pretrained(folder, max_shard_size="20KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["bert.pooler.dense.bias"] = shard
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"corrupt shard index .*index\.json: the shard of 'bert.pooler.dense.bias'"):
        bigbird.BigBirdForMaskedLM.from_pretrained(folder)


# --------------------------------------------------------------------------------------------------
# names that look like local paths
# --------------------------------------------------------------------------------------------------

MISTYPED = ["./typo", "../typo", ".typo", "~/typo-bigbird-xyz", "~typo", "/no/such/dir", "a/b/c", "org/name/",
            "with space", "back\\slash", "existing/typo"]


@pytest.mark.parametrize("name", MISTYPED)
def test_mistyped_local_path_is_missing_directory_without_hub_lookup(tmp_path, monkeypatch, name):
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError(f"hub look-up for {args}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing").mkdir()
    for load in (bigbird.BigBirdModel.from_pretrained, BigBirdConfig.from_pretrained):
        with pytest.raises(FileNotFoundError, match="does not exist") as e:
            load(name)
        assert repr(name) in str(e.value) and str(pathlib.Path(os.path.expanduser(name)).absolute()) in str(e.value)


# --------------------------------------------------------------------------------------------------
# input_ids dtypes and global blocks
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bool, torch.uint8, torch.int8,
                                   torch.int16, torch.complex64])
def test_input_ids_of_a_wrong_dtype_are_a_type_error(dtype):
    model = _model(8)
    ids = torch.ones(2, 12, dtype=dtype)
    with pytest.raises(TypeError, match=rf"input_ids must be integer token ids of dtype int64 or int32, got {dtype}"):
        model(input_ids=ids)


def test_input_ids_int32_and_int64_agree():
    model = _model(8)
    ids = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids.int()).logits)


def test_global_blocks_out_of_range_are_refused_at_load(tmp_path):
    # r = 2: inputs of up to 9 blocks run full attention, so sparse inputs have at least 10 blocks
    ok = BigBirdConfig(**tiny_kwargs(global_blocks=(0, 9, -10, -1)))
    assert ok.global_blocks == (0, 9, -10, -1)
    for bad in [(0, 10), (-11,), (0, 63), (0, 64)]:
        with pytest.raises(ValueError, match=rf"global_blocks .*out of range.*\[-10, 10\)"):
            BigBirdConfig(**tiny_kwargs(global_blocks=bad))
        with pytest.raises(ValueError, match="global_blocks"):
            BigBirdConfig.from_dict(tiny_kwargs(global_blocks=list(bad)))
        ok.save_pretrained(tmp_path)
        raw = json.loads((tmp_path / "config.json").read_text())
        raw["global_blocks"] = list(bad)
        (tmp_path / "config.json").write_text(json.dumps(raw))
        with pytest.raises(ValueError, match="global_blocks"):
            BigBirdConfig.from_pretrained(tmp_path)
    for bad in [(0, 1.0), (True, -1), ("0",), 0]:
        with pytest.raises(ValueError, match="global_blocks must be a sequence of block ids"):
            BigBirdConfig(**tiny_kwargs(global_blocks=bad))
