"""`list`: this project's recent training jobs as a table, newest first."""

from __future__ import annotations

import argparse

from . import add_aws_args, command_parser, connect

EXAMPLES = """
python -m launcher list
python -m launcher list -n 50 --status Failed
"""
STATUSES = ("InProgress", "Completed", "Failed", "Stopping", "Stopped")
HEADERS = ("JOB", "STATE", "INSTANCE", "SPOT", "STARTED", "DURATION", "COST", "BEST PER", "CONFIG")


def add_parser(sub) -> None:
    p = command_parser(sub, "list", "list this project's recent training jobs", EXAMPLES)
    p.add_argument("-n", "--max", type=int, default=20, metavar="N", help="at most N jobs (default: %(default)s)")
    p.add_argument("--status", "--state", dest="status", choices=STATUSES, help="only jobs in this state")
    add_aws_args(p)
    p.set_defaults(handler=run)


def table_row(row) -> tuple[str, ...]:
    """One line of the table for a :class:`launcher.watch.Row`."""
    from launcher import ui

    d, st = row.desc, row.status
    rc = d.get("ResourceConfig", {})
    count = rc.get("InstanceCount", 1)
    cost = ui.money(st.cost_usd)
    return (
        st.name,
        st.state,
        (f"{count}×" if count > 1 else "") + rc.get("InstanceType", "?"),
        "spot" if st.spot else "-",
        ui.when(d.get("TrainingStartTime") or d.get("CreationTime")).removesuffix(" UTC"),
        ui.duration(st.elapsed_s),
        ("≤" + cost if st.running and st.spot and st.cost_usd is not None else cost),
        ui.number(row.best_per),
        row.config,
    )


def run(args: argparse.Namespace) -> int:
    from launcher import jobs, ui, watch

    aws, outputs = connect(args)
    found = jobs.list_jobs(aws, outputs.job_name_prefix, args.max, args.status)
    if not found:
        print(f"no training jobs named {outputs.job_name_prefix}-* in {aws.region}"
              + (f" with state {args.status}" if args.status else ""))
        return 0
    rows = watch.list_rows(aws, jobs.log_group_of(outputs), found)
    print(ui.table(HEADERS, [table_row(r) for r in rows]))
    print("times in UTC; cost: billable time at the on-demand rate (≤: still running on spot, billed less)")
    return 0
