"""Trial indexes beside the data: the first batch fetches its own trials first, and a sidecar
is only believed for the object version it names."""

from __future__ import annotations

import dataclasses
import logging

from tests.data.data_helpers import BUCKET, PREFIX, TINY, all_batches, assert_same_batches, make_cfg, upload
from trainer.data import check_data, make_loaders
from trainer.data.dataset import TRAIN, Catalog
from trainer.data.index import trial_ranges
from trainer.data.loaders import build_spec
from trainer.data.sampling import TrainRule
from trainer.synthetic import generate

SLOW = ["dataset.num_dataloader_workers=1", "dataset.storage.parts_in_flight=1", "num_training_batches=3"]


def batch_zero(cfg) -> dict[str, list[tuple[int, int]]]:
    """The byte ranges batch 0 reads, per file (``<session>/data_train.hdf5``), from the files' own indexes."""
    spec = build_spec(cfg)
    catalog = Catalog(spec)
    ds = cfg.dataset
    rule = TrainRule.create(ds.seed, len(spec.sessions), ds.days_per_batch, ds.batch_size, ds.must_include_days)
    wanted = {}
    for day, positions in rule.plan(0, lambda d: catalog.usable(d, TRAIN)):
        trials = catalog.index(day, TRAIN).trials
        wanted[f"{spec.sessions[day]}/data_train.hdf5"] = trial_ranges([trials[p] for p in positions])
    return wanted


def test_the_first_batch_waits_for_its_trials_not_for_whole_files(medium_dir, moto_reset, proxy, tmp_path):
    url = upload(moto_reset.client("s3"), medium_dir, sidecars=True)
    wanted = batch_zero(make_cfg(medium_dir, tmp_path / "local"))
    whole = sum((medium_dir / rel).stat().st_size for rel in wanted)
    needed = sum(b - a for ranges in wanted.values() for a, b in ranges)
    assert needed < whole / 3  # else this data could not tell the two apart
    train, _ = make_loaders(make_cfg(url, tmp_path, endpoint=proxy.url, overrides=SLOW))
    first = next(iter(train))
    # In each of batch 0's files, every byte batch 0 reads is asked for before any other byte.
    asked: dict[str, list[tuple[int, int]]] = {}
    for path, header in proxy.stats.ranges:
        a, b = header.split("=")[1].split("-")
        asked.setdefault(path, []).append((int(a), int(b) + 1))
    for rel, ranges in wanted.items():
        got = asked[f"/{BUCKET}/{PREFIX}/{rel}"]
        n = next(i for i in range(len(got) + 1) if all(any(x <= a and b <= y for x, y in got[:i]) for a, b in ranges))
        assert sum(y - x for x, y in got[:n]) < (whole / len(wanted)) / 2, (rel, got[:n])
    local = make_loaders(make_cfg(medium_dir, tmp_path / "local", overrides=SLOW))[0]
    assert_same_batches([first], [next(iter(local))])


def test_batches_read_through_sidecars_equal_local_ones_under_faults(medium_dir, moto_reset, proxy, tmp_path):
    url = upload(moto_reset.client("s3"), medium_dir, multipart_mb=5, sidecars=True)
    proxy.configure(fault_every=5)
    overrides = ["num_training_batches=12", "dataset.num_dataloader_workers=2", "dataset.storage.parts_in_flight=4"]
    remote = all_batches(make_cfg(url, tmp_path, endpoint=proxy.url, overrides=overrides))
    assert proxy.stats.faults["503"] and proxy.stats.faults["reset"] and proxy.stats.faults["truncate"]
    assert_same_batches(remote, all_batches(make_cfg(medium_dir, tmp_path / "local", overrides=overrides)))
    data = sum(p.stat().st_size for p in medium_dir.rglob("*.hdf5"))
    assert proxy.stats.body_bytes <= 1.01 * data


def test_a_sidecar_of_a_replaced_file_is_ignored(tiny_dir, moto_reset, tmp_path, moto_server, caplog):
    client = moto_reset.client("s3")
    url = upload(client, tiny_dir, sidecars=True)
    other = tmp_path / "other"
    generate(other, dataclasses.replace(TINY, seed=99))
    session = sorted(p.name for p in tiny_dir.iterdir())[0]
    client.upload_file(str(other / session / "data_train.hdf5"), BUCKET, f"{PREFIX}/{session}/data_train.hdf5")
    (tmp_path / "mixed").mkdir()
    for p in tiny_dir.iterdir():
        (tmp_path / "mixed" / p.name).symlink_to(p)
    (tmp_path / "mixed" / session).unlink()
    (tmp_path / "mixed" / session).mkdir()
    (tmp_path / "mixed" / session / "data_train.hdf5").symlink_to(other / session / "data_train.hdf5")
    (tmp_path / "mixed" / session / "data_val.hdf5").symlink_to(tiny_dir / session / "data_val.hdf5")
    caplog.set_level(logging.INFO, logger="trainer.data")
    remote = all_batches(make_cfg(url, tmp_path, endpoint=moto_server.url, overrides=["num_training_batches=12"]))
    assert f"{session}/data_train.hdf5.b2t-index.json: describes another version of the file" in caplog.text
    assert_same_batches(remote, all_batches(make_cfg(tmp_path / "mixed", tmp_path / "local",
                                                     overrides=["num_training_batches=12"])))


def test_a_damaged_sidecar_is_ignored_and_the_file_indexed_itself(tiny_dir, moto_reset, moto_server, tmp_path, caplog):
    client = moto_reset.client("s3")
    url = upload(client, tiny_dir, sidecars=True)
    session = sorted(p.name for p in tiny_dir.iterdir())[0]
    client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{session}/data_val.hdf5.b2t-index.json", Body=b"{not json")
    caplog.set_level(logging.INFO, logger="trainer.data")
    summary = check_data(make_cfg(url, tmp_path, endpoint=moto_server.url))
    assert f"{session}/data_val.hdf5.b2t-index.json: unreadable" in caplog.text
    assert summary.sessions == check_data(make_cfg(tiny_dir, tmp_path / "local")).sessions
