"""The trainer's data layer: t15 HDF5 sessions from a local directory or S3, one code path.

- :func:`make_loaders` gives the train and validation DataLoaders (reference batch rules,
  resumable at any batch);
- :func:`check_data` builds and summarises the trial index for ``--dry-run``;
- :class:`DataError` is the one error for missing, damaged or unreachable data, and always
  names the object (and trial).

Design notes: ``storage.py`` (fetch once, cache, retries), ``index.py`` (trial manifests,
reads through a memory map), ``sampling.py`` (batch rules), ``dataset.py`` (batches).
"""

from .errors import DataError
from .loaders import DataSummary, SessionSummary, check_data, make_loaders

__all__ = ["DataError", "DataSummary", "SessionSummary", "check_data", "make_loaders"]
