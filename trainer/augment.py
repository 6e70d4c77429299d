"""The reference's data augmentations and Gaussian smoothing, run on the training device.

All randomness comes from one ``torch.Generator`` on the training device (not numpy's
global state, as in the reference), so a checkpoint can save and restore it and a resumed
run draws exactly the same noise.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from .config import DataTransformsConfig

# scipy.ndimage.gaussian_filter1d's default truncation, in standard deviations.
_TRUNCATE = 4.0
# The reference keeps the kernel taps above this value, then renormalises.
_MIN_TAP = 0.01


@functools.lru_cache(maxsize=16)
def gauss_kernel(std: float, size: int) -> np.ndarray:
    """The reference smoothing kernel.

    The reference filters a length-``size`` impulse with ``gaussian_filter1d`` (reflect
    boundary), keeps taps > 0.01 and renormalises; this computes the same taps without scipy.
    """
    radius = int(_TRUNCATE * std + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / std) ** 2)
    weights /= weights.sum()
    centre = size // 2
    response = np.zeros(size, dtype=np.float64)
    for i in range(size):
        for offset, w in zip(offsets, weights):
            if _reflect(i + offset, size) == centre:
                response[i] += w
    response = response.astype(np.float32)
    taps = response[response > _MIN_TAP]
    return taps / np.sum(taps)


def _reflect(index: int, size: int) -> int:
    """scipy's 'reflect' mode (d c b a | a b c d | d c b a)."""
    period = 2 * size
    index %= period
    return index if index < size else period - 1 - index


def gauss_smooth(features: torch.Tensor, std: float, size: int, padding: str = "same") -> torch.Tensor:
    """Smooth [B, T, C] along time with the reference kernel (depthwise conv1d)."""
    kernel = torch.as_tensor(gauss_kernel(float(std), int(size)), device=features.device, dtype=features.dtype)
    channels = features.shape[-1]
    weight = kernel.view(1, 1, -1).repeat(channels, 1, 1)
    smoothed = F.conv1d(features.transpose(1, 2), weight, padding=padding, groups=channels)
    return smoothed.transpose(1, 2)


def augment(
    features: torch.Tensor,
    n_time_steps: torch.Tensor,
    t: DataTransformsConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-time noise, in the reference's order: static gain, white noise, constant
    offset, random walk, random cut of the first bins."""
    batch, _, channels = features.shape
    device = features.device

    def randn(*shape):
        return torch.randn(shape, generator=generator, device=device, dtype=features.dtype)

    if t.static_gain_std > 0:
        warp = torch.eye(channels, device=device, dtype=features.dtype).expand(batch, channels, channels)
        features = torch.matmul(features, warp + randn(batch, channels, channels) * t.static_gain_std)
    if t.white_noise_std > 0:
        features = features + randn(*features.shape) * t.white_noise_std
    if t.constant_offset_std > 0:
        features = features + randn(batch, 1, channels) * t.constant_offset_std
    if t.random_walk_std > 0:
        features = features + torch.cumsum(randn(*features.shape) * t.random_walk_std, dim=t.random_walk_axis)
    if t.random_cut > 0:
        cut = int(torch.randint(0, t.random_cut, (1,), generator=generator, device=device).item())
        features = features[:, cut:, :]
        n_time_steps = n_time_steps - cut
    return features, n_time_steps


def transform(
    features: torch.Tensor,
    n_time_steps: torch.Tensor,
    t: DataTransformsConfig,
    *,
    train: bool,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment (training only) then smooth (always), as the reference's ``transform_data``."""
    if train:
        if generator is None:
            raise ValueError("training augmentation needs a generator")
        features, n_time_steps = augment(features, n_time_steps, t, generator)
    if t.smooth_data:
        features = gauss_smooth(features, t.smooth_kernel_std, t.smooth_kernel_size)
    return features, n_time_steps


def kernel_length(t: DataTransformsConfig) -> int:
    return len(gauss_kernel(float(t.smooth_kernel_std), int(t.smooth_kernel_size))) if t.smooth_data else 1


__all__ = ["augment", "gauss_kernel", "gauss_smooth", "kernel_length", "transform"]
