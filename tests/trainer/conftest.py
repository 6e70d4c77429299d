"""Fixtures for the trainer tests (helpers live in trainer_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.trainer.trainer_helpers import TINY_SPEC

from trainer.synthetic import generate

# One intra-op thread: on a shared 2-core machine OpenMP threads spin-wait when the CPU is
# oversubscribed, which made tiny training steps 10x slower than with one thread.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_t15")
    generate(root, TINY_SPEC)
    return root
