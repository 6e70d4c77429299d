"""Everything a run reports, behind one object the training loop calls.

:class:`Monitor` takes each metric record once (:meth:`Monitor.emit`) and sends it to

- the :class:`~trainer.metrics.MetricsSink`: the ``METRIC`` lines SageMaker's MetricDefinitions
  match, and ``metrics.jsonl``;
- TensorBoard event files (``tensorboardX``, an optional extra: without it there are none);
- the progress display: on a terminal a tqdm bar (batches done/total, batches/s, ETA, last loss,
  last validation PER); elsewhere (a SageMaker job, local mode) the same as a log line every
  :data:`LOG_EVERY_S` seconds and after each validation.

At the end :meth:`Monitor.write_curves` draws ``curves.png`` from ``metrics.jsonl``. A
disabled monitor (``enabled=False``, e.g. on every rank but the first of a multi-process
run) does nothing at all.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Mapping, Optional

from .metrics import MetricsSink, read_metrics

log = logging.getLogger(__name__)

LOG_EVERY_S = 60.0
LOG_FORMAT = "{n_fmt}/{total_fmt} batches ({percentage:.0f}%), {rate_fmt}, elapsed {elapsed}, ETA {remaining}{postfix}"
# TensorBoard tags of the metric records: (kind, name) -> tag; per session: PER_session/<session>
# (and DER_session/<session> for diphone models).
TB_TAGS = {
    ("train", "train_loss"): "loss/train",
    ("train", "lr"): "lr/main",
    ("train", "lr_day"): "lr/day",
    ("train", "grad_norm"): "train/grad_norm",
    ("train", "sec_per_batch"): "time/sec_per_batch",
    ("train", "alpha"): "train/alpha",
    ("val", "val_loss"): "loss/val",
    ("val", "val_PER"): "PER/val",
    ("val", "val_DER"): "DER/val",
    ("val", "best_val_PER"): "PER/best_val",
    ("val", "val_seconds"): "time/val_seconds",
}


class _Discard:
    """A file that drops what tqdm writes: in log mode tqdm only keeps the counts and the clock."""

    def write(self, _text: str) -> None:
        pass

    def flush(self) -> None:
        pass


def open_tensorboard(logdir: Path):
    """A tensorboardX ``SummaryWriter`` on ``logdir``, or None when the extra is not installed."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        log.info("tensorboardX is not installed: no TensorBoard event files (pip install 'b2t-sagemaker[tensorboard]')")
        return None
    logdir.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(logdir=str(logdir), flush_secs=30)


class Monitor:
    def __init__(
        self,
        sink: MetricsSink,
        *,
        total: int,
        tensorboard_dir: Optional[Path] = None,
        interactive: Optional[bool] = None,
        enabled: bool = True,
    ):
        self.sink = sink
        self.total = total
        self.tensorboard_dir = tensorboard_dir
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.enabled = enabled
        self._bar = None
        self._postfix: dict[str, str] = {}
        self._writer = None
        self._redirect = None  # on a terminal, log records go through tqdm.write (the bar stays whole)
        self._last_log = 0.0
        self._logged_n = -1

    # -- the loop's calls ------------------------------------------------------------

    def start(self, step: int) -> None:
        """Training starts (or resumes) at batch ``step``."""
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.tensorboard_dir is not None and self._writer is None:
            self._writer = open_tensorboard(self.tensorboard_dir)
        self._bar = tqdm(total=self.total, initial=step, unit="batch", smoothing=0.1, dynamic_ncols=True,
                         file=sys.stderr if self.interactive else _Discard(), mininterval=0.5)
        if self.interactive:
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()
        self._last_log = time.monotonic()

    def emit(self, kind: str, step: int, values: Mapping[str, float], **labels: str) -> None:
        """One metric record: METRIC line + metrics.jsonl, TensorBoard, progress postfix."""
        if not self.enabled:
            return
        if self._bar is not None and self.interactive:
            with self._bar.external_write_mode():
                self.sink.emit(kind, step, values, **labels)
        else:
            self.sink.emit(kind, step, values, **labels)
        self._to_tensorboard(kind, step, values, labels.get("session"))
        if self._bar is not None and kind in ("train", "val"):
            name, key = ("train_loss", "loss") if kind == "train" else ("val_PER", "val_PER")
            if name in values:
                self._postfix[key] = f"{values[name]:.4g}"
                self._bar.set_postfix(self._postfix, refresh=False)
            if kind == "val" and not self.interactive:
                self._log_progress()

    def batch_done(self, step: int) -> None:
        """Batch ``step - 1`` finished (``step`` batches are done)."""
        if not self.enabled or self._bar is None:
            return
        self._bar.update(step - self._bar.n)
        if not self.interactive and time.monotonic() - self._last_log >= LOG_EVERY_S:
            self._log_progress()

    def progress_line(self) -> str:
        """What the periodic log line says, from tqdm's own counts, rate and ETA."""
        if self._bar is None:
            return ""
        text = self._bar.format_meter(**{**self._bar.format_dict, "bar_format": LOG_FORMAT})
        return " ".join(text.split())  # tqdm pads the rate to a fixed width

    def write_curves(self, path: Path) -> Optional[Path]:
        """``curves.png`` from the whole ``metrics.jsonl`` (earlier attempts of a resumed run too)."""
        if not self.enabled or self.sink.path is None or not self.sink.path.exists():
            return None
        from .curves import PlotUnavailable, plot_runs

        try:
            # the legend names the job (SageMaker sets TRAINING_JOB_NAME), else the output folder
            label = os.environ.get("TRAINING_JOB_NAME") or self.sink.path.parent.name or "run"
            plot_runs([(label, read_metrics(self.sink.path))], path)
        except PlotUnavailable as e:
            log.info("no %s: %s", path.name, e)
            return None
        log.info("learning curves: %s", path)
        return path

    def close(self) -> None:
        if self._bar is not None:
            if not self.interactive and self._bar.n != self._logged_n:
                self._log_progress()
            self._bar.close()
            self._bar = None
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # -- inside ------------------------------------------------------------------------

    def _log_progress(self) -> None:
        log.info("progress: %s", self.progress_line())
        self._last_log, self._logged_n = time.monotonic(), self._bar.n

    def _to_tensorboard(self, kind: str, step: int, values: Mapping[str, float], session: Optional[str]) -> None:
        if self._writer is None:
            return
        for name, value in values.items():
            tag = f"{name.removeprefix('val_')}_session/{session}" if session else TB_TAGS.get((kind, name))
            if tag and isinstance(value, (int, float)) and math.isfinite(value):
                self._writer.add_scalar(tag, float(value), int(step))
