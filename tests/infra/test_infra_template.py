"""What the synthesized template grants and how it stores data (one synthesis per configuration)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infra import outputs

# The only actions that may have Resource "*": none of them supports resource-level permissions.
EXECUTION_ROLE_STAR_ACTIONS = {"ecr:GetAuthorizationToken", "cloudwatch:PutMetricData"}
# Written out, not imported from infra/: a new action on "*" must fail here until reviewed.
ALLOWED_STAR_ACTIONS = EXECUTION_ROLE_STAR_ACTIONS | {"sagemaker:ListTrainingJobs"}
# CloudFormation's execution policy (tests/infra/test_infra_bootstrap_policy.py) grants
# `<service>:*` on the stack's own resources by design; every other policy lists its actions.
CFN_EXECUTION_PATH = "/CfnExecution/"

EXECUTION_ROLE_ACTIONS = {
    "ListData": {"s3:ListBucket"},
    "ReadData": {"s3:GetObject"},
    "ListOutputs": {"s3:ListBucket"},
    "ReadWriteJobs": {"s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject"},
    "ReadWriteCheckpoints": {"s3:AbortMultipartUpload", "s3:DeleteObject", "s3:GetObject", "s3:PutObject"},
    "PullImage": {"ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"},
    "EcrLogin": {"ecr:GetAuthorizationToken"},
    "WriteLogs": {"logs:CreateLogGroup", "logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"},
    "PutMetrics": {"cloudwatch:PutMetricData"},
}
LAUNCHER_ACTIONS = {
    "ManageJobs": {
        "sagemaker:AddTags", "sagemaker:CreateTrainingJob", "sagemaker:DescribeTrainingJob", "sagemaker:StopTrainingJob",
    },
    "Unscopable": {"sagemaker:ListTrainingJobs", "ecr:GetAuthorizationToken"},
    "PassExecutionRole": {"iam:PassRole"},
    "ListData": {"s3:ListBucket"},
    "UploadData": {"s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject"},
    "ListOutputs": {"s3:ListBucket"},
    "ReadJobs": {"s3:GetObject"},
    "WriteJobInputs": {"s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject"},
    "ReadCheckpoints": {"s3:GetObject"},
    "ReadStackOutputs": {"cloudformation:DescribeStacks"},
    "DescribeImages": {"ecr:DescribeImages"},
    "PushImage": {
        "ecr:BatchCheckLayerAvailability", "ecr:CompleteLayerUpload", "ecr:InitiateLayerUpload", "ecr:PutImage",
        "ecr:UploadLayerPart",
    },
    "ReadLogs": {"logs:DescribeLogStreams", "logs:FilterLogEvents", "logs:GetLogEvents"},
}
KMS_ACTIONS = {"kms:Decrypt", "kms:GenerateDataKey"}
# "CreateTrainingJob API: Execution Role Permissions": with an output key, also Encrypt and DescribeKey.
EXECUTION_KMS_ACTIONS = KMS_ACTIONS | {"kms:Encrypt", "kms:DescribeKey"}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def resources(body: dict, type_: str) -> dict[str, dict]:
    return {logical_id: r for logical_id, r in body["Resources"].items() if r["Type"] == type_}


def one(body: dict, type_: str, path_part: str) -> tuple[str, dict]:
    """The single resource of `type_` whose construct path contains `path_part`."""
    found = [(k, r) for k, r in resources(body, type_).items() if path_part in r["Metadata"]["aws:cdk:path"]]
    assert len(found) == 1, f"{type_} {path_part}: {[k for k, _ in found]}"
    return found[0]


def statements(document: dict) -> dict[str, dict]:
    by_sid = {s["Sid"]: s for s in document["Statement"]}
    assert len(by_sid) == len(document["Statement"]), "every statement carries a unique Sid"
    return by_sid


def actions(document: dict) -> dict[str, set[str]]:
    return {sid: set(as_list(s["Action"])) for sid, s in statements(document).items()}


def execution_policy(body: dict) -> dict:
    return one(body, "AWS::IAM::Policy", "/Execution/")[1]["Properties"]["PolicyDocument"]


def launcher_policy(body: dict) -> dict:
    return one(body, "AWS::IAM::ManagedPolicy", "/Launcher/")[1]["Properties"]["PolicyDocument"]


def all_statements(body: dict) -> list[dict]:
    """Every statement of every policy, except CloudFormation's execution policy."""
    found = []
    for resource in body["Resources"].values():
        if CFN_EXECUTION_PATH in resource.get("Metadata", {}).get("aws:cdk:path", ""):
            continue
        props = resource.get("Properties", {})
        found += [s for p in props.get("Policies", []) for s in p["PolicyDocument"]["Statement"]]
        if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            found += props["PolicyDocument"]["Statement"]
    return found


def object_suffixes(statement: dict) -> set[str]:
    """The literal tails of the statement's object ARNs (each an `Fn::Join` ending in a string)."""
    return {resource["Fn::Join"][1][-1] for resource in as_list(statement["Resource"])}


# --- outputs: the launcher's contract -----------------------------------------------------------


def test_every_required_output_is_declared(default_synth):
    assert set(outputs.REQUIRED) <= set(default_synth.body["Outputs"])


def test_optional_outputs_only_when_configured(default_synth, full_synth):
    assert outputs.LAUNCHER_POLICY_ARN in default_synth.body["Outputs"]
    assert {outputs.DEPLOY_ROLE_ARN, outputs.IMAGE_PUSH_ROLE_ARN, outputs.KMS_KEY_ARN}.isdisjoint(
        default_synth.body["Outputs"]
    )
    assert set(outputs.REQUIRED + outputs.OPTIONAL) == set(full_synth.body["Outputs"])


def test_constant_outputs(default_synth):
    declared = default_synth.body["Outputs"]
    assert declared[outputs.JOB_NAME_PREFIX]["Value"] == "b2t"
    assert declared[outputs.DATA_PREFIX]["Value"] == outputs.DATA_KEY_PREFIX
    assert declared[outputs.TRAINING_LOG_GROUP]["Value"] == outputs.TRAINING_LOG_GROUP_NAME
    assert declared[outputs.REGION]["Value"] == {"Ref": "AWS::Region"}


# --- execution role ---------------------------------------------------------------------------------


def test_execution_role_has_no_managed_policies(default_synth):
    role_id, role = one(default_synth.body, "AWS::IAM::Role", "/Execution/")
    assert "ManagedPolicyArns" not in role["Properties"]
    assert "Policies" not in role["Properties"]
    attached = [p for p in resources(default_synth.body, "AWS::IAM::Policy").values()
                if {"Ref": role_id} in p["Properties"].get("Roles", [])]
    assert len(attached) == 1


def test_execution_role_is_trusted_by_sagemaker_for_this_projects_jobs_only(default_synth):
    _, role = one(default_synth.body, "AWS::IAM::Role", "/Execution/")
    (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    assert trust["Action"] == "sts:AssumeRole"
    assert trust["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    assert set(trust["Condition"]) == {"StringEquals", "ArnLike"}
    source_arn = json.dumps(trust["Condition"]["ArnLike"]["aws:SourceArn"])
    assert ":sagemaker:" in source_arn and source_arn.endswith(':training-job/b2t-*"]]}')


def test_execution_role_exact_actions(default_synth):
    assert actions(execution_policy(default_synth.body)) == EXECUTION_ROLE_ACTIONS


def test_execution_role_kms_only_with_a_key(default_synth, full_synth):
    assert not any(a.startswith("kms:") for acts in actions(execution_policy(default_synth.body)).values() for a in acts)
    expected = {**EXECUTION_ROLE_ACTIONS, "UseStackKey": EXECUTION_KMS_ACTIONS, "GrantVolumeKey": {"kms:CreateGrant"}}
    by_sid = statements(execution_policy(full_synth.body))
    assert actions(execution_policy(full_synth.body)) == expected
    key_id, _ = one(full_synth.body, "AWS::KMS::Key", "/Key/")
    assert by_sid["UseStackKey"]["Resource"] == {"Fn::GetAtt": [key_id, "Arn"]}
    assert by_sid["GrantVolumeKey"]["Resource"] == {"Fn::GetAtt": [key_id, "Arn"]}
    assert by_sid["GrantVolumeKey"]["Condition"] == {"Bool": {"kms:GrantIsForAWSResource": "true"}}


def test_execution_role_s3_scopes(default_synth):
    by_sid = statements(execution_policy(default_synth.body))
    assert object_suffixes(by_sid["ReadData"]) == {"/data/*"}
    assert object_suffixes(by_sid["ReadWriteJobs"]) == {"/jobs/*"}
    assert object_suffixes(by_sid["ReadWriteCheckpoints"]) == {"/checkpoints/*"}
    # The documented minimum: ListBucket on the two buckets, no prefix condition (infra/statements.py).
    data_id, _ = one(default_synth.body, "AWS::S3::Bucket", "/DataBucket/")
    output_id, _ = one(default_synth.body, "AWS::S3::Bucket", "/OutputBucket/")
    assert by_sid["ListData"]["Resource"] == {"Fn::GetAtt": [data_id, "Arn"]} and "Condition" not in by_sid["ListData"]
    assert by_sid["ListOutputs"]["Resource"] == {"Fn::GetAtt": [output_id, "Arn"]}
    assert "Condition" not in by_sid["ListOutputs"]


def test_metrics_limited_to_sagemaker_namespace(default_synth):
    put_metrics = statements(execution_policy(default_synth.body))["PutMetrics"]
    assert put_metrics["Condition"] == {"StringEquals": {"cloudwatch:namespace": outputs.METRIC_NAMESPACE}}


def test_logs_limited_to_training_log_group(default_synth):
    write_logs = statements(execution_policy(default_synth.body))["WriteLogs"]
    assert json.dumps(write_logs["Resource"]).endswith(':log-group:/aws/sagemaker/TrainingJobs:*"]]}')


# --- launcher policy --------------------------------------------------------------------------------


def test_launcher_policy_exact_actions(default_synth, full_synth):
    assert actions(launcher_policy(default_synth.body)) == LAUNCHER_ACTIONS
    assert actions(launcher_policy(full_synth.body)) == {**LAUNCHER_ACTIONS, "UseStackKey": KMS_ACTIONS}


def test_launcher_jobs_limited_to_job_name_prefix(default_synth):
    manage = statements(launcher_policy(default_synth.body))["ManageJobs"]
    assert json.dumps(manage["Resource"]).endswith(':training-job/b2t-*"]]}')


def test_launcher_passes_only_the_execution_role_only_to_sagemaker(default_synth):
    role_id, _ = one(default_synth.body, "AWS::IAM::Role", "/Execution/")
    pass_role = statements(launcher_policy(default_synth.body))["PassExecutionRole"]
    assert pass_role["Resource"] == {"Fn::GetAtt": [role_id, "Arn"]}
    assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}


def test_launcher_s3_scopes(default_synth):
    by_sid = statements(launcher_policy(default_synth.body))
    assert object_suffixes(by_sid["UploadData"]) == {"/data/*"}
    assert object_suffixes(by_sid["ReadJobs"]) == {"/jobs/*"}
    assert object_suffixes(by_sid["WriteJobInputs"]) == {"/jobs/*/input/*"}  # never jobs/<job>/output/
    assert object_suffixes(by_sid["ReadCheckpoints"]) == {"/checkpoints/*"}
    writers = [sid for sid, acts in actions(launcher_policy(default_synth.body)).items() if "s3:PutObject" in acts]
    assert sorted(writers) == ["UploadData", "WriteJobInputs"]
    assert by_sid["ReadStackOutputs"]["Resource"] == {"Ref": "AWS::StackId"}


# --- wildcards, everywhere --------------------------------------------------------------------------


@pytest.mark.parametrize("synth_name", ["default_synth", "full_synth", "imported_synth"])
def test_star_resource_only_on_unscopable_actions(synth_name, request):
    body = request.getfixturevalue(synth_name).body
    star_actions = set()
    for statement in all_statements(body):
        assert all("*" not in action for action in as_list(statement["Action"])), statement
        if "*" in as_list(statement.get("Resource", [])):
            star_actions |= set(as_list(statement["Action"]))
    assert star_actions == ALLOWED_STAR_ACTIONS


def test_execution_role_star_only_on_two_actions(default_synth):
    star = {a for s in execution_policy(default_synth.body)["Statement"] if s["Resource"] == "*"
            for a in as_list(s["Action"])}
    assert star == EXECUTION_ROLE_STAR_ACTIONS


# --- CI deploy role -----------------------------------------------------------------------------------


def test_deploy_role_trusts_one_repository_and_ref(full_synth):
    _, role = one(full_synth.body, "AWS::IAM::Role", "/CiDeploy/")
    (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert trust["Condition"] == {"StringEquals": {
        "token.actions.githubusercontent.com:aud": "sts.amazonaws.com",
        "token.actions.githubusercontent.com:sub": "repo:example-lab/b2t-sagemaker:ref:refs/heads/main",
    }}
    provider_id, provider = one(full_synth.body, "AWS::IAM::OIDCProvider", "/CiDeploy/")
    assert trust["Principal"] == {"Federated": {"Ref": provider_id}}
    assert provider["Properties"]["Url"] == "https://token.actions.githubusercontent.com"


def test_deploy_role_only_assumes_cdk_bootstrap_roles(full_synth):
    _, role = one(full_synth.body, "AWS::IAM::Role", "/CiDeploy/")
    (policy,) = role["Properties"]["Policies"]
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Action"] == "sts:AssumeRole"
    names = sorted(json.dumps(r) for r in statement["Resource"])
    assert [n.split(":role/cdk-hnb659fds-")[1].split("-role-")[0] for n in names] == [
        "deploy", "file-publishing", "image-publishing", "lookup"
    ]


def test_deploy_role_with_environment_and_imported_provider(imported_synth):
    _, role = one(imported_synth.body, "AWS::IAM::Role", "/CiDeploy/")
    (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Federated": IMPORTED_PROVIDER_ARN}
    sub = trust["Condition"]["StringEquals"]["token.actions.githubusercontent.com:sub"]
    assert sub == "repo:example-lab/b2t-sagemaker:environment:production"
    assert not resources(imported_synth.body, "AWS::IAM::OIDCProvider")


def test_image_role_pushes_only_to_the_stacks_repository(full_synth):
    _, role = one(full_synth.body, "AWS::IAM::Role", "/CiImage/")
    (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert trust["Condition"]["StringEquals"]["token.actions.githubusercontent.com:sub"] == (
        "repo:example-lab/b2t-sagemaker:ref:refs/heads/main"
    )
    (policy,) = role["Properties"]["Policies"]
    by_sid = statements(policy["PolicyDocument"])
    repo_id, _ = one(full_synth.body, "AWS::ECR::Repository", "/Registry/")
    assert by_sid["EcrLogin"]["Action"] == "ecr:GetAuthorizationToken" and by_sid["EcrLogin"]["Resource"] == "*"
    assert by_sid["PushToStackRepository"]["Resource"] == {"Fn::GetAtt": [repo_id, "Arn"]}
    assert "ecr:PutImage" in by_sid["PushToStackRepository"]["Action"]
    assert set(by_sid) == {"EcrLogin", "PushToStackRepository"}
    assert "ManagedPolicyArns" not in role["Properties"]
    output = full_synth.body["Outputs"][outputs.IMAGE_PUSH_ROLE_ARN]["Value"]
    assert output == {"Fn::GetAtt": [one(full_synth.body, "AWS::IAM::Role", "/CiImage/")[0], "Arn"]}


def test_no_deploy_role_without_repository(default_synth):
    assert not resources(default_synth.body, "AWS::IAM::OIDCProvider")
    assert [k for k in resources(default_synth.body, "AWS::IAM::Role") if "CiDeploy" in k] == []


# --- buckets ----------------------------------------------------------------------------------------


def test_three_buckets_with_secure_defaults(default_synth):
    buckets = resources(default_synth.body, "AWS::S3::Bucket")
    assert len(buckets) == 3
    for bucket in buckets.values():
        props = bucket["Properties"]
        assert bucket["DeletionPolicy"] == bucket["UpdateReplacePolicy"] == "Retain"
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True,
        }
        assert props["VersioningConfiguration"] == {"Status": "Enabled"}
        (encryption,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert encryption["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}
        rules = {rule["Id"]: rule for rule in props["LifecycleConfiguration"]["Rules"]}
        assert rules["AbortIncompleteUploads"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
        assert rules["ExpireNoncurrentVersions"]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}


def test_data_and_output_buckets_log_to_access_log_bucket(default_synth):
    log_bucket_id, _ = one(default_synth.body, "AWS::S3::Bucket", "/AccessLogBucket/")
    for name in ("/DataBucket/", "/OutputBucket/"):
        _, bucket = one(default_synth.body, "AWS::S3::Bucket", name)
        assert bucket["Properties"]["LoggingConfiguration"]["DestinationBucketName"] == {"Ref": log_bucket_id}


def test_every_bucket_denies_plain_http(default_synth):
    policies = resources(default_synth.body, "AWS::S3::BucketPolicy").values()
    secured = set()
    for policy in policies:
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if statement["Effect"] == "Deny" and statement.get("Condition") == {
                "Bool": {"aws:SecureTransport": "false"}
            }:
                secured.add(policy["Properties"]["Bucket"]["Ref"])
    assert secured == set(resources(default_synth.body, "AWS::S3::Bucket"))


def test_checkpoints_expire(default_synth, imported_synth):
    _, bucket = one(default_synth.body, "AWS::S3::Bucket", "/OutputBucket/")
    rules = {rule["Id"]: rule for rule in bucket["Properties"]["LifecycleConfiguration"]["Rules"]}
    assert rules["ExpireCheckpoints"]["Prefix"] == outputs.CHECKPOINT_KEY_PREFIX
    assert rules["ExpireCheckpoints"]["ExpirationInDays"] == 30
    _, kept = one(imported_synth.body, "AWS::S3::Bucket", "/OutputBucket/")
    assert "ExpireCheckpoints" not in json.dumps(kept)


def test_kms_key_encrypts_data_and_outputs(full_synth):
    key_id, key = one(full_synth.body, "AWS::KMS::Key", "/Key/")
    assert key["Properties"]["EnableKeyRotation"] is True
    assert key["DeletionPolicy"] == "Retain"
    for name in ("/DataBucket/", "/OutputBucket/"):
        _, bucket = one(full_synth.body, "AWS::S3::Bucket", name)
        (encryption,) = bucket["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert encryption["ServerSideEncryptionByDefault"] == {
            "KMSMasterKeyID": {"Fn::GetAtt": [key_id, "Arn"]}, "SSEAlgorithm": "aws:kms",
        }
    # Server access logs can only be delivered to an SSE-S3 bucket.
    _, log_bucket = one(full_synth.body, "AWS::S3::Bucket", "/AccessLogBucket/")
    assert "AES256" in json.dumps(log_bucket["Properties"]["BucketEncryption"])


def test_imported_data_bucket_and_key(imported_synth):
    assert len(resources(imported_synth.body, "AWS::S3::Bucket")) == 2
    assert not resources(imported_synth.body, "AWS::KMS::Key")
    by_sid = statements(execution_policy(imported_synth.body))
    assert object_suffixes(by_sid["ReadData"]) == {":s3:::lab-existing-data/data/*"}
    assert by_sid["UseStackKey"]["Resource"] == IMPORTED_KEY_ARN
    assert imported_synth.body["Outputs"][outputs.DATA_BUCKET]["Value"] == "lab-existing-data"


# --- image registry and logs ------------------------------------------------------------------------


def test_ecr_repository(default_synth):
    _, repo = one(default_synth.body, "AWS::ECR::Repository", "/Registry/")
    props = repo["Properties"]
    assert repo["DeletionPolicy"] == "Retain"
    assert props["RepositoryName"] == "b2t-training"
    assert props["ImageScanningConfiguration"] == {"ScanOnPush": True}
    assert props["ImageTagMutability"] == "IMMUTABLE"
    (rule,) = json.loads(props["LifecyclePolicy"]["LifecyclePolicyText"])["rules"]
    assert rule["selection"]["countType"] == "imageCountMoreThan" and rule["selection"]["countNumber"] == 20


def test_training_log_group_is_never_a_stack_resource(default_synth, full_synth):
    for synth in (default_synth, full_synth):
        names = [r["Properties"].get("LogGroupName") for r in resources(synth.body, "AWS::Logs::LogGroup").values()]
        assert outputs.TRAINING_LOG_GROUP_NAME not in names  # creating it fails where it exists


def sdk_calls(body: dict) -> dict[str, dict]:
    """The SDK calls of the stack's AwsCustomResources, by construct id and request type."""
    calls = {}
    for resource in resources(body, "Custom::AWS").values():
        name = resource["Metadata"]["aws:cdk:path"].split("/")[-3]
        calls[name] = {kind: json.loads(resource["Properties"][kind])
                       for kind in ("Create", "Update", "Delete") if kind in resource["Properties"]}
    return calls


def test_training_log_retention_is_set_whether_or_not_the_group_exists(default_synth):
    calls = sdk_calls(default_synth.body)
    ensure, retention = calls["EnsureLogGroup"], calls["Retention"]
    assert set(ensure) == {"Create"} and set(retention) == {"Create", "Update"}  # no Delete: never deleted
    assert ensure["Create"]["action"] == "createLogGroup"
    assert ensure["Create"]["ignoreErrorCodesMatching"] == "ResourceAlreadyExistsException"
    assert retention["Update"] == retention["Create"]
    assert retention["Create"]["action"] == "putRetentionPolicy"
    assert retention["Create"]["parameters"] == {"logGroupName": outputs.TRAINING_LOG_GROUP_NAME, "retentionInDays": 90}
    assert "logs:DeleteLogGroup" not in json.dumps(default_synth.body)
    custom_policies = [p for k, p in resources(default_synth.body, "AWS::IAM::Policy").items() if "CustomResourcePolicy" in k]
    assert len(custom_policies) == 2
    for custom in custom_policies:
        granted = {a for s in custom["Properties"]["PolicyDocument"]["Statement"] for a in as_list(s["Action"])}
        assert granted == {"logs:CreateLogGroup", "logs:PutRetentionPolicy"}


IMPORTED_PROVIDER_ARN = "arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com"
IMPORTED_KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
