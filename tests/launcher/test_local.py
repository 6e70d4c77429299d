"""`start --local`: the same request, run as `python -m trainer` in an /opt/ml tree under runs/."""

from __future__ import annotations

import json
import re

import pytest

from launcher.errors import MissingSessions, UsageError
from trainer.config import DEMO_CONFIG, load_config

TINY = [
    "--process",
    "--num-training-batches", "2",
    "--set", "model.n_units=16", "--set", "model.n_layers=1",
    "--set", "batches_per_train_log=1", "--set", "batches_per_val_step=1",
]


@pytest.fixture(scope="module")
def local_data(tmp_path_factory):
    from trainer.synthetic import SyntheticSpec, generate

    root = tmp_path_factory.mktemp("local_data")
    generate(root, SyntheticSpec(train_trials=8, val_trials=4))
    return root


def run_local(runs, data, *extra):
    """One tiny local job on small synthetic sessions: (exit code, stdout, job dir)."""
    import contextlib
    import io

    from launcher.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["start", "--local", "-y", "--runs-dir", str(runs), "--data", str(data), *TINY, *extra])
    (job_dir,) = [p for p in runs.iterdir() if p.name.startswith("b2t-demo-")]
    return code, out.getvalue(), job_dir


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, local_data):
    return run_local(tmp_path_factory.mktemp("local") / "runs", local_data)


def test_local_run_completes_and_says_where_things_are(local_run):
    code, out, job_dir = local_run
    assert code == 0, out
    assert f"{job_dir.name}: Completed" in out
    assert f"model:   {job_dir / 'model'}/" in out and f"metrics: {job_dir / 'output' / 'data' / 'metrics.jsonl'}" in out


def test_local_run_leaves_model_metrics_and_checkpoints(local_run):
    _, _, job_dir = local_run
    assert (job_dir / "model" / "model.pt").is_file()
    records = [json.loads(line) for line in (job_dir / "output" / "data" / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} >= {"train", "val"}
    assert any(job_dir.joinpath("checkpoints").iterdir())


def test_local_run_ends_with_curves_and_tensorboard_files(local_run):
    from PIL import Image

    code, out, job_dir = local_run
    with Image.open(job_dir / "model" / "curves.png") as image:
        assert image.size == (1200, 450)
    (events,) = (job_dir / "output" / "tensorboard").glob("events.out.tfevents.*")
    assert events.stat().st_size > 0
    assert f"curves:  {job_dir / 'model' / 'curves.png'}" in out
    assert f"tensorboard --logdir {job_dir / 'output' / 'tensorboard'}" in out
    assert "trainer.monitor: progress: 2/2 batches (100%)" in out


def test_local_tree_is_the_requests_opt_ml_layout(local_run):
    _, _, job_dir = local_run
    request = json.loads((job_dir / "request.json").read_text())
    config = job_dir / "input" / "config"
    assert json.loads((config / "hyperparameters.json").read_text()) == request["HyperParameters"]
    assert json.loads((config / "resourceconfig.json").read_text())["current_instance_type"] == "ml.g5.2xlarge"
    assert set(json.loads((config / "inputdataconfig.json").read_text())) == {"config"}
    assert json.loads((config / "checkpointconfig.json").read_text()) == {
        "LocalPath": str((job_dir / "checkpoints").resolve()),
        "S3Uri": request["CheckpointConfig"]["S3Uri"],
    }
    assert json.loads((config / "tensorboardoutputconfig.json").read_text()) == {
        "LocalPath": str((job_dir / "output" / "tensorboard").resolve()),
        "S3OutputPath": request["TensorBoardOutputConfig"]["S3OutputPath"],
    }
    assert (job_dir / "input" / "data" / "config" / "demo.yaml").read_text() == DEMO_CONFIG.read_text()
    assert request["HyperParameters"]["data_url"] == "s3://b2t-local-data/data/"


def test_local_data_is_served_as_upload_leaves_it_with_trial_indexes(local_run, local_data):
    _, _, job_dir = local_run
    files = len(list(local_data.glob("*/data_*.hdf5")))
    assert f"trial indexes: {files} of {files} files from their sidecars" in (job_dir / "train.log").read_text()


def test_metric_definitions_match_the_real_trainer_output(local_run):
    from launcher.request import metric_definitions

    _, _, job_dir = local_run
    log = (job_dir / "train.log").read_text().splitlines()
    matched = {d["Name"] for d in metric_definitions() for line in log if re.search(d["Regex"], line)}
    assert matched == {d["Name"] for d in metric_definitions()}
    assert not any(re.search(d["Regex"], line) for d in metric_definitions() for line in log
                   if line.startswith("METRIC_SESSION"))


def test_dry_run_prints_the_request_and_runs_nothing(tmp_path, cli):
    code, out, _ = cli("start", "--local", "--dry-run", "--runs-dir", tmp_path)
    assert code == 0 and '"TrainingJobName": "b2t-demo-' in out and list(tmp_path.iterdir()) == []


def test_synthetic_data_is_generated_once(tmp_path, monkeypatch):
    from launcher import local

    calls = []

    def fake_generate(root, spec):
        calls.append(spec)
        root.mkdir(parents=True)

    monkeypatch.setattr("trainer.synthetic.generate", fake_generate)
    config = load_config(DEMO_CONFIG)
    first = local.synthetic_data(tmp_path, config)
    assert local.synthetic_data(tmp_path, config) == first and len(calls) == 1
    assert first.parent == tmp_path / ".data"


def test_sessions_the_synthetic_set_lacks_are_named(tmp_path):
    from launcher import local

    config = load_config(DEMO_CONFIG, ["dataset.sessions=[t15.2023.08.11, t15.2024.01.01, t15.2023.08.13, x]"])
    with pytest.raises(MissingSessions, match="synthetic data set: t15.2024.01.01, x; pass --data DIR"):
        local.synthetic_data(tmp_path, config)


def test_local_run_with_two_cpu_ranks(tmp_path, local_data):
    code, out, job_dir = run_local(tmp_path / "runs", local_data, "--ranks", "2")
    assert code == 0, out
    assert "ranks:       2 on the CPU (torchrun, gloo)" in out and f"{job_dir.name}: Completed" in out
    assert "data parallel: 2 ranks" in out  # the container entry started torchrun
    assert (job_dir / "model" / "model.pt").is_file()
    steps = [r["step"] for r in map(json.loads, (job_dir / "output" / "data" / "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "train"]
    assert steps == [0, 1]  # rank 0 alone records


def test_local_ranks_must_fit_the_batch(tmp_path, cli):
    code, _, err = cli("start", "--local", "--dry-run", "--runs-dir", tmp_path, "--ranks", "99")
    assert code == 2 and "dataset.batch_size: 32 is less than --ranks 99" in err


def test_without_docker_it_runs_as_a_process_and_says_why(tmp_path, monkeypatch, capsys):
    from launcher import local

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-daemon.sock")
    assert local.pick_runtime(local.AUTO, local.LOCAL_IMAGE)[0] == local.PROCESS
    why = local.pick_runtime(local.AUTO, local.LOCAL_IMAGE)[1]
    assert why.startswith("no Docker daemon answers") and why.endswith("running the trainer as a process instead")
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker command at all
    assert local.pick_runtime(local.AUTO, local.LOCAL_IMAGE) == (
        local.PROCESS, "no docker command: running the trainer as a process instead")
    with pytest.raises(UsageError, match="^--docker: no docker command$"):
        local.pick_runtime(local.DOCKER, local.LOCAL_IMAGE)
    assert local.pick_runtime(local.PROCESS, local.LOCAL_IMAGE) == (local.PROCESS, "--process")
