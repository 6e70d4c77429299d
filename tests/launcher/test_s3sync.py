"""Upload/download with skip-unchanged and multipart, against the module's moto server."""

from __future__ import annotations

import os

import pytest

from launcher import s3sync

MiB = 1024 * 1024


@pytest.fixture
def s3(moto_reset):
    client = moto_reset.client("s3")
    client.create_bucket(Bucket="data")
    return client


@pytest.fixture
def sessions(tmp_path):
    src = tmp_path / "src"
    for name, size in (("t15.2023.08.11", 11 * MiB), ("t15.2023.08.13", 1000)):
        (src / name).mkdir(parents=True)
        (src / name / "data_train.hdf5").write_bytes(os.urandom(size))
    (src / ".DS_Store").write_bytes(b"junk")
    return src


@pytest.fixture(autouse=True)
def small_parts(monkeypatch):
    monkeypatch.setattr(s3sync, "PART_SIZE", 5 * MiB)  # S3's minimum part size


def count_heads(s3, monkeypatch) -> list:
    calls: list = []
    real = s3.head_object
    monkeypatch.setattr(s3, "head_object", lambda **kw: calls.append(kw) or real(**kw))
    return calls


def test_upload_uses_multipart_and_skips_unchanged(s3, sessions, monkeypatch):
    first = s3sync.upload_dir(s3, sessions, "data", "data/")
    assert sorted(first.transferred) == ["data/t15.2023.08.11/data_train.hdf5", "data/t15.2023.08.13/data_train.hdf5"]
    big = s3.head_object(Bucket="data", Key="data/t15.2023.08.11/data_train.hdf5")
    assert big["ETag"].strip('"').endswith("-3")  # 11 MiB in 5 MiB parts
    heads = count_heads(s3, monkeypatch)
    again = s3sync.upload_dir(s3, sessions, "data", "data/")
    assert again.transferred == [] and len(again.skipped) == 2
    assert heads == []  # both ETags matched the local digests


def test_changed_file_is_uploaded_again(s3, sessions):
    s3sync.upload_dir(s3, sessions, "data", "data")
    (sessions / "t15.2023.08.13" / "data_train.hdf5").write_bytes(os.urandom(1000))
    result = s3sync.upload_dir(s3, sessions, "data", "data")
    assert result.transferred == ["data/t15.2023.08.13/data_train.hdf5"]


def test_md5_metadata_decides_when_the_etag_is_no_md5(s3, sessions, monkeypatch):
    s3sync.upload_dir(s3, sessions, "data", "data/")
    monkeypatch.setattr(s3sync, "PART_SIZE", 6 * MiB)  # the ETag now disagrees; the metadata does not
    heads = count_heads(s3, monkeypatch)
    assert len(s3sync.upload_dir(s3, sessions, "data", "data/").skipped) == 2
    assert [h["Key"] for h in heads] == ["data/t15.2023.08.11/data_train.hdf5"]


def test_dry_run_uploads_nothing(s3, sessions):
    result = s3sync.upload_dir(s3, sessions, "data", "data/", dry_run=True)
    assert len(result.transferred) == 2 and result.bytes_transferred == 11 * MiB + 1000
    assert "Contents" not in s3.list_objects_v2(Bucket="data")


def test_download_prefix_round_trip_and_skip(s3, sessions, tmp_path):
    s3sync.upload_dir(s3, sessions, "data", "data/")
    dest = tmp_path / "dest"
    got = s3sync.download_prefix(s3, "data", "data/", dest)
    assert len(got.transferred) == 2
    assert (dest / "t15.2023.08.11" / "data_train.hdf5").read_bytes() == (
        sessions / "t15.2023.08.11" / "data_train.hdf5"
    ).read_bytes()
    assert len(s3sync.download_prefix(s3, "data", "data/", dest).skipped) == 2


def test_file_digests_match_s3s_etags(tmp_path):
    import hashlib

    path = tmp_path / "f"
    data = os.urandom(11 * MiB)
    path.write_bytes(data)
    md5, multipart = s3sync.file_digests(path, 5 * MiB)
    parts = [hashlib.md5(data[i : i + 5 * MiB]).digest() for i in range(0, len(data), 5 * MiB)]
    assert md5 == hashlib.md5(data).hexdigest()
    assert multipart == hashlib.md5(b"".join(parts)).hexdigest() + "-3"
