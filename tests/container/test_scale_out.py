"""Two containers of the training image train together as SageMaker runs a two-instance job:
each with its own /opt/ml whose resourceconfig.json names algo-1 and algo-2, host networking,
the rendezvous (algo-1) on 127.0.0.1."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.container.conftest import docker_start
from tests.trainer.trainer_helpers import TINY_SPEC, tiny_overrides
from trainer.synthetic import generate

HOSTS = ("algo-1", "algo-2")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    generate(root, TINY_SPEC)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_host(job, host: str, port: int) -> None:
    """What SageMaker writes on each host of a two-instance job; the rendezvous host's name
    resolves to 127.0.0.1 here (host networking), so the job's environment says so."""
    path = job.dir / "input" / "config" / "resourceconfig.json"
    resources = json.loads(path.read_text())
    resources.update(current_host=host, hosts=list(HOSTS), network_interface_name="lo")
    resources["instance_groups"][0]["hosts"] = list(HOSTS)
    path.write_text(json.dumps(resources))
    job.env.update(B2T_MASTER_ADDR="127.0.0.1", B2T_MASTER_PORT=str(port))


def test_two_containers_train_together_and_write_one_model(image, make_job, tiny):
    overrides = tuple(tiny_overrides(tiny, num_training_batches=6, batches_per_val_step=3))
    jobs = [make_job(tiny, overrides=overrides, data_prefix="tiny") for _ in HOSTS]
    port = _free_port()
    for job, host in zip(jobs, HOSTS):
        _as_host(job, host, port)
    procs = [docker_start(image, job) for job in jobs]
    logs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + "\n----\n" + logs[1][-3000:]
    first, second = jobs
    assert "data parallel: 2 ranks" in logs[0] and "--nnodes=2 --node-rank=1" in logs[1]
    assert first.failure is None and second.failure is None
    assert {p.name for p in (first.dir / "model").iterdir()} >= {"config.yaml", "model.pt", "sessions.json"}
    assert (first.dir / "checkpoints" / "checkpoint_00000006.pt").exists()
    assert (first.dir / "output" / "data" / "metrics.jsonl").stat().st_size > 0
    # one model, one set of checkpoints and metrics: the second host writes none of them
    assert list((second.dir / "model").iterdir()) == []
    assert list((second.dir / "checkpoints").iterdir()) == []
    assert not (second.dir / "output" / "data" / "metrics.jsonl").exists()
    assert "METRIC step=" in logs[0] and "METRIC step=" not in logs[1]
