"""The picture of a run: training loss and validation PER (overall and per session) against step.

One function draws one run or several side by side from their metric records (the records of
``metrics.jsonl``, or the same parsed from a job's ``METRIC`` log lines). The trainer writes
``curves.png`` next to the model with it; ``python -m launcher plot`` compares runs with it.
matplotlib is an optional extra (``pip install 'b2t-sagemaker[plot]'``): without it
:func:`plot_runs` raises :class:`PlotUnavailable` and the trainer skips the picture.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

WIDTH_IN, HEIGHT_IN, DPI = 12.0, 4.5, 100  # 1200 × 450 pixels
LOSS_TITLE, PER_TITLE = "training loss", "validation PER"


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _series(records: Sequence[dict], kind: str, name: str, session: Optional[str] = None) -> tuple[list, list]:
    points = {}
    for r in records:
        if r.get("kind") == kind and r.get("session") == session:
            value = r.get(name)
            if isinstance(value, (int, float)) and math.isfinite(value):
                points[int(r["step"])] = float(value)  # a resumed run repeats steps: the last value wins
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def sessions_of(records: Sequence[dict]) -> list[str]:
    return sorted({r["session"] for r in records if r.get("kind") == "val_session" and r.get("session")})


def plot_runs(runs: Sequence[tuple[str, Sequence[dict]]], path: Path, *, per_session: bool = True):
    """Write a PNG of ``runs`` (``(label, records)`` pairs) to ``path``; returns the matplotlib Figure."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotUnavailable("plotting needs matplotlib: pip install 'b2t-sagemaker[plot]'") from None

    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    loss_ax, per_ax = fig.subplots(1, 2)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for (label, records), color in zip(runs, colors):
        loss_ax.plot(*_series(records, "train", "train_loss"), color=color, label=label)
        per_ax.plot(*_series(records, "val", "val_PER"), color=color, marker="o", markersize=3, label=label)
        if per_session:
            for session in sessions_of(records):
                per_ax.plot(*_series(records, "val_session", "val_PER", session), color=color, linewidth=0.8,
                            linestyle="--", alpha=0.45)
    loss_ax.set(title=LOSS_TITLE, xlabel="step", ylabel="CTC loss")
    per_ax.set(title=PER_TITLE + (" (dashed: per session)" if per_session else ""), xlabel="step",
               ylabel="phoneme error rate")
    for ax in (loss_ax, per_ax):
        ax.grid(True, alpha=0.3)
        if runs:
            ax.legend(loc="upper right", fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return fig
