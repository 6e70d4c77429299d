"""GPUs per SageMaker instance type, from the bundled, dated table ``launcher/data/gpus.json``.

The job runs one training rank per GPU on every instance (trainer/torchrun.py), so the
number of ranks of a job is ``instance count × GPUs per instance`` (one per instance
without GPUs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Optional


@dataclass(frozen=True)
class InstanceGpus:
    instance_type: str
    gpus: int
    gpu: str
    gpu_memory_gb: int  # per GPU

    def describe(self) -> str:
        return f"{self.gpus} × {self.gpu}, {self.gpu_memory_gb} GB each" if self.gpus > 1 else \
            f"1 × {self.gpu}, {self.gpu_memory_gb} GB"


@dataclass(frozen=True)
class GpuTable:
    as_of: str
    source: str
    instances: dict[str, InstanceGpus]

    def get(self, instance_type: str) -> Optional[InstanceGpus]:
        return self.instances.get(instance_type)

    def ranks(self, instance_type: str, instance_count: int) -> Optional[int]:
        """Training ranks of ``instance_count`` instances; None for a type not in the table."""
        found = self.get(instance_type)
        return None if found is None else instance_count * max(found.gpus, 1)


@lru_cache(maxsize=1)
def gpu_table() -> GpuTable:
    raw = json.loads(resources.files("launcher").joinpath("data/gpus.json").read_text())
    instances = {
        name: InstanceGpus(instance_type=name, gpus=int(v["gpus"]), gpu=v["gpu"], gpu_memory_gb=int(v["gpu_memory_gb"]))
        for name, v in raw["instances"].items()
    }
    return GpuTable(as_of=raw["as_of"], source=raw["source"], instances=instances)
