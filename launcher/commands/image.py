"""`image`: the docker commands that build the training image and push it to the stack's ECR.

The stack's repository has immutable tags (infra/registry.py), so every push needs a tag of
its own: by default the working tree's git commit, with ``-dirty-<UTC time>`` when it has
uncommitted changes. `start` without --image-tag takes the newest pushed image.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
from pathlib import Path
from typing import Callable, Optional, Sequence

from . import add_aws_args, command_parser, connect

EXAMPLES = """
python -m launcher image                 # print the login/build/push commands, tagged with the git commit
python -m launcher image --run           # run them (needs a docker engine); `start` then uses this image
python -m launcher image --tag v3 --run  # a tag of your own (each tag can be pushed once)
python -m launcher image --list          # the images in the repository, newest first
"""

# git(args, cwd) -> its stdout, or None when git is missing or fails (not a repository...).
Git = Callable[[Sequence[str], Optional[Path]], Optional[str]]


def add_parser(sub) -> None:
    p = command_parser(
        sub, "image", "build and push the training image (docker commands)", EXAMPLES,
        "Print (or --run) the docker commands that build the training image and push it to the "
        "stack's ECR repository. Its tags are immutable, so the default tag is the git commit "
        "(12 characters), with -dirty-<UTC yyyymmddHHMMSS> when the working tree has changes, "
        "or build-<UTC yyyymmddHHMMSS> outside a git checkout",
    )
    p.add_argument("--tag", help="image tag (default: the git commit, see above)")
    p.add_argument("--run", dest="execute", action="store_true", help="run the commands instead of printing them")
    p.add_argument("--list", action="store_true", help="list the images in the ECR repository, newest first")
    add_aws_args(p)
    p.set_defaults(handler=run)


def _git(args: Sequence[str], cwd: Optional[Path]) -> Optional[str]:
    import subprocess

    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def default_tag(cwd: Optional[Path] = None, *, now: Optional[dt.datetime] = None, git: Git = _git) -> tuple[str, str]:
    """``(tag, where it comes from)`` for an image built from the working tree at ``cwd``."""
    stamp = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc).strftime("%Y%m%d%H%M%S")
    commit = git(["rev-parse", "--short=12", "HEAD"], cwd)
    if not commit:
        return f"build-{stamp}", "no git commit here: a UTC timestamp"
    changes = git(["status", "--porcelain"], cwd)
    if changes is None or changes:  # unknown counts as changed: a dirty tag never collides
        return f"{commit}-dirty-{stamp}", f"git commit {commit} with uncommitted changes"
    return commit, f"git commit {commit}"


def commands(repo_uri: str, region: str, tag: str) -> list[list[str]]:
    registry = repo_uri.split("/", 1)[0]
    return [
        ["sh", "-c", f"aws ecr get-login-password --region {region} | docker login --username AWS --password-stdin {registry}"],
        ["docker", "build", "--platform", "linux/amd64", "-t", f"{repo_uri}:{tag}", "."],
        ["docker", "push", f"{repo_uri}:{tag}"],
    ]


def show(step: list[str]) -> str:
    return step[2] if step[0] == "sh" else shlex.join(step)


def run(args: argparse.Namespace) -> int:
    import subprocess

    from launcher import jobs
    from launcher.errors import ImageNotPushed, LauncherError
    from launcher.preflight import check_image_tag

    check_image_tag(args.tag, "--tag")
    aws, outputs = connect(args)
    repo = outputs.ecr_repository_name
    if args.list:
        images = jobs.list_images(aws, outputs)
        newest = next((i for i in images if i.get("imageTags")), None)
        for image in images:
            mark = "  <- newest: what `start` uses without --image-tag" if image is newest else ""
            print(f"{','.join(image.get('imageTags') or ['<untagged>']):40} {image.get('imagePushedAt', '')}{mark}")
        if not images:
            print(f"no image in {repo} yet: build and push one with `python -m launcher image --run`")
        return 0
    tag, source = (args.tag, "--tag") if args.tag else default_tag()
    steps = commands(outputs.ecr_repository_uri, aws.region, tag)
    if not args.execute:
        print(f"# image tag {tag} ({source})")
        for step in steps:
            print(show(step))
        return 0
    print(f"image tag {tag} ({source})")
    try:
        jobs.check_image(aws, outputs, tag)
    except ImageNotPushed:
        pass
    else:
        if args.tag:
            raise LauncherError(f"tag {tag!r} is already in {repo} and its tags are immutable: pick another --tag")
        print(f"{outputs.ecr_repository_uri}:{tag} is already pushed (this commit): nothing to build; "
              f"`start` takes the newest image, so pass --image-tag {tag} to use this one")
        return 0
    for step in steps:
        print(f"$ {show(step)}", flush=True)
        try:
            code = subprocess.call(step)
        except FileNotFoundError as e:
            raise LauncherError(f"{step[0]} not found: install docker (and the AWS CLI) to build the image") from e
        if code:
            raise LauncherError(f"`{shlex.join(step[:2])}` failed with exit code {code}")
    print(f"pushed {outputs.ecr_repository_uri}:{tag}; next: python -m launcher start --config FILE "
          f"(takes the newest image, this one; or --image-tag {tag})")
    return 0
