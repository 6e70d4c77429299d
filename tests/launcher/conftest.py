"""Fixtures for the launcher tests: the CDK stack deployed into the module's moto server.

The real CDK app is synthesized once per session (~6 s) and created in moto with boto3's
``create_stack`` (see /work/shared/notes/cdk-offline.md). The launcher finds moto through
boto3's own ``AWS_ENDPOINT_URL``, exactly as it would find any other endpoint.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from infra import outputs as keys

from tests.infra.moto_template import for_moto

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
DEMO_SESSIONS = ["t15.2023.08.11", "t15.2023.08.13", "t15.2023.08.15", "t15.2023.08.17"]


@pytest.fixture(autouse=True)
def quiet_moto_server():
    """The module's moto server runs in this process: keep its request log out of stderr."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def stack_template(tmp_path_factory) -> dict:
    """The template `npx cdk synth` would deploy, from the project's own CDK app."""
    from infra.app import build_app

    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    app, stack = build_app(
        {**context, "account": ACCOUNT, "region": REGION}, outdir=str(tmp_path_factory.mktemp("cdk.out"))
    )
    return app.synth().get_stack_by_name(stack.stack_name).template


@pytest.fixture
def aws_env(moto_reset, monkeypatch):
    """A wiped moto server that the launcher's boto3 clients talk to."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_reset.url)
    return moto_reset


def deploy(server, template: dict, name: str = keys.DEFAULT_STACK_NAME) -> dict[str, str]:
    server.client("ssm").put_parameter(Name="/cdk-bootstrap/hnb659fds/version", Value="30", Type="String",
                                       Overwrite=True)
    cfn = server.client("cloudformation")
    cfn.create_stack(StackName=name, TemplateBody=json.dumps(for_moto(template)), Capabilities=["CAPABILITY_NAMED_IAM"])
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    return {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}


IMAGE_TAG = "3f2a9c1b7d4e"  # what `image` tags a build of a clean checkout with: its commit


def push_image(server, repository: str, tag: str = IMAGE_TAG, pushed_at: Optional[dt.datetime] = None) -> None:
    """``put_image`` one image of its own (the manifest differs by tag); ``pushed_at`` sets
    its push time (moto stamps the present second)."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1,
                   "digest": "sha256:" + hashlib.sha256(tag.encode()).hexdigest()},
        "layers": [],
    }
    server.client("ecr").put_image(repositoryName=repository, imageManifest=json.dumps(manifest), imageTag=tag)
    if pushed_at is not None:
        from moto.backends import get_backend

        images = get_backend("ecr")[ACCOUNT][REGION].repositories[repository].images
        (image,) = [i for i in images if tag in i.image_tags]
        image.image_pushed_at = int(pushed_at.timestamp())


def put_sessions(server, bucket: str, prefix: str, sessions: list[str]) -> None:
    s3 = server.client("s3")
    for session in sessions:
        for name in ("data_train.hdf5", "data_val.hdf5"):
            s3.put_object(Bucket=bucket, Key=f"{prefix}{session}/{name}", Body=b"hdf5")


def tar_gz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class Deployed:
    server: object
    outputs: dict[str, str]

    @property
    def data_bucket(self) -> str:
        return self.outputs[keys.DATA_BUCKET]

    @property
    def output_bucket(self) -> str:
        return self.outputs[keys.OUTPUT_BUCKET]

    def client(self, service: str):
        return self.server.client(service)

    @property
    def repository(self) -> str:
        return self.outputs[keys.ECR_REPOSITORY_NAME]

    def training_job(self, name: str):
        """moto's object for a job, to set states it would never reach by itself."""
        from moto.backends import get_backend

        return get_backend("sagemaker")[ACCOUNT][REGION].training_jobs[name]


def put_log(deployed: "Deployed", job: str, lines: list[str], *, first_ms: Optional[int] = None,
            stream_suffix: str = "1764400000", step_ms: int = 1) -> None:
    """Log ``lines`` in a stream of ``job`` (``<job>/algo-1-<suffix>``) as the container would."""
    logs = deployed.client("logs")
    group = deployed.outputs[keys.TRAINING_LOG_GROUP]
    if not logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]:
        logs.create_log_group(logGroupName=group)
    stream = f"{job}/algo-1-{stream_suffix}"
    logs.create_log_stream(logGroupName=group, logStreamName=stream)
    if first_ms is None:
        first_ms = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000)
    logs.put_log_events(logGroupName=group, logStreamName=stream,
                        logEvents=[{"timestamp": first_ms + step_ms * i, "message": m} for i, m in enumerate(lines)])


@pytest.fixture
def no_image(aws_env, stack_template) -> Deployed:
    """The stack and the demo sessions in the data bucket; nothing pushed to ECR yet."""
    outputs = deploy(aws_env, stack_template)
    put_sessions(aws_env, outputs[keys.DATA_BUCKET], outputs[keys.DATA_PREFIX], DEMO_SESSIONS)
    return Deployed(server=aws_env, outputs=outputs)


@pytest.fixture
def deployed(no_image) -> Deployed:
    """The stack, one image tagged ``IMAGE_TAG`` and the demo sessions in the data bucket."""
    push_image(no_image.server, no_image.outputs[keys.ECR_REPOSITORY_NAME])
    return no_image


@pytest.fixture
def cli(capsys):
    """Run ``python -m launcher ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from launcher.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()  # drop what the fixtures printed
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
