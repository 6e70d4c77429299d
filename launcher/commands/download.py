"""`download JOB`: the model artifact and outputs (metrics), extracted; checkpoints optionally."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import add_aws_args, connect, job_command_parser, job_name

EXAMPLES = """
python -m launcher download b2t-rnn-args-20261129-101500                  # into ./runs/<job>/
python -m launcher download b2t-rnn-args-20261129-101500 --to results --checkpoints
python -m launcher download b2t-rnn-args-20261129-101500 --force     # replace what an earlier download left
"""


def add_parser(sub) -> None:
    p = job_command_parser(sub, "download", "download and extract a finished job's model and metrics", EXAMPLES)
    p.add_argument("--to", type=Path, default=Path("runs"), metavar="DIR", help="parent folder (default: %(default)s)")
    p.add_argument("--checkpoints", action="store_true", help="also the checkpoints (works while the job runs)")
    p.add_argument("--force", action="store_true", help="overwrite files already in <DIR>/<job>/")
    add_aws_args(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from launcher import jobs
    from launcher.errors import UsageError

    if args.to.exists() and not args.to.is_dir():
        raise UsageError(f"--to {args.to} is a file, not a folder")
    aws, outputs = connect(args)
    name = job_name(args, outputs)
    got = jobs.download(aws, name, args.to, checkpoints=args.checkpoints, force=args.force)
    print(f"{name} → {got.job_dir}")
    for path in got.files:
        print(f"  {path}")
    metrics = [p for p in got.files if p.name.startswith("metrics")]
    if metrics:
        print(f"metrics: {', '.join(map(str, metrics))}")
    if got.checkpoints is not None:
        print(f"checkpoints: {got.job_dir / 'checkpoints'} ({got.checkpoints.summary('downloaded')})")
    return 0
