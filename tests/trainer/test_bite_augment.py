"""Each training augmentation, computed by hand from the same generator draws, in the
reference's order; the smoothing kernel for the smallest sizes against scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.augment import augment, gauss_kernel
from trainer.config import DataTransformsConfig

OFF = dict(white_noise_std=0.0, constant_offset_std=0.0, random_walk_std=0.0, static_gain_std=0.0, random_cut=0)


def _run(x, n, **on):
    cfg = DataTransformsConfig(**{**OFF, **on})
    return augment(x.clone(), n, cfg, torch.Generator().manual_seed(11))


@pytest.fixture
def x():
    return torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(1))


def _draws(*shapes):
    g = torch.Generator().manual_seed(11)
    return [torch.randn(s, generator=g) for s in shapes]


def test_each_augmentation_by_hand(x):
    n = torch.tensor([6, 5])
    (gain,) = _draws((2, 3, 3))
    assert torch.allclose(_run(x, n, static_gain_std=0.3)[0], x @ (torch.eye(3) + 0.3 * gain), atol=1e-6)
    (white,) = _draws((2, 6, 3))
    assert torch.allclose(_run(x, n, white_noise_std=0.5)[0], x + 0.5 * white, atol=1e-6)
    (offset,) = _draws((2, 1, 3))
    assert torch.allclose(_run(x, n, constant_offset_std=0.2)[0], x + 0.2 * offset, atol=1e-6)
    (walk,) = _draws((2, 6, 3))
    assert torch.allclose(_run(x, n, random_walk_std=0.1, random_walk_axis=1)[0], x + torch.cumsum(0.1 * walk, 1),
                          atol=1e-6)
    cut = int(torch.randint(0, 4, (1,), generator=torch.Generator().manual_seed(11)).item())
    y, m = _run(x, n, random_cut=4)
    assert torch.equal(y, x[:, cut:]) and torch.equal(m, n - cut)


def test_augmentations_apply_in_the_references_order(x):
    n = torch.tensor([6, 5])
    gain, white, offset = _draws((2, 3, 3), (2, 6, 3), (2, 1, 3))
    expected = x @ (torch.eye(3) + 0.3 * gain) + 0.5 * white + 0.2 * offset
    got, _ = _run(x, n, static_gain_std=0.3, white_noise_std=0.5, constant_offset_std=0.2)
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("std,size", [(2.0, 1), (2.0, 2), (1.0, 3), (0.5, 2)])
def test_smallest_smoothing_kernels_match_scipy(std, size):
    import scipy.ndimage  # the dev extra has it

    impulse = np.zeros(size, dtype=np.float32)
    impulse[size // 2] = 1
    k = scipy.ndimage.gaussian_filter1d(impulse, std)
    k = k[k > 0.01]
    np.testing.assert_allclose(gauss_kernel(std, size), k / k.sum(), rtol=1e-6)
