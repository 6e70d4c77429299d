"""The stack outputs the launcher works from, read from CloudFormation by the shared keys."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional

from infra import outputs as keys

from .aws import Aws, aws_errors, error_code
from .errors import MissingOutput, RegionMismatch, StackNotFound

_ECR_URI_RE = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com[^/]*/(?P<repo>.+)$")


@dataclass(frozen=True)
class StackOutputs:
    stack_name: str
    region: str
    data_bucket: str
    output_bucket: str
    execution_role_arn: str
    ecr_repository_uri: str
    ecr_repository_name: str
    log_group: str
    job_name_prefix: str
    data_prefix: str
    kms_key_arn: Optional[str] = None
    launcher_policy_arn: Optional[str] = None

    @classmethod
    def from_outputs(cls, stack_name: str, outputs: Mapping[str, str]) -> "StackOutputs":
        missing = [k for k in keys.REQUIRED if not outputs.get(k)]
        if missing:
            raise MissingOutput(stack_name, missing)
        prefix = outputs[keys.DATA_PREFIX]
        return cls(
            stack_name=stack_name,
            region=outputs[keys.REGION],
            data_bucket=outputs[keys.DATA_BUCKET],
            output_bucket=outputs[keys.OUTPUT_BUCKET],
            execution_role_arn=outputs[keys.EXECUTION_ROLE_ARN],
            ecr_repository_uri=outputs[keys.ECR_REPOSITORY_URI],
            ecr_repository_name=outputs[keys.ECR_REPOSITORY_NAME],
            log_group=outputs[keys.TRAINING_LOG_GROUP],
            job_name_prefix=outputs[keys.JOB_NAME_PREFIX],
            data_prefix=prefix if prefix.endswith("/") else prefix + "/",
            kms_key_arn=outputs.get(keys.KMS_KEY_ARN) or None,
            launcher_policy_arn=outputs.get(keys.LAUNCHER_POLICY_ARN) or None,
        )

    def data_url(self, sub_prefix: str = "") -> str:
        """``s3://<data bucket>/<data prefix>[<sub prefix>/]``, where the session folders live."""
        sub = sub_prefix.strip("/")
        return f"s3://{self.data_bucket}/{self.data_prefix}{sub + '/' if sub else ''}"

    @property
    def ecr_region(self) -> Optional[str]:
        m = _ECR_URI_RE.match(self.ecr_repository_uri)
        return m.group("region") if m else None


def placeholder_outputs(region: str = "us-east-1", prefix: str = "b2t") -> StackOutputs:
    """Stand-in outputs for local mode: same shape as a deployed stack, nothing real behind them."""
    account = "000000000000"
    return StackOutputs(
        stack_name="(local)",
        region=region,
        data_bucket=f"{prefix}-local-data",
        output_bucket=f"{prefix}-local-output",
        execution_role_arn=f"arn:aws:iam::{account}:role/{prefix}-local-execution",
        ecr_repository_uri=f"{account}.dkr.ecr.{region}.amazonaws.com/{prefix}-training",
        ecr_repository_name=f"{prefix}-training",
        log_group=keys.TRAINING_LOG_GROUP_NAME,
        job_name_prefix=prefix,
        data_prefix=keys.DATA_KEY_PREFIX,
    )


def read_stack_outputs(aws: Aws, stack_name: str = keys.DEFAULT_STACK_NAME) -> StackOutputs:
    """Describe the stack and check that it belongs to the region the launcher talks to."""
    from botocore.exceptions import ClientError

    cfn = aws.client("cloudformation")
    with aws_errors(f"reading stack {stack_name}"):
        try:
            stacks = cfn.describe_stacks(StackName=stack_name)["Stacks"]
        except ClientError as e:
            if error_code(e) == "ValidationError" and "does not exist" in str(e):
                raise StackNotFound(stack_name, aws.region) from e
            raise
    if not stacks:
        raise StackNotFound(stack_name, aws.region)
    raw = {o["OutputKey"]: o.get("OutputValue", "") for o in stacks[0].get("Outputs", [])}
    out = StackOutputs.from_outputs(stack_name, raw)
    if out.region != aws.region:
        raise RegionMismatch(f"stack {stack_name!r} (output {keys.REGION})", out.region, aws.region)
    if out.ecr_region and out.ecr_region != aws.region:
        raise RegionMismatch(f"ECR repository {out.ecr_repository_name!r}", out.ecr_region, aws.region)
    return out
