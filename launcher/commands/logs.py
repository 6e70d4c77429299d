"""`logs JOB [--follow]`: the job's CloudWatch log, optionally until it ends."""

from __future__ import annotations

import argparse
import sys

from . import add_aws_args, connect, job_command_parser, job_name

EXAMPLES = """
python -m launcher logs b2t-rnn-args-20261129-101500
python -m launcher logs b2t-rnn-args-20261129-101500 --follow     # until the job ends
python -m launcher logs b2t-rnn-args-20261129-101500 | grep METRIC
"""


def add_parser(sub) -> None:
    p = job_command_parser(sub, "logs", "print a training job's log (CloudWatch Logs)", EXAMPLES)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    p.add_argument("--poll", type=float, default=5.0, metavar="S", help="seconds between polls (default: %(default)s)")
    add_aws_args(p)
    p.set_defaults(handler=run)


def stream(aws, outputs, job: str, *, follow: bool, poll_s: float = 5.0) -> str:
    """Print the log lines; returns the job's final status."""
    from launcher import jobs

    status = jobs.describe(aws, job)["TrainingJobStatus"]  # unknown job: one-line error first
    printed = 0
    for line in jobs.follow_logs(aws, jobs.log_group_of(outputs), job, follow=follow, poll_s=poll_s):
        print(line, flush=True)
        printed += 1
    if not printed and not follow:
        print(f"{job} ({status}) has logged nothing yet: its log stream appears once the instance starts; "
              "--follow waits for it", file=sys.stderr)
    if follow:
        status = jobs.describe(aws, job)["TrainingJobStatus"]
        print(f"-- {job}: {status}")
    return status


def run(args: argparse.Namespace) -> int:
    aws, outputs = connect(args)
    stream(aws, outputs, job_name(args, outputs), follow=args.follow, poll_s=args.poll)
    return 0
