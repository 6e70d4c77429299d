"""The reference configs load unchanged; malformed ones fail with one line naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trainer.config import (
    CONFIG_DIR,
    DEMO_CONFIG,
    ENTRY_POINT_KEYS,
    IGNORED_KEYS,
    REFERENCE_CONFIG,
    ConfigError,
    TrainConfig,
    config_from_dict,
    dump_config,
    load_config,
    read_config_file,
)
from trainer.checks import check_patch_fits

DIPHONE_CONFIG = CONFIG_DIR / "rnn_args_diphone_sagemaker.yaml"
REPO = Path(__file__).resolve().parents[2]


def _keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out.add(prefix + str(k))
        if isinstance(v, dict) and k not in ("bad_trials_dict",):
            out |= _keys(v, f"{prefix}{k}.")
    return out


@pytest.mark.parametrize("path", [REFERENCE_CONFIG, DIPHONE_CONFIG, DEMO_CONFIG], ids=lambda p: p.name)
def test_bundled_configs_load_unchanged(path):
    raw = read_config_file(path)
    cfg = load_config(path)
    dumped = cfg.model_dump()
    # every key of the file is a field and keeps its value ("None" strings become null)
    for key in _keys(raw):
        node_raw, node_cfg = raw, dumped
        for part in key.split("."):
            node_raw, node_cfg = node_raw[part], node_cfg[part]
        if node_raw == "None":
            assert node_cfg is None
        elif not isinstance(node_raw, dict):
            assert node_cfg == node_raw, key


def test_reference_values():
    ref = load_config(REFERENCE_CONFIG)
    assert ref.n_classes == 41 and len(ref.dataset.sessions) == 45 and ref.init_checkpoint_path is None
    assert ref.dataset.val_probability(0) == 0 and ref.dataset.val_probability(1) == 1
    diphone = load_config(DIPHONE_CONFIG)
    assert diphone.n_classes == 1681 and diphone.model.n_units == 1024


def test_dump_roundtrip_and_json_keys():
    cfg = load_config(REFERENCE_CONFIG, ["dataset.bad_trials_dict={t15.2023.08.11: {3: [1, 2]}}"])
    assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg
    as_json = cfg.model_dump(mode="json")  # JSON turns block numbers into strings
    assert config_from_dict(as_json).dataset.bad_trials_dict == {"t15.2023.08.11": {3: [1, 2]}}


def test_overrides_parse_yaml_values():
    cfg = load_config(REFERENCE_CONFIG, ["lr_max=0.01", "model.n_layers=2", "dataset.feature_subset=[0, 1]",
                                          "model.n_input_features=2", "use_amp=false", "init_checkpoint_path=None"])
    assert (cfg.lr_max, cfg.model.n_layers, cfg.dataset.feature_subset, cfg.use_amp) == (0.01, 2, [0, 1], False)
    assert cfg.dataset.n_features == 2


def test_ignored_keys_are_real_fields():
    fields = _keys(TrainConfig(dataset={"sessions": ["s"], "days_per_batch": 1}).model_dump())
    for key in list(IGNORED_KEYS) + list(ENTRY_POINT_KEYS):
        assert key in fields, key


def test_s3_shorthand_gives_data_url():
    cfg = load_config(DIPHONE_CONFIG, ["s3_bucket=b", "s3_data_prefix=/t15/"])
    assert cfg.data_url == "s3://b/t15"


# (override, key named in the error). Each applies to the reference phoneme config.
MALFORMED = [
    ("foo=1", "foo"),
    ("model.n_unit=768", "model.n_unit"),  # a typo of n_units
    ("dataset.batchsize=64", "dataset.batchsize"),
    ("model.input_network.bogus=1", "model.input_network.bogus"),
    ("dataset.data_transforms.blur=2", "dataset.data_transforms.blur"),
    ("dataset.storage.bucket=x", "dataset.storage.bucket"),
    ("dataset.batch_size='64'", "dataset.batch_size"),
    ("dataset.batch_size=-4", "dataset.batch_size"),
    ("dataset.batch_size=2.5", "dataset.batch_size"),
    ("dataset.days_per_batch=50", "dataset.days_per_batch"),
    ("dataset.batch_size=2", "dataset.batch_size"),  # fewer trials than days_per_batch
    ("model.n_units=0", "model.n_units"),
    ("model.rnn_dropout=1.5", "model.rnn_dropout"),
    ("model.patch_stride=0", "model.patch_stride"),
    ("model.patch_stride=20", "model.patch_stride"),
    ("model.n_input_features=256", "model.n_input_features"),
    ("model.n_classes=1681", "model.n_classes"),
    ("model.input_network=5", "model.input_network"),
    ("lr_max=abc", "lr_max"),
    ("lr_min=0.1", "lr_min"),
    ("lr_min_day=0.1", "lr_min_day"),
    ("lr_scheduler_type=step", "lr_scheduler_type"),
    ("mode=eval", "mode"),
    ("use_amp=2", "use_amp"),
    ("seed=1.5", "seed"),
    ("epsilon=0", "epsilon"),
    ("num_training_batches=-1", "num_training_batches"),
    ("batches_per_val_step=0", "batches_per_val_step"),
    ("early_stopping_val_steps=0", "early_stopping_val_steps"),
    ("grad_norm_clip_value=-1", "grad_norm_clip_value"),
    ("keep_last_checkpoints=0", "keep_last_checkpoints"),
    ("init_from_checkpoint=true", "init_checkpoint_path"),
    ("dataset.n_classes=40", "dataset.n_classes"),
    ("dataset.sessions=[]", "dataset.sessions"),
    ("dataset.sessions=[a, a, b, c]", "dataset.sessions"),
    ("dataset.dataset_probability_val=[1, 1]", "dataset.dataset_probability_val"),
    ("dataset.must_include_days=[99]", "dataset.must_include_days"),
    ("dataset.feature_subset=[600]", "dataset.feature_subset"),
    ("dataset.bad_trials_dict={t15.1999.01.01: {1: [2]}}", "dataset.bad_trials_dict"),
    ("dataset.data_transforms.smooth_kernel_std=0", "dataset.data_transforms.smooth_kernel_std"),
    ("dataset.data_transforms.random_cut=-1", "dataset.data_transforms.random_cut"),
    ("dataset.storage.retry_mode=legacy", "dataset.storage.retry_mode"),
    ("lr_max.value=1", "lr_max"),
    ("dataset=[1, 2]", "dataset"),
]


@pytest.mark.parametrize("override,key", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_config_names_the_key(override, key):
    raw = read_config_file(REFERENCE_CONFIG)
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, [override])
    err = info.value
    assert err.key == key, str(err)
    assert "\n" not in str(err) and str(err).startswith(f"{key}: ")


def test_missing_dataset_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="^dataset: required key is missing"):
        config_from_dict({"model": {}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_patch_larger_than_input():
    cfg = load_config(REFERENCE_CONFIG)  # patch 14, random cut up to 2
    check_patch_fits(cfg, 16)
    with pytest.raises(ConfigError) as info:
        check_patch_fits(cfg, 13)
    assert info.value.key == "model.patch_size"
    with pytest.raises(ConfigError) as info:  # long enough, but not after the largest cut: the cut is named
        check_patch_fits(cfg, 15)
    assert str(info.value) == ("dataset.data_transforms.random_cut: 3 may cut the shortest trial in the data "
                               "(15 bins) below one patch of model.patch_size 14 bins; at most 2 fits")


@pytest.mark.parametrize(
    "extra,key",
    [(["--set", "dataset.batch_size=-1"], "dataset.batch_size"), (["--set", "nonsense=1"], "nonsense"),
     (["--set", "dataset.days_per_batch=99"], "dataset.days_per_batch"), (["--set", "model.patch_stride=99"],
                                                                          "model.patch_stride")],
    ids=["negative-batch", "unknown-key", "days-per-batch", "patch-stride"],
)
def test_cli_reports_one_line(tmp_path, extra, key):
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "--config", str(REFERENCE_CONFIG), "--data", str(tmp_path),
         "--output", str(tmp_path / "out"), "--dry-run", *extra],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith(f"config error: {key}: "), proc.stderr
    assert "Traceback" not in proc.stderr
