"""Config checks that need the data index (``check_data``'s summary)."""

from __future__ import annotations

from typing import Any

from .config import ConfigError, TrainConfig


def shortest_trial(summary: Any) -> int | None:
    """The fewest time bins of any train or val trial in a data summary, if it says."""
    for name in ("min_n_time_steps", "min_time_steps"):
        value = getattr(summary, name, None)
        if value is not None:
            return int(value)
    sessions = getattr(summary, "sessions", None)
    if sessions:
        values = sessions.values() if isinstance(sessions, dict) else sessions
        found = [getattr(s, "min_n_time_steps", None) for s in values]
        found = [int(v) for v in found if v is not None]
        return min(found) if found else None
    return None


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


def check_against_data(cfg: TrainConfig, summary: Any) -> None:
    shortest = shortest_trial(summary)
    if shortest is not None:
        check_patch_fits(cfg, shortest)
