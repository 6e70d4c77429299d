"""Checkpoints: the file in place is never a half-written one; SIGTERM between saves still saves."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import torch

from trainer import checkpoint as ckpt
from trainer.environment import ROOT_ENV

from tests.trainer.trainer_helpers import set_args, tiny_overrides

REPO = Path(__file__).resolve().parents[2]


def test_the_old_checkpoint_stays_in_place_while_the_new_one_is_written(tmp_path, monkeypatch):
    path = ckpt.periodic_path(tmp_path, 4)
    ckpt.save_atomic({"step": 4, "w": torch.zeros(1000)}, path)
    old = path.read_bytes()
    seen_at_fsync = []
    real_fsync = os.fsync

    def observing_fsync(fd):  # the moment the new bytes are all written, before they are made durable
        seen_at_fsync.append(path.read_bytes() if path.exists() else None)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", observing_fsync)
    ckpt.save_atomic({"step": 4, "w": torch.ones(250_000)}, path)
    monkeypatch.undo()
    assert seen_at_fsync and seen_at_fsync[0] == old  # the new file was synced under another name
    assert torch.equal(torch.load(path, weights_only=False)["w"], torch.ones(250_000))
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp file left behind


def test_a_stale_temp_file_is_never_taken_for_a_checkpoint(tmp_path):
    ckpt.save_atomic({ckpt.FORMAT: ckpt.FORMAT_VERSION, ckpt.STEP: 2}, ckpt.periodic_path(tmp_path, 2))
    half = ckpt.periodic_path(tmp_path, 3)
    half.with_name(half.name + ".tmp").write_bytes(b"\x80\x02half a checkpoint")  # killed mid-write
    path, state = ckpt.load_latest(tmp_path)
    assert state[ckpt.STEP] == 2 and path == ckpt.periodic_path(tmp_path, 2)
    ckpt.prune(tmp_path, keep=5)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_00000002.pt"]


def test_sigterm_between_periodic_checkpoints_saves_the_step_it_stopped_at(tiny_data, tmp_path):
    # checkpoints only at validation steps (after batch 0, then after batch 1000): none would
    # exist between them unless the stop saves one
    overrides = tiny_overrides(tiny_data, num_training_batches=2000, batches_per_val_step=1000, batches_per_save=0,
                               lr_decay_steps=2000, lr_decay_steps_day=2000)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", ROOT_ENV))}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "trainer", "--output", str(out), *set_args(overrides)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    last = -1
    for line in proc.stdout:
        m = re.match(r"METRIC step=(\d+) train_loss", line)
        if m:
            last = int(m.group(1))
            if last == 4:
                proc.send_signal(signal.SIGTERM)
                break
    rest = proc.stdout.read()
    proc.stdout.close()
    assert proc.wait(timeout=120) == 143
    steps = [int(s) for s in re.findall(r"METRIC step=(\d+) train_loss", rest)]
    last = max([last, *steps])  # batches that finished after the signal was sent
    assert last < 999
    path, state = ckpt.load_latest(out / "checkpoints")
    # the loop stops before the next batch: the checkpoint holds every batch trained, no more
    assert state[ckpt.STEP] == last + 1 and path == ckpt.periodic_path(out / "checkpoints", last + 1)
    assert [s for s, _ in ckpt.periodic_checkpoints(out / "checkpoints")] == [last + 1, 1]


def test_a_checkpoint_folder_is_created_with_its_parents(tmp_path):
    path = tmp_path / "a" / "b" / "checkpoint_00000001.pt"
    ckpt.save_atomic({"step": 1}, path)
    assert torch.load(path, weights_only=False) == {"step": 1}


def test_init_weights_from_a_bare_state_dict_and_from_s3(tmp_path, moto_reset, monkeypatch):
    import io

    weights = {"out.weight": torch.ones(2, 3), "_orig_mod.h0": torch.zeros(1, 1, 3)}
    torch.save(weights, tmp_path / "bare.pt")  # no model_state_dict wrapper
    expected = {"out.weight": torch.ones(2, 3), "h0": torch.zeros(1, 1, 3)}
    got = ckpt.read_model_state(str(tmp_path / "bare.pt"))
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)

    s3 = moto_reset.client("s3")
    s3.create_bucket(Bucket="weights")
    buffer = io.BytesIO()
    torch.save({ckpt.MODEL_STATE: weights, ckpt.VAL_PER: 0.2}, buffer)
    s3.put_object(Bucket="weights", Key="ref/best_checkpoint", Body=buffer.getvalue())
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_reset.url)
    got = ckpt.read_model_state("s3://weights/ref/best_checkpoint")
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
