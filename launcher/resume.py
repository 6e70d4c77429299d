"""Resume: rebuild a job's plan from its description, pointed at the same checkpoints."""

from __future__ import annotations

import logging
from typing import Optional

from . import jobs, launch
from .aws import Aws
from .errors import LauncherError
from .request import TAG_RESUMED_FROM
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
    loaded, overrides = jobs.job_config(aws, desc)

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
