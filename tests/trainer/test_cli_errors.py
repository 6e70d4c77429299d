"""Bad input to the command lines: one line naming the problem and a non-zero exit, no traceback."""

from __future__ import annotations

import pytest

from trainer import synthetic
from trainer.__main__ import EXIT_CONFIG, EXIT_FAILED, main
from trainer.evaluate import main as evaluate_main

from tests.trainer.trainer_helpers import set_args, tiny_overrides


@pytest.mark.parametrize("flag,value", [("--sessions", "0"), ("--sessions", "-1"), ("--train-trials", "0"),
                                        ("--val-trials", "-3"), ("--features", "0")])
def test_synthetic_rejects_counts_below_one(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as caught:
        synthetic.main(["--out", str(tmp_path / "out"), flag, value])
    assert caught.value.code == 2
    assert f"{flag} must be at least" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_synthetic_unwritable_output_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert synthetic.main(["--out", str(tmp_path / "file" / "out"), "--sessions", "1", "--train-trials", "1",
                           "--val-trials", "0", "--features", "4"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the data set: ") and err.count("\n") == 1


def test_train_unwritable_output_is_one_line(tiny_data, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "run"
    assert main(["--data", str(tiny_data), "--output", str(out), *set_args(tiny_overrides(tiny_data))]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err == f"file error: {out}: Not a directory\n"


def test_evaluate_damaged_model_file_is_a_config_error(tiny_data, tmp_path, capsys):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.pt").write_bytes(b"not a model")
    assert evaluate_main(["--model", str(model_dir), "--data", str(tiny_data)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith(f"config error: --model: {model_dir} is not a model written by training (")
    assert err.count("\n") == 1
