"""What the object cache does when S3 misbehaves: corrupt bodies, objects deleted, replaced or
denied after the listing, another process fetching the same object, no room to cache it."""

from __future__ import annotations

import re
import threading

import pytest

from tests.data.data_helpers import BUCKET, PREFIX, all_batches, assert_same_batches, make_cfg, upload
from trainer.data import DataError, check_data, make_loaders
from trainer.data.storage import MB

SESSIONS_RE = r"t15\.2023\.08\.\d\d/data_(train|val)\.hdf5"
NO_PREFETCH = ["dataset.storage.prefetch_batches=0", "dataset.storage.max_attempts=2"]


def n_parts(root, part_mb=1) -> int:
    return sum(-(-p.stat().st_size // (part_mb * MB)) for p in root.rglob("*.hdf5"))


def _without_checksums(server):
    """A client that stores no checksum with the objects (older uploads, other tools): S3 then
    sends none with a GET, and only the ETag can tell a damaged body."""
    from botocore.config import Config

    return server.client("s3", config=Config(request_checksum_calculation="when_required"))


def test_a_body_corrupted_once_fails_the_md5_check_and_is_fetched_again(tiny_dir, moto_reset, proxy, tmp_path):
    # objects without checksums: only the MD5 check (dataset.storage.verify_md5) can tell
    url = upload(_without_checksums(moto_reset), tiny_dir)
    proxy.configure(fault_rate=1.0, faults=("corrupt",), max_faults=1)
    cfg = make_cfg(url, tmp_path, endpoint=proxy.url, overrides=[
        "num_training_batches=12", "dataset.storage.prefetch_batches=0", "dataset.storage.verify_md5=true"])
    with pytest.raises(DataError, match=rf"^{re.escape(url)}/{SESSIONS_RE}: the content does not match its ETag"):
        all_batches(cfg)
    remote = all_batches(cfg)  # the next attempt fetches it again
    assert proxy.stats.faults["corrupt"] == 1
    assert proxy.stats.range_gets == n_parts(tiny_dir) + 1  # the corrupted object, once more
    assert_same_batches(remote, all_batches(make_cfg(tiny_dir, tmp_path, overrides=["num_training_batches=12"])))


@pytest.mark.parametrize("multipart", [False, True], ids=["single-part", "multipart"])
def test_a_body_that_stays_corrupt_names_the_object(multipart, medium_dir, moto_reset, proxy, tmp_path):
    # single-part ETags are the object's MD5; multipart ones the MD5 of the parts' MD5s
    s3 = _without_checksums(moto_reset)
    url = upload(s3, medium_dir, multipart_mb=5 if multipart else 0)
    if multipart:  # the validation files are under 5 MB, hence single-part: leave them out
        for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]:
            if o["Key"].endswith("data_val.hdf5"):
                s3.delete_object(Bucket=BUCKET, Key=o["Key"])
    etags = [o["ETag"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert all(("-" in e) == multipart for e in etags), etags
    cfg = make_cfg(url, tmp_path, endpoint=proxy.url, overrides=[*NO_PREFETCH, "dataset.storage.verify_md5=true"])
    proxy.configure(fault_rate=1.0, faults=("corrupt",))
    with pytest.raises(DataError, match=rf"^{re.escape(url)}/{SESSIONS_RE}: .*does not match its ETag"):
        check_data(cfg)
    assert proxy.stats.faults["corrupt"] >= 1


@pytest.fixture
def listed(tiny_s3, proxy, tmp_path):
    """Loaders built (objects listed) over the proxy; nothing fetched yet."""
    cfg = make_cfg(tiny_s3, tmp_path, endpoint=proxy.url, overrides=NO_PREFETCH)
    train, _ = make_loaders(cfg)
    assert proxy.stats.range_gets == 0
    return iter(train)


def _every_object(server):
    s3 = server.client("s3")
    return [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX)["Contents"]]


def test_an_object_deleted_after_listing_names_it(listed, moto_server, tiny_s3):
    for key in _every_object(moto_server):
        moto_server.client("s3").delete_object(Bucket=BUCKET, Key=key)
    with pytest.raises(DataError, match=rf"^{re.escape(tiny_s3)}/{SESSIONS_RE}: object not found"):
        next(listed)


def test_an_object_replaced_after_listing_is_not_mixed_in(listed, moto_server, tiny_s3):
    s3 = moto_server.client("s3")
    for key in _every_object(moto_server):  # same size, other bytes: only the ETag tells
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        s3.put_object(Bucket=BUCKET, Key=key, Body=body[::-1])
    with pytest.raises(DataError, match=rf"^{re.escape(tiny_s3)}/{SESSIONS_RE}: object changed while the run was reading it"):
        next(listed)


def test_access_denied_names_the_object(listed, proxy, tiny_s3):
    proxy.configure(fault_rate=1.0, faults=("denied",))
    with pytest.raises(DataError, match=rf"^{re.escape(tiny_s3)}/{SESSIONS_RE}: access denied"):
        next(listed)
    assert proxy.stats.faults["denied"] == 1  # a refusal is final: not retried


def test_a_process_waits_for_anothers_fetch_instead_of_fetching_again(tiny_dir, tiny_s3, proxy, tmp_path):
    proxy.configure(latency_s=0.05)  # every fetch is slow enough for the others to arrive during it
    cfg = make_cfg(tiny_s3, tmp_path, endpoint=proxy.url, overrides=NO_PREFETCH)
    errors = []

    def read_all():
        try:
            all_batches(cfg)
        except Exception as e:  # reported below
            errors.append(e)

    from trainer.data.storage import fetch_counters

    fetched_before = fetch_counters()[0]
    threads = [threading.Thread(target=read_all) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert proxy.stats.range_gets == n_parts(tiny_dir)  # each object once, for all three readers
    assert fetch_counters()[0] - fetched_before == sum(p.stat().st_size for p in tiny_dir.rglob("*.hdf5"))


def test_no_room_to_cache_names_the_object_and_the_setting(tiny_s3, moto_server, tmp_path, monkeypatch):
    import os

    cfg = make_cfg(tiny_s3, tmp_path, endpoint=moto_server.url, overrides=NO_PREFETCH)
    real = os.statvfs

    def full(path):  # the cache volume reports 1 MB free: less than the 64 MB margin it keeps
        st = real(path)
        return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks, 1, MB // st.f_frsize, *st[5:]))

    monkeypatch.setattr(os, "statvfs", full)
    with pytest.raises(DataError, match=rf"^{re.escape(tiny_s3)}/{SESSIONS_RE}: not enough space to cache it .*disk_cache_dir"):
        check_data(cfg)


def test_a_body_cut_short_every_time_names_the_bytes(listed, proxy, tiny_s3):
    proxy.configure(fault_rate=1.0, faults=("truncate",))
    with pytest.raises(DataError, match=rf"^{re.escape(tiny_s3)}/{SESSIONS_RE}: bytes 0-\d+ failed 2 times; last error"):
        next(listed)


def test_prefetch_skips_an_object_another_thread_is_fetching(tiny_s3, proxy, tmp_path):
    import time

    from trainer.data.storage import ObjectCache, Storage, list_objects

    storage = Storage(endpoint_url=proxy.url, disk_dir=str(tmp_path / "cache"))
    rel = "t15.2023.08.11/data_train.hdf5"
    obj = list_objects(tiny_s3, [rel], storage)[rel]
    cache = ObjectCache(storage)
    proxy.configure(latency_s=1.0)  # the fetch below holds its lock for at least a second
    fetching = threading.Thread(target=cache.local_path, args=(obj,))
    gets_before = proxy.stats.gets
    fetching.start()
    while proxy.stats.gets == gets_before:  # its GET is in flight
        time.sleep(0.01)
    assert cache.prefetch(obj) is False  # does not wait for it, does not fetch it again
    fetching.join(30)
    assert cache.prefetch(obj) is True and proxy.stats.range_gets == 1


def test_without_a_memory_tier_objects_go_to_disk(tiny_s3, moto_server, tmp_path):
    from trainer.data.storage import ObjectCache, Storage, list_objects

    # a memory budget but no memory directory: what Storage.from_config gives on a machine without /dev/shm
    storage = Storage(endpoint_url=moto_server.url, disk_dir=str(tmp_path / "cache"), memory_bytes=64 * MB,
                      memory_dir=None)
    rel = "t15.2023.08.11/data_val.hdf5"
    path = ObjectCache(storage).local_path(list_objects(tiny_s3, [rel], storage)[rel])
    assert path.startswith(str(tmp_path / "cache" / "objects") + "/")
