"""`stop JOB`: ask SageMaker to stop a job (the trainer gets SIGTERM and ~120 s to checkpoint)."""

from __future__ import annotations

import argparse

from . import add_aws_args, connect, job_command_parser, job_name

EXAMPLES = """
python -m launcher stop b2t-rnn-args-20261129-101500
python -m launcher resume b2t-rnn-args-20261129-101500   # later: continue from its checkpoints
"""


def add_parser(sub) -> None:
    p = job_command_parser(sub, "stop", "stop a running training job", EXAMPLES)
    add_aws_args(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from launcher import jobs, ui

    aws, outputs = connect(args)
    name = job_name(args, outputs)
    before = jobs.stop(aws, name)
    if before in jobs.TERMINAL or before == "Stopping":
        print(f"{name} is already {before}; nothing to stop")
        return 0
    print(f"stopping {name} (it was {before}); the trainer has ~120 s to save a checkpoint")
    print(f"next:\n  {ui.prog()} status {name}\n  {ui.prog()} resume {name}")
    return 0
