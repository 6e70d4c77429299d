"""`resume JOB`: a new job that continues from JOB's checkpoints, with JOB's config and overrides."""

from __future__ import annotations

import argparse

from . import add_aws_args, connect, job_command_parser, job_name

EXAMPLES = """
python -m launcher resume b2t-rnn-args-20261129-101500 -y
python -m launcher resume b2t-rnn-args-20261129-101500 --on-demand --max-run 12
python -m launcher resume b2t-rnn-args-20261129-101500 --num-training-batches 240000   # a Completed job, further
"""


def add_parser(sub) -> None:
    p = job_command_parser(
        sub, "resume", "continue a stopped or failed job from its checkpoints", EXAMPLES,
        "Submit a new job with the first job's config, overrides, data and image, pointed at the same "
        "checkpoint S3 prefix so the trainer restores the latest checkpoint. The jobs sharing a checkpoint "
        "prefix form a lineage: only its newest job can be resumed, never while one of it runs, and a "
        "Completed job only with --num-training-batches above its own",
    )
    p.add_argument("--num-training-batches", type=int, metavar="N",
                   help="train up to N batches in all (needed to resume a Completed job)")
    p.add_argument("--job-name", help="name of the new job (default: <first job of the lineage>-r<N>)")
    p.add_argument("--instance-type", help="default: the first job's")
    p.add_argument("--instance-count", type=int, metavar="N",
                   help="default: the first job's (a checkpoint resumes on any number of GPUs)")
    p.add_argument("--on-demand", action="store_true", help="on-demand instead of managed spot")
    p.add_argument("--max-run", type=float, metavar="HOURS", help="default: the first job's")
    p.add_argument("--accept-cut", action="store_true",
                   help="submit even when the rest of the run is estimated past --max-run")
    p.add_argument("--image-tag", help="default: the first job's")
    p.add_argument("--dry-run", action="store_true", help="print the request; change nothing")
    p.add_argument("-y", "--yes", action="store_true", help="submit without asking")
    p.add_argument("--wait", action="store_true", help="follow the logs until the job ends")
    add_aws_args(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from launcher import resume

    from .start import submit_plan

    aws, outputs = connect(args)
    plan = resume.plan_resume(
        aws,
        outputs,
        job_name(args, outputs),
        new_name=args.job_name,
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        on_demand=args.on_demand,
        max_run_hours=args.max_run,
        image_tag=args.image_tag,
        num_training_batches=args.num_training_batches,
    )
    return submit_plan(aws, plan, dry_run=args.dry_run, yes=args.yes, wait=args.wait, accept_cut=args.accept_cut)
