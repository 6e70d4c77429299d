"""The training stack: wires the constructs of infra/ and declares the launcher's outputs."""

from __future__ import annotations

from aws_cdk import Aws, CfnOutput, Environment, Stack
from constructs import Construct

from infra import outputs
from infra.cfn_execution_policy import CfnExecutionPolicy
from infra.ci_deploy_role import CiDeployRole
from infra.ci_image_role import CiImageRole
from infra.encryption import stack_key
from infra.execution_role import ExecutionRole
from infra.launcher_policy import LauncherPolicy
from infra.logs import TrainingLogs
from infra.registry import ImageRegistry
from infra.settings import StackSettings
from infra.storage import Storage


class TrainingStack(Stack):
    def __init__(self, scope: Construct, *, settings: StackSettings) -> None:
        super().__init__(
            scope,
            settings.stack_name,
            env=Environment(account=settings.account, region=settings.region),
            description=f"SageMaker training environment for {settings.project} (brain-to-text)",
        )
        kms_alias = f"alias/{settings.project}-training"
        key = stack_key(self, "Key", setting=settings.kms, alias=kms_alias)
        storage = Storage(
            self,
            "Storage",
            encryption_key=key,
            existing_data_bucket=settings.existing_data_bucket,
            checkpoint_expiry_days=settings.checkpoint_expiry_days,
            noncurrent_version_expiry_days=settings.noncurrent_version_expiry_days,
            access_log_expiry_days=settings.log_retention_days,
        )
        registry = ImageRegistry(
            self,
            "Registry",
            repository_name=settings.ecr_repository_name,
            keep_images=settings.ecr_keep_images,
            encryption_key=key,
        )
        logs = TrainingLogs(self, "TrainingLogs", retention_in_days=settings.log_retention_days)
        execution = ExecutionRole(
            self,
            "Execution",
            data_bucket=storage.data_bucket,
            output_bucket=storage.output_bucket,
            repository=registry.repository,
            log_group=logs.log_group,
            log_group_is_imported=True,  # SageMaker creates it if it is ever deleted
            encryption_key=key,
            job_name_prefix=settings.project,
        )
        launcher = LauncherPolicy(
            self,
            "Launcher",
            job_name_prefix=settings.project,
            execution_role=execution.role,
            data_bucket=storage.data_bucket,
            output_bucket=storage.output_bucket,
            repository=registry.repository,
            log_group=logs.log_group,
            encryption_key=key,
        )

        declared = {
            outputs.DATA_BUCKET: storage.data_bucket.bucket_name,
            outputs.OUTPUT_BUCKET: storage.output_bucket.bucket_name,
            outputs.EXECUTION_ROLE_ARN: execution.role.role_arn,
            outputs.ECR_REPOSITORY_URI: registry.repository.repository_uri,
            outputs.ECR_REPOSITORY_NAME: registry.repository.repository_name,
            outputs.TRAINING_LOG_GROUP: logs.log_group.log_group_name,
            outputs.LAUNCHER_POLICY_ARN: launcher.policy.managed_policy_arn,
            outputs.REGION: Aws.REGION,
            outputs.JOB_NAME_PREFIX: settings.project,
            outputs.DATA_PREFIX: outputs.DATA_KEY_PREFIX,
        }
        if settings.github is not None:
            ci = CiDeployRole(
                self, "CiDeploy", github=settings.github, bootstrap_qualifier=settings.bootstrap_qualifier
            )
            declared[outputs.DEPLOY_ROLE_ARN] = ci.role.role_arn
            image_ci = CiImageRole(
                self, "CiImage", github=settings.github, provider_arn=ci.provider_arn, repository=registry.repository
            )
            declared[outputs.IMAGE_PUSH_ROLE_ARN] = image_ci.role.role_arn
        if key is not None:
            declared[outputs.KMS_KEY_ARN] = key.key_arn
        # Last: it covers the services of every resource above.
        cfn_execution = CfnExecutionPolicy(
            self,
            "CfnExecution",
            ecr_repository_name=settings.ecr_repository_name,
            bootstrap_qualifier=settings.bootstrap_qualifier,
            kms_alias=kms_alias,
            kms_key_arn=settings.kms.existing_key_arn if settings.kms.existing_key_arn else None,
        )
        declared[outputs.CFN_EXECUTION_POLICY_ARN] = cfn_execution.policy.managed_policy_arn
        for key_name, value in declared.items():
            CfnOutput(self, key_name, value=value).override_logical_id(key_name)
