"""The notebook path: an SDK v3 ModelTrainer builds the same job as the launcher."""

from __future__ import annotations

import pytest

import sagemaker.train  # noqa: E402,F401  (the sagemaker extra is part of dev: missing, this fails, never skips)
# The SDK imports its own deprecated shim; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:sagemaker.train.configs has been moved:DeprecationWarning")

from launcher.request import JobSpec, build_training_job_request  # noqa: E402
from launcher.stack import placeholder_outputs  # noqa: E402


@pytest.fixture
def requests(monkeypatch):
    """(ours, the SDK's) for the same spot job; the SDK builds its request offline."""
    import boto3
    from sagemaker.core.helper.session_helper import Session

    from launcher.sdk import model_trainer

    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")
    spec = JobSpec(job_name="b2t-demo-1", config_file="demo.yaml", image_tag="3f2a9c1b7d4e", overrides=("num_training_batches=10",),
                   instance_type="ml.g4dn.xlarge", max_run_hours=3)
    ours = build_training_job_request(spec, placeholder_outputs())
    session = Session(boto_session=boto3.Session(region_name="us-east-1"), default_bucket="b2t-local-output")
    theirs = model_trainer(ours, sagemaker_session=session)._create_training_job_args(boto3=True)
    return ours, theirs


@pytest.mark.parametrize(
    "path",
    [
        ("AlgorithmSpecification", "TrainingImage"),
        ("AlgorithmSpecification", "MetricDefinitions"),
        ("RoleArn",),
        ("ResourceConfig",),
        ("EnableManagedSpotTraining",),
        ("StoppingCondition",),
        ("CheckpointConfig",),
        ("TensorBoardOutputConfig",),
        ("OutputDataConfig", "S3OutputPath"),
        ("HyperParameters",),
        ("InputDataConfig",),
        ("Environment",),
        ("RetryStrategy",),
        ("Tags",),
    ],
)
def test_sdk_request_matches_ours(requests, path):
    ours, theirs = requests
    for key in path:
        ours, theirs = ours[key], theirs[key]
    assert theirs == ours


def test_sdk_job_name_extends_ours(requests):
    ours, theirs = requests
    assert theirs["TrainingJobName"].startswith(ours["TrainingJobName"] + "-")
