"""Test resources: the real BigBird vocabulary (when provided) and offline Hugging Face hub caches."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# The real SentencePiece vocab of google/bigbird-roberta-base: BIGBIRD_VOCAB, else shared/ beside the repo.
REAL_VOCAB = Path(os.environ.get("BIGBIRD_VOCAB") or
                  Path(__file__).resolve().parents[2] / "shared" / "bigbird_vocab" / "gpt2.model")
REAL_VOCAB_MISSING = (f"real BigBird vocab not found at {REAL_VOCAB}: to run this test, set BIGBIRD_VOCAB to the "
                      "spiece.model file of google/bigbird-roberta-base")


def fill_hub_cache(cache: Path, repo_id: str, src_folder: Path,
                   commit: str = "0123456789abcdef0123456789abcdef01234567") -> str:
    """Store every file of ``src_folder`` as ``repo_id`` at ``commit`` in ``cache``; returns the commit.

    ``models--{org}--{name}/{refs/main, blobs/<sha256>, snapshots/<commit>/<file> -> ../../blobs/<sha>}``.
    """
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir()
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in os.listdir(src_folder):
        data = (src_folder / f).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / sha).write_bytes(data)
        os.symlink(os.path.join("..", "..", "blobs", sha), snap / f)
    return commit
