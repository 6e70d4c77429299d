"""Fixtures for the trainer tests (helpers live in trainer_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainer_helpers import TINY_SPEC

from trainer.synthetic import generate


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_t15")
    generate(root, TINY_SPEC)
    return root
