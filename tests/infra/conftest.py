"""Fixtures for the CDK app's tests: synthesized templates and stacks deployed to moto.

Templates are synthesized once per session per configuration, through `infra.app.build_app`
(the same app factory `app.py` uses, cdk-nag gate included). Deploys go to the module's
moto server from tests/conftest.py, which also makes sure no real AWS endpoint is reached.
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, Stack
from aws_cdk.assertions import Template

from infra.app import build_app

from tests.infra.moto_template import for_moto

REPO_ROOT = Path(__file__).resolve().parents[2]
STACK_NAME = "B2tTest"
# Every optional feature switched on, so the linters and checks see every resource kind.
FULL_CONTEXT = {
    "stack_name": "B2tFullTest",
    "project": "lab",  # its own repository and job names, so both stacks fit in one moto server
    "kms_key": True,
    "github_repository": "example-lab/b2t-sagemaker",
}
# Everything imported instead of created: the lab's bucket, KMS key and OIDC provider.
IMPORTED_CONTEXT = {
    "stack_name": "B2tImportedTest",
    "existing_data_bucket": "lab-existing-data",
    "kms_key": "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "github_repository": "example-lab/b2t-sagemaker",
    "github_environment": "production",
    "github_oidc_provider_arn": "arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com",
    "checkpoint_expiry_days": 0,
}
BOOTSTRAP_VERSION_PARAMETER = "/cdk-bootstrap/hnb659fds/version"


@dataclass(frozen=True)
class Synth:
    stack_name: str
    body: dict[str, Any]  # the CloudFormation template as JSON
    path: Path  # the template file in the cloud assembly
    template: Template  # for aws_cdk.assertions
    stack: Stack  # the construct tree, for metadata checks


def cdk_json_context() -> dict[str, Any]:
    """The feature flags of cdk.json: the CLI passes them to app.py, tests must too."""
    return json.loads((REPO_ROOT / "cdk.json").read_text())["context"]


def make_app(outdir: Path, **context: Any) -> tuple[App, Stack]:
    """The app as `cdk synth` builds it (cdk.json context, cdk-nag gate), writing to `outdir`."""
    # The CLI also turns on path metadata; tests find resources by construct path.
    base = {**cdk_json_context(), "aws:cdk:enable-path-metadata": True, "stack_name": STACK_NAME}
    return build_app({**base, **context}, outdir=str(outdir))


def synthesize(outdir: Path, **context: Any) -> Synth:
    app, stack = make_app(outdir, **context)
    artifact = app.synth().get_stack_by_name(stack.stack_name)
    path = Path(outdir) / artifact.template_file
    return Synth(stack.stack_name, artifact.template, path, Template.from_json(artifact.template), stack)


@pytest.fixture(scope="session")
def app_factory():
    """`app_factory(outdir, **context)`: a fresh app to add constructs to before synthesis."""
    return make_app


@pytest.fixture(scope="session")
def default_synth(tmp_path_factory) -> Synth:
    return synthesize(tmp_path_factory.mktemp("cdk-default"))


@pytest.fixture(scope="session")
def full_synth(tmp_path_factory) -> Synth:
    return synthesize(tmp_path_factory.mktemp("cdk-full"), **FULL_CONTEXT)


@pytest.fixture(scope="session")
def imported_synth(tmp_path_factory) -> Synth:
    return synthesize(tmp_path_factory.mktemp("cdk-imported"), **IMPORTED_CONTEXT)


def deploy(moto_server, synth: Synth, *, timeout_s: float = 60) -> dict[str, str]:
    """Create the stack in moto with boto3 (as `cdk deploy` would) and return its outputs."""
    ssm = moto_server.client("ssm")
    ssm.put_parameter(Name=BOOTSTRAP_VERSION_PARAMETER, Value="30", Type="String", Overwrite=True)
    cloudformation = moto_server.client("cloudformation")
    cloudformation.create_stack(
        StackName=synth.stack_name,
        TemplateBody=json.dumps(for_moto(synth.body)),
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
    )
    deadline = time.monotonic() + timeout_s
    while True:
        stack = cloudformation.describe_stacks(StackName=synth.stack_name)["Stacks"][0]
        if not stack["StackStatus"].endswith("_IN_PROGRESS") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    return {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}


def set_iam_enforcement(moto_server, *, enabled: bool) -> None:
    """moto checks IAM policies on every request once `reset-auth` is given 0 free requests."""
    body = b"0" if enabled else b"inf"
    request = urllib.request.Request(
        f"{moto_server.url}/moto-api/reset-auth", data=body, method="POST", headers={"Content-Type": "text/plain"}
    )
    urllib.request.urlopen(request).read()


@pytest.fixture(scope="module")
def fresh_moto(moto_server):
    """This module's moto server, emptied: moto keeps its state per process, not per server."""
    moto_server.reset()
    return moto_server


@pytest.fixture(scope="module")
def deployed(fresh_moto, default_synth) -> dict[str, str]:
    """The default stack created in this module's moto server; its outputs."""
    return deploy(fresh_moto, default_synth)


@pytest.fixture(scope="module")
def iam_enforced(moto_server, deployed):
    """Turn moto's IAM enforcement on for the rest of the module (set up everything before)."""

    def enable() -> None:
        set_iam_enforcement(moto_server, enabled=True)

    yield enable
    set_iam_enforcement(moto_server, enabled=False)


@pytest.fixture(scope="module")
def deployed_full(fresh_moto, full_synth) -> dict[str, str]:
    """The every-option stack created in this module's moto server; its outputs."""
    return deploy(fresh_moto, full_synth)
