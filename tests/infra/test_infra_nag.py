"""cdk-nag (v3 AwsSolutionsChecks) is a gate: an unacknowledged finding fails synthesis."""

from __future__ import annotations

import json

import pytest
from aws_cdk import Validations
from aws_cdk import aws_iam as iam

from infra.nag import acknowledge, checkov_skip, flatten_cfn_reference


def test_gate_fails_on_an_unacknowledged_finding(app_factory, tmp_path):
    app, stack = app_factory(tmp_path)
    careless = iam.Role(stack, "CarelessRole", assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"))
    careless.add_to_policy(iam.PolicyStatement(actions=["s3:*"], resources=["*"]))
    with pytest.raises(Exception, match="[Vv]alidation"):
        app.synth()
    report = (tmp_path / "validation-report.json").read_text()
    assert "AwsSolutions-IAM5[Action::s3:*]" in report
    assert "CarelessRole" in report


@pytest.mark.parametrize("synth_name", ["default_synth", "full_synth", "imported_synth"])
def test_real_stack_synthesizes_clean(synth_name, request):
    synth = request.getfixturevalue(synth_name)  # synthesis raises on any finding
    report = json.loads((synth.path.parent / "validation-report.json").read_text())
    assert report["pluginReports"] == []


@pytest.mark.parametrize("synth_name", ["default_synth", "full_synth"])
def test_every_acknowledgement_has_a_reason(synth_name, request):
    stack = request.getfixturevalue(synth_name).stack
    acknowledged = {}
    for construct in stack.node.find_all():
        for entry in construct.node.metadata:
            if entry.type == Validations.ACKNOWLEDGED_RULES_METADATA_KEY:
                acknowledged.update({k.split("::", 1)[1]: v for k, v in entry.data.items()})
    assert acknowledged, "the stack acknowledges its IAM5 findings"
    # Besides IAM5: the AWS managed basic execution policy of CDK's custom-resource provider (infra/logs.py).
    others = {rule for rule in acknowledged if not rule.startswith("AwsSolutions-IAM5[")}
    assert others == {"AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                      "AWSLambdaBasicExecutionRole]"}, others
    assert all(len(reason.strip()) > 20 for reason in acknowledged.values()), acknowledged


def test_acknowledging_needs_a_reason(default_synth):
    with pytest.raises(ValueError, match="needs a reason"):
        acknowledge(default_synth.stack, "AwsSolutions-S1", " ")
    with pytest.raises(ValueError, match="needs a comment"):
        checkov_skip(default_synth.stack, "CKV_AWS_18", "")


def test_flatten_matches_cdk_nag_rendering():
    joined = {"Fn::Join": ["", [{"Fn::GetAtt": ["Bucket1", "Arn"]}, "/data/*"]]}
    assert flatten_cfn_reference(joined) == "<Bucket1.Arn>/data/*"
    assert flatten_cfn_reference({"Fn::Sub": "arn:${AWS::Partition}:s3:::x"}) == "arn:<AWS::Partition>:s3:::x"
    assert flatten_cfn_reference({"Ref": "AWS::AccountId"}) == "<AWS::AccountId>"
