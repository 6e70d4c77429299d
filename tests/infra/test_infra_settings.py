"""Stack settings from CDK context: defaults, the command line's string forms, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.outputs import DEFAULT_STACK_NAME
from infra.settings import GitHubSetting, KmsSetting, SettingsError, StackSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
KEY_ARN = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def parse(**context) -> StackSettings:
    return StackSettings.from_context(context.get)


def test_defaults():
    settings = parse()
    assert settings.stack_name == DEFAULT_STACK_NAME
    assert settings.project == "b2t"
    assert settings.ecr_repository_name == "b2t-training"
    assert settings.kms == KmsSetting()
    assert settings.github is None
    assert settings.existing_data_bucket is None


def test_command_line_strings_are_parsed():
    settings = parse(
        log_retention_days="365", checkpoint_expiry_days="0", ecr_keep_images="5",
        kms_key="true",
    )
    assert (settings.log_retention_days, settings.checkpoint_expiry_days, settings.ecr_keep_images) == (365, 0, 5)
    assert settings.kms == KmsSetting(create=True)


def test_existing_kms_key_arn():
    assert parse(kms_key=KEY_ARN).kms == KmsSetting(existing_key_arn=KEY_ARN)


def test_account_and_region_fall_back_to_cdk_defaults():
    settings = StackSettings.from_context({}.get, default_account="123456789012", default_region="eu-west-1")
    assert (settings.account, settings.region) == ("123456789012", "eu-west-1")


@pytest.mark.parametrize(
    ("context", "subject"),
    [
        ({"github_repository": "lab/b2t"}, "repo:lab/b2t:ref:refs/heads/main"),
        ({"github_repository": "lab/b2t", "github_ref": "refs/tags/v1"}, "repo:lab/b2t:ref:refs/tags/v1"),
        ({"github_repository": "lab/b2t", "github_environment": "prod"}, "repo:lab/b2t:environment:prod"),
    ],
)
def test_github_subject(context, subject):
    github = parse(**context).github
    assert isinstance(github, GitHubSetting) and github.subject == subject


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("log_retention_days", "31"),
        ("log_retention_days", "a month"),
        ("checkpoint_expiry_days", "-1"),
        ("ecr_keep_images", "0"),
        ("ecr_keep_images", True),
        ("create_training_log_group", "true"),  # removed: the retention is set whether or not the group exists
        ("kms_key", "alias/mine"),
        ("project", "B2T"),
        ("project", "b2t_lab"),
        ("stack_name", "1stack"),
        ("account", "12345"),
        ("region", "Europe"),
        ("existing_data_bucket", "Not_A_Bucket"),
        ("github_repository", "just-a-name"),
        ("github_ref", "main"),
        ("github_oidc_provider_arn", "arn:aws:iam::123456789012:oidc-provider/example.com"),
    ],
)
def test_bad_value_names_the_context_key(key, value):
    context = {key: value}
    if key.startswith("github_") and key != "github_repository":
        context["github_repository"] = "lab/b2t"
    with pytest.raises(SettingsError, match=f"CDK context '{key}'"):
        parse(**context)


def test_github_options_need_a_repository():
    with pytest.raises(SettingsError, match="'github_repository'"):
        parse(github_environment="prod")


def test_github_ref_and_environment_are_exclusive():
    with pytest.raises(SettingsError, match="'github_environment'"):
        parse(github_repository="lab/b2t", github_ref="refs/heads/main", github_environment="prod")


@pytest.mark.parametrize(
    ("key", "value"),
    [("log_retention_days", "7x"), ("kms_key", "maybe"), ("github_repository", "noslash"),
     ("checkpoint_expiry_days", "-1")],
)
def test_entry_point_reports_a_bad_value_in_one_line(key, value, tmp_path):
    """`npx cdk synth -c key=value` runs app.py with the context in CDK_CONTEXT_JSON."""
    env = {**os.environ, "CDK_CONTEXT_JSON": json.dumps({key: value}), "CDK_OUTDIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "app.py"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: CDK context '{key}': "), run.stderr
    assert not list(tmp_path.iterdir()), "nothing is synthesized"
