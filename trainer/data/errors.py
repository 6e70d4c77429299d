"""The one error the data layer raises for anything wrong with the data or its storage."""

from __future__ import annotations

_MARKER = "DataError: "


class DataError(Exception):
    """A dataset problem. The message always names the object URL and, where relevant, the trial.

    Example: ``s3://b/data/t15.2023.08.11/data_train.hdf5 trial_0007: missing field 'seq_class_ids'``

    A DataError raised in a DataLoader worker reaches the main process rebuilt by torch from
    "Caught DataError in DataLoader worker process N. Original Traceback ..."; the original
    one-line message is restored here and the worker's traceback kept in ``worker_traceback``.
    """

    def __init__(self, message: str = ""):
        self.worker_traceback = None
        if isinstance(message, str) and message.startswith("Caught DataError ") and _MARKER in message:
            self.worker_traceback = message
            message = message[message.rindex(_MARKER) + len(_MARKER):].strip()
        super().__init__(message)


def trial_error(url: str, key: str, reason: str) -> DataError:
    return DataError(f"{url} {key}: {reason}")
