"""Where a SageMaker training container finds its job, in plain Python (no torch import).

``__main__`` needs these before anything heavy is imported, so that a failure even while
importing the trainer reaches ``/opt/ml/output/failure``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping, Optional

ROOT_ENV = "B2T_OPT_ML"  # local mode and the tests lay out an /opt/ml-like tree elsewhere
DEFAULT_ROOT = Path("/opt/ml")
# SageMaker starts a custom image as `docker run IMAGE train` unless the request sets
# AlgorithmSpecification.ContainerEntrypoint (AWS docs, "How Amazon SageMaker AI Runs Your
# Training Image"): `train` is appended to the ENTRYPOINT.
TRAIN_COMMAND = "train"
# SageMaker shows the first 1,024 characters of /opt/ml/output/failure as the job's
# FailureReason (AWS docs, "How Amazon SageMaker AI Processes Training Output").
FAILURE_REASON_LIMIT = 1024


def container_root(env: Mapping[str, str] = os.environ) -> Path:
    return Path(env.get(ROOT_ENV) or DEFAULT_ROOT)


def in_container(env: Mapping[str, str] = os.environ) -> bool:
    return (container_root(env) / "input" / "config").is_dir()


def failure_file_for(env: Mapping[str, str] = os.environ) -> Optional[Path]:
    """Where a container run reports a fatal error, whatever it was started with."""
    return container_root(env) / "output" / "failure" if in_container(env) else None


def one_line(reason: str, limit: int = FAILURE_REASON_LIMIT) -> str:
    """``reason`` as one line of at most ``limit`` characters: its lines joined by "; ", other
    whitespace runs become one space."""
    lines = [re.sub(r"\s+", " ", part).strip() for part in reason.splitlines()]
    line = "; ".join(part for part in lines if part)
    return line if len(line) <= limit else line[: limit - 1] + "…"
