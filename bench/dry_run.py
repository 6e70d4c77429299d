"""Wall time of `python -m launcher start --config demo.yaml --dry-run` against a local stack.

A moto server on 127.0.0.1 holds a stack with the launcher's output keys, a pushed image
and the demo sessions (set-up, not timed). Each timed run is a fresh interpreter doing what
a user's dry run does: validate the config, read the stack, check sessions and image, build
and validate the request, print it. Goal: ≤ 1.5 s. Last line: ``dry_run_seconds=<median>``.

    .venv/bin/python bench/dry_run.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra import outputs as keys  # noqa: E402

GOAL_S = 1.5
SESSIONS = ["t15.2023.08.11", "t15.2023.08.13", "t15.2023.08.15", "t15.2023.08.17"]
ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


def template() -> dict:
    """The stack's outputs over minimal resources (the launcher reads nothing else)."""
    outputs = {
        keys.DATA_BUCKET: {"Ref": "Data"},
        keys.OUTPUT_BUCKET: {"Ref": "Output"},
        keys.EXECUTION_ROLE_ARN: "arn:aws:iam::123456789012:role/bench-execution",
        keys.ECR_REPOSITORY_URI: {"Fn::GetAtt": ["Repo", "RepositoryUri"]},
        keys.ECR_REPOSITORY_NAME: {"Ref": "Repo"},
        keys.TRAINING_LOG_GROUP: keys.TRAINING_LOG_GROUP_NAME,
        keys.REGION: {"Ref": "AWS::Region"},
        keys.JOB_NAME_PREFIX: "b2t",
        keys.DATA_PREFIX: keys.DATA_KEY_PREFIX,
    }
    return {
        "Resources": {
            "Data": {"Type": "AWS::S3::Bucket"},
            "Output": {"Type": "AWS::S3::Bucket"},
            "Repo": {"Type": "AWS::ECR::Repository", "Properties": {"RepositoryName": "b2t-training"}},
        },
        "Outputs": {k: {"Value": v} for k, v in outputs.items()},
    }


def set_up(url: str) -> None:
    import boto3

    def client(service):
        return boto3.client(service, endpoint_url=url, region_name="us-east-1",
                            aws_access_key_id="bench", aws_secret_access_key="bench")

    cfn = client("cloudformation")
    cfn.create_stack(StackName=keys.DEFAULT_STACK_NAME, TemplateBody=json.dumps(template()))
    out = {o["OutputKey"]: o["OutputValue"]
           for o in cfn.describe_stacks(StackName=keys.DEFAULT_STACK_NAME)["Stacks"][0]["Outputs"]}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1,
                           "digest": "sha256:" + "b" * 64}, "layers": []}
    client("ecr").put_image(repositoryName="b2t-training", imageManifest=json.dumps(manifest), imageTag="latest")
    for session in SESSIONS:
        for name in ("data_train.hdf5", "data_val.hdf5"):  # start refuses a run whose validation would be empty
            client("s3").put_object(Bucket=out[keys.DATA_BUCKET], Key=f"data/{session}/{name}", Body=b"x")


CPU: dict[str, list[float]] = {}


def time_command(args: list[str], env: dict) -> float:
    """Wall seconds of one run; its CPU seconds (user+sys, load-independent) go to CPU."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "launcher", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"launcher failed ({proc.returncode}): {proc.stderr.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    CPU.setdefault(" ".join(a for a in args if not a.startswith("/")), []).append(cpu)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        url = f"http://127.0.0.1:{port}"
        set_up(url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(ENV, AWS_ENDPOINT_URL=url)
        demo = str(ROOT / "trainer" / "configs" / "demo.yaml")
        time_command(["start", "--config", demo, "--dry-run"], env)  # warm the OS file cache
        cloud = [time_command(["start", "--config", demo, "--dry-run"], env) for _ in range(args.runs)]
        local = [time_command(["start", "--local", "--dry-run"], env) for _ in range(args.runs)]
        helps = [time_command(["start", "-h"], env) for _ in range(args.runs)]
    finally:
        server.stop()
    load = os.getloadavg()[0]
    print(f"runs={args.runs}, wall median (min..max), CPU median; load average {load:.1f} on {os.cpu_count()} CPUs")
    for name, values, cmd in (
        ("start -h", helps, "start -h"),
        ("start --local --dry-run", local, "start --local --dry-run"),
        ("start --dry-run", cloud, "start --config --dry-run"),
    ):
        cpu = statistics.median(CPU[cmd][-args.runs:])
        print(f"{name:26} {statistics.median(values):.3f} s ({min(values):.3f}..{max(values):.3f}), cpu {cpu:.3f} s")
    median = statistics.median(cloud)
    print(f"goal ≤ {GOAL_S} s: {'met' if median <= GOAL_S else 'MISSED'}")
    print(f"dry_run_seconds={median:.3f}")


if __name__ == "__main__":
    main()
