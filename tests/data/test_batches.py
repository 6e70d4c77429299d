"""Batches from a local directory: the reference's fields, padding and sampling rules; resumability."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch

from tests.data.data_helpers import all_batches, assert_same_batches, make_cfg
from trainer.data import check_data, make_loaders

SESSIONS = 4


def test_fields_padding_and_contents_match_the_files(tiny_dir, tmp_path):
    cfg = make_cfg(tiny_dir, tmp_path)
    batch = next(iter(make_loaders(cfg)[0]))
    n = cfg.dataset.batch_size
    assert batch["input_features"].dtype == torch.float32 and batch["input_features"].shape[::2] == (n, 512)
    for key in ("seq_class_ids", "n_time_steps", "phone_seq_lens", "day_indicies", "block_nums", "trial_nums"):
        assert batch[key].dtype == torch.int64 and batch[key].shape[0] == n
    assert batch["transcriptions"].dtype == torch.int32 and batch["transcriptions"].shape == (n, 500)
    assert batch["input_features"].shape[1] == batch["n_time_steps"].max()
    assert batch["seq_class_ids"].shape[1] == batch["phone_seq_lens"].max()
    for b in range(n):
        day = int(batch["day_indicies"][b])
        with h5py.File(tiny_dir / cfg.dataset.sessions[day] / "data_train.hdf5") as f:
            g = next(g for g in f.values() if g.attrs["block_num"] == batch["block_nums"][b]
                     and g.attrs["trial_num"] == batch["trial_nums"][b])
            t, L = int(g.attrs["n_time_steps"]), int(g.attrs["seq_len"])
            assert int(batch["n_time_steps"][b]) == t and int(batch["phone_seq_lens"][b]) == L
            assert np.array_equal(batch["input_features"][b, :t].numpy(), g["input_features"][()])
            assert not batch["input_features"][b, t:].any()
            assert np.array_equal(batch["seq_class_ids"][b, :L].numpy(), g["seq_class_ids"][:L])
            assert not batch["seq_class_ids"][b, L:].any()
            assert np.array_equal(batch["transcriptions"][b].numpy(), g["transcription"][()])


@pytest.mark.parametrize("batch_size,days,must", [(8, 4, None), (10, 3, [-1]), (7, 2, [0, -1])])
def test_train_batches_follow_the_reference_rules(tiny_dir, tmp_path, batch_size, days, must):
    cfg = make_cfg(tiny_dir, tmp_path, overrides=[f"dataset.batch_size={batch_size}", f"dataset.days_per_batch={days}",
                                                   f"dataset.must_include_days={must}", "num_training_batches=20"])
    per_day = math.ceil(batch_size / days)
    for batch in make_loaders(cfg)[0]:
        day_ids = batch["day_indicies"].tolist()
        assert len(day_ids) == batch_size
        assert len(set(day_ids)) == days
        assert all(day_ids.count(d) <= per_day for d in set(day_ids))
        # one session's trials are contiguous, as the reference concatenates per day
        assert sum(1 for a, b in zip(day_ids, day_ids[1:]) if a != b) == days - 1
        for d in must or ():
            assert d % SESSIONS in day_ids


def test_resuming_at_a_batch_gives_the_same_batches(tiny_dir, tmp_path):
    cfg = make_cfg(tiny_dir, tmp_path, overrides=["num_training_batches=8"])
    full = list(make_loaders(cfg)[0])
    assert_same_batches(list(make_loaders(cfg, start_batch=5)[0]), full[5:])
    assert len(make_loaders(cfg, start_batch=8)[0]) == 0


def test_the_seed_decides_the_batches(tiny_dir, tmp_path):
    a = list(make_loaders(make_cfg(tiny_dir, tmp_path))[0])
    assert_same_batches(list(make_loaders(make_cfg(tiny_dir, tmp_path))[0]), a)
    b = list(make_loaders(make_cfg(tiny_dir, tmp_path, overrides=["dataset.seed=2"]))[0])
    assert any(not torch.equal(x["trial_nums"], y["trial_nums"]) for x, y in zip(a, b))


def test_validation_covers_every_trial_once_per_session(tiny_dir, tmp_path):
    cfg = make_cfg(tiny_dir, tmp_path, overrides=["dataset.batch_size=3", "dataset.days_per_batch=3",
                                                   "dataset.dataset_probability_val=[1, 0, 1, 1]"])
    batches = list(make_loaders(cfg)[1])
    seen = []
    for batch in batches:
        days = set(batch["day_indicies"].tolist())
        assert len(days) == 1 and len(batch["trial_nums"]) <= 3
        seen += [(int(d), int(b), int(t)) for d, b, t in zip(batch["day_indicies"], batch["block_nums"], batch["trial_nums"])]
    assert [s[0] for s in seen] == sorted(s[0] for s in seen)  # session by session
    assert len(seen) == len(set(seen)) == 3 * 4  # every val trial of days 0, 2, 3 exactly once
    assert {s[0] for s in seen} == {0, 2, 3}
    assert len(batches) == 3 * math.ceil(4 / 3)


def test_no_validation_loader_without_validation_data(tiny_dir, tmp_path):
    cfg = make_cfg(tiny_dir, tmp_path, overrides=["dataset.dataset_probability_val=[0, 0, 0, 0]"])
    assert make_loaders(cfg)[1] is None


def test_bad_trials_are_left_out_and_nothing_else(tiny_dir, tmp_path):
    session = "t15.2023.08.11"
    # TINY: 5 trials per block; train blocks 1-3, val block 4
    bad = {session: {1: [0, 1, 2, 3, 4], 2: [0], 4: [1]}}
    cfg = make_cfg(tiny_dir, tmp_path, overrides=[f"dataset.bad_trials_dict={bad}", "num_training_batches=30"])
    summary = check_data(cfg)
    assert [s.n_train for s in summary.sessions] == [6, 12, 12, 12]
    assert [s.n_val for s in summary.sessions] == [3, 4, 4, 4]
    assert summary.sessions[0].n_excluded == 7
    train, val = make_loaders(cfg)
    pairs = {(int(b), int(t)) for batch in [*train, *val] for d, b, t in
             zip(batch["day_indicies"], batch["block_nums"], batch["trial_nums"]) if d == 0}
    assert not pairs & ({(1, t) for t in range(5)} | {(2, 0), (4, 1)})
    assert {(4, 0), (4, 2), (4, 3)} <= pairs


def test_feature_subset_picks_those_columns(tiny_dir, tmp_path):
    subset = [5, 0, 511]
    full = next(iter(make_loaders(make_cfg(tiny_dir, tmp_path))[0]))
    cfg = make_cfg(tiny_dir, tmp_path, overrides=[f"dataset.feature_subset={subset}", "model.n_input_features=3"])
    part = next(iter(make_loaders(cfg)[0]))
    assert torch.equal(part["input_features"], full["input_features"][:, :, subset])


def test_workers_give_the_same_batches_as_the_main_process(tiny_dir, tmp_path):
    cfg0 = make_cfg(tiny_dir, tmp_path)
    cfg2 = make_cfg(tiny_dir, tmp_path, overrides=["dataset.num_dataloader_workers=2"])
    assert_same_batches(all_batches(cfg2), all_batches(cfg0))


def test_check_data_summarises_every_session(tiny_dir, tmp_path):
    summary = check_data(make_cfg(tiny_dir, tmp_path))
    assert [s.session for s in summary.sessions] == make_cfg(tiny_dir, tmp_path).dataset.sessions
    assert summary.n_train == 48 and summary.n_val == 16
    for s in summary.sessions:
        files = [tiny_dir / s.session / n for n in ("data_train.hdf5", "data_val.hdf5")]
        assert s.bytes == sum(f.stat().st_size for f in files)
        with h5py.File(files[0]) as f, h5py.File(files[1]) as g:
            steps = [int(x.attrs["n_time_steps"]) for x in [*f.values(), *g.values()]]
        assert (s.min_time_steps, s.max_time_steps) == (min(steps), max(steps))
    assert "48 train and 16 validation trials" in summary.format()
