"""Reach the dataset wherever it lives, and bring each remote object to this machine once.

One code path for a local directory, ``file://`` and ``s3://bucket/prefix``: fsspec's
``url_to_fs`` with s3fs for S3. Local files are read in place. A remote object is fetched
whole with parallel ranged GETs into a cache, verified against its size and ETag, and read
from there; HDF5 is never read through a network file object (h5py over s3fs can deadlock,
and its many small reads at scattered offsets are what made the seed slow).

The cache has two tiers, both plain files so that DataLoader workers share them: memory
(a directory on ``/dev/shm`` owned by the process that built the loaders, removed when it
exits) up to ``memory_cache_mb``, then ``disk_cache_dir``. A per-object lock file (POSIX
record lock, so forked workers never inherit it) and an atomic rename mean concurrent
workers never fetch the same object twice and never see a partial one.

Retries: botocore's retry configuration (mode, max_attempts) and timeouts cover requests;
s3fs's own retry loop is switched off so the two do not multiply. A body cut short
(truncated, reset mid-transfer, read timeout) is retried here, part by part. Whatever is
left after that becomes a :class:`DataError` naming the object.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import fcntl
import hashlib
import logging
import mmap
import os
import random
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Optional

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .errors import DataError

log = logging.getLogger(__name__)

MB = 1 << 20
SHM_ROOT = "/dev/shm"
_MEMORY_DIR_PREFIX = "b2t-data-cache-"
_SPACE_MARGIN = 64 * MB  # left free on a cache volume


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
    part_size: int = 16 * MB
    memory_bytes: int = 0
    memory_dir: Optional[str] = None  # None: no memory tier
    disk_dir: str = os.path.join(tempfile.gettempdir(), "b2t-data-cache")

    @classmethod
    def from_config(cls, cfg) -> "Storage":
        """From a ``StorageConfig``; the endpoint falls back to AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL."""
        endpoint = cfg.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        memory_bytes = cfg.memory_cache_mb * MB
        disk_dir = os.path.abspath(cfg.disk_cache_dir or os.path.join(tempfile.gettempdir(), "b2t-data-cache"))
        return cls(
            endpoint_url=endpoint or None,
            region=cfg.region,
            retry_mode=cfg.retry_mode,
            max_attempts=cfg.max_attempts,
            connect_timeout_s=cfg.connect_timeout_s,
            read_timeout_s=cfg.read_timeout_s,
            parts_in_flight=cfg.parts_in_flight,
            part_size=cfg.part_size_mb * MB,
            memory_bytes=memory_bytes,
            memory_dir=owned_memory_dir(disk_dir) if memory_bytes > 0 else None,
            disk_dir=disk_dir,
        )

    def s3_options(self) -> dict:
        config = {
            "retries": {"mode": self.retry_mode, "max_attempts": self.max_attempts},
            "connect_timeout": self.connect_timeout_s,
            "read_timeout": self.read_timeout_s,
            # room for a prefetch and an on-demand fetch at once
            "max_pool_connections": max(10, 2 * self.parts_in_flight),
        }
        options: dict = {"config_kwargs": config, "skip_instance_cache": True}
        if self.endpoint_url:
            options["endpoint_url"] = self.endpoint_url
        if self.region:
            options["client_kwargs"] = {"region_name": self.region}
        return options


@dataclass(frozen=True)
class ObjectInfo:
    """One file of the dataset, as listed: where it is, how big, and its version (ETag or mtime)."""

    url: str  # for messages
    path: str  # the filesystem's path
    size: int
    etag: Optional[str]  # S3 ETag with its quotes; None for local files
    local: bool


# ---------------------------------------------------------------------------------------
# Filesystems: one per process (fsspec objects are not fork-safe)

_filesystems: dict = {}


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
            found[rel] = ObjectInfo(url=path, path=path, size=st.st_size, etag=None, local=True)
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
# The memory tier's directory: owned by the process that configured storage


_owned: dict = {}


def owned_memory_dir(disk_dir: str) -> Optional[str]:
    """This process's memory tier for the cache at ``disk_dir``: a directory on /dev/shm,
    created on first use and removed when this process exits; None without /dev/shm."""
    key = (os.getpid(), disk_dir)
    if key in _owned:
        return _owned[key]
    path = None
    if os.path.isdir(SHM_ROOT) and os.access(SHM_ROOT, os.W_OK):
        _remove_orphaned_memory_dirs()
        tag = hashlib.sha1(disk_dir.encode()).hexdigest()[:8]
        path = os.path.join(SHM_ROOT, f"{_MEMORY_DIR_PREFIX}{os.getpid()}-{tag}")
        atexit.register(_remove_memory_dir, path, os.getpid())
    _owned[key] = path
    return path


def _remove_memory_dir(path: str, owner: int) -> None:
    if os.getpid() == owner:  # forked children inherit atexit handlers
        shutil.rmtree(path, ignore_errors=True)


def _remove_orphaned_memory_dirs() -> None:
    """Memory-tier dirs of processes that died without cleaning up hold RAM until removed."""
    for name in os.listdir(SHM_ROOT):
        if not name.startswith(_MEMORY_DIR_PREFIX):
            continue
        try:
            os.kill(int(name[len(_MEMORY_DIR_PREFIX) :].split("-")[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(SHM_ROOT, name), ignore_errors=True)
        except (ValueError, PermissionError):
            pass  # not ours, or alive under another user


# ---------------------------------------------------------------------------------------
# The object cache


class _PartFailed(Exception):
    def __init__(self, start: int, stop: int, attempts: int, cause: BaseException):
        self.start, self.stop, self.attempts, self.cause = start, stop, attempts, cause


class _ShortBody(Exception):
    pass


def _body_errors() -> tuple:
    """Errors while a response body streams in: retried part by part."""
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
        self.key_locks: dict[str, threading.Lock] = {}
        self.guard = threading.Lock()
        self.fetched_bytes = 0
        self.get_requests = 0


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


class ObjectCache:
    """Local copies of remote objects, fetched once per machine; local objects are passed through."""

    def __init__(self, storage: Storage):
        self.storage = storage

    # -- paths

    @staticmethod
    def cache_key(obj: ObjectInfo) -> str:
        digest = hashlib.sha1(f"{obj.url}\0{obj.etag}\0{obj.size}".encode()).hexdigest()[:16]
        tail = "-".join(obj.path.rstrip("/").split("/")[-2:])
        return f"{digest}-{re.sub(r'[^A-Za-z0-9._-]', '_', tail)}"

    def _candidates(self, key: str) -> list[str]:
        paths = [os.path.join(self.storage.disk_dir, "objects", key)]
        if self.storage.memory_dir:
            paths.insert(0, os.path.join(self.storage.memory_dir, key))
        return paths

    def cached_path(self, obj: ObjectInfo) -> Optional[str]:
        """Where the complete copy is, if there is one."""
        if obj.local:
            return obj.path
        for path in self._candidates(self.cache_key(obj)):
            try:
                if os.stat(path).st_size == obj.size:
                    return path
            except FileNotFoundError:
                continue
        return None

    def manifest_path(self, obj: ObjectInfo) -> str:
        return os.path.join(self.storage.disk_dir, "manifests", self.cache_key(obj) + ".json")

    # -- public

    def local_path(self, obj: ObjectInfo) -> str:
        """A path to a complete, verified copy of ``obj``, fetching it (or waiting for the fetch) if needed."""
        path = self.cached_path(obj)
        if path:
            return path
        with self._lock(obj, blocking=True):
            return self.cached_path(obj) or self._fetch(obj)

    def prefetch(self, obj: ObjectInfo) -> bool:
        """Fetch ``obj`` unless it is cached or someone is fetching it already; True if it is cached now."""
        if self.cached_path(obj):
            return True
        with self._lock(obj, blocking=False) as got:
            if not got:
                return False
            if not self.cached_path(obj):
                self._fetch(obj)
            return True

    # -- locking

    @contextlib.contextmanager
    def _lock(self, obj: ObjectInfo, *, blocking: bool) -> Iterator[bool]:
        key = self.cache_key(obj)
        st = _process_state()
        with st.guard:
            thread_lock = st.key_locks.setdefault(key, threading.Lock())
        if not thread_lock.acquire(blocking):
            yield False
            return
        try:
            lock_dir = os.path.join(self.storage.disk_dir, "locks")
            _makedirs(lock_dir, obj)
            fd = os.open(os.path.join(lock_dir, key + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
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

    # -- fetching

    def _reserve(self, obj: ObjectInfo, key: str) -> str:
        """Pick the tier for a new copy and create its ``.partial`` file at full size (memory first)."""
        st = self.storage
        if st.memory_dir and obj.size <= st.memory_bytes:
            _makedirs(st.memory_dir, obj)
            fd = os.open(os.path.join(st.memory_dir, ".reserve.lock"), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX)
                used = sum(e.stat().st_size for e in os.scandir(st.memory_dir) if e.is_file() and e.name[0] != ".")
                if used + obj.size <= st.memory_bytes and _free_bytes(st.memory_dir) >= obj.size + _SPACE_MARGIN:
                    return _create_partial(os.path.join(st.memory_dir, key), obj)
            finally:
                os.close(fd)
        objects = os.path.join(st.disk_dir, "objects")
        _makedirs(objects, obj)
        free = _free_bytes(objects)
        if free < obj.size + _SPACE_MARGIN:
            raise DataError(
                f"{obj.url}: not enough space to cache it in {objects} ({free // MB} MB free, {obj.size // MB} MB "
                "needed); point dataset.storage.disk_cache_dir at a larger volume or raise memory_cache_mb"
            )
        return _create_partial(os.path.join(objects, key), obj)

    def _fetch(self, obj: ObjectInfo) -> str:
        key = self.cache_key(obj)
        for attempt in (1, 2):
            partial = self._reserve(obj, key)
            try:
                started = time.monotonic()
                fs, _ = filesystem(obj.url, self.storage)
                fd = os.open(partial, os.O_RDWR)
                try:
                    fsspec.asyn.sync(fs.loop, self._fetch_parts, fs, obj, fd)
                finally:
                    os.close(fd)
                verdict = _verify(fs, obj, partial)
                if verdict is False:
                    if attempt == 1:
                        log.warning("%s: content does not match its ETag; fetching it again", obj.url)
                        os.unlink(partial)
                        continue
                    raise DataError(f"{obj.url}: fetched twice and the content does not match its ETag {obj.etag}")
                final = partial[: -len(".partial")]
                os.rename(partial, final)
                took = time.monotonic() - started
                log.info("fetched %s (%.0f MB, %.1f s, %s)", obj.url, obj.size / MB, took,
                         "verified" if verdict else "size checked")
                return final
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(partial)
                raise
        raise AssertionError("unreachable")

    async def _fetch_parts(self, fs, obj: ObjectInfo, fd: int) -> None:
        st = self.storage
        bucket, key, _ = fs.split_path(obj.path)
        ranges = [(a, min(a + st.part_size, obj.size)) for a in range(0, obj.size, st.part_size)]
        slots = asyncio.Semaphore(st.parts_in_flight)
        body_errors = _body_errors()
        counters = _process_state()
        extra = {"IfMatch": obj.etag} if obj.etag else {}

        async def one(start: int, stop: int) -> None:
            async with slots:
                for attempt in range(1, st.max_attempts + 1):
                    # Request-level failures were already retried by botocore: they end the fetch.
                    resp = await fs._call_s3("get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{stop - 1}", **extra)
                    counters.get_requests += 1
                    body = resp["Body"]
                    try:
                        data = await body.read()
                        if len(data) != stop - start:
                            raise _ShortBody(f"got {len(data)} of {stop - start} bytes")
                    except body_errors as e:
                        if attempt == st.max_attempts:
                            raise _PartFailed(start, stop, attempt, e) from e
                        log.debug("%s bytes %d-%d: %r, retrying", obj.url, start, stop - 1, e)
                        await asyncio.sleep(min(5.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0))
                        continue
                    finally:
                        body.close()
                    _pwrite_all(fd, data, start)
                    counters.fetched_bytes += len(data)
                    return

        tasks = [asyncio.ensure_future(one(a, b)) for a, b in ranges]
        try:
            await asyncio.gather(*tasks)
        except BaseException as e:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise _fetch_error(obj, e) from e


def _fetch_error(obj: ObjectInfo, e: BaseException) -> BaseException:
    if isinstance(e, _PartFailed):
        return DataError(
            f"{obj.url}: bytes {e.start}-{e.stop - 1} failed {e.attempts} times; last error "
            f"{type(e.cause).__name__}: {e.cause}"
        )
    if isinstance(e, FileNotFoundError):
        return DataError(f"{obj.url}: object not found (deleted after listing?)")
    if isinstance(e, PermissionError):
        return DataError(f"{obj.url}: access denied ({e})")
    if isinstance(e, (asyncio.CancelledError, KeyboardInterrupt)):
        return e
    if "PreconditionFailed" in str(e) or "412" in str(e):
        return DataError(f"{obj.url}: the object changed while it was being fetched (ETag {obj.etag} no longer matches)")
    return DataError(f"{obj.url}: fetch failed after retries ({type(e).__name__}: {e})")


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _create_partial(final: str, obj: ObjectInfo) -> str:
    partial = final + ".partial"
    try:
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, obj.size)
        finally:
            os.close(fd)
    except OSError as e:
        raise DataError(f"{obj.url}: cannot create its cache file {partial} ({e.strerror})") from e
    return partial


def _makedirs(path: str, obj: ObjectInfo) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise DataError(f"{obj.url}: cannot create cache directory {path} ({e.strerror})") from e


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
