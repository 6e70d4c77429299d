"""Fixtures for the data-layer tests: tiny synthetic sessions, a bucket holding them, a proxy."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data.data_helpers import MEDIUM, TINY, upload
from bench.s3proxy import Proxy, Settings
from trainer.synthetic import generate


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    generate(root, TINY)
    return root


@pytest.fixture(scope="session")
def medium_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("medium")
    generate(root, MEDIUM)
    return root


@pytest.fixture
def tiny_s3(moto_reset, tiny_dir) -> str:
    return upload(moto_reset.client("s3"), tiny_dir)


@pytest.fixture
def proxy(moto_server):
    """A pass-through proxy to the moto server: no latency, no rate cap, no faults until configured."""
    p = Proxy(moto_server.url, settings=Settings(latency_s=0.0, rate=0, fault_rate=0.0)).start()
    try:
        yield p
    finally:
        p.stop()
