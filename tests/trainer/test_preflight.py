"""What the trainer's dry run (and every start) refuses before training: the repro of each
case, and the one line it gets."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from trainer.__main__ import EXIT_CONFIG, EXIT_DATA, EXIT_OK, main
from trainer.config import DEMO_CONFIG, ConfigError, load_config, read_config_file

from tests.trainer.trainer_helpers import set_args, tiny_overrides


def dry_run(data: Path, tmp_path: Path, *extra: str, config: Path = DEMO_CONFIG) -> list[str]:
    return ["--config", str(config), "--data", str(data), "--output", str(tmp_path / "run"),
            *set_args(tiny_overrides(data)), *extra, "--dry-run"]


def one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_duplicate_yaml_key_is_refused(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("dataset:\n  batch_size: 32\n  days_per_batch: 2\n  batch_size: 64\n")
    with pytest.raises(ConfigError) as info:
        read_config_file(path)
    assert str(info.value) == f"{path} line 4: key 'batch_size' is given twice (also on line 2); keep one"


def test_yaml_11_float_without_dot_is_a_number(tmp_path):
    path = tmp_path / "lr.yaml"
    path.write_text(DEMO_CONFIG.read_text() + "\nlr_max: 5e-3\nlr_max_day: 1E-2\n")
    text = path.read_text().replace("lr_max:", "#lr_max:", 1).replace("lr_max_day:", "#lr_max_day:", 1)
    path.write_text(text)
    cfg = load_config(path, ["lr_min=1e-5"])
    assert (cfg.lr_max, cfg.lr_max_day, cfg.lr_min) == (0.005, 0.01, 0.00001)


def test_binary_config_file_is_one_line(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8")
    with pytest.raises(ConfigError, match=r"model.pt: not a YAML text file \(byte 0 is not UTF-8\)"):
        read_config_file(path)


def test_missing_sessions_key_is_named(tmp_path):
    path = tmp_path / "no_sessions.yaml"
    path.write_text("dataset:\n  days_per_batch: 4\n  batch_size: 64\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == "dataset.sessions: required: list the session folders to train on"


def test_must_include_the_same_day_twice_is_refused():
    with pytest.raises(ConfigError, match=r"dataset.must_include_days: \[0, 0\] names one session twice"):
        load_config(None, ["dataset.must_include_days=[0, 0]"])
    with pytest.raises(ConfigError, match="names one session twice"):
        load_config(None, ["dataset.must_include_days=[0, -4]"])  # demo: 4 sessions


def test_validation_probability_all_zero_is_refused(tiny_data, tmp_path, capsys):
    assert main(dry_run(tiny_data, tmp_path, "--set", "dataset.dataset_probability_val=[0, 0, 0]")) == EXIT_CONFIG
    assert one_line(capsys).startswith("config error: dataset.dataset_probability_val: is 0 for every session: "
                                       "validation would be empty")


def test_no_validation_file_anywhere_is_refused(tiny_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data, ignore=shutil.ignore_patterns("data_val.hdf5"))
    assert main(dry_run(data, tmp_path)) == EXIT_CONFIG
    assert one_line(capsys).startswith("config error: dataset.sessions: no session with dataset_probability_val "
                                       "above 0 has validation trials (data_val.hdf5)")


def test_session_without_training_trials_is_refused(tiny_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    session = sorted(p.name for p in data.iterdir())[1]
    bad = "{" + session + ": {" + ", ".join(f"{b}: [{', '.join(map(str, range(20)))}]" for b in range(10)) + "}}"
    main(dry_run(data, tmp_path, "--set", f"dataset.bad_trials_dict={bad}"))
    line = one_line(capsys)
    assert line.startswith("data error: ") and line.endswith(
        f"{session}/data_train.hdf5: no training trials (12 in the file, all excluded by bad_trials_dict)"), line


def test_huge_random_cut_names_random_cut(tiny_data, tmp_path, capsys):
    assert main(dry_run(tiny_data, tmp_path, "--set", "dataset.data_transforms.random_cut=10000")) == EXIT_CONFIG
    assert one_line(capsys).startswith("config error: dataset.data_transforms.random_cut: 10000 may cut the "
                                       "shortest trial in the data")


def test_zero_length_trial_is_a_data_error_naming_it(tiny_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    session = sorted(p.name for p in data.iterdir())[0]
    path = data / session / "data_train.hdf5"
    with h5py.File(path, "a") as f:
        g = f["trial_0000"]
        width = g["input_features"].shape[1]
        del g["input_features"]
        g.create_dataset("input_features", data=np.zeros((0, width), dtype="f4"))
        g.attrs["n_time_steps"] = 0
    assert main(dry_run(data, tmp_path)) == EXIT_DATA
    line = one_line(capsys)
    assert line.startswith("data error: ") and "trial_0000: n_time_steps is 0: the trial holds no neural data" in line


def test_batch_that_cannot_fit_in_memory_is_refused(tiny_data, tmp_path, capsys):
    assert main(dry_run(tiny_data, tmp_path, "--set", "dataset.batch_size=1000000000")) == EXIT_CONFIG
    line = one_line(capsys)
    assert line.startswith("config error: dataset.batch_size: 1000000000 trials of up to ")
    assert "GiB for one training step, more than the" in line and "this machine's RAM" in line


def test_the_tiny_run_passes_every_check(tiny_data, tmp_path, capsys):
    assert main(dry_run(tiny_data, tmp_path)) == EXIT_OK
