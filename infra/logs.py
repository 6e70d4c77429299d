"""The SageMaker training log group: its retention set whether or not it exists, never deleted.

`/aws/sagemaker/TrainingJobs` is one log group per account and region, shared by every
training job there, and SageMaker creates it on a job's first log line. A stack can neither
create it (CloudFormation fails where it already exists) nor import it and set its
retention (an imported group keeps "never expire"). Two SDK calls made by CloudFormation
custom resources (CDK's `AwsCustomResource`) do both: CreateLogGroup, with "already exists"
ignored, then PutRetentionPolicy on create and update; on delete nothing is called, so the
group and its logs outlive the stack. The calls' role may do exactly these two actions on this
group (CloudWatch Logs API reference, "CreateLogGroup", "PutRetentionPolicy").
"""

from __future__ import annotations

from aws_cdk import ArnFormat, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import custom_resources as cr
from constructs import Construct

from infra.nag import acknowledge, acknowledge_wildcard_resources, checkov_skip
from infra.outputs import TRAINING_LOG_GROUP_NAME

RETENTION_ACTIONS = ("logs:CreateLogGroup", "logs:PutRetentionPolicy")
ALREADY_EXISTS = "ResourceAlreadyExistsException"

_RETENTION_BY_DAYS = {
    1: logs.RetentionDays.ONE_DAY,
    3: logs.RetentionDays.THREE_DAYS,
    5: logs.RetentionDays.FIVE_DAYS,
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS,
    90: logs.RetentionDays.THREE_MONTHS,
    120: logs.RetentionDays.FOUR_MONTHS,
    150: logs.RetentionDays.FIVE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
    400: logs.RetentionDays.THIRTEEN_MONTHS,
    545: logs.RetentionDays.EIGHTEEN_MONTHS,
    731: logs.RetentionDays.TWO_YEARS,
    1096: logs.RetentionDays.THREE_YEARS,
    1827: logs.RetentionDays.FIVE_YEARS,
    2192: logs.RetentionDays.SIX_YEARS,
    2557: logs.RetentionDays.SEVEN_YEARS,
    2922: logs.RetentionDays.EIGHT_YEARS,
    3288: logs.RetentionDays.NINE_YEARS,
    3653: logs.RetentionDays.TEN_YEARS,
}


def retention_days(days: int) -> logs.RetentionDays:
    """The `RetentionDays` member for a number of days (members are named, not numbered)."""
    try:
        return _RETENTION_BY_DAYS[days]
    except KeyError:
        raise ValueError(f"{days} is not a CloudWatch Logs retention period") from None


class TrainingLogs(Construct):
    def __init__(self, scope: Construct, id_: str, *, retention_in_days: int) -> None:
        super().__init__(scope, id_)
        retention_days(retention_in_days)  # a CloudWatch Logs period, or ValueError
        self.log_group: logs.ILogGroup = logs.LogGroup.from_log_group_name(self, "LogGroup", TRAINING_LOG_GROUP_NAME)
        stack = Stack.of(self)
        group_arns = [
            stack.format_arn(service="logs", resource="log-group", resource_name=name,
                             arn_format=ArnFormat.COLON_RESOURCE_NAME)
            for name in (TRAINING_LOG_GROUP_NAME, f"{TRAINING_LOG_GROUP_NAME}:*")
        ]
        policy = cr.AwsCustomResourcePolicy.from_statements(
            [iam.PolicyStatement(actions=list(RETENTION_ACTIONS), resources=group_arns)]
        )
        create = cr.AwsCustomResource(
            self,
            "EnsureLogGroup",
            on_create=cr.AwsSdkCall(
                service="CloudWatchLogs",
                action="createLogGroup",
                parameters={"logGroupName": TRAINING_LOG_GROUP_NAME},
                physical_resource_id=cr.PhysicalResourceId.of(TRAINING_LOG_GROUP_NAME),
                ignore_error_codes_matching=ALREADY_EXISTS,
            ),
            policy=policy,
            install_latest_aws_sdk=False,
        )
        retention_call = cr.AwsSdkCall(
            service="CloudWatchLogs",
            action="putRetentionPolicy",
            parameters={"logGroupName": TRAINING_LOG_GROUP_NAME, "retentionInDays": retention_in_days},
            physical_resource_id=cr.PhysicalResourceId.of(f"{TRAINING_LOG_GROUP_NAME}:retention"),
        )
        self.retention = cr.AwsCustomResource(
            self, "Retention", on_create=retention_call, on_update=retention_call, policy=policy,
            install_latest_aws_sdk=False,
        )
        self.retention.node.add_dependency(create)
        for resource in (create, self.retention):
            acknowledge_wildcard_resources(
                resource,
                [group_arns[1]],
                reason="The training log group's ARN ends in ':*' as CloudWatch Logs ARNs do; only "
                "CreateLogGroup and PutRetentionPolicy on this one group.",
            )
        self.provider = Stack.of(self).node.find_child(AWS_CUSTOM_RESOURCE_PROVIDER_ID)
        _annotate_provider(self.provider)


# CDK's id for the singleton Lambda function behind every AwsCustomResource of a stack.
AWS_CUSTOM_RESOURCE_PROVIDER_ID = "AWS679f53fac002430cb0da5b7982bd2287"


def _annotate_provider(provider: Construct) -> None:
    """Reasons for the findings on CDK's own provider function (it runs two calls at deploy time)."""
    acknowledge(
        provider,
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]",
        "CDK's AwsCustomResource provider writes its own logs with the AWS managed basic execution "
        "policy (CreateLogGroup/CreateLogStream/PutLogEvents); it holds no data access.",
    )
    reasons = {
        "CKV_AWS_115": "Runs only when CloudFormation creates or updates the stack; no concurrency to reserve.",
        "CKV_AWS_116": "Invoked synchronously by CloudFormation, which reports a failure itself; no dead-letter queue.",
        "CKV_AWS_117": "Calls only the CloudWatch Logs API; no VPC resources to reach.",
        "CKV_AWS_173": "CDK's provider has no environment variables holding secrets.",
    }
    function = provider.node.default_child
    for check_id, comment in reasons.items():
        checkov_skip(function, check_id, comment)
    # CDK writes DependsOn on the role that the function's Role GetAtt already implies (cfn-lint W3005).
    function.add_deletion_override("DependsOn")
    checkov_skip(
        provider.node.find_child("LogGroup"),
        "CKV_AWS_158",
        "The provider's own log group holds its call traces (log group name, retention), no data or secrets; "
        "CloudWatch Logs encrypts it at rest.",
    )
