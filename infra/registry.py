"""The ECR repository holding the training image."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_kms as kms
from constructs import Construct

from infra.nag import checkov_skip


class ImageRegistry(Construct):
    """A private repository: scan on push, keep the last N images, immutable tags.

    Tags are immutable so a job's image tag (a git SHA or content hash) always names the
    image that ran; pushing a moving tag such as `latest` a second time is refused.
    """

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        repository_name: str,
        keep_images: int,
        encryption_key: kms.IKey | None,
    ) -> None:
        super().__init__(scope, id_)
        self.repository = ecr.Repository(
            self,
            "Repository",
            # An explicit name keeps the image URI stable across redeploys (and moto needs it).
            repository_name=repository_name,
            image_scan_on_push=True,
            image_tag_mutability=ecr.TagMutability.IMMUTABLE,
            encryption=ecr.RepositoryEncryption.KMS if encryption_key else ecr.RepositoryEncryption.AES_256,
            encryption_key=encryption_key,
            removal_policy=RemovalPolicy.RETAIN,
            lifecycle_rules=[
                ecr.LifecycleRule(
                    description=f"Keep the last {keep_images} images",
                    max_image_count=keep_images,
                    tag_status=ecr.TagStatus.ANY,
                )
            ],
        )
        if encryption_key is None:
            checkov_skip(
                self.repository,
                "CKV_AWS_136",
                "Images are encrypted at rest with AES-256 (AWS-managed); a customer-managed key "
                "is opt-in through the kms_key context value.",
            )
