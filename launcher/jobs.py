"""The AWS side of every command: pre-flight checks, submit, describe, list, logs, stop, download.

Each function takes an :class:`~launcher.aws.Aws` and plain values, returns plain data,
and raises domain errors; printing belongs to the command modules.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from infra import outputs as keys

from . import s3sync
from .aws import Aws, aws_errors, error_code
from .errors import ImageNotPushed, JobNameTaken, JobNotFound, LauncherError, MissingSessions, NoImage
from .stack import StackOutputs

log = logging.getLogger(__name__)

TERMINAL = ("Completed", "Failed", "Stopped")
SESSION_FILE = "data_train.hdf5"


# ---------------------------------------------------------------------------------------
# Pre-flight


def _list_data(aws: Aws, data_url: str) -> dict[str, dict]:
    bucket, prefix = s3sync.split_s3_url(data_url)
    with aws_errors(f"listing {data_url}"):
        return s3sync.list_objects(aws.s3, bucket, prefix)


def _missing(present: dict[str, dict], data_url: str, sessions: list[str]) -> list[str]:
    prefix = s3sync.split_s3_url(data_url)[1]
    return [s for s in sessions if f"{prefix}{s}/{SESSION_FILE}" not in present]


def check_sessions(aws: Aws, data_url: str, sessions: list[str], cfg: Any = None) -> None:
    """Every session's ``data_train.hdf5`` is there; with ``cfg``, validation would not be empty
    either (a ``data_val.hdf5`` in a session whose ``dataset_probability_val`` is above 0, else the
    job trains blind and ends with "best val PER inf"). One listing for both."""
    present = _list_data(aws, data_url)
    missing = _missing(present, data_url, sessions)
    if missing:
        raise MissingSessions(data_url, missing)
    if cfg is None:
        return
    from trainer.checks import empty_validation

    prefix = s3sync.split_s3_url(data_url)[1]
    if not any(f"{prefix}{s}/data_val.hdf5" in present and cfg.dataset.val_probability(d) > 0
               for d, s in enumerate(sessions)):
        raise empty_validation(cfg, data_url)


def check_init_checkpoint(aws: Aws, cfg: Any) -> None:
    """An ``s3://`` ``init_checkpoint_path`` must exist (a local one: :mod:`launcher.preflight`)."""
    from botocore.exceptions import ClientError

    from .errors import UsageError

    url = str(cfg.init_checkpoint_path or "")
    if not cfg.init_from_checkpoint or not url.startswith("s3://"):
        return
    bucket, key = s3sync.split_s3_url(url)
    with aws_errors(f"looking up init_checkpoint_path {url}"):
        try:
            aws.s3.head_object(Bucket=bucket, Key=key)
        except ClientError as e:
            if error_code(e) in ("404", "NoSuchKey", "NotFound"):
                raise UsageError(f"init_checkpoint_path: no object at {url}") from None
            raise


def check_image(aws: Aws, outputs: StackOutputs, tag: str) -> dict[str, Any]:
    """The ECR image detail of ``tag``; :class:`ImageNotPushed` when the tag is absent."""
    from botocore.exceptions import ClientError

    repo = outputs.ecr_repository_name
    with aws_errors(f"looking up image {repo}:{tag}"):
        try:
            details = aws.client("ecr").describe_images(repositoryName=repo, imageIds=[{"imageTag": tag}])
        except ClientError as e:
            if error_code(e) in ("ImageNotFoundException", "RepositoryNotFoundException"):
                raise ImageNotPushed(repo, tag) from e
            raise
    images = details.get("imageDetails", [])
    if not images:
        raise ImageNotPushed(repo, tag)
    return images[0]


def list_images(aws: Aws, outputs: StackOutputs) -> list[dict[str, Any]]:
    """The image details of the stack's ECR repository, newest push first."""
    from botocore.exceptions import ClientError

    repo = outputs.ecr_repository_name
    with aws_errors(f"listing the images of {repo}"):
        try:
            pages = aws.client("ecr").get_paginator("describe_images").paginate(repositoryName=repo)
            images = [i for page in pages for i in page.get("imageDetails", [])]
        except ClientError as e:
            if error_code(e) == "RepositoryNotFoundException":
                raise NoImage(repo) from e
            raise
    return sorted(images, key=_pushed_at, reverse=True)


def _pushed_at(image: dict[str, Any]) -> float:
    at = image.get("imagePushedAt")
    return at.timestamp() if isinstance(at, dt.datetime) else float(at or 0)


def newest_image(aws: Aws, outputs: StackOutputs) -> dict[str, Any]:
    """The most recently pushed tagged image; :class:`NoImage` when the repository has none."""
    tagged = [i for i in list_images(aws, outputs) if i.get("imageTags")]
    if not tagged:
        raise NoImage(outputs.ecr_repository_name)
    return tagged[0]


def image_tag(image: dict[str, Any]) -> str:
    """The tag a job names ``image`` by (an image pushed under several tags: the first ECR lists)."""
    return image["imageTags"][0]


def find_image(aws: Aws, outputs: StackOutputs, tag: Optional[str]) -> tuple[str, dict[str, Any]]:
    """``(tag, image detail)``: ``tag`` checked to be in ECR, or the newest tagged image when None."""
    if tag is not None:
        return tag, check_image(aws, outputs, tag)
    image = newest_image(aws, outputs)
    return image_tag(image), image


def check_name_free(aws: Aws, outputs: StackOutputs, name: str) -> None:
    """:class:`JobNameTaken` when ``name`` is a SageMaker job or has objects under ``jobs/<name>/``
    or ``checkpoints/<name>/`` in the output bucket (moto and a deleted job leave only the latter)."""
    from .request import checkpoint_uri, output_path

    try:
        status = describe(aws, name)["TrainingJobStatus"]
    except JobNotFound:
        pass
    else:
        raise JobNameTaken(name, f"a SageMaker training job, {status}")
    for uri in (f"{output_path(outputs)}{name}/", checkpoint_uri(outputs, name)):
        if first_object(aws, uri):
            raise JobNameTaken(name, f"{uri} holds objects")


def first_object(aws: Aws, uri: str) -> Optional[str]:
    """The first key under ``uri``, or None."""
    bucket, prefix = s3sync.split_s3_url(uri)
    with aws_errors(f"listing {uri}"):
        found = aws.s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("Contents", [])
    return found[0]["Key"] if found else None


def put_new(aws: Aws, uri: str, body: bytes, taken: Exception, content_type: str = "application/octet-stream") -> str:
    """Create ``uri`` only if no object is there (a conditional write, ``If-None-Match: *``),
    so two launchers racing for one name cannot overwrite each other; ``taken`` is raised if one is.
    (Amazon S3 User Guide, "How to prevent object overwrites with conditional writes".)"""
    from botocore.exceptions import ClientError

    bucket, key = s3sync.split_s3_url(uri)
    with aws_errors(f"uploading {uri}"):
        try:
            aws.s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type, IfNoneMatch="*")
        except ClientError as e:
            if error_code(e) in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise taken from None
            raise
    return uri


def upload_config(aws: Aws, config_uri: str, config_file: str, text: str, job: str = "") -> str:
    """The job's config, written once: an object already there means the job name was used."""
    uri = config_uri + config_file
    return put_new(aws, uri, text.encode(), JobNameTaken(job or uri, f"{uri} exists"), "application/x-yaml")


def submit(aws: Aws, request: dict[str, Any]) -> str:
    with aws_errors(f"submitting {request['TrainingJobName']}"):
        return aws.sagemaker.create_training_job(**request)["TrainingJobArn"]


# ---------------------------------------------------------------------------------------
# Describe / status / list


def describe(aws: Aws, job: str) -> dict[str, Any]:
    from botocore.exceptions import ClientError

    with aws_errors(f"describing {job}"):
        try:
            return aws.sagemaker.describe_training_job(TrainingJobName=job)
        except ClientError as e:
            text = str(e).lower()
            if error_code(e) in ("ValidationException", "ResourceNotFound") and (
                "not found" in text or "could not find" in text or "does not exist" in text
            ):
                raise JobNotFound(job) from e
            raise


def list_jobs(aws: Aws, prefix: str, max_results: int = 20, status: Optional[str] = None) -> list[dict[str, Any]]:
    kwargs: dict[str, Any] = {
        "NameContains": prefix + "-",
        "SortBy": "CreationTime",
        "SortOrder": "Descending",
        "MaxResults": min(max_results, 100),
    }
    if status:
        kwargs["StatusEquals"] = status
    with aws_errors("listing training jobs"):
        jobs = aws.sagemaker.list_training_jobs(**kwargs)["TrainingJobSummaries"]
    mine = [j for j in jobs if j["TrainingJobName"].startswith(prefix + "-")]
    mine.sort(key=lambda j: j.get("CreationTime") or dt.datetime.min.replace(tzinfo=dt.timezone.utc), reverse=True)
    return mine[:max_results]


# ---------------------------------------------------------------------------------------
# Logs


def log_events(
    aws: Aws,
    log_group: str,
    job: str,
    *,
    start_ms: Optional[int] = None,
    limit: Optional[int] = None,
    filter_pattern: Optional[str] = None,
) -> Iterator[dict[str, Any]]:
    """Events of every stream of ``job`` (``<job>/algo-N-<time>``), oldest first."""
    from botocore.exceptions import ClientError

    kwargs: dict[str, Any] = {"logGroupName": log_group, "logStreamNamePrefix": f"{job}/"}
    if start_ms is not None:
        kwargs["startTime"] = start_ms
    if filter_pattern:
        kwargs["filterPattern"] = filter_pattern
    seen = 0
    with aws_errors(f"reading logs of {job}"):
        try:
            for page in aws.logs.get_paginator("filter_log_events").paginate(**kwargs):
                for event in page.get("events", []):
                    yield event
                    seen += 1
                    if limit is not None and seen >= limit:
                        return
        except ClientError as e:
            if error_code(e) == "ResourceNotFoundException":  # no log group yet: nothing logged
                return
            raise


def follow_logs(
    aws: Aws, log_group: str, job: str, *, follow: bool, poll_s: float = 5.0, sleep=time.sleep
) -> Iterator[str]:
    """Log lines of ``job``; with ``follow`` keep polling until the job ends."""
    for event in follow_events(aws, log_group, job, follow=follow, poll_s=poll_s, sleep=sleep):
        yield event["message"].rstrip("\n")


def follow_events(
    aws: Aws,
    log_group: str,
    job: str,
    *,
    follow: bool,
    poll_s: float = 5.0,
    sleep=time.sleep,
    start_ms: Optional[int] = None,
    seen: Optional[set[str]] = None,
) -> Iterator[dict[str, Any]]:
    """Log events of ``job`` from ``start_ms`` on (``seen``: event ids already shown); with
    ``follow`` keep polling until the job ends."""
    seen = set() if seen is None else seen
    while True:
        status = describe(aws, job)["TrainingJobStatus"] if follow else "Completed"
        for event in log_events(aws, log_group, job, start_ms=start_ms):
            if event["eventId"] in seen:
                continue
            seen.add(event["eventId"])
            start_ms = max(start_ms or 0, event["timestamp"])
            yield event
        if status in TERMINAL:
            return
        sleep(poll_s)


def tail_events(aws: Aws, log_group: str, job: str, n: int, start_ms: Optional[int] = None) -> list[dict[str, Any]]:
    """The newest ``n`` events of ``job``, oldest first, read backwards from the end of each stream."""
    from botocore.exceptions import ClientError

    if n <= 0:
        return []
    found: list[dict[str, Any]] = []
    with aws_errors(f"reading logs of {job}"):
        try:
            pages = aws.logs.get_paginator("describe_log_streams").paginate(
                logGroupName=log_group, logStreamNamePrefix=f"{job}/")
            streams = [s for page in pages for s in page.get("logStreams", [])]
        except ClientError as e:
            if error_code(e) == "ResourceNotFoundException":
                return []
            raise
        streams.sort(key=lambda s: s.get("lastEventTimestamp") or s.get("creationTime") or 0, reverse=True)
        for k, stream in enumerate(streams):
            found += _stream_tail(aws, log_group, stream["logStreamName"], n, start_ms)
            found.sort(key=lambda e: (e["timestamp"], e.get("ingestionTime", 0)))
            # older streams (a spot restart's earlier attempts) only matter if they reach past the cut
            if len(found) >= n and all((s.get("lastEventTimestamp") or 0) < found[-n]["timestamp"]
                                       for s in streams[k + 1:]):
                break
    return found[-n:]


def _stream_tail(aws: Aws, log_group: str, stream: str, n: int, start_ms: Optional[int]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"logGroupName": log_group, "logStreamName": stream, "startFromHead": False,
                              "limit": min(n, 10000)}
    if start_ms is not None:
        kwargs["startTime"] = start_ms
    while len(events) < n:
        page = aws.logs.get_log_events(**kwargs)
        batch = page.get("events", [])
        if not batch or page.get("nextBackwardToken") == kwargs.get("nextToken"):
            break
        events = batch + events
        kwargs["nextToken"] = page["nextBackwardToken"]
    return [{**e, "logStreamName": stream} for e in events[-n:]]


def exit_code(status: str) -> int:
    """How a command that watched ``job`` exits: 1 if it Failed or was Stopped, else 0
    (the rule of ``start --wait`` and ``logs``)."""
    return 1 if status in ("Failed", "Stopped") else 0


def job_config(aws: Aws, desc: dict[str, Any]) -> tuple[Any, tuple[str, ...]]:
    """The job's config as it ran, from its config channel: ``(LoadedConfig, overrides)``."""
    from . import launch
    from .request import CONFIG_CHANNEL, OVERRIDES_FILE

    job = desc["TrainingJobName"]
    hp = desc.get("HyperParameters", {}) or {}
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
    return launch.load_text(text, config_file, config_uri, overrides), overrides


# ---------------------------------------------------------------------------------------
# Stop / download / resume


def stop(aws: Aws, job: str) -> str:
    """Ask SageMaker to stop ``job``; returns the status it had."""
    status = describe(aws, job)["TrainingJobStatus"]
    if status in TERMINAL or status == "Stopping":
        return status
    with aws_errors(f"stopping {job}"):
        aws.sagemaker.stop_training_job(TrainingJobName=job)
    return status


@dataclass
class Download:
    job_dir: Path
    files: list[Path] = field(default_factory=list)
    checkpoints: Optional[s3sync.SyncResult] = None


def download(
    aws: Aws, job: str, dest: Path, *, checkpoints: bool = False, progress: Optional[bool] = None,
    force: bool = False,
) -> Download:
    """Model artifact and output archive extracted under ``dest/<job>/``; checkpoints optionally.

    Nothing is overwritten without ``force``: a ``dest/<job>/`` that holds files is refused
    before anything is downloaded. A job with nothing in S3 is an error saying so.
    """
    desc = describe(aws, job)
    status = desc["TrainingJobStatus"]
    if status in ("InProgress", "Stopping") and not checkpoints:
        raise LauncherError(
            f"job {job} is {status}: its model is written when it ends "
            "(wait, or pass --checkpoints for the checkpoints saved so far)"
        )
    job_dir = Path(dest) / job
    result = Download(job_dir=job_dir)
    model_uri = desc.get("ModelArtifacts", {}).get("S3ModelArtifacts", "")
    archives = []
    if model_uri:
        for uri, target in ((model_uri, job_dir / "model"),
                            (model_uri.rsplit("/", 1)[0] + "/output.tar.gz", job_dir / "output")):
            bucket, key = s3sync.split_s3_url(uri)
            with aws_errors(f"listing {uri}"):
                obj = s3sync.list_objects(aws.s3, bucket, key).get(key)
            if obj is None:
                log.info("%s not found; skipped", uri)
            else:
                archives.append((uri, obj, target))
    ckpt = desc.get("CheckpointConfig", {}).get("S3Uri")
    ckpt_objects: dict[str, dict] = {}
    if checkpoints and ckpt:
        bucket, prefix = s3sync.split_s3_url(ckpt)
        with aws_errors(f"listing {ckpt}"):
            ckpt_objects = s3sync.list_objects(aws.s3, bucket, prefix)
    if not archives and not ckpt_objects:
        where = model_uri or f"{desc.get('OutputDataConfig', {}).get('S3OutputPath', '')}{job}/output/"
        extra = "" if checkpoints else "; the checkpoints it saved, if any: --checkpoints"
        raise LauncherError(f"job {job} ({status}) has no artifacts in S3 (nothing at {where}{' or ' + ckpt if checkpoints and ckpt else ''}): nothing downloaded{extra}")
    existing = sorted(p for p in job_dir.rglob("*") if p.is_file()) if job_dir.is_dir() else []
    if existing and not force:
        shown = ", ".join(str(p.relative_to(job_dir)) for p in existing[:3])
        raise LauncherError(
            f"{job_dir} already holds {len(existing)} file(s) ({shown}{', …' if len(existing) > 3 else ''}): "
            "pass --force to overwrite them, or --to another folder"
        )
    for uri, obj, target in archives:
        bucket, key = s3sync.split_s3_url(uri)
        with aws_errors(f"downloading {uri}"):
            s3sync.download_keys(aws.s3, bucket, [obj], key.rsplit("/", 1)[0], job_dir / "archives",
                                 progress=progress, overwrite=True)
        _extract(job_dir / "archives" / key.rsplit("/", 1)[1], target)
        result.files.extend(sorted(p for p in target.rglob("*") if p.is_file()))
    if ckpt_objects:
        bucket, prefix = s3sync.split_s3_url(ckpt)
        with aws_errors(f"downloading {ckpt}"):
            result.checkpoints = s3sync.download_keys(aws.s3, bucket, ckpt_objects.values(), prefix,
                                                      job_dir / "checkpoints", progress=progress, overwrite=True)
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "job.json").write_text(json.dumps(desc, indent=2, default=str))
    return result


def _extract(archive: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            try:
                tar.extractall(target, filter="data")
            except tarfile.FilterError as e:  # a member outside target, a link out of it, a device
                raise LauncherError(f"{archive.name}: unsafe member refused: {e}") from None
        else:  # Python < 3.11.4: refuse members that would land outside target
            root = target.resolve()
            for member in tar.getmembers():
                if not (target / member.name).resolve().is_relative_to(root) or member.issym() or member.islnk():
                    raise LauncherError(f"{archive.name}: unsafe member {member.name!r}")
            tar.extractall(target)


def log_group_of(outputs: StackOutputs) -> str:
    return outputs.log_group or keys.TRAINING_LOG_GROUP_NAME
