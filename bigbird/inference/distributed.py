"""Sharding under ``torchrun``: :class:`Distributed` gives each rank its documents and gathers the
records on rank 0; a failure on any rank makes every rank raise."""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from .errors import InputError

__all__ = ["Distributed"]


class Distributed:
    """``torch.distributed`` when launched by ``torchrun`` with ``WORLD_SIZE > 1``, else a single process.

    ``rank``/``world_size``/``local_rank``; :meth:`shard` takes this rank's items (strided by rank);
    :meth:`gather` returns every rank's items on rank 0 (None elsewhere).
    """

    def __init__(self, device_name: str = "auto"):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
        self.rank = int(os.environ.get("RANK", "0") or 0)
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
        self.initialised_here = False
        if self.world_size > 1:
            import datetime

            import torch
            import torch.distributed as dist

            want_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
            backend = "nccl" if want_cuda else "gloo"
            if want_cuda:
                torch.cuda.set_device(self.local_rank)
            if not dist.is_initialized():
                timeout = datetime.timedelta(seconds=float(os.environ.get("BIGBIRD_DIST_TIMEOUT", "1800")))
                dist.init_process_group(backend=backend, timeout=timeout)
                self.initialised_here = True
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence) -> list:
        return list(items[self.rank :: self.world_size])

    def gather(self, items: list) -> list | None:
        if self.world_size == 1:
            return list(items)
        import torch.distributed as dist

        parts: list = [None] * self.world_size
        dist.all_gather_object(parts, items)
        if not self.is_main:
            return None
        return [x for part in parts for x in part]

    def run_and_gather(self, fn: Callable[[], list]) -> list | None:
        """Run ``fn`` on every rank and gather its items on rank 0 (None elsewhere).

        If ``fn`` raises on any rank, every rank raises (no rank is left waiting in the collective): the
        failing rank re-raises its own exception, the others an :class:`InputError` (for input errors)
        or ``RuntimeError`` naming the failing rank and its message.
        """
        if self.world_size == 1:
            return list(fn())
        import torch.distributed as dist

        items, error = _attempt(lambda: list(fn()))
        parts: list = [None] * self.world_size
        dist.all_gather_object(parts, (items, _describe(error)))
        if error is not None:
            raise error
        for rank, (_, failure) in enumerate(parts):
            _raise_failure(rank, failure)
        if not self.is_main:
            return None
        return [x for part, _ in parts for x in part]

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 only and return its (picklable) result on every rank. If it raises,
        every rank raises: rank 0 its own exception, the others one naming rank 0 (as
        :meth:`run_and_gather`)."""
        if self.world_size == 1:
            return fn()
        import torch.distributed as dist

        value, error = _attempt(fn) if self.is_main else (None, None)
        box = [(value, _describe(error))]
        dist.broadcast_object_list(box, src=0)
        if error is not None:
            raise error
        value, failure = box[0]
        _raise_failure(0, failure)
        return value

    def close(self) -> None:
        if self.initialised_here:
            import torch.distributed as dist

            if dist.is_initialized():
                # every rank reaches close() after the last collective; the barrier keeps one rank from
                # tearing the group down while another still uses it (gloo aborts the process otherwise)
                try:
                    dist.barrier()
                finally:
                    dist.destroy_process_group()
            self.initialised_here = False


def _attempt(fn: Callable[[], Any]) -> tuple[Any, Exception | None]:
    """``(fn(), None)``, or ``(None, exception)`` when ``fn`` raises an ``Exception``."""
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001 - reported to every rank by the caller
        return None, e


def _describe(error: Exception | None) -> tuple[bool, str] | None:
    """A picklable summary of a rank's failure: (is an input error, "Type: message")."""
    if error is None:
        return None
    return isinstance(error, InputError), f"{type(error).__name__}: {' '.join(str(error).split())}"


def _raise_failure(rank: int, failure: tuple[bool, str] | None) -> None:
    if failure is not None:
        is_input, message = failure
        raise (InputError if is_input else RuntimeError)(f"rank {rank} failed: {message}")
