"""`upload` sends only session files it has checked; `download` never overwrites without --force."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.launcher.conftest import tar_gz
from tests.launcher.test_errors import assert_one_line_error
from tests.launcher.test_lifecycle import s3_state
from trainer.config import DEMO_CONFIG

pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse")


@pytest.fixture(scope="module")
def sessions(tmp_path_factory) -> Path:
    """Two real t15 sessions (train + val) and files that are not session data."""
    from trainer.synthetic import SyntheticSpec, generate

    root = tmp_path_factory.mktemp("upload") / "src"
    generate(root, SyntheticSpec(n_sessions=2, train_trials=3, val_trials=2, n_features=4))
    (root / "secrets.env").write_text("AWS_SECRET_ACCESS_KEY=do-not-send\n")
    first = sorted(p for p in root.iterdir() if p.is_dir())[0]
    (first / "notes.txt").write_text("lab notes\n")
    (first / "extra").mkdir()
    (first / "extra" / "data_train.hdf5").write_bytes((first / "data_train.hdf5").read_bytes())
    return root


def keys_under(deployed, prefix: str) -> list[str]:
    found = deployed.client("s3").list_objects_v2(Bucket=deployed.data_bucket, Prefix=prefix).get("Contents", [])
    return sorted(o["Key"] for o in found)


def test_upload_sends_only_session_files_and_lists_the_rest(deployed, cli, sessions):
    code, out, err = cli("upload", sessions, "--prefix", "up")
    assert code == 0, err
    names = sorted(p.name for p in sessions.iterdir() if p.is_dir())
    assert keys_under(deployed, "data/up/") == sorted(  # each file and its trial index
        f"data/up/{s}/{f}{index}" for s in names for f in ("data_train.hdf5", "data_val.hdf5")
        for index in ("", ".b2t-index.json"))
    skipped = [line for line in out.splitlines() if line.startswith("skipped")]
    assert sorted(skipped) == sorted([
        f"skipped (not <session>/data_train.hdf5 or data_val.hdf5): {sessions / names[0] / 'extra' / 'data_train.hdf5'}",
        f"skipped (not <session>/data_train.hdf5 or data_val.hdf5): {sessions / names[0] / 'notes.txt'}",
        f"skipped (not <session>/data_train.hdf5 or data_val.hdf5): {sessions / 'secrets.env'}",
    ])
    assert "3 other file(s) not sent" in out


def test_upload_refuses_a_truncated_file_and_sends_nothing(deployed, cli, sessions, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(sessions, src)
    code, _, err = cli("upload", src, "--prefix", "up")
    assert code == 0, err
    before = s3_state(deployed)
    session = sorted(p for p in src.iterdir() if p.is_dir())[1]
    data = (session / "data_train.hdf5").read_bytes()
    (session / "data_train.hdf5").write_bytes(data[: len(data) // 2])  # an interrupted copy
    code, _, err = cli("upload", src, "--prefix", "up")
    assert_one_line_error(code, err, f"{session / 'data_train.hdf5'}", "not uploaded (nothing was sent)")
    assert s3_state(deployed) == before  # the good copy in S3 was not replaced


@pytest.fixture
def finished_job(deployed, cli) -> str:
    code, out, err = cli("start", "--config", DEMO_CONFIG, "-y", "--job-name", "dl")
    assert code == 0, err
    return "b2t-dl"


def put_artifacts(deployed, job: str, weights: bytes) -> None:
    s3 = deployed.client("s3")
    s3.put_object(Bucket=deployed.output_bucket, Key=f"jobs/{job}/output/model.tar.gz",
                  Body=tar_gz({"model.pt": weights}))


def test_download_never_overwrites_without_force(deployed, finished_job, cli, tmp_path):
    put_artifacts(deployed, finished_job, b"first")
    assert cli("download", finished_job, "--to", tmp_path)[0] == 0
    model = tmp_path / finished_job / "model" / "model.pt"
    model.write_bytes(b"my edited copy")
    put_artifacts(deployed, finished_job, b"second")
    code, _, err = cli("download", finished_job, "--to", tmp_path)
    assert_one_line_error(code, err, f"{tmp_path / finished_job} already holds 3 file(s)", "--force")
    assert model.read_bytes() == b"my edited copy"
    code, _, err = cli("download", finished_job, "--to", tmp_path, "--force")
    assert code == 0, err
    assert model.read_bytes() == b"second"


def test_download_of_a_job_without_artifacts_says_so(deployed, finished_job, cli, tmp_path):
    code, out, err = cli("download", finished_job, "--to", tmp_path)
    assert_one_line_error(code, err, f"job {finished_job} (Completed) has no artifacts in S3",
                          "nothing downloaded", "--checkpoints")
    assert not (tmp_path / finished_job).exists()
