"""Tiny synthetic t15 data and a tiny config, so training tests take seconds on 2 CPU cores."""

from __future__ import annotations

import json
from pathlib import Path

from trainer.synthetic import SyntheticSpec

TINY_SPEC = SyntheticSpec(
    n_sessions=3,
    train_trials=12,
    val_trials=4,
    n_features=8,
    min_words=1,
    max_words=2,
    bins_per_phoneme=(3, 4),
    lead_bins=(3, 5),
    seed=7,
)


def tiny_overrides(data: Path, **extra) -> list[str]:
    """On top of the bundled demo config: a 2-layer 16-unit GRU on 8 features, 12 batches of 4."""
    from trainer.synthetic import session_names

    sessions = session_names(TINY_SPEC.n_sessions, TINY_SPEC.first_session)
    values = {
        "dataset.dataset_dir": str(data),
        "dataset.sessions": "[" + ", ".join(sessions) + "]",
        "dataset.dataset_probability_val": "[1, 0, 1]",
        "dataset.neural_dim": 8,
        "model.n_input_features": 8,
        "model.n_units": 16,
        "model.n_layers": 2,
        "model.rnn_dropout": 0.2,
        "model.input_network.input_layer_dropout": 0.1,
        "model.patch_size": 2,
        "model.patch_stride": 1,
        "dataset.batch_size": 4,
        "dataset.days_per_batch": 2,
        "dataset.num_dataloader_workers": 0,
        "dataset.data_transforms.smooth_kernel_size": 7,
        "dataset.data_transforms.static_gain_std": 0.05,
        "dataset.data_transforms.random_walk_std": 0.01,
        "num_training_batches": 12,
        "lr_warmup_steps": 2,
        "lr_warmup_steps_day": 2,
        "lr_decay_steps": 12,
        "lr_decay_steps_day": 12,
        "batches_per_train_log": 1,
        "batches_per_val_step": 5,
        "batches_per_save": 2,
        "save_val_logits": True,
        "gpu_number": "cpu",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def set_args(overrides: list[str]) -> list[str]:
    out: list[str] = []
    for item in overrides:
        out += ["--set", item]
    return out


def run_until_step(proc, after_step: int, act) -> int:
    """Read a trainer's stdout until batch ``after_step`` is logged, then ``act(proc)``; drain the
    rest (a closed pipe would break the trainer's last lines) and return the last step seen."""
    import re

    last = -1
    for line in proc.stdout:
        m = re.match(r"METRIC step=(\d+) train_loss", line)
        if m:
            last = int(m.group(1))
            if last >= after_step:
                act(proc)
                break
    proc.stdout.read()
    proc.stdout.close()
    return last


def opt_ml(root: Path, hp: dict, config_text: str, host: str = "algo-1", hosts: tuple[str, ...] = ("algo-1",)) -> Path:
    """An /opt/ml tree as SageMaker lays it out for ``host`` of ``hosts``, config in channel 'config'."""
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "data" / "config").mkdir(parents=True)
    (root / "input" / "data" / "config" / "train.yaml").write_text(config_text)
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hp))
    (root / "input" / "config" / "resourceconfig.json").write_text(json.dumps(
        {"current_host": host, "hosts": list(hosts), "current_instance_type": "ml.g4dn.xlarge",
         "network_interface_name": "lo"}))
    (root / "input" / "config" / "inputdataconfig.json").write_text(json.dumps({"config": {"TrainingInputMode": "File"}}))
    (root / "input" / "config" / "checkpointconfig.json").write_text(
        json.dumps({"LocalPath": str(root / "checkpoints"), "S3Uri": "s3://bucket/checkpoints/job"}))
    return root
