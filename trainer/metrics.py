"""Greedy CTC decoding, phoneme error rate, and the metric lines the trainer prints.

Metric line format (stdout, one line per log step; the launcher builds SageMaker
MetricDefinitions from :func:`metric_definitions`)::

    METRIC step=<int> <name>=<float> [<name>=<float> ...]

- training, every ``batches_per_train_log`` batches:
  ``METRIC step=200 train_loss=1.2345 lr=0.004 lr_day=0.005 grad_norm=0.8123 sec_per_batch=0.0412``
- validation, every ``batches_per_val_step`` batches and after the last one:
  ``METRIC step=2000 val_loss=0.9876 val_PER=0.2345 best_val_PER=0.2345 val_seconds=12.5``
  (``best_val_PER``: the lowest so far, so the job's final metric is the best one;
  ``val_seconds``: the validation pass alone; ``sec_per_batch`` counts training batches only)
- diphone models (1681 classes) add ``val_DER`` to the validation line, and with
  ``use_composite_loss`` the training line carries ``alpha`` (the weight of the phoneme CTC):
  ``METRIC step=200 train_loss=… alpha=0.2 …``; their regexes come from
  ``metric_definitions(DIPHONE_METRICS)`` (not in the default set, which every run prints)
- per session (``log_individual_day_val_PER``), a different prefix so the regexes above
  never match it: ``METRIC_SESSION step=2000 session=t15.2023.08.13 val_PER=0.2100``

``step`` is the 0-based index of the training batch just completed, as in the reference's
logs. Values are printed with ``%.6g`` (so ``1e-05`` may appear); names never change.
The same records go to ``metrics.jsonl`` in the output directory.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import time
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence, TextIO

import numpy as np

from .config import PHONEME_CLASSES

log = logging.getLogger(__name__)

METRIC_PREFIX = "METRIC"
SESSION_METRIC_PREFIX = "METRIC_SESSION"
METRIC_LINE_FORMAT = "METRIC step={step} {name}={value:.6g} ..."
TRAIN_METRICS = ("train_loss", "lr", "lr_day", "grad_norm", "sec_per_batch")
VAL_METRICS = ("val_loss", "val_PER", "best_val_PER", "val_seconds")
METRIC_NAMES = TRAIN_METRICS + VAL_METRICS
DIPHONE_METRICS = ("alpha", "val_DER")  # only diphone runs print these
_NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"

BLANK = 0
PHONEMES = (
    "BLANK AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH UW V W Y Z ZH"
).split() + ["|"]


def metric_regex(name: str) -> str:
    """A regex whose first group is the value of ``name`` on a ``METRIC step=`` line."""
    if name not in METRIC_NAMES + DIPHONE_METRICS:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(METRIC_NAMES + DIPHONE_METRICS)}")
    # Unanchored: SageMaker's API reference ("MetricDefinition") says the regex "searches the
    # output of a training job", and "Defining metrics and environment variables" does not say it
    # is applied per line, so a `^` might never match; the `METRIC step=` text cannot occur in a
    # `METRIC_SESSION` line, the name must follow a space (`val_PER` never matches `x_val_PER`),
    # and nothing in it matches a newline, so applied to a block of lines it still reads one line.
    return rf"{METRIC_PREFIX} step=[0-9]+ (?:\S+ )*{name}={_NUMBER}"


def metric_definitions(names: Iterable[str] = METRIC_NAMES) -> list[dict[str, str]]:
    """SageMaker ``MetricDefinitions`` for the trainer's metric lines."""
    return [{"Name": name, "Regex": metric_regex(name)} for name in names]


def format_metric_line(step: int, values: Mapping[str, float], prefix: str = METRIC_PREFIX) -> str:
    parts = [f"{prefix} step={int(step)}"]
    for name, value in values.items():
        parts.append(f"{name}={value:.6g}" if isinstance(value, (int, float)) else f"{name}={value}")
    return " ".join(parts)


class MetricsSink:
    """Writes metric lines to stdout and records to ``<output>/metrics.jsonl`` (appended on resume)."""

    def __init__(self, jsonl_path: Optional[Path], stream: TextIO | None = None):
        self.path = jsonl_path
        self.stream = stream
        if jsonl_path is not None:
            jsonl_path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, kind: str, step: int, values: Mapping[str, float], **labels: str) -> None:
        prefix = SESSION_METRIC_PREFIX if labels else METRIC_PREFIX
        line_values = {**labels, **values}
        stream = self.stream or sys.stdout
        print(format_metric_line(step, line_values, prefix), file=stream, flush=True)
        if self.path is not None:
            record = {"kind": kind, "step": int(step), "time": round(time.time(), 3), **labels}
            record.update({k: (None if not math.isfinite(v) else float(v)) for k, v in values.items()})
            try:
                with open(self.path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as e:  # disk full, permissions: name the file (the write itself does not)
                raise OSError(e.errno, e.strerror or str(e), str(self.path)) from None


_LINE = re.compile(rf"^({METRIC_PREFIX}|{SESSION_METRIC_PREFIX}) step=([0-9]+)((?: \S+=\S+)*)\s*$")


def parse_metric_line(line: str) -> Optional[dict]:
    """The ``metrics.jsonl`` record of a printed metric line (no ``time``); None for other lines.

    The kind is told by the values: ``train_loss`` → train, ``METRIC_SESSION`` → val_session,
    else val.
    """
    m = _LINE.match(line.strip())
    if not m:
        return None
    record: dict = {"step": int(m.group(2))}
    for item in m.group(3).split():
        name, _, value = item.partition("=")
        try:
            record[name] = float(value)
        except ValueError:
            record[name] = value
    if m.group(1) == SESSION_METRIC_PREFIX:
        kind = "val_session"
    else:
        kind = "train" if "train_loss" in record else "val"
    return {"kind": kind, **record}


def read_metrics(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file, in the order written."""
    records = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(f"{path}:{n}: not a JSON line") from None
    return records


# ---------------------------------------------------------------------------------------
# Decoding and PER
#
# Phoneme models (41 classes): greedy CTC over the 41 logits (argmax per frame, merge
# repeats, drop blanks), against ``seq_class_ids``.
#
# Diphone models (1681 classes, id = prev * 41 + cur; the first phoneme of a sentence is
# stored as ``cur`` alone in the lab fork's files, i.e. prev = 0, or as ``40 * 41 + cur`` in
# older synthetic files): PER as the fork's trainer computes it. Per frame the softmax
# probabilities of the 41 diphones ending in each phoneme are summed, greedy CTC runs over
# those 41 marginal probabilities, and the result is compared with the phoneme targets
# (``seq_class_ids_phoneme`` when the file has them, else ``id % 41`` of the diphone
# targets, which reads both first-phoneme encodings). DER is greedy CTC over the 1681
# logits against the diphone targets as stored.


def to_phonemes(ids: Sequence[int] | np.ndarray, n_classes: int) -> np.ndarray:
    """Phoneme ids: diphones (``prev * 41 + cur``, or ``cur`` alone) map to ``cur``; phonemes stay."""
    ids = np.asarray(ids, dtype=np.int64)
    return ids % PHONEME_CLASSES if n_classes != PHONEME_CLASSES else ids


def collapse(ids: np.ndarray) -> np.ndarray:
    """Merge repeats, then drop blanks (CTC's many-to-one map)."""
    if ids.size == 0:
        return ids
    keep = np.ones(ids.shape[0], dtype=bool)
    keep[1:] = ids[1:] != ids[:-1]
    ids = ids[keep]
    return ids[ids != BLANK]


def marginal_phoneme_probs(logits: np.ndarray) -> np.ndarray:
    """[T, 1681] diphone logits -> [T, 41]: softmax, then the sum over the previous phoneme."""
    z = np.asarray(logits, dtype=np.float64)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return p.reshape(*p.shape[:-1], PHONEME_CLASSES, PHONEME_CLASSES).sum(axis=-2)


def greedy_decode(logits: np.ndarray, length: int, n_classes: int) -> np.ndarray:
    """Best-path decoding of one trial's [T, C] logits, as phoneme ids (see above for diphones)."""
    frames = logits[:length]
    if n_classes != PHONEME_CLASSES:
        frames = marginal_phoneme_probs(frames)
    return collapse(np.argmax(frames, axis=-1))


def greedy_decode_diphones(logits: np.ndarray, length: int) -> np.ndarray:
    """Best-path decoding over all 1681 classes, as diphone ids (for DER)."""
    return collapse(np.argmax(logits[:length], axis=-1))


def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    a, b = [int(v) for v in a], [int(v) for v in b]
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def phoneme_string(ids: Iterable[int]) -> str:
    return " ".join(PHONEMES[int(i)] for i in ids)


class PERCounter:
    """Edit distance and reference length, overall and per session (day index)."""

    def __init__(self) -> None:
        self.edits: dict[int, int] = {}
        self.lengths: dict[int, int] = {}

    def add(self, day: int, decoded: Sequence[int], target: Sequence[int]) -> int:
        distance = edit_distance(decoded, target)
        self.edits[day] = self.edits.get(day, 0) + distance
        self.lengths[day] = self.lengths.get(day, 0) + len(target)
        return distance

    @property
    def total(self) -> float:
        length = sum(self.lengths.values())
        return sum(self.edits.values()) / length if length else math.nan

    def per_day(self) -> dict[int, float]:
        return {d: self.edits[d] / self.lengths[d] if self.lengths[d] else math.nan for d in sorted(self.edits)}
