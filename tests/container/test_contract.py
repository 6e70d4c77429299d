"""The training image as SageMaker runs it: `docker run IMAGE train` on an /opt/ml tree laid out
from the launcher's own request, with Docker's default 64 MB /dev/shm and host networking to the
module's moto server (the job's S3)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.timeout(1800)  # the first test also builds the image (minutes on 2 cores)

from tests.container.conftest import docker_run, docker_start
from tests.trainer.trainer_helpers import TINY_SPEC, tiny_overrides
from trainer.synthetic import SyntheticSpec, generate

# ~1,300-bin trials (1,100-1,500) with all 512 features: one batch of 64 is ~190 MB.
LONG_SPEC = SyntheticSpec(n_sessions=4, train_trials=16, val_trials=4, min_words=30, max_words=34,
                          lead_bins=(60, 100), seed=3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    generate(root, TINY_SPEC)
    return root


@pytest.fixture(scope="module")
def long_trials(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("long")
    generate(root, LONG_SPEC)
    return root


def tiny_job(make_job, tiny, **extra):
    return make_job(tiny, overrides=tuple(tiny_overrides(tiny, **extra)), data_prefix="tiny")


def one_line(text: str | None) -> str:
    assert text is not None, "no /opt/ml/output/failure"
    assert text.endswith("\n") and text.count("\n") == 1 and len(text) <= 1025, text
    return text.strip()


@pytest.mark.parametrize("args,entrypoint", [
    (("train",), ()),  # SageMaker's default: `docker run IMAGE train`
    ((), ()),  # no argument
    (("-m", "trainer", "train"), ("--entrypoint", "python")),  # ContainerEntrypoint + ContainerArguments
    (("-m", "trainer"), ("--entrypoint", "python")),
])
def test_every_way_sagemaker_can_start_it(image, make_job, tiny, args, entrypoint):
    job = make_job(tiny, overrides=tuple(tiny_overrides(tiny)), data_prefix="tiny")
    hp = job.dir / "input" / "config" / "hyperparameters.json"
    hp.write_text(json.dumps({**json.loads(hp.read_text()), "dry_run": "true"}))
    proc = docker_run(image, job, args=args, extra=entrypoint)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "dry run: config and data OK (36 train, 12 validation trials)" in proc.stdout


def test_a_bad_hyperparameter_exits_2_with_one_line(image, make_job, tiny):
    job = tiny_job(make_job, tiny)
    hp = job.dir / "input" / "config" / "hyperparameters.json"
    hp.write_text(json.dumps({**json.loads(hp.read_text()), "dataset.batch_size": "-1"}))
    proc = docker_run(image, job)
    assert proc.returncode == 2
    assert one_line(job.failure).startswith("config error: dataset.batch_size: ")
    assert "Traceback" not in proc.stdout


def test_bad_data_exits_3_with_one_line(image, make_job, tiny, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny, bad)
    victim = sorted(bad.glob("*/data_train.hdf5"))[1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])  # an upload cut short
    job = make_job(bad, overrides=tuple(tiny_overrides(bad)), data_prefix="bad")
    proc = docker_run(image, job)
    assert proc.returncode == 3, proc.stdout[-3000:]
    line = one_line(job.failure)
    assert line.startswith("data error: s3://") and victim.parent.name in line


def test_an_unexpected_error_leaves_one_line_and_the_traceback_in_the_log(image, make_job, tiny):
    job = tiny_job(make_job, tiny)
    crash = ("import sys, trainer.train as t\n"
             "def boom(*a, **k):\n    raise ZeroDivisionError('injected\\nover two lines')\n"
             "t.train = boom\nfrom trainer.__main__ import main\nsys.exit(main(['train']))\n")
    proc = docker_run(image, job, args=("-c", crash), extra=("--entrypoint", "python"))
    assert proc.returncode == 1
    assert one_line(job.failure) == "internal error: ZeroDivisionError: injected; over two lines"
    assert "Traceback (most recent call last)" in proc.stdout


def test_a_bad_invocation_leaves_one_line(image, make_job, tiny):
    job = tiny_job(make_job, tiny)
    proc = docker_run(image, job, args=("trian",))
    assert proc.returncode == 2
    assert one_line(job.failure) == "bad invocation: unrecognized arguments: trian"


def test_docker_stop_saves_a_checkpoint_and_a_rerun_resumes_bit_identical(image, make_job, tiny):
    n = 300  # long enough that the stop lands mid-run
    extra = dict(num_training_batches=n, lr_decay_steps=n, lr_decay_steps_day=n, batches_per_save=1000,
                 batches_per_val_step=1000, save_final_model="true")
    straight, stopped = tiny_job(make_job, tiny, **extra), tiny_job(make_job, tiny, **extra)
    assert docker_run(image, straight).returncode == 0

    proc = docker_start(image, stopped)
    seen = []
    for line in proc.stdout:  # stop it mid-run, as SageMaker would (SIGTERM, 120 s grace)
        seen.append(line)
        if line.startswith("METRIC step=5 "):
            subprocess.run(["docker", "stop", "--time", "120", stopped.name], check=True, capture_output=True)
    assert proc.wait(timeout=180) == 143, "".join(seen[-30:])
    saved = list((stopped.dir / "checkpoints").glob("*.pt"))
    assert saved and stopped.failure is None

    rerun = docker_run(image, stopped)  # same /opt/ml: as a spot restart with the checkpoints restored
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert re.search(r"resum", rerun.stdout, re.I)
    a = torch.load(straight.dir / "model" / "final_model.pt", weights_only=False)
    b = torch.load(stopped.dir / "model" / "final_model.pt", weights_only=False)
    state_a, state_b = a.get("model_state_dict", a), b.get("model_state_dict", b)
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_full_size_batches_of_long_trials_with_dockers_64mb_shm(image, make_job, long_trials):
    job = make_job(long_trials, data_prefix="long", overrides=(
        "num_training_batches=3", "batches_per_val_step=2", "batches_per_train_log=1",
        "dataset.batch_size=64", "dataset.days_per_batch=4", "dataset.num_dataloader_workers=2",
        "model.n_units=16", "model.n_layers=1", "gpu_number=cpu"))
    started = time.monotonic()
    proc = docker_run(image, job)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "shm" not in (job.failure or "")
    size = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "df", image, "-B1",
                           "--output=size", "/dev/shm"], capture_output=True, text=True).stdout.split()[-1]
    assert int(size) == 64 * 2**20  # Docker's default: nothing raised it
    # a full batch is larger than /dev/shm: it goes by memfd (only batches within their share of
    # the 64 MB would go through /dev/shm)
    m = re.search(r"batches travel by (memfd|shared-memory or memfd) \(2 workers; a batch up to (\d+) MB([^)]*)\)",
                  proc.stdout)
    assert m and int(m.group(2)) > 64, proc.stdout[-3000:]
    share = re.search(r"batches up to (\d+) MB by /dev/shm", m.group(3))
    assert (share is None) == (m.group(1) == "memfd") and int(share.group(1) if share else 0) < 64
    assert "METRIC step=2 " in proc.stdout and time.monotonic() - started < 600


def test_start_local_trains_the_demo_config_in_the_image(image, tmp_path, capsys):
    """`python -m launcher start --local -y` where Docker answers: the launcher's request laid out as
    /opt/ml, `docker run IMAGE train`, the demo config trained, its outputs and metrics."""
    from launcher.cli import main

    code = main(["start", "--local", "-y", "--image", image, "--runs-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert f"runs in:     the image {image} (docker) - Docker answers" in out
    (job_dir,) = [p for p in tmp_path.iterdir() if p.name.startswith("b2t-demo-")]
    request = json.loads((job_dir / "request.json").read_text())
    config = job_dir / "input" / "config"
    hp = json.loads((config / "hyperparameters.json").read_text())
    assert hp == request["HyperParameters"] and all(isinstance(v, str) for v in hp.values())
    assert json.loads((config / "resourceconfig.json").read_text())["hosts"] == ["algo-1"]
    assert json.loads((config / "checkpointconfig.json").read_text())["LocalPath"] == "/opt/ml/checkpoints"
    assert (job_dir / "input" / "data" / "config" / "demo.yaml").is_file()
    assert not (job_dir / "output" / "failure").exists() and f"{job_dir.name}: Completed" in out
    assert {"config.yaml", "model.pt", "sessions.json"} <= {p.name for p in (job_dir / "model").iterdir()}
    assert (job_dir / "output" / "data" / "metrics.jsonl").stat().st_size > 0
    assert any((job_dir / "checkpoints").glob("*.pt"))  # copied out of the container after the run
    # the request's MetricDefinitions match what the container printed, each one
    lines = (job_dir / "train.log").read_text().splitlines()
    for d in request["AlgorithmSpecification"]["MetricDefinitions"]:
        assert any(re.search(d["Regex"], line) for line in lines), d["Name"]
    assert any("S3 region us-east-1" in line for line in lines)  # from the request's Environment
    per = float(re.findall(r"best val PER (\S+),", "\n".join(lines))[-1])
    assert per < 0.5
