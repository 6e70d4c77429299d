"""Damaged or missing data: a clear DataError naming the object (and trial), locally and on S3."""

from __future__ import annotations

import re
import shutil

import h5py
import numpy as np
import pytest

from tests.data.data_helpers import all_batches, make_cfg, upload
from trainer.data import DataError, check_data, make_loaders

SESSION = "t15.2023.08.13"


@pytest.fixture(params=["local", "s3"])
def where(request):
    return request.param


@pytest.fixture
def damaged(tiny_dir, tmp_path, where, request):
    """A copy of the tiny set to damage; ``publish()`` gives its config (after uploading it for s3)."""
    root = tmp_path / "data"
    shutil.copytree(tiny_dir, root)

    def publish(overrides=()):
        if where == "local":
            return make_cfg(root, tmp_path, overrides=overrides), str(root)
        server = request.getfixturevalue("moto_reset")
        url = upload(server.client("s3"), root)
        return make_cfg(url, tmp_path, endpoint=server.url, overrides=overrides), url

    return root, publish


def test_missing_session_names_the_file(damaged):
    root, publish = damaged
    shutil.rmtree(root / SESSION)
    cfg, url = publish()
    expected = f"missing session file: {url}/{SESSION}/data_train.hdf5"
    with pytest.raises(DataError, match=re.escape(expected)):
        check_data(cfg)
    with pytest.raises(DataError, match=re.escape(expected)):
        make_loaders(cfg)


def test_wrong_location_says_so(tmp_path):
    with pytest.raises(DataError, match="none of the sessions was found"):
        check_data(make_cfg(tmp_path / "nowhere", tmp_path))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _overwrite_signature(path):
    with open(path, "r+b") as f:
        f.write(b"garbage!")


@pytest.mark.parametrize("damage,name,why", [(_truncate, "data_train", "truncated"),
                                             (_overwrite_signature, "data_val", "signature")])
def test_damaged_file_names_the_file(damaged, damage, name, why):
    root, publish = damaged
    damage(root / SESSION / f"{name}.hdf5")
    cfg, url = publish()
    with pytest.raises(DataError, match=rf"^{re.escape(url)}/{SESSION}/{name}\.hdf5: not a readable HDF5 file .*{why}"):
        check_data(cfg)


def test_corrupt_features_name_the_trial(damaged):
    root, publish = damaged
    path = root / SESSION / "data_val.hdf5"
    with h5py.File(path, "r") as f:
        ds = f["trial_0002/input_features"]
        offset, nbytes = ds.id.get_offset(), ds.id.get_storage_size()
    with open(path, "r+b") as f:
        f.seek(offset + nbytes // 2)
        f.write(b"\xff" * 64)  # NaNs in the middle of the trial
    cfg, url = publish()
    check_data(cfg)  # metadata is intact
    _, val = make_loaders(cfg)
    with pytest.raises(DataError, match=rf"^{re.escape(url)}/{SESSION}/data_val\.hdf5 trial_0002: non-finite input_features"):
        list(val)


def test_missing_field_names_the_trial(damaged):
    root, publish = damaged
    with h5py.File(root / SESSION / "data_train.hdf5", "r+") as f:
        del f["trial_0007/seq_class_ids"]
    cfg, url = publish()
    expected = f"{url}/{SESSION}/data_train.hdf5 trial_0007: missing field 'seq_class_ids'"
    with pytest.raises(DataError, match=f"^{re.escape(expected)}$"):
        check_data(cfg)
    with pytest.raises(DataError, match=f"^{re.escape(expected)}$"):
        all_batches(make_cfg(cfg.data_url, root.parent, endpoint=cfg.dataset.storage.endpoint_url,
                             overrides=["num_training_batches=12"]))


def test_errors_in_workers_keep_their_one_line_message(tiny_dir, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_dir, root)
    with h5py.File(root / SESSION / "data_train.hdf5", "r+") as f:
        del f["trial_0001/transcription"]
    cfg = make_cfg(root, tmp_path, overrides=["dataset.num_dataloader_workers=1", "num_training_batches=12"])
    expected = f"{root}/{SESSION}/data_train.hdf5 trial_0001: missing field 'transcription'"
    with pytest.raises(DataError, match=f"^{re.escape(expected)}$") as caught:
        list(make_loaders(cfg)[0])
    assert "worker process 0" in caught.value.worker_traceback


def test_missing_attribute_names_the_trial(damaged):
    root, publish = damaged
    with h5py.File(root / SESSION / "data_train.hdf5", "r+") as f:
        del f["trial_0003"].attrs["seq_len"]
    cfg, url = publish()
    with pytest.raises(DataError, match=r"trial_0003: missing attribute 'seq_len'"):
        check_data(cfg)


def test_features_of_the_wrong_width_name_the_trial(tiny_dir, tmp_path):
    cfg = make_cfg(tiny_dir, tmp_path, overrides=["dataset.neural_dim=256", "model.n_input_features=256"])
    with pytest.raises(DataError, match=r"data_train\.hdf5 trial_0000: input_features has 512 features, dataset.neural_dim is 256"):
        check_data(cfg)


def test_sessions_without_validation_file_just_have_no_validation(tiny_dir, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_dir, root)
    (root / SESSION / "data_val.hdf5").unlink()
    summary = check_data(make_cfg(root, tmp_path))
    assert [s.n_val for s in summary.sessions] == [4, 0, 4, 4]
    _, val = make_loaders(make_cfg(root, tmp_path))
    assert {int(d) for b in val for d in b["day_indicies"]} == {0, 2, 3}


def test_excluding_every_training_trial_of_a_session_is_an_error(tiny_dir, tmp_path):
    bad = {SESSION: {b: list(range(5)) for b in (1, 2, 3)}}
    cfg = make_cfg(tiny_dir, tmp_path, overrides=[f"dataset.bad_trials_dict={bad}", "num_training_batches=3"])
    with pytest.raises(DataError, match=rf"{SESSION}/data_train\.hdf5: no training trials \(12 in the file, all excluded"):
        list(make_loaders(cfg)[0])


def test_huge_but_finite_features_are_delivered_unchanged(tiny_dir, tmp_path):
    """Values whose float32 sum overflows are still finite: the trial loads, values intact."""
    root = tmp_path / "data"
    shutil.copytree(tiny_dir, root)
    with h5py.File(root / SESSION / "data_val.hdf5", "r+") as f:
        ds = f["trial_0002/input_features"]
        huge = ds[()]
        huge[:4, :3] = 3e38  # 12 values summing to ~3.6e39, beyond float32's 3.4e38
        ds[...] = huge
    _, val = make_loaders(make_cfg(root, tmp_path))
    batch = next(b for b in val if 2 in b["trial_nums"].tolist() and int(b["day_indicies"][0]) == 1)
    row = batch["trial_nums"].tolist().index(2)
    assert (batch["input_features"][row, :4, :3] == np.float32(3e38)).all()


def test_directory_in_place_of_a_file_is_one_line(tiny_dir, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_dir, root)
    (root / SESSION / "data_train.hdf5").unlink()
    (root / SESSION / "data_train.hdf5").mkdir()
    with pytest.raises(DataError) as caught:
        check_data(make_cfg(root, tmp_path))
    assert "\n" not in str(caught.value) and str(caught.value).endswith("not a readable HDF5 file (Is a directory)")


def test_s3_url_without_bucket_says_so(tmp_path):
    with pytest.raises(DataError, match=r"^s3://: no bucket in the S3 URL"):
        check_data(make_cfg("s3://", tmp_path))
