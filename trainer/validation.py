"""Losses and validation: CTC, the fork's composite diphone loss, greedy decoding, PER and DER.

Shared by the training loop and ``python -m trainer.evaluate``. PER is always on phonemes;
for diphone models it follows the lab fork's trainer (see :mod:`trainer.metrics`), and the
diphone error rate (DER) is reported alongside. The validation loss is the CTC loss over the
model's own classes (diphones for a diphone model), as in the fork.
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
from .config import DIPHONE_CLASSES, PHONEME_CLASSES, TrainConfig
from .metrics import PERCounter, greedy_decode, greedy_decode_diphones
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
    der: Optional[float] = None  # diphone error rate (diphone models only)
    der_day: dict[int, float] = field(default_factory=dict)


def ctc_loss(logits: torch.Tensor, labels: torch.Tensor, input_lengths, target_lengths) -> torch.Tensor:
    """Mean over the batch of the per-trial CTC loss (blank 0), as the reference."""
    log_probs = logits.float().log_softmax(2).permute(1, 0, 2)
    losses = F.ctc_loss(
        log_probs, labels, input_lengths, target_lengths, blank=0, reduction="none", zero_infinity=False
    )
    return losses.mean()


def marginal_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """[..., 1681] diphone logits -> [..., 41] phoneme log-probabilities.

    log of the summed probabilities of the 41 diphones ending in each phoneme (the fork's
    log-sum-exp over ``id % 41 == p``, then log-softmax; the two are the same numbers).
    """
    log_probs = logits.float().log_softmax(-1)
    return log_probs.unflatten(-1, (PHONEME_CLASSES, PHONEME_CLASSES)).logsumexp(-2)


def phoneme_ctc_loss(logits: torch.Tensor, labels: torch.Tensor, input_lengths, target_lengths) -> torch.Tensor:
    """CTC loss of the marginalised phoneme log-probabilities (mean over the batch)."""
    log_probs = marginal_log_probs(logits).permute(1, 0, 2)
    losses = F.ctc_loss(
        log_probs, labels, input_lengths, target_lengths, blank=0, reduction="none", zero_infinity=False
    )
    return losses.mean()


def composite_alpha(cfg: TrainConfig, step: int) -> Optional[float]:
    """The weight of the phoneme CTC at training batch ``step`` (None without the composite loss).

    The fork trainer's rule: fixed ``composite_loss_alpha``, or ``alpha_schedule_start`` plus
    ``alpha_schedule_step_size`` every ``alpha_schedule_step_interval`` batches, capped at
    ``alpha_schedule_end``.
    """
    if not cfg.use_composite_loss:
        return None
    if not cfg.use_alpha_schedule:
        return cfg.composite_loss_alpha
    stepped = cfg.alpha_schedule_start + (step // cfg.alpha_schedule_step_interval) * cfg.alpha_schedule_step_size
    return min(stepped, cfg.alpha_schedule_end)


def composite_loss(
    logits: torch.Tensor,
    input_lengths,
    diphones: torch.Tensor,
    diphone_lengths,
    phonemes: torch.Tensor,
    phoneme_lengths,
    alpha: float,
) -> torch.Tensor:
    """``alpha * CTC(marginalised phonemes) + (1 - alpha) * CTC(diphones)``.

    At alpha 0 (or 1) only the diphone (phoneme) term is computed, so an infinite loss of
    the unused term cannot turn the sum into NaN.
    """
    if alpha <= 0.0:
        return ctc_loss(logits, diphones, input_lengths, diphone_lengths)
    phoneme = phoneme_ctc_loss(logits, phonemes, input_lengths, phoneme_lengths)
    if alpha >= 1.0:
        return phoneme
    return alpha * phoneme + (1.0 - alpha) * ctc_loss(logits, diphones, input_lengths, diphone_lengths)


def phoneme_targets(batch: dict, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Phoneme targets and lengths of a batch.

    Phoneme models: ``seq_class_ids``. Diphone models: ``seq_class_ids_phoneme`` when the
    files carry it, else ``id % 41`` of the diphone targets (both first-phoneme encodings,
    ``cur`` alone and ``prev * 41 + cur``, give ``cur``), leaving out diphones whose current
    phoneme is the blank.
    """
    if n_classes == PHONEME_CLASSES:
        return batch["seq_class_ids"], batch["phone_seq_lens"]
    if "seq_class_ids_phoneme" in batch:
        return batch["seq_class_ids_phoneme"], batch["phone_seq_lens_phoneme"]
    labels, lengths = batch["seq_class_ids"], batch["phone_seq_lens"]
    current = labels % PHONEME_CLASSES
    positions = torch.arange(labels.shape[1], device=labels.device)
    keep = (positions < lengths[:, None].to(labels.device)) & (current != 0)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept ids first, in order
    new_lengths = keep.sum(1)
    targets = torch.gather(current, 1, order) * (positions < new_lengths[:, None])
    return targets, new_lengths.to(lengths.dtype)


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
    diphones = cfg.n_classes == DIPHONE_CLASSES
    der_counter = PERCounter()
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
            targets, target_lens = (t.numpy() for t in phoneme_targets(batch, cfg.n_classes))
            for i in range(logits_np.shape[0]):
                day = int(days[i])
                decoded = greedy_decode(logits_np[i], int(lengths[i]), cfg.n_classes)
                target = targets[i, : int(target_lens[i])]
                distance = counter.add(day, decoded, target)
                if diphones:
                    der_counter.add(day, greedy_decode_diphones(logits_np[i], int(lengths[i])),
                                    labels_np[i, : int(batch["phone_seq_lens"][i])])
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
    return ValResult(loss=mean_loss, per=counter.total, per_day=counter.per_day(), trials=trials, n_batches=len(losses),
                     der=der_counter.total if diphones else None, der_day=der_counter.per_day())
