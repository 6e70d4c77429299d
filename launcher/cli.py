"""`python -m launcher` / `b2t`: one sub-command per module in launcher/commands/.

This module only wires argparse to the commands and turns errors into exit codes: a user
error (a config problem, a missing stack, an absent image, a local path that cannot be
written, a number flag that is not above 0...) prints one line and exits non-zero; a reader
that closes the pipe (``logs JOB | head``) ends it quietly; anything else is a bug, reported
in one line too, with its traceback under ``-v``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Optional, Sequence

COMMANDS = ("start", "status", "list", "logs", "plot", "stop", "download", "upload", "resume", "image")

DESCRIPTION = """\
Train the Brain-to-Text decoder on SageMaker from the B2tSageMaker stack's outputs.

examples:
  python -m launcher start --local -y                     # no AWS: synthetic data, local S3, this machine
  python -m launcher upload ~/data/hdf5_data_final        # sync sessions to the data bucket
  python -m launcher image --run                          # build and push the image, tagged with the git commit
  python -m launcher start --config rnn_args.yaml --dry-run
  python -m launcher start --config rnn_args.yaml -y      # with the newest pushed image
  python -m launcher logs JOB --follow
  python -m launcher download JOB
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m launcher",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the launcher does")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"launcher.commands.{name}")
        module.add_parser(sub)
    return parser


def bad_number(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Optional[str]:
    """The launcher's number flags are counts and sizes (whole numbers above 0) or durations
    (finite, not negative; the commands check their own ranges beyond that)."""
    import math

    command = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]
    for action in command._actions:
        value = getattr(args, action.dest, None)
        flag = "/".join(action.option_strings)
        if value is None:
            continue
        if action.type is int and value < 1:
            return f"{flag}: must be a whole number above 0, got {value}"
        if action.type is float and not (math.isfinite(value) and value >= 0):
            return f"{flag}: must be a number of 0 or more, got {value:g}"
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = bad_number(parser, args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.verbose:
        _log_to_stderr()
    try:
        return _run(args)
    except BrokenPipeError:
        # The reader went away (`logs JOB | head -1`): stop quietly, as `cat` would. Python's
        # documentation, "Note on SIGPIPE": point stdout at devnull so that the flush at exit
        # does not raise again.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a reader that stopped early


def _run(args: argparse.Namespace) -> int:
    from trainer.config import ConfigError

    from .errors import LauncherError

    try:
        return int(args.handler(args) or 0)
    except ConfigError as e:
        print(f"error: config: {e}", file=sys.stderr)
        return 2
    except LauncherError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise  # main() ends quietly
    except OSError as e:
        if e.filename is None:  # not about a local file: a bug (below)
            return _bug(args, e)
        print(f"error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug, not the user's input: one line, the traceback with -v
        return _bug(args, e)


def _bug(args: argparse.Namespace, e: BaseException) -> int:
    if args.verbose:
        raise e
    first = (str(e).strip().splitlines() or [""])[0]
    print(f"error: internal error, a bug in the launcher ({type(e).__name__}: {first}); rerun with -v for "
          "the traceback and report it", file=sys.stderr)
    return 1


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (it may be swapped after set-up)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _log_to_stderr() -> None:
    # Without -v nothing is configured: Python's last-resort handler shows warnings only.
    root = logging.getLogger()
    if not any(isinstance(h, _CurrentStderr) for h in root.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    logging.getLogger("launcher").setLevel(logging.INFO)
