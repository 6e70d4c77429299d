"""The data layer's entry points: ``make_loaders`` for training, ``check_data`` for ``--dry-run``."""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Optional

import torch

from .dataset import FILE_NAMES, TRAIN, VAL, Catalog, DataSpec, TrainBatches, ValBatches
from .errors import DataError
from .index import trial_ranges
from .sampling import TrainRule
from .storage import ObjectCache, ObjectInfo, Progress, Storage, list_objects
from . import sidecar, transport

log = logging.getLogger(__name__)

_SHOWN_MISSING = 5


def build_spec(cfg) -> DataSpec:
    """List the dataset once and check that every session has its training file."""
    ds = cfg.dataset
    root = cfg.data_url.rstrip("/")
    storage = Storage.from_config(ds.storage)
    wanted = {(d, split): f"{s}/{FILE_NAMES[split]}" for d, s in enumerate(ds.sessions) for split in (TRAIN, VAL)}
    found = list_objects(cfg.data_url, sorted({*wanted.values(), *(r + sidecar.SUFFIX for r in wanted.values())}),
                         storage)
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
        sidecars={k: found[rel + sidecar.SUFFIX] for k, rel in wanted.items()
                  if k in files and found[rel + sidecar.SUFFIX] is not None and not files[k].local},
    )


def _validation_days(cfg, spec: DataSpec) -> list[int]:
    return [d for d in range(len(spec.sessions)) if (d, VAL) in spec.files and cfg.dataset.val_probability(d) > 0]


def make_loaders(
    cfg, *, start_batch: int = 0, rank: int = 0, world_size: int = 1, prefetch: bool = True, seed: Optional[int] = None
) -> tuple[torch.utils.data.DataLoader, Optional[torch.utils.data.DataLoader]]:
    """Train loader for batches ``start_batch .. num_training_batches-1`` and the validation loader.

    Both yield whole batch dicts (``batch_size=None``). Training batch ``i`` depends only on
    ``dataset.seed``, ``i`` and the data. With ``world_size`` > 1 the train loader yields
    rank ``rank``'s share of each global batch of ``dataset.batch_size`` trials; every rank
    must then pass the same ``seed`` (for ``dataset.seed`` -1). ``prefetch=False``: no
    :class:`Fetcher` here (one process per host fetches ahead into the cache the others share).
    The validation loader is None when no session has
    validation data. For remote data a :class:`Fetcher` in this process fetches the objects
    in the order the batches need them (``dataset.storage.prefetch_batches`` batches ahead;
    0 turns it off and each reader fetches what it needs).
    """
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")
    ds = cfg.dataset
    spec = build_spec(cfg)
    seed = ds.seed if seed is None else seed
    if seed < 0:  # the reference's "random"; fixed here so every worker agrees
        seed = secrets.randbits(31)
        log.info("dataset.seed is %d: drawing batches with seed %d", ds.seed, seed)
    rule = TrainRule.create(seed, len(spec.sessions), ds.days_per_batch, ds.batch_size, ds.must_include_days)
    sidecar.load_sidecars(spec.files, spec.sidecars, spec.storage)  # every index before any data
    fetcher = None
    if prefetch:  # the host's fetching process tidies the shared cache
        cache = ObjectCache(spec.storage)
        try:
            freed = cache.forget_replaced(spec.files.values())
        except OSError as e:  # an unwritable cache: nothing to tidy, and local data needs none
            if spec.remote:
                raise DataError(f"cannot tidy the data cache {spec.storage.disk_dir} ({e})") from e
            freed = 0
        if freed:
            log.info("cache: removed %.0f MB of replaced object versions", freed / 2**20)
    progress = Progress(spec.storage.disk_dir) if spec.remote and ds.storage.prefetch_batches > 0 else None
    train = TrainBatches(spec, rule, start_batch, cfg.num_training_batches, progress, rank, world_size)
    val_days = _validation_days(cfg, spec)
    val = ValBatches(spec, val_days, ds.batch_size) if val_days else None
    if progress is not None and prefetch:
        schedule = need_order(spec, rule, start_batch, cfg.num_training_batches, val_days,
                              _first_validation(cfg, start_batch))
        fetcher = Fetcher(Catalog(spec), schedule, progress, start_batch, ds.storage.prefetch_batches, rule).start()
    way = choose_transport(cfg, spec, loaders=2 if val is not None else 1)
    log.info("%s", way.describe())
    options = dict(batch_size=None, shuffle=False, pin_memory=torch.cuda.is_available(), **way.loader_options())
    train_loader = torch.utils.data.DataLoader(train, **options)
    val_loader = torch.utils.data.DataLoader(val, **options) if val is not None else None
    if fetcher is not None:
        weakref.finalize(train_loader, fetcher.stop)
    return train_loader, val_loader


def _first_validation(cfg, start: int) -> Optional[int]:
    """The first batch after which the trainer validates (its rule: every
    ``batches_per_val_step`` batches from batch 0, and after the last)."""
    stop = cfg.num_training_batches
    if start >= stop:
        return None
    step = cfg.batches_per_val_step
    return min(-(-start // step) * step, stop - 1)


def need_order(spec: DataSpec, rule: TrainRule, start: int, stop: int, val_days: list[int],
               first_val: Optional[int]) -> list[tuple[int, tuple[int, str]]]:
    """``(batch, (day, split))`` for every file, by the first batch that needs it: each
    training file at the first batch drawing from its session, the validation files right
    after the first validation step (they are read once that batch is done)."""
    order: list[tuple[int, tuple[int, str]]] = []
    seen: set[int] = set()
    for i in range(start, stop):
        for d in rule.days(i):
            if d not in seen:
                seen.add(d)
                order.append((i, (d, TRAIN)))
        if len(seen) == rule.n_days:
            break
    if first_val is not None:
        order.extend((first_val + 1, (d, VAL)) for d in val_days)
    # stable: within a batch, the rule's order; validation before the training files of the
    # batch after it (the validation pass runs before that batch is taken)
    order.sort(key=lambda item: (item[0], item[1][1] != VAL))
    return order


def choose_transport(cfg, spec: DataSpec, *, loaders: int) -> transport.Transport:
    """How batches reach this process: through /dev/shm when the batches in flight fit there, else
    in memfds (or the workers' pipes); also when the bound is unknown (trainer/data/transport.py)."""
    catalog = Catalog(spec)
    workers, free = cfg.dataset.num_dataloader_workers, transport.shm_free()
    # The bound needs every file's index: local files' metadata, remote files' cached manifests
    # (check_data leaves them); never fetch objects here, before the loaders stream them.
    if any(not o.local and not os.path.exists(catalog.cache.manifest_path(o)) for o in spec.files.values()):
        return transport.choose(workers, None, loaders=loaders, free=free)
    try:
        trials = [t for key in spec.files for t in catalog.index(*key).trials]
    except DataError:  # the reader that needs the broken file reports it, naming the trial
        return transport.choose(workers, None, loaders=loaders, free=free)
    n_features = len(spec.feature_subset) if spec.feature_subset is not None else spec.neural_dim
    one = transport.batch_bytes(cfg.dataset.batch_size, max((t.n_time_steps for t in trials), default=0), n_features,
                                max((t.seq_len for t in trials), default=0),
                                max((t.transcription.shape[0] for t in trials), default=0))
    return transport.choose(workers, one, loaders=loaders, free=free, reserved=_memory_tier_claim(spec))


def _memory_tier_claim(spec: DataSpec) -> int:
    """What the data cache's memory tier (on /dev/shm) may still take: its budget less what it holds."""
    st = spec.storage
    if not spec.remote or not st.memory_dir:
        return 0
    try:
        held = sum(e.stat().st_size for e in os.scandir(st.memory_dir) if e.is_file())
    except FileNotFoundError:
        held = 0
    return max(0, st.memory_bytes - held)


class Fetcher:
    """Fetches the remote objects of a run into the shared cache, in the order the batches
    need them, and builds each one's trial index once (the workers read it from the cache).

    An object is started once the workers have begun a batch within ``lead`` batches of the
    first one needing it, or as soon as a reader waits for it. All objects in progress share
    the process's ``parts_in_flight`` ranged GETs, given to the part needed soonest (its
    priority: the first batch that needs it; validation files ahead of the batch after the
    validation pass). When every file of the first batch is indexed before its bytes arrive
    (from sidecars, or cached manifests), that batch's trials come first and the rest of
    their files after them, so the first batch waits only for its own trials; every other
    file comes whole. Every queued object is announced (:meth:`ObjectCache.queue`), so
    workers wait for it (reading trials as they arrive) rather than fetch it alongside. Best
    effort: a failure is logged and released, and the reader that needs the object fetches
    it itself and raises the error.
    """

    def __init__(self, catalog: Catalog, schedule: list[tuple[int, tuple[int, str]]], progress: Progress, first: int,
                 lead: int, rule: TrainRule, threads: int = 8):
        self.catalog, self.progress, self.first, self.lead, self.rule = catalog, progress, first, lead, rule
        self.cache = catalog.cache
        self._todo = [(need, key) for need, key in schedule if not self.cache.cached_path(catalog.spec.file(*key))
                      or not os.path.exists(self.cache.manifest_path(catalog.spec.file(*key)))]
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name=f"b2t-data-fetch-{i}", daemon=True)
                         for i in range(min(threads, len(self._todo)))]

    def start(self) -> "Fetcher":
        for _, key in self._todo:
            self.cache.queue(self.catalog.spec.file(*key))
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._guard:
            rest, self._todo = self._todo, []
        for _, key in rest:
            self.cache.unqueue(self.catalog.spec.file(*key))
        self.progress.close()

    def _due(self, need: int, obj: ObjectInfo) -> bool:
        return need <= max(self.progress.read(), self.first) + self.lead or self.cache.wanted(obj)

    def _next(self) -> Optional[tuple[int, tuple[int, str]]]:
        with self._guard:
            return self._todo.pop(0) if self._todo else None

    def first_ranges(self, need: int, day: int, split: str) -> list[tuple[int, int, int]]:
        """``(start, stop, priority)`` of the trials the run's first batch reads from this file, if
        its index is known without its bytes; else none. Only for the first batch: later
        batches find whole files, which take fewer, larger GETs (less CPU on both ends)."""
        spec = self.catalog.spec
        if split != TRAIN or need != self.first or not all(  # the plan needs every one of its files' index
                os.path.exists(self.cache.manifest_path(spec.file(d, TRAIN))) for d in self.rule.days(self.first)):
            return []
        trials = self.catalog.index(day, split).trials
        for d, positions in self.rule.plan(self.first, lambda d: self.catalog.usable(d, TRAIN)):
            if d == day:
                found = trial_ranges([trials[p] for p in positions])
                return [(x, y, _priority(self.first, TRAIN)) for x, y in found] if found else []
        return []

    def _run(self) -> None:
        while not self._stop.is_set():
            item = self._next()
            if item is None:
                return
            need, (day, split) = item
            obj = self.catalog.spec.file(day, split)
            try:
                while not self._stop.is_set() and not self._due(need, obj):
                    time.sleep(0.01)
                if not self._stop.is_set():
                    first = self.first_ranges(need, day, split)
                    self.cache.prefetch(obj, first, rest=_priority(need + 1 if first else need, split))
                    self.catalog.index(day, split)
            except DataError as e:
                log.warning("prefetch failed, will retry when needed: %s", e)
            finally:
                self.cache.unqueue(obj)


def _priority(batch: int, split: str) -> int:
    """Bytes needed by ``batch`` (validation files: by the validation pass that runs before it)."""
    return 2 * batch + (0 if split == VAL else 1)


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
    sidecar.load_sidecars(spec.files, spec.sidecars, spec.storage)
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
