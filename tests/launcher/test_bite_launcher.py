"""Launcher behaviours with exact boundaries: MaxWait against MaxRuntime, archives that try to
escape the download folder, the notebook path against the deployed stack, Ctrl-C on a local run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tarfile
import io
import json
from pathlib import Path

import pytest

from launcher.errors import UsageError
from launcher.request import JobSpec, build_training_job_request
from launcher.stack import placeholder_outputs
from trainer.config import DEMO_CONFIG

from tests.launcher.conftest import IMAGE_TAG

pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse")
REPO = Path(__file__).resolve().parents[2]


def _spec(**kwargs) -> JobSpec:
    return JobSpec(job_name="b2t-demo-1", config_file="demo.yaml", image_tag=IMAGE_TAG, **kwargs)


def test_max_wait_equal_to_max_run_is_the_boundary():
    # "Managed Spot Training in Amazon SageMaker AI": MaxWaitTimeInSeconds must be larger than MaxRuntimeInSeconds
    request = build_training_job_request(_spec(max_run_hours=2, max_wait_hours=2 + 1 / 3600), placeholder_outputs())
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 7201}
    with pytest.raises(UsageError, match="--max-wait must be longer than --max-run"):
        build_training_job_request(_spec(max_run_hours=2, max_wait_hours=2), placeholder_outputs())
    on_demand = build_training_job_request(_spec(max_run_hours=2, max_wait_hours=1, spot=False),
                                           placeholder_outputs())
    assert on_demand["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200}


def _tar(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _symlink(name: str, target: str):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info, None


def _download_with_model_archive(deployed, cli, dest, members):
    code, out, err = cli("start", "--config", DEMO_CONFIG, "-y")
    job = next(line.split()[1] for line in out.splitlines() if line.startswith("submitted "))
    deployed.training_job(job).training_job_status = "Completed"
    desc = deployed.client("sagemaker").describe_training_job(TrainingJobName=job)
    bucket, key = desc["ModelArtifacts"]["S3ModelArtifacts"][len("s3://"):].split("/", 1)
    deployed.client("s3").put_object(Bucket=bucket, Key=key, Body=_tar([_file("model.pt", b"w"), *members]))
    return job, cli("download", job, "--to", dest)


@pytest.mark.parametrize("member,why", [(_file("../../escaped.txt", b"x"), "outside the destination"),
                                        (_symlink("link", "/etc/passwd"), "link to an absolute path")],
                         ids=["dotdot", "symlink-out"])
def test_an_archive_reaching_outside_the_download_folder_is_refused(deployed, cli, tmp_path, member, why):
    _, (code, _, err) = _download_with_model_archive(deployed, cli, tmp_path / "runs", [member])
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: model.tar.gz: unsafe member refused: "), err
    assert why in err
    assert not (tmp_path / "escaped.txt").exists() and not list((tmp_path / "runs").rglob("link"))


def test_an_absolute_member_lands_inside_the_download_folder(deployed, cli, tmp_path):
    job, (code, _, err) = _download_with_model_archive(deployed, cli, tmp_path / "runs",
                                                       [_file("/tmp/b2t-absolute.txt", b"x")])
    assert code == 0, err
    assert (tmp_path / "runs" / job / "model" / "tmp" / "b2t-absolute.txt").read_bytes() == b"x"


def test_model_trainer_for_builds_the_launchers_job(deployed, monkeypatch):
    from launcher.sdk import model_trainer_for

    monkeypatch.setenv("AWS_ENDPOINT_URL", deployed.server.url)
    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")
    trainer = model_trainer_for(DEMO_CONFIG, overrides=["num_training_batches=7"], instance_type="ml.g4dn.xlarge")
    args = trainer._create_training_job_args(boto3=True)
    repo_uri = deployed.outputs["EcrRepositoryUri"]
    assert args["AlgorithmSpecification"]["TrainingImage"] == f"{repo_uri}:{IMAGE_TAG}"  # the newest pushed tag
    assert args["RoleArn"] == deployed.outputs["ExecutionRoleArn"]
    assert args["ResourceConfig"]["InstanceType"] == "ml.g4dn.xlarge" and args["EnableManagedSpotTraining"] is True
    assert re.fullmatch(rf"s3://{deployed.output_bucket}/checkpoints/b2t-demo-[0-9-]+/", args["CheckpointConfig"]["S3Uri"])
    (channel,) = args["InputDataConfig"]
    uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
    bucket, prefix = uri[len("s3://"):].split("/", 1)
    s3 = deployed.client("s3")
    body = s3.get_object(Bucket=bucket, Key=prefix + "demo.yaml")["Body"].read()
    assert body.decode() == DEMO_CONFIG.read_text()  # the config travelled before the job exists
    overrides = s3.get_object(Bucket=bucket, Key=prefix + "overrides.json")["Body"].read()
    assert json.loads(overrides) == ["num_training_batches=7"]


def test_model_trainer_for_refuses_missing_sessions_before_uploading(deployed, monkeypatch):
    from launcher.errors import MissingSessions
    from launcher.sdk import model_trainer_for

    deployed.client("s3").delete_object(Bucket=deployed.data_bucket, Key="data/t15.2023.08.13/data_train.hdf5")
    monkeypatch.setenv("AWS_ENDPOINT_URL", deployed.server.url)
    with pytest.raises(MissingSessions, match="t15.2023.08.13"):
        model_trainer_for(DEMO_CONFIG)
    listed = deployed.client("s3").list_objects_v2(Bucket=deployed.output_bucket, Prefix="jobs/")
    assert listed.get("KeyCount", 0) == 0


def test_ctrl_c_on_a_local_run_checkpoints_and_exits_130(tmp_path):
    from trainer.synthetic import SyntheticSpec, generate

    generate(tmp_path / "data", SyntheticSpec(train_trials=8, val_trials=4))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "B2T_"))}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    args = ["start", "--local", "-y", "--runs-dir", str(tmp_path / "runs"), "--data", str(tmp_path / "data"),
            "--num-training-batches", "5000", "--set", "model.n_units=16", "--set", "model.n_layers=1",
            "--set", "batches_per_train_log=1", "--set", "batches_per_val_step=5000"]
    # its own process group, as a terminal's foreground job: Ctrl-C signals the launcher (the trainer
    # runs in a session of its own and is stopped by the launcher, once)
    proc = subprocess.Popen([sys.executable, "-m", "launcher", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    for line in proc.stdout:
        if line.startswith("METRIC step=3 train_loss"):
            os.killpg(proc.pid, signal.SIGINT)
            break
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-2000:]
    assert "stopping the trainer (SIGTERM" in err and "Traceback" not in err
    (job_dir,) = (tmp_path / "runs").glob("b2t-demo-*")
    assert f"{job_dir.name}: Stopped (SIGINT) after " in out and "; its checkpoints are in" in out
    steps = sorted(int(p.stem.split("_")[1]) for p in (job_dir / "checkpoints").glob("checkpoint_*.pt"))
    assert steps[0] == 1 and steps[-1] >= 4  # after validation at batch 0, then where it stopped
    assert not _processes_of(job_dir)  # no trainer left behind


def _processes_of(job_dir: Path) -> list[int]:
    """Processes whose environment names ``job_dir`` (the trainer runs with B2T_OPT_ML=job_dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(job_dir.resolve()).encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:  # gone meanwhile, or not ours
                pass
    return found
