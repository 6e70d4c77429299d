"""Reach the dataset wherever it lives, and bring each remote object to this machine once.

One code path for a local directory, ``file://`` and ``s3://bucket/prefix``: fsspec's
``url_to_fs`` with s3fs for S3. Local files are read in place. A remote object is fetched
whole with parallel ranged GETs into a cache and read from there; HDF5 is never read
through a network file object (h5py over s3fs can deadlock, and its many small reads at
scattered offsets are what made the seed slow).

The cache (:class:`ObjectCache`) outlives the process: it is a directory on the machine's
local disk (``disk_dir``; inside a job, the job's local volume), where every object version
has its own file named by its URL and ETag, so a later run, a resumed run or another
process on the machine finds it. Above it sits a memory tier on ``/dev/shm`` (sized from
what ``/dev/shm`` can hold), owned by the process that configured storage and removed when
it exits, that receives the same bytes as they arrive and is read first. Replaced versions
of an object are removed, and the least recently used objects are evicted once a tier
would exceed its size limit.

A fetch in progress is a ``.partial`` file with a ``.progress`` record of how many bytes of
each part have arrived, written after the bytes: a body cut short is resumed from the byte
where it stopped, and a run killed with SIGKILL leaves files the next run resumes or
evicts; nothing lives in a per-process place. A per-object lock file (POSIX record lock,
released by the kernel when its holder dies, and never inherited by forked workers) means
concurrent processes never fetch the same object twice and never see a partial one.

Integrity: every part is requested with ``If-Match: <ETag>`` and its length is checked, so
each part is the size asked for and of the version listed (S3 answers 412 otherwise); a
full MD5 check against the ETag is an option (``verify_md5``), not on the default path:
against AWS endpoints the bytes travel over HTTPS, whose per-record MAC already rejects a
body changed in transit; ``verify_md5`` adds a guard for plain-HTTP endpoints (a local
stand-in, a proxy) and for damage at rest, at the cost of hashing every object once.

Retries: botocore's retry configuration (mode, max_attempts) and timeouts cover requests;
s3fs's own retry loop is switched off so the two do not multiply. A body cut short
(truncated, reset mid-transfer, read timeout) is continued here from where it stopped.
Whatever is left after that becomes a :class:`DataError` naming the object.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import fcntl
import hashlib
import heapq
import logging
import mmap
import os
import random
import re
import secrets
import shutil
import struct
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Sequence

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .errors import DataError

log = logging.getLogger(__name__)

MB = 1 << 20
SHM_ROOT = "/dev/shm"
_MEMORY_DIR_PREFIX = "b2t-data-cache-"
_SPACE_MARGIN = 64 * MB  # left free on a cache volume
_READ_SIZE = 1 * MB  # body bytes handed over per read
# Wanted ranges closer than this are fetched as one: the bytes between them cost less time than
# another request's first-byte latency (~20 ms at 80 MB/s is 1.6 MB).
_MERGE_GAP = 1 * MB
DEFAULT_DISK_DIR = os.path.join(tempfile.gettempdir(), "b2t-data-cache")


@dataclass(frozen=True)
class Storage:
    """How to reach the data and where to cache it; plain values, so it pickles to workers."""

    endpoint_url: Optional[str] = None
    region: Optional[str] = None
    retry_mode: str = "standard"
    max_attempts: int = 10
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    parts_in_flight: int = 16
    part_size: int = 8 * MB
    memory_bytes: int = 0  # the memory tier's size limit; 0: no memory tier
    memory_dir: Optional[str] = None  # None: no memory tier
    disk_dir: str = DEFAULT_DISK_DIR
    disk_bytes: int = 0  # the disk tier's size limit; 0: whatever the volume holds, less a margin
    verify_md5: bool = False

    @classmethod
    def from_config(cls, cfg) -> "Storage":
        """From a ``StorageConfig``; the endpoint falls back to AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL,
        the region to AWS_REGION / AWS_DEFAULT_REGION."""
        endpoint = cfg.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        disk_dir = os.path.abspath(cfg.disk_cache_dir or DEFAULT_DISK_DIR)
        memory_dir = memory_tier_dir(disk_dir) if cfg.memory_cache_mb != 0 else None
        memory_bytes = memory_tier_bytes(cfg.memory_cache_mb, memory_dir)
        return cls(
            endpoint_url=endpoint or None,
            # Explicit, as the endpoint: a SageMaker job gets the region only through the request's
            # Environment (launcher/request.py); without it botocore would fall back to us-east-1.
            region=cfg.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None,
            retry_mode=cfg.retry_mode,
            max_attempts=cfg.max_attempts,
            connect_timeout_s=cfg.connect_timeout_s,
            read_timeout_s=cfg.read_timeout_s,
            parts_in_flight=cfg.parts_in_flight,
            part_size=cfg.part_size_mb * MB,
            memory_bytes=memory_bytes,
            memory_dir=memory_dir if memory_bytes > 0 else None,
            disk_dir=disk_dir,
            disk_bytes=cfg.disk_cache_mb * MB,
            verify_md5=cfg.verify_md5,
        )

    def s3_options(self) -> dict:
        config = {
            "retries": {"mode": self.retry_mode, "max_attempts": self.max_attempts},
            "connect_timeout": self.connect_timeout_s,
            "read_timeout": self.read_timeout_s,
            "max_pool_connections": max(10, self.parts_in_flight + 4),
        }
        options: dict = {"config_kwargs": config, "skip_instance_cache": True}
        if self.endpoint_url:
            options["endpoint_url"] = self.endpoint_url
        if self.region:
            options["client_kwargs"] = {"region_name": self.region}
        return options


def memory_tier_dir(disk_dir: str) -> Optional[str]:
    """This process's memory tier for the cache at ``disk_dir``: a directory on /dev/shm,
    created on first use and removed when this process exits (the disk tier is what
    persists); those of processes that died without removing theirs (SIGKILL) are removed
    here. None without a writable /dev/shm.

    Under torchrun the ranks of a host share one directory, named after their common parent
    (torchrun's agent) and removed by local rank 0, so each object is fetched once per host."""
    from ..distributed import host_group_pid, local_rank_zero

    key = (os.getpid(), disk_dir)
    if key in _owned:
        return _owned[key]
    path = None
    if os.path.isdir(SHM_ROOT) and os.access(SHM_ROOT, os.W_OK):
        _remove_orphaned_memory_dirs()
        tag = hashlib.sha1(disk_dir.encode()).hexdigest()[:8]
        path = os.path.join(SHM_ROOT, f"{_MEMORY_DIR_PREFIX}{host_group_pid()}-{tag}")
        if local_rank_zero():
            atexit.register(_remove_memory_dir, path, os.getpid())
    _owned[key] = path
    return path


_owned: dict = {}


def _remove_memory_dir(path: str, owner: int) -> None:
    if os.getpid() == owner:  # forked children inherit atexit handlers
        shutil.rmtree(path, ignore_errors=True)


def _remove_orphaned_memory_dirs() -> None:
    """Memory tiers of processes that died without cleaning up hold RAM until removed."""
    for name in os.listdir(SHM_ROOT):
        if not name.startswith(_MEMORY_DIR_PREFIX):
            continue
        try:
            os.kill(int(name[len(_MEMORY_DIR_PREFIX):].split("-")[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(SHM_ROOT, name), ignore_errors=True)
        except (ValueError, PermissionError):
            pass  # not ours, or alive under another user


def memory_tier_bytes(configured_mb: Optional[int], memory_dir: Optional[str]) -> int:
    """The memory tier's limit: ``configured_mb`` (None: half of /dev/shm), never more than
    /dev/shm can hold next to what the tier holds already, less a margin."""
    if memory_dir is None or configured_mb == 0:
        return 0
    s = os.statvfs(SHM_ROOT)
    total, free = s.f_blocks * s.f_frsize, s.f_bavail * s.f_frsize
    held = _tier_usage(memory_dir)
    room = max(0, free + held - _SPACE_MARGIN)
    wanted = total // 2 if configured_mb is None else configured_mb * MB
    return min(wanted, room)


@dataclass(frozen=True)
class ObjectInfo:
    """One file of the dataset, as listed: where it is, how big, and its version (ETag or mtime)."""

    url: str  # for messages
    path: str  # the filesystem's path
    size: int
    etag: Optional[str]  # S3 ETag with its quotes; None for local files
    local: bool
    mtime_ns: int = 0  # local files: the modification time (with the size, their version)


# ---------------------------------------------------------------------------------------
# Filesystems: one per process (fsspec objects are not fork-safe)

_filesystems: dict = {}
# Filesystems a forked child inherited, kept referenced and never used. Dropping one runs
# s3fs's finalizer, which closes the pooled connections: on the event loop's epoll set,
# which the child shares with its parent, so the parent stops hearing from those sockets,
# its next request on one waits out read_timeout_s and botocore sends it again (a part
# fetched twice). The child exits with os._exit, so they are never closed here.
_inherited: list = []


def _protocol(url: str) -> str:
    proto = fsspec.utils.get_protocol(url)
    return "s3" if proto == "s3a" else proto


def filesystem(url: str, storage: Storage):
    """``(fs, path)`` for a URL, with a filesystem opened by and for this process."""
    proto = _protocol(url)
    if proto not in ("file", "local", "s3"):
        raise DataError(f"{url}: unsupported storage (use a local path, file:// or s3://)")
    if proto == "s3" and not url.split("://", 1)[-1].strip("/"):
        raise DataError(f"{url}: no bucket in the S3 URL (use s3://bucket/prefix)")
    key = (os.getpid(), proto, storage)
    fs = _filesystems.get(key)
    if fs is None:
        if any(k[0] != os.getpid() for k in _filesystems):  # inherited through fork: unusable here
            _inherited.extend(_filesystems.values())
            _filesystems.clear()
        options = storage.s3_options() if proto == "s3" else {}
        fs, _ = fsspec.core.url_to_fs(url, **options)
        if proto == "s3":
            fs.retries = 1  # botocore's retry config is the one retry policy for requests
        _filesystems[key] = fs
    return fs, fs._strip_protocol(url)


def is_local(fs) -> bool:
    return isinstance(fs, LocalFileSystem)


def list_objects(root_url: str, rel_paths: list[str], storage: Storage) -> dict[str, Optional[ObjectInfo]]:
    """Look up ``<root>/<rel>`` for each rel path: one listing of the prefix on S3, a stat locally."""
    fs, root = filesystem(root_url, storage)
    root = root.rstrip("/")
    base_url = root_url.rstrip("/")
    found: dict[str, Optional[ObjectInfo]] = {}
    if is_local(fs):
        for rel in rel_paths:
            path = f"{root}/{rel}"
            try:
                st = os.stat(path)
            except FileNotFoundError:
                found[rel] = None
                continue
            except OSError as e:
                raise DataError(f"{path}: cannot read ({e.strerror})") from e
            found[rel] = ObjectInfo(url=path, path=path, size=st.st_size, etag=None, local=True,
                                    mtime_ns=st.st_mtime_ns)
        return found
    fs.invalidate_cache(root)  # a listing cached by an earlier call in this process may be stale
    try:
        listing = fs.find(root, detail=True)
    except FileNotFoundError:
        listing = {}
    except Exception as e:  # botocore and s3fs raise many types; all mean "cannot list"
        raise DataError(f"{base_url}: cannot list the dataset prefix ({type(e).__name__}: {e})") from e
    for rel in rel_paths:
        info = listing.get(f"{root}/{rel}")
        found[rel] = (
            None
            if info is None
            else ObjectInfo(
                url=f"{base_url}/{rel}", path=f"{root}/{rel}", size=int(info["size"]), etag=info.get("ETag"), local=False
            )
        )
    return found


# ---------------------------------------------------------------------------------------
# The object cache


class _PartFailed(Exception):
    def __init__(self, start: int, stop: int, attempts: int, cause: BaseException):
        self.start, self.stop, self.attempts, self.cause = start, stop, attempts, cause


class _ShortBody(Exception):
    pass


class _Changed(Exception):
    """The object is not the version listed (a part came back with another ETag)."""


def _body_errors() -> tuple:
    """Errors while a response body streams in: continued from the byte where it stopped."""
    import botocore.exceptions as bce

    errors: tuple = (OSError, asyncio.TimeoutError, _ShortBody, bce.ReadTimeoutError, bce.ConnectionClosedError)
    for name in ("ResponseStreamingError", "IncompleteReadError"):
        if hasattr(bce, name):
            errors += (getattr(bce, name),)
    try:
        import aiohttp

        errors += (aiohttp.ClientError,)
    except ImportError:  # aiohttp comes with aiobotocore; only its error type is wanted here
        pass
    return errors


class _ProcessState:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.key_locks: dict[str, threading.Lock] = {}  # by lock file path: one per cache and object
        self.guard = threading.Lock()
        self.fetched_bytes = 0
        self.get_requests = 0
        self.slots: dict = {}  # (event loop, parts_in_flight) -> the _Slots every fetch of this process shares
        self.queued: dict[str, int] = {}  # queue lock path -> fd of the queue lock this process holds


_state: Optional[_ProcessState] = None


def _process_state() -> _ProcessState:
    """Locks and counters of this process; a forked child starts with fresh ones."""
    global _state
    if _state is None or _state.pid != os.getpid():
        _state = _ProcessState()
    return _state


def fetch_counters() -> tuple[int, int]:
    """(bytes fetched, GET requests made) by this process so far."""
    st = _process_state()
    return st.fetched_bytes, st.get_requests


class Progress:
    """How far the run's readers are, in a small file of the cache's ``runs`` folder: the
    highest training batch a worker has started. The main process's fetcher paces itself by it.
    Plain path, so it pickles."""

    def __init__(self, disk_dir: str):
        runs = os.path.join(disk_dir, "runs")
        os.makedirs(runs, exist_ok=True)
        _remove_dead_runs(runs)
        self.path = os.path.join(runs, f"{os.getpid()}-{secrets.token_hex(4)}.progress")
        with open(self.path, "wb") as f:
            f.write(struct.pack("<q", -1))
        self._fd: Optional[tuple[int, int]] = None  # (pid, fd)
        self._last = -1

    def started(self, batch: int) -> None:
        if batch <= self._last:
            return
        self._last = batch
        with contextlib.suppress(OSError):
            if self._fd is None or self._fd[0] != os.getpid():
                self._fd = (os.getpid(), os.open(self.path, os.O_RDWR))
            if batch > self.read():  # workers race here; the fetcher only needs a recent value
                os.pwrite(self._fd[1], struct.pack("<q", batch), 0)

    def read(self) -> int:
        """The highest batch a worker has started (-1: none yet)."""
        try:
            with open(self.path, "rb") as f:
                return struct.unpack("<q", f.read(8))[0]
        except (OSError, struct.error):
            return -1

    def close(self) -> None:
        _unlink(self.path)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}


def _remove_dead_runs(runs: str) -> None:
    """Progress files of runs whose process is gone (killed before it could remove them)."""
    for e in _scan(runs):
        try:
            os.kill(int(e.name.split("-")[0]), 0)
        except ProcessLookupError:
            _unlink(e.path)
        except (ValueError, PermissionError):
            pass


def cache_key(obj: ObjectInfo) -> str:
    """``<url digest>-<version digest>-<session>-<file>``: one name per object version; the
    versions of one object share the first part, which is how replaced ones are found."""
    url_part = hashlib.sha1(obj.url.encode()).hexdigest()[:12]
    version = hashlib.sha1(f"{obj.etag}\0{obj.size}\0{obj.mtime_ns}".encode()).hexdigest()[:8]
    tail = "-".join(obj.path.rstrip("/").split("/")[-2:])
    return f"{url_part}-{version}-{re.sub(r'[^A-Za-z0-9._-]', '_', tail)}"


_PARTIAL, _PROGRESS = ".partial", ".progress"


class ObjectCache:
    """Local copies of remote objects, fetched once per machine; local objects are passed through."""

    def __init__(self, storage: Storage):
        self.storage = storage
        self.objects_dir = os.path.join(storage.disk_dir, "objects")
        self.manifests_dir = os.path.join(storage.disk_dir, "manifests")
        self.locks_dir = os.path.join(storage.disk_dir, "locks")

    cache_key = staticmethod(cache_key)

    def _tiers(self) -> list[str]:
        return [self.storage.memory_dir, self.objects_dir] if self.storage.memory_dir else [self.objects_dir]

    def cached_path(self, obj: ObjectInfo) -> Optional[str]:
        """Where a complete copy is (memory first), if there is one."""
        if obj.local:
            return obj.path
        key = cache_key(obj)
        for tier in self._tiers():
            path = os.path.join(tier, key)
            try:
                if os.stat(path).st_size == obj.size:
                    return path
            except FileNotFoundError:
                continue
        return None

    def manifest_path(self, obj: ObjectInfo) -> str:
        return os.path.join(self.manifests_dir, cache_key(obj) + ".json")

    def write_manifest(self, obj: ObjectInfo, text: str) -> None:
        """Store a trial index of ``obj`` (written whole or not at all)."""
        path = self.manifest_path(obj)
        os.makedirs(self.manifests_dir, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)

    # -- public

    def local_path(self, obj: ObjectInfo) -> str:
        """A path to a complete copy of ``obj``, fetching it (or waiting for the fetch) if needed."""
        path = self.cached_path(obj)
        if path:
            return path
        with self.hold(obj, blocking=True):
            return self.fetch_held(obj)

    def prefetch(self, obj: ObjectInfo, first: Sequence[tuple[int, int, int]] = (), rest: int = 0) -> bool:
        """Fetch ``obj`` unless it is cached or someone is fetching it already; True if it is cached now.
        ``first``: ``(start, stop, priority)`` byte ranges wanted before the rest (priority
        ``rest``), e.g. the trials of the next batches (:func:`plan_parts`)."""
        if self.cached_path(obj):
            return True
        with self.hold(obj, blocking=False) as got:
            if not got:
                return False
            self.fetch_held(obj, first, rest)
            return True

    def fetch_held(self, obj: ObjectInfo, first: Sequence[tuple[int, int, int]] = (), rest: int = 0) -> str:
        """With ``hold(obj)`` held: the cached copy, fetched now if there is none."""
        return self.cached_path(obj) or self._fetch(obj, first, rest)

    def wait_for(self, obj: ObjectInfo, ranges: Optional[Sequence[tuple[int, int]]]) -> Optional[tuple[str, bool]]:
        """Wait until the bytes of ``ranges`` (None: the whole object) can be read, while another
        process (the main process's fetcher) has ``obj`` in its queue: ``(path, complete)``,
        a complete copy or the fetch in progress (its ``.partial``, where those bytes have
        arrived). None when nobody is fetching it for this process (never queued, failed, or
        the fetcher is gone): then :meth:`local_path` fetches it or raises the error."""
        key = cache_key(obj)
        if obj.local:
            return obj.path, True
        if self._queue_path(key) in _process_state().queued:
            return None
        partial = os.path.join(self.objects_dir, key + _PARTIAL)
        progress = os.path.join(self.objects_dir, key + _PROGRESS)
        partial_ok = ranges is not None and not self.storage.verify_md5  # unverified bytes are never read
        asked, pause = False, 0.001
        while True:
            path = self.cached_path(obj)
            if path:
                return path, True
            if partial_ok and covered(progress, ranges):
                return partial, False
            if not self._queued_elsewhere(key):
                return None
            if not asked:
                with contextlib.suppress(OSError):
                    open(os.path.join(self.locks_dir, key + ".wanted"), "a").close()
                asked = True
            time.sleep(pause)
            pause = min(0.02, pause * 1.5)  # quick for bytes about to land, cheap for a long wait

    def _queue_path(self, key: str) -> str:
        return os.path.join(self.locks_dir, key + ".queue")

    def _queued_elsewhere(self, key: str) -> bool:
        try:
            fd = os.open(self._queue_path(key), os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            return True
        finally:
            os.close(fd)

    def touch(self, path: str) -> None:
        """Mark a cached copy as used now (eviction takes the least recently used first)."""
        with contextlib.suppress(OSError):
            os.utime(path)

    def forget_replaced(self, objects: Iterable[ObjectInfo]) -> int:
        """Remove cached copies, partial fetches and manifests of other versions of these
        objects (replaced since they were cached); returns the bytes freed."""
        current: dict[str, str] = {}
        for obj in objects:
            key = cache_key(obj)
            current[key.split("-", 1)[0]] = key
        freed = 0
        for tier in [*self._tiers(), self.manifests_dir]:
            for entry in _scan(tier):
                key = _base_key(entry.name)
                url_part = key.split("-", 1)[0]
                if url_part in current and key != current[url_part]:
                    freed += self._remove(entry, key)
        return freed

    # -- the main process's fetcher: which objects it will fetch, and who waits for them

    def queue(self, obj: ObjectInfo) -> bool:
        """Announce that this process will fetch ``obj`` (a lock held until :meth:`unqueue`):
        other processes that need it wait for it instead of fetching it alongside."""
        st = _process_state()
        key = cache_key(obj)
        path = self._queue_path(key)
        if path in st.queued:
            return True
        _makedirs(self.locks_dir, obj)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        st.queued[path] = fd
        _unlink(os.path.join(self.locks_dir, key + ".wanted"))  # a dead run's request
        return True

    def unqueue(self, obj: ObjectInfo) -> None:
        fd = _process_state().queued.pop(self._queue_path(cache_key(obj)), None)
        if fd is not None:
            os.close(fd)
        _unlink(os.path.join(self.locks_dir, cache_key(obj) + ".wanted"))

    def wanted(self, obj: ObjectInfo) -> bool:
        """Whether another process is waiting for ``obj`` now."""
        return os.path.exists(os.path.join(self.locks_dir, cache_key(obj) + ".wanted"))

    def wait_queued(self, obj: ObjectInfo) -> None:
        """If another process (the main process's fetcher) has ``obj`` in its queue, ask for it
        and wait until it is cached or the queue lets go of it (fetched, failed, or the
        fetcher is gone: the lock dies with its holder)."""
        self.wait_for(obj, None)

    # -- locking

    @contextlib.contextmanager
    def hold_index(self, obj: ObjectInfo) -> Iterator[None]:
        """The lock of the object's index (not of its bytes, which may be arriving meanwhile)."""
        with self._hold_key(cache_key(obj) + ".index", blocking=True, obj=obj):
            yield

    @contextlib.contextmanager
    def hold(self, obj: ObjectInfo, *, blocking: bool) -> Iterator[bool]:
        """The object's lock, across the threads of this process and across processes."""
        with self._hold_key(cache_key(obj), blocking=blocking, obj=obj) as got:
            yield got

    @contextlib.contextmanager
    def _hold_key(self, key: str, *, blocking: bool, obj: Optional[ObjectInfo] = None) -> Iterator[bool]:
        st = _process_state()
        with st.guard:
            thread_lock = st.key_locks.setdefault(os.path.join(self.locks_dir, key), threading.Lock())
        if not thread_lock.acquire(blocking):
            yield False
            return
        try:
            _makedirs(self.locks_dir, obj)
            fd = os.open(os.path.join(self.locks_dir, key + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as e:
                    if e.errno not in (errno.EACCES, errno.EAGAIN):
                        raise
                    yield False
                    return
                yield True
            finally:
                os.close(fd)  # releases the record lock
        finally:
            thread_lock.release()

    # -- space

    def _remove(self, entry: os.DirEntry, key: str) -> int:
        """Delete one cache file; a partial fetch only when nobody is fetching it."""
        try:
            size = entry.stat().st_size
        except FileNotFoundError:
            return 0
        if entry.name.endswith((_PARTIAL, _PROGRESS)):
            with self._hold_key(key, blocking=False) as got:
                if not got:
                    return 0
                return size if _unlink(entry.path) else 0
        return size if _unlink(entry.path) else 0

    def _make_room(self, tier: str, need: int, limit: int, keep: str, obj: ObjectInfo) -> bool:
        """Evict least recently used copies in ``tier`` until ``need`` more bytes fit under
        ``limit`` (0: no limit) and on the volume; False if they cannot."""
        entries = [e for e in _scan(tier) if _base_key(e.name) != keep]
        used = sum(_size(e) for e in entries)
        free = _free_bytes(tier)
        over = max(0, used + need - limit) if limit else 0
        short = max(0, need + _SPACE_MARGIN - free)
        wanted = max(over, short)
        if not wanted:
            return True
        # complete copies by last use, then partial fetches nobody holds (a killed run's)
        entries.sort(key=lambda e: (e.name.endswith((_PARTIAL, _PROGRESS)), _mtime(e)))
        freed = 0
        for e in entries:
            if freed >= wanted:
                break
            got = self._remove(e, _base_key(e.name))
            if got:
                log.info("cache: evicted %s (%.0f MB)", e.path, got / MB)
                manifest = os.path.join(self.manifests_dir, _base_key(e.name) + ".json")
                if tier == self.objects_dir and not e.name.endswith((_PARTIAL, _PROGRESS)):
                    _unlink(manifest)
            freed += got
        return freed >= wanted

    # -- fetching

    def _fetch(self, obj: ObjectInfo, first: Sequence[tuple[int, int, int]] = (), rest: int = 0) -> str:
        key = cache_key(obj)
        st = self.storage
        _makedirs(self.objects_dir, obj)
        final = os.path.join(self.objects_dir, key)
        partial, progress = final + _PARTIAL, final + _PROGRESS
        found = _read_progress(partial, progress, obj.size)
        if found is not None:
            parts, done = found
        else:
            if st.disk_bytes and obj.size > st.disk_bytes:
                raise DataError(f"{obj.url}: {obj.size / MB:.0f} MB does not fit in the cache's limit "
                                f"(dataset.storage.disk_cache_mb={st.disk_bytes // MB})")
            if not self._make_room(self.objects_dir, obj.size, st.disk_bytes, key, obj):
                free = _free_bytes(self.objects_dir)
                if free >= obj.size + _SPACE_MARGIN:
                    raise DataError(f"{obj.url}: the cache's limit (dataset.storage.disk_cache_mb={st.disk_bytes // MB}) "
                                    f"is taken by objects being fetched; raise it")
                raise DataError(
                    f"{obj.url}: not enough space to cache it in {self.objects_dir} ({free / MB:.0f} MB free, "
                    f"{obj.size / MB:.1f} MB needed); point dataset.storage.disk_cache_dir at a larger volume"
                )
            parts = plan_parts(obj.size, st.part_size, first, rest)
            _create(partial, obj.size, obj)
            _create_progress(progress, parts, obj)
            done = [0] * len(parts)
        resumed = sum(done)
        memory = self._memory_copy(obj, key) if resumed == 0 else None
        started = time.monotonic()
        fds = [os.open(partial, os.O_RDWR)]
        try:
            if memory:
                fds.append(os.open(memory, os.O_RDWR))
            prog_fd = os.open(progress, os.O_RDWR)
            try:
                fs, _ = filesystem(obj.url, st)
                fsspec.asyn.sync(fs.loop, self._fetch_parts, fs, obj, parts, done, fds, prog_fd)
            finally:
                os.close(prog_fd)
        except BaseException as e:
            if memory:
                _unlink(memory)
            if isinstance(e, DataError) and getattr(e, "stale", False):
                _unlink(partial), _unlink(progress)  # that version is gone: nothing to resume
            raise
        finally:
            for fd in fds:
                os.close(fd)
        if st.verify_md5:
            self._check_md5(obj, partial, memory)
        if memory:
            os.rename(memory, memory[: -len(_PARTIAL)])
        os.rename(partial, final)
        _unlink(progress)
        log.info("fetched %s (%.0f MB%s, %.1f s)", obj.url, obj.size / MB,
                 f", resumed after {resumed / MB:.1f} MB" if resumed else "", time.monotonic() - started)
        return memory[: -len(_PARTIAL)] if memory else final

    def _memory_copy(self, obj: ObjectInfo, key: str) -> Optional[str]:
        """A ``.partial`` in the memory tier that receives the bytes too, if the object fits."""
        st = self.storage
        if not st.memory_dir or obj.size > st.memory_bytes:
            return None
        try:
            os.makedirs(st.memory_dir, exist_ok=True)
            if not self._make_room(st.memory_dir, obj.size, st.memory_bytes, key, obj):
                return None
            path = os.path.join(st.memory_dir, key + _PARTIAL)
            _create(path, obj.size, obj)
            return path
        except (OSError, DataError) as e:  # the memory tier is an optimisation: the disk copy suffices
            log.debug("%s: no memory copy (%s)", obj.url, e)
            return None

    def _check_md5(self, obj: ObjectInfo, partial: str, memory: Optional[str]) -> None:
        fs, _ = filesystem(obj.url, self.storage)
        if _verify(fs, obj, partial) is False:
            for path in (partial, partial[: -len(_PARTIAL)] + _PROGRESS, memory):
                if path:
                    _unlink(path)
            raise DataError(f"{obj.url}: the content does not match its ETag {obj.etag} (MD5 check); "
                            "it will be fetched again on the next attempt")

    async def _fetch_parts(self, fs, obj: ObjectInfo, parts: list, done: list, fds: list, prog_fd: int) -> None:
        st = self.storage
        bucket, key, _ = fs.split_path(obj.path)
        counters = _process_state()
        loop = asyncio.get_running_loop()
        slots = counters.slots.get((loop, st.parts_in_flight))
        if slots is None:
            slots = counters.slots[(loop, st.parts_in_flight)] = _Slots(st.parts_in_flight)
        body_errors = _body_errors()
        extra = {"IfMatch": obj.etag} if obj.etag else {}
        done_at = _progress_done_offset(len(parts))

        async def one(i: int, start: int, stop: int, priority: int) -> None:
            pos = start + done[i]
            if pos >= stop:
                return
            failures = 0
            await slots.acquire(priority)
            try:
                while pos < stop:
                    # Request-level failures were already retried by botocore: they end the fetch.
                    resp = await fs._call_s3("get_object", Bucket=bucket, Key=key, Range=f"bytes={pos}-{stop - 1}",
                                             **extra)
                    counters.get_requests += 1
                    if obj.etag and resp.get("ETag") and resp["ETag"] != obj.etag:
                        raise _Changed(resp["ETag"])
                    body = resp["Body"]
                    before = pos
                    try:
                        if int(resp.get("ContentLength", stop - pos)) != stop - pos:
                            raise _ShortBody(f"asked for {stop - pos} bytes, the response has {resp.get('ContentLength')}")
                        while pos < stop:
                            data = await body.read(min(_READ_SIZE, stop - pos))
                            if not data:
                                raise _ShortBody(f"body ended after {pos - start} of {stop - start} bytes")
                            for fd in fds:
                                _pwrite_all(fd, data, pos)
                            pos += len(data)
                            counters.fetched_bytes += len(data)
                            done[i] = pos - start
                            os.pwrite(prog_fd, struct.pack("<Q", pos - start), done_at + 8 * i)
                    except body_errors as e:
                        failures = 1 if pos > before else failures + 1  # progress resets the count
                        if failures >= st.max_attempts:
                            raise _PartFailed(start, stop, failures, e) from e
                        log.debug("%s bytes %d-%d: %r after %d bytes, continuing from byte %d",
                                  obj.url, start, stop - 1, e, pos - before, pos)
                        await asyncio.sleep(min(5.0, 0.05 * 2**failures) * random.uniform(0.5, 1.0))
                    finally:
                        body.close()
            finally:
                slots.release()

        # started soonest-needed first: the first to ask for a free slot gets it
        tasks = [asyncio.ensure_future(one(i, *parts[i])) for i in sorted(range(len(parts)), key=lambda i: parts[i][2])]
        try:
            await asyncio.gather(*tasks)
        except BaseException as e:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            current = str(e) if isinstance(e, _Changed) else await _current_etag(fs, obj) \
                if _precondition_failed(e) else None
            raise _fetch_error(obj, e, current) from e


async def _current_etag(fs, obj: ObjectInfo) -> Optional[str]:
    bucket, key, _ = fs.split_path(obj.path)
    try:
        return (await fs._call_s3("head_object", Bucket=bucket, Key=key)).get("ETag")
    except Exception as e:  # deleted, or unreadable: the message says so
        log.debug("%s: HEAD failed: %r", obj.url, e)
        return None


def _precondition_failed(e: Optional[BaseException]) -> bool:
    """A 412 somewhere in the chain (s3fs turns botocore's PreconditionFailed into OSError(EINVAL))."""
    seen = 0
    while e is not None and seen < 10:
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            if response.get("Error", {}).get("Code") == "PreconditionFailed" or \
                    response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412:
                return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def _fetch_error(obj: ObjectInfo, e: BaseException, current_etag: Optional[str]) -> BaseException:
    if isinstance(e, (asyncio.CancelledError, KeyboardInterrupt)):
        return e
    if isinstance(e, _Changed) or _precondition_failed(e):
        new = current_etag.strip('"') if current_etag else "deleted or unreadable"
        err = DataError(f"{obj.url}: object changed while the run was reading it "
                        f"(ETag {(obj.etag or '').strip(chr(34))} → {new})")
        err.stale = True  # type: ignore[attr-defined]
        return err
    if isinstance(e, _PartFailed):
        return DataError(
            f"{obj.url}: bytes {e.start}-{e.stop - 1} failed {e.attempts} times; last error "
            f"{type(e.cause).__name__}: {e.cause}"
        )
    if isinstance(e, FileNotFoundError):
        return DataError(f"{obj.url}: object not found (deleted after listing?)")
    if isinstance(e, PermissionError):
        return DataError(f"{obj.url}: access denied ({e})")
    if isinstance(e, DataError):
        return e
    return DataError(f"{obj.url}: fetch failed after retries ({type(e).__name__}: {e})")


def plan_parts(size: int, part_size: int, first: Sequence[tuple[int, int, int]] = (), rest: int = 0) -> list:
    """``(start, stop, priority)`` parts tiling ``[0, size)``: the ranges of ``first`` (``(start,
    stop, priority)``, e.g. the trials the next batches read; overlaps go to the earlier one)
    with their priorities, then everything else with priority ``rest``; none longer than
    ``part_size``. Parts are fetched lowest priority first."""
    wanted: list[tuple[int, int, int]] = []
    end = 0
    for a, b, p in sorted((max(0, a), min(size, b), p) for a, b, p in first):
        a = max(a, end)
        if a >= b:
            continue
        if wanted and a - end < min(_MERGE_GAP, part_size):  # the bytes between cost less than another GET
            prev = wanted[-1]
            if prev[2] == p:
                wanted[-1] = (prev[0], b, p)
                end = b
                continue
            wanted[-1] = (prev[0], a, prev[2])
        wanted.append((a, b, p))
        end = b
    parts: list[tuple[int, int, int]] = []

    def cut(a: int, b: int, p: int) -> None:
        parts.extend((x, min(x + part_size, b), p) for x in range(a, b, part_size))

    pos = 0
    for a, b, p in wanted:
        cut(pos, a, rest)
        cut(a, b, p)
        pos = b
    cut(pos, size, rest)
    return parts


def _progress_done_offset(n_parts: int) -> int:
    return 8 + 16 * n_parts


def _create_progress(path: str, parts: list, obj: ObjectInfo) -> None:
    """``.progress``: the number of parts, each part's ``(start, stop)``, then the bytes received
    of each (written after the bytes themselves), all little-endian u64."""
    header = struct.pack(f"<{1 + 2 * len(parts)}Q", len(parts), *(x for a, b, _ in parts for x in (a, b)))
    try:
        with open(path, "wb") as f:
            f.write(header + bytes(8 * len(parts)))
    except OSError as e:
        raise DataError(f"{obj.url}: cannot create its cache file {path} ({e.strerror})") from e


def read_progress(progress: str) -> Optional[tuple[list[tuple[int, int, int]], list[int]]]:
    """``(parts as (start, stop, 0), bytes received per part)`` of a fetch in progress, or None."""
    try:
        with open(progress, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    if len(raw) < 8:
        return None
    (n,) = struct.unpack_from("<Q", raw)
    if len(raw) != _progress_done_offset(n) + 8 * n:
        return None
    bounds = struct.unpack_from(f"<{2 * n}Q", raw, 8)
    done = list(struct.unpack_from(f"<{n}Q", raw, _progress_done_offset(n)))
    return [(bounds[2 * i], bounds[2 * i + 1], 0) for i in range(n)], done


def received_bytes(progress: str) -> int:
    found = read_progress(progress)
    return sum(found[1]) if found else 0


def _read_progress(partial: str, progress: str, size: int) -> Optional[tuple[list, list[int]]]:
    """Parts and bytes received per part of an earlier, interrupted fetch of this version; None if there is none."""
    try:
        if os.stat(partial).st_size != size:
            raise FileNotFoundError
    except FileNotFoundError:
        _unlink(partial), _unlink(progress)
        return None
    found = read_progress(progress)
    if found is None or sum(b - a for a, b, _ in found[0]) != size or \
            any(d > b - a for (a, b, _), d in zip(*found)):  # another layout, or damaged: start over
        _unlink(partial), _unlink(progress)
        return None
    return found


def covered(progress: str, ranges: Iterable[tuple[int, int]]) -> bool:
    """Whether every byte of ``ranges`` has arrived in a fetch in progress."""
    found = read_progress(progress)
    if found is None:
        return False
    have = sorted((a, a + d) for (a, _, _), d in zip(*found) if d)
    for x, y in sorted(ranges):
        pos = x
        for a, b in have:
            if a <= pos < b:
                pos = b
            if pos >= y:
                break
        if pos < y:
            return False
    return True


class _Slots:
    """At most ``n`` ranged GETs at once, given to the lowest priority waiting (first come
    among equals): a part the next batch needs overtakes the rest of another object."""

    def __init__(self, n: int):
        self.free = n
        self.waiting: list = []
        self.seq = 0

    async def acquire(self, priority: int) -> None:
        if self.free > 0 and not self.waiting:
            self.free -= 1
            return
        fut = asyncio.get_running_loop().create_future()
        self.seq += 1
        entry = (priority, self.seq, fut)
        heapq.heappush(self.waiting, entry)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # handed a slot just as it was cancelled
                self.release()
            elif entry in self.waiting:  # never leave a dead waiter ahead of live ones
                self.waiting.remove(entry)
                heapq.heapify(self.waiting)
            raise

    def release(self) -> None:
        while self.waiting:
            _, _, fut = heapq.heappop(self.waiting)
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1


def _scan(directory: Optional[str]) -> list[os.DirEntry]:
    if not directory:
        return []
    try:
        return [e for e in os.scandir(directory) if e.is_file() and not e.name.startswith(".")]
    except FileNotFoundError:
        return []


def _base_key(name: str) -> str:
    for suffix in (_PARTIAL, _PROGRESS, ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _tier_usage(directory: str) -> int:
    return sum(_size(e) for e in _scan(directory))


def _size(e: os.DirEntry) -> int:
    try:
        return e.stat().st_size
    except FileNotFoundError:
        return 0


def _mtime(e: os.DirEntry) -> float:
    try:
        return e.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _create(path: str, size: int, obj: ObjectInfo) -> None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
    except OSError as e:
        raise DataError(f"{obj.url}: cannot create its cache file {path} ({e.strerror})") from e


def _makedirs(path: str, obj: Optional[ObjectInfo]) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise DataError(f"{obj.url if obj else path}: cannot create cache directory {path} ({e.strerror})") from e


def _free_bytes(path: str) -> int:
    s = os.statvfs(path)
    return s.f_bavail * s.f_frsize


_MD5 = re.compile(r"[0-9a-f]{32}")
_MULTIPART = re.compile(r"([0-9a-f]{32})-(\d+)")


def _verify(fs, obj: ObjectInfo, path: str) -> Optional[bool]:
    """True: content matches the ETag; False: it does not; None: the ETag is not an MD5 (size checked only).

    A single-part ETag is the MD5 of the object and a multipart one the MD5 of the parts' MD5s,
    unless the object is encrypted with KMS or a customer key: a mismatch is only believed
    after a HEAD says the ETag is an MD5.
    """
    etag = (obj.etag or "").strip('"')
    if obj.size == 0:
        return True
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        try:
            if _MD5.fullmatch(etag):
                if hashlib.md5(view).hexdigest() == etag:
                    return True
                return False if _etag_is_md5(fs, obj) else None
            m = _MULTIPART.fullmatch(etag)
            if not m:
                return None
            exact, sizes = _upload_part_sizes(fs, obj, int(m.group(2)))
            for part in sizes:
                digests = b"".join(hashlib.md5(view[a : a + part]).digest() for a in range(0, obj.size, part))
                if hashlib.md5(digests).hexdigest() == m.group(1):
                    return True
            # a guessed part size proves nothing by failing to match
            return False if exact and _etag_is_md5(fs, obj) else None
        finally:
            view.release()


def _head(fs, obj: ObjectInfo, **kwargs) -> dict:
    bucket, key, _ = fs.split_path(obj.path)
    try:
        return fsspec.asyn.sync(fs.loop, fs._call_s3, "head_object", Bucket=bucket, Key=key, **kwargs)
    except Exception as e:  # any failure means "cannot tell"; the caller then checks size only
        log.debug("%s: HEAD %s failed: %r", obj.url, kwargs, e)
        return {}


def _etag_is_md5(fs, obj: ObjectInfo) -> bool:
    head = _head(fs, obj)
    return bool(head) and head.get("ServerSideEncryption") not in ("aws:kms", "aws:kms:dsse") and not head.get(
        "SSECustomerAlgorithm"
    )


def _upload_part_sizes(fs, obj: ObjectInfo, n_parts: int) -> tuple[bool, list[int]]:
    """The part size the object was uploaded with: ``(True, [size])`` when a HEAD of part 1 says it,
    else ``(False, common sizes that give n_parts parts)``."""
    size = int(_head(fs, obj, PartNumber=1).get("ContentLength") or 0)
    if size and -(-obj.size // size) == n_parts:
        return True, [size]
    guesses = [mb * MB for mb in (8, 16, 5, 32, 64, 50, 100, 128, 256, 512)]
    return False, [p for p in guesses if -(-obj.size // p) == n_parts]
