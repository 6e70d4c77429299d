"""Buckets: access logs, training data (created or imported) and job outputs.

Every bucket this stack creates goes through `secure_bucket`, so the defaults live in
one place: encryption, SSL-only, all four public-access blocks, versioning, retained on
stack deletion, server access logs, and lifecycle rules that bound storage cost.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.nag import checkov_skip
from infra.outputs import CHECKPOINT_KEY_PREFIX

ABORT_INCOMPLETE_UPLOADS_AFTER_DAYS = 7


def secure_bucket(
    scope: Construct,
    id_: str,
    *,
    encryption_key: kms.IKey | None,
    access_log_bucket: s3.IBucket | None,
    access_log_prefix: str,
    noncurrent_version_expiry_days: int,
    extra_lifecycle_rules: Sequence[s3.LifecycleRule] = (),
) -> s3.Bucket:
    """A bucket with this project's secure defaults.

    `encryption_key=None` means S3-managed keys. `access_log_bucket=None` is only for the
    access-log bucket itself, which cannot log to itself.
    """
    return s3.Bucket(
        scope,
        id_,
        encryption=s3.BucketEncryption.KMS if encryption_key else s3.BucketEncryption.S3_MANAGED,
        encryption_key=encryption_key,
        bucket_key_enabled=True if encryption_key else None,
        enforce_ssl=True,
        block_public_access=s3.BlockPublicAccess(
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
        ),
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        versioned=True,
        removal_policy=RemovalPolicy.RETAIN,
        server_access_logs_bucket=access_log_bucket,
        server_access_logs_prefix=access_log_prefix if access_log_bucket else None,
        lifecycle_rules=[
            s3.LifecycleRule(
                id="AbortIncompleteUploads",
                abort_incomplete_multipart_upload_after=Duration.days(ABORT_INCOMPLETE_UPLOADS_AFTER_DAYS),
            ),
            s3.LifecycleRule(
                id="ExpireNoncurrentVersions",
                noncurrent_version_expiration=Duration.days(noncurrent_version_expiry_days),
                expired_object_delete_marker=True,
            ),
            *extra_lifecycle_rules,
        ],
    )


class Storage(Construct):
    """The access-log bucket, the data bucket (or an imported one) and the output bucket."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        encryption_key: kms.IKey | None,
        existing_data_bucket: str | None,
        checkpoint_expiry_days: int,
        noncurrent_version_expiry_days: int,
        access_log_expiry_days: int,
    ) -> None:
        super().__init__(scope, id_)
        # S3 server access logs can only be delivered to SSE-S3 buckets, so this one never uses KMS.
        self.access_log_bucket = secure_bucket(
            self,
            "AccessLogBucket",
            encryption_key=None,
            access_log_bucket=None,
            access_log_prefix="",
            noncurrent_version_expiry_days=noncurrent_version_expiry_days,
            extra_lifecycle_rules=[
                s3.LifecycleRule(id="ExpireAccessLogs", expiration=Duration.days(access_log_expiry_days))
            ],
        )
        checkov_skip(
            self.access_log_bucket,
            "CKV_AWS_18",
            "This is the server-access-log target; logging it to itself would loop.",
        )
        self.data_bucket: s3.IBucket
        if existing_data_bucket:
            # Labs already hold their data in S3: import it, leave its configuration alone.
            self.data_bucket = s3.Bucket.from_bucket_name(self, "DataBucket", existing_data_bucket)
        else:
            self.data_bucket = secure_bucket(
                self,
                "DataBucket",
                encryption_key=encryption_key,
                access_log_bucket=self.access_log_bucket,
                access_log_prefix="data-bucket/",
                noncurrent_version_expiry_days=noncurrent_version_expiry_days,
            )
        checkpoint_rules = []
        if checkpoint_expiry_days > 0:
            checkpoint_rules.append(
                s3.LifecycleRule(
                    id="ExpireCheckpoints",
                    prefix=CHECKPOINT_KEY_PREFIX,
                    expiration=Duration.days(checkpoint_expiry_days),
                )
            )
        self.output_bucket = secure_bucket(
            self,
            "OutputBucket",
            encryption_key=encryption_key,
            access_log_bucket=self.access_log_bucket,
            access_log_prefix="output-bucket/",
            noncurrent_version_expiry_days=noncurrent_version_expiry_days,
            extra_lifecycle_rules=checkpoint_rules,
        )
