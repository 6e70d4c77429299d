"""Upload and download between local folders and S3: progress bars, unchanged files skipped.

A file counts as unchanged when the object has the same size and either its ETag equals
the file's MD5 (single part) or multipart MD5 at our part size, or the ``md5`` metadata
the launcher writes on upload matches (ETags of SSE-KMS objects are not MD5s).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

log = logging.getLogger(__name__)

PART_SIZE = 64 * 1024 * 1024
MAX_CONCURRENCY = 8
_SKIP_NAMES = {".DS_Store", "Thumbs.db"}


@dataclass
class SyncResult:
    transferred: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_transferred: int = 0

    def summary(self, verb: str) -> str:
        return (
            f"{verb} {len(self.transferred)} file(s), {_human(self.bytes_transferred)}; "
            f"{len(self.skipped)} unchanged skipped"
        )


def transfer(s3):
    """boto3's managed transfer (multipart, parallel parts) over a plain botocore client."""
    from boto3.s3.transfer import S3Transfer, TransferConfig

    config = TransferConfig(
        multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE, max_concurrency=MAX_CONCURRENCY
    )
    return S3Transfer(client=s3, config=config)


def split_s3_url(url: str) -> tuple[str, str]:
    if not url.startswith("s3://"):
        raise ValueError(f"not an s3:// URL: {url}")
    bucket, _, key = url[5:].partition("/")
    return bucket, key


def file_digests(path: Path, part_size: Optional[int] = None) -> tuple[str, str]:
    """(MD5 hex, S3 multipart ETag at ``part_size``, default PART_SIZE) of a file, in one read."""
    part_size = part_size or PART_SIZE
    whole = hashlib.md5(usedforsecurity=False)
    parts: list[bytes] = []
    with open(path, "rb") as f:
        while chunk := f.read(part_size):
            whole.update(chunk)
            parts.append(hashlib.md5(chunk, usedforsecurity=False).digest())
    multipart = hashlib.md5(b"".join(parts), usedforsecurity=False).hexdigest() + f"-{len(parts)}"
    return whole.hexdigest(), multipart


def _local_files(src: Path) -> list[Path]:
    return sorted(
        p for p in src.rglob("*") if p.is_file() and p.name not in _SKIP_NAMES and not p.name.startswith("._")
    )


SESSION_FILES = ("data_train.hdf5", "data_val.hdf5")


def session_files(src: Path) -> tuple[list[Path], list[Path]]:
    """(``<session>/data_{train,val}.hdf5`` under ``src``, every other file there): what `upload` sends and skips."""
    chosen, skipped = [], []
    for path in sorted(p for p in Path(src).rglob("*") if p.is_file()):
        rel = path.relative_to(src)
        (chosen if len(rel.parts) == 2 and rel.name in SESSION_FILES else skipped).append(path)
    return chosen, skipped


def list_objects(s3, bucket: str, prefix: str) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            found[obj["Key"]] = obj
    return found


def _unchanged(s3, bucket: str, key: str, remote: Optional[dict], path: Path) -> tuple[bool, str]:
    """Whether the object already holds this file; also returns the file's MD5 for the upload."""
    if remote is None or remote["Size"] != path.stat().st_size:
        return False, ""
    md5, multipart = file_digests(path)
    etag = remote.get("ETag", "").strip('"')
    if etag in (md5, multipart):
        return True, md5
    meta = s3.head_object(Bucket=bucket, Key=key).get("Metadata", {})
    return meta.get("md5") == md5, md5


def upload_dir(
    s3, src: Path, bucket: str, prefix: str, *, dry_run: bool = False, progress: Optional[bool] = None,
    files: Optional[list[Path]] = None,
) -> SyncResult:
    """Sync ``src`` (or only ``files`` under it) to ``s3://bucket/prefix`` (keys keep the relative
    paths); nothing is deleted."""
    from tqdm import tqdm

    src = Path(src)
    prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    remote = list_objects(s3, bucket, prefix)
    result = SyncResult()
    todo: list[tuple[Path, str, str]] = []
    for path in _local_files(src) if files is None else files:
        key = prefix + path.relative_to(src).as_posix()
        same, md5 = _unchanged(s3, bucket, key, remote.get(key), path)
        if same:
            result.skipped.append(key)
        else:
            todo.append((path, key, md5 or file_digests(path)[0]))
    total = sum(p.stat().st_size for p, _, _ in todo)
    if dry_run:
        result.transferred = [k for _, k, _ in todo]
        result.bytes_transferred = total
        return result
    xfer = transfer(s3)
    with tqdm(total=total, unit="B", unit_scale=True, desc="upload", disable=_disabled(progress)) as bar:
        for path, key, md5 in todo:
            bar.set_postfix_str(path.name, refresh=False)
            xfer.upload_file(str(path), bucket, key, callback=bar.update, extra_args={"Metadata": {"md5": md5}})
            result.transferred.append(key)
            result.bytes_transferred += path.stat().st_size
    return result


def put_sidecars(s3, src: Path, bucket: str, prefix: str, indexes: dict) -> int:
    """Each uploaded file's trial index beside it (trainer.data.sidecar), unless one for its
    current version is there already; returns how many were written."""
    from trainer.data.sidecar import SUFFIX, put_sidecar, sidecar_json

    prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    remote = list_objects(s3, bucket, prefix)
    written = 0
    for path, index in indexes.items():
        key = prefix + Path(path).relative_to(src).as_posix()
        obj, side = remote.get(key), remote.get(key + SUFFIX)
        wanted = sidecar_json(index, obj["Size"], obj["ETag"]) if obj is not None else None
        if side is not None and side["Size"] == len(wanted or "") and \
                s3.get_object(Bucket=bucket, Key=key + SUFFIX)["Body"].read().decode() == wanted:
            continue
        put_sidecar(s3, bucket, key, index)
        written += 1
    return written


def download_keys(
    s3, bucket: str, objects: Iterable[dict], strip_prefix: str, dest: Path, *, progress: Optional[bool] = None,
    overwrite: bool = False,
) -> SyncResult:
    """Download listed objects under ``dest`` (relative to ``strip_prefix``); without ``overwrite``
    same-size files are skipped as already there."""
    from tqdm import tqdm

    dest = Path(dest)
    result = SyncResult()
    todo = []
    for obj in objects:
        rel = obj["Key"][len(strip_prefix) :].lstrip("/")
        if not rel or rel.endswith("/"):
            continue
        target = dest / rel
        if not overwrite and target.is_file() and target.stat().st_size == obj["Size"]:
            result.skipped.append(obj["Key"])
        else:
            todo.append((obj, target))
    xfer = transfer(s3)
    total = sum(o["Size"] for o, _ in todo)
    with tqdm(total=total, unit="B", unit_scale=True, desc="download", disable=_disabled(progress)) as bar:
        for obj, target in todo:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".part")
            xfer.download_file(bucket, obj["Key"], str(tmp), callback=bar.update)
            os.replace(tmp, target)
            result.transferred.append(obj["Key"])
            result.bytes_transferred += obj["Size"]
    return result


def download_prefix(s3, bucket: str, prefix: str, dest: Path, *, progress: Optional[bool] = None) -> SyncResult:
    return download_keys(s3, bucket, list_objects(s3, bucket, prefix).values(), prefix, dest, progress=progress)


def _disabled(progress: Optional[bool]) -> Optional[bool]:
    # None lets tqdm decide: a bar on a terminal, nothing when piped or captured.
    return None if progress is None else not progress


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
