"""Validation and evaluation: CTC loss, greedy decoding and PER over a loader.

Shared by the training loop and ``python -m trainer.evaluate``. PER is always on
phonemes: diphone outputs and targets map to ``id % 41`` before comparison.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .augment import transform
from .config import TrainConfig
from .metrics import PERCounter, greedy_decode, to_phonemes
from .model import output_lengths

log = logging.getLogger(__name__)


@dataclass
class TrialResult:
    day: int
    block: int
    trial: int
    decoded: np.ndarray
    target: np.ndarray
    edit_distance: int
    transcription: str
    logits: Optional[np.ndarray] = None


@dataclass
class ValResult:
    loss: float
    per: float
    per_day: dict[int, float]
    trials: list[TrialResult] = field(default_factory=list)
    n_batches: int = 0


def ctc_loss(logits: torch.Tensor, labels: torch.Tensor, input_lengths, target_lengths) -> torch.Tensor:
    """Mean over the batch of the per-trial CTC loss (blank 0), as the reference."""
    log_probs = logits.float().log_softmax(2).permute(1, 0, 2)
    losses = F.ctc_loss(
        log_probs, labels, input_lengths, target_lengths, blank=0, reduction="none", zero_infinity=False
    )
    return losses.mean()


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _text(codes) -> str:
    codes = np.asarray(codes)
    end = np.flatnonzero(codes == 0)
    codes = codes[: end[0]] if end.size else codes
    return "".join(chr(int(c)) for c in codes)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: Iterable[dict],
    cfg: TrainConfig,
    device: torch.device,
    *,
    amp_dtype: Optional[torch.dtype] = None,
    keep_trials: bool = False,
    keep_logits: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
) -> Optional[ValResult]:
    """Loss and PER over every batch (each from one session). None if stopped midway.

    Sessions whose ``dataset_probability_val`` is 0 are skipped, as in the reference.
    The caller's RNG streams are left untouched (validation draws no random numbers
    that training would see).
    """
    was_training = model.training
    model.eval()
    counter = PERCounter()
    losses: list[float] = []
    trials: list[TrialResult] = []
    patch = cfg.model.patch_size, cfg.model.patch_stride
    try:
        for batch in batches:
            if should_stop():
                return None
            days = batch["day_indicies"]
            if cfg.dataset.val_probability(int(days[0])) == 0:
                continue
            features = batch["input_features"].to(device)
            labels = batch["seq_class_ids"].to(device)
            n_steps = batch["n_time_steps"].to(device)
            label_lens = batch["phone_seq_lens"].to(device)
            with autocast(device, amp_dtype):
                features, n_steps = transform(features, n_steps, cfg.dataset.data_transforms, train=False)
                lengths = output_lengths(n_steps, *patch)
                logits = model(features, days.to(device))
                loss = ctc_loss(logits, labels, lengths, label_lens)
            losses.append(float(loss))
            logits_np = logits.float().cpu().numpy()
            labels_np = batch["seq_class_ids"].numpy()
            for i in range(logits_np.shape[0]):
                day = int(days[i])
                decoded = greedy_decode(logits_np[i], int(lengths[i]), cfg.n_classes)
                target = to_phonemes(labels_np[i, : int(batch["phone_seq_lens"][i])], cfg.n_classes)
                distance = counter.add(day, decoded, target)
                if keep_trials:
                    trials.append(
                        TrialResult(
                            day=day,
                            block=int(batch["block_nums"][i]),
                            trial=int(batch["trial_nums"][i]),
                            decoded=decoded,
                            target=target,
                            edit_distance=distance,
                            transcription=_text(batch["transcriptions"][i]),
                            logits=logits_np[i, : int(lengths[i])] if keep_logits else None,
                        )
                    )
    finally:
        model.train(was_training)
    mean_loss = float(np.mean(losses)) if losses else math.nan
    return ValResult(loss=mean_loss, per=counter.total, per_day=counter.per_day(), trials=trials, n_batches=len(losses))
