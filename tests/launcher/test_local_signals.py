"""`start --local` stopped by SIGTERM or Ctrl-C: the trainer is told, saves a checkpoint, and the
launcher waits for it; no trainer is left running, and the exit status names the signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LONG = [
    "--num-training-batches", "100000",
    "--set", "model.n_units=16", "--set", "model.n_layers=1",
    "--set", "batches_per_train_log=1", "--set", "batches_per_val_step=100000",
    "--set", "dataset.num_dataloader_workers=0",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from trainer.synthetic import SyntheticSpec, generate

    root = tmp_path_factory.mktemp("signals")
    generate(root / "data", SyntheticSpec(train_trials=8, val_trials=4))
    return root / "data"


def children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sigs,code", [((signal.SIGTERM,), 143), ((signal.SIGINT,), 130),
                                       ((signal.SIGINT, signal.SIGINT), 130)])
def test_signal_to_local_start_is_forwarded_and_waited_for(data, tmp_path, sigs, code):
    """A second Ctrl-C kills the trainer at once; the status is still the first signal's, whatever the timing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher", "start", "--local", "-y", "--runs-dir", str(tmp_path / "runs"),
         "--data", str(data), *LONG],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        for line in proc.stdout:
            if line.startswith("METRIC step=1 "):
                break
        else:
            pytest.fail(f"the trainer never logged a step: {proc.stderr.read()}")
        trainers = children(proc.pid)
        assert trainers, "the trainer runs as a child of the launcher"
        for sig in sigs:
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert not any(alive(pid) for pid in trainers)
    (job_dir,) = (tmp_path / "runs").iterdir()
    assert f"Stopped ({signal.Signals(sigs[0]).name})" in out
    if len(sigs) > 1:
        return
    assert "its checkpoints are in" in out
    assert "stop requested: saved" in (job_dir / "train.log").read_text()
    assert any(p.name.startswith("checkpoint_") for p in (job_dir / "checkpoints").iterdir())
