"""Trial indexes stored next to the data: ``<file>.b2t-index.json`` beside each HDF5 object.

A file's trial index (where each trial's bytes lie) lives in HDF5 metadata scattered through
the whole file, so without one the first batch waits for its files to arrive whole. The
launcher's ``upload`` writes each file's index beside it (:func:`sidecar_json`), naming the
object version it describes (size and ETag). A run reads them all before any data, one
small GET per file, 16 at once (:func:`load_sidecars`), and can then fetch the trials of its
first batch before the rest of the files. A sidecar is only believed for the version it
names: a file replaced since (a new ETag), a sidecar of another format or one whose ranges do
not fit the file is ignored (logged), and that file is indexed from its own bytes as before. Data uploaded another way
(``aws s3 sync``) has no sidecars and works the same, with the first batch waiting for whole
files.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Optional

import fsspec

from .index import FileIndex, trial_ranges
from .storage import ObjectCache, ObjectInfo, Storage, filesystem

log = logging.getLogger(__name__)

SUFFIX = ".b2t-index.json"
FORMAT = 1
_IN_FLIGHT = 16  # sidecar GETs at once


def sidecar_json(index: FileIndex, size: int, etag: str) -> str:
    """The sidecar of an object of ``size`` bytes and ``etag`` (as S3 lists it, quotes included)."""
    return json.dumps({"format": FORMAT, "object": {"size": size, "etag": etag}, "index": json.loads(index.to_json())})


def parse(text: str, obj: ObjectInfo) -> Optional[FileIndex]:
    """The index a sidecar holds for ``obj``, or None (with the reason logged) if it is not for this version."""
    try:
        raw = json.loads(text)
        if raw.get("format") != FORMAT:
            log.info("%s%s: another sidecar format (%s); indexing the file itself", obj.url, SUFFIX, raw.get("format"))
            return None
        # The ETag names one version of the object's content ("How to retrieve or copy objects
        # based on metadata with conditional reads", Amazon S3 User Guide): a file replaced since
        # the upload lists another one.
        if raw["object"] != {"size": obj.size, "etag": obj.etag}:
            log.info("%s%s: describes another version of the file (replaced since); indexing the file itself",
                     obj.url, SUFFIX)
            return None
        idx = FileIndex.from_json(json.dumps(raw["index"]))
    except (ValueError, KeyError, TypeError) as e:
        log.warning("%s%s: unreadable (%s); indexing the file itself", obj.url, SUFFIX, e)
        return None
    if idx is None or idx.size != obj.size:
        return None
    for t in idx.trials:
        if any(a < 0 or b > obj.size for a, b in trial_ranges([t]) or ()):
            log.warning("%s%s: %s lies outside the file; indexing the file itself", obj.url, SUFFIX, t.key)
            return None
    return FileIndex(url=obj.url, size=idx.size, trials=idx.trials)


def load_sidecars(files: dict, sidecars: dict, storage: Storage) -> int:
    """Turn the sidecars of ``files`` (key -> ObjectInfo) into cached manifests, where there is
    none yet: all fetched at once. Returns how many were used."""
    cache = ObjectCache(storage)
    remote = [o for o in files.values() if not o.local]
    if remote and not sidecars:
        log.info("trial indexes: no sidecars beside the data (not uploaded with `python -m launcher upload`?): "
                 "the first batch waits for its whole files")
    todo = [(files[k], sidecars[k]) for k in sidecars
            if k in files and not files[k].local and not os.path.exists(cache.manifest_path(files[k]))]
    if not todo:
        return 0
    fs, _ = filesystem(todo[0][1].url, storage)
    texts = fsspec.asyn.sync(fs.loop, _fetch_all, fs, [side.path for _, side in todo])
    used = 0
    for (obj, side), text in zip(todo, texts):
        if isinstance(text, BaseException):
            log.info("%s: not read (%s: %s); indexing the file itself", side.url, type(text).__name__, text)
            continue
        idx = parse(text.decode("utf-8", "replace"), obj)
        if idx is not None:
            cache.write_manifest(obj, idx.to_json())
            used += 1
    log.info("trial indexes: %d of %d files from their sidecars", used, len(files))
    return used


async def _fetch_all(fs, paths: list[str]) -> list:
    # at most as many at once as the connection pool holds
    slots = asyncio.Semaphore(_IN_FLIGHT)

    async def one(path: str) -> bytes:
        async with slots:
            return await fs._cat_file(path)

    return await asyncio.gather(*(one(p) for p in paths), return_exceptions=True)


def put_sidecar(s3, bucket: str, key: str, index: FileIndex) -> str:
    """Write the sidecar of ``s3://bucket/key`` (as it is now: its size and ETag from a HEAD)
    with a boto3 S3 client; returns the sidecar's key."""
    head = s3.head_object(Bucket=bucket, Key=key)
    if head["ContentLength"] != index.size:
        raise ValueError(f"s3://{bucket}/{key} has {head['ContentLength']} bytes, its index describes {index.size} "
                         "(the file changed while it was uploaded?)")
    s3.put_object(Bucket=bucket, Key=key + SUFFIX, Body=sidecar_json(index, head["ContentLength"], head["ETag"]).encode(),
                  ContentType="application/json")
    return key + SUFFIX
