"""Notebook use: an SDK v3 ``ModelTrainer`` equivalent to the launcher's request.

Needs the optional ``sagemaker`` extra (``pip install -e '.[sagemaker]'``). The CLI never
imports this module. Typical notebook cell::

    from launcher.sdk import model_trainer_for
    trainer = model_trainer_for("rnn_args.yaml", overrides=["num_training_batches=1000"])
    trainer.train(wait=False)

The SDK names the job ``<base_job_name>-<timestamp>``; the config channel, checkpoints and
everything else are the launcher's, so `python -m launcher status/logs/download` work on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence


def model_trainer(request: dict[str, Any], *, sagemaker_session: Any = None):
    """A ``ModelTrainer`` whose CreateTrainingJob request matches ``request`` (the launcher's)."""
    from sagemaker.core.shapes import Channel, DataSource, S3DataSource
    from sagemaker.core.training.configs import (
        CheckpointConfig,
        Compute,
        MetricDefinition,
        OutputDataConfig,
        StoppingCondition,
        Tag,
        TensorBoardOutputConfig,
    )
    from sagemaker.train import ModelTrainer

    rc = request["ResourceConfig"]
    stopping = request["StoppingCondition"]
    out = request["OutputDataConfig"]
    channels = [
        Channel(
            channel_name=c["ChannelName"],
            content_type=c.get("ContentType"),
            compression_type=c.get("CompressionType"),
            input_mode=c.get("InputMode"),
            data_source=DataSource(
                s3_data_source=S3DataSource(
                    s3_data_type=c["DataSource"]["S3DataSource"]["S3DataType"],
                    s3_uri=c["DataSource"]["S3DataSource"]["S3Uri"],
                    s3_data_distribution_type=c["DataSource"]["S3DataSource"]["S3DataDistributionType"],
                )
            ),
        )
        for c in request["InputDataConfig"]
    ]
    trainer = ModelTrainer(
        sagemaker_session=sagemaker_session,
        role=request["RoleArn"],
        base_job_name=request["TrainingJobName"],
        training_image=request["AlgorithmSpecification"]["TrainingImage"],
        training_input_mode=request["AlgorithmSpecification"]["TrainingInputMode"],
        compute=Compute(
            instance_type=rc["InstanceType"],
            instance_count=rc["InstanceCount"],
            volume_size_in_gb=rc["VolumeSizeInGB"],
            volume_kms_key_id=rc.get("VolumeKmsKeyId"),
            enable_managed_spot_training=request["EnableManagedSpotTraining"],
        ),
        stopping_condition=StoppingCondition(
            max_runtime_in_seconds=stopping["MaxRuntimeInSeconds"],
            max_wait_time_in_seconds=stopping.get("MaxWaitTimeInSeconds"),
        ),
        output_data_config=OutputDataConfig(s3_output_path=out["S3OutputPath"], kms_key_id=out.get("KmsKeyId")),
        input_data_config=channels,
        hyperparameters=dict(request["HyperParameters"]),
        environment=dict(request.get("Environment", {})),
        tags=[Tag(key=t["Key"], value=t["Value"]) for t in request.get("Tags", [])],
    )
    if "RetryStrategy" in request:
        from sagemaker.core.shapes import RetryStrategy

        trainer = trainer.with_retry_strategy(
            RetryStrategy(maximum_retry_attempts=request["RetryStrategy"]["MaximumRetryAttempts"])
        )
    if "CheckpointConfig" in request:
        ck = request["CheckpointConfig"]
        trainer = trainer.with_checkpoint_config(CheckpointConfig(s3_uri=ck["S3Uri"], local_path=ck["LocalPath"]))
    if "TensorBoardOutputConfig" in request:
        tb = request["TensorBoardOutputConfig"]
        trainer = trainer.with_tensorboard_output_config(
            TensorBoardOutputConfig(s3_output_path=tb["S3OutputPath"], local_path=tb["LocalPath"]))
    return trainer.with_metric_definitions(
        [MetricDefinition(name=m["Name"], regex=m["Regex"]) for m in request["AlgorithmSpecification"]["MetricDefinitions"]]
    )


def model_trainer_for(
    config: str | Path,
    *,
    overrides: Sequence[str] = (),
    stack: Optional[str] = None,
    region: Optional[str] = None,
    profile: Optional[str] = None,
    **start_options: Any,
):
    """The notebook path of ``start``: same checks, config uploaded, a ``ModelTrainer`` returned.

    ``start_options`` are :class:`launcher.launch.StartOptions` fields (``instance_type``,
    ``spot``, ``max_run_hours``, ``image_tag``, ...); without ``image_tag`` the newest image
    pushed to the stack's ECR repository is used.
    """
    from sagemaker.core.helper.session_helper import Session

    from infra.outputs import DEFAULT_STACK_NAME

    from . import jobs, launch
    from .aws import Aws
    from .stack import read_stack_outputs

    opts = launch.StartOptions(config=Path(config), overrides=tuple(overrides), **start_options)
    loaded = launch.load(opts.config, opts.all_overrides())
    launch.check_options(opts)
    aws = Aws(region=region, profile=profile)
    outputs = read_stack_outputs(aws, stack or DEFAULT_STACK_NAME)
    plan = launch.plan_with_image(aws, opts, loaded, outputs)
    jobs.check_sessions(aws, plan.request["HyperParameters"]["data_url"], list(loaded.config.dataset.sessions))
    launch.upload_channel(aws, plan)
    session = Session(boto_session=aws.boto3_session(), default_bucket=outputs.output_bucket)
    return model_trainer(plan.request, sagemaker_session=session)
