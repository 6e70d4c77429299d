"""The training loop: the reference's maths, as small functions.

``train(cfg, paths)`` sets up the model, optimizer and data, resumes from the newest
checkpoint if there is one, and runs batches ``step .. num_training_batches - 1``:
augment + smooth on the device, CTC loss on the patched lengths, AdamW with the
reference's parameter groups and per-step learning rates, gradient clipping, optional AMP
(bf16 where the GPU has it, else fp16 with a grad scaler; never on CPU). It validates
every ``batches_per_val_step`` batches and after the last one, keeps the best weights,
stops early if asked to, checkpoints at validation steps and every ``batches_per_save``
batches, and stops cleanly (checkpoint first) when ``should_stop()`` turns true.

Under torchrun it trains data-parallel (:mod:`trainer.distributed`): DDP, each rank on its
share of every global batch, rank 0 alone validating and writing; one process is the
special case of one rank.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from . import checkpoint as ckpt
from . import distributed as dist
from .augment import transform
from .config import ConfigError, TrainConfig, dump_config
from .export import export_model
from .metrics import MetricsSink
from .monitor import Monitor
from .model import GRUDecoder, count_parameters, model_for, output_lengths
from .schedule import learning_rates
from .validation import ValResult, autocast, composite_alpha, composite_loss, ctc_loss, evaluate, phoneme_targets

log = logging.getLogger(__name__)

COMPLETED, EARLY_STOPPED, INTERRUPTED = "completed", "early_stopped", "interrupted"
RANK_RNG_STATES = "rank_rng_states"  # checkpoint key: every rank's RNG states, by rank (several ranks only)


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite gradients, a checkpoint that does not fit)."""


@dataclass(frozen=True)
class RunPaths:
    output_dir: Path  # metrics.jsonl, training_log, validation metrics
    model_dir: Path  # the final model
    checkpoint_dir: Path  # resumable state
    tensorboard_dir: Optional[Path] = None  # TensorBoard event files; default <output_dir>/tensorboard


@dataclass
class Progress:
    step: int = 0  # training batches completed; the next batch to train is `step`
    best_val_PER: float = math.inf
    best_val_loss: float = math.inf
    val_steps_since_improvement: int = 0
    last_val_step: int = -1
    early_stopped: bool = False


@dataclass
class Run:
    """What one training run works with; built by :func:`setup`."""

    cfg: TrainConfig
    paths: RunPaths
    device: torch.device
    model: GRUDecoder  # uncompiled: checkpoints and exports come from here
    forward: torch.nn.Module  # the model, or its torch.compile wrapper
    optimizer: torch.optim.Optimizer
    scaler: Optional[torch.amp.GradScaler]
    amp_dtype: Optional[torch.dtype]
    generator: torch.Generator  # augmentation noise, on the training device
    sink: Monitor  # every metric record goes here: METRIC lines, metrics.jsonl, TensorBoard, progress
    progress: Progress = field(default_factory=Progress)
    ranks: dist.Ranks = field(default_factory=dist.Ranks)
    train_forward: Optional[torch.nn.Module] = None  # the DDP wrapper when there are several ranks
    saved_step: int = -1  # the step of the last checkpoint this run wrote


@dataclass
class RunResult:
    status: str
    step: int
    best_val_PER: float
    model_path: Optional[Path]


# ---------------------------------------------------------------------------------------
# Setup


def seed_everything(seed: int) -> None:
    if seed == -1:  # the reference's "no seed"
        return
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def select_device(gpu_number) -> torch.device:
    if str(gpu_number).lower() == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    try:
        index = int(gpu_number)
    except ValueError:
        log.warning("gpu_number %r is not a number; using GPU 0", gpu_number)
        index = 0
    if not 0 <= index < torch.cuda.device_count():
        log.warning("GPU %d is not available (%d present); using GPU 0", index, torch.cuda.device_count())
        index = 0
    return torch.device(f"cuda:{index}")


def amp_dtype_for(device: torch.device, use_amp: bool) -> Optional[torch.dtype]:
    """bf16 where the GPU supports it, fp16 otherwise (T4, V100), nothing on CPU."""
    if not use_amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def configure_determinism(device: torch.device) -> None:
    torch.set_float32_matmul_precision("high")
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    else:  # CUDA's CTC backward has no deterministic kernel; match the reference's setting
        torch.backends.cudnn.deterministic = True


def setup_model(cfg: TrainConfig, *, init_weights: bool) -> GRUDecoder:
    model = model_for(cfg)
    if init_weights and cfg.init_from_checkpoint:
        state = ckpt.read_model_state(cfg.init_checkpoint_path)
        ckpt.load_into(model, state, cfg.init_checkpoint_path)
        log.info("initialised weights from %s", cfg.init_checkpoint_path)
    for name, param in model.named_parameters():
        if not cfg.model.rnn_trainable and "gru" in name:
            param.requires_grad_(False)
        elif not cfg.model.input_network.input_trainable and "day" in name:
            param.requires_grad_(False)
    total = count_parameters(model)
    day = sum(p.numel() for n, p in model.named_parameters() if "day" in n)
    log.info("model: %s parameters, %s day-specific (%.1f%%)", f"{total:,}", f"{day:,}", 100 * day / total)
    return model


def parameter_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """The reference's groups: no decay on GRU/head biases; day layers with their own lr and decay."""
    bias, day, other = [], [], []
    for name, param in model.named_parameters():
        if "day_" in name:
            day.append(param)
        elif "gru.bias" in name or "out.bias" in name:
            bias.append(param)
        else:
            other.append(param)
    groups = [{"params": bias, "weight_decay": 0.0, "group_type": "bias"}]
    if day:
        groups.append({"params": day, "weight_decay": cfg.weight_decay_day, "group_type": "day_layer"})
    groups.append({"params": other, "weight_decay": cfg.weight_decay, "group_type": "other"})
    return groups


def setup_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        parameter_groups(model, cfg),
        lr=cfg.lr_max,
        betas=(cfg.beta0, cfg.beta1),
        eps=cfg.epsilon,
        weight_decay=cfg.weight_decay,
        fused=device.type == "cuda",
    )


def set_learning_rates(optimizer: torch.optim.Optimizer, cfg: TrainConfig, step: int) -> tuple[float, float]:
    lr, lr_day = learning_rates(cfg, step)
    for group in optimizer.param_groups:
        group["lr"] = lr_day if group["group_type"] == "day_layer" else lr
    return lr, lr_day


def setup(cfg: TrainConfig, paths: RunPaths, start_fresh: bool = False) -> tuple[Run, Optional[dict]]:
    """Everything but the data; returns the run and the checkpoint to resume from (or None).

    Under torchrun this joins the process group; rank 0 reads the checkpoint and every rank
    resumes from that same one."""
    ranks = dist.ranks_from_env()
    device = dist.device_for(ranks, select_device(cfg.gpu_number))
    dist.start(ranks, device)
    if ranks.distributed and cfg.dataset.batch_size < ranks.world_size:
        raise ConfigError("dataset.batch_size", f"{cfg.dataset.batch_size} is less than the {ranks.world_size} "
                          "ranks: each rank needs at least one trial of every batch")
    configure_determinism(device)
    seed_everything(cfg.seed)
    latest = dist.broadcast(ckpt.load_latest(paths.checkpoint_dir, start_fresh=start_fresh) if ranks.is_main else None, ranks)
    model = setup_model(cfg, init_weights=latest is None).to(device)
    if ranks.rank > 0 and cfg.seed != -1:  # after the (identical) init: own dropout and noise streams
        seed_everything(rank_seed(cfg.seed, ranks.rank))
    optimizer = setup_optimizer(model, cfg, device)
    amp_dtype = amp_dtype_for(device, cfg.use_amp)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    generator = torch.Generator(device=device)
    generator.manual_seed(rank_seed(cfg.seed, ranks.rank) if cfg.seed != -1 else torch.seed())
    forward = torch.compile(model) if cfg.compile else model
    log.info("device %s, AMP %s, compile %s", device, amp_dtype or "off", cfg.compile)
    run = Run(
        cfg=cfg,
        paths=paths,
        device=device,
        model=model,
        forward=forward,
        optimizer=optimizer,
        scaler=scaler,
        amp_dtype=amp_dtype,
        generator=generator,
        # rank 0 alone prints and records metrics, TensorBoard and progress
        sink=Monitor(MetricsSink(paths.output_dir / "metrics.jsonl" if ranks.is_main else None),
                     total=cfg.num_training_batches, enabled=ranks.is_main,
                     tensorboard_dir=paths.tensorboard_dir or paths.output_dir / "tensorboard"),
        ranks=ranks,
    )
    if latest is not None:
        path, state = latest
        restore_training_state(run, state)
        log.info("resuming from %s at step %d", path, run.progress.step)
    if ranks.distributed:
        ddp = dist.wrap(model, device)
        run.train_forward = torch.compile(ddp) if cfg.compile else ddp
        log.info("data parallel: %d ranks, each on its share of every global batch of %d", ranks.world_size,
                 cfg.dataset.batch_size)
    return run, None if latest is None else latest[1]


def rank_seed(seed: int, rank: int) -> int:
    """Rank 0 keeps the configured seed (one process trains as before); the others get their own."""
    return seed if rank == 0 else (seed * 1_000_003 + rank) % 2**63


# ---------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(run: Run) -> Optional[Path]:
    """Every rank calls this at the same batch (their RNG states go in); rank 0 writes."""
    p = run.progress
    rng = ckpt.capture_rng(run.generator)
    per_rank = dist.gather(rng, run.ranks)
    run.saved_step = p.step  # on every rank: they decide alike whether a stop must save
    if not run.ranks.is_main:
        return None
    state = {
        ckpt.FORMAT: ckpt.FORMAT_VERSION,
        ckpt.STEP: p.step,
        ckpt.MODEL_STATE: run.model.state_dict(),
        ckpt.OPTIMIZER_STATE: run.optimizer.state_dict(),
        ckpt.SCALER_STATE: run.scaler.state_dict() if run.scaler else None,
        ckpt.PROGRESS: asdict(p),
        ckpt.VAL_PER: p.best_val_PER,
        ckpt.VAL_LOSS: p.best_val_loss,
        ckpt.RNG_STATE: rng,
        ckpt.CONFIG: dump_config(run.cfg),
        ckpt.SESSIONS: list(run.cfg.dataset.sessions),
    }
    if run.ranks.distributed:
        state[RANK_RNG_STATES] = per_rank
    path = ckpt.periodic_path(run.paths.checkpoint_dir, p.step)
    ckpt.save_atomic(state, path)
    ckpt.prune(run.paths.checkpoint_dir, run.cfg.keep_last_checkpoints)
    log.info("checkpoint %s", path)
    return path


def restore_rng(run: Run, state: dict) -> None:
    """This rank's RNG streams from the checkpoint. Resuming with another number of ranks
    keeps the weights and the batches; the noise streams of ranks > 0 then start afresh."""
    rng, ranks = state[ckpt.RNG_STATE], run.ranks
    saved = state.get(RANK_RNG_STATES) or [rng]
    if len(saved) == ranks.world_size:
        ckpt.restore_rng(saved[ranks.rank], run.generator)
    elif ranks.is_main:
        ckpt.restore_rng(rng, run.generator)
        log.warning("the checkpoint was written by %d rank(s), this run has %d: ranks > 0 draw new noise streams",
                    len(saved), ranks.world_size)


def restore_training_state(run: Run, state: dict) -> None:
    """Weights, optimizer, scaler and progress; RNG comes later (see :func:`train`)."""
    if state[ckpt.SESSIONS] != list(run.cfg.dataset.sessions):
        raise ConfigError(
            "dataset.sessions",
            f"differ from the sessions of the checkpoint in {run.paths.checkpoint_dir}; "
            "use a new output/checkpoint directory for a different session list",
        )
    try:
        run.model.load_state_dict(state[ckpt.MODEL_STATE])
        run.optimizer.load_state_dict(state[ckpt.OPTIMIZER_STATE])
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0]
        raise ckpt.CheckpointError(
            f"the checkpoint in {run.paths.checkpoint_dir} does not fit this config ({first}); "
            "use a new output/checkpoint directory for a different model"
        ) from None
    if run.scaler is not None and state.get(ckpt.SCALER_STATE):
        run.scaler.load_state_dict(state[ckpt.SCALER_STATE])
    run.progress = Progress(**state[ckpt.PROGRESS])


def save_best(run: Run, result: ValResult, step: int) -> None:
    state = {
        ckpt.MODEL_STATE: run.model.state_dict(),
        ckpt.VAL_PER: result.per,
        ckpt.VAL_LOSS: result.loss,
        ckpt.STEP: step,
    }
    ckpt.save_atomic(state, run.paths.checkpoint_dir / ckpt.BEST_FILE)


# ---------------------------------------------------------------------------------------
# Steps


def train_step(run: Run, batch: dict, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on one batch; returns (loss, grad norm) as device tensors."""
    cfg, device = run.cfg, run.device
    forward = run.train_forward or run.forward
    forward.train()
    run.optimizer.zero_grad(set_to_none=True)
    set_learning_rates(run.optimizer, cfg, step)
    features = batch["input_features"].to(device, non_blocking=True)
    labels = batch["seq_class_ids"].to(device, non_blocking=True)
    n_steps = batch["n_time_steps"].to(device, non_blocking=True)
    label_lens = batch["phone_seq_lens"].to(device, non_blocking=True)
    days = batch["day_indicies"].to(device, non_blocking=True)
    alpha = composite_alpha(cfg, step)
    if alpha is not None:
        phonemes, phoneme_lens = (t.to(device, non_blocking=True) for t in phoneme_targets(batch, cfg.n_classes))
    with autocast(device, run.amp_dtype):
        features, n_steps = transform(
            features, n_steps, cfg.dataset.data_transforms, train=True, generator=run.generator
        )
        lengths = output_lengths(n_steps, cfg.model.patch_size, cfg.model.patch_stride)
        logits = forward(features, days)
        if alpha is None:
            loss = ctc_loss(logits, labels, lengths, label_lens)
        else:
            loss = composite_loss(logits, lengths, labels, label_lens, phonemes, phoneme_lens, alpha)
    if run.ranks.distributed:  # this rank's part of the global-batch mean (see trainer.distributed)
        loss = loss * dist.loss_weight(labels.shape[0], cfg.dataset.batch_size, run.ranks)
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
        run.scaler.unscale_(run.optimizer)
    else:
        loss.backward()
    max_norm = cfg.grad_norm_clip_value if cfg.grad_norm_clip_value > 0 else math.inf
    try:
        grad_norm = torch.nn.utils.clip_grad_norm_(
            run.model.parameters(), max_norm=max_norm, error_if_nonfinite=run.scaler is None, foreach=True
        )
    except RuntimeError as e:
        if "non-finite" not in str(e):
            raise
        raise TrainingError(f"non-finite gradient at step {step} (loss {float(loss):.4g})") from None
    if run.scaler is not None:
        run.scaler.step(run.optimizer)  # skips the step when fp16 gradients overflowed
        run.scaler.update()
    else:
        run.optimizer.step()
    if run.ranks.distributed:  # the weighted loss summed over ranks is the global mean
        loss = loss / run.ranks.world_size
    return loss.detach(), grad_norm.detach()


def is_val_step(cfg: TrainConfig, i: int) -> bool:
    return i % cfg.batches_per_val_step == 0 or i == cfg.num_training_batches - 1


def validate(run: Run, val_loader, i: int, should_stop: Callable[[], bool]) -> bool:
    """Validate after batch ``i``, log, keep the best. False if interrupted."""
    cfg, p = run.cfg, run.progress
    start = time.monotonic()
    keep_logits = cfg.save_val_logits
    # fork_rng: whatever validation (or the loader) draws never shifts the training streams.
    devices = [run.device.index or 0] if run.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        result = evaluate(
            run.forward,
            val_loader,
            cfg,
            run.device,
            amp_dtype=run.amp_dtype,
            keep_trials=cfg.save_val_metrics or keep_logits,
            keep_logits=keep_logits,
            should_stop=should_stop,
        )
    if result is None:
        return False
    seconds = time.monotonic() - start
    run.sink.emit("val", i, {"val_loss": result.loss, "val_PER": result.per,
                             **({} if result.der is None else {"val_DER": result.der}),
                             "best_val_PER": min(p.best_val_PER, result.per), "val_seconds": seconds})
    if cfg.log_individual_day_val_PER:
        for day, per in result.per_day.items():
            der = {} if result.der is None else {"val_DER": result.der_day[day]}
            run.sink.emit("val_session", i, {"val_PER": per, **der}, session=cfg.dataset.sessions[day])
    log.info("validation after batch %d: PER %.4f, loss %.4f (%.1f s)", i, result.per, result.loss, seconds)
    improved = result.per < p.best_val_PER or (result.per == p.best_val_PER and result.loss < p.best_val_loss)
    if improved:
        log.info("new best validation PER %.4f -> %.4f", p.best_val_PER, result.per)
        p.best_val_PER, p.best_val_loss = result.per, result.loss
        p.val_steps_since_improvement = 0
        if cfg.save_best_checkpoint:
            save_best(run, result, i)
        if cfg.save_val_metrics:
            write_val_metrics(run, result, i)
    else:
        p.val_steps_since_improvement += 1
    if cfg.save_all_val_steps:
        ckpt.save_atomic({ckpt.MODEL_STATE: run.model.state_dict(), ckpt.VAL_PER: result.per, ckpt.STEP: i},
                         run.paths.checkpoint_dir / f"model_step_{i:08d}.pt")
    p.last_val_step = i
    if cfg.early_stopping and p.val_steps_since_improvement >= cfg.early_stopping_val_steps:
        log.info("validation PER has not improved in %d validation steps; stopping at batch %d",
                 cfg.early_stopping_val_steps, i)
        p.early_stopped = True
    return True


def validate_on_main(run: Run, val_loader, i: int, should_stop: Callable[[], bool]) -> bool:
    """:func:`validate` on rank 0; the other ranks wait and take its verdict and progress."""
    ok = validate(run, val_loader, i, should_stop) if run.ranks.is_main else False
    if run.ranks.distributed:
        ok, progress = dist.broadcast((ok, asdict(run.progress)), run.ranks)
        run.progress = Progress(**progress)
    return ok


def write_val_metrics(run: Run, result: ValResult, step: int) -> None:
    """The best validation step's metrics (and logits if save_val_logits) in the output dir."""
    sessions = run.cfg.dataset.sessions
    summary = {
        "step": step,
        "val_PER": result.per,
        "val_loss": result.loss,
        "val_DER": result.der,
        "session_PER": {sessions[d]: per for d, per in result.per_day.items()},
        "trials": [
            {"session": sessions[t.day], "block": t.block, "trial": t.trial, "decoded": t.decoded.tolist(),
             "target": t.target.tolist(), "edit_distance": t.edit_distance, "transcription": t.transcription}
            for t in result.trials
        ],
    }
    run.paths.output_dir.mkdir(parents=True, exist_ok=True)
    (run.paths.output_dir / "val_metrics.json").write_text(json.dumps(summary) + "\n")
    if run.cfg.save_val_logits:
        logits = {f"{sessions[t.day]}/{t.block}/{t.trial}": t.logits for t in result.trials}
        np.savez_compressed(run.paths.output_dir / "val_logits.npz", **logits)


# ---------------------------------------------------------------------------------------
# The loop


def train(
    cfg: TrainConfig,
    paths: RunPaths,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    start_fresh: bool = False,
) -> RunResult:
    try:
        run, resumed = setup(cfg, paths, start_fresh)
        return _train(run, resumed, should_stop)
    finally:
        dist.stop()


def _train(run: Run, resumed: Optional[dict], should_stop: Callable[[], bool]) -> RunResult:
    from .data import make_loaders

    cfg, ranks, p = run.cfg, run.ranks, run.progress
    data_seed = cfg.dataset.seed if cfg.dataset.seed >= 0 or not ranks.distributed else \
        dist.broadcast(random.SystemRandom().getrandbits(31), ranks)  # "random", but one for all ranks
    train_loader, val_loader = make_loaders(cfg, start_batch=p.step, rank=ranks.rank, world_size=ranks.world_size,
                                            prefetch=dist.local_rank_zero(), seed=data_seed)
    batches = iter(train_loader)
    if resumed is not None:  # after the loader, which may draw from torch's RNG when it starts
        restore_rng(run, resumed)
    if val_loader is None:
        log.warning("no validation data: no validation, best model or early stopping")
    last = cfg.num_training_batches - 1
    run.sink.start(p.step)
    if val_loader is not None and p.step > 0 and is_val_step(cfg, p.step - 1) and p.last_val_step != p.step - 1:
        validate_on_main(run, val_loader, p.step - 1, should_stop)  # interrupted during that validation
        p = run.progress
    # sec_per_batch: wall time of training batches only (loading, step, and the sync of the
    # logged values); validation and checkpoints are timed apart (val_seconds).
    log_every, loss_sum, train_seconds, interval_batches = cfg.batches_per_train_log, None, 0.0, 0

    while p.step <= last and not p.early_stopped:
        if dist.any_rank(should_stop(), ranks, run.device):
            return stop(run)
        i = p.step
        started = time.monotonic()
        loss, grad_norm = train_step(run, next(batches), i)
        loss_sum = loss if loss_sum is None else loss_sum + loss
        interval_batches += 1
        p.step = i + 1
        if i % log_every == 0 or i == last:
            lr, lr_day = learning_rates(cfg, i)
            alpha = composite_alpha(cfg, i)
            loss_sum = dist.sum_over_ranks(loss_sum, ranks)
            values = {"train_loss": float(loss_sum) / interval_batches, "lr": lr, "lr_day": lr_day,
                      "grad_norm": float(grad_norm)}
            train_seconds += time.monotonic() - started
            run.sink.emit("train", i, {**values, "sec_per_batch": train_seconds / interval_batches,
                                       **({} if alpha is None else {"alpha": alpha})})
            loss_sum, train_seconds, interval_batches = None, 0.0, 0
        else:
            train_seconds += time.monotonic() - started
        run.sink.batch_done(p.step)
        at_val = val_loader is not None and is_val_step(cfg, i)
        if at_val and not validate_on_main(run, val_loader, i, should_stop):
            return stop(run)
        p = run.progress  # validation on rank 0 may have replaced it on the others
        if at_val or (cfg.batches_per_save and p.step % cfg.batches_per_save == 0) or p.step > last:
            save_checkpoint(run)
    return finish(run)


def stop(run: Run) -> RunResult:
    """Asked to stop (SIGTERM): save where we are (unless just saved) and report it."""
    p = run.progress
    path = ckpt.periodic_path(run.paths.checkpoint_dir, p.step) if run.saved_step == p.step else save_checkpoint(run)
    run.sink.close()
    if run.ranks.is_main:
        log.warning("stop requested: saved %s at step %d; start again to resume", path, run.progress.step)
    dist.barrier(run.ranks)  # no rank exits before the checkpoint is on disk
    return RunResult(INTERRUPTED, run.progress.step, run.progress.best_val_PER, None)


def finish(run: Run) -> RunResult:
    """Write the model (rank 0): the best validation weights if kept, else the final ones."""
    cfg, p = run.cfg, run.progress
    status = EARLY_STOPPED if p.early_stopped else COMPLETED
    if not run.ranks.is_main:
        dist.barrier(run.ranks)  # wait for rank 0's model
        return RunResult(status, p.step, p.best_val_PER, None)
    best_file = run.paths.checkpoint_dir / ckpt.BEST_FILE
    final = run.model.state_dict()
    info = {"n_classes": cfg.n_classes, "step": p.step, "best_val_PER": p.best_val_PER,
            "best_val_loss": p.best_val_loss}
    if cfg.save_best_checkpoint and best_file.exists():
        best = torch.load(best_file, map_location="cpu", weights_only=False)
        weights, info["weights"], info["step"] = best[ckpt.MODEL_STATE], "best", best[ckpt.STEP]
    else:
        weights, info["weights"] = final, "final"
    path = export_model(run.paths.model_dir, run.model, weights, cfg, **info)
    run.sink.close()
    run.sink.write_curves(run.paths.model_dir / "curves.png")
    if cfg.save_final_model:
        export_model(run.paths.model_dir, run.model, final, cfg, file_name="final_model.pt",
                     **{**info, "weights": "final", "step": p.step})
    log.info("%s at step %d; best validation PER %.4f; model %s", status, p.step, p.best_val_PER, path)
    dist.barrier(run.ranks)
    return RunResult(status, p.step, p.best_val_PER, path)

