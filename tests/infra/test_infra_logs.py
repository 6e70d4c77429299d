"""The training log group's retention, set by the stack's two SDK calls, against moto.

moto cannot run the custom resources' Lambda provider (tests/infra/moto_template.py), so the
calls the template declares are made here as the provider would make them: in order, with
the declared error codes ignored, once where the group does not exist yet and once where
SageMaker already created it (with logs in it).
"""

from __future__ import annotations

import re

import pytest
from botocore.exceptions import ClientError

from infra import outputs
from tests.infra.test_infra_template import sdk_calls

SERVICES = {"CloudWatchLogs": "logs"}


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def run_call(server, call: dict) -> None:
    """One AwsCustomResource call: `service.action(parameters)`, ignoring the declared error codes."""
    client = server.client(SERVICES[call["service"]])
    try:
        getattr(client, snake(call["action"]))(**call["parameters"])
    except ClientError as error:
        ignored = call.get("ignoreErrorCodesMatching")
        if not ignored or not re.search(ignored, error.response["Error"]["Code"]):
            raise


def deploy_calls(body: dict, kind: str) -> None:
    calls = sdk_calls(body)
    return [calls[name][kind] for name in ("EnsureLogGroup", "Retention") if kind in calls[name]]


def group(server) -> dict:
    (found,) = [g for g in server.client("logs").describe_log_groups(logGroupNamePrefix=outputs.TRAINING_LOG_GROUP_NAME)
                ["logGroups"] if g["logGroupName"] == outputs.TRAINING_LOG_GROUP_NAME]
    return found


@pytest.mark.parametrize("exists", [False, True], ids=["group-missing", "group-exists"])
def test_create_sets_retention_whether_or_not_the_group_exists(moto_reset, default_synth, exists):
    logs = moto_reset.client("logs")
    if exists:  # as SageMaker leaves it: never expire, a stream with events
        logs.create_log_group(logGroupName=outputs.TRAINING_LOG_GROUP_NAME)
        logs.create_log_stream(logGroupName=outputs.TRAINING_LOG_GROUP_NAME, logStreamName="b2t-old/algo-1")
    for call in deploy_calls(default_synth.body, "Create"):
        run_call(moto_reset, call)
    assert group(moto_reset)["retentionInDays"] == 90
    if exists:
        streams = logs.describe_log_streams(logGroupName=outputs.TRAINING_LOG_GROUP_NAME)["logStreams"]
        assert [s["logStreamName"] for s in streams] == ["b2t-old/algo-1"]


def test_update_changes_retention_and_delete_calls_nothing(moto_reset, default_synth):
    for call in deploy_calls(default_synth.body, "Create"):
        run_call(moto_reset, call)
    updated = [{**c, "parameters": {**c["parameters"], "retentionInDays": 365}} for c in deploy_calls(default_synth.body, "Update")]
    for call in updated:
        run_call(moto_reset, call)
    assert group(moto_reset)["retentionInDays"] == 365
    assert deploy_calls(default_synth.body, "Delete") == []  # the group outlives the stack
