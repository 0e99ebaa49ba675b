"""Batching by length: :func:`plan_batches` groups rows of similar length (and, for block-sparse
attention, of the same number of blocks); :class:`Progress` reports the batches as they run."""

from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

from .errors import InputError

__all__ = ["plan_batches", "Progress"]


def plan_batches(lengths: Sequence[int], batch_size: int, key: Callable[[int], Any] | None = None) -> list[list[int]]:
    """Group row indices into batches of at most ``batch_size`` rows of similar length.

    Rows are sorted by length (longest first, stable); a batch never mixes rows whose ``key(length)``
    differ. Returns lists of row indices; callers scatter the results back by index.
    """
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    key = key or (lambda _n: 0)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    current_key = None
    for i in order:
        k = key(lengths[i])
        if current and (len(current) == batch_size or k != current_key):
            batches.append(current)
            current = []
        current.append(i)
        current_key = k
    if current:
        batches.append(current)
    return batches


class Progress:
    """A progress bar on stderr over ``total`` steps: tqdm when installed, else a one-line counter.
    Silent when ``enabled`` is False or there is at most one step."""

    def __init__(self, total: int, desc: str, enabled: bool = True, stream=None):
        self.total, self.desc, self.count = total, desc, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 1
        self._bar = None
        if self.enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=desc, unit="batch", file=self.stream, leave=False)
            except ImportError:
                self._draw()

    def _draw(self) -> None:
        width = 30
        done = int(width * self.count / max(self.total, 1))
        self.stream.write(f"\r{self.desc}: [{'#' * done}{'.' * (width - done)}] {self.count}/{self.total} batches")
        self.stream.flush()

    def update(self, n: int = 1) -> None:
        self.count += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
        else:
            self._draw()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            self.stream.write("\n")
            self.stream.flush()
        self.enabled = False
