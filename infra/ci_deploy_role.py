"""The role GitHub Actions assumes (OIDC, no stored keys) to run `cdk deploy` for this stack.

It can do one thing: assume the CDK bootstrap roles of this account and region, which
carry the actual deployment permissions and are already scoped by `cdk bootstrap`.
"""

from __future__ import annotations

from aws_cdk import Aws, Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from constructs import Construct

from infra.settings import GitHubSetting

GITHUB_OIDC_HOST = "token.actions.githubusercontent.com"
GITHUB_OIDC_AUDIENCE = "sts.amazonaws.com"
BOOTSTRAP_ROLE_KINDS = ("deploy", "file-publishing", "image-publishing", "lookup")


def github_principal(provider_arn: str, github: GitHubSetting) -> iam.WebIdentityPrincipal:
    """Tokens of GitHub's OIDC provider for this repository's ref or environment only.

    The `sub` claim is `repo:<owner>/<repo>:environment:<name>` for a job that declares an
    environment and `repo:<owner>/<repo>:ref:<ref>` otherwise (GitHub Docs, "About security
    hardening with OpenID Connect"); the deploy workflow declares one exactly when the stack
    was deployed with github_environment (.github/workflows/deploy.yml).
    """
    return iam.WebIdentityPrincipal(
        provider_arn,
        conditions={
            "StringEquals": {
                f"{GITHUB_OIDC_HOST}:aud": GITHUB_OIDC_AUDIENCE,
                f"{GITHUB_OIDC_HOST}:sub": github.subject,
            }
        },
    )


class CiDeployRole(Construct):
    def __init__(self, scope: Construct, id_: str, *, github: GitHubSetting, bootstrap_qualifier: str) -> None:
        super().__init__(scope, id_)
        if github.oidc_provider_arn:
            provider_arn = github.oidc_provider_arn
        else:
            # One provider per account and URL: import the existing one with github_oidc_provider_arn.
            provider = iam.OidcProviderNative(
                self,
                "GitHubOidcProvider",
                url=f"https://{GITHUB_OIDC_HOST}",
                client_ids=[GITHUB_OIDC_AUDIENCE],
                removal_policy=RemovalPolicy.RETAIN,
            )
            provider_arn = provider.oidc_provider_arn
        self.provider_arn = provider_arn  # shared with the image-push role (infra/ci_image_role.py)
        stack = Stack.of(self)
        bootstrap_roles = [
            stack.format_arn(
                service="iam",
                region="",
                resource="role",
                resource_name=f"cdk-{bootstrap_qualifier}-{kind}-role-{Aws.ACCOUNT_ID}-{Aws.REGION}",
            )
            for kind in BOOTSTRAP_ROLE_KINDS
        ]
        self.role = iam.Role(
            self,
            "Role",
            description=f"GitHub Actions deploys of this stack from {github.subject}",
            max_session_duration=Duration.hours(1),
            assumed_by=github_principal(provider_arn, github),
            inline_policies={
                "AssumeCdkBootstrapRoles": iam.PolicyDocument(
                    statements=[
                        iam.PolicyStatement(
                            sid="AssumeBootstrapRoles", actions=["sts:AssumeRole"], resources=bootstrap_roles
                        )
                    ]
                )
            },
        )
