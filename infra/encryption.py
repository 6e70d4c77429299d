"""The optional customer-managed KMS key: none, created here, or imported by ARN."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_kms as kms
from constructs import Construct

from infra.settings import KmsSetting


def stack_key(scope: Construct, id_: str, *, setting: KmsSetting, alias: str) -> kms.IKey | None:
    """The key for buckets and the image repository, or None for AWS-managed encryption."""
    if setting.existing_key_arn:
        return kms.Key.from_key_arn(scope, id_, setting.existing_key_arn)
    if setting.create:
        return kms.Key(
            scope,
            id_,
            alias=alias,
            description="Encrypts this project's training data, outputs and images",
            enable_key_rotation=True,
            # Deleting the key would make every object encrypted with it unreadable.
            removal_policy=RemovalPolicy.RETAIN,
        )
    return None
