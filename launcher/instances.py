"""Which ML instance families have local NVMe storage (the dated table launcher/data/instance_storage.json).

Where the rules live: SageMaker API reference, "ResourceConfig": VolumeKmsKeyId can't be
requested for an instance type with local storage (a hardware module encrypts it), and
VolumeSizeInGB can't exceed its total local storage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

TABLE = Path(__file__).with_name("data") / "instance_storage.json"
# The training volume (NVMe or EBS alike) holds /opt/ml/input/data ("Managing storage paths for
# different types of instance local storage"); the docs do not say which disk backs /tmp: see the table's rules.
DATA_CACHE_DIR = "/opt/ml/input/data/b2t-cache"


@dataclass(frozen=True)
class InstanceStorage:
    as_of: str
    instance_storage: frozenset[str]  # families, e.g. "ml.g5"
    ebs_only: frozenset[str]
    local_storage_gb: dict[str, int]

    def family(self, instance_type: str) -> str:
        return instance_type.rsplit(".", 1)[0]

    def known(self, instance_type: str) -> bool:
        return self.family(instance_type) in self.instance_storage | self.ebs_only

    def has_local_storage(self, instance_type: str) -> bool:
        """True for families with local NVMe storage, and for unknown ones (the safe side: see the table)."""
        return self.family(instance_type) not in self.ebs_only

    def local_gb(self, instance_type: str) -> Optional[int]:
        return self.local_storage_gb.get(instance_type)


@lru_cache(maxsize=1)
def load() -> InstanceStorage:
    raw = json.loads(TABLE.read_text())
    return InstanceStorage(
        as_of=raw["as_of"],
        instance_storage=frozenset(raw["instance_storage"]),
        ebs_only=frozenset(raw["ebs_only"]),
        local_storage_gb=dict(raw["local_storage_gb"]),
    )
