"""The managed policy for the people and CI jobs that launch training (attach it to them).

It can start, watch and stop this project's jobs only (names `<prefix>-*`), pass only the
execution role and only to SageMaker, upload data and job configs, download job outputs,
read checkpoints and the training logs, and read this stack's outputs.
"""

from __future__ import annotations

from aws_cdk import Aws
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra import statements
from infra.execution_role import training_job_arn
from infra.nag import acknowledge, acknowledge_wildcard_resources
from infra.outputs import CHECKPOINT_KEY_PREFIX, DATA_KEY_PREFIX, OUTPUT_KEY_PREFIX

TRAINING_JOB_ACTIONS = (
    "sagemaker:AddTags",
    "sagemaker:CreateTrainingJob",
    "sagemaker:DescribeTrainingJob",
    "sagemaker:StopTrainingJob",
)
# sagemaker:ListTrainingJobs and ecr:GetAuthorizationToken have no resource-level permissions
# (the Service Authorization Reference lists no resource type for them), so they can only be
# granted on "*". The first reveals job names and states, not data (the launcher filters by
# name prefix itself); the second only logs docker in: each push is still checked against
# the repository statement below.
UNSCOPABLE_LAUNCHER_ACTIONS = ("sagemaker:ListTrainingJobs", statements.ECR_AUTH_ACTION)
LOG_READ_ACTIONS = ("logs:DescribeLogStreams", "logs:FilterLogEvents", "logs:GetLogEvents")
# `launcher image --run` pushes to this repository; its tags are immutable, so a push cannot
# replace an image that jobs ran with.
PUSH_IMAGE_ACTIONS = (
    "ecr:BatchCheckLayerAvailability",
    "ecr:CompleteLayerUpload",
    "ecr:InitiateLayerUpload",
    "ecr:PutImage",
    "ecr:UploadLayerPart",
)
UPLOAD_ACTIONS = ("s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject")
# The launcher writes only a job's config channel (jobs/<job>/input/...); SageMaker writes the
# job's output (jobs/<job>/output/model.tar.gz) with the execution role. So a launcher can read
# every job's output but overwrite none: IAM's `*` spans '/', and SageMaker's output keys hold
# no '/input/' (jobs/<job>/output/..., S3OutputPath = s3://<out>/jobs/).
JOB_INPUT_PREFIX = f"{OUTPUT_KEY_PREFIX}*/input/"


class LauncherPolicy(Construct):
    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        job_name_prefix: str,
        execution_role: iam.IRole,
        data_bucket: s3.IBucket,
        output_bucket: s3.IBucket,
        repository: ecr.IRepository,
        log_group: logs.ILogGroup,
        encryption_key: kms.IKey | None,
    ) -> None:
        super().__init__(scope, id_)
        training_jobs = training_job_arn(self, job_name_prefix)
        policy_statements = [
            iam.PolicyStatement(sid="ManageJobs", actions=list(TRAINING_JOB_ACTIONS), resources=[training_jobs]),
            iam.PolicyStatement(sid="Unscopable", actions=list(UNSCOPABLE_LAUNCHER_ACTIONS), resources=["*"]),
            iam.PolicyStatement(
                sid="PassExecutionRole",
                actions=["iam:PassRole"],
                resources=[execution_role.role_arn],
                conditions={"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
            ),
            statements.list_bucket("ListData", data_bucket, [DATA_KEY_PREFIX]),
            statements.object_access("UploadData", data_bucket, [DATA_KEY_PREFIX], UPLOAD_ACTIONS),
            statements.list_bucket("ListOutputs", output_bucket, [OUTPUT_KEY_PREFIX, CHECKPOINT_KEY_PREFIX]),
            statements.object_access("ReadJobs", output_bucket, [OUTPUT_KEY_PREFIX], ["s3:GetObject"]),
            statements.object_access("WriteJobInputs", output_bucket, [JOB_INPUT_PREFIX], UPLOAD_ACTIONS),
            statements.object_access("ReadCheckpoints", output_bucket, [CHECKPOINT_KEY_PREFIX], ["s3:GetObject"]),
            iam.PolicyStatement(sid="ReadStackOutputs", actions=["cloudformation:DescribeStacks"],
                                resources=[Aws.STACK_ID]),
            iam.PolicyStatement(sid="DescribeImages", actions=["ecr:DescribeImages"],
                                resources=[repository.repository_arn]),
            iam.PolicyStatement(sid="PushImage", actions=list(PUSH_IMAGE_ACTIONS),
                                resources=[repository.repository_arn]),
            iam.PolicyStatement(sid="ReadLogs", actions=list(LOG_READ_ACTIONS), resources=[log_group.log_group_arn]),
        ]
        if encryption_key is not None:
            policy_statements.append(statements.kms_use("UseStackKey", encryption_key))

        self.policy = iam.ManagedPolicy(
            self,
            "Policy",
            description=f"Launch and follow SageMaker training jobs named {job_name_prefix}-*",
            statements=policy_statements,
        )
        acknowledge_wildcard_resources(
            self.policy,
            [
                training_jobs,
                *statements.object_arns(data_bucket, [DATA_KEY_PREFIX]),
                *statements.object_arns(output_bucket, [OUTPUT_KEY_PREFIX, JOB_INPUT_PREFIX, CHECKPOINT_KEY_PREFIX]),
            ],
            reason="Job ARNs are limited to this project's job-name prefix and object ARNs to the fixed "
            "key prefixes of infra/outputs.py; names are only known at launch time.",
        )
        acknowledge_wildcard_resources(
            self.policy,
            [log_group.log_group_arn],
            reason="The training log group's ARN ends in ':*' to cover its log streams (one per job and host).",
        )
        acknowledge(
            self.policy,
            "AwsSolutions-IAM5[Resource::*]",
            reason="Only sagemaker:ListTrainingJobs and ecr:GetAuthorizationToken use '*': neither supports "
            "resource-level permissions.",
        )
