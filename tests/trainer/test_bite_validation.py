"""evaluate() over a batch written by hand, from a model whose logits are fixed: loss, PER,
decoded phonemes and transcription all known in advance."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainer.config import REFERENCE_CONFIG, load_config
from trainer.validation import autocast, ctc_loss, evaluate

LN2 = math.log(2)


class FixedLogits(nn.Module):
    """Ignores its input; 2 output frames per trial (18 bins through 14-bin patches, stride 4)."""

    def forward(self, x, days):
        a = [[0.0, LN2, 0.0], [0.0, LN2, 0.0]]  # "1" with probability 1/2: loss ln 2; decodes as [1]
        b = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]  # uniform: "1 2" has 1 of 9 paths, loss 2 ln 3; decodes as []
        full = torch.full((2, 2, 41), -1e4)
        full[:, :, :3] = torch.tensor([a, b])
        return full


def _batch():
    text = torch.zeros(2, 8, dtype=torch.int32)
    text[0, :2] = torch.tensor([ord("h"), ord("i")])
    text[1, :3] = torch.tensor([ord("y"), ord("o"), ord("u")])
    return {
        "input_features": torch.zeros(2, 18, 512), "seq_class_ids": torch.tensor([[1, 0], [1, 2]]),
        "n_time_steps": torch.tensor([18, 18]), "phone_seq_lens": torch.tensor([1, 2]),
        "day_indicies": torch.tensor([1, 1]), "block_nums": torch.tensor([3, 3]), "trial_nums": torch.tensor([0, 4]),
        "transcriptions": text,
    }


def test_evaluate_by_hand():
    cfg = load_config(REFERENCE_CONFIG)  # session 0 has no validation (probability 0), session 1 has
    skipped = {**_batch(), "day_indicies": torch.tensor([0, 0])}
    result = evaluate(FixedLogits(), [skipped, _batch()], cfg, torch.device("cpu"), keep_trials=True)
    assert result.n_batches == 1
    assert result.loss == pytest.approx((LN2 + 2 * math.log(3)) / 2, rel=1e-5)
    assert result.per == pytest.approx(2 / 3) and result.per_day == {1: pytest.approx(2 / 3)}
    a, b = result.trials
    assert (a.day, a.block, a.trial, a.decoded.tolist(), a.target.tolist(), a.edit_distance, a.transcription) == (
        1, 3, 0, [1], [1], 0, "hi")
    assert (b.trial, b.decoded.tolist(), b.target.tolist(), b.edit_distance, b.transcription) == (
        4, [], [1, 2], 2, "you")
    assert a.logits is None
    assert evaluate(FixedLogits(), [_batch()], cfg, torch.device("cpu")).trials == []  # kept only when asked


def test_an_impossible_alignment_is_an_infinite_loss():
    # one frame cannot emit two phonemes: the loss is inf (zero_infinity would hide it as 0)
    loss = ctc_loss(torch.zeros(1, 1, 3), torch.tensor([[1, 2]]), torch.tensor([1]), torch.tensor([2]))
    assert math.isinf(float(loss))


def test_autocast_only_with_a_dtype():
    a = torch.randn(4, 4)
    with autocast(torch.device("cpu"), None):
        assert (a @ a).dtype == torch.float32
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
