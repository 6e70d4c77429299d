"""Batches of t15 trials from wherever the data lives: the datasets behind the DataLoaders.

Everything a DataLoader worker needs travels as plain values (:class:`DataSpec`: URLs,
object sizes/ETags, storage options); each process opens its own filesystem, cache handles
and memory maps on first use (:class:`Catalog`), so nothing fork-unsafe crosses a fork.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from .errors import DataError, trial_error
from .index import FileIndex, FileReader, Trial, build_index, trial_ranges
from .sidecar import load_sidecars
from .sampling import Plan, TrainRule, rank_share, validation_plan
from .storage import ObjectCache, ObjectInfo, Progress, Storage

log = logging.getLogger(__name__)

TRAIN, VAL = "train", "val"
# Set in DataLoader workers whose batches may not go through /dev/shm (trainer/data/transport.py):
# ``(shape, dtype, batch_bytes)`` -> a tensor allocated elsewhere, or None for /dev/shm.
WORKER_ALLOCATOR = None
FILE_NAMES = {TRAIN: "data_train.hdf5", VAL: "data_val.hdf5"}


@dataclass(frozen=True)
class DataSpec:
    """What the data layer reads, resolved once in the main process and shipped to workers."""

    root_url: str
    sessions: tuple[str, ...]
    storage: Storage
    files: dict = field(hash=False)  # (day, split) -> ObjectInfo, for the files that exist
    neural_dim: int = 512
    feature_subset: Optional[tuple[int, ...]] = None
    bad_trials: dict = field(default_factory=dict, hash=False)  # session -> {(block_num, trial_num)}
    sidecars: dict = field(default_factory=dict, hash=False)  # (day, split) -> ObjectInfo of its index sidecar

    @property
    def remote(self) -> bool:
        return any(not o.local for o in self.files.values())

    def file(self, day: int, split: str) -> ObjectInfo:
        return self.files[(day, split)]


class Catalog:
    """One process's view of the data: trial indexes, local copies, memory maps."""

    def __init__(self, spec: DataSpec):
        self.spec = spec
        self.cache = ObjectCache(spec.storage)
        self._indexes: dict[tuple[int, str], FileIndex] = {}
        self._usable: dict[tuple[int, str], list[int]] = {}
        self._readers: dict[tuple[int, str], FileReader] = {}  # over complete copies
        self._partial: dict[tuple[int, str], tuple[int, FileReader]] = {}  # (inode, reader) over fetches in progress
        self._finite: set[tuple[int, str, int]] = set()
        self._lock = threading.RLock()  # the main process may read from two threads

    # -- indexes

    def index(self, day: int, split: str) -> FileIndex:
        with self._lock:
            idx = self._indexes.get((day, split))
            if idx is None:
                idx = self._indexes[(day, split)] = self._load_index(self.spec.file(day, split))
            return idx

    def _load_index(self, obj: ObjectInfo) -> FileIndex:
        if obj.local:  # indexed once per file version on this machine, not once per worker
            idx = self._read_manifest(obj)
            if idx is None:
                idx = build_index(obj.path, obj.url)
                try:
                    self.cache.write_manifest(obj, idx.to_json())
                except OSError as e:  # a convenience for local files: the data is read in place anyway
                    log.debug("%s: index not cached (%s)", obj.url, e)
        else:
            idx = self._read_manifest(obj) or self._from_sidecar(obj)
            if idx is None:
                self.cache.wait_queued(obj)  # the main process's fetcher has it in its queue
                with self.cache.hold(obj, blocking=True):  # one process builds it, the others read it
                    idx = self._read_manifest(obj)
                    if idx is None:
                        idx = build_index(self.cache.fetch_held(obj), obj.url)
                        self.cache.write_manifest(obj, idx.to_json())
        for t in idx.trials:
            if t.input_features.shape[1] != self.spec.neural_dim:
                raise trial_error(obj.url, t.key, f"input_features has {t.input_features.shape[1]} features, "
                                  f"dataset.neural_dim is {self.spec.neural_dim}")
        return idx

    def _from_sidecar(self, obj: ObjectInfo) -> Optional[FileIndex]:
        """The index from the file's sidecar, if it has one for this version and the run did
        not read it at start (one process of the machine reads it; the others find the
        manifest it leaves)."""
        keys = [k for k, o in self.spec.files.items() if o == obj and k in self.spec.sidecars]
        if not keys:
            return None
        with self.cache.hold_index(obj):
            idx = self._read_manifest(obj)
            if idx is None and load_sidecars({keys[0]: obj}, {keys[0]: self.spec.sidecars[keys[0]]}, self.spec.storage):
                idx = self._read_manifest(obj)
        return idx

    def _read_manifest(self, obj: ObjectInfo) -> Optional[FileIndex]:
        """The cached index of this object version, if there is a usable one."""
        manifest = self.cache.manifest_path(obj)
        try:
            with open(manifest) as f:
                idx = FileIndex.from_json(f.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:  # a damaged cache entry is rebuilt
            log.warning("%s: ignoring unreadable cached manifest %s (%s)", obj.url, manifest, e)
            return None
        return idx if idx is not None and idx.size == obj.size else None

    def usable(self, day: int, split: str) -> list[int]:
        """Positions of the trials not excluded by bad_trials_dict."""
        with self._lock:
            found = self._usable.get((day, split))
            if found is None:
                bad = self.spec.bad_trials.get(self.spec.sessions[day], frozenset())
                trials = self.index(day, split).trials
                found = [p for p, t in enumerate(trials) if (t.block_num, t.trial_num) not in bad]
                if split == TRAIN and not found:
                    raise DataError(f"{self.spec.file(day, split).url}: no training trials "
                                    f"({len(trials)} in the file, all excluded by bad_trials_dict)"
                                    if trials else f"{self.spec.file(day, split).url}: no training trials")
                self._usable[(day, split)] = found
            return found

    def reader(self, day: int, split: str) -> FileReader:
        with self._lock:
            r = self._readers.get((day, split))
            if r is None:
                r = self._readers[(day, split)] = self._open_reader(self.spec.file(day, split))
            return r

    def reader_for(self, day: int, split: str, trials: Sequence[Trial]) -> FileReader:
        """A reader from which ``trials`` can be read now: over the complete copy, or over the
        fetch in progress once their bytes have arrived (the main process's fetcher brings the
        first batch's trials before the rest of their files)."""
        key = (day, split)
        obj = self.spec.file(day, split)
        if obj.local or key in self._readers:
            return self.reader(day, split)
        for _ in range(3):
            got = self.cache.wait_for(obj, trial_ranges(trials))
            if got is None or got[1]:
                with self._lock:
                    self._partial.pop(key, None)  # complete now: its map is the file's
                return self.reader(day, split)
            try:
                inode = os.stat(got[0]).st_ino
                with self._lock:
                    held = self._partial.get(key)
                    if held is None or held[0] != inode:
                        held = self._partial[key] = (inode, FileReader(got[0], obj.url))
                    return held[1]
            except FileNotFoundError:  # completed (renamed) meanwhile: look again
                continue
        return self.reader(day, split)

    def _open_reader(self, obj: ObjectInfo) -> FileReader:
        for attempt in (1, 2):
            if not obj.local:
                self.cache.wait_queued(obj)
            path = self.cache.local_path(obj)
            try:
                reader = FileReader(path, obj.url)
            except FileNotFoundError:  # evicted between lookup and open (a cache over its limit): fetch again
                if attempt == 2:
                    raise
                continue
            if not obj.local:
                self.cache.touch(path)
            return reader
        raise AssertionError("unreachable")

    # -- batches

    def batch(self, plan: Plan, split: str, pad_plan: Optional[Plan] = None) -> dict[str, torch.Tensor]:
        """The batch of ``plan``, padded to its longest trial, or to the longest of ``pad_plan``
        (a rank's share is padded like the whole global batch, so no rank sees other shapes)."""
        rows = []
        for day, positions in plan:
            trials = self.index(day, split).trials
            reader = self.reader_for(day, split, [trials[p] for p in positions])
            rows.extend((day, p, trials[p], reader) for p in positions)
        subset = self.spec.feature_subset
        n_features = len(subset) if subset is not None else self.spec.neural_dim
        n = len(rows)
        sizing = [self.index(d, split).trials[p] for d, ps in pad_plan for p in ps] if pad_plan else \
            [t for _, _, t, _ in rows]
        t_max = max(t.n_time_steps for t in sizing)
        l_max = max(t.seq_len for t in sizing)
        w_max = max(t.transcription.shape[0] for t in sizing)
        phonemes = all(t.seq_class_ids_phoneme is not None for _, _, t, _ in rows)
        p_max = max(t.seq_len_phoneme for _, _, t, _ in rows) + 1 if phonemes else 0
        size = n * (t_max * n_features * 4 + l_max * 8 + w_max * 4 + 5 * 8 + p_max * 8)  # the whole batch, in bytes
        out = {
            "input_features": _empty((n, t_max, n_features), torch.float32, size),
            "seq_class_ids": _empty((n, l_max), torch.int64, size),
            "transcriptions": _empty((n, w_max), torch.int32, size),
        }
        feats, labels, texts = (out[k].numpy() for k in ("input_features", "seq_class_ids", "transcriptions"))
        scalars = np.zeros((5, n), dtype=np.int64)
        for b, (day, pos, t, reader) in enumerate(rows):
            x = reader.read(t, "input_features")
            dest = feats[b, : t.n_time_steps]
            dest[...] = x if subset is None else x[:, subset]
            feats[b, t.n_time_steps :] = 0
            if (day, split, pos) not in self._finite:
                self._check_finite(dest, day, split, t.key)
                self._finite.add((day, split, pos))
            labels[b, : t.seq_len] = reader.read(t, "seq_class_ids")[: t.seq_len]
            labels[b, t.seq_len :] = 0
            text = reader.read(t, "transcription")
            texts[b, : len(text)] = text
            texts[b, len(text) :] = 0
            scalars[:, b] = (t.n_time_steps, t.seq_len, day, t.block_num, t.trial_num)
        for i, key in enumerate(("n_time_steps", "phone_seq_lens", "day_indicies", "block_nums", "trial_nums")):
            out[key] = torch.from_numpy(scalars[i])
        if phonemes:
            out.update(_phoneme_targets(rows, size))
        return out

    def _check_finite(self, x: np.ndarray, day: int, split: str, key: str) -> None:
        # NaN and inf survive a sum, so a finite sum proves every value finite; only a
        # non-finite sum (or an overflowing one) needs the full elementwise check.
        with np.errstate(over="ignore", invalid="ignore"):
            total = float(x.sum())
        if not math.isfinite(total) and not np.isfinite(x).all():
            bad = np.argwhere(~np.isfinite(x))[0]
            raise trial_error(self.spec.file(day, split).url, key,
                              f"non-finite input_features (first at bin {bad[0]}, feature {bad[1]})")


def _phoneme_targets(rows: list, batch_bytes: int) -> dict[str, torch.Tensor]:
    """``seq_class_ids_phoneme`` [n, L] (zero padded) and ``phone_seq_lens_phoneme`` [n], as the fork's loader."""
    lengths = np.array([t.seq_len_phoneme for _, _, t, _ in rows], dtype=np.int64)
    out = {"seq_class_ids_phoneme": _empty((len(rows), int(lengths.max(initial=0))), torch.int64, batch_bytes)}
    labels = out["seq_class_ids_phoneme"].numpy()
    labels[...] = 0
    for b, (_, _, t, reader) in enumerate(rows):
        labels[b, : lengths[b]] = reader.read(t, "seq_class_ids_phoneme")[: lengths[b]]
    out["phone_seq_lens_phoneme"] = torch.from_numpy(lengths)
    return out


def _empty(shape: tuple[int, ...], dtype: torch.dtype, batch_bytes: int) -> torch.Tensor:
    """An uninitialised tensor of a batch of ``batch_bytes``; in a DataLoader worker, allocated
    in shared memory so that handing the batch to the main process does not copy it again (as
    default_collate does)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    if WORKER_ALLOCATOR is not None:
        tensor = WORKER_ALLOCATOR(shape, dtype, batch_bytes)
        if tensor is not None:
            return tensor
    proto = torch.empty(0, dtype=dtype)
    try:
        storage = proto._typed_storage()._new_shared(math.prod(shape))
    except AttributeError:  # a private torch API (the one default_collate uses); without it, copy later
        return torch.empty(shape, dtype=dtype)
    return proto.new(storage).view(shape)


class _PerProcess:
    """Holds a Catalog per process: a forked or spawned worker builds its own on first use."""

    def __init__(self, spec: DataSpec):
        self.spec = spec
        self._catalog: Optional[Catalog] = None
        self._pid = -1

    def catalog(self) -> Catalog:
        if self._catalog is None or self._pid != os.getpid():
            self._catalog, self._pid = Catalog(self.spec), os.getpid()
        return self._catalog

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_catalog"], state["_pid"] = None, -1
        return state


class TrainBatches(_PerProcess, torch.utils.data.Dataset):
    """Item ``k`` is training batch number ``start + k``: the whole batch, or with
    ``world_size`` > 1 this rank's share of it."""

    def __init__(self, spec: DataSpec, rule: TrainRule, start: int, stop: int, progress: Optional[Progress] = None,
                 rank: int = 0, world_size: int = 1):
        _PerProcess.__init__(self, spec)
        self.rule, self.start, self.stop = rule, start, max(start, stop)
        self.progress = progress  # where workers say which batch they are making (the fetcher's pace)
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return self.stop - self.start

    def plan(self, batch: int) -> Plan:
        catalog = self.catalog()
        return self.rule.plan(batch, lambda day: catalog.usable(day, TRAIN))

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        if not 0 <= k < len(self):
            raise IndexError(k)
        if self.progress is not None:
            self.progress.started(self.start + k)
        plan = self.plan(self.start + k)
        if self.world_size == 1:
            return self.catalog().batch(plan, TRAIN)
        return self.catalog().batch(rank_share(plan, self.rank, self.world_size), TRAIN, pad_plan=plan)


class ValBatches(_PerProcess, torch.utils.data.Dataset):
    """Every validation trial once, in batches of up to ``batch_size`` from one session each."""

    def __init__(self, spec: DataSpec, days: Sequence[int], batch_size: int):
        _PerProcess.__init__(self, spec)
        self.days, self.batch_size = tuple(days), batch_size
        self._plans: Optional[list[Plan]] = None

    @property
    def plans(self) -> list[Plan]:
        if self._plans is None:  # needs the val files' indexes: built on first use, not at start-up
            catalog = self.catalog()
            self._plans = validation_plan([(d, catalog.usable(d, VAL)) for d in self.days], self.batch_size)
        return self._plans

    def __len__(self) -> int:
        return len(self.plans)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        return self.catalog().batch(self.plans[k], VAL)
