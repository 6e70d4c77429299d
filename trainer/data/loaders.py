"""The data layer's entry points: ``make_loaders`` for training, ``check_data`` for ``--dry-run``."""

from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import dataclass
from typing import Optional

import torch

from .dataset import FILE_NAMES, TRAIN, VAL, Catalog, DataSpec, TrainBatches, ValBatches
from .errors import DataError
from .sampling import TrainRule
from .storage import ObjectCache, ObjectInfo, Storage, list_objects

log = logging.getLogger(__name__)

_SHOWN_MISSING = 5


def build_spec(cfg) -> DataSpec:
    """List the dataset once and check that every session has its training file."""
    ds = cfg.dataset
    root = cfg.data_url.rstrip("/")
    storage = Storage.from_config(ds.storage)
    wanted = {(d, split): f"{s}/{FILE_NAMES[split]}" for d, s in enumerate(ds.sessions) for split in (TRAIN, VAL)}
    found = list_objects(cfg.data_url, sorted(set(wanted.values())), storage)
    missing = [f"{root}/{rel}" for (d, split), rel in wanted.items() if split == TRAIN and found[rel] is None]
    if missing:
        more = f" (and {len(missing) - _SHOWN_MISSING} more)" if len(missing) > _SHOWN_MISSING else ""
        hint = " - none of the sessions was found: is the dataset location right?" if len(missing) == len(ds.sessions) else ""
        raise DataError(f"missing session file{'s' if len(missing) > 1 else ''}: "
                        f"{', '.join(missing[:_SHOWN_MISSING])}{more}{hint}")
    files: dict[tuple[int, str], ObjectInfo] = {k: found[rel] for k, rel in wanted.items() if found[rel] is not None}
    bad = {s: frozenset((int(b), int(t)) for b, ts in blocks.items() for t in ts)
           for s, blocks in (ds.bad_trials_dict or {}).items()}
    return DataSpec(
        root_url=root,
        sessions=tuple(ds.sessions),
        storage=storage,
        files=files,
        neural_dim=ds.neural_dim,
        feature_subset=tuple(ds.feature_subset) if ds.feature_subset is not None else None,
        bad_trials=bad,
    )


def _validation_days(cfg, spec: DataSpec) -> list[int]:
    return [d for d in range(len(spec.sessions)) if (d, VAL) in spec.files and cfg.dataset.val_probability(d) > 0]


def make_loaders(cfg, *, start_batch: int = 0) -> tuple[torch.utils.data.DataLoader, Optional[torch.utils.data.DataLoader]]:
    """Train loader for batches ``start_batch .. num_training_batches-1`` and the validation loader.

    Both yield whole batch dicts (``batch_size=None``). Training batch ``i`` depends only on
    ``dataset.seed``, ``i`` and the data. The validation loader is None when no session has
    validation data. For remote data a background thread starts fetching the files the first
    batches need right away (``dataset.storage.prefetch_batches`` batches first, then the
    rest in the order batches need them; 0 turns it off).
    """
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")
    ds = cfg.dataset
    spec = build_spec(cfg)
    seed = ds.seed
    if seed < 0:  # the reference's "random"; fixed here so every worker agrees
        seed = secrets.randbits(31)
        log.info("dataset.seed is %d: drawing batches with seed %d", ds.seed, seed)
    rule = TrainRule.create(seed, len(spec.sessions), ds.days_per_batch, ds.batch_size, ds.must_include_days)
    train = TrainBatches(spec, rule, start_batch, cfg.num_training_batches)
    val_days = _validation_days(cfg, spec)
    val = ValBatches(spec, val_days, ds.batch_size) if val_days else None
    if spec.remote and ds.storage.prefetch_batches > 0:
        order = _first_need_order(spec, rule, start_batch, cfg.num_training_batches, ds.storage.prefetch_batches, val_days)
        Prefetcher(ObjectCache(spec.storage), order).start()
    workers = ds.num_dataloader_workers
    options = dict(batch_size=None, shuffle=False, num_workers=workers, pin_memory=torch.cuda.is_available())
    train_loader = torch.utils.data.DataLoader(train, **options)
    val_loader = torch.utils.data.DataLoader(val, **options) if val is not None else None
    return train_loader, val_loader


def _first_need_order(spec: DataSpec, rule: TrainRule, start: int, stop: int, window: int,
                      val_days: list[int]) -> list[ObjectInfo]:
    """Training files in the order batches first need them (the next ``window`` batches'
    files first), then the validation files."""
    order: list[int] = []
    for i in range(start, stop):
        for d in rule.days(i):
            if d not in order:
                order.append(d)
        if len(order) == rule.n_days:
            break
    head = []
    for i in range(start, min(stop, start + window)):
        head.extend(d for d in rule.days(i) if d not in head)
    days = head + [d for d in order if d not in head]
    return [spec.file(d, TRAIN) for d in days] + [spec.file(d, VAL) for d in val_days]


class Prefetcher(threading.Thread):
    """Fetches objects into the shared cache in the background, skipping any another
    process is already fetching. Best effort: a failure is logged and the reader that needs
    the object fetches it again and raises the error."""

    def __init__(self, cache: ObjectCache, order: list[ObjectInfo]):
        super().__init__(name="b2t-data-prefetch", daemon=True)
        self.cache, self.order = cache, order

    def run(self) -> None:
        for obj in self.order:
            try:
                self.cache.prefetch(obj)
            except DataError as e:
                log.warning("prefetch failed, will retry when needed: %s", e)


# ---------------------------------------------------------------------------------------
# --dry-run


@dataclass(frozen=True)
class SessionSummary:
    session: str
    n_train: int
    n_val: int  # 0 when the session has no data_val.hdf5
    n_excluded: int  # trials left out by bad_trials_dict
    min_time_steps: int
    max_time_steps: int
    bytes: int


@dataclass(frozen=True)
class DataSummary:
    url: str
    sessions: tuple[SessionSummary, ...]

    @property
    def n_train(self) -> int:
        return sum(s.n_train for s in self.sessions)

    @property
    def n_val(self) -> int:
        return sum(s.n_val for s in self.sessions)

    @property
    def total_bytes(self) -> int:
        return sum(s.bytes for s in self.sessions)

    def format(self) -> str:
        lines = [f"{'session':<16} {'train':>6} {'val':>5} {'excl':>5} {'T min':>6} {'T max':>6} {'MB':>8}"]
        for s in self.sessions:
            lines.append(f"{s.session:<16} {s.n_train:>6} {s.n_val:>5} {s.n_excluded:>5} "
                         f"{s.min_time_steps:>6} {s.max_time_steps:>6} {s.bytes / 2**20:>8.1f}")
        lines.append(f"{len(self.sessions)} sessions, {self.n_train} train and {self.n_val} validation trials, "
                     f"{self.total_bytes / 2**30:.2f} GiB at {self.url}")
        return "\n".join(lines)


def check_data(cfg) -> DataSummary:
    """Build the whole trial index and summarise it; DataError for anything missing or malformed.

    Locally this reads each file's metadata in place. For S3 it is one listing, then the
    cached manifest of each object version, or the object itself fetched once into the
    cache (where training then finds it).
    """
    spec = build_spec(cfg)
    catalog = Catalog(spec)
    out = []
    for d, session in enumerate(spec.sessions):
        counts = {TRAIN: 0, VAL: 0}
        steps: list[int] = []
        excluded = 0
        size = 0
        for split in (TRAIN, VAL):
            if (d, split) not in spec.files:
                continue
            trials = catalog.index(d, split).trials
            usable = catalog.usable(d, split)
            counts[split] = len(usable)
            excluded += len(trials) - len(usable)
            steps.extend(trials[p].n_time_steps for p in usable)
            size += spec.file(d, split).size
        out.append(SessionSummary(session, counts[TRAIN], counts[VAL], excluded,
                                  min(steps, default=0), max(steps, default=0), size))
    return DataSummary(spec.root_url, tuple(out))
