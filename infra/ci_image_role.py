"""The role GitHub Actions assumes (OIDC) to build and push the training image (.github/workflows/image.yml).

It trusts the same repository and ref or environment as the deploy role and may push to
this stack's ECR repository only: log docker in (ecr:GetAuthorizationToken has no
resource-level permissions), check whether a tag exists, and upload layers and the image.
The repository's tags are immutable, so it cannot replace an image a job ran with.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from constructs import Construct

from infra import statements
from infra.ci_deploy_role import github_principal
from infra.nag import acknowledge
from infra.settings import GitHubSetting

PUSH_ACTIONS = (
    "ecr:BatchCheckLayerAvailability",
    "ecr:CompleteLayerUpload",
    "ecr:DescribeImages",
    "ecr:InitiateLayerUpload",
    "ecr:PutImage",
    "ecr:UploadLayerPart",
)


class CiImageRole(Construct):
    def __init__(
        self, scope: Construct, id_: str, *, github: GitHubSetting, provider_arn: str, repository: ecr.IRepository
    ) -> None:
        super().__init__(scope, id_)
        self.role = iam.Role(
            self,
            "Role",
            description=f"GitHub Actions pushes of the training image from {github.subject}",
            max_session_duration=Duration.hours(1),
            assumed_by=github_principal(provider_arn, github),
            inline_policies={
                "PushTrainingImage": iam.PolicyDocument(
                    statements=[
                        iam.PolicyStatement(sid="EcrLogin", actions=[statements.ECR_AUTH_ACTION], resources=["*"]),
                        iam.PolicyStatement(
                            sid="PushToStackRepository",
                            actions=list(PUSH_ACTIONS),
                            resources=[repository.repository_arn],
                        ),
                    ]
                )
            },
        )
        acknowledge(
            self.role,
            "AwsSolutions-IAM5[Resource::*]",
            reason="Only ecr:GetAuthorizationToken uses '*': it has no resource-level permissions; "
            "every push is checked against the repository statement.",
        )
