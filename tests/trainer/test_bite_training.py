"""One optimizer step: non-finite gradients stop training; with fp16's grad scaler an overflow
skips the step and halves the scale, and a normal step equals the unscaled one."""

from __future__ import annotations

import pytest
import torch

from trainer.config import load_config
from trainer.data import make_loaders
from trainer.train import RunPaths, TrainingError, setup, train_step

from tests.trainer.trainer_helpers import tiny_overrides


@pytest.fixture
def make_run(tiny_data, tmp_path):
    cfg = load_config(None, tiny_overrides(tiny_data, grad_norm_clip_value=10))
    batch = next(iter(make_loaders(cfg)[0]))

    def make(name, scale=None):
        run, _ = setup(cfg, RunPaths(tmp_path / name, tmp_path / name / "model", tmp_path / name / "ck"))
        if scale is not None:  # what setup builds for fp16 on a GPU without bf16, here on the CPU
            run.scaler = torch.amp.GradScaler("cpu", init_scale=scale)
        return run, batch

    return make


def _weights(run):
    return {k: v.detach().clone() for k, v in run.model.state_dict().items()}


def test_a_non_finite_gradient_stops_training_with_its_step(make_run):
    run, batch = make_run("nan")
    with torch.no_grad():
        run.model.out.weight[0, 0] = float("nan")
    with pytest.raises(TrainingError, match=r"^non-finite gradient at step 3 \(loss nan\)"):
        train_step(run, batch, 3)


def test_fp16_scaler_skips_an_overflowing_step_and_halves_the_scale(make_run):
    run, batch = make_run("overflow", scale=2.0**127)  # loss x 2^127 overflows to inf
    before = _weights(run)
    train_step(run, batch, 3)
    assert all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())
    assert run.scaler.get_scale() == 2.0**126


def test_fp16_scaler_step_equals_the_unscaled_step(make_run):
    plain, batch = make_run("plain")
    scaled, _ = make_run("scaled", scale=2.0**12)
    assert all(torch.equal(a, b) for a, b in zip(_weights(plain).values(), _weights(scaled).values()))
    torch.manual_seed(5)  # the same dropout masks in both
    loss_a, norm_a = train_step(plain, batch, 3)
    torch.manual_seed(5)
    loss_b, norm_b = train_step(scaled, batch, 3)
    assert float(loss_b) == pytest.approx(float(loss_a), rel=1e-6)
    assert float(norm_b) == pytest.approx(float(norm_a), rel=1e-6) and float(norm_a) > 10  # clipped: norms unscaled
    after_a, after_b = _weights(plain), _weights(scaled)
    assert any(not torch.equal(after_a[k], v) for k, v in _weights(make_run("fresh")[0]).items())
    for k in after_a:
        assert torch.allclose(after_a[k], after_b[k], rtol=1e-4, atol=1e-6), k
