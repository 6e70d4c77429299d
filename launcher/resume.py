"""Resume: rebuild a job's plan from its description, pointed at the same checkpoints.

A job and the jobs resumed from it form a *lineage*: they share the first job's checkpoint
prefix ``checkpoints/<first job>/`` (so each continues where the previous one stopped) and
are recorded, in order, as ``jobs/<first job>/lineage/<nnnn>.json`` in the output bucket.
The lineage is locked:

- only its newest job can be resumed, and not while any job of it is InProgress or Stopping;
- the next entry is created with a conditional write (``If-None-Match: *``), so of two
  `resume`s racing for one lineage only one submits;
- a Completed job is resumed only to train further (``--num-training-batches`` above its own).

Every refusal happens before anything is written to S3.
"""

from __future__ import annotations

import json
import logging
from typing import Optional

from . import jobs, launch, s3sync
from .aws import Aws, aws_errors
from .errors import JobNotFound, LauncherError
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
    instance_count: Optional[int] = None,
    on_demand: bool = False,
    max_run_hours: Optional[float] = None,
    image_tag: Optional[str] = None,
    num_training_batches: Optional[int] = None,
) -> launch.Plan:
    desc = jobs.describe(aws, job)
    status = desc["TrainingJobStatus"]
    if status in ("InProgress", "Stopping"):
        raise LauncherError(f"job {job} is {status}: stop it first (two jobs must not share checkpoints)")
    ckpt = desc.get("CheckpointConfig", {}).get("S3Uri")
    if not ckpt:
        raise LauncherError(f"job {job} ran without checkpoints: there is nothing to resume from")
    lineage = Lineage.of(outputs, ckpt)
    members = lineage.members(aws)
    check_lineage(aws, job, members)
    new_name = new_name or lineage.next_name(len(members))
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
        instance_count=instance_count or rc.get("InstanceCount", 1),
        volume_gb=rc.get("VolumeSizeInGB", 50),
        spot=spot,
        max_run_hours=run_h,
        max_wait_hours=wait_h,
        image_tag=image_tag or old_tag,
        overrides=overrides,
        num_training_batches=num_training_batches,
    )
    launch.check_options(opts, loaded)
    done = loaded.config.num_training_batches
    if num_training_batches is not None and num_training_batches <= done:
        raise LauncherError(
            f"--num-training-batches {num_training_batches} is not more than the {done} batches {job} was "
            "set to train: a resumed job continues from the step it reached"
        )
    if status == "Completed" and num_training_batches is None:
        raise LauncherError(
            f"job {job} is Completed (all {done} batches): resume it only to train further, with "
            f"--num-training-batches N above {done}; or `start` a new job"
        )
    p = launch.plan(
        opts,
        launch.load_text(loaded.text, loaded.file_name, loaded.source, opts.all_overrides())
        if num_training_batches else loaded,
        outputs,
        checkpoint_uri=ckpt,
        data_url=hp["data_url"],
        extra_tags=((TAG_RESUMED_FROM, job),),
    )
    p.claims.append(lineage.entry(len(members), p.job_name, job))
    found, p.done_batches = checkpoint_progress(aws, ckpt)
    p.notes.append(
        f"resumes {job} ({status}) from {ckpt} ({found} checkpoint object(s), the newest at step {p.done_batches})"
        if found
        else f"{ckpt} holds no checkpoint yet: the new job starts from step 0"
    )
    return p


def checkpoint_progress(aws: Aws, uri: str) -> tuple[int, int]:
    """(objects under ``uri``, the step of the newest ``checkpoint_<step>.pt`` among them, else 0)."""
    import re

    bucket, prefix = s3sync.split_s3_url(uri)
    with aws_errors(f"listing {uri}"):
        keys = s3sync.list_objects(aws.s3, bucket, prefix)
    steps = [int(m.group(1)) for k in keys if (m := re.search(r"checkpoint_(\d+)\.pt$", k))]
    return len(keys), max(steps, default=0)


class Lineage:
    """The jobs sharing one checkpoint prefix, recorded under ``jobs/<first job>/lineage/``."""

    def __init__(self, root: str, uri: str) -> None:
        self.root, self.uri = root, uri

    @classmethod
    def of(cls, outputs: StackOutputs, checkpoint_uri: str) -> "Lineage":
        from .request import output_path

        root = checkpoint_uri.rstrip("/").rsplit("/", 1)[-1]
        return cls(root, f"{output_path(outputs)}{root}/lineage/")

    def members(self, aws: Aws) -> list[str]:
        """The first job, then each resumed one in order (entries of jobs never created included)."""
        bucket, prefix = s3sync.split_s3_url(self.uri)
        with aws_errors(f"listing {self.uri}"):
            objs = s3sync.list_objects(aws.s3, bucket, prefix)
        names = [self.root]
        for key in sorted(objs):
            with aws_errors(f"reading s3://{bucket}/{key}"):
                entry = json.loads(aws.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            names.append(entry["job"])
        return names

    def next_name(self, seq: int) -> str:
        """The default name of the lineage's job ``seq``: ``<first job>-r<seq>`` (within 63 characters)."""
        from .request import MAX_JOB_NAME

        tail = f"-r{seq}"
        return self.root[: MAX_JOB_NAME - len(tail)].rstrip("-") + tail

    def entry(self, seq: int, job: str, resumed_from: str) -> tuple[str, bytes, Exception]:
        """(uri, body, error if taken) of entry ``seq``: a claim written before the job is created."""
        import datetime as dt

        body = json.dumps({"job": job, "resumed_from": resumed_from,
                           "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
        taken = LauncherError(
            f"another job of {self.root}'s lineage was submitted a moment ago ({self.uri}{seq:04d}.json): "
            "see `python -m launcher list`, then resume the newest"
        )
        return f"{self.uri}{seq:04d}.json", body.encode(), taken


def check_lineage(aws: Aws, job: str, members: list[str]) -> None:
    """Refuse while a job of the lineage runs, or when ``job`` is not its newest existing job."""
    existing = []
    for name in members:
        try:
            status = jobs.describe(aws, name)["TrainingJobStatus"]
        except JobNotFound:  # a claim whose CreateTrainingJob failed: never ran
            continue
        if status in ("InProgress", "Stopping"):
            raise LauncherError(
                f"job {name} of the same lineage (checkpoints of {members[0]}) is {status}: "
                "two jobs must not share checkpoints; wait for it or stop it first"
            )
        existing.append(name)
    if job not in existing:
        return  # started by an older launcher without lineage records: nothing more to check
    if existing[-1] != job:
        raise LauncherError(
            f"job {job} was already resumed as {existing[-1]}, which holds the newer checkpoints: "
            f"resume {existing[-1]} instead"
        )
