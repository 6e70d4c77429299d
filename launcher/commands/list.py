"""`list`: this project's recent training jobs as a table."""

from __future__ import annotations

import argparse

from . import add_aws_args, command_parser, connect

EXAMPLES = """
python -m launcher list
python -m launcher list -n 50 --status Failed
"""
STATUSES = ("InProgress", "Completed", "Failed", "Stopping", "Stopped")


def add_parser(sub) -> None:
    p = command_parser(sub, "list", "list this project's recent training jobs", EXAMPLES)
    p.add_argument("-n", "--max", type=int, default=20, metavar="N", help="at most N jobs (default: %(default)s)")
    p.add_argument("--status", choices=STATUSES, help="only jobs in this state")
    add_aws_args(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from launcher import jobs, ui

    aws, outputs = connect(args)
    found = jobs.list_jobs(aws, outputs.job_name_prefix, args.max, args.status)
    if not found:
        print(f"no training jobs named {outputs.job_name_prefix}-* in {aws.region}")
        return 0
    rows = [
        (
            j["TrainingJobName"],
            j.get("TrainingJobStatus", "?"),
            jobs.format_time(j.get("CreationTime")),
            jobs.format_time(j.get("TrainingEndTime")),
        )
        for j in found
    ]
    print(ui.table(("JOB", "STATUS", "CREATED", "ENDED"), rows))
    return 0
