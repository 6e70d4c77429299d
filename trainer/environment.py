"""Where a run reads its config and data and writes its outputs: local CLI or SageMaker container.

Local::

    python -m trainer --config FILE --data DIR_OR_URL --output DIR [--set k=v ...] [--dry-run]

writes ``DIR/metrics.jsonl``, ``DIR/training_log``, ``DIR/model/`` and ``DIR/checkpoints/``.
Without ``--output`` the config's ``output_dir`` is used; ``--config`` may name a bundled
config (``rnn_args.yaml``, ``demo.yaml``) and defaults to the demo config.

SageMaker container (custom image, no training toolkit): ``python -m trainer train`` (how
SageMaker starts the image: ``docker run IMAGE train``) or ``python -m trainer`` with no
arguments (an explicit ``ContainerEntrypoint``), when ``<root>/input/config`` exists. ``<root>`` is ``/opt/ml``, or the value of
the environment variable ``B2T_OPT_ML`` (the launcher's local mode and the tests lay out
an /opt/ml-like tree and point it there). From the container contract:

- config: the one ``.yaml`` file in channel ``config`` (``<root>/input/data/config/``), or
  the file named by hyperparameter ``config_file`` there or among the bundled configs;
- ``<root>/input/config/hyperparameters.json`` (all values are strings):
  ``config_file``, ``data_url`` (``s3://bucket/prefix``), ``overrides`` (a JSON list of
  ``dotted.key=value`` strings), ``dry_run`` (``true``/``false``); any other key is taken
  as one more override ``key=value`` (keys starting ``sagemaker_`` are ignored);
- overrides: ``overrides.json`` in channel ``config`` (a JSON list of ``dotted.key=value``
  strings; the launcher puts them there because a hyperparameter value is limited to 2,500
  characters), applied before those of the hyperparameters;
- data cache: ``B2T_DATA_CACHE_DIR`` (set by the launcher to a folder on the job's training
  volume, not ``/tmp``) becomes ``dataset.storage.disk_cache_dir`` unless an override sets it;
- data: ``data_url``, else an input channel ``data`` or ``train`` (File mode), else the
  config's ``dataset.dataset_dir``;
- checkpoints: ``LocalPath`` of ``<root>/input/config/checkpointconfig.json``, default
  ``<root>/checkpoints`` (SageMaker syncs it to S3 and restores it on a spot restart);
- model: ``<root>/model``; metrics/logs: ``<root>/output/data``; failure reason:
  ``<root>/output/failure``;
- TensorBoard event files: ``LocalPath`` of ``<root>/input/config/tensorboardoutputconfig.json``
  (the job's TensorBoardOutputConfig; SageMaker uploads that folder to its ``S3OutputPath``
  while the job runs; the API's default is ``/opt/ml/output/tensorboard``), else
  ``<root>/output/data/tensorboard`` (then they travel in ``output.tar.gz``).

With more than one GPU or host (``resourceconfig.json``), the entry point starts torchrun
itself and every rank reads this same tree (:mod:`trainer.torchrun`).

``SM_MODEL_DIR``, ``SM_OUTPUT_DATA_DIR`` and ``SM_CHANNEL_<NAME>`` are honoured where set
(the SageMaker training toolkit sets them; a bare image does not).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

from .config import ConfigError, TrainConfig, find_config, load_config
from .contract import DEFAULT_ROOT, ROOT_ENV, TRAIN_COMMAND, container_root, failure_file_for, in_container
from .train import RunPaths

log = logging.getLogger(__name__)

CONFIG_CHANNEL = "config"
DATA_CHANNELS = ("data", "train")
HP_CONFIG_FILE = "config_file"
HP_DATA_URL = "data_url"
HP_OVERRIDES = "overrides"
HP_DRY_RUN = "dry_run"
OVERRIDES_FILE = "overrides.json"  # in channel `config`; launcher/request.py writes it
DATA_CACHE_ENV = "B2T_DATA_CACHE_DIR"  # launcher/request.py sets it


@dataclass(frozen=True)
class RunSpec:
    """One run's inputs and output locations, however it was started."""

    config_path: Path
    paths: RunPaths
    data_url: Optional[str] = None
    overrides: tuple[str, ...] = ()
    dry_run: bool = False
    start_fresh: bool = False  # checkpoints that exist but none loads: move them aside, start at 0
    failure_file: Optional[Path] = None  # container mode only
    container: bool = False
    notes: list[str] = field(default_factory=list)


__all__ = ["DEFAULT_ROOT", "ROOT_ENV", "container_root", "failure_file_for", "in_container"]


class InvocationError(Exception):
    """The command line is wrong (argparse's own message, one line)."""


def is_container_invocation(argv: Sequence[str]) -> bool:
    """``IMAGE train`` (SageMaker's default) or ``IMAGE`` alone (an explicit ContainerEntrypoint)."""
    return list(argv) in ([], [TRAIN_COMMAND])


# ---------------------------------------------------------------------------------------
# Local command line


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set dataset.batch_size=32 (repeatable)")


def parse_cli(argv: Sequence[str]) -> argparse.Namespace:
    """The local command line; a usage error prints argparse's usage and raises :class:`InvocationError`."""
    p = _cli_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return p.parse_args(argv)
    except SystemExit as e:
        sys.stderr.write(err.getvalue())
        if e.code in (0, None):  # --help
            raise
        message = err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else "bad arguments"
        raise InvocationError(message.removeprefix(f"{p.prog}: error: ")) from None


def _cli_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer",
        description="Train the brain-to-text GRU/CTC phoneme decoder (reference rnn_args.yaml configs).",
        epilog=(
            "examples:\n"
            "  python -m trainer.synthetic --out runs/synthetic\n"
            "  python -m trainer --config demo.yaml --data runs/synthetic --output runs/demo\n"
            "  python -m trainer --config rnn_args.yaml --data s3://bucket/t15 --output runs/base "
            "--set num_training_batches=1000 --dry-run\n"
            "  python -m trainer train   # inside a SageMaker container (as SageMaker starts it, or with no\n"
            "                            # argument): reads /opt/ml (or $B2T_OPT_ML)\n\n"
            "exit status: 0 done, 2 bad config, 3 bad data, 1 other failure, 143 stopped by SIGTERM "
            "(checkpoint saved; run again to resume)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML config in the reference format, or a bundled name (default: demo.yaml)")
    p.add_argument("--data", help="dataset location: a directory, file:// or s3:// URL (default: dataset.dataset_dir)")
    p.add_argument("--output", help="output directory (default: the config's output_dir)")
    add_common_arguments(p)
    p.add_argument("--dry-run", action="store_true", help="validate config and data index, then exit")
    p.add_argument("--start-fresh", action="store_true",
                   help="when checkpoints exist but none can be read, move them aside (*.unreadable) and start "
                        "from step 0 (without it the run stops and names them)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def spec_from_cli(args: argparse.Namespace) -> RunSpec:
    config_path = find_config(args.config)
    output = Path(args.output) if args.output else None
    if output is None:
        output = Path(load_config(config_path, args.overrides).output_dir)
    paths = RunPaths(output_dir=output, model_dir=output / "model", checkpoint_dir=output / "checkpoints")
    return RunSpec(config_path=config_path, paths=paths, data_url=args.data, overrides=tuple(args.overrides),
                   dry_run=args.dry_run, start_fresh=args.start_fresh)


# ---------------------------------------------------------------------------------------
# SageMaker container


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(path.name, f"not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(path.name, "must hold a JSON object")
    return data


def _channel(root: Path, name: str, env: Mapping[str, str]) -> Optional[Path]:
    path = Path(env.get(f"SM_CHANNEL_{name.upper()}") or root / "input" / "data" / name)
    return path if path.is_dir() else None


def _container_config(root: Path, hp: dict, env: Mapping[str, str]) -> Path:
    name = hp.get(HP_CONFIG_FILE)
    channel = _channel(root, CONFIG_CHANNEL, env)
    if channel is not None:
        if name:
            if (channel / name).is_file():
                return channel / name
        else:
            yamls = sorted(p for p in channel.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
            if len(yamls) == 1:
                return yamls[0]
            if len(yamls) > 1:
                raise ConfigError(HP_CONFIG_FILE, f"channel '{CONFIG_CHANNEL}' holds {len(yamls)} YAML files; "
                                  "name one with hyperparameter config_file")
    if name:
        path = find_config(name)
        if path.exists():
            return path
        raise ConfigError(HP_CONFIG_FILE, f"{name!r} is neither in channel '{CONFIG_CHANNEL}' nor a bundled config")
    raise ConfigError(HP_CONFIG_FILE, f"no config: add input channel '{CONFIG_CHANNEL}' with one .yaml file "
                      "or set hyperparameter config_file")


def _override_list(raw, where: str) -> list[str]:
    try:
        items = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as e:
        raise ConfigError(where, f"must be a JSON list of 'key=value' strings: {e}") from None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ConfigError(where, "must be a JSON list of 'key=value' strings")
    return items


def _cache_overrides(root: Path, env: Mapping[str, str]) -> list[str]:
    """``dataset.storage.disk_cache_dir`` from the launcher's setting, under this run's root."""
    value = env.get(DATA_CACHE_ENV)
    if not value:
        return []
    path = Path(value)
    if path.is_relative_to(DEFAULT_ROOT):  # local mode lays /opt/ml out elsewhere
        path = root / path.relative_to(DEFAULT_ROOT)
    return [f"dataset.storage.disk_cache_dir={path}"]


def _channel_overrides(root: Path, env: Mapping[str, str]) -> list[str]:
    channel = _channel(root, CONFIG_CHANNEL, env)
    if channel is None or not (channel / OVERRIDES_FILE).is_file():
        return []
    return _override_list((channel / OVERRIDES_FILE).read_text(), f"{CONFIG_CHANNEL}/{OVERRIDES_FILE}")


def _overrides(hp: dict) -> list[str]:
    out: list[str] = []
    raw = hp.get(HP_OVERRIDES)
    if raw not in (None, ""):
        out.extend(_override_list(raw, "hyperparameters.overrides"))
    known = {HP_CONFIG_FILE, HP_DATA_URL, HP_OVERRIDES, HP_DRY_RUN}
    for key, value in hp.items():
        if key in known or key.startswith("sagemaker_"):
            continue
        out.append(f"{key}={value}")
    return out


def spec_from_container(env: Mapping[str, str] = os.environ) -> RunSpec:
    root = container_root(env)
    config_dir = root / "input" / "config"
    hp = _read_json(config_dir / "hyperparameters.json")
    checkpoint_cfg = _read_json(config_dir / "checkpointconfig.json")
    tensorboard_cfg = _read_json(config_dir / "tensorboardoutputconfig.json")
    notes: list[str] = []  # several hosts train together: trainer/torchrun.py reads resourceconfig.json
    data_url = hp.get(HP_DATA_URL) or None
    if data_url is None:
        for name in DATA_CHANNELS:
            channel = _channel(root, name, env)
            if channel is not None:
                data_url = str(channel)
                break
    output = Path(env.get("SM_OUTPUT_DATA_DIR") or root / "output" / "data")
    paths = RunPaths(
        output_dir=output,
        model_dir=Path(env.get("SM_MODEL_DIR") or root / "model"),
        checkpoint_dir=Path(checkpoint_cfg.get("LocalPath") or root / "checkpoints"),
        tensorboard_dir=(Path(tensorboard_cfg.get("LocalPath") or root / "output" / "tensorboard")
                         if tensorboard_cfg else output / "tensorboard"),
    )
    return RunSpec(
        config_path=_container_config(root, hp, env),
        paths=paths,
        data_url=data_url,
        overrides=(*_cache_overrides(root, env), *_channel_overrides(root, env), *_overrides(hp)),
        dry_run=str(hp.get(HP_DRY_RUN, "false")).lower() in ("1", "true", "yes"),
        failure_file=root / "output" / "failure",
        container=True,
        notes=notes,
    )


# ---------------------------------------------------------------------------------------


def build_config(spec: RunSpec) -> TrainConfig:
    """The run's config: file + overrides, with the data location from the command line/job."""
    overrides = list(spec.overrides)
    cfg = load_config(spec.config_path, overrides)
    if spec.data_url:
        cfg = with_data_url(cfg, spec.data_url)
    return cfg


def with_data_url(cfg: TrainConfig, url: str) -> TrainConfig:
    """A copy reading data from ``url`` (replaces dataset_dir and any s3_bucket/s3_data_prefix)."""
    data = cfg.model_dump()
    data["dataset"]["dataset_dir"] = url
    data["s3_bucket"] = data["s3_data_prefix"] = None
    return TrainConfig.model_validate(data)
