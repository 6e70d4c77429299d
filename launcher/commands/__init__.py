"""One module per command: ``add_parser(subparsers)`` declares it, ``run(args)`` calls the core."""

from __future__ import annotations

import argparse
import textwrap

from infra.outputs import DEFAULT_STACK_NAME


def command_parser(sub, name: str, help: str, examples: str, description: str = "") -> argparse.ArgumentParser:
    body = (description or help).rstrip(".") + ".\n\nexamples:\n" + textwrap.indent(textwrap.dedent(examples).strip(), "  ")
    return sub.add_parser(
        name, help=help, description=body, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def job_command_parser(sub, name: str, help: str, examples: str, description: str = "") -> argparse.ArgumentParser:
    """A command acting on one job, named by its ``JOB`` argument."""
    p = command_parser(sub, name, help, examples, description)
    p.add_argument("job", metavar="JOB", help="training job name (the stack's prefix may be left out)")
    return p


def add_aws_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("AWS")
    g.add_argument("--stack", default=DEFAULT_STACK_NAME, help="CloudFormation stack name (default: %(default)s)")
    g.add_argument("--region", help="AWS region (default: AWS_REGION / your profile's region)")
    g.add_argument("--profile", help="AWS profile (default: AWS_PROFILE / default)")


def connect(args: argparse.Namespace):
    """The boto3 session and the stack outputs for ``args``."""
    from launcher.aws import Aws
    from launcher.stack import read_stack_outputs

    aws = Aws(region=args.region, profile=args.profile)
    return aws, read_stack_outputs(aws, args.stack)


def job_name(args: argparse.Namespace, outputs) -> str:
    """Accept the job name with or without the project prefix."""
    prefix = outputs.job_name_prefix + "-"
    return args.job if args.job.startswith(prefix) else prefix + args.job
