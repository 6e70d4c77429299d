"""Exact values for the CTC loss and the phoneme error rate, on cases small enough to work by hand."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.metrics import PERCounter
from trainer.validation import ctc_loss

LN2, LN3 = math.log(2), math.log(3)


def _loss(logits, targets, frames) -> float:
    labels = torch.zeros(len(targets), max(len(t) for t in targets), dtype=torch.long)
    for i, t in enumerate(targets):
        labels[i, : len(t)] = torch.tensor(t)
    return float(ctc_loss(torch.tensor(logits, dtype=torch.float32), labels, torch.tensor(frames, dtype=torch.int32),
                          torch.tensor([len(t) for t in targets], dtype=torch.int32)))


def test_ctc_loss_of_one_trial_by_hand():
    # 2 frames, classes (blank, 1, 2); logits (0, ln 2, 0) give p = (1/4, 1/2, 1/4) in each frame.
    # Paths to "1": (1,1), (blank,1), (1,blank) -> 1/4 + 1/8 + 1/8 = 1/2, so the loss is ln 2.
    assert _loss([[[0, LN2, 0], [0, LN2, 0]]], [[1]], [2]) == pytest.approx(LN2, rel=1e-6)


def test_ctc_loss_is_the_plain_mean_of_the_trials_losses():
    # Uniform over 3 classes, 2 frames: "1" has 3 of 9 paths (loss ln 3), "1 2" one (loss 2 ln 3).
    # The batch loss is their mean, 1.5 ln 3: not their sum (3 ln 3) and not torch's "mean"
    # reduction, which divides each by its target length first (ln 3).
    uniform = [[0.0, 0.0, 0.0]] * 2
    assert _loss([uniform], [[1]], [2]) == pytest.approx(LN3, rel=1e-6)
    assert _loss([uniform], [[1, 2]], [2]) == pytest.approx(2 * LN3, rel=1e-6)
    assert _loss([uniform, uniform], [[1], [1, 2]], [2, 2]) == pytest.approx(1.5 * LN3, rel=1e-6)


def test_ctc_loss_reads_only_each_trials_own_frames():
    # the second trial has 2 valid frames of 3; its padding frame, whatever it holds, is not scored
    padded = [[0, LN2, 0], [0, LN2, 0], [50.0, -50.0, -50.0]]
    assert _loss([padded, padded], [[1], [1]], [2, 2]) == pytest.approx(LN2, rel=1e-6)


def test_per_is_micro_averaged_over_trials():
    c = PERCounter()
    c.add(0, [1, 2], [1, 2, 3, 4])  # 2 edits / 4 phonemes
    c.add(0, [7], [5])  # 1 / 1
    c.add(1, [3, 3], [3])  # 1 / 1: an insertion
    # micro: (2 + 1 + 1) / (4 + 1 + 1) = 2/3; the mean of the trials' rates would be (0.5 + 1 + 1) / 3 = 5/6
    assert c.total == pytest.approx(4 / 6)
    assert c.per_day() == {0: pytest.approx(3 / 5), 1: pytest.approx(1.0)}


def test_per_divides_by_the_target_length_only():
    c = PERCounter()
    c.add(0, [1, 2, 3, 4], [1])  # 3 insertions against a 1-phoneme target: PER 3, not 3/4
    assert c.total == pytest.approx(3.0)
    c.add(0, [], [1, 2])  # 2 deletions: (3 + 2) / (1 + 2)
    assert c.total == pytest.approx(5 / 3)
    assert math.isnan(PERCounter().total)


def test_edit_distance_cases_by_hand():
    from trainer.metrics import edit_distance

    assert edit_distance([], []) == 0
    assert edit_distance([1, 2, 3], [2, 3, 4]) == 2  # delete 1, insert 4 (three substitutions would be 3)
    assert edit_distance([2, 3, 4], [1, 2, 3]) == 2
    assert edit_distance([5], [5, 5, 5]) == 2


def test_metrics_sink_creates_its_folder_and_writes_nulls_for_non_finite(tmp_path):
    import io
    import json

    from trainer.metrics import MetricsSink

    path = tmp_path / "a" / "b" / "metrics.jsonl"
    out = io.StringIO()
    MetricsSink(path, out).emit("val", 7, {"val_loss": math.inf, "val_PER": 0.25})
    assert out.getvalue() == "METRIC step=7 val_loss=inf val_PER=0.25\n"
    record = json.loads(path.read_text())
    assert (record["kind"], record["step"], record["val_loss"], record["val_PER"]) == ("val", 7, None, 0.25)


def test_collapse_of_one_frame():
    import numpy as np

    from trainer.metrics import collapse

    assert collapse(np.array([0])).tolist() == [] and collapse(np.array([7])).tolist() == [7]
    assert collapse(np.array([], dtype=np.int64)).tolist() == []
