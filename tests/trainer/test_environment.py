"""The SageMaker container contract and the local command line map to the same run spec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.config import ConfigError, REFERENCE_CONFIG
from trainer.environment import ROOT_ENV, build_config, in_container, parse_cli, spec_from_cli, spec_from_container


def opt_ml(root: Path, hp: dict, *, config_text: str | None = None, checkpoint_dir: Path | None = None) -> Path:
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hp))
    (root / "input" / "config" / "resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-1", "hosts": ["algo-1"], "current_instance_type": "ml.g4dn.xlarge"}))
    if config_text is not None:
        (root / "input" / "data" / "config").mkdir(parents=True)
        (root / "input" / "data" / "config" / "rnn_args.yaml").write_text(config_text)
    if checkpoint_dir is not None:
        (root / "input" / "config" / "checkpointconfig.json").write_text(
            json.dumps({"LocalPath": str(checkpoint_dir), "S3Uri": "s3://b/ckpt"}))
    return root


def test_container_spec(tmp_path):
    hp = {"config_file": "rnn_args.yaml", "data_url": "s3://bucket/data/",
          "overrides": json.dumps(["num_training_batches=10", "dataset.batch_size=8"]), "lr_max": "0.002",
          "sagemaker_program": "ignored"}
    root = opt_ml(tmp_path / "ml", hp, config_text=REFERENCE_CONFIG.read_text(), checkpoint_dir=tmp_path / "ck")
    env = {ROOT_ENV: str(root)}
    assert in_container(env) and not in_container({ROOT_ENV: str(tmp_path / "none")})
    spec = spec_from_container(env)
    assert spec.config_path == root / "input" / "data" / "config" / "rnn_args.yaml"
    assert spec.paths.model_dir == root / "model" and spec.paths.output_dir == root / "output" / "data"
    assert spec.paths.checkpoint_dir == tmp_path / "ck" and spec.failure_file == root / "output" / "failure"
    cfg = build_config(spec)
    assert cfg.data_url == "s3://bucket/data/" and cfg.num_training_batches == 10
    assert cfg.dataset.batch_size == 8 and cfg.lr_max == 0.002


def test_container_defaults_and_channels(tmp_path):
    root = opt_ml(tmp_path / "ml", {"config_file": "rnn_args.yaml"})  # no config channel: bundled config
    (root / "input" / "data" / "train").mkdir(parents=True)
    spec = spec_from_container({ROOT_ENV: str(root), "SM_MODEL_DIR": str(tmp_path / "m")})
    assert spec.config_path == REFERENCE_CONFIG and spec.data_url == str(root / "input" / "data" / "train")
    assert spec.paths.checkpoint_dir == root / "checkpoints" and spec.paths.model_dir == tmp_path / "m"


@pytest.mark.parametrize(
    "hp,match",
    [({}, "no config"), ({"config_file": "nope.yaml"}, "neither in channel"),
     ({"config_file": "rnn_args.yaml", "overrides": "not json"}, "JSON list"),
     ({"config_file": "rnn_args.yaml", "overrides": "[1]"}, "JSON list")],
)
def test_container_errors(tmp_path, hp, match):
    root = opt_ml(tmp_path / "ml", hp)
    with pytest.raises(ConfigError, match=match):
        build_config(spec_from_container({ROOT_ENV: str(root)}))


def test_cli_spec(tmp_path):
    spec = spec_from_cli(parse_cli(["--config", "rnn_args.yaml", "--data", "s3://b/p", "--output", str(tmp_path),
                                    "--set", "seed=3", "--set", "s3_bucket=other", "--set", "s3_data_prefix=x"]))
    assert spec.config_path == REFERENCE_CONFIG and spec.paths.checkpoint_dir == tmp_path / "checkpoints"
    cfg = build_config(spec)
    assert cfg.seed == 3 and cfg.data_url == "s3://b/p"  # --data wins over the s3_bucket shorthand
    default = spec_from_cli(parse_cli([]))
    assert default.paths.output_dir == Path("runs/demo")
