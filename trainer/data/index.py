"""The trial index of one t15 HDF5 file, and reading trials through it.

The index (a "manifest") is built once per file version with h5py from a local copy: per
trial its attributes and, for each field, where its bytes lie in the file. Reading a trial
is then a slice of a memory map: no HDF5 library call, no lock, no metadata walk on the
hot path. A field HDF5 stores chunked or compressed has no single byte range; it is read
through h5py from the same local copy.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import re
from dataclasses import asdict, dataclass
from typing import Optional

import h5py
import numpy as np

from .errors import DataError, trial_error

log = logging.getLogger(__name__)

MANIFEST_VERSION = 2
FIELDS = ("input_features", "seq_class_ids", "transcription")
ATTRS = ("n_time_steps", "seq_len", "block_num", "trial_num")
# Diphone-encoded files (the lab fork's) also carry the phoneme targets and their length.
PHONEME_FIELD, PHONEME_LEN_ATTR = "seq_class_ids_phoneme", "seq_len_phoneme"
_TRIAL_KEY = re.compile(r"trial_(\d+)")


@dataclass(frozen=True)
class Field:
    offset: Optional[int]  # None: not one contiguous byte range (chunked/compressed): read with h5py
    shape: tuple[int, ...]
    dtype: str  # numpy dtype string with byte order, e.g. '<f4'

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class Trial:
    key: str
    n_time_steps: int
    seq_len: int
    block_num: int
    trial_num: int
    input_features: Field
    seq_class_ids: Field
    transcription: Field
    seq_class_ids_phoneme: Optional[Field] = None
    seq_len_phoneme: Optional[int] = None


@dataclass(frozen=True)
class FileIndex:
    url: str
    size: int
    trials: tuple[Trial, ...]

    def to_json(self) -> str:
        return json.dumps({"version": MANIFEST_VERSION, "url": self.url, "size": self.size,
                           "trials": [asdict(t) for t in self.trials]})

    @classmethod
    def from_json(cls, text: str) -> Optional["FileIndex"]:
        raw = json.loads(text)
        if raw.get("version") != MANIFEST_VERSION:
            return None

        def field(d: dict) -> Field:
            return Field(offset=d["offset"], shape=tuple(d["shape"]), dtype=d["dtype"])

        trials = tuple(
            Trial(**{k: (field(v) if k in FIELDS or (k == PHONEME_FIELD and v) else v) for k, v in t.items()})
            for t in raw["trials"]
        )
        return cls(url=raw["url"], size=raw["size"], trials=trials)


def _open(path: str, url: str) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as e:
        # h5py's own text can span lines (it embeds the C library's report); keep the gist
        reason = os.strerror(e.errno) if e.errno else str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{url}: not a readable HDF5 file ({reason})") from e


def build_index(path: str, url: str) -> FileIndex:
    """Walk the file's trials once; any missing or malformed field is a DataError naming the trial."""
    size = os.path.getsize(path)
    with _open(path, url) as f:
        try:
            names = list(f.keys())
        except Exception as e:  # h5py raises several types for damaged metadata
            raise DataError(f"{url}: cannot list its trials ({e})") from e
        keyed = sorted((int(m.group(1)), n) for n in names if (m := _TRIAL_KEY.fullmatch(n)))
        others = sorted(set(names) - {n for _, n in keyed})
        if others:
            log.warning("%s: ignoring %d entries that are not trials: %s", url, len(others), ", ".join(others[:5]))
        trials = tuple(_trial(f, key, url, size) for _, key in keyed)
    return FileIndex(url=url, size=size, trials=trials)


def _trial(f: h5py.File, key: str, url: str, size: int) -> Trial:
    try:
        g = f[key]
        if not isinstance(g, h5py.Group):
            raise DataError(f"{url} {key}: is not a group")
        attrs = {}
        for name in ATTRS:
            if name not in g.attrs:
                raise trial_error(url, key, f"missing attribute '{name}'")
            attrs[name] = int(np.asarray(g.attrs[name]).reshape(()))
        fields = {}
        for name in FIELDS:
            if name not in g:
                raise trial_error(url, key, f"missing field '{name}'")
            fields[name] = _field(g[name], url, key, size)
        if PHONEME_FIELD in g:
            if PHONEME_LEN_ATTR not in g.attrs:
                raise trial_error(url, key, f"has '{PHONEME_FIELD}' but no attribute '{PHONEME_LEN_ATTR}'")
            fields[PHONEME_FIELD] = _field(g[PHONEME_FIELD], url, key, size)
            attrs[PHONEME_LEN_ATTR] = int(np.asarray(g.attrs[PHONEME_LEN_ATTR]).reshape(()))
    except DataError:
        raise
    except Exception as e:  # damaged metadata surfaces as OSError, KeyError, ValueError, RuntimeError...
        raise trial_error(url, key, f"unreadable ({type(e).__name__}: {e})") from e
    feats = fields["input_features"]
    if len(feats.shape) != 2 or np.dtype(feats.dtype).kind != "f":
        raise trial_error(url, key, f"input_features must be a 2-D float array, got {feats.dtype} {feats.shape}")
    if attrs["n_time_steps"] < 1:
        raise trial_error(url, key, "n_time_steps is 0: the trial holds no neural data")
    if feats.shape[0] != attrs["n_time_steps"]:
        raise trial_error(url, key, f"n_time_steps is {attrs['n_time_steps']} but input_features has {feats.shape[0]} rows")
    for name in [n for n in ("seq_class_ids", "transcription", PHONEME_FIELD) if n in fields]:
        if len(fields[name].shape) != 1 or np.dtype(fields[name].dtype).kind not in "iu":
            raise trial_error(url, key, f"{name} must be a 1-D integer array, got {fields[name].dtype} {fields[name].shape}")
    if not 0 <= attrs["seq_len"] <= fields["seq_class_ids"].shape[0]:
        raise trial_error(url, key, f"seq_len {attrs['seq_len']} does not fit seq_class_ids of length {fields['seq_class_ids'].shape[0]}")
    if PHONEME_FIELD in fields and not 0 <= attrs[PHONEME_LEN_ATTR] <= fields[PHONEME_FIELD].shape[0]:
        raise trial_error(url, key, f"{PHONEME_LEN_ATTR} {attrs[PHONEME_LEN_ATTR]} does not fit {PHONEME_FIELD} "
                                    f"of length {fields[PHONEME_FIELD].shape[0]}")
    return Trial(key=key, **attrs, **fields)


def _field(ds, url: str, key: str, file_size: int) -> Field:
    if not isinstance(ds, h5py.Dataset):
        raise trial_error(url, key, f"'{ds.name.rsplit('/', 1)[-1]}' is not a dataset")
    dtype = ds.dtype
    offset = None
    if ds.chunks is None and ds.compression is None and dtype.kind in "iuf":
        offset = ds.id.get_offset()  # None when no storage is allocated (reads as fill value)
    field = Field(offset=offset, shape=tuple(int(n) for n in ds.shape), dtype=dtype.str)
    if offset is not None and offset + field.nbytes > file_size:
        raise trial_error(url, key, f"'{ds.name.rsplit('/', 1)[-1]}' lies past the end of the file (truncated?)")
    return field


def trial_ranges(trials) -> Optional[list[tuple[int, int]]]:
    """The byte ranges in the file that reading ``trials`` touches; None if a field is not one
    contiguous range (then only a complete copy will do)."""
    ranges = []
    for t in trials:
        for name in (*FIELDS, PHONEME_FIELD):
            f: Optional[Field] = getattr(t, name)
            if f is None:
                continue
            if f.offset is None:
                return None
            ranges.append((f.offset, f.offset + f.nbytes))
    return ranges


class FileReader:
    """Reads trial fields from a complete local copy of one file, through a memory map."""

    def __init__(self, path: str, url: str):
        self.path, self.url = path, url
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if os.fstat(f.fileno()).st_size else None
        self._h5: Optional[h5py.File] = None

    def read(self, trial: Trial, name: str) -> np.ndarray:
        """The field as a read-only array over the map (or a fresh array for chunked fields)."""
        field: Field = getattr(trial, name)
        if field.offset is not None:
            count = int(np.prod(field.shape, dtype=np.int64))
            return np.frombuffer(self._map, dtype=field.dtype, count=count, offset=field.offset).reshape(field.shape)
        if self._h5 is None:
            self._h5 = _open(self.path, self.url)
        try:
            return self._h5[trial.key][name][()]
        except Exception as e:  # damaged chunk data surfaces as OSError or ValueError
            raise trial_error(self.url, trial.key, f"cannot read {name} ({type(e).__name__}: {e})") from e

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
        if self._map is not None:
            self._map.close()
