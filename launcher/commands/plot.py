"""`plot RUN [RUN ...]`: a PNG of training loss and validation PER against step, runs side by side."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Optional

from . import add_aws_args, command_parser

EXAMPLES = """
python -m launcher plot b2t-demo-20261201-101500                      # a local run under runs/, or a job
python -m launcher plot runs/b2t-demo-A runs/b2t-demo-B -o compare.png
python -m launcher plot b2t-rnn-args-20261129-101500 --no-sessions    # a SageMaker job, running or not
"""
LOCAL_FILES = ("output/data/metrics.jsonl", "output/metrics.jsonl", "metrics.jsonl")  # local run, download, trainer


def add_parser(sub) -> None:
    p = command_parser(
        sub, "plot", "write a PNG of training loss and validation PER against step for one or more runs", EXAMPLES,
        description="write a PNG of training loss and validation PER (per session dashed) against step; each RUN "
                    "is a metrics.jsonl file, a run folder (start --local, download, python -m trainer), a job "
                    "name under --runs-dir, or a SageMaker job (its METRIC log lines, so a running job works too)",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="a run folder, a metrics.jsonl file, or a job name")
    p.add_argument("-o", "--out", type=Path, default=Path("curves.png"), help="PNG to write (default: %(default)s)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where local runs are (default: %(default)s)")
    p.add_argument("--no-sessions", dest="per_session", action="store_false", help="leave out per-session PER")
    add_aws_args(p)
    p.set_defaults(handler=run)


def local_metrics(run: str, runs_dir: Path) -> Optional[Path]:
    """The metrics.jsonl of a local run named by ``run``, or None if it names none."""
    for base in (Path(run), runs_dir / run):
        if base.is_file():
            return base
        for rel in LOCAL_FILES:
            if (base / rel).is_file():
                return base / rel
    return None


def load_runs(names: list[str], runs_dir: Path, args: Optional[argparse.Namespace] = None) -> list[tuple[str, list]]:
    """``(label, records)`` per run: local files first, else the job's log (connecting once)."""
    from launcher.errors import LauncherError, UsageError
    from trainer.metrics import read_metrics

    runs, cloud = [], None
    for name in names:
        path = local_metrics(name, runs_dir)
        if path is not None:
            try:
                records = read_metrics(path)
            except ValueError as e:
                raise UsageError(str(e)) from None
            runs.append((_label(path) or name, records))
            continue
        if args is None or not re.fullmatch(r"[A-Za-z0-9-]+", name):  # not a job name (SageMaker's pattern)
            raise UsageError(f"{name}: no such run folder or metrics.jsonl (nor under {runs_dir})")
        if cloud is None:
            from . import connect

            cloud = connect(args)
        runs.append(_job_run(cloud, args, name))
        if not runs[-1][1]:
            raise LauncherError(f"{runs[-1][0]} has logged no METRIC lines yet (or its log has expired: "
                                f"`download` it and plot runs/{runs[-1][0]})")
    return runs


def _label(path: Path) -> str:
    """The run's folder name: runs/<job>/output/data/metrics.jsonl is <job>."""
    folder = path.resolve().parent
    while folder.name in ("data", "output") and folder.parent != folder:
        folder = folder.parent
    return folder.name


def _job_run(cloud, args: argparse.Namespace, name: str) -> tuple[str, list]:
    from launcher import jobs, watch

    from . import job_name

    aws, outputs = cloud
    args.job = name
    job = job_name(args, outputs)
    jobs.describe(aws, job)  # an unknown job: one line
    return job, watch.log_history(aws, jobs.log_group_of(outputs), job).records


def run(args: argparse.Namespace) -> int:
    from launcher.errors import UsageError
    from trainer.curves import PlotUnavailable, plot_runs

    runs = load_runs(args.runs, args.runs_dir, args)
    try:
        plot_runs(runs, args.out, per_session=args.per_session)
    except PlotUnavailable as e:
        raise UsageError(str(e)) from None
    print(f"wrote {args.out} ({', '.join(label for label, _ in runs)})")
    return 0
