"""`status JOB`: status, secondary status, times, billable seconds, spot savings, last metrics."""

from __future__ import annotations

import argparse

from . import add_aws_args, connect, job_command_parser, job_name

EXAMPLES = """
python -m launcher status b2t-rnn-args-20261129-101500
python -m launcher status rnn-args-20261129-101500     # the stack's prefix may be left out
"""


def add_parser(sub) -> None:
    p = job_command_parser(sub, "status", "show a training job's status, times, cost savings and last metrics", EXAMPLES)
    add_aws_args(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from launcher import jobs, ui

    aws, outputs = connect(args)
    name = job_name(args, outputs)
    desc = jobs.describe(aws, name)
    metrics = None
    if not desc.get("FinalMetricDataList"):
        metrics = jobs.last_logged_metrics(aws, jobs.log_group_of(outputs), name)
    status = jobs.job_status(desc, metrics)
    print(ui.key_values(status.rows()))
    return 0
