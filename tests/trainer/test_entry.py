"""`python -m trainer` as SageMaker starts it: `train`, no argument, and every failure as one line."""

from __future__ import annotations

import json

import pytest

from trainer.__main__ import EXIT_CONFIG, EXIT_FAILED, main
from trainer.contract import FAILURE_REASON_LIMIT, ROOT_ENV, one_line


@pytest.fixture
def opt_ml(tmp_path):
    root = tmp_path / "ml"
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps({"config_file": "demo.yaml"}))
    return root


def failure(root) -> str:
    text = (root / "output" / "failure").read_text()
    assert text.count("\n") == 1 and text.endswith("\n")
    return text.strip()


def test_train_outside_a_job_is_a_bad_invocation(tmp_path, capsys):
    assert main(["train"], env={ROOT_ENV: str(tmp_path / "none")}) == EXIT_CONFIG
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bad invocation: 'python -m trainer train' runs a SageMaker job, but there is none here")


def test_a_bad_command_line_in_a_job_leaves_one_line(opt_ml, capsys):
    assert main(["--epochs", "3"], env={ROOT_ENV: str(opt_ml)}) == EXIT_CONFIG
    assert failure(opt_ml) == "bad invocation: unrecognized arguments: --epochs 3"
    assert "usage: python -m trainer" in capsys.readouterr().err  # argparse's usage stays in the log


@pytest.mark.parametrize("argv", [["train"], []])
def test_an_unexpected_error_leaves_one_line_and_a_traceback(opt_ml, monkeypatch, capsys, argv):
    import trainer.environment

    def boom(*_a, **_k):
        raise KeyError("a\nb")

    monkeypatch.setattr(trainer.environment, "build_config", boom)
    assert main(argv, env={ROOT_ENV: str(opt_ml)}) == EXIT_FAILED
    assert failure(opt_ml) == "internal error: KeyError: 'a\\nb'"
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_reasons_fit_what_sagemaker_shows():
    assert one_line("x" * 5000) == "x" * (FAILURE_REASON_LIMIT - 1) + "…"
    assert one_line("Caught X in worker.\n  Original Traceback\n  boom") == "Caught X in worker.; Original Traceback; boom"
