"""Explicit IAM statements shared by the execution role and the launcher policy.

CDK's `grant_*` helpers write wildcard actions (`s3:GetObject*`, `s3:List*`); these write
the exact actions and scope every object ARN to a key prefix.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3

# Actions that have no resource-level permissions, so `*` is the only possible resource.
ECR_AUTH_ACTION = "ecr:GetAuthorizationToken"
PUT_METRIC_ACTION = "cloudwatch:PutMetricData"
KMS_USE_ACTIONS = ("kms:Decrypt", "kms:GenerateDataKey")
# SageMaker developer guide, "CreateTrainingJob API: Execution Role Permissions": with an output
# KMS key the role also needs kms:Encrypt, and kms:DescribeKey to check the key.
EXECUTION_KMS_ACTIONS = (*KMS_USE_ACTIONS, "kms:DescribeKey", "kms:Encrypt")


def object_arns(bucket: s3.IBucket, prefixes: Sequence[str]) -> list[str]:
    """`arn:...:bucket/<prefix>*` for each prefix (prefixes end in '/')."""
    return [bucket.arn_for_objects(f"{prefix}*") for prefix in prefixes]


def list_bucket(sid: str, bucket: s3.IBucket, prefixes: Sequence[str]) -> iam.PolicyStatement:
    """s3:ListBucket on `bucket`, only for listings under `prefixes`."""
    return iam.PolicyStatement(
        sid=sid,
        actions=["s3:ListBucket"],
        resources=[bucket.bucket_arn],
        conditions={"StringLike": {"s3:prefix": [f"{prefix}*" for prefix in prefixes]}},
    )


def list_whole_bucket(sid: str, bucket: s3.IBucket) -> iam.PolicyStatement:
    """s3:ListBucket on `bucket`, any prefix: the documented minimum for an execution role.

    "CreateTrainingJob API: Execution Role Permissions" grants s3:ListBucket on the bucket with
    no `s3:prefix` condition, and the prefixes SageMaker lists (for the input channels, the
    checkpoint sync, the output upload) are not documented; a listing that a condition refuses
    fails the job on AWS only, where no test here can see it. A listing shows key names, not
    contents: the safe side is the documented minimum. Reads and writes stay prefix-scoped.
    """
    return iam.PolicyStatement(sid=sid, actions=["s3:ListBucket"], resources=[bucket.bucket_arn])


def object_access(sid: str, bucket: s3.IBucket, prefixes: Sequence[str], actions: Sequence[str]) -> iam.PolicyStatement:
    return iam.PolicyStatement(sid=sid, actions=list(actions), resources=object_arns(bucket, prefixes))


def kms_use(sid: str, key: kms.IKey, actions: Sequence[str] = KMS_USE_ACTIONS) -> iam.PolicyStatement:
    """Encrypt/decrypt S3 objects and ECR layers under the stack's key, and nothing else."""
    return iam.PolicyStatement(sid=sid, actions=list(actions), resources=[key.key_arn])
