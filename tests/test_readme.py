"""Every ```python block of README.md runs as written.

Conventions the README's blocks follow (the harness enforces them):

* Each block is a complete program: it runs on its own, in a fresh Python process and a fresh empty
  working directory, with this checkout first on ``PYTHONPATH``. Blocks share no names.
* Checkpoints are named by hub id. The blocks run offline (``HF_HUB_OFFLINE=1``) against a hub cache
  that holds a tiny random checkpoint (2 layers, hidden 32, the real block size, r and positions, a
  small SentencePiece vocab with BigBird's special token ids) under each id of :data:`HUB_IDS`, with
  its real architecture; any other id fails, as it would offline.
* Directives, in HTML comments on the lines right above a block's fence (invisible on the rendered
  page, so the README says it in the prose when they change what runs):

  - ``<!-- readme-test: gpu -->``: the block needs a CUDA device; skipped without one.
  - ``<!-- readme-test: replace "OLD" "NEW" -->``: run the block with OLD replaced by NEW (e.g. a
    smaller length); OLD must occur in the block.

  An unknown directive fails the test.

Tracebacks of a failing block carry README.md's own line numbers. ``BIGBIRD_README=path`` runs the
blocks of another copy (e.g. a README being rewritten).
"""

from __future__ import annotations

import os
import random
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = Path(os.environ.get("BIGBIRD_README", ROOT / "README.md"))

# hub id -> the class its tiny stand-in checkpoint is saved from (the real checkpoint's architecture)
HUB_IDS = {
    "google/bigbird-roberta-base": "BigBirdForPreTraining",
    "google/bigbird-base-trivia-itc": "BigBirdForQuestionAnswering",
}
_SNAPSHOT = "0" * 40  # commit hash of every stand-in snapshot

_FENCE_OPEN = re.compile(r"^```(python|py)\s*$")
_FENCE_CLOSE = re.compile(r"^```\s*$")
_DIRECTIVE = re.compile(r"^<!--\s*readme-test:\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    line: int  # README line of the first code line
    section: str
    code: str
    directives: list[list[str]] = field(default_factory=list)

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.section.lower()).strip("-") or "top"
        return f"L{self.line}-{slug}"


def parse_blocks(text: str) -> list[Block]:
    """The ```python blocks of a Markdown text, with their section heading and directives."""
    lines = text.splitlines()
    blocks, section, i = [], "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#") and not line.startswith("#!"):
            section = line.lstrip("#").strip()
        if _FENCE_OPEN.match(line):
            directives, j = [], i - 1
            while j >= 0 and (m := _DIRECTIVE.match(lines[j])):
                directives.insert(0, shlex.split(m.group(1)))
                j -= 1
            start = i + 1
            i = start
            while i < len(lines) and not _FENCE_CLOSE.match(lines[i]):
                i += 1
            if i == len(lines):
                raise ValueError(f"README.md: the ```python block opened at line {start} is never closed")
            blocks.append(Block(line=start + 1, section=section, code="\n".join(lines[start:i]) + "\n",
                                directives=directives))
        elif line.lstrip().startswith("```"):  # skip other fenced blocks whole (their lines may hold '#')
            i += 1
            while i < len(lines) and not _FENCE_CLOSE.match(lines[i]):
                i += 1
        i += 1
    return blocks


def prepare(block: Block) -> str:
    """The block's code after its directives; skips the test when a directive says so."""
    code = block.code
    for directive in block.directives:
        if directive == ["gpu"]:
            if not torch.cuda.is_available():
                pytest.skip(f"README.md line {block.line}: the block needs a CUDA GPU")
        elif len(directive) == 3 and directive[0] == "replace":
            _, old, new = directive
            assert old in code, f"README.md line {block.line}: readme-test replace: {old!r} is not in the block"
            code = code.replace(old, new)
        else:
            raise AssertionError(f"README.md line {block.line}: unknown readme-test directive {directive!r} "
                                 "(known: gpu; replace \"OLD\" \"NEW\")")
    return code


BLOCKS = parse_blocks(README.read_text(encoding="utf-8")) if README.is_file() else []


# ------------------------------------------------------------------------------------------ fixtures


def _tiny_sentencepiece(work: Path) -> Path:
    """A small Unigram SentencePiece model with BigBird's special pieces: <pad> 0, </s> 1, <s> 2,
    [CLS] 65, [SEP] 66, [MASK] 67, <unk> 100, trained on the README's own words."""
    spm = pytest.importorskip("sentencepiece", reason="the README test builds a vocab: pip install -e '.[test]'")
    symbols = ["<s>"] + [f"<unused_{i}>" for i in range(62)] + ["[CLS]", "[SEP]", "[MASK]"]
    symbols += [f"<unused_{i}>" for i in range(62, 62 + 98 - len(symbols))]
    words = re.findall(r"[A-Za-z]+", README.read_text(encoding="utf-8")) or ["bigbird"]
    rng = random.Random(0)
    corpus = "\n".join(" ".join(rng.choice(words) for _ in range(12)) + "." for _ in range(2000))
    (work / "corpus.txt").write_text(corpus, encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(work / "corpus.txt"), model_prefix=str(work / "spiece"), model_type="unigram", vocab_size=400,
        pad_id=0, eos_id=1, bos_id=-1, unk_id=100, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        user_defined_symbols=symbols, minloglevel=2, num_threads=1)
    return work / "spiece.model"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    """An offline hub cache holding a tiny random stand-in for each id of :data:`HUB_IDS`."""
    import bigbird
    from bigbird.tokenizer import BigBirdTokenizer

    work = tmp_path_factory.mktemp("readme_vocab")
    spiece = _tiny_sentencepiece(work)
    tok = BigBirdTokenizer.from_pretrained(spiece)
    assert (tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (65, 66, 67)
    cache = tmp_path_factory.mktemp("hub")
    for i, (hub_id, arch) in enumerate(HUB_IDS.items()):
        repo = cache / ("models--" + hub_id.replace("/", "--"))
        snapshot = repo / "snapshots" / _SNAPSHOT
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(_SNAPSHOT, encoding="utf-8")
        config = bigbird.BigBirdConfig(
            vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=4096, block_size=64, num_random_blocks=3,
            sep_token_id=tok.sep_token_id)
        torch.manual_seed(i)
        getattr(bigbird, arch)(config).save_pretrained(snapshot)
        shutil.copyfile(spiece, snapshot / "spiece.model")
    return cache


# --------------------------------------------------------------------------------------------- tests


_SAMPLE = """# Title

```bash
# not a heading
```

## The op

<!-- readme-test: gpu -->
<!-- readme-test: replace "4096" "256" -->
```python
S = 4096
```

```py
print("second")
```
"""


def test_parse_blocks_reads_sections_and_directives_and_skips_other_fences():
    first, second = parse_blocks(_SAMPLE)
    assert (first.line, first.section, first.code) == (12, "The op", "S = 4096\n")
    assert first.directives == [["gpu"], ["replace", "4096", "256"]]
    assert (second.line, second.section, second.directives) == (16, "The op", [])
    assert first.id == "L12-the-op"


def test_unclosed_python_block_is_an_error():
    with pytest.raises(ValueError, match="line 2 is never closed"):
        parse_blocks("text\n```python\nx = 1\n")


def test_replace_directive_substitutes_and_must_match():
    block = Block(line=3, section="s", code="S = 4096\n", directives=[["replace", "4096", "256"]])
    assert prepare(block) == "S = 256\n"
    stale = Block(line=3, section="s", code="S = 1024\n", directives=[["replace", "4096", "256"]])
    with pytest.raises(AssertionError, match="'4096' is not in the block"):
        prepare(stale)


def test_unknown_directive_fails():
    block = Block(line=3, section="s", code="x = 1\n", directives=[["skip"]])
    with pytest.raises(AssertionError, match="unknown readme-test directive"):
        prepare(block)


def test_readme_has_python_examples():
    assert README.is_file(), f"{README} not found"
    assert BLOCKS, "README.md has no ```python block"


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block_runs(block: Block, hub_cache: Path, tmp_path: Path):
    code = prepare(block)
    script = tmp_path / "readme_block.py"
    script.write_text("\n" * (block.line - 1) + code, encoding="utf-8")  # README line numbers in tracebacks
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_CACHE": str(hub_cache),
        "HF_HOME": str(tmp_path / "hf_home"),
    }
    proc = subprocess.run([sys.executable, str(script)], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"README.md block at line {block.line} ({block.section}) failed; traceback lines are "
                    f"README.md lines:\n{proc.stderr[-6000:]}", pytrace=False)
