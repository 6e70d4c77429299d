"""The bundled price table and the estimate shown before submitting."""

from __future__ import annotations

import pytest

from launcher.costs import estimate, price_table

SEED_TYPES = ("ml.g4dn.xlarge", "ml.g4dn.2xlarge", "ml.g5.xlarge", "ml.g5.2xlarge", "ml.p3.2xlarge")


def test_table_is_dated_sourced_and_holds_the_seed_types():
    table = price_table()
    assert table.region == "us-east-1" and table.as_of and "pricing" in table.source
    assert all(t in table.instances for t in SEED_TYPES)
    assert len(table.instances) > len(SEED_TYPES)
    assert table.get("ml.g4dn.xlarge").usd_per_hour == 0.736 and table.get("ml.p3.2xlarge").usd_per_hour == 3.825


def test_estimate_is_price_times_duration_capped_by_max_run():
    est = estimate("ml.g5.2xlarge", max_run_s=10 * 3600, num_batches=12000, batch_size=48, spot=False)
    assert est.max_usd == pytest.approx(1.515 * 10)
    assert est.estimated_hours == pytest.approx(12000 * 0.6 * 1.1 / 3600)
    assert est.estimated_usd == pytest.approx(1.515 * est.estimated_hours)
    assert est.capped_usd == est.estimated_usd and not est.past_max_run


def test_estimate_scales_with_instances_gpus_and_batch_size():
    one = estimate("ml.g4dn.xlarge", max_run_s=3600, num_batches=1000, batch_size=24)
    big = estimate("ml.g4dn.xlarge", max_run_s=3600, num_batches=1000, batch_size=48)
    assert big.estimated_hours == 2 * one.estimated_hours
    # 2 instances: twice the price per hour; 2 GPUs in all: half the (ideal) time
    two = estimate("ml.g4dn.xlarge", instance_count=2, max_run_s=3600, num_batches=1000, batch_size=48)
    assert two.ranks == 2 and two.usd_per_hour == 2 * one.usd_per_hour
    assert two.estimated_hours == pytest.approx(one.estimated_hours)
    assert any("÷ 2 GPUs, ideal scaling" in line for line in two.lines())
    # 2 × ml.g5.12xlarge: 8 A10G GPUs
    eight = estimate("ml.g5.12xlarge", instance_count=2, max_run_s=3600, num_batches=1000, batch_size=48)
    assert eight.ranks == 8 and eight.usd_per_hour == pytest.approx(2 * 7.09)
    assert eight.estimated_hours == pytest.approx(1000 * 0.58 / 8 * 1.1 / 3600)


def test_gpu_table_is_dated_sourced_and_covers_the_price_table():
    from launcher.gpus import gpu_table

    gpus = gpu_table()
    assert gpus.as_of and "EC2" in gpus.source
    assert set(price_table().instances) <= set(gpus.instances)
    assert gpus.get("ml.g5.12xlarge").gpus == 4 and gpus.get("ml.p4d.24xlarge").gpus == 8
    assert gpus.get("ml.g5.2xlarge").gpus == 1 and gpus.ranks("ml.g6.48xlarge", 2) == 16
    assert gpus.ranks("ml.m5.xlarge", 2) is None


def test_unknown_instance_type_says_so():
    lines = estimate("ml.trn1.2xlarge", max_run_s=3600).lines()
    assert lines == [lines[0]] and "not in the price table" in lines[0]


def test_spot_line_mentions_the_real_saving():
    assert any("`status` reports the real saving" in line for line in estimate("ml.g5.xlarge", max_run_s=3600).lines())


def test_estimate_past_max_run_shows_whole_run_and_cap_and_is_refused():
    from launcher.errors import UsageError

    est = estimate("ml.g5.2xlarge", max_run_s=24 * 3600, num_batches=120000, batch_size=64)
    lines = " ".join(" ".join(est.lines()).split())
    assert "≈ $44.44 for the whole run, an estimated 29.3 h of training" in lines  # not capped at 24 h
    assert "--max-run 24 h stops it before its last batch, at ≈ $36.36" in lines
    with pytest.raises(UsageError, match=r"estimated at 29.3 h, past --max-run 24 h.*--max-run 36.*--accept-cut"):
        est.check_fits(accept_cut=False)
    est.check_fits(accept_cut=True)
