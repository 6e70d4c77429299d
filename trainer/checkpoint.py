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
leaves either the old or the new file; a write that fails (disk full, permissions) removes
its temporary file and says which path and how many bytes it needed. On start the newest
checkpoint that loads is used; an unreadable one is skipped with a warning and the previous
one is tried. When checkpoints exist but none loads, the run stops (:class:`CheckpointError`
naming them) rather than start again from step 0 and overwrite the model; ``start_fresh``
moves them aside (``*.unreadable``) and starts from zero on purpose.

One trainer per output folder: :func:`output_lock` holds an advisory lock on
``<output>/.trainer.lock`` (holding the pid and host) for the whole run.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import random
import re
import shutil
import socket
from pathlib import Path
from typing import Any, Iterator, Optional

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
UNREADABLE_SUFFIX = ".unreadable"
LOCK_FILE = ".trainer.lock"


class CheckpointError(RuntimeError):
    """A checkpoint that was asked for explicitly cannot be used."""


def periodic_path(directory: Path, step: int) -> Path:
    return directory / f"checkpoint_{step:08d}.pt"


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to ``path`` via a temp file, fsync and rename (and fsync of the directory).

    On failure the temp file is removed and the ``OSError`` names ``path`` and the bytes needed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getbuffer())


def write_atomic(path: Path, data: Any) -> None:
    """Write bytes to ``path`` through ``<path>.tmp`` (fsync, rename); nothing left behind on failure."""
    tmp = path.with_name(path.name + _TMP_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OSError(e.errno, f"{e.strerror or e}{_space_note(path, len(data))}", str(path)) from None
    _fsync_dir(path.parent)


def _space_note(path: Path, needed: int) -> str:
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return f" (writing {_human(needed)})"
    return f" (writing {_human(needed)}; {_human(free)} free on its filesystem)"


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


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


def load_latest(directory: Path, *, start_fresh: bool = False) -> Optional[tuple[Path, dict]]:
    """The newest periodic checkpoint that loads and has our format, or None when there is none.

    Checkpoints that exist but none of which loads raise :class:`CheckpointError` (naming them):
    starting from step 0 would overwrite the model they lead to. ``start_fresh`` moves them
    aside as ``<name>.unreadable`` and returns None.
    """
    bad: list[Path] = []
    for step, path in periodic_checkpoints(directory):
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # any unreadable file is skipped: that is the point of keeping several
            log.warning("checkpoint %s is unreadable (%s: %s); trying the previous one", path, type(e).__name__, e)
            bad.append(path)
            continue
        if not isinstance(state, dict) or state.get(FORMAT) != FORMAT_VERSION or state.get(STEP) != step:
            log.warning("checkpoint %s is not a complete b2t checkpoint; trying the previous one", path)
            bad.append(path)
            continue
        return path, state
    if bad and not start_fresh:
        names = ", ".join(p.name for p in bad)
        raise CheckpointError(
            f"{len(bad)} checkpoint(s) in {directory} and none readable ({names}): not starting again from "
            "step 0 over them; restore them, or start fresh on purpose (`python -m trainer --start-fresh` "
            f"moves them aside as *{UNREADABLE_SUFFIX})"
        )
    for path in bad:
        path.rename(path.with_name(path.name + UNREADABLE_SUFFIX))
        log.warning("start fresh: moved the unreadable %s aside (%s)", path, UNREADABLE_SUFFIX)
    return None


@contextlib.contextmanager
def output_lock(output_dir: Path) -> Iterator[Path]:
    """Hold ``<output_dir>/.trainer.lock`` (pid and host inside) for one trainer at a time.

    An advisory ``flock``: the kernel drops it when the holder dies, so a stale file never blocks.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise CheckpointError(
                f"{output_dir} is in use by another trainer ({holder}; lock file {path}): wait for it "
                "to end or stop it, or use another output folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


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
