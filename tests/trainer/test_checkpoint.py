"""Atomic checkpoint files, fallback to the previous one, pruning, RNG capture."""

from __future__ import annotations

import random

import numpy as np
import torch

from trainer import checkpoint as ckpt


def _state(step: int) -> dict:
    return {ckpt.FORMAT: ckpt.FORMAT_VERSION, ckpt.STEP: step, "w": torch.full((3,), float(step))}


def test_newest_readable_checkpoint_wins(tmp_path, caplog):
    for step in (2, 4, 6):
        ckpt.save_atomic(_state(step), ckpt.periodic_path(tmp_path, step))
    path, state = ckpt.load_latest(tmp_path)
    assert state[ckpt.STEP] == 6 and path.name == "checkpoint_00000006.pt"
    ckpt.periodic_path(tmp_path, 6).write_bytes(b"PK\x03\x04 truncated")  # e.g. a disk that lost the tail
    ckpt.save_atomic({"not": "ours"}, ckpt.periodic_path(tmp_path, 8))
    path, state = ckpt.load_latest(tmp_path)
    assert state[ckpt.STEP] == 4
    assert "unreadable" in caplog.text and "not a complete" in caplog.text


def test_no_checkpoint(tmp_path):
    assert ckpt.load_latest(tmp_path / "missing") is None
    assert ckpt.load_latest(tmp_path) is None


def test_prune_keeps_newest_and_removes_temp_files(tmp_path):
    for step in range(1, 6):
        ckpt.save_atomic(_state(step), ckpt.periodic_path(tmp_path, step))
    (tmp_path / "checkpoint_00000009.pt.tmp").write_bytes(b"partial")
    (tmp_path / ckpt.BEST_FILE).write_bytes(b"best")
    ckpt.prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ckpt.BEST_FILE, "checkpoint_00000004.pt", "checkpoint_00000005.pt"]


def test_rng_round_trip():
    g = torch.Generator().manual_seed(1)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    saved = ckpt.capture_rng(g)
    first = (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=g))
    ckpt.restore_rng(saved, g)
    again = (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=g))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2]) and torch.equal(first[3], again[3])
