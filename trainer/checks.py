"""Config checks that need the data index (``check_data``'s summary), run before training.

Each one stops a run that would fail or train to no purpose later: a trial too short for a
patch, validation that would be empty, a batch that cannot fit in memory. (A session without
training trials, which a batch could draw, is refused by ``check_data`` itself.)
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional

from .config import ConfigError, TrainConfig

if TYPE_CHECKING:  # the launcher imports this module: no torch/h5py at import time
    from .data import DataSummary

FLOAT_BYTES = 4
GRU_SAVED_PER_UNIT = 4  # three gates and the hidden state, kept for the backward pass


def shortest_trial(summary: DataSummary) -> int | None:
    """The fewest time bins of any usable train or val trial, if the data has any."""
    found = [s.min_time_steps for s in summary.sessions if s.n_train + s.n_val > 0]
    return min(found) if found else None


def check_patch_fits(cfg: TrainConfig, min_time_steps: int) -> None:
    """Every trial, after the largest random cut, must give the GRU at least one patch."""
    patch = cfg.model.patch_size
    cut = max(cfg.dataset.data_transforms.random_cut - 1, 0)
    if patch <= 0 or min_time_steps - cut >= patch:
        return
    if min_time_steps >= patch:  # the trial is long enough: the cut is what is too large
        raise ConfigError(
            "dataset.data_transforms.random_cut",
            f"{cfg.dataset.data_transforms.random_cut} may cut the shortest trial in the data "
            f"({min_time_steps} bins) below one patch of model.patch_size {patch} bins; at most "
            f"{min_time_steps - patch + 1} fits",
        )
    raise ConfigError(
        "model.patch_size", f"{patch} bins is longer than the shortest trial in the data, {min_time_steps} bins"
    )


def check_validation(cfg: TrainConfig, summary: DataSummary) -> None:
    """Validation picks the best model and drives early stopping: an empty one trains blind."""
    if not any(s.n_val > 0 and cfg.dataset.val_probability(d) > 0 for d, s in enumerate(summary.sessions)):
        raise empty_validation(cfg, summary.url)


def empty_validation(cfg: TrainConfig, url: str) -> ConfigError:
    """The error for a run whose validation would be empty (the launcher raises it from a listing)."""
    probs = cfg.dataset.dataset_probability_val
    if probs is not None and not any(probs):
        return ConfigError("dataset.dataset_probability_val", "is 0 for every session: validation would be empty "
                           "(no validation PER, no best model); give at least one session a value above 0")
    return ConfigError("dataset.sessions", f"no session with dataset_probability_val above 0 has validation trials "
                       f"(data_val.hdf5) under {url}: validation would be empty (no validation PER, no best model)")


def batch_bytes(cfg: TrainConfig, max_time_steps: int) -> int:
    """A rough lower bound of the memory one training step of the largest batch takes (float32):
    features, day layer, patches, the GRU's saved activations and the logits, twice (gradients)."""
    m, b, f = cfg.model, cfg.dataset.batch_size, cfg.dataset.n_features
    steps = max_time_steps if m.patch_size <= 0 else max(1, (max_time_steps - m.patch_size) // m.patch_stride + 1)
    width = f * max(m.patch_size, 1)
    directions = 2 if m.bidirectional else 1
    per_trial = (
        3 * max_time_steps * f
        + steps * width
        + steps * m.n_units * directions * m.n_layers * GRU_SAVED_PER_UNIT
        + 3 * steps * cfg.n_classes
    )
    return 2 * b * per_trial * FLOAT_BYTES


def check_batch_fits(cfg: TrainConfig, max_time_steps: int, memory_bytes: int, where: str,
                     trials: str = "") -> None:
    need = batch_bytes(cfg, max_time_steps)
    if need > memory_bytes:
        trials = trials or f"trials of up to {max_time_steps} bins"
        raise ConfigError(
            "dataset.batch_size",
            f"{cfg.dataset.batch_size} {trials} need at least {need / 2**30:,.1f} GiB "
            f"for one training step, more than the {memory_bytes / 2**30:,.1f} GiB of {where}",
        )


def device_memory(cfg: TrainConfig) -> tuple[int, str]:
    """(bytes, what) of the memory training will use: the GPU's, else this machine's RAM."""
    import torch

    if str(cfg.gpu_number).lower() != "cpu" and torch.cuda.is_available():
        index = int(cfg.gpu_number) if str(cfg.gpu_number).isdigit() else 0
        props = torch.cuda.get_device_properties(min(index, torch.cuda.device_count() - 1))
        return props.total_memory, f"GPU {props.name}"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's RAM"


def check_against_data(cfg: TrainConfig, summary: DataSummary, memory: Optional[tuple[int, str]] = None) -> None:
    shortest = shortest_trial(summary)
    if shortest is not None:
        check_patch_fits(cfg, shortest)
    check_validation(cfg, summary)
    longest = max((s.max_time_steps for s in summary.sessions), default=0)
    if longest > 0:
        check_batch_fits(cfg, longest, *(memory or device_memory(cfg)))
