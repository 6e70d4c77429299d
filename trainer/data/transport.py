"""How batches travel from DataLoader workers to the training process, chosen from what /dev/shm holds.

PyTorch hands a worker's tensors to the main process through shared memory (``/dev/shm``).
Docker's default ``/dev/shm`` is 64 MB and SageMaker offers no setting for it, while one real
t15 batch (64 trials × up to ~1,300 bins × 512 float32) is ~170 MB. So, when the loaders start:

- ``shared-memory``: the batches in flight (every worker's prefetched batches for the train and
  the validation loader, plus the ones the training loop holds) fit in what ``/dev/shm`` has
  free, after what the data cache's memory tier may still claim there. Fastest: no copy.
- ``shared-memory or memfd``: they may not fit (or their size is not known yet: remote files
  not yet indexed). Each batch is sized when it is built: one that fits its share of what
  ``/dev/shm`` has free (that free space divided by the batches in flight, so that all of
  them together always fit) goes through ``/dev/shm``; a larger one is built in a memfd.
- ``memfd``: not even a small batch's share is left on ``/dev/shm`` (under 1 MB). Workers build
  each batch in anonymous shared memory (``memfd_create``: the same kind of pages, but not on
  the ``/dev/shm`` mount, so not bound by its size; charged to the container's memory like any
  other) and pass the file descriptor to the main process, which maps it: no copy, as with
  ``/dev/shm``, but fresh pages for every batch (``bench/shm.py`` measures the difference).
- ``pipe``: the same, where ``memfd_create`` is missing (not Linux): workers build each batch in
  ordinary memory and send it pickled through their result pipe; several copies per batch
  (``bench/shm.py`` measures both).
- ``main-process``: ``num_dataloader_workers`` is 0; batches are built where they are used.

The choice and its figures are logged.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

log = logging.getLogger(__name__)

SHM = "/dev/shm"
SHARED, MIXED, MEMFD, PIPE, MAIN = "shared-memory", "shared-memory or memfd", "memfd", "pipe", "main-process"
PREFETCH_FACTOR = 2  # DataLoader's default: batches each worker keeps ready
HELD_BY_LOOP = 2  # batches the training loop may still hold (the current one, a validation batch)
MB = 2**20
MIN_SHARE = MB  # below this share of /dev/shm per batch in flight, every batch goes by memfd


@dataclass(frozen=True)
class Transport:
    mode: str
    workers: int
    batch_bytes: int  # an upper bound for one batch
    needed_bytes: int  # shared memory the batches in flight would take in shared-memory mode
    shm_bytes: Optional[int]  # what /dev/shm had free for batches (None: no /dev/shm)
    share_bytes: int = 0  # MIXED: a batch up to this size goes through /dev/shm

    def describe(self) -> str:
        shm = "no /dev/shm" if self.shm_bytes is None else f"{self.shm_bytes / MB:.0f} MB of /dev/shm free for batches"
        size = (f"a batch up to {self.batch_bytes / MB:.0f} MB, {self.needed_bytes / MB:.0f} MB in flight"
                if self.batch_bytes else "batch size unknown before the files are indexed")
        if self.mode == MIXED:
            size += f"; batches up to {self.share_bytes / MB:.0f} MB by /dev/shm, larger ones by memfd"
        return f"batches travel by {self.mode} ({self.workers} workers; {size}; {shm})"

    def loader_options(self) -> dict[str, Any]:
        """Keyword arguments for ``torch.utils.data.DataLoader``."""
        if self.mode == MEMFD:
            return dict(num_workers=self.workers, worker_init_fn=_memfd_worker, collate_fn=by_memfd,
                        prefetch_factor=PREFETCH_FACTOR)
        if self.mode == MIXED:
            return dict(num_workers=self.workers, worker_init_fn=functools.partial(_mixed_worker, self.share_bytes),
                        collate_fn=by_memfd, prefetch_factor=PREFETCH_FACTOR)
        if self.mode == PIPE:
            return dict(num_workers=self.workers, worker_init_fn=_pipe_worker, collate_fn=by_value,
                        prefetch_factor=PREFETCH_FACTOR)
        if self.mode == SHARED:
            return dict(num_workers=self.workers, prefetch_factor=PREFETCH_FACTOR)
        return dict(num_workers=0)


def batch_bytes(batch_size: int, max_time_steps: int, n_features: int, max_labels: int = 0, max_text: int = 0) -> int:
    """An upper bound for one batch: features (float32), labels (int64), transcription (int32), scalars."""
    per_trial = max_time_steps * n_features * 4 + max_labels * 8 + max_text * 4 + 5 * 8
    return batch_size * per_trial


def shm_free(path: str = SHM) -> Optional[int]:
    try:
        s = os.statvfs(path)
    except OSError:
        return None
    return s.f_bavail * s.f_frsize


def choose(workers: int, one_batch: Optional[int], *, loaders: int = 2, free: Optional[int],
           reserved: int = 0) -> Transport:
    """The transport for ``workers`` per loader, ``loaders`` loaders alive at once, batches of up
    to ``one_batch`` bytes (None: unknown), ``free`` bytes free on /dev/shm of which ``reserved``
    are promised to the data cache's memory tier."""
    in_flight = loaders * workers * PREFETCH_FACTOR + HELD_BY_LOOP
    needed = in_flight * (one_batch or 0)
    available = None if free is None else max(0, free - reserved)
    share = (available or 0) // in_flight
    if workers == 0:
        return Transport(MAIN, 0, one_batch or 0, 0, available)
    if one_batch is not None and available is not None and needed <= available:
        return Transport(SHARED, workers, one_batch, needed, available)
    if not memfd_works():
        return Transport(PIPE, workers, one_batch or 0, needed, available)
    if share < MIN_SHARE:
        return Transport(MEMFD, workers, one_batch or 0, needed, available)
    return Transport(MIXED, workers, one_batch or 0, needed, available, share)


def memfd_works() -> bool:
    if not hasattr(os, "memfd_create"):
        return False
    try:
        os.close(os.memfd_create("b2t-probe", os.MFD_CLOEXEC))
    except OSError:  # seccomp or an old kernel
        return False
    return True


# ---------------------------------------------------------------------------------------
# pipe mode


class ByValue:
    """A tensor that pickles as a numpy array (bytes through the pipe, not a /dev/shm segment)
    and unpickles as a tensor over that array."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor

    def __reduce__(self):
        return torch.from_numpy, (self.tensor.numpy(),)


def by_value(batch: Any) -> Any:
    """DataLoader ``collate_fn`` in pipe mode (runs in the worker): wraps every tensor in :class:`ByValue`."""
    if isinstance(batch, torch.Tensor):
        return ByValue(batch)
    if isinstance(batch, dict):
        return {k: by_value(v) for k, v in batch.items()}
    if isinstance(batch, np.ndarray):
        return ByValue(torch.from_numpy(batch))
    return batch


def _pipe_worker(_worker_id: int) -> None:
    from . import dataset

    dataset.WORKER_ALLOCATOR = _ordinary  # build batches in ordinary memory (see dataset._empty)


def _ordinary(shape: tuple[int, ...], dtype: torch.dtype, _batch_bytes: int = 0) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)


# ---------------------------------------------------------------------------------------
# memfd mode


_memfds: dict[int, int] = {}  # data_ptr of a batch tensor built in a memfd -> its file descriptor


def _memfd_worker(_worker_id: int) -> None:
    from . import dataset

    dataset.WORKER_ALLOCATOR = memfd_empty


def _mixed_worker(share: int, _worker_id: int) -> None:
    from . import dataset

    dataset.WORKER_ALLOCATOR = functools.partial(_mixed_empty, share)


def _mixed_empty(share: int, shape: tuple[int, ...], dtype: torch.dtype, batch_bytes: int) -> Optional[torch.Tensor]:
    """In a memfd when the whole batch exceeds its share of /dev/shm; else None: the usual
    /dev/shm allocation (see dataset._empty)."""
    return memfd_empty(shape, dtype) if batch_bytes > share else None


def memfd_empty(shape: tuple[int, ...], dtype: torch.dtype, _batch_bytes: int = 0) -> torch.Tensor:
    """An uninitialised tensor in a fresh memfd (its descriptor kept for :func:`by_memfd`)."""
    import mmap

    count = math.prod(shape)
    nbytes = max(1, count * torch.empty(0, dtype=dtype).element_size())
    fd = os.memfd_create("b2t-batch", os.MFD_CLOEXEC)
    os.ftruncate(fd, nbytes)
    region = mmap.mmap(fd, nbytes)
    tensor = torch.frombuffer(region, dtype=dtype, count=count).view(shape) if count else torch.empty(shape, dtype=dtype)
    if count:
        _memfds[tensor.data_ptr()] = fd
    else:
        os.close(fd)
    return tensor


class ByMemfd:
    """A tensor built in a memfd: pickles as a duplicate of its descriptor (sent over a Unix
    socket by multiprocessing's resource sharer, as PyTorch's own file_descriptor strategy
    does), and unpickles as a tensor over a mapping of the same pages."""

    __slots__ = ("tensor", "fd")

    def __init__(self, tensor: torch.Tensor, fd: int):
        self.tensor, self.fd = tensor, fd

    def __reduce__(self):
        from multiprocessing import reduction

        return _from_memfd, (reduction.DupFd(self.fd), str(self.tensor.dtype).removeprefix("torch."),
                             tuple(self.tensor.shape))

    def __del__(self):
        try:
            os.close(self.fd)
        except OSError:
            pass


def _from_memfd(dup, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    import mmap

    fd = dup.detach()
    try:
        count = math.prod(shape)
        tensor_dtype = getattr(torch, dtype)
        region = mmap.mmap(fd, count * torch.empty(0, dtype=tensor_dtype).element_size())
    finally:
        os.close(fd)
    return torch.frombuffer(region, dtype=tensor_dtype, count=count).view(shape)


def by_memfd(batch: Any) -> Any:
    """DataLoader ``collate_fn`` in memfd and mixed mode (runs in the worker): a tensor built in
    /dev/shm travels as PyTorch sends it (a handle to the segment)."""
    if isinstance(batch, torch.Tensor):
        fd = _memfds.pop(batch.data_ptr(), None)
        if fd is not None:
            return ByMemfd(batch, fd)
        return batch if batch.is_shared() else ByValue(batch)
    if isinstance(batch, dict):
        return {k: by_memfd(v) for k, v in batch.items()}
    return by_value(batch)
