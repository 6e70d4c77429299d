"""The CreateTrainingJob request: one pure function builds it, botocore's model checks it.

Everything a job needs is decided here, from a :class:`JobSpec` (what the user asked for)
and the :class:`~launcher.stack.StackOutputs` (where things live). The cloud path submits
the dict as is; local mode lays it out as an ``/opt/ml`` tree; the SDK helper mirrors it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Optional

from infra import outputs as keys

from . import instances
from .errors import InvalidRequest, UsageError
from .limits import check_limits
from .stack import StackOutputs

CONFIG_CHANNEL = "config"
# The overrides travel as this file next to the config in the config channel, not as a
# hyperparameter: a hyperparameter value is at most 2,500 characters ("CreateTrainingJob").
OVERRIDES_FILE = "overrides.json"
# The trainer's data cache on the job's training volume (launcher/instances.py), read by
# trainer/environment.py.
DATA_CACHE_ENV = "B2T_DATA_CACHE_DIR"
# "RetryStrategy" (API reference): SageMaker retries a job that failed with an
# InternalServerError, up to this many times; user errors are never retried.
MAX_RETRY_ATTEMPTS = 2
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
# AWS API reference, "TensorBoardOutputConfig": LocalPath defaults to /opt/ml/output/tensorboard;
# SageMaker uploads what the job writes there to S3OutputPath while it runs.
TENSORBOARD_LOCAL_PATH = "/opt/ml/output/tensorboard"
DEFAULT_INSTANCE_TYPE = "ml.g5.2xlarge"
# ECR tags are immutable in the stack (infra/registry.py): every push has its own tag (see
# `launcher image`), and `start` without --image-tag takes the newest pushed image.
LOCAL_IMAGE_TAG = "local"  # local mode runs no image; its request names this placeholder
DEFAULT_MAX_RUN_HOURS = 48.0  # the reference config (120,000 batches) is estimated at ~29 h on ml.g5.2xlarge
DEFAULT_VOLUME_GB = 50
# SageMaker limits: MaxRuntimeInSeconds ≤ 28 days; a job name is ≤ 63 characters.
MAX_RUNTIME_S = 28 * 24 * 3600
MAX_JOB_NAME = 63
_JOB_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")

TAG_PROJECT = "project"
TAG_CONFIG = "b2t:config"
TAG_RESUMED_FROM = "b2t:resumed-from"


@dataclass(frozen=True)
class JobSpec:
    """What the user asked for; everything else comes from the stack outputs."""

    job_name: str
    config_file: str  # file name inside the config channel, e.g. "rnn_args.yaml"
    image_tag: str  # a tag in the stack's ECR repository
    overrides: tuple[str, ...] = ()
    instance_type: str = DEFAULT_INSTANCE_TYPE
    instance_count: int = 1
    volume_gb: int = DEFAULT_VOLUME_GB
    spot: bool = True
    checkpoints: bool = True
    max_run_hours: float = DEFAULT_MAX_RUN_HOURS
    max_wait_hours: Optional[float] = None  # spot only; default: twice max_run_hours
    data_sub_prefix: str = ""  # a folder under the stack's data prefix
    data_url: Optional[str] = None  # set by `resume`: the first job's data location, verbatim
    # Set by `resume`: keep the first job's checkpoints instead of the new job's own.
    checkpoint_uri: Optional[str] = None
    extra_tags: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    diphone: bool = False  # diphone targets: the run also prints alpha and val_DER

    @property
    def max_run_s(self) -> int:
        return int(round(self.max_run_hours * 3600))

    @property
    def max_wait_s(self) -> int:
        hours = self.max_wait_hours if self.max_wait_hours is not None else 2 * self.max_run_hours
        return int(round(hours * 3600))


# ---------------------------------------------------------------------------------------
# Names and locations


def make_job_name(prefix: str, config_file: str, now: Optional[dt.datetime] = None) -> str:
    """``<prefix>-<config stem>-<UTC timestamp>``, within SageMaker's 63-character pattern."""
    now = now or dt.datetime.now(dt.timezone.utc)
    stamp = now.strftime("%Y%m%d-%H%M%S")
    stem = re.sub(r"\.ya?ml$", "", config_file.rsplit("/", 1)[-1])
    stem = re.sub(r"[^a-zA-Z0-9]+", "-", stem).strip("-").lower() or "job"
    room = MAX_JOB_NAME - len(prefix) - len(stamp) - 2
    return f"{prefix}-{stem[:room].rstrip('-')}-{stamp}" if room > 0 else f"{prefix}-{stamp}"


def qualify_job_name(name: str, prefix: Optional[str]) -> str:
    """Names of this project's jobs start with ``<prefix>-`` (the IAM policies rely on it);
    ``prefix=None`` checks ``name`` as given (before the stack, hence the prefix, is known)."""
    full = name if prefix is None or name.startswith(prefix + "-") else f"{prefix}-{name}"
    if len(full) > MAX_JOB_NAME or not _JOB_NAME_RE.match(full):  # hyphens escape the regex's count
        raise UsageError(
            f"job name {full!r} is not valid: letters, digits and hyphens, at most {MAX_JOB_NAME} characters"
        )
    return full


def config_channel_uri(outputs: StackOutputs, job_name: str) -> str:
    return f"s3://{outputs.output_bucket}/{keys.OUTPUT_KEY_PREFIX}{job_name}/input/{CONFIG_CHANNEL}/"


def checkpoint_uri(outputs: StackOutputs, job_name: str) -> str:
    return f"s3://{outputs.output_bucket}/{keys.CHECKPOINT_KEY_PREFIX}{job_name}/"


def tensorboard_uri(outputs: StackOutputs, job_name: str) -> str:
    """Where the job's TensorBoard event files go (under ``jobs/``, which the execution role may write)."""
    return f"s3://{outputs.output_bucket}/{keys.OUTPUT_KEY_PREFIX}{job_name}/tensorboard/"


def output_path(outputs: StackOutputs) -> str:
    return f"s3://{outputs.output_bucket}/{keys.OUTPUT_KEY_PREFIX}"


def image_uri(outputs: StackOutputs, tag: str) -> str:
    return f"{outputs.ecr_repository_uri}:{tag}"


# ---------------------------------------------------------------------------------------
# Metrics


def metric_definitions(diphone: bool = False) -> list[dict[str, str]]:
    """The trainer's own MetricDefinitions (one regex per metric name it prints); a diphone run
    also prints the composite-loss weight and the diphone error rate."""
    from trainer import metrics

    names = metrics.METRIC_NAMES + (metrics.DIPHONE_METRICS if diphone else ())
    return metrics.metric_definitions(names)


# ---------------------------------------------------------------------------------------
# The request


def job_environment(outputs: StackOutputs) -> dict[str, str]:
    """The container's environment. Inside a job SageMaker sets only TRAINING_JOB_NAME,
    TRAINING_JOB_ARN and these (no AWS_REGION), so the job's region travels here and the
    trainer's S3 client uses it explicitly (trainer/data/storage.py)."""
    return {"PYTHONUNBUFFERED": "1", DATA_CACHE_ENV: instances.DATA_CACHE_DIR,
            "AWS_REGION": outputs.region, "AWS_DEFAULT_REGION": outputs.region}


def check_spec(spec: JobSpec) -> None:
    """The checks of the user's flags that need no stack: :class:`UsageError` on the first failing."""
    if spec.instance_count < 1:
        raise UsageError("--instance-count must be at least 1")
    if spec.spot and not spec.checkpoints:
        raise UsageError("managed spot needs checkpoints to survive interruptions: drop --no-checkpoints or add --on-demand")
    if not 0 < spec.max_run_s <= MAX_RUNTIME_S:
        raise UsageError(f"--max-run must be between 1 second and {MAX_RUNTIME_S // 3600} hours")
    if spec.spot and spec.max_wait_s <= spec.max_run_s:
        # "Managed Spot Training in Amazon SageMaker AI": MaxWaitTimeInSeconds must be larger
        # than MaxRuntimeInSeconds (strictly: equal is rejected).
        raise UsageError("--max-wait must be longer than --max-run (SageMaker requires MaxWaitTime > MaxRuntime)")
    local_gb = instances.load().local_gb(spec.instance_type)
    if local_gb is not None and spec.volume_gb > local_gb:
        # "ResourceConfig": VolumeSizeInGB can't exceed the local instance storage.
        raise UsageError(f"--volume-gb {spec.volume_gb}: {spec.instance_type} has {local_gb} GB of local "
                         "storage, the most a job on it can ask for")


def build_training_job_request(spec: JobSpec, outputs: StackOutputs) -> dict[str, Any]:
    """The CreateTrainingJob parameters for ``spec`` on the stack ``outputs``. Pure: no I/O."""
    check_spec(spec)

    stopping: dict[str, int] = {"MaxRuntimeInSeconds": spec.max_run_s}
    if spec.spot:
        stopping["MaxWaitTimeInSeconds"] = spec.max_wait_s

    resources: dict[str, Any] = {
        "InstanceType": spec.instance_type,
        "InstanceCount": spec.instance_count,
        "VolumeSizeInGB": spec.volume_gb,
    }
    output_config: dict[str, Any] = {"S3OutputPath": output_path(outputs)}
    if outputs.kms_key_arn:
        output_config["KmsKeyId"] = outputs.kms_key_arn
        # "ResourceConfig": no VolumeKmsKeyId for instance types with local storage (rejected;
        # their NVMe storage is encrypted by the instance's hardware module).
        if not instances.load().has_local_storage(spec.instance_type):
            resources["VolumeKmsKeyId"] = outputs.kms_key_arn

    tags = [
        {"Key": TAG_PROJECT, "Value": outputs.job_name_prefix},
        {"Key": TAG_CONFIG, "Value": spec.config_file},
        *({"Key": k, "Value": v} for k, v in spec.extra_tags),
    ]
    request: dict[str, Any] = {
        "TrainingJobName": spec.job_name,
        "AlgorithmSpecification": {
            "TrainingImage": image_uri(outputs, spec.image_tag),
            "TrainingInputMode": "File",
            "MetricDefinitions": metric_definitions(spec.diphone),
            "EnableSageMakerMetricsTimeSeries": True,
        },
        "RoleArn": outputs.execution_role_arn,
        # Only the config travels as a channel; the trainer streams the HDF5 sessions from
        # data_url itself, so nothing is copied onto the instance's volume before training.
        "InputDataConfig": [
            {
                "ChannelName": CONFIG_CHANNEL,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": config_channel_uri(outputs, spec.job_name),
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
                "ContentType": "application/x-yaml",
                "CompressionType": "None",
                "InputMode": "File",
            }
        ],
        # The overrides are in the config channel (OVERRIDES_FILE), see channel_files().
        "HyperParameters": {
            "config_file": spec.config_file,
            "data_url": spec.data_url or outputs.data_url(spec.data_sub_prefix),
        },
        "OutputDataConfig": output_config,
        "ResourceConfig": resources,
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": spec.spot,
        "TensorBoardOutputConfig": {
            "S3OutputPath": tensorboard_uri(outputs, spec.job_name),
            "LocalPath": TENSORBOARD_LOCAL_PATH,
        },
        "Environment": job_environment(outputs),
        "RetryStrategy": {"MaximumRetryAttempts": MAX_RETRY_ATTEMPTS},
        "Tags": tags,
    }
    if spec.checkpoints:
        request["CheckpointConfig"] = {
            "S3Uri": spec.checkpoint_uri or checkpoint_uri(outputs, spec.job_name),
            "LocalPath": CHECKPOINT_LOCAL_PATH,
        }
    return request


def channel_files(spec: JobSpec, config_text: str) -> dict[str, str]:
    """The files of the job's config channel: the config verbatim and the overrides (a JSON list)."""
    return {spec.config_file: config_text, OVERRIDES_FILE: json.dumps(list(spec.overrides)) + "\n"}


@lru_cache(maxsize=1)
def _create_training_job_shape():
    import botocore.session

    model = botocore.session.get_session().get_service_model("sagemaker")
    return model.operation_model("CreateTrainingJob").input_shape


def validate_request(request: dict[str, Any]) -> None:
    """Check ``request`` against botocore's CreateTrainingJob input shape, offline: types and
    required keys (botocore), then lengths, ranges and patterns (:mod:`launcher.limits`)."""
    from botocore.validate import ParamValidator

    name = request.get("TrainingJobName", "")
    if not _JOB_NAME_RE.match(name):
        raise InvalidRequest(f"TrainingJobName {name!r} does not match SageMaker's pattern {_JOB_NAME_RE.pattern}")
    report = ParamValidator().validate(request, _create_training_job_shape())
    if report.has_errors():
        problems = [line.strip() for line in report.generate_report().splitlines() if line.strip()]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InvalidRequest(f"CreateTrainingJob request rejected offline: {problems[0]}{more}")
    check_limits(request, _create_training_job_shape())
