"""The request builder (pure), its offline validation, and the trainer's metric regexes."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from launcher.errors import InvalidRequest, UsageError
from launcher.request import (
    JobSpec,
    build_training_job_request,
    make_job_name,
    metric_definitions,
    qualify_job_name,
    validate_request,
)
from launcher.stack import placeholder_outputs


@pytest.fixture
def outputs():
    return placeholder_outputs()


def build(outputs, **kw):
    return build_training_job_request(JobSpec(job_name="b2t-demo-1", config_file="demo.yaml", image_tag="3f2a9c1b7d4e", **kw), outputs)


def test_request_passes_botocores_model(outputs):
    validate_request(build(outputs, overrides=("num_training_batches=10",)))


def test_validation_catches_unknown_keys_and_non_string_hyperparameters(outputs):
    request = build(outputs)
    request["HyperParameters"]["epochs"] = 5
    request["Bogus"] = 1
    with pytest.raises(InvalidRequest, match=r"Unknown parameter in input: \"Bogus\".*\(and 1 more\)"):
        validate_request(request)


def test_validation_catches_a_bad_job_name(outputs):
    request = build(outputs)
    request["TrainingJobName"] = "b2t_demo"
    with pytest.raises(InvalidRequest, match="pattern"):
        validate_request(request)


def test_config_travels_as_a_channel_and_overrides_as_json(outputs):
    request = build(outputs, overrides=("lr_max=0.004", "dataset.sessions=[a, b]"))
    assert json.loads(request["HyperParameters"]["overrides"]) == ["lr_max=0.004", "dataset.sessions=[a, b]"]
    assert request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == (
        "s3://b2t-local-output/jobs/b2t-demo-1/input/config/"
    )
    assert request["HyperParameters"]["data_url"] == "s3://b2t-local-data/data/"


def test_data_sub_prefix(outputs):
    assert build(outputs, data_sub_prefix="/diphone/")["HyperParameters"]["data_url"] == (
        "s3://b2t-local-data/data/diphone/"
    )


def test_spot_is_the_default_with_checkpoints_and_max_wait(outputs):
    request = build(outputs, max_run_hours=5)
    assert request["EnableManagedSpotTraining"] is True
    assert request["CheckpointConfig"] == {
        "S3Uri": "s3://b2t-local-output/checkpoints/b2t-demo-1/",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 18000, "MaxWaitTimeInSeconds": 36000}


def test_spot_without_checkpoints_is_refused(outputs):
    with pytest.raises(UsageError, match="managed spot needs checkpoints"):
        build(outputs, checkpoints=False)


def test_one_instance_only(outputs):
    assert build(outputs)["ResourceConfig"]["InstanceCount"] == 1
    with pytest.raises(UsageError, match="^--instance-count: the trainer runs on one instance; use a larger"):
        build(outputs, instance_count=2)


def test_the_image_is_the_tag_in_the_stacks_repository(outputs):
    assert build(outputs)["AlgorithmSpecification"]["TrainingImage"] == (
        "000000000000.dkr.ecr.us-east-1.amazonaws.com/b2t-training:3f2a9c1b7d4e"
    )


def test_on_demand_without_checkpoints(outputs):
    request = build(outputs, spot=False, checkpoints=False)
    assert "CheckpointConfig" not in request and "MaxWaitTimeInSeconds" not in request["StoppingCondition"]


def test_kms_key_encrypts_volume_and_output(outputs):
    from dataclasses import replace

    arn = "arn:aws:kms:us-east-1:123456789012:key/abc"
    request = build(replace(outputs, kms_key_arn=arn))
    assert request["ResourceConfig"]["VolumeKmsKeyId"] == arn and request["OutputDataConfig"]["KmsKeyId"] == arn


def test_job_names_fit_sagemakers_pattern():
    now = dt.datetime(2026, 11, 29, 10, 15, 0, tzinfo=dt.timezone.utc)
    assert make_job_name("b2t", "rnn_args.yaml", now) == "b2t-rnn-args-20261129-101500"
    long = make_job_name("b2t", "x" * 200 + ".yaml", now)
    assert len(long) <= 63 and long.endswith("-20261129-101500")
    assert qualify_job_name("my-run", "b2t") == "b2t-my-run"
    assert qualify_job_name("b2t-my-run", "b2t") == "b2t-my-run"
    with pytest.raises(UsageError):
        qualify_job_name("my_run", "b2t")


def test_metric_definitions_come_from_the_trainer(outputs):
    from trainer import metrics

    assert build(outputs)["AlgorithmSpecification"]["MetricDefinitions"] == metrics.metric_definitions()


def trainer_lines() -> list[str]:
    """Metric lines exactly as the trainer's own sink prints them."""
    import io

    from trainer.metrics import MetricsSink

    out = io.StringIO()
    sink = MetricsSink(None, stream=out)
    sink.emit("train", 199, {"train_loss": 1.2345, "lr": 1e-05, "lr_day": 0.005, "grad_norm": 0.81,
                             "sec_per_batch": 0.0412})
    sink.emit("val", 1999, {"val_loss": 0.9876, "val_PER": 0.2345})
    sink.emit("val", 1999, {"val_PER": 0.21}, session="t15.2023.08.13")
    return out.getvalue().splitlines()


def test_metric_regexes_match_the_trainers_lines():
    found: dict[str, list[float]] = {}
    for line in trainer_lines():
        for d in metric_definitions():
            m = re.search(d["Regex"], line)
            if m:
                found.setdefault(d["Name"], []).append(float(m.group(1)))
    assert found == {
        "train_loss": [1.2345], "lr": [1e-05], "lr_day": [0.005], "grad_norm": [0.81],
        "sec_per_batch": [0.0412], "val_loss": [0.9876], "val_PER": [0.2345],
    }  # the per-session line is not mistaken for the overall val_PER
