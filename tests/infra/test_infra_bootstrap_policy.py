"""CloudFormation's execution policy (`cdk bootstrap --cloudformation-execution-policies`) covers
every resource type of the template, and no service beyond those the template uses."""

from __future__ import annotations

import json

import pytest

from infra import outputs
from tests.infra.test_infra_template import as_list, one

SYNTHS = ("default_synth", "full_synth", "imported_synth")
# Written out here, not imported from infra/: the IAM service of each resource type.
SERVICE_OF_TYPE = {
    "AWS::S3::Bucket": "s3", "AWS::S3::BucketPolicy": "s3",
    "AWS::IAM::Role": "iam", "AWS::IAM::Policy": "iam", "AWS::IAM::ManagedPolicy": "iam",
    "AWS::IAM::OIDCProvider": "iam",
    "AWS::ECR::Repository": "ecr",
    "AWS::KMS::Key": "kms", "AWS::KMS::Alias": "kms",
    "AWS::Lambda::Function": "lambda",
    "AWS::Logs::LogGroup": "logs",
    "Custom::AWS": "lambda",  # CloudFormation invokes the provider function
}
# Needed by every deployment, not by a resource: the bootstrap version parameter.
EXTRA_SERVICES = {"ssm"}


def policy(body: dict) -> list[dict]:
    _, resource = one(body, "AWS::IAM::ManagedPolicy", "/CfnExecution/")
    return resource["Properties"]["PolicyDocument"]["Statement"]


def allowed_services(body: dict) -> set[str]:
    return {a.split(":")[0] for s in policy(body) if s["Effect"] == "Allow" for a in as_list(s["Action"])}


def template_services(body: dict) -> set[str]:
    types = {r["Type"] for r in body["Resources"].values()} - {"AWS::CDK::Metadata"}
    assert types <= set(SERVICE_OF_TYPE), f"classify {types - set(SERVICE_OF_TYPE)} above"
    return {SERVICE_OF_TYPE[t] for t in types}


def kms_referenced(body: dict) -> bool:
    return "arn:aws:kms:" in json.dumps(body) or any(r["Type"].startswith("AWS::KMS::") for r in body["Resources"].values())


@pytest.mark.parametrize("synth_name", SYNTHS)
def test_covers_exactly_the_services_of_the_template(synth_name, request):
    body = request.getfixturevalue(synth_name).body
    expected = template_services(body) | EXTRA_SERVICES | ({"kms"} if kms_referenced(body) else set())
    assert allowed_services(body) == expected


@pytest.mark.parametrize("synth_name", SYNTHS)
def test_every_resource_type_is_covered(synth_name, request):
    body = request.getfixturevalue(synth_name).body
    allowed = allowed_services(body)
    for resource_type in {r["Type"] for r in body["Resources"].values()} - {"AWS::CDK::Metadata"}:
        assert SERVICE_OF_TYPE[resource_type] in allowed, resource_type


def test_scoped_to_the_stacks_own_resources(full_synth):
    by_sid = {s["Sid"]: s for s in policy(full_synth.body)}
    assert by_sid["StackBuckets"]["Resource"] == {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":s3:::b2tfulltest-*"]]}
    assert json.dumps(by_sid["StackRepository"]["Resource"]).endswith(':repository/lab-training"]]}')
    iam_resources = json.dumps(by_sid["StackIam"]["Resource"])
    assert ":role/B2tFullTest-*" in iam_resources and ":policy/B2tFullTest-*" in iam_resources
    star = [s["Sid"] for s in policy(full_synth.body) if s["Effect"] == "Allow" and "*" in as_list(s["Resource"])]
    assert star == ["CreateKey"]  # kms:CreateKey has no resource to scope to
    assert not {"kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"} & set(by_sid["ManageKeys"]["Action"])
    deny = by_sid["NoForeignManagedPolicies"]
    assert deny["Effect"] == "Deny" and "iam:AttachRolePolicy" in deny["Action"]


def test_named_for_the_bootstrap_command_and_output(default_synth):
    _, resource = one(default_synth.body, "AWS::IAM::ManagedPolicy", "/CfnExecution/")
    assert resource["Properties"]["ManagedPolicyName"] == "B2tTest-CfnExecution"
    assert outputs.CFN_EXECUTION_POLICY_ARN in default_synth.body["Outputs"]
