"""The `start` pipeline as typed steps: load and validate, plan, pre-flight, summarise, submit.

The config is validated by the trainer's own model before anything touches AWS; the plan is
pure (stack outputs in, request out) so that the cloud path, local mode and the SDK helper
all run the very same request.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import UsageError
from .request import (
    DEFAULT_INSTANCE_TYPE,
    DEFAULT_MAX_RUN_HOURS,
    DEFAULT_VOLUME_GB,
    JobSpec,
    build_training_job_request,
    channel_files,
    check_spec,
    make_job_name,
    qualify_job_name,
    validate_request,
)
from .stack import StackOutputs


@dataclass(frozen=True)
class StartOptions:
    config: Optional[Path] = None
    overrides: tuple[str, ...] = ()
    instance_type: str = DEFAULT_INSTANCE_TYPE
    instance_count: int = 1
    num_training_batches: Optional[int] = None
    batch_size: Optional[int] = None
    job_name: Optional[str] = None
    spot: bool = True
    checkpoints: bool = True
    max_run_hours: float = DEFAULT_MAX_RUN_HOURS
    max_wait_hours: Optional[float] = None
    image_tag: Optional[str] = None  # None: the newest image pushed to the stack's repository
    data_prefix: str = ""
    volume_gb: int = DEFAULT_VOLUME_GB

    def all_overrides(self) -> tuple[str, ...]:
        """``--set`` items, then the shorthand flags (which therefore win)."""
        extra = []
        if self.num_training_batches is not None:
            extra.append(f"num_training_batches={self.num_training_batches}")
        if self.batch_size is not None:
            extra.append(f"dataset.batch_size={self.batch_size}")
        return tuple(self.overrides) + tuple(extra)


@dataclass
class LoadedConfig:
    file_name: str  # its name in the config channel
    source: str  # where it was read from, for the summary
    text: str  # uploaded verbatim; the overrides travel next to it (request.OVERRIDES_FILE)
    config: Any  # trainer.config.TrainConfig, validated with the overrides applied


@dataclass
class Plan:
    spec: JobSpec
    request: dict[str, Any]
    loaded: LoadedConfig
    outputs: StackOutputs
    notes: list[str] = field(default_factory=list)
    image: Optional[dict] = None  # its ECR image detail, once looked up
    image_newest: bool = False  # chosen as the newest pushed (no --image-tag)
    done_batches: int = 0  # `resume`: the step its newest checkpoint reached (the estimate counts the rest)
    image_missing: bool = False  # dry run before any image was pushed: the tag `image --run` would push
    # (uri, body, error if it exists): objects created with a conditional write before the
    # config, e.g. `resume`'s lineage entry
    claims: list[tuple[str, bytes, Exception]] = field(default_factory=list)

    @property
    def job_name(self) -> str:
        return self.spec.job_name


def load(path: Optional[Path], overrides: tuple[str, ...], default: Optional[Path] = None) -> LoadedConfig:
    """Read and validate the config exactly as the trainer will (raises ``ConfigError``)."""
    from trainer.config import config_from_dict, find_config, read_config_file

    path = find_config(path) if path is not None else default
    if path is None:
        raise UsageError("start needs --config FILE (e.g. --config trainer/configs/rnn_args.yaml)")
    raw = read_config_file(path)
    cfg = config_from_dict(raw, overrides)
    return LoadedConfig(file_name=path.name, source=str(path), text=path.read_text(encoding="utf-8"), config=cfg)


def load_text(text: str, file_name: str, source: str, overrides: tuple[str, ...]) -> LoadedConfig:
    """Validate a config held in memory (`resume` reads the first job's from S3)."""
    from trainer.config import config_from_dict, parse_config_text

    raw = parse_config_text(text, source)
    return LoadedConfig(file_name=file_name, source=source, text=text, config=config_from_dict(raw, overrides))


def _spec(opts: StartOptions, job_name: str, config_file: str, image_tag: str, **spec_overrides: Any) -> JobSpec:
    return JobSpec(
        job_name=job_name,
        config_file=config_file,
        image_tag=image_tag,
        overrides=opts.all_overrides(),
        instance_type=opts.instance_type,
        instance_count=opts.instance_count,
        volume_gb=opts.volume_gb,
        spot=opts.spot,
        checkpoints=opts.checkpoints,
        max_run_hours=opts.max_run_hours,
        max_wait_hours=opts.max_wait_hours,
        data_sub_prefix=opts.data_prefix,
        **spec_overrides,
    )


def check_options(opts: StartOptions, loaded: Optional[LoadedConfig] = None, *, local: bool = False) -> None:
    """The flag (and config) checks that need no stack (``UsageError``, ``ConfigError``), to run before any AWS call."""
    from .preflight import check_start

    if opts.job_name:
        qualify_job_name(opts.job_name, None)  # the stack's prefix only lengthens it: a bad name stays bad
    check_start(opts, loaded.config if loaded else None, local=local)
    check_spec(_spec(opts, job_name="", config_file="", image_tag=""))
    if loaded is not None:
        scale_notes(opts.instance_type, opts.instance_count, loaded.config)


def scale_notes(instance_type: str, instance_count: int, cfg: Any) -> list[str]:
    """What data parallelism means for this job: one training rank per GPU on every instance
    (trainer/torchrun.py), each on its share of every global batch. ``ConfigError`` when a
    rank would get no trial."""
    from trainer.config import ConfigError

    from .gpus import gpu_table

    ranks = gpu_table().ranks(instance_type, instance_count)
    batch = cfg.dataset.batch_size
    if ranks is None:
        return [f"{instance_type} is not in launcher/data/gpus.json: the job runs one rank per GPU it finds "
                f"on each of the {instance_count} instance(s); dataset.batch_size {batch} must be at least that"]
    if ranks > batch:
        raise ConfigError("dataset.batch_size", f"{batch} is less than the {ranks} training ranks of {instance_count} "
                          f"× {instance_type}: each rank needs at least one trial of every batch")
    if ranks > 1 and batch % ranks:
        return [f"the global batch of {batch} does not split evenly over {ranks} ranks: shares of "
                f"{batch // ranks} and {batch // ranks + 1} trials (results are the same; the largest share sets the pace)"]
    return []


def plan(
    opts: StartOptions,
    loaded: LoadedConfig,
    outputs: StackOutputs,
    *,
    image_tag: Optional[str] = None,
    now: Optional[dt.datetime] = None,
    **spec_overrides: Any,
) -> Plan:
    """The job spec and validated request for ``opts`` on ``outputs``; no AWS call.

    ``image_tag`` (default: ``opts.image_tag``) must be known here: :func:`plan_with_image`
    looks up the newest one in ECR when the user gave none.
    """
    tag = image_tag or opts.image_tag
    if not tag:
        raise ValueError("plan() needs an image tag: use plan_with_image() to pick the newest pushed")
    prefix = outputs.job_name_prefix
    name = (
        qualify_job_name(opts.job_name, prefix)
        if opts.job_name
        else make_job_name(prefix, loaded.file_name, now)
    )
    from trainer.config import DIPHONE_CLASSES

    spec = _spec(opts, name, loaded.file_name, tag, diphone=loaded.config.n_classes == DIPHONE_CLASSES, **spec_overrides)
    check_spec(spec)  # `resume` comes here without check_options()
    request = build_training_job_request(spec, outputs)
    validate_request(request)
    result = Plan(spec=spec, request=request, loaded=loaded, outputs=outputs)
    cfg = loaded.config
    result.notes.extend(scale_notes(spec.instance_type, spec.instance_count, cfg))
    if cfg.s3_bucket or (cfg.dataset.dataset_dir or "").startswith("s3://"):
        result.notes.append(
            f"the config's data location ({cfg.data_url}) is replaced by the stack's "
            f"{request['HyperParameters']['data_url']}"
        )
    result.notes.extend(volume_notes(spec, outputs))
    return result


def volume_notes(spec: JobSpec, outputs: StackOutputs) -> list[str]:
    """Why a configured key is not the volume's key (launcher/data/instance_storage.json)."""
    from . import instances

    table = instances.load()
    notes = []
    if not table.known(spec.instance_type):
        notes.append(f"{spec.instance_type} is not in the instance-storage table (as of {table.as_of}); "
                     "treated as having local storage")
    if outputs.kms_key_arn and table.has_local_storage(spec.instance_type):
        notes.append(f"{spec.instance_type} has local NVMe storage, encrypted by the instance: the stack's KMS "
                     "key encrypts the output, not the volume (SageMaker refuses VolumeKmsKeyId there)")
    return notes


def plan_with_image(aws: Any, opts: StartOptions, loaded: LoadedConfig, outputs: StackOutputs, **kw: Any) -> Plan:
    """:func:`plan` with its image looked up in ECR: ``opts.image_tag`` checked, or else the
    newest tagged image of the stack's repository (``NoImage`` when there is none)."""
    from .jobs import find_image

    tag, image = find_image(aws, outputs, opts.image_tag)
    result = plan(opts, loaded, outputs, image_tag=tag, **kw)
    result.image, result.image_newest = image, opts.image_tag is None
    return result


def plan_without_image(opts: StartOptions, loaded: LoadedConfig, outputs: StackOutputs, **kw: Any) -> Plan:
    """For a dry run before any image is pushed: the tag `image --run` would push from here."""
    from .commands.image import default_tag

    tag, source = default_tag()
    result = plan(opts, loaded, outputs, image_tag=tag, **kw)
    result.image_missing = True
    result.notes.append(
        f"no image in {outputs.ecr_repository_name} yet: this is the tag `python -m launcher image --run` "
        f"would push from this checkout ({source}); submitting needs an image pushed"
    )
    return result


def cost_estimate(p: Plan):
    """The job's :class:`~launcher.costs.CostEstimate` (the batches still to train)."""
    from .costs import estimate

    s, cfg = p.spec, p.loaded.config
    return estimate(
        s.instance_type,
        instance_count=s.instance_count,
        max_run_s=s.max_run_s,
        num_batches=max(cfg.num_training_batches - p.done_batches, 1),
        batch_size=cfg.dataset.batch_size,
        spot=s.spot,
    )


def summary_lines(
    p: Plan, *, sessions_ok: Optional[int] = None, image: Optional[dict] = None, cost: bool = True
) -> list[str]:
    r, s, cfg = p.request, p.spec, p.loaded.config
    est = cost_estimate(p)
    from .gpus import gpu_table

    gpus = gpu_table().get(s.instance_type)
    gpu = f" ({gpus.describe()})" if gpus else ""
    batch, ranks = cfg.dataset.batch_size, est.ranks
    ranks_line = []
    if ranks is None:
        ranks_line = ["ranks:       one per GPU found on each instance (torchrun + DDP)"]
    elif ranks > 1:
        share = f"{batch // ranks}" if batch % ranks == 0 else f"{batch // ranks}-{batch // ranks + 1}"
        ranks_line = [f"ranks:       {ranks} (torchrun + DDP), {share} trials each of every global batch of {batch}"]
    mode = (
        f"managed spot, max run {s.max_run_hours:g} h, max wait {s.max_wait_s / 3600:g} h"
        if s.spot
        else f"on-demand, max run {s.max_run_hours:g} h"
    )
    overrides = f" + {len(s.overrides)} override(s): {' '.join(s.overrides)}" if s.overrides else ""
    image = image or p.image
    pushed = " (newest pushed)" if p.image_newest else ""
    if image and image.get("imagePushedAt"):
        at = image["imagePushedAt"]
        when = f"{at:%Y-%m-%d %H:%M} UTC" if isinstance(at, dt.datetime) else str(at)
        pushed = f" ({'newest, ' if p.image_newest else ''}pushed {when})"
    sessions = len(cfg.dataset.sessions)
    found = f", all {sessions} found" if sessions_ok is not None else ""
    lines = [
        f"job:         {s.job_name}",
        f"config:      {p.loaded.source}{overrides}",
        f"training:    {cfg.num_training_batches} batches of {cfg.dataset.batch_size}, {sessions} sessions{found}",
        f"data:        {r['HyperParameters']['data_url']} (streamed by the trainer)",
        f"image:       {r['AlgorithmSpecification']['TrainingImage']}{pushed}",
        f"instance:    {s.instance_count} × {s.instance_type}{gpu}, {mode}",
        *ranks_line,
        f"role:        {r['RoleArn']}",
        f"config in:   {r['InputDataConfig'][0]['DataSource']['S3DataSource']['S3Uri']}{s.config_file}",
        f"checkpoints: {r['CheckpointConfig']['S3Uri'] if 'CheckpointConfig' in r else 'none'}",
        f"model to:    {r['OutputDataConfig']['S3OutputPath']}{s.job_name}/output/model.tar.gz",
        f"logs:        {p.outputs.log_group} (streams {s.job_name}/algo-*)",
        *(est.lines() if cost else []),
    ]
    lines.extend(f"note:        {n}" for n in p.notes)
    return lines


def upload_channel(aws: Any, p: Plan) -> None:
    """Upload the job's config channel: the config verbatim and its overrides beside it.

    Only after :func:`plan` has checked every request limit, so a rejected request uploads nothing.
    """
    from .jobs import upload_config

    uri = p.request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"]
    for name, text in channel_files(p.spec, p.loaded.text).items():
        upload_config(aws, uri, name, text, p.job_name)  # written once: a second write means a reused name


def next_commands(prog: str, job: str) -> list[str]:
    return [
        f"  {prog} status {job}",
        f"  {prog} logs {job} --follow",
        f"  {prog} stop {job}",
        f"  {prog} download {job}",
        f"  {prog} resume {job}        # after a stop or failure: continue from its checkpoints",
    ]
