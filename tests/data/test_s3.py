"""The same batches from S3 as from disk, each object fetched once, through faults and retries."""

from __future__ import annotations

import os
import re

import pytest

from tests.data.data_helpers import all_batches, assert_same_batches, make_cfg, upload
from trainer.data import DataError, check_data, make_loaders
from trainer.data.storage import MB, ObjectCache, Storage, cache_key, filesystem, list_objects

# enough batches that every session is drawn (and every validation file read)
FULL_PASS = ["num_training_batches=12"]


def n_parts(tmp_dir, part_mb=1) -> int:
    return sum(-(-p.stat().st_size // (part_mb * MB)) for p in tmp_dir.rglob("*.hdf5"))


def test_s3_and_local_give_bit_identical_batches(tiny_dir, tiny_s3, proxy, tmp_path):
    local = all_batches(make_cfg(tiny_dir, tmp_path, overrides=FULL_PASS))
    remote = all_batches(make_cfg(tiny_s3, tmp_path, endpoint=proxy.url, overrides=FULL_PASS))
    assert_same_batches(remote, local)
    # each object once (one ranged GET per 1 MB part), nothing more
    assert proxy.stats.range_gets == n_parts(tiny_dir)
    assert proxy.stats.body_bytes - sum(p.stat().st_size for p in tiny_dir.rglob("*.hdf5")) < 16 * 1024  # listing XML


def test_endpoint_from_the_environment(tiny_dir, tiny_s3, moto_server, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server.url)
    assert_same_batches(all_batches(make_cfg(tiny_s3, tmp_path)), all_batches(make_cfg(tiny_dir, tmp_path)))


def test_five_percent_of_requests_failing_still_gives_identical_batches(medium_dir, moto_reset, proxy, tmp_path):
    url = upload(moto_reset.client("s3"), medium_dir, multipart_mb=5)
    proxy.configure(fault_rate=0.05, seed=7)
    overrides = [*FULL_PASS, "dataset.storage.memory_cache_mb=0", "dataset.storage.parts_in_flight=4"]
    remote = all_batches(make_cfg(url, tmp_path, endpoint=proxy.url, overrides=overrides))
    assert_same_batches(remote, all_batches(make_cfg(medium_dir, tmp_path, overrides=FULL_PASS)))
    faults = proxy.stats.faults
    assert all(faults[kind] > 0 for kind in ("503", "reset", "truncate")), faults
    assert proxy.stats.requests >= 80


@pytest.mark.parametrize("fault", ["503", "reset", "truncate"])
def test_a_persistent_failure_names_the_object(fault, tiny_s3, proxy, tmp_path):
    cfg = make_cfg(tiny_s3, tmp_path, endpoint=proxy.url, overrides=[
        "dataset.storage.max_attempts=2", "dataset.storage.prefetch_batches=0", "dataset.storage.connect_timeout_s=1"])
    train, _ = make_loaders(cfg)
    proxy.configure(fault_rate=1.0, faults=(fault,))
    with pytest.raises(DataError, match=rf"^{tiny_s3}/t15\.2023\.08\.\d\d/data_train\.hdf5: "):
        next(iter(train))


def test_listing_failure_names_the_dataset(tiny_s3, proxy, tmp_path):
    proxy.configure(fault_rate=1.0, faults=("503",))
    cfg = make_cfg(tiny_s3, tmp_path, endpoint=proxy.url, overrides=["dataset.storage.max_attempts=2"])
    with pytest.raises(DataError, match=rf"^{tiny_s3}: cannot list"):
        check_data(cfg)


def test_workers_share_the_cache_and_fetch_each_object_once(tiny_dir, tiny_s3, proxy, tmp_path):
    cfg = make_cfg(tiny_s3, tmp_path, endpoint=proxy.url, overrides=[
        *FULL_PASS, "dataset.num_dataloader_workers=2", "dataset.storage.prefetch_batches=0"])
    assert_same_batches(all_batches(cfg), all_batches(make_cfg(tiny_dir, tmp_path, overrides=FULL_PASS)))
    assert proxy.stats.range_gets == n_parts(tiny_dir)
    # a second run on the same machine finds everything in the disk cache
    proxy.reset_stats()
    check_data(cfg)
    all_batches(cfg)
    assert proxy.stats.range_gets == 0


def test_memory_tier_holds_what_fits_and_disk_everything(tiny_dir, tiny_s3, moto_server, tmp_path):
    cfg = make_cfg(tiny_s3, tmp_path, endpoint=moto_server.url, overrides=["dataset.storage.memory_cache_mb=1"])
    storage = Storage.from_config(cfg.dataset.storage)
    found = list_objects(tiny_s3, [f"{s}/data_{split}.hdf5" for s in cfg.dataset.sessions for split in ("val", "train")],
                         storage)
    cache = ObjectCache(storage)
    for obj in found.values():
        cache.local_path(obj)
    in_memory = {e.name: e.stat().st_size for e in os.scandir(storage.memory_dir)}
    assert 0 < len(in_memory) < len(found)
    assert sum(in_memory.values()) <= MB
    for rel, obj in found.items():
        on_disk = os.path.join(cache.objects_dir, cache_key(obj))
        assert open(on_disk, "rb").read() == (tiny_dir / rel).read_bytes()
        expected = os.path.join(storage.memory_dir, cache_key(obj)) if cache_key(obj) in in_memory else on_disk
        assert cache.cached_path(obj) == expected


def test_multipart_etags_are_verified(medium_dir, moto_reset, tmp_path, moto_server):
    from trainer.data.storage import _verify

    url = upload(moto_reset.client("s3"), medium_dir, multipart_mb=5)
    storage = Storage(endpoint_url=moto_server.url, disk_dir=str(tmp_path), part_size=3 * MB)
    obj = list_objects(url, ["t15.2023.08.11/data_train.hdf5"], storage)["t15.2023.08.11/data_train.hdf5"]
    assert re.fullmatch(r'"[0-9a-f]{32}-[2-9]"', obj.etag)
    path = ObjectCache(storage).local_path(obj)
    fs, _ = filesystem(url, storage)
    assert _verify(fs, obj, path) is True
    with open(path, "r+b") as f:
        f.seek(obj.size // 2)
        f.write(b"\xff" * 8)
    assert _verify(fs, obj, path) is False
