"""The role SageMaker assumes to run a training job: explicit statements, no managed policies.

Its scope follows the key layout in `infra.outputs`: read `data/` in the data bucket; read
and write `jobs/` (model output, config channel) and `checkpoints/` (synced both ways on
spot restarts) in the output bucket; pull this repository's image; write this log group;
put metrics in the SageMaker namespace.
"""

from __future__ import annotations

from aws_cdk import ArnFormat, Aws, Stack
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra import statements
from infra.nag import acknowledge, acknowledge_wildcard_resources
from infra.outputs import CHECKPOINT_KEY_PREFIX, DATA_KEY_PREFIX, METRIC_NAMESPACE, OUTPUT_KEY_PREFIX

ECR_PULL_ACTIONS = ("ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer")
LOG_WRITE_ACTIONS = ("logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents")
# SageMaker creates the account's training log group on first use when it is missing.
LOG_CREATE_GROUP_ACTION = "logs:CreateLogGroup"
# SageMaker writes model output once and never deletes it; only checkpoints are replaced.
JOB_OBJECT_ACTIONS = ("s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject")
CHECKPOINT_OBJECT_ACTIONS = (*JOB_OBJECT_ACTIONS, "s3:DeleteObject")


def training_job_arn(scope: Construct, job_name_prefix: str) -> str:
    """`arn:…:sagemaker:<region>:<account>:training-job/<prefix>-*`: this project's jobs."""
    return Stack.of(scope).format_arn(
        service="sagemaker",
        resource="training-job",
        resource_name=f"{job_name_prefix}-*",
        arn_format=ArnFormat.SLASH_RESOURCE_NAME,
    )


class ExecutionRole(Construct):
    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        data_bucket: s3.IBucket,
        output_bucket: s3.IBucket,
        repository: ecr.IRepository,
        log_group: logs.ILogGroup,
        log_group_is_imported: bool,
        encryption_key: kms.IKey | None,
        job_name_prefix: str,
    ) -> None:
        super().__init__(scope, id_)
        output_prefixes = (OUTPUT_KEY_PREFIX, CHECKPOINT_KEY_PREFIX)
        log_actions = [*LOG_WRITE_ACTIONS, *([LOG_CREATE_GROUP_ACTION] if log_group_is_imported else [])]
        policy_statements = [
            statements.list_whole_bucket("ListData", data_bucket),
            statements.object_access("ReadData", data_bucket, [DATA_KEY_PREFIX], ["s3:GetObject"]),
            statements.list_whole_bucket("ListOutputs", output_bucket),
            statements.object_access("ReadWriteJobs", output_bucket, [OUTPUT_KEY_PREFIX], JOB_OBJECT_ACTIONS),
            statements.object_access(
                "ReadWriteCheckpoints", output_bucket, [CHECKPOINT_KEY_PREFIX], CHECKPOINT_OBJECT_ACTIONS
            ),
            iam.PolicyStatement(sid="PullImage", actions=list(ECR_PULL_ACTIONS), resources=[repository.repository_arn]),
            iam.PolicyStatement(sid="EcrLogin", actions=[statements.ECR_AUTH_ACTION], resources=["*"]),
            iam.PolicyStatement(sid="WriteLogs", actions=log_actions, resources=[log_group.log_group_arn]),
            iam.PolicyStatement(
                sid="PutMetrics",
                actions=[statements.PUT_METRIC_ACTION],
                resources=["*"],
                conditions={"StringEquals": {"cloudwatch:namespace": METRIC_NAMESPACE}},
            ),
        ]
        if encryption_key is not None:
            policy_statements.append(
                statements.kms_use("UseStackKey", encryption_key, statements.EXECUTION_KMS_ACTIONS)
            )
            # ResourceConfig.VolumeKmsKeyId: SageMaker creates the EBS volume's grant as this role.
            policy_statements.append(
                iam.PolicyStatement(
                    sid="GrantVolumeKey",
                    actions=["kms:CreateGrant"],
                    resources=[encryption_key.key_arn],
                    conditions={"Bool": {"kms:GrantIsForAWSResource": "true"}},
                )
            )

        self.role = iam.Role(
            self,
            "Role",
            description="Assumed by SageMaker training jobs of this project",
            assumed_by=iam.ServicePrincipal(
                "sagemaker.amazonaws.com",
                # "Cross-service confused deputy prevention" (SageMaker AI developer guide): only
                # SageMaker acting for this account's training jobs of this project may assume it.
                conditions={
                    "StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID},
                    "ArnLike": {"aws:SourceArn": training_job_arn(self, job_name_prefix)},
                },
            ),
        )
        # A separate AWS::IAM::Policy rather than the role's inline Policies property: same effect
        # in AWS, and the form moto evaluates for the allow/deny tests (tests/infra).
        self.policy = iam.Policy(
            self, "Policy", roles=[self.role], document=iam.PolicyDocument(statements=policy_statements)
        )
        acknowledge_wildcard_resources(
            self,
            [
                *statements.object_arns(data_bucket, [DATA_KEY_PREFIX]),
                *statements.object_arns(output_bucket, output_prefixes),
            ],
            reason="Object ARNs are limited to the fixed key prefixes of infra/outputs.py; "
            "job and checkpoint names are only known at launch time.",
        )
        acknowledge_wildcard_resources(
            self,
            [log_group.log_group_arn],
            reason="The training log group's ARN ends in ':*' to cover its log streams (one per job and host).",
        )
        acknowledge(
            self,
            "AwsSolutions-IAM5[Resource::*]",
            reason="Only ecr:GetAuthorizationToken and cloudwatch:PutMetricData (namespace-conditioned) "
            "use '*': neither supports resource-level permissions.",
        )
