"""Resume: rebuild a job's plan from its description, pointed at the same checkpoints."""

from __future__ import annotations

import json
import logging
from typing import Optional

from . import jobs, launch, s3sync
from .aws import Aws, aws_errors
from .errors import LauncherError
from .request import CONFIG_CHANNEL, OVERRIDES_FILE, TAG_RESUMED_FROM
from .stack import StackOutputs

log = logging.getLogger(__name__)


def plan_resume(
    aws: Aws,
    outputs: StackOutputs,
    job: str,
    *,
    new_name: Optional[str] = None,
    instance_type: Optional[str] = None,
    on_demand: bool = False,
    max_run_hours: Optional[float] = None,
    image_tag: Optional[str] = None,
) -> launch.Plan:
    desc = jobs.describe(aws, job)
    status = desc["TrainingJobStatus"]
    if status in ("InProgress", "Stopping"):
        raise LauncherError(f"job {job} is {status}: stop it first (two jobs must not share checkpoints)")
    ckpt = desc.get("CheckpointConfig", {}).get("S3Uri")
    if not ckpt:
        raise LauncherError(f"job {job} ran without checkpoints: there is nothing to resume from")
    hp = desc.get("HyperParameters", {})
    config_file = hp.get("config_file")
    if not config_file or "data_url" not in hp:
        raise LauncherError(f"job {job} was not started by this launcher (no config_file/data_url hyperparameters)")
    channel = next((c for c in desc.get("InputDataConfig", []) if c["ChannelName"] == CONFIG_CHANNEL), None)
    if channel is None:
        raise LauncherError(f"job {job} has no {CONFIG_CHANNEL!r} input channel")
    config_uri = channel["DataSource"]["S3DataSource"]["S3Uri"].rstrip("/") + "/" + config_file
    bucket, key = s3sync.split_s3_url(config_uri)
    with aws_errors(f"reading {config_uri}"):
        text = aws.s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    # Overrides: next to the config in the channel; jobs started before that carried them as a hyperparameter.
    if "overrides" in hp:
        overrides = tuple(json.loads(hp["overrides"] or "[]"))
    else:
        overrides_key = key.rsplit("/", 1)[0] + "/" + OVERRIDES_FILE
        with aws_errors(f"reading s3://{bucket}/{overrides_key}"):
            overrides = tuple(json.loads(aws.s3.get_object(Bucket=bucket, Key=overrides_key)["Body"].read()))
    loaded = launch.load_text(text, config_file, config_uri, overrides)

    image = desc["AlgorithmSpecification"]["TrainingImage"]
    old_tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else "latest"
    rc = desc["ResourceConfig"]
    stopping = desc.get("StoppingCondition", {})
    spot = bool(desc.get("EnableManagedSpotTraining")) and not on_demand
    old_run_h = stopping.get("MaxRuntimeInSeconds", 24 * 3600) / 3600
    run_h = max_run_hours if max_run_hours is not None else old_run_h
    wait_h = None
    if spot and max_run_hours is None and stopping.get("MaxWaitTimeInSeconds"):
        wait_h = stopping["MaxWaitTimeInSeconds"] / 3600
    opts = launch.StartOptions(
        job_name=new_name,
        instance_type=instance_type or rc["InstanceType"],
        instance_count=1,  # the trainer runs on one instance (an older job may have asked for more)
        volume_gb=rc.get("VolumeSizeInGB", 50),
        spot=spot,
        max_run_hours=run_h,
        max_wait_hours=wait_h,
        image_tag=image_tag or old_tag,
        overrides=overrides,
    )
    p = launch.plan(
        opts,
        loaded,
        outputs,
        checkpoint_uri=ckpt,
        data_url=hp["data_url"],
        extra_tags=((TAG_RESUMED_FROM, job),),
    )
    if rc.get("InstanceCount", 1) > 1:
        p.notes.append(f"{job} ran on {rc['InstanceCount']} instances; the trainer uses one, so this job runs on one")
    found = jobs.count_objects(aws, ckpt)
    p.notes.append(
        f"resumes {job} ({status}) from {ckpt} ({found} checkpoint object(s))"
        if found
        else f"{ckpt} holds no checkpoint yet: the new job starts from step 0"
    )
    return p
