"""The CloudFormation execution policy for `cdk bootstrap --cloudformation-execution-policies`.

Without it the CDK bootstrap gives CloudFormation AdministratorAccess, and the CI deploy role
(infra/ci_deploy_role.py), which can assume the bootstrap roles, could deploy anything. This
managed policy allows the services of the resource types this stack deploys and nothing
else, each scoped to this stack's own names where the names are known in advance
(CloudFormation names a resource `<stack name>-<logical id>-<suffix>`; buckets in lower case).

Where the rules live: AWS CDK developer guide, "Customizing CDK bootstrapping" (the
`--cloudformation-execution-policies` option); CloudFormation user guide, "CloudFormation
service role" (CloudFormation makes every call of a deployment with this role, including
resolving the bootstrap version SSM parameter and invoking custom resource functions);
AWS Lambda developer guide, "CreateFunction" (the caller needs s3:GetObject on the code).

Deliberate limits: CloudFormation's resource handlers call many read and write APIs per
type, which change over time and cannot be exercised here, so each service gets `<service>:*`
on this stack's resources rather than a hand-copied action list that could fail a deploy.
KMS is the exception: only key management actions (no Decrypt/Encrypt/GenerateDataKey), as
`kms:CreateKey` cannot be scoped. The policy limits which services and resources a template
can touch; it cannot stop a template from giving the roles it creates wide inline policies,
so attaching AWS managed policies other than the Lambda basic execution role is denied.
"""

from __future__ import annotations

from aws_cdk import ArnFormat, Aws, CfnResource, Stack
from aws_cdk import aws_iam as iam
from constructs import Construct

from infra.nag import acknowledge, acknowledge_wildcard_resources

# The IAM service prefix of each CloudFormation resource namespace this app may deploy.
SERVICE_OF_NAMESPACE = {
    "S3": "s3", "IAM": "iam", "ECR": "ecr", "KMS": "kms", "Lambda": "lambda", "Logs": "logs",
}
# Resource types that are not AWS services: CDK's metadata (no API call) and custom
# resources (CloudFormation invokes their Lambda function: lambda:InvokeFunction).
NO_SERVICE_TYPES = {"AWS::CDK::Metadata"}
CUSTOM_RESOURCE_SERVICE = "lambda"
# Used by every deployment, not by a resource: the bootstrap version check.
EXTRA_SERVICES = {"ssm": "the CDK bootstrap version parameter, resolved by CloudFormation at each deployment"}
KMS_MANAGEMENT_ACTIONS = (
    "kms:CreateAlias", "kms:CreateGrant", "kms:DeleteAlias", "kms:DescribeKey", "kms:DisableKey",
    "kms:DisableKeyRotation", "kms:EnableKey", "kms:EnableKeyRotation", "kms:GetKeyPolicy",
    "kms:GetKeyRotationStatus", "kms:ListAliases", "kms:ListResourceTags", "kms:PutKeyPolicy",
    "kms:RetireGrant", "kms:ScheduleKeyDeletion", "kms:TagResource", "kms:UntagResource",
    "kms:UpdateAlias", "kms:UpdateKeyDescription",
)
LAMBDA_BASIC_EXECUTION = "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"


def service_of(resource_type: str) -> str | None:
    """`AWS::S3::Bucket` → `s3`; `Custom::X` → `lambda`; None for types with no service."""
    if resource_type in NO_SERVICE_TYPES:
        return None
    if resource_type.startswith("Custom::") or resource_type == "AWS::CloudFormation::CustomResource":
        return CUSTOM_RESOURCE_SERVICE
    namespace = resource_type.split("::")[1]
    if namespace not in SERVICE_OF_NAMESPACE:
        raise ValueError(f"{resource_type}: add its service to infra/cfn_execution_policy.py")
    return SERVICE_OF_NAMESPACE[namespace]


def stack_services(stack: Stack) -> set[str]:
    """The services of every CloudFormation resource in `stack` so far."""
    types = {c.cfn_resource_type for c in stack.node.find_all() if isinstance(c, CfnResource)}
    return {s for s in map(service_of, types) if s} | {"iam"}  # iam: this policy itself


class CfnExecutionPolicy(Construct):
    """Create it last in the stack: it covers the services of the resources created before it."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        ecr_repository_name: str,
        bootstrap_qualifier: str,
        kms_alias: str,
        kms_key_arn: str | None,
    ) -> None:
        super().__init__(scope, id_)
        stack = Stack.of(self)
        name = stack.stack_name
        services = stack_services(stack)
        if kms_key_arn:
            services.add("kms")
        arn = stack.format_arn
        by_service: dict[str, list[iam.PolicyStatement]] = {
            "s3": [
                _allow("StackBuckets", ["s3:*"], [f"arn:{Aws.PARTITION}:s3:::{name.lower()}-*"]),
                _allow("ReadCdkAssets", ["s3:GetObject"],
                       [f"arn:{Aws.PARTITION}:s3:::cdk-{bootstrap_qualifier}-assets-{Aws.ACCOUNT_ID}-{Aws.REGION}/*"]),
            ],
            "iam": [
                _allow("StackIam", ["iam:*"], [
                    arn(service="iam", region="", resource="role", resource_name=f"{name}-*"),
                    arn(service="iam", region="", resource="policy", resource_name=f"{name}-*"),
                    arn(service="iam", region="", resource="oidc-provider",
                        resource_name="token.actions.githubusercontent.com"),
                ]),
                iam.PolicyStatement(
                    sid="NoForeignManagedPolicies",
                    effect=iam.Effect.DENY,
                    actions=["iam:AttachRolePolicy", "iam:AttachUserPolicy", "iam:AttachGroupPolicy"],
                    resources=["*"],
                    conditions={"ArnNotLike": {"iam:PolicyARN": [
                        LAMBDA_BASIC_EXECUTION.replace("arn:aws:", f"arn:{Aws.PARTITION}:"),
                        arn(service="iam", region="", resource="policy", resource_name=f"{name}-*"),
                    ]}},
                ),
            ],
            "ecr": [_allow("StackRepository", ["ecr:*"],
                           [arn(service="ecr", resource="repository", resource_name=ecr_repository_name)])],
            "lambda": [_allow("StackFunctions", ["lambda:*"],
                              [arn(service="lambda", resource="function", resource_name=f"{name}-*",
                                   arn_format=ArnFormat.COLON_RESOURCE_NAME)])],
            "logs": [_allow("StackFunctionLogs", ["logs:*"],
                            [arn(service="logs", resource="log-group", resource_name=f"/aws/lambda/{name}-*",
                                 arn_format=ArnFormat.COLON_RESOURCE_NAME)])],
            "kms": [
                _allow("ManageKeys", list(KMS_MANAGEMENT_ACTIONS), [
                    kms_key_arn or arn(service="kms", resource="key", resource_name="*"),
                    arn(service="kms", resource="alias", resource_name=kms_alias.removeprefix("alias/")),
                ]),
                *([_allow("CreateKey", ["kms:CreateKey"], ["*"])] if kms_key_arn is None else []),
            ],
            "ssm": [_allow("BootstrapVersion", ["ssm:GetParameters"], [
                arn(service="ssm", resource="parameter", resource_name=f"cdk-bootstrap/{bootstrap_qualifier}/version"),
            ])],
        }
        chosen = [s for service in sorted(services | set(EXTRA_SERVICES)) for s in by_service[service]]
        self.policy = iam.ManagedPolicy(
            self,
            "Policy",
            managed_policy_name=f"{name}-CfnExecution",
            description=f"CloudFormation execution policy for the CDK bootstrap of {name}",
            statements=chosen,
        )
        reason = ("CloudFormation's execution policy: each service this stack deploys gets '<service>:*' on this "
                  "stack's own resources (the handlers' calls vary and cannot be tested offline); kms:CreateKey "
                  "cannot be scoped; see infra/cfn_execution_policy.py.")
        for statement in chosen:
            if statement.effect != iam.Effect.ALLOW:
                continue
            for action in statement.actions:
                if "*" in action:
                    acknowledge(self.policy, f"AwsSolutions-IAM5[Action::{action}]", reason)
            acknowledge_wildcard_resources(self.policy, [r for r in statement.resources if "*" in r], reason)

def _allow(sid: str, actions: list[str], resources: list[str]) -> iam.PolicyStatement:
    return iam.PolicyStatement(sid=sid, actions=actions, resources=resources)

