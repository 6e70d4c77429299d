"""The training image, run exactly as SageMaker runs it (reusable fixtures for the container suite).

- ``image``: the project's Dockerfile built once per session (on a stand-in base built once per
  machine, see ``images.py``; ``B2T_BASE_IMAGE`` names a real base instead). Without a Docker
  daemon the suite is skipped with the reason, except where ``B2T_REQUIRE_DOCKER=1`` (set by
  ``.ci/run``) turns that into a failure.
- ``make_job(data, ...)``: an ``/opt/ml`` tree laid out by the launcher's own functions from the
  launcher's own request (``launch.plan`` → ``local.prepare_job``: data and config uploaded to the
  module's moto server, config channel fetched, ``hyperparameters.json``, ``resourceconfig.json``,
  ``inputdataconfig.json``, ``checkpointconfig.json``), and the environment a job gets.
- ``docker_run(job, ...)`` / ``docker_start(job, ...)``: ``docker run IMAGE train`` as
  ``start --local`` runs it (``local.docker_run_command``): the tree at /opt/ml, host networking,
  Docker's default 64 MB /dev/shm.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from tests.container import images

REQUIRE_ENV = "B2T_REQUIRE_DOCKER"
BASE_ENV = "B2T_BASE_IMAGE"
IMAGE = "b2t-training:contract"
RUN_TIMEOUT_S = 600


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"container suite cannot run: {reason} ({REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(f"container suite: {reason}")


@pytest.fixture(scope="session")
def image() -> str:
    from launcher.local import docker_answers

    problem = docker_answers()
    if problem:
        _unavailable(problem)
    base = os.environ.get(BASE_ENV)
    if not base:
        try:
            base = images.standin_base()
        except images.NoBase as e:
            _unavailable(str(e))
    images.build_image(IMAGE, base, images.wheelhouse())
    return IMAGE


@dataclass
class Job:
    dir: Path
    name: str  # the training job's name
    request: dict
    env: dict  # what the container gets

    @property
    def failure(self) -> Optional[str]:
        path = self.dir / "output" / "failure"
        return path.read_text() if path.exists() else None


@pytest.fixture
def make_job(moto_server, tmp_path):
    """``make_job(data_dir, overrides=..., data_prefix=...)`` → a :class:`Job` ready to run."""
    from launcher import launch, local
    from launcher.stack import placeholder_outputs
    from trainer.config import DEMO_CONFIG

    def make(data: Path, *, overrides: tuple[str, ...] = (), data_prefix: str = "", config: Optional[Path] = None,
             region: str = local.LOCAL_REGION) -> Job:
        name = f"b2t-contract-{secrets.token_hex(4)}"
        opts = launch.StartOptions(config=config, overrides=tuple(overrides), job_name=name, data_prefix=data_prefix)
        loaded = launch.load(opts.config, opts.all_overrides(), default=DEMO_CONFIG)
        plan = launch.plan(opts, loaded, placeholder_outputs(region), image_tag="contract")
        job_dir = tmp_path / name
        local.prepare_job(moto_server.url, plan, data, job_dir, in_container=True)
        return Job(job_dir, name, plan.request, local.job_env(plan.request, name, moto_server.url))

    return make


def docker_command(image: str, job: Job, *, args: tuple[str, ...] = ("train",), extra: tuple[str, ...] = ()) -> list[str]:
    from launcher.local import docker_run_command

    (job.dir / "checkpoints").mkdir(exist_ok=True)
    if os.environ.get("OMP_NUM_THREADS"):  # a shared machine's test run: torch's threads spin when cores are busy
        extra = ("-e", f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}", *extra)
    return docker_run_command(image, job.dir, job.env, name=job.name, checkpoints=job.dir / "checkpoints",
                              args=args, extra=extra)


def docker_run(image: str, job: Job, **kw) -> subprocess.CompletedProcess:
    """Run the container to its end; stdout and stderr together in ``.stdout``, also kept in ``train.log``."""
    try:
        proc = subprocess.run(docker_command(image, job, **kw), env={**os.environ, **job.env}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        subprocess.run(["docker", "kill", job.name], capture_output=True)  # not left running after the test
        raise
    (job.dir / "train.log").write_text(proc.stdout)
    return proc


def docker_start(image: str, job: Job, **kw) -> subprocess.Popen:
    return subprocess.Popen(docker_command(image, job, **kw), env={**os.environ, **job.env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
