"""How batches travel from DataLoader workers to the training process, chosen from what /dev/shm holds.

PyTorch hands a worker's tensors to the main process through shared memory (``/dev/shm``).
Docker's default ``/dev/shm`` is 64 MB and SageMaker offers no setting for it, while one real
t15 batch (64 trials × up to ~1,300 bins × 512 float32) is ~170 MB. So, when the loaders start:

- ``shared-memory``: the batches in flight (every worker's prefetched batches for the train and
  the validation loader, plus the ones the training loop holds) fit in what ``/dev/shm`` has
  free, after what the data cache's memory tier may still claim there. Fastest: no copy.
- ``pipe``: they do not fit. Workers build each batch in ordinary memory and send it pickled
  through their result pipe; the main process turns the arrays back into tensors without a
  copy. Nothing of the batch touches ``/dev/shm``; the cost is one copy per batch each way
  (``bench/shm.py`` measures it).
- ``main-process``: ``num_dataloader_workers`` is 0; batches are built where they are used.

The choice and its figures are logged.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

log = logging.getLogger(__name__)

SHM = "/dev/shm"
SHARED, PIPE, MAIN = "shared-memory", "pipe", "main-process"
PREFETCH_FACTOR = 2  # DataLoader's default: batches each worker keeps ready
HELD_BY_LOOP = 2  # batches the training loop may still hold (the current one, a validation batch)
MB = 2**20


@dataclass(frozen=True)
class Transport:
    mode: str
    workers: int
    batch_bytes: int  # an upper bound for one batch
    needed_bytes: int  # shared memory the batches in flight would take in shared-memory mode
    shm_bytes: Optional[int]  # what /dev/shm had free for batches (None: no /dev/shm)

    def describe(self) -> str:
        shm = "no /dev/shm" if self.shm_bytes is None else f"{self.shm_bytes / MB:.0f} MB of /dev/shm free for batches"
        return (f"batches travel by {self.mode} ({self.workers} workers; a batch up to {self.batch_bytes / MB:.0f} MB, "
                f"{self.needed_bytes / MB:.0f} MB in flight; {shm})")

    def loader_options(self) -> dict[str, Any]:
        """Keyword arguments for ``torch.utils.data.DataLoader``."""
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


def choose(workers: int, one_batch: int, *, loaders: int = 2, free: Optional[int], reserved: int = 0) -> Transport:
    """The transport for ``workers`` per loader, ``loaders`` loaders alive at once, batches of up
    to ``one_batch`` bytes, ``free`` bytes free on /dev/shm of which ``reserved`` are promised
    to the data cache's memory tier."""
    in_flight = loaders * workers * PREFETCH_FACTOR + HELD_BY_LOOP
    needed = in_flight * one_batch
    available = None if free is None else max(0, free - reserved)
    if workers == 0:
        return Transport(MAIN, 0, one_batch, 0, available)
    mode = SHARED if available is not None and needed <= available else PIPE
    return Transport(mode, workers, one_batch, needed, available)


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

    dataset.SHARED_BATCHES_IN_WORKERS = False  # build batches in ordinary memory (see dataset._empty)
