"""The object cache across runs: faults cost no extra bytes, replaced objects are fetched
again and their old copies evicted, a mid-run change is named, a SIGKILLed fetch resumes."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.s3proxy import FAULTS
from tests.data.data_helpers import BUCKET, PREFIX, ROOT, TINY, all_batches, assert_same_batches, make_cfg, upload
from trainer.data import DataError, check_data, make_loaders
from trainer.data.storage import MB, ObjectCache, Storage, cache_key, list_objects, received_bytes
from trainer.synthetic import generate

FULL_PASS = ["num_training_batches=12"]  # every session drawn, every validation file read
SESSION = "t15.2023.08.11"


def dataset_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.hdf5"))


def cache_files(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in (cache_dir / "objects").iterdir())


def test_a_fault_every_fifth_get_gives_identical_batches_and_no_extra_bytes(medium_dir, moto_reset, proxy, tmp_path):
    url = upload(moto_reset.client("s3"), medium_dir, multipart_mb=5)
    proxy.configure(fault_every=5)
    remote = all_batches(make_cfg(url, tmp_path, endpoint=proxy.url,
                                  overrides=[*FULL_PASS, "dataset.storage.parts_in_flight=4"]))
    assert_same_batches(remote, all_batches(make_cfg(medium_dir, tmp_path, overrides=FULL_PASS)))
    assert all(proxy.stats.faults[kind] > 0 for kind in FAULTS), proxy.stats.faults
    # a truncated body is continued from the byte where it stopped; 503s and resets carry none
    assert proxy.stats.body_bytes <= 1.01 * dataset_bytes(medium_dir)


def test_a_replaced_object_is_fetched_again_and_its_old_copy_evicted(tiny_dir, moto_reset, proxy, tmp_path):
    client = moto_reset.client("s3")
    url = upload(client, tiny_dir)
    cfg = make_cfg(url, tmp_path, endpoint=proxy.url, overrides=FULL_PASS)
    all_batches(cfg)
    first = cache_files(tmp_path / "cache")
    assert len(first) == len(list(tiny_dir.rglob("*.hdf5")))

    # another valid version of one session's training file, on S3 and in a local copy
    other = tmp_path / "other"
    generate(other, dataclasses.replace(TINY, seed=99))
    replaced = other / SESSION / "data_train.hdf5"
    client.upload_file(str(replaced), BUCKET, f"{PREFIX}/{SESSION}/data_train.hdf5")
    local = tmp_path / "local"
    shutil.copytree(tiny_dir, local)
    shutil.copy(replaced, local / SESSION / "data_train.hdf5")

    proxy.reset_stats()
    assert_same_batches(all_batches(cfg), all_batches(make_cfg(local, tmp_path, overrides=FULL_PASS)))
    assert 0 < proxy.stats.body_bytes - replaced.stat().st_size < 16 * 1024  # that object only (+ the listing)
    second = cache_files(tmp_path / "cache")
    assert len(second) == len(first)
    gone, new = set(first) - set(second), set(second) - set(first)
    assert len(gone) == len(new) == 1 and next(iter(gone)).endswith(f"{SESSION}-data_train.hdf5")
    manifests = [p.name for p in (tmp_path / "cache" / "manifests").iterdir()]
    assert f"{next(iter(gone))}.json" not in manifests and f"{next(iter(new))}.json" in manifests


def test_an_object_changed_mid_run_is_named_with_both_etags(tiny_s3, moto_server, tmp_path):
    # fetched on demand (no prefetching): the change lands between the listing and the fetch
    cfg = make_cfg(tiny_s3, tmp_path, endpoint=moto_server.url,
                   overrides=["dataset.storage.max_attempts=2", "dataset.storage.prefetch_batches=0"])
    train, _ = make_loaders(cfg)  # the run has listed the objects: these versions
    client = moto_server.client("s3")
    key = f"{PREFIX}/{SESSION}/data_train.hdf5"
    old = client.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"')
    new = client.put_object(Bucket=BUCKET, Key=key, Body=b"not the file the run listed")["ETag"].strip('"')
    expected = f"{tiny_s3}/{SESSION}/data_train.hdf5: object changed while the run was reading it (ETag {old} → {new})"
    with pytest.raises(DataError, match=f"^{re.escape(expected)}$"):
        next(iter(train))


def test_after_sigkill_the_next_run_resumes_and_reclaims_the_space(medium_dir, moto_reset, proxy, tmp_path):
    url = upload(moto_reset.client("s3"), medium_dir)
    cache_dir = tmp_path / "cache"
    proxy.configure(rate=1e6)  # 1 MB/s per connection: the fetch is still running when it is killed
    code = (f"from pathlib import Path; from tests.data.data_helpers import make_cfg; from trainer.data import check_data; "
            f"check_data(make_cfg({url!r}, Path({str(tmp_path)!r}), endpoint={proxy.url!r}, "
            f"overrides=['dataset.storage.parts_in_flight=2']))")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _received(cache_dir) < 2 * MB:
            time.sleep(0.05)
        assert _received(cache_dir) >= 2 * MB, "the child never got going"
        shm = [n for n in os.listdir("/dev/shm") if n.startswith(f"b2t-data-cache-{child.pid}-")]
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    left = _received(cache_dir)
    assert any(n.endswith(".partial") for n in cache_files(cache_dir))

    proxy.configure(rate=0)
    proxy.reset_stats()
    cfg = make_cfg(url, tmp_path, endpoint=proxy.url)
    check_data(cfg)
    # only what the killed run had not received is fetched again, and nothing of it is left over
    assert proxy.stats.body_bytes <= dataset_bytes(medium_dir) - left + 2 * MB
    assert not [n for n in cache_files(cache_dir) if n.endswith((".partial", ".progress"))]
    assert not [n for n in shm if os.path.exists(f"/dev/shm/{n}")]
    storage = Storage.from_config(cfg.dataset.storage)
    found = list_objects(url, [p.relative_to(medium_dir).as_posix() for p in medium_dir.rglob("*.hdf5")], storage)
    cache = ObjectCache(storage)
    for rel, obj in found.items():
        assert open(os.path.join(cache.objects_dir, cache_key(obj)), "rb").read() == (medium_dir / rel).read_bytes()


def _received(cache_dir: Path) -> int:
    """Bytes recorded as received in the .progress files of fetches in progress."""
    objects = cache_dir / "objects"
    return sum(received_bytes(str(p)) for p in objects.glob("*.progress")) if objects.exists() else 0


def test_least_recently_used_objects_are_evicted_above_the_limit(tiny_dir, tiny_s3, moto_server, tmp_path):
    limit_mb = 1
    assert dataset_bytes(tiny_dir) > limit_mb * MB  # the limit is smaller than the dataset
    cfg = make_cfg(tiny_s3, tmp_path, endpoint=moto_server.url,
                   overrides=[*FULL_PASS, f"dataset.storage.disk_cache_mb={limit_mb}", "dataset.storage.prefetch_batches=0"])
    assert_same_batches(all_batches(cfg), all_batches(make_cfg(tiny_dir, tmp_path, overrides=FULL_PASS)))
    objects = tmp_path / "cache" / "objects"
    assert sum(p.stat().st_size for p in objects.iterdir()) <= limit_mb * MB


def test_a_local_file_is_indexed_once_per_version(tmp_path, monkeypatch):
    root = tmp_path / "data"
    generate(root, dataclasses.replace(TINY, n_sessions=1))
    cfg = make_cfg(root, tmp_path, overrides=["dataset.days_per_batch=1", "dataset.sessions=['t15.2023.08.11']",
                                              "dataset.dataset_probability_val=[1]"])
    import trainer.data.dataset as dataset

    built: list[str] = []
    real = dataset.build_index
    monkeypatch.setattr(dataset, "build_index", lambda path, url: built.append(url) or real(path, url))
    first = all_batches(cfg)
    assert len(built) == 2  # the train and the validation file, once each
    assert_same_batches(all_batches(cfg), first)
    assert len(built) == 2  # a second run reads the cached indexes
    train = root / SESSION / "data_train.hdf5"
    os.utime(train, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new version, same size
    all_batches(cfg)
    assert built[2:] == [str(train)]
    assert len(list((tmp_path / "cache" / "manifests").iterdir())) == 2  # the old version's index is gone


def test_local_data_needs_no_writable_cache(tiny_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    unusable = make_cfg(tiny_dir, tmp_path, overrides=[f"dataset.storage.disk_cache_dir={blocker / 'cache'}"])
    assert_same_batches(all_batches(unusable), all_batches(make_cfg(tiny_dir, tmp_path)))
