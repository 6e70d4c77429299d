"""The one error the data layer raises for anything wrong with the data or its storage."""

from __future__ import annotations


class DataError(Exception):
    """A dataset problem. The message always names the object URL and, where relevant, the trial.

    Example: ``s3://b/data/t15.2023.08.11/data_train.hdf5 trial_0007: missing field 'seq_class_ids'``
    """


def trial_error(url: str, key: str, reason: str) -> DataError:
    return DataError(f"{url} {key}: {reason}")
