"""Typed configuration compatible with the reference ``rnn_args.yaml``.

Every key of the NEJM reference phoneme config and of the diphone SageMaker variant
loads unchanged. Unknown keys and wrong types are rejected with one line naming the
dotted key and the reason (:class:`ConfigError`).

Keys the reference carries but never reads are accepted and documented as ignored
(``IGNORED_KEYS``); they keep their reference meaning in the file so a config can be
moved between the reference trainer and this one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional, Sequence, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

PHONEME_CLASSES = 41
DIPHONE_CLASSES = PHONEME_CLASSES * PHONEME_CLASSES

# Reference keys accepted for compatibility but without effect here, with the reason.
IGNORED_KEYS: dict[str, str] = {
    "model.input_network.n_input_layers": "the reference model always uses one day layer",
    "model.input_network.input_layer_sizes": "the day layer is always neural_dim x neural_dim",
    "dataset.max_seq_elements": "never read by the reference trainer",
    "dataset.test_percentage": "train/val come from data_train.hdf5/data_val.hdf5, as in the reference",
    "mode": "only 'train' exists; evaluation is `python -m trainer.evaluate`",
    "dataset.loader_shuffle": "batch i is drawn from (dataset.seed, i) so a run can resume at any batch; "
    "shuffling the batch order would add nothing",
    "save_val_data": "never read by the reference trainer",
    "log_val_skip_logs": "never read by the reference trainer",
    "checkpoint_dir": "checkpoints go to <output>/checkpoints locally and to /opt/ml/checkpoints "
    "(checkpointconfig.json LocalPath) in a SageMaker job",
}
# Reference keys whose value the entry point may replace.
ENTRY_POINT_KEYS: dict[str, str] = {
    "output_dir": "used when `python -m trainer` gets no --output; a SageMaker job writes to /opt/ml",
    "dataset.dataset_dir": "replaced by --data or the job's data_url / data channel when given",
}


MAX_REPORTED_PROBLEMS = 10  # lines a ConfigError shows; the rest are counted


def _problem_line(key: str, reason: str) -> str:
    return f"{key}: {reason}" if key else reason


class ConfigError(ValueError):
    """Configuration problems, one line each: ``<dotted.key>: <reason>``.

    ``key``/``reason`` are the first problem; ``problems`` holds every one. At most
    ``MAX_REPORTED_PROBLEMS`` lines are shown, then a line counting the rest.
    """

    def __init__(self, key: str, reason: str, more: Sequence[tuple[str, str]] = ()):
        self.key = key
        self.reason = reason
        self.problems: list[tuple[str, str]] = [(key, reason), *more]
        lines = [_problem_line(k, r) for k, r in self.problems[:MAX_REPORTED_PROBLEMS]]
        hidden = len(self.problems) - len(lines)
        if hidden:
            lines.append(f"... and {hidden} more problem{'s' if hidden > 1 else ''}")
        super().__init__("\n".join(lines))


def _none_string(value: Any) -> Any:
    """The reference writes the string ``None`` where it means null."""
    if isinstance(value, str) and value.strip() in ("None", "none", "null", "~", ""):
        return None
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


class InputNetworkConfig(_Strict):
    n_input_layers: int = Field(1, ge=1)
    input_layer_sizes: list[int] = Field(default_factory=lambda: [512])
    input_trainable: bool = True
    input_layer_dropout: float = Field(0.2, ge=0.0, lt=1.0)


class ModelConfig(_Strict):
    n_input_features: int = Field(512, gt=0)
    n_units: int = Field(768, gt=0)
    rnn_dropout: float = Field(0.4, ge=0.0, lt=1.0)
    rnn_trainable: bool = True
    n_layers: int = Field(5, gt=0)
    patch_size: int = Field(14, ge=0)
    patch_stride: int = Field(4, ge=0)
    # Not in the reference phoneme config; the diphone SageMaker variant sets it.
    # When given it must equal dataset.n_classes.
    n_classes: Optional[int] = Field(None, gt=0)
    bidirectional: bool = False
    input_network: InputNetworkConfig = Field(default_factory=InputNetworkConfig)

    @model_validator(mode="after")
    def _patching(self) -> "ModelConfig":
        if self.patch_size > 0 and self.patch_stride < 1:
            raise ValueError("patch_stride: must be >= 1 when patch_size > 0")
        if self.patch_size > 0 and self.patch_stride > self.patch_size:
            raise ValueError(
                f"patch_stride: {self.patch_stride} is larger than patch_size {self.patch_size}; "
                "bins between patches would be dropped"
            )
        return self


class DataTransformsConfig(_Strict):
    white_noise_std: float = Field(1.0, ge=0.0)
    constant_offset_std: float = Field(0.2, ge=0.0)
    random_walk_std: float = Field(0.0, ge=0.0)
    random_walk_axis: int = -1
    static_gain_std: float = Field(0.0, ge=0.0)
    random_cut: int = Field(3, ge=0)
    smooth_kernel_size: int = Field(100, gt=0)
    smooth_data: bool = True
    smooth_kernel_std: float = Field(2.0, gt=0.0)


class StorageConfig(_Strict):
    """How the data layer reaches ``dataset_dir`` (not in the reference)."""

    endpoint_url: Optional[str] = None  # a local S3 endpoint; also AWS_ENDPOINT_URL_S3
    region: Optional[str] = None
    max_attempts: int = Field(10, ge=1)  # botocore retries per request
    retry_mode: Literal["standard", "adaptive"] = "standard"  # botocore retry mode
    connect_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(60.0, gt=0)
    parts_in_flight: int = Field(16, ge=1)  # ranged GETs in flight per process, all objects together
    part_size_mb: int = Field(8, ge=1)
    # The object cache: on local disk, kept across runs (keyed by object URL and ETag), least
    # recently used objects evicted above disk_cache_mb (0: as much as the volume holds, less a
    # margin); a memory tier on /dev/shm above it (None: half of /dev/shm; 0, the default: none, the
    # page cache keeps recent objects in memory anyway and a second copy costs a copy per byte).
    disk_cache_dir: Optional[str] = None  # default: <tmp>/b2t-data-cache
    disk_cache_mb: int = Field(0, ge=0)
    memory_cache_mb: Optional[int] = Field(0, ge=0)
    verify_md5: bool = False  # also hash each fetched object against its ETag (size + ETag of each part always)
    prefetch_batches: int = Field(8, ge=0)  # fetch the files of this many batches ahead (0: fetch on demand)


class DatasetConfig(_Strict):
    data_transforms: DataTransformsConfig = Field(default_factory=DataTransformsConfig)
    neural_dim: int = Field(512, gt=0)
    batch_size: int = Field(64, gt=0)
    n_classes: int = PHONEME_CLASSES
    max_seq_elements: int = Field(500, gt=0)
    days_per_batch: int = Field(4, gt=0)
    seed: int = 1
    num_dataloader_workers: int = Field(4, ge=0)
    loader_shuffle: bool = False
    must_include_days: Optional[list[int]] = None
    test_percentage: float = Field(0.1, ge=0.0, le=1.0)
    feature_subset: Optional[list[int]] = None
    dataset_dir: str = "../data/hdf5_data_final"
    # {session: {block_num: [trial_num, ...]}}: trials to leave out. Block numbers may be
    # strings ("3") as JSON writes mapping keys.
    bad_trials_dict: Optional[dict[str, dict[Annotated[int, Strict(False)], list[int]]]] = None
    sessions: list[str] = Field(default_factory=list, min_length=1)
    dataset_probability_val: Optional[list[float]] = None
    storage: StorageConfig = Field(default_factory=StorageConfig)

    _none_strings = field_validator(
        "must_include_days", "feature_subset", "bad_trials_dict", "dataset_probability_val", mode="before"
    )(_none_string)

    @field_validator("n_classes")
    @classmethod
    def _known_targets(cls, v: int) -> int:
        if v not in (PHONEME_CLASSES, DIPHONE_CLASSES):
            raise ValueError(
                f"must be {PHONEME_CLASSES} (phonemes) or {DIPHONE_CLASSES} (diphones), got {v}"
            )
        return v

    @field_validator("dataset_probability_val")
    @classmethod
    def _probabilities(cls, v: Optional[list[float]]) -> Optional[list[float]]:
        for p in v or ():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"every entry must be between 0 and 1, got {p}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "DatasetConfig":
        n = len(self.sessions)
        if n == 0:
            raise ValueError("sessions: required: list the session folders to train on")
        if len(set(self.sessions)) != n:
            dup = sorted({s for s in self.sessions if self.sessions.count(s) > 1})
            raise ValueError(f"sessions: listed twice: {', '.join(dup)}")
        if self.days_per_batch > n:
            raise ValueError(f"days_per_batch: {self.days_per_batch} is more than the {n} sessions listed")
        if self.batch_size < self.days_per_batch:
            raise ValueError(
                f"batch_size: {self.batch_size} is smaller than days_per_batch {self.days_per_batch}"
            )
        if self.dataset_probability_val is not None and len(self.dataset_probability_val) != n:
            raise ValueError(
                f"dataset_probability_val: has {len(self.dataset_probability_val)} entries for {n} sessions"
            )
        for d in self.must_include_days or ():
            if not -n <= d < n:
                raise ValueError(f"must_include_days: day index {d} is outside the {n} sessions")
        days = [d % n for d in self.must_include_days or ()]
        if len(set(days)) != len(days):
            raise ValueError(
                f"must_include_days: {self.must_include_days} names one session twice (negative indices count "
                "from the end): a batch draws distinct sessions"
            )
        if self.must_include_days and len(self.must_include_days) > self.days_per_batch:
            raise ValueError("must_include_days: more days than days_per_batch")
        if self.feature_subset is not None:
            if not self.feature_subset:
                raise ValueError("feature_subset: must not be empty (use null for all features)")
            bad = [f for f in self.feature_subset if not 0 <= f < self.neural_dim]
            if bad:
                raise ValueError(f"feature_subset: indices outside 0..{self.neural_dim - 1}: {bad[:5]}")
        for session in self.bad_trials_dict or {}:
            if session not in self.sessions:
                raise ValueError(f"bad_trials_dict: session {session!r} is not in dataset.sessions")
        return self

    @property
    def n_features(self) -> int:
        return len(self.feature_subset) if self.feature_subset is not None else self.neural_dim

    def val_probability(self, day: int) -> float:
        probs = self.dataset_probability_val
        return 1.0 if probs is None else probs[day]


class TrainConfig(_Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    gpu_number: Union[str, int] = "0"
    mode: Literal["train"] = "train"
    use_amp: bool = True
    compile: bool = False  # torch.compile (not in the reference: it always compiled)

    output_dir: str = "trained_models/baseline_rnn"
    checkpoint_dir: str = "trained_models/baseline_rnn/checkpoint"
    init_from_checkpoint: bool = False
    init_checkpoint_path: Optional[str] = None
    save_best_checkpoint: bool = True
    save_all_val_steps: bool = False
    save_final_model: bool = False
    save_val_metrics: bool = True
    early_stopping: bool = False
    early_stopping_val_steps: int = Field(20, gt=0)
    keep_last_checkpoints: int = Field(2, ge=1)  # periodic checkpoints kept besides the best

    num_training_batches: int = Field(120000, gt=0)
    lr_scheduler_type: Literal["cosine", "linear"] = "cosine"
    lr_max: float = Field(0.005, gt=0)
    lr_min: float = Field(0.0001, ge=0)
    lr_decay_steps: int = Field(120000, gt=0)
    lr_warmup_steps: int = Field(1000, ge=0)
    lr_max_day: float = Field(0.005, gt=0)
    lr_min_day: float = Field(0.0001, ge=0)
    lr_decay_steps_day: int = Field(120000, gt=0)
    lr_warmup_steps_day: int = Field(1000, ge=0)

    beta0: float = Field(0.9, ge=0, lt=1)
    beta1: float = Field(0.999, ge=0, lt=1)
    epsilon: float = Field(0.1, gt=0)
    weight_decay: float = Field(0.001, ge=0)
    weight_decay_day: float = Field(0.0, ge=0)
    seed: int = 10
    grad_norm_clip_value: float = Field(10.0, ge=0)

    batches_per_train_log: int = Field(200, gt=0)
    batches_per_val_step: int = Field(2000, gt=0)
    batches_per_save: int = Field(0, ge=0)  # 0: checkpoint only at validation steps
    log_individual_day_val_PER: bool = True
    log_val_skip_logs: bool = False
    save_val_logits: bool = True
    save_val_data: bool = False

    dataset: DatasetConfig

    # The lab fork's composite diphone loss, L = alpha * CTC(phonemes) + (1 - alpha) * CTC(diphones),
    # the phoneme log-probabilities being the diphone ones marginalised over the previous phoneme.
    # alpha is composite_loss_alpha, or with use_alpha_schedule
    # min(alpha_schedule_start + (batch // alpha_schedule_step_interval) * alpha_schedule_step_size,
    # alpha_schedule_end). Defaults are the fork trainer's.
    use_composite_loss: bool = False
    composite_loss_alpha: float = Field(0.5, ge=0.0, le=1.0)
    use_alpha_schedule: bool = False
    alpha_schedule_start: float = Field(0.0, ge=0.0, le=1.0)
    alpha_schedule_end: float = Field(0.6, ge=0.0, le=1.0)
    alpha_schedule_step_size: float = Field(0.1, ge=0.0, le=1.0)
    alpha_schedule_step_interval: int = Field(3000, gt=0)

    # The seed's SageMaker fork passed these on its command line; accepted as a
    # shorthand for dataset.dataset_dir = s3://<s3_bucket>/<s3_data_prefix>.
    s3_bucket: Optional[str] = None
    s3_data_prefix: Optional[str] = None

    _none_strings = field_validator("init_checkpoint_path", "s3_bucket", "s3_data_prefix", mode="before")(
        _none_string
    )

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        if self.lr_min > self.lr_max:
            raise ValueError(f"lr_min: {self.lr_min} is larger than lr_max {self.lr_max}")
        if self.lr_min_day > self.lr_max_day:
            raise ValueError(f"lr_min_day: {self.lr_min_day} is larger than lr_max_day {self.lr_max_day}")
        if self.model.n_input_features != self.dataset.n_features:
            raise ValueError(
                f"model.n_input_features: {self.model.n_input_features} does not match the "
                f"{self.dataset.n_features} features the dataset provides (dataset.neural_dim / feature_subset)"
            )
        if self.model.n_classes is not None and self.model.n_classes != self.dataset.n_classes:
            raise ValueError(
                f"model.n_classes: {self.model.n_classes} does not match dataset.n_classes {self.dataset.n_classes}"
            )
        if self.use_composite_loss and self.dataset.n_classes != DIPHONE_CLASSES:
            raise ValueError(
                f"use_composite_loss: needs diphone targets (dataset.n_classes {DIPHONE_CLASSES}), "
                f"got {self.dataset.n_classes}"
            )
        if self.use_alpha_schedule and self.alpha_schedule_start > self.alpha_schedule_end:
            raise ValueError(
                f"alpha_schedule_start: {self.alpha_schedule_start} is larger than "
                f"alpha_schedule_end {self.alpha_schedule_end}"
            )
        if self.init_from_checkpoint and not self.init_checkpoint_path:
            raise ValueError("init_checkpoint_path: required when init_from_checkpoint is true")
        if (self.s3_bucket is None) != (self.s3_data_prefix is None) and self.s3_bucket is None:
            raise ValueError("s3_bucket: required when s3_data_prefix is given")
        return self

    @property
    def n_classes(self) -> int:
        return self.dataset.n_classes

    @property
    def data_url(self) -> str:
        """Where the session folders live: a local path, file:// or s3:// URL."""
        if self.s3_bucket:
            prefix = (self.s3_data_prefix or "").strip("/")
            return f"s3://{self.s3_bucket}/{prefix}" if prefix else f"s3://{self.s3_bucket}"
        return self.dataset.dataset_dir


# ---------------------------------------------------------------------------------------
# Loading


def _problem(error: Mapping[str, Any]) -> tuple[str, str]:
    """(dotted key, reason) of one pydantic error."""
    # pydantic names the member a value failed of a union (``gpu_number: str | int``) after the key
    loc = [str(p) for p in error["loc"] if not (str(p) in _UNION_TAGS or "[" in str(p))]
    msg = error["msg"]
    # Cross-field checks raise "key: reason" from a model validator; move the key into loc.
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    head, sep, rest = msg.partition(": ")
    if sep and " " not in head and head.replace("_", "").replace(".", "").isalnum():
        loc.append(head)
        msg = rest
    key = ".".join(loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        msg = "unknown key"
    elif error["type"] == "missing":
        msg = "required key is missing"
    if "input" in error and error["type"] not in ("extra_forbidden", "missing", "value_error"):
        shown = repr(error["input"])
        if len(shown) <= 60:
            msg = f"{msg} (got {shown})"
    return key, msg


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "none"})


def _format_error(err: ValidationError) -> ConfigError:
    """Every problem pydantic found, one line per key (see :class:`ConfigError`)."""
    by_key: dict[str, list[str]] = {}
    for key, reason in map(_problem, err.errors()):
        if reason not in by_key.setdefault(key, []):
            by_key[key].append(reason)
    problems = [(key, " or ".join(reasons)) for key, reasons in by_key.items()]
    return ConfigError(*problems[0], more=problems[1:])


def parse_override(item: str) -> tuple[list[str], Any]:
    """``dotted.key=value`` with the value parsed as YAML (``5``, ``true``, ``[1, 2]``, ``None``)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(key or item, f"override must look like dotted.key=value, got {item!r}")
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(key, f"value is not valid YAML: {e.problem if hasattr(e, 'problem') else e}") from e
    return key.split("."), value


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        node = raw
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(".".join(path[: depth + 1]), "is not a section, cannot set a key inside it")
            node = child
        node[path[-1]] = value
    return raw


def config_from_dict(raw: Mapping[str, Any], overrides: Sequence[str] = ()) -> TrainConfig:
    data = apply_overrides(_plain(raw), overrides)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        raise _format_error(e) from None


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with two changes for configs people write by hand:

    - a key given twice in one mapping is an error (YAML would silently keep the last);
    - ``5e-3`` / ``1E5`` are floats: YAML 1.1 (PyYAML) needs a dot (``5.0e-3``) and would read
      them as strings, YAML 1.2 and most users do not.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise DuplicateKey(key, seen[key], line)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, again: int):
        self.key, self.first, self.again = key, first, again
        super().__init__(f"key {key!r} on line {again} was already given on line {first}")


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    """YAML as configs are read everywhere (files, ``--set`` values, a job's config from S3)."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 (a SafeLoader subclass)


def parse_config_text(text: str, source: Union[str, Path]) -> dict:
    """A config's text as a mapping; :class:`ConfigError` naming ``source`` (and the line) if it is not one."""
    try:
        raw = parse_yaml(text)
    except DuplicateKey as e:
        raise ConfigError("", f"{source} line {e.again}: key {e.key!r} is given twice (also on line {e.first}); "
                          "keep one") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError("", f"{source}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("", f"{source}: the top level must be a mapping of keys, got {type(raw).__name__}")
    return raw


def read_config_file(path: Union[str, Path]) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError("", f"{path} is a folder, not a config file") from None
    except OSError as e:
        raise ConfigError("", f"cannot read config file {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError("", f"{path}: not a YAML text file (byte {e.start} is not UTF-8)") from None
    return parse_config_text(text, path)


def find_config(name: Union[str, Path, None]) -> Path:
    """A config path as given, or a bundled config by file name (``rnn_args.yaml``); the demo config if None."""
    if name is None:
        return DEMO_CONFIG
    path = Path(name)
    if path.exists() or path.is_absolute() or len(path.parts) > 1:
        return path
    bundled = CONFIG_DIR / path.name
    return bundled if bundled.exists() else path


def load_config(path: Union[str, Path, None], overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a reference-format YAML file (or the bundled demo config when ``path`` is None)."""
    raw = read_config_file(path if path is not None else DEMO_CONFIG)
    return config_from_dict(raw, overrides)


def dump_config(cfg: TrainConfig) -> str:
    """The config as reference-format YAML that :func:`load_config` reads back unchanged."""
    return yaml.safe_dump(cfg.model_dump(), sort_keys=False)


def _plain(raw: Mapping[str, Any]) -> dict:
    """A deep copy with plain dicts (OmegaConf/other mappings become dicts)."""
    if isinstance(raw, Mapping):
        return {str(k) if not isinstance(k, int) else k: _plain(v) for k, v in raw.items()}
    if isinstance(raw, (list, tuple)):
        return [_plain(v) for v in raw]  # type: ignore[return-value]
    return raw  # type: ignore[return-value]


CONFIG_DIR = Path(__file__).parent / "configs"
DEMO_CONFIG = CONFIG_DIR / "demo.yaml"
REFERENCE_CONFIG = CONFIG_DIR / "rnn_args.yaml"
