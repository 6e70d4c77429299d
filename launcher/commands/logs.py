"""`logs JOB [--follow] [--tail N] [--since T]`: the job's CloudWatch log with timestamps.

The exit status says how the job ended, as for ``start --wait``: 1 if it Failed or was
Stopped, else 0 (also for a job still running without ``--follow``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from typing import Optional

from . import add_aws_args, connect, job_command_parser, job_name

EXAMPLES = """
python -m launcher logs b2t-rnn-args-20261129-101500
python -m launcher logs b2t-rnn-args-20261129-101500 --tail 50 --follow   # the last 50 lines, then until it ends
python -m launcher logs b2t-rnn-args-20261129-101500 --since 30m
python -m launcher logs b2t-rnn-args-20261129-101500 --no-timestamps | grep METRIC
"""
_SINCE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_parser(sub) -> None:
    p = job_command_parser(sub, "logs", "print a training job's log (CloudWatch Logs)", EXAMPLES)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    p.add_argument("-n", "--tail", type=int, metavar="N", help="only the last N lines (then new ones with --follow)")
    p.add_argument("--since", metavar="T", help="only lines after T: a duration back from now (90s, 30m, 2h, 1d) "
                                                "or a UTC time (2026-11-29T10:15:00)")
    p.add_argument("--no-timestamps", dest="timestamps", action="store_false",
                   help="print the messages alone (each line starts with its UTC time otherwise)")
    p.add_argument("--poll", type=float, default=5.0, metavar="S", help="seconds between polls (default: %(default)s)")
    add_aws_args(p)
    p.set_defaults(handler=run)


def since_ms(value: Optional[str], now: Optional[dt.datetime] = None) -> Optional[int]:
    """``--since`` as milliseconds since the epoch; :class:`UsageError` for anything else."""
    from launcher.errors import UsageError

    if value is None:
        return None
    now = now or dt.datetime.now(dt.timezone.utc)
    m = _SINCE.match(value.strip())
    if m:
        return int((now.timestamp() - float(m.group(1)) * _UNIT_S[m.group(2)]) * 1000)
    try:
        when = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--since {value!r}: give a duration (90s, 30m, 2h, 1d) or a time (2026-11-29T10:15:00)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp() * 1000)


def stream(aws, outputs, job: str, *, follow: bool, poll_s: float = 5.0, tail: Optional[int] = None,
           start_ms: Optional[int] = None, timestamps: bool = False) -> str:
    """Print the log lines; returns the job's status at the end."""
    from launcher import jobs, ui

    status = jobs.describe(aws, job)["TrainingJobStatus"]  # unknown job: one-line error first
    group = jobs.log_group_of(outputs)

    def show(event) -> None:
        text = event["message"].rstrip("\n")
        print(f"{ui.log_time(event['timestamp'])}  {text}" if timestamps else text, flush=True)

    printed = 0
    if tail is not None:
        newest = jobs.tail_events(aws, group, job, tail, start_ms)
        for event in newest:
            show(event)
        printed += len(newest)
        if newest:  # --follow goes on after the last line shown (its millisecond included)
            start_ms = newest[-1]["timestamp"] + 1
    if tail is None or follow:
        for event in jobs.follow_events(aws, group, job, follow=follow, poll_s=poll_s, start_ms=start_ms):
            show(event)
            printed += 1
    if not printed and not follow:
        print(f"{job} ({status}) has logged nothing yet: its log stream appears once the instance starts; "
              "--follow waits for it", file=sys.stderr)
    if follow:
        desc = jobs.describe(aws, job)
        status = desc["TrainingJobStatus"]
        reason = f": {desc['FailureReason']}" if desc.get("FailureReason") and status == "Failed" else ""
        print(f"-- {job}: {status}{reason}")
    return status


def run(args: argparse.Namespace) -> int:
    from launcher import jobs
    from launcher.errors import UsageError

    if args.tail is not None and args.tail < 0:
        raise UsageError("--tail must be 0 or more")
    start_ms = since_ms(args.since)
    aws, outputs = connect(args)
    status = stream(aws, outputs, job_name(args, outputs), follow=args.follow, poll_s=args.poll, tail=args.tail,
                    start_ms=start_ms, timestamps=args.timestamps)
    if not args.follow and status in ("Failed", "Stopped"):
        print(f"-- {job_name(args, outputs)}: {status}", file=sys.stderr)
    return jobs.exit_code(status)
