"""How batches travel from workers: through /dev/shm when they fit, else through the workers' pipes."""

from __future__ import annotations

import logging

import pytest

from tests.data.data_helpers import all_batches, assert_same_batches, make_cfg
from trainer.data import transport

MB = 2**20
T15_BATCH = transport.batch_bytes(64, 1300, 512, 100, 100)  # ≈ 170 MB


def test_a_real_batch_does_not_fit_dockers_default_shm():
    assert 160 * MB < T15_BATCH < 180 * MB
    assert transport.choose(4, T15_BATCH, free=64 * MB).mode == transport.PIPE
    assert transport.choose(4, T15_BATCH, free=64 * 1024 * MB).mode == transport.SHARED
    assert transport.choose(0, T15_BATCH, free=64 * MB).mode == transport.MAIN
    assert transport.choose(4, T15_BATCH, free=None).mode == transport.PIPE


def test_what_the_cache_may_still_claim_is_not_counted_as_free():
    fits = transport.choose(2, MB, loaders=2, free=100 * MB)
    assert fits.mode == transport.SHARED and fits.needed_bytes == (2 * 2 * 2 + 2) * MB
    assert transport.choose(2, MB, loaders=2, free=100 * MB, reserved=95 * MB).mode == transport.PIPE


@pytest.mark.parametrize("free,mode,shared", [(None, transport.PIPE, False), (1 << 40, transport.SHARED, True)])
def test_both_transports_deliver_the_same_batches(tiny_dir, tmp_path, monkeypatch, caplog, free, mode, shared):
    monkeypatch.setattr(transport, "shm_free", lambda path=transport.SHM: free)
    caplog.set_level(logging.INFO, logger="trainer.data")
    batches = all_batches(make_cfg(tiny_dir, tmp_path, overrides=["dataset.num_dataloader_workers=2"]))
    assert f"batches travel by {mode} (2 workers" in caplog.text
    assert all(t.is_shared() == shared for b in batches for t in b.values())
    assert_same_batches(batches, all_batches(make_cfg(tiny_dir, tmp_path)))
