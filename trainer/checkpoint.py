"""Training checkpoints that survive spot interruption.

A checkpoint holds everything a run needs to continue bit-for-bit: the uncompiled model's
weights, the optimizer (and AMP grad scaler), the step, the best metrics and early-stopping
counters, the RNG states of python, numpy, torch (CPU and CUDA) and the augmentation
generator, and the config. The data sampler's position is the step: batch ``i`` depends
only on ``(dataset.seed, i)``. The LR schedule is a pure function of the step.

Files in the checkpoint directory (``/opt/ml/checkpoints`` in a SageMaker job, synced to
S3; ``<output>/checkpoints`` locally):

- ``checkpoint_<step:08d>.pt``: periodic full state; the newest ``keep_last_checkpoints`` are kept;
- ``best_checkpoint.pt``: weights and metrics of the best validation step.

Every file is written to a temporary name, fsynced and renamed, so a kill at any moment
leaves either the old or the new file. On start the newest checkpoint that loads is used;
an unreadable one is skipped with a warning and the previous one is tried.
"""

from __future__ import annotations

import io
import logging
import os
import random
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

log = logging.getLogger(__name__)

# Keys shared with the reference trainer's checkpoints.
MODEL_STATE = "model_state_dict"
OPTIMIZER_STATE = "optimizer_state_dict"
VAL_PER = "val_PER"
VAL_LOSS = "val_loss"
# Ours.
FORMAT = "format"
FORMAT_VERSION = "b2t-checkpoint/1"
STEP = "step"
PROGRESS = "progress"
SCALER_STATE = "scaler_state_dict"
RNG_STATE = "rng_state"
CONFIG = "config"
SESSIONS = "sessions"

BEST_FILE = "best_checkpoint.pt"
_PERIODIC = re.compile(r"^checkpoint_(\d{8,})\.pt$")
_TMP_SUFFIX = ".tmp"


class CheckpointError(RuntimeError):
    """A checkpoint that was asked for explicitly cannot be used."""


def periodic_path(directory: Path, step: int) -> Path:
    return directory / f"checkpoint_{step:08d}.pt"


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to ``path`` via a temp file, fsync and rename (and fsync of the directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + _TMP_SUFFIX)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with open(tmp, "wb") as f:
        f.write(buffer.getbuffer())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # best effort: not every filesystem lets a directory be opened
        return
    try:
        os.fsync(fd)
    except OSError:  # best effort, as above
        pass
    finally:
        os.close(fd)


def periodic_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of the periodic checkpoints, newest first."""
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _PERIODIC.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def load_latest(directory: Path) -> Optional[tuple[Path, dict]]:
    """The newest periodic checkpoint that loads and has our format, or None."""
    for step, path in periodic_checkpoints(directory):
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # any unreadable file is skipped: that is the point of keeping several
            log.warning("checkpoint %s is unreadable (%s: %s); trying the previous one", path, type(e).__name__, e)
            continue
        if not isinstance(state, dict) or state.get(FORMAT) != FORMAT_VERSION or state.get(STEP) != step:
            log.warning("checkpoint %s is not a complete b2t checkpoint; trying the previous one", path)
            continue
        return path, state
    return None


def prune(directory: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` periodic checkpoints, and stale temp files."""
    for _, path in periodic_checkpoints(directory)[keep:]:
        path.unlink(missing_ok=True)
    for tmp in directory.glob("*" + _TMP_SUFFIX):
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------
# RNG state


def capture_rng(generator: torch.Generator) -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "augment": generator.get_state(),
        "augment_device": str(generator.device),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, generator: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("augment_device") == str(generator.device):
        generator.set_state(state["augment"])
    else:
        log.warning(
            "augmentation RNG was saved on %s, now training on %s: noise after resume differs",
            state.get("augment_device"),
            generator.device,
        )
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------
# Reference checkpoints (init_from_checkpoint)


def read_model_state(url: str) -> dict[str, torch.Tensor]:
    """Model weights from a reference-format checkpoint (local path or fsspec URL).

    Accepts a dict with ``model_state_dict`` (the reference trainer's checkpoints, ours,
    or an exported ``model.pt``) or a bare state dict.
    """
    from .model import clean_state_dict

    try:
        if "://" in url and not url.startswith("file://"):
            import fsspec

            with fsspec.open(url, "rb") as f:
                data = f.read()
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
        else:
            state = torch.load(url.removeprefix("file://"), map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"init_checkpoint_path: no such checkpoint: {url}") from None
    except Exception as e:  # a corrupt or foreign file: name it in one line
        raise CheckpointError(f"init_checkpoint_path: cannot read {url}: {type(e).__name__}: {e}") from None
    if isinstance(state, dict) and MODEL_STATE in state:
        state = state[MODEL_STATE]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"init_checkpoint_path: {url} holds no model state dict")
    return clean_state_dict(state)


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load weights, explaining shape/key mismatches in one line."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"init_checkpoint_path: {source} does not fit this model "
            f"(missing {missing[:3]}{'…' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'…' if len(unexpected) > 3 else ''}); "
            "check dataset.sessions and model.* against the checkpoint's config"
        )
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise CheckpointError(
                f"init_checkpoint_path: {source}: {key} has shape {list(value.shape)}, "
                f"this model's is {list(own[key].shape)}"
            )
    model.load_state_dict(state)
