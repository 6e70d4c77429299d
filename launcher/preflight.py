"""Checks of a job's flags and config that need no AWS call: what would fail on a paid instance.

Run by `start` (and `resume`, `start --local`) before the stack is read; the checks that need
AWS (the job name, the image, the session files, an ``s3://`` init checkpoint) are in
:mod:`launcher.jobs`. The README's table "What is checked before a job is paid for" lists both.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from .errors import UsageError

# "ResourceConfig - Amazon SageMaker" (API reference) gives no upper bound for VolumeSizeInGB;
# the volume is an EBS gp2 volume, whose largest size is 16 TiB ("Amazon EBS volume types",
# General Purpose SSD volumes), and instances with NVMe storage accept no more than it holds.
MAX_VOLUME_GB = 16384
# A docker image tag (docker's reference grammar: "tag := [\w][\w.-]{0,127}"), which ECR also enforces.
_IMAGE_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def check_image_tag(tag: Any, flag: str) -> None:
    if tag is not None and not _IMAGE_TAG.fullmatch(tag):
        raise UsageError(f"{flag} {tag!r} is not a valid image tag: letters, digits, '_', '.' and '-' "
                         "(not first), at most 128 characters")


def training_instance_types() -> tuple[str, ...]:
    """The ``TrainingInstanceType`` enum of botocore's SageMaker service model (what CreateTrainingJob accepts)."""
    from .request import _create_training_job_shape  # the model validate_request loads anyway

    return tuple(_create_training_job_shape().members["ResourceConfig"].members["InstanceType"].enum)


def check_instance_type(instance_type: str) -> None:
    known = training_instance_types()
    if instance_type in known:
        return
    close = difflib.get_close_matches(instance_type, known, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "e.g. ml.g5.2xlarge or ml.g4dn.xlarge"
    raise UsageError(f"--instance-type {instance_type!r} is not a SageMaker training instance type: {hint}")


def check_volume(volume_gb: int) -> None:
    if not 1 <= volume_gb <= MAX_VOLUME_GB:
        raise UsageError(f"--volume-gb must be between 1 and {MAX_VOLUME_GB} GB, got {volume_gb}")


def check_spot_flags(spot: bool, max_wait_hours: Any) -> None:
    if not spot and max_wait_hours is not None:
        raise UsageError("--max-wait applies to managed spot only (how long to wait for capacity): "
                         "drop it, or drop --on-demand")


def check_init_checkpoint(cfg: Any, *, local: bool) -> None:
    """``init_checkpoint_path`` on this machine: it must exist, and a cloud job cannot read it at all."""
    if not cfg.init_from_checkpoint or not cfg.init_checkpoint_path:
        return
    url = str(cfg.init_checkpoint_path)
    if "://" in url and not url.startswith("file://"):
        return  # s3:// and other URLs: jobs.check_init_checkpoint looks it up
    path = Path(url.removeprefix("file://")).expanduser()
    if not local:
        raise UsageError(f"init_checkpoint_path: {url} is a path on this machine, which the job cannot read: "
                         "copy it to the output bucket's jobs/ or checkpoints/ prefix and give its s3:// URL")
    if not path.is_file():
        raise UsageError(f"init_checkpoint_path: no such file: {path}")


def check_batch_memory(cfg: Any, instance_type: str, instance_count: int = 1) -> None:
    """A lower bound (every trial only one patch long) against one GPU of the instance type, which
    trains its share of every batch (one rank per GPU: launcher/data/gpus.json)."""
    from trainer.checks import check_batch_fits

    from .gpus import gpu_table

    gpus = gpu_table().get(instance_type)
    if gpus is None or not gpus.gpus:
        return
    ranks = instance_count * gpus.gpus
    share = -(-cfg.dataset.batch_size // ranks)
    if ranks > 1:
        cfg = cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"batch_size": share})})
    shortest = max(cfg.model.patch_size, 1)
    where = (f"one {gpus.gpu} of {instance_type}, which trains {share} of each batch's trials" if ranks > 1
             else f"one {gpus.gpu} of {instance_type}")
    check_batch_fits(cfg, shortest, gpus.gpu_memory_gb * 2**30, where,
                     trials=f"trials, even were each only one patch ({shortest} bins) long,")


def check_start(opts: Any, cfg: Any = None, *, local: bool = False) -> None:
    """Every check here, in the order a user would fix them."""
    if not local:
        check_instance_type(opts.instance_type)
    check_volume(opts.volume_gb)
    check_image_tag(opts.image_tag, "--image-tag")
    check_spot_flags(opts.spot, opts.max_wait_hours)
    if cfg is not None:
        check_init_checkpoint(cfg, local=local)
        if not local:
            check_batch_memory(cfg, opts.instance_type, opts.instance_count)
