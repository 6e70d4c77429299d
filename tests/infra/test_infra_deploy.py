"""The synthesized templates deploy (boto3 create_stack, as `cdk deploy` would) to a local moto.

moto applies little of the hardening (public-access blocks, lifecycle, bucket policies):
that is asserted on the template in test_infra_template.py; here the outputs must name
resources that exist.
"""

from __future__ import annotations

import pytest

from infra import outputs

# moto has no CloudFormation model for bucket policies and OIDC providers: it skips them.
pytestmark = pytest.mark.filterwarnings(r"ignore:Tried to parse .* but it's not supported by moto:UserWarning")


def test_default_stack_is_created_with_every_required_output(deployed):
    assert set(outputs.REQUIRED) <= set(deployed)
    assert deployed[outputs.JOB_NAME_PREFIX] == "b2t"
    assert deployed[outputs.DATA_PREFIX] == outputs.DATA_KEY_PREFIX
    assert deployed[outputs.REGION] == "us-east-1"


def test_buckets_exist(deployed, moto_server):
    s3 = moto_server.client("s3")
    for key in (outputs.DATA_BUCKET, outputs.OUTPUT_BUCKET):
        s3.head_bucket(Bucket=deployed[key])


def test_execution_role_exists(deployed, moto_server):
    role_name = deployed[outputs.EXECUTION_ROLE_ARN].rsplit("/", 1)[1]
    role = moto_server.client("iam").get_role(RoleName=role_name)["Role"]
    assert role["Arn"] == deployed[outputs.EXECUTION_ROLE_ARN]


def test_repository_exists(deployed, moto_server):
    (repo,) = moto_server.client("ecr").describe_repositories(
        repositoryNames=[deployed[outputs.ECR_REPOSITORY_NAME]]
    )["repositories"]
    assert repo["repositoryUri"] == deployed[outputs.ECR_REPOSITORY_URI]


def test_launcher_policy_exists(deployed, moto_server):
    policy = moto_server.client("iam").get_policy(PolicyArn=deployed[outputs.LAUNCHER_POLICY_ARN])["Policy"]
    assert policy["Arn"] == deployed[outputs.LAUNCHER_POLICY_ARN]


def test_every_option_stack_is_created(deployed_full, moto_server):
    assert set(outputs.REQUIRED + outputs.OPTIONAL) <= set(deployed_full)
    # list_keys, not describe_key: moto keeps a CloudFormation key policy as a dict and
    # describe_key then fails parsing it.
    keys = moto_server.client("kms").list_keys()["Keys"]
    assert deployed_full[outputs.KMS_KEY_ARN] in [k["KeyArn"] for k in keys]
    for key in (outputs.DEPLOY_ROLE_ARN, outputs.IMAGE_PUSH_ROLE_ARN):
        moto_server.client("iam").get_role(RoleName=deployed_full[key].rsplit("/", 1)[1])
    policy = moto_server.client("iam").get_policy(PolicyArn=deployed_full[outputs.CFN_EXECUTION_POLICY_ARN])["Policy"]
    assert policy["PolicyName"] == "B2tFullTest-CfnExecution"
