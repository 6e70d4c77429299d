"""Helpers for the data-layer tests (fixtures are in conftest.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from boto3.s3.transfer import TransferConfig

from trainer.config import TrainConfig, load_config
from trainer.synthetic import SyntheticSpec

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench/ holds the proxy

BUCKET = "b2t-test"
PREFIX = "t15/hdf5_data_final"
# Short trials, 512 features: a few KB to a few hundred KB per trial.
TINY = SyntheticSpec(n_sessions=4, train_trials=12, val_trials=4, bins_per_phoneme=(1, 2), lead_bins=(2, 4),
                     max_words=3, trials_per_block=5)
# Files of a few MB, so that fetching takes many ranged GETs.
MEDIUM = SyntheticSpec(n_sessions=4, train_trials=24, val_trials=8, bins_per_phoneme=(6, 11), lead_bins=(60, 120),
                       max_words=5, seed=3)


def upload(client, root: Path, *, bucket: str = BUCKET, prefix: str = PREFIX, multipart_mb: int = 0,
           sidecars: bool = False) -> str:
    """Put every file under ``root`` into the bucket (with ``sidecars``, each file's trial index
    beside it, as ``launcher upload`` does); returns the dataset's s3:// URL."""
    from trainer.data.index import build_index
    from trainer.data.sidecar import put_sidecar

    client.create_bucket(Bucket=bucket)
    config = TransferConfig(multipart_threshold=multipart_mb << 20, multipart_chunksize=multipart_mb << 20) \
        if multipart_mb else TransferConfig(multipart_threshold=1 << 40)
    for path in sorted(root.rglob("*.hdf5")):
        key = f"{prefix}/{path.relative_to(root).as_posix()}"
        client.upload_file(str(path), bucket, key, Config=config)
        if sidecars:
            put_sidecar(client, bucket, key, build_index(str(path), str(path)))
    return f"s3://{bucket}/{prefix}"


def make_cfg(data_url: str | os.PathLike, tmp_path: Path, *, endpoint: str | None = None, overrides=()) -> TrainConfig:
    """The demo config on this data: batch 8 from 4 days, no workers, caches under tmp_path."""
    items = [
        f"dataset.dataset_dir={data_url}",
        "dataset.batch_size=8",
        "dataset.days_per_batch=4",
        "dataset.num_dataloader_workers=0",
        "num_training_batches=6",
        f"dataset.storage.disk_cache_dir={tmp_path / 'cache'}",
        "dataset.storage.part_size_mb=1",
        "dataset.storage.max_attempts=5",
    ]
    if endpoint:
        items.append(f"dataset.storage.endpoint_url={endpoint}")
    return load_config(None, [*items, *overrides])


def all_batches(cfg: TrainConfig, start_batch: int = 0) -> list[dict]:
    from trainer.data import make_loaders

    train, val = make_loaders(cfg, start_batch=start_batch)
    return list(train) + (list(val) if val is not None else [])


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    import torch

    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), f"batch {i} field {k} differs"
