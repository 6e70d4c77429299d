"""Stack settings parsed from CDK context, in one place.

Values come from `cdk.json`, `cdk.context.json` or `-c key=value` on the command line;
the command line gives strings, so every parser accepts the string form too. A bad value
raises `SettingsError` naming the context key, before any construct is built.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from infra.outputs import DEFAULT_STACK_NAME

# Context keys, as users type them after `-c`.
STACK_NAME = "stack_name"
PROJECT = "project"
ACCOUNT = "account"
REGION = "region"
LOG_RETENTION_DAYS = "log_retention_days"
KMS_KEY = "kms_key"
EXISTING_DATA_BUCKET = "existing_data_bucket"
CHECKPOINT_EXPIRY_DAYS = "checkpoint_expiry_days"
NONCURRENT_VERSION_EXPIRY_DAYS = "noncurrent_version_expiry_days"
ECR_KEEP_IMAGES = "ecr_keep_images"
# Removed: the stack now sets the group's retention whether or not it exists (infra/logs.py).
REMOVED_CREATE_TRAINING_LOG_GROUP = "create_training_log_group"
GITHUB_REPOSITORY = "github_repository"
GITHUB_REF = "github_ref"
GITHUB_ENVIRONMENT = "github_environment"
GITHUB_OIDC_PROVIDER_ARN = "github_oidc_provider_arn"
BOOTSTRAP_QUALIFIER = "@aws-cdk/core:bootstrapQualifier"

CONTEXT_KEYS = (
    STACK_NAME,
    PROJECT,
    ACCOUNT,
    REGION,
    LOG_RETENTION_DAYS,
    KMS_KEY,
    EXISTING_DATA_BUCKET,
    CHECKPOINT_EXPIRY_DAYS,
    NONCURRENT_VERSION_EXPIRY_DAYS,
    ECR_KEEP_IMAGES,
    GITHUB_REPOSITORY,
    GITHUB_REF,
    GITHUB_ENVIRONMENT,
    GITHUB_OIDC_PROVIDER_ARN,
)

DEFAULT_BOOTSTRAP_QUALIFIER = "hnb659fds"

# CloudWatch Logs accepts only these retention periods.
RETENTION_DAYS_ALLOWED = (
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731,
    1096, 1827, 2192, 2557, 2922, 3288, 3653,
)  # fmt: skip

_PROJECT_RE = re.compile(r"^[a-z][a-z0-9-]{0,19}$")
_STACK_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,127}$")
_ACCOUNT_RE = re.compile(r"^\d{12}$")
_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_KMS_KEY_ARN_RE = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]+$")
_OIDC_PROVIDER_ARN_RE = re.compile(
    r"^arn:aws[a-z-]*:iam::\d{12}:oidc-provider/token\.actions\.githubusercontent\.com$"
)
_GITHUB_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$")
_GITHUB_REF_RE = re.compile(r"^refs/(heads|tags)/[^\s*?\[\]]+$")
_GITHUB_ENV_RE = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")
_QUALIFIER_RE = re.compile(r"^[a-z0-9]{1,10}$")


class SettingsError(ValueError):
    """A context value is missing, malformed or out of range."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"CDK context '{key}': {message}")
        self.key = key


@dataclass(frozen=True)
class KmsSetting:
    """No key (S3-managed encryption), a key this stack creates, or an existing key."""

    create: bool = False
    existing_key_arn: str | None = None

    @property
    def enabled(self) -> bool:
        return self.create or self.existing_key_arn is not None


@dataclass(frozen=True)
class GitHubSetting:
    """The one repository and ref (or environment) whose workflows may deploy."""

    repository: str
    ref: str = "refs/heads/main"
    environment: str | None = None
    oidc_provider_arn: str | None = None  # import the account's provider instead of creating it

    @property
    def subject(self) -> str:
        """The `sub` claim GitHub puts in the token for this repository and ref/environment."""
        if self.environment:
            return f"repo:{self.repository}:environment:{self.environment}"
        return f"repo:{self.repository}:ref:{self.ref}"


@dataclass(frozen=True)
class StackSettings:
    stack_name: str = DEFAULT_STACK_NAME
    project: str = "b2t"  # job-name prefix and resource-name prefix
    account: str | None = None
    region: str | None = None
    log_retention_days: int = 90  # training log group and S3 access logs
    kms: KmsSetting = KmsSetting()
    existing_data_bucket: str | None = None
    checkpoint_expiry_days: int = 30  # 0 keeps checkpoints forever
    noncurrent_version_expiry_days: int = 30
    ecr_keep_images: int = 20
    github: GitHubSetting | None = None
    bootstrap_qualifier: str = DEFAULT_BOOTSTRAP_QUALIFIER

    @property
    def ecr_repository_name(self) -> str:
        return f"{self.project}-training"

    @classmethod
    def from_context(
        cls, get: Callable[[str], Any], *, default_account: str | None = None,
        default_region: str | None = None,
    ) -> StackSettings:
        """Parse settings; `get(key)` returns the context value or None (`node.try_get_context`)."""
        kms_key = get(KMS_KEY)
        repository = _optional_str(get, GITHUB_REPOSITORY, _GITHUB_REPO_RE, "owner/name")
        github_ref = _optional_str(get, GITHUB_REF, _GITHUB_REF_RE, "refs/heads/<branch> or refs/tags/<tag>")
        github_environment = _optional_str(get, GITHUB_ENVIRONMENT, _GITHUB_ENV_RE, "a GitHub environment name")
        oidc_provider_arn = _optional_str(
            get, GITHUB_OIDC_PROVIDER_ARN, _OIDC_PROVIDER_ARN_RE,
            "arn:aws:iam::<account>:oidc-provider/token.actions.githubusercontent.com",
        )
        if repository is None and (github_ref or github_environment or oidc_provider_arn):
            raise SettingsError(GITHUB_REPOSITORY, "required when github_ref, github_environment or "
                                "github_oidc_provider_arn is set")
        if github_ref and github_environment:
            raise SettingsError(GITHUB_ENVIRONMENT, "set either github_ref or github_environment, not both")
        github = None
        if repository is not None:
            github = GitHubSetting(
                repository=repository,
                ref=github_ref or GitHubSetting.ref,
                environment=github_environment,
                oidc_provider_arn=oidc_provider_arn,
            )
        if get(REMOVED_CREATE_TRAINING_LOG_GROUP) not in (None, ""):
            raise SettingsError(REMOVED_CREATE_TRAINING_LOG_GROUP, "no longer used: the stack sets the retention of "
                                "/aws/sagemaker/TrainingJobs whether or not the group exists; drop this option")
        retention = _int(get, LOG_RETENTION_DAYS, cls.log_retention_days, minimum=1)
        if retention not in RETENTION_DAYS_ALLOWED:
            raise SettingsError(LOG_RETENTION_DAYS, f"{retention} is not a CloudWatch Logs retention period; "
                                f"use one of {', '.join(map(str, RETENTION_DAYS_ALLOWED))}")
        return cls(
            stack_name=_optional_str(get, STACK_NAME, _STACK_NAME_RE, "letters, digits and hyphens")
            or cls.stack_name,
            project=_optional_str(get, PROJECT, _PROJECT_RE, "lowercase letters, digits, hyphens; ≤ 20 chars")
            or cls.project,
            account=_optional_str(get, ACCOUNT, _ACCOUNT_RE, "a 12-digit account id") or default_account,
            region=_optional_str(get, REGION, _REGION_RE, "a region such as eu-west-1") or default_region,
            log_retention_days=retention,
            kms=_kms(kms_key),
            existing_data_bucket=_optional_str(get, EXISTING_DATA_BUCKET, _BUCKET_RE, "an S3 bucket name"),
            checkpoint_expiry_days=_int(get, CHECKPOINT_EXPIRY_DAYS, cls.checkpoint_expiry_days, minimum=0),
            noncurrent_version_expiry_days=_int(
                get, NONCURRENT_VERSION_EXPIRY_DAYS, cls.noncurrent_version_expiry_days, minimum=1
            ),
            ecr_keep_images=_int(get, ECR_KEEP_IMAGES, cls.ecr_keep_images, minimum=1, maximum=10_000),
            github=github,
            bootstrap_qualifier=_optional_str(get, BOOTSTRAP_QUALIFIER, _QUALIFIER_RE, "the bootstrap qualifier")
            or cls.bootstrap_qualifier,
        )


def _optional_str(get: Callable[[str], Any], key: str, pattern: re.Pattern[str], expected: str) -> str | None:
    value = get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not pattern.match(value):
        raise SettingsError(key, f"expected {expected}, got {value!r}")
    return value


def _int(get: Callable[[str], Any], key: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
    value = get(key)
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise SettingsError(key, f"expected an integer, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise SettingsError(key, f"expected an integer, got {value!r}") from None
    if number < minimum or (maximum is not None and number > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise SettingsError(key, f"expected an integer {bound}, got {number}")
    return number


_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0"}


def _parse_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    return None


def _bool(get: Callable[[str], Any], key: str, default: bool) -> bool:
    value = get(key)
    if value is None or value == "":
        return default
    parsed = _parse_bool(value)
    if parsed is None:
        raise SettingsError(key, f"expected true or false, got {value!r}")
    return parsed


def _kms(value: Any) -> KmsSetting:
    if value is None or value == "":
        return KmsSetting()
    parsed = _parse_bool(value)
    if parsed is not None:
        return KmsSetting(create=parsed)
    if isinstance(value, str) and _KMS_KEY_ARN_RE.match(value):
        return KmsSetting(existing_key_arn=value)
    raise SettingsError(KMS_KEY, f"expected true, false or a KMS key ARN, got {value!r}")
