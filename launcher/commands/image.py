"""`image`: the docker commands that build the training image and push it to the stack's ECR."""

from __future__ import annotations

import argparse
import shlex

from . import add_aws_args, command_parser, connect

EXAMPLES = """
python -m launcher image                 # print the login/build/push commands for tag "latest"
python -m launcher image --tag v3 --run  # run them (needs a docker engine)
python -m launcher image --list          # tags already in the repository
"""


def add_parser(sub) -> None:
    p = command_parser(sub, "image", "build and push the training image (docker commands)", EXAMPLES)
    p.add_argument("--tag", default="latest", help="image tag (default: %(default)s)")
    p.add_argument("--run", dest="execute", action="store_true", help="run the commands instead of printing them")
    p.add_argument("--list", action="store_true", help="list the tags in the ECR repository")
    add_aws_args(p)
    p.set_defaults(handler=run)


def commands(repo_uri: str, region: str, tag: str) -> list[list[str]]:
    registry = repo_uri.split("/", 1)[0]
    return [
        ["sh", "-c", f"aws ecr get-login-password --region {region} | docker login --username AWS --password-stdin {registry}"],
        ["docker", "build", "--platform", "linux/amd64", "-t", f"{repo_uri}:{tag}", "."],
        ["docker", "push", f"{repo_uri}:{tag}"],
    ]


def run(args: argparse.Namespace) -> int:
    import subprocess

    from launcher.aws import aws_errors
    from launcher.errors import LauncherError

    aws, outputs = connect(args)
    if args.list:
        with aws_errors(f"listing images of {outputs.ecr_repository_name}"):
            pages = aws.client("ecr").get_paginator("describe_images").paginate(repositoryName=outputs.ecr_repository_name)
            images = [i for page in pages for i in page.get("imageDetails", [])]
        for image in sorted(images, key=lambda i: str(i.get("imagePushedAt", "")), reverse=True):
            print(f"{','.join(image.get('imageTags', ['<untagged>'])):30} {image.get('imagePushedAt', '')}")
        return 0
    steps = commands(outputs.ecr_repository_uri, aws.region, args.tag)
    if not args.execute:
        for step in steps:
            print(step[2] if step[0] == "sh" else shlex.join(step))
        return 0
    for step in steps:
        print(f"$ {step[2] if step[0] == 'sh' else shlex.join(step)}", flush=True)
        try:
            code = subprocess.call(step)
        except FileNotFoundError as e:
            raise LauncherError(f"{step[0]} not found: install docker (and the AWS CLI) to build the image") from e
        if code:
            raise LauncherError(f"`{shlex.join(step[:2])}` failed with exit code {code}")
    print(f"pushed {outputs.ecr_repository_uri}:{args.tag}; next: python -m launcher start --config FILE --image-tag {args.tag}")
    return 0
