"""`start`: validate the config, check the stack, data and image, show the cost, submit."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..request import DEFAULT_MAX_RUN_HOURS
from . import add_aws_args, command_parser

EXAMPLES = """
python -m launcher start --local -y                         # demo: synthetic data, local S3, no AWS
python -m launcher start --local --docker -y                # the same inside the image (docker build -t b2t-training:local .)
python -m launcher start --local --config rnn_args.yaml --data ~/data/hdf5_data_final --num-training-batches 200
python -m launcher start --local --ranks 2 -y                # the demo with 2 data-parallel CPU ranks
python -m launcher start --config rnn_args.yaml --dry-run   # print the request, submit nothing
python -m launcher start --config rnn_args.yaml -y          # managed spot on ml.g5.2xlarge, newest image
python -m launcher start --config rnn_args.yaml --image-tag 3f2a9c1b7d4e -y   # a given pushed image
python -m launcher start --config rnn_args.yaml --instance-type ml.g5.12xlarge --instance-count 2 -y  # 8 GPUs
python -m launcher start --config rnn_args.yaml --instance-type ml.g4dn.xlarge --batch-size 32 \\
    --num-training-batches 1000 --on-demand --max-run 2 --set lr_max=0.004 --wait
"""


def add_parser(sub) -> None:
    p = command_parser(
        sub,
        "start",
        "submit a training job (or run it locally with --local)",
        EXAMPLES,
        "Validate the config with the trainer's own model, read the stack outputs, check that every "
        "configured session is in the data bucket, take the newest image in ECR (or check --image-tag), "
        "show a summary with a cost estimate, ask, and submit a SageMaker training job (managed spot by default)",
    )
    p.add_argument("--config", type=Path, help="reference-format YAML (default with --local: the demo config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set dataset.batch_size=32 (repeatable)")
    p.add_argument("--num-training-batches", type=int, metavar="N", help="shorthand for --set num_training_batches=N")
    p.add_argument("--batch-size", type=int, metavar="N", help="shorthand for --set dataset.batch_size=N")
    g = p.add_argument_group("job")
    g.add_argument("--job-name", help="job name (the stack's prefix is added when missing; default: <prefix>-<config>-<time>)")
    g.add_argument("--instance-type", default="ml.g5.2xlarge", help="default: %(default)s")
    g.add_argument("--instance-count", type=int, default=1, metavar="N",
                   help="instances; the job trains on every GPU of every instance (one torchrun rank per GPU, "
                        "dataset.batch_size stays the global batch; default: %(default)s)")
    g.add_argument("--volume-gb", type=int, default=50, metavar="GB", help="instance volume (default: %(default)s)")
    g.add_argument("--on-demand", action="store_true", help="on-demand instead of managed spot")
    g.add_argument("--no-checkpoints", action="store_true", help="no checkpoint sync (only with --on-demand)")
    g.add_argument("--max-run", type=float, default=DEFAULT_MAX_RUN_HOURS, metavar="HOURS", help="stop after this long (default: %(default)s)")
    g.add_argument("--accept-cut", action="store_true",
                   help="submit even when the run is estimated past --max-run (it stops there; `resume` continues)")
    g.add_argument("--max-wait", type=float, metavar="HOURS", help="spot: give up waiting after this long (default: 2 × --max-run)")
    g.add_argument("--image-tag", metavar="TAG",
                   help="a tag pushed to the stack's ECR repository (default: the newest pushed image; "
                        "see `image --list`)")
    g.add_argument("--data-prefix", default="", metavar="P", help="session folders under <data prefix>/P/ (as `upload --prefix P`)")
    g.add_argument("--dry-run", action="store_true", help="print the request; change nothing")
    g.add_argument("-y", "--yes", action="store_true", help="submit without asking")
    g.add_argument("--wait", action="store_true", help="follow the logs until the job ends")
    loc = p.add_argument_group("local mode")
    loc.add_argument("--local", action="store_true",
                     help="run the same job on this machine, no AWS: in the training image when a Docker daemon "
                          "answers and the image exists, else as a process")
    how = loc.add_mutually_exclusive_group()
    how.add_argument("--docker", dest="runtime", action="store_const", const="docker",
                     help="run the image (docker run IMAGE train, as SageMaker does); fail if Docker cannot")
    how.add_argument("--process", dest="runtime", action="store_const", const="process",
                     help="run the trainer as a process on this machine, even where Docker answers")
    loc.add_argument("--image", default="b2t-training:local",
                     help="local image for --local (default: %(default)s; docker build -t b2t-training:local .)")
    loc.add_argument("--runs-dir", type=Path, default=Path("runs"), help="local jobs and data cache (default: %(default)s)")
    loc.add_argument("--data", type=Path, metavar="DIR", help="local session folders to serve (default: synthetic data)")
    loc.add_argument("--ranks", type=int, default=1, metavar="N",
                     help="train with N processes on the CPU (torchrun, gloo), as a job does on N GPUs (default: %(default)s)")
    add_aws_args(p)
    p.set_defaults(handler=run)


def options(args: argparse.Namespace):
    from launcher.launch import StartOptions

    return StartOptions(
        config=args.config,
        overrides=tuple(args.overrides),
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        num_training_batches=args.num_training_batches,
        batch_size=args.batch_size,
        job_name=args.job_name,
        spot=not args.on_demand,
        checkpoints=not args.no_checkpoints,
        max_run_hours=args.max_run,
        max_wait_hours=args.max_wait,
        image_tag=args.image_tag,
        data_prefix=args.data_prefix,
        volume_gb=args.volume_gb,
    )


def run(args: argparse.Namespace) -> int:
    from launcher import launch

    opts = options(args)
    if args.ranks != 1 and not args.local:
        from launcher.errors import UsageError

        raise UsageError("--ranks is for --local; a job's ranks are its instances' GPUs (--instance-type, --instance-count)")
    if args.local:
        from launcher import local
        from trainer.config import DEMO_CONFIG

        loaded = launch.load(opts.config, opts.all_overrides(), default=DEMO_CONFIG)
        launch.check_options(opts, loaded, local=True)
        return local.run_local(opts, loaded, runs_dir=args.runs_dir, data_dir=args.data, dry_run=args.dry_run,
                               ranks=args.ranks, runtime=args.runtime or local.AUTO, image=args.image)

    # Validate the config and the flags before any AWS call: a typo costs nothing here.
    loaded = launch.load(opts.config, opts.all_overrides())
    launch.check_options(opts, loaded)
    from . import connect

    aws, outputs = connect(args)
    from launcher.errors import NoImage

    try:
        plan = launch.plan_with_image(aws, opts, loaded, outputs)
    except NoImage:
        if not args.dry_run:
            raise
        plan = launch.plan_without_image(opts, loaded, outputs)
    return submit_plan(aws, plan, dry_run=args.dry_run, yes=args.yes, wait=args.wait, accept_cut=args.accept_cut)


def submit_plan(aws, plan, *, dry_run: bool, yes: bool, wait: bool, accept_cut: bool = False) -> int:
    """Pre-flight, summary, confirmation, submission; shared by `start` and `resume`."""
    from launcher import jobs, launch, ui

    # Every check before anything is written: a refused job leaves S3 as it was.
    jobs.check_name_free(aws, plan.outputs, plan.job_name)
    image = plan.image or (None if plan.image_missing else jobs.check_image(aws, plan.outputs, plan.spec.image_tag))
    data_url = plan.request["HyperParameters"]["data_url"]
    jobs.check_sessions(aws, data_url, list(plan.loaded.config.dataset.sessions), plan.loaded.config)
    jobs.check_init_checkpoint(aws, plan.loaded.config)
    print("\n".join(launch.summary_lines(plan, sessions_ok=len(plan.loaded.config.dataset.sessions), image=image)))
    launch.cost_estimate(plan).check_fits(accept_cut)
    if dry_run:
        print("\nCreateTrainingJob request (dry run: nothing uploaded or submitted):")
        print(json.dumps(plan.request, indent=2))
        return 0
    if not yes and not ui.confirm("\nSubmit this job?"):
        print("not submitted")
        return 1
    for uri, body, taken in plan.claims:
        jobs.put_new(aws, uri, body, taken, "application/json")
    launch.upload_channel(aws, plan)
    arn = jobs.submit(aws, plan.request)
    print(f"\nsubmitted {plan.job_name}\n  {arn}")
    print("next:\n" + "\n".join(launch.next_commands(ui.prog(), plan.job_name)))
    if wait:
        from .logs import stream

        status = stream(aws, plan.outputs, plan.job_name, follow=True)
        return jobs.exit_code(status)
    return 0
