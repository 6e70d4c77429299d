"""The SageMaker training log group: imported by default, created only on request.

`/aws/sagemaker/TrainingJobs` is one log group per account and region, shared by every
training job there; creating it fails where it already exists.
"""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.nag import checkov_skip

from infra.outputs import TRAINING_LOG_GROUP_NAME

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
    def __init__(self, scope: Construct, id_: str, *, create: bool, retention_in_days: int) -> None:
        super().__init__(scope, id_)
        self.log_group: logs.ILogGroup
        if create:
            self.log_group = logs.LogGroup(
                self,
                "LogGroup",
                log_group_name=TRAINING_LOG_GROUP_NAME,
                retention=retention_days(retention_in_days),
                removal_policy=RemovalPolicy.RETAIN,
            )
            checkov_skip(
                self.log_group,
                "CKV_AWS_158",
                "CloudWatch Logs encrypts log data at rest; training logs hold metrics and "
                "progress lines, no data or secrets.",
            )
        else:
            self.log_group = logs.LogGroup.from_log_group_name(self, "LogGroup", TRAINING_LOG_GROUP_NAME)
