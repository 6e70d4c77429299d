"""`-h` on every command, with examples; the help path stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

from launcher.cli import COMMANDS, build_parser, main


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "-h"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "examples:" in out and f"python -m launcher {command}" in out


def test_top_level_help_lists_every_command():
    text = build_parser().format_help()
    assert all(c in text for c in COMMANDS) and "start --local -y" in text


def test_the_cli_never_imports_the_sagemaker_sdk_or_torch():
    code = (
        "import sys; from launcher.cli import main; main(['start', '--local', '--dry-run']); "
        "bad = [m for m in ('sagemaker', 'torch') if m in sys.modules]; print('imported', bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("imported []")
