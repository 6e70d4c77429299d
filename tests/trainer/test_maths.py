"""LR schedule, augmentations and smoothing, decoding and PER."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from trainer.augment import augment, gauss_kernel, gauss_smooth, transform
from trainer.config import REFERENCE_CONFIG, load_config
from trainer.metrics import (
    METRIC_NAMES,
    MetricsSink,
    PERCounter,
    collapse,
    edit_distance,
    greedy_decode,
    metric_definitions,
    parse_metric_line,
    to_phonemes,
)
from trainer.schedule import cosine_factor, learning_rates, linear_factor


def test_cosine_schedule_shape():
    cfg = load_config(REFERENCE_CONFIG)  # warmup 1000, decay 120000, lr 0.005 -> 0.0001
    assert learning_rates(cfg, 0) == (0.0, 0.0)
    assert learning_rates(cfg, 500)[0] == pytest.approx(0.0025)
    assert learning_rates(cfg, 1000)[0] == pytest.approx(0.005)
    mid = (1000 + 120000) // 2
    assert learning_rates(cfg, mid)[0] == pytest.approx(0.0001 + (0.005 - 0.0001) * 0.5, rel=1e-4)
    assert learning_rates(cfg, 120000)[0] == pytest.approx(0.0001)
    assert learning_rates(cfg, 10**6)[1] == pytest.approx(0.0001)
    steps = [cosine_factor(s, min_ratio=0.1, warmup_steps=10, decay_steps=100) for s in range(150)]
    assert all(b <= a for a, b in zip(steps[10:], steps[11:]))


def test_linear_schedule_matches_torch_linear_lr():
    cfg = load_config(REFERENCE_CONFIG, ["lr_scheduler_type=linear", "lr_decay_steps=50"])
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr_max)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=cfg.lr_min / cfg.lr_max,
                                              total_iters=cfg.lr_decay_steps)
    for step in range(80):
        assert learning_rates(cfg, step)[0] == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        opt.step()
        sched.step()
    assert linear_factor(10**6, min_ratio=0.2, decay_steps=5) == pytest.approx(0.2)


def test_smoothing_kernel_matches_scipy():
    import scipy.ndimage as scipy_ndimage  # in the dev extra: missing, this fails instead of skipping
    for std, size in [(2.0, 100), (2.0, 20), (1.0, 5), (3.0, 10)]:
        impulse = np.zeros(size, dtype=np.float32)
        impulse[size // 2] = 1
        k = scipy_ndimage.gaussian_filter1d(impulse, std)
        k = k[k > 0.01]
        np.testing.assert_allclose(gauss_kernel(std, size), k / k.sum(), rtol=1e-6)


def test_smoothing_keeps_shape_and_constant():
    x = torch.ones(2, 30, 3)
    y = gauss_smooth(x, 2.0, 100)
    assert y.shape == x.shape
    assert torch.allclose(y[:, 10:20], torch.ones(2, 10, 3))


def test_augmentation_is_reproducible_from_generator_state():
    cfg = load_config(REFERENCE_CONFIG, ["dataset.data_transforms.static_gain_std=0.1",
                                         "dataset.data_transforms.random_walk_std=0.1",
                                         "dataset.data_transforms.random_cut=5"]).dataset.data_transforms
    x = torch.randn(3, 40, 8)
    n = torch.tensor([40, 30, 20])
    g = torch.Generator().manual_seed(3)
    saved = g.get_state()
    a, na = augment(x.clone(), n, cfg, g)
    g.set_state(saved)
    b, nb = augment(x.clone(), n, cfg, g)
    assert torch.equal(a, b) and torch.equal(na, nb)
    assert a.shape[1] == 40 - int(40 - na[0])
    torch.manual_seed(0)
    c, _ = transform(x.clone(), n, cfg, train=False)  # validation: smoothing only, deterministic
    assert torch.equal(c, gauss_smooth(x, cfg.smooth_kernel_std, cfg.smooth_kernel_size))


def test_decode_collapses_repeats_then_blanks():
    logits = np.full((8, 41), -5.0)
    for t, c in enumerate([0, 5, 5, 0, 5, 7, 7, 0]):
        logits[t, c] = 5
    assert greedy_decode(logits, 8, 41).tolist() == [5, 5, 7]
    assert greedy_decode(logits, 3, 41).tolist() == [5]


def test_diphones_map_to_phonemes():
    assert to_phonemes([40 * 41 + 3, 3 * 41 + 3, 3 * 41 + 9], 1681).tolist() == [3, 3, 9]
    logits = np.full((4, 1681), -5.0)
    for t, c in enumerate([40 * 41 + 3, 3 * 41 + 9, 0, 9 * 41 + 40]):
        logits[t, c] = 5
    assert greedy_decode(logits, 4, 1681).tolist() == [3, 9, 40]
    assert collapse(np.array([0, 0, 2, 2, 0, 2])).tolist() == [2, 2]


def test_edit_distance_and_per():
    assert edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert edit_distance([1, 3], [1, 2, 3]) == 1
    assert edit_distance([], [4, 5]) == 2
    assert edit_distance([1, 2, 3, 4], [2, 1, 3]) == 3
    c = PERCounter()
    c.add(0, [1, 2], [1, 2, 3, 4])
    c.add(1, [4], [1, 9])
    assert c.total == pytest.approx(4 / 6)  # micro: the days' rates 0.5 and 1.0 would average 0.75
    assert c.per_day() == {0: 0.5, 1: 1.0}


def test_metric_lines_match_definitions(tmp_path, capsys):
    sink = MetricsSink(tmp_path / "metrics.jsonl")
    sink.emit("train", 200, {"train_loss": 1.23456789, "lr": 4e-05, "lr_day": 0.005, "grad_norm": 12.5,
                             "sec_per_batch": 0.25})
    sink.emit("val", 2000, {"val_loss": 0.5, "val_PER": 0.125, "best_val_PER": 0.1, "val_seconds": 3.5})
    sink.emit("val_session", 2000, {"val_PER": 0.9}, session="t15.2023.08.13")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "METRIC step=200 train_loss=1.23457 lr=4e-05 lr_day=0.005 grad_norm=12.5 sec_per_batch=0.25"
    found = {}
    for d in metric_definitions():
        for line in out:
            m = re.search(d["Regex"], line)
            if m:
                found.setdefault(d["Name"], []).append(float(m.group(1)))
    assert found == {"train_loss": [1.23457], "lr": [4e-05], "lr_day": [0.005], "grad_norm": [12.5],
                     "sec_per_batch": [0.25], "val_loss": [0.5], "val_PER": [0.125], "best_val_PER": [0.1],
                     "val_seconds": [3.5]}
    assert set(found) == set(METRIC_NAMES)
    records = [__import__("json").loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["train", "val", "val_session"]
    assert records[2]["session"] == "t15.2023.08.13" and records[1]["val_PER"] == 0.125
    assert not math.isnan(records[0]["lr"])
    # a printed line parses back into its record (what `status` and `plot` read from a job's log)
    parsed = [parse_metric_line(line) for line in out]
    assert parsed[0]["kind"] == "train" and parsed[0]["train_loss"] == 1.23457 and parsed[0]["step"] == 200
    assert parsed[1] == {"kind": "val", "step": 2000, "val_loss": 0.5, "val_PER": 0.125, "best_val_PER": 0.1,
                         "val_seconds": 3.5}
    assert parsed[2] == {"kind": "val_session", "step": 2000, "session": "t15.2023.08.13", "val_PER": 0.9}
    assert parse_metric_line("2026-12-01 INFO trainer: METRIC step=1") is None
