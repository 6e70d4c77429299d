"""Config checks that need the data index (``check_data``'s summary)."""

from __future__ import annotations

from .config import ConfigError, TrainConfig
from .data import DataSummary


def shortest_trial(summary: DataSummary) -> int | None:
    """The fewest time bins of any usable train or val trial, if the data has any."""
    found = [s.min_time_steps for s in summary.sessions if s.n_train + s.n_val > 0]
    return min(found) if found else None


def check_patch_fits(cfg: TrainConfig, min_time_steps: int) -> None:
    """Every trial, after the largest random cut, must give the GRU at least one patch."""
    patch = cfg.model.patch_size
    cut = max(cfg.dataset.data_transforms.random_cut - 1, 0)
    if patch > 0 and min_time_steps - cut < patch:
        after_cut = f" ({min_time_steps - cut} after a random cut of up to {cut})" if cut else ""
        raise ConfigError(
            "model.patch_size",
            f"{patch} bins is longer than the shortest trial in the data, {min_time_steps} bins{after_cut}",
        )


def check_against_data(cfg: TrainConfig, summary: DataSummary) -> None:
    shortest = shortest_trial(summary)
    if shortest is not None:
        check_patch_fits(cfg, shortest)
