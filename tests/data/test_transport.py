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
    docker = transport.choose(4, T15_BATCH, free=64 * MB)
    assert docker.mode == transport.MIXED and MB <= docker.share_bytes < T15_BATCH  # a real batch goes by memfd
    assert transport.choose(4, T15_BATCH, free=16 * MB).mode == transport.MEMFD  # no batch's share is left
    assert transport.choose(4, T15_BATCH, free=64 * 1024 * MB).mode == transport.SHARED
    assert transport.choose(0, T15_BATCH, free=64 * MB).mode == transport.MAIN
    assert transport.choose(4, T15_BATCH, free=None).mode == transport.MEMFD


def test_without_memfd_batches_go_through_the_pipe(monkeypatch):
    monkeypatch.setattr(transport, "memfd_works", lambda: False)
    assert transport.choose(4, T15_BATCH, free=64 * MB).mode == transport.PIPE


def test_what_the_cache_may_still_claim_is_not_counted_as_free():
    fits = transport.choose(2, MB, loaders=2, free=100 * MB)
    assert fits.mode == transport.SHARED and fits.needed_bytes == (2 * 2 * 2 + 2) * MB
    assert transport.choose(2, MB, loaders=2, free=100 * MB, reserved=95 * MB).mode == transport.MEMFD


def test_an_unknown_batch_size_shares_shm_batch_by_batch():
    unknown = transport.choose(4, None, free=18 * 100 * MB)
    assert unknown.mode == transport.MIXED and unknown.share_bytes == 100 * MB
    assert "batches up to 100 MB by /dev/shm, larger ones by memfd" in unknown.describe()


@pytest.mark.parametrize("free,memfd,mode,shared", [
    (0, True, transport.MEMFD, False), (0, False, transport.PIPE, False), (1 << 40, True, transport.SHARED, True)])
def test_every_transport_delivers_the_same_batches(tiny_dir, tmp_path, monkeypatch, caplog, free, memfd, mode, shared):
    monkeypatch.setattr(transport, "shm_free", lambda path=transport.SHM: free)
    monkeypatch.setattr(transport, "memfd_works", lambda: memfd)
    caplog.set_level(logging.INFO, logger="trainer.data")
    batches = all_batches(make_cfg(tiny_dir, tmp_path, overrides=["dataset.num_dataloader_workers=2"]))
    assert f"batches travel by {mode} (2 workers" in caplog.text
    assert all(t.is_shared() == shared for b in batches for t in b.values())
    assert_same_batches(batches, all_batches(make_cfg(tiny_dir, tmp_path)))


def test_mixed_mode_sends_the_batches_that_fit_their_share_through_shm(medium_dir, tmp_path, monkeypatch, caplog):
    reference = all_batches(make_cfg(medium_dir, tmp_path))
    sizes = sorted(sum(t.numel() * t.element_size() for t in b.values()) for b in reference)
    middle = sizes[len(sizes) // 2]
    monkeypatch.setattr(transport, "shm_free", lambda path=transport.SHM: middle * (2 * 2 * transport.PREFETCH_FACTOR
                                                                                   + transport.HELD_BY_LOOP))
    caplog.set_level(logging.INFO, logger="trainer.data")
    batches = all_batches(make_cfg(medium_dir, tmp_path, overrides=["dataset.num_dataloader_workers=2"]))
    assert "batches travel by shared-memory or memfd (2 workers" in caplog.text
    shared = [b["input_features"].is_shared() for b in batches]
    assert any(shared) and not all(shared)
    assert_same_batches(batches, reference)
