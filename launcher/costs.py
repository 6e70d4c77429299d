"""Cost estimates from the bundled, dated price table (``launcher/data/prices.json``).

Several instances cost their number times as much per hour; with several GPUs in all
(``launcher/data/gpus.json``) the estimated training time divides by their number (ideal
data-parallel scaling: an optimistic bound).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Optional

REFERENCE_BATCH_SIZE = 48  # the batch size the table's seconds_per_batch refer to
VALIDATION_OVERHEAD = 1.10


@dataclass(frozen=True)
class InstancePrice:
    instance_type: str
    usd_per_hour: float
    seconds_per_batch: float
    seed: bool = False


@dataclass(frozen=True)
class PriceTable:
    region: str
    as_of: str
    source: str
    instances: dict[str, InstancePrice]

    def get(self, instance_type: str) -> Optional[InstancePrice]:
        return self.instances.get(instance_type)


@dataclass(frozen=True)
class CostEstimate:
    instance_type: str
    instance_count: int
    usd_per_hour: Optional[float]  # all instances together; None when the type is not in the table
    max_hours: float
    estimated_hours: Optional[float]
    spot: bool
    table: PriceTable
    ranks: Optional[int] = None  # GPUs (or CPU ranks) in all; None: the type is not in the GPU table

    @property
    def max_usd(self) -> Optional[float]:
        return None if self.usd_per_hour is None else self.usd_per_hour * self.max_hours

    @property
    def estimated_usd(self) -> Optional[float]:
        """The whole run, however long --max-run lets it go."""
        if self.usd_per_hour is None or self.estimated_hours is None:
            return None
        return self.usd_per_hour * self.estimated_hours

    @property
    def past_max_run(self) -> bool:
        """The estimate says --max-run stops the job before its last batch."""
        return self.estimated_hours is not None and self.estimated_hours > self.max_hours

    @property
    def capped_usd(self) -> Optional[float]:
        """What the job costs at most given --max-run: the whole run, or --max-run's worth if shorter."""
        if self.usd_per_hour is None:
            return None
        hours = self.max_hours if self.estimated_hours is None else min(self.estimated_hours, self.max_hours)
        return self.usd_per_hour * hours

    def lines(self) -> list[str]:
        """The summary's cost lines (labels padded like the rest of the summary)."""
        pad = " " * 13
        src = f"on-demand {self.table.region} prices as of {self.table.as_of}, launcher/data/prices.json"
        if self.usd_per_hour is None:
            return [f"cost:        unknown: {self.instance_type} is not in the price table ({src})"]
        each = self.usd_per_hour / self.instance_count
        rate = f"${each:.3f}/h × {self.instance_count} = ${self.usd_per_hour:.3f}/h" if self.instance_count > 1 else f"${each:.3f}/h"
        out = [f"cost:        {rate} ({src})"]
        if self.estimated_usd is not None:
            per = f" ÷ {self.ranks} GPUs, ideal scaling," if self.ranks and self.ranks > 1 else ""
            out.append(
                f"{pad}≈ ${self.estimated_usd:,.2f} for the whole run, an estimated {_duration(self.estimated_hours)} "
                f"of training (rough: table step time × batches{per} + 10% validation)"
            )
        if self.past_max_run:
            out.append(f"{pad}--max-run {self.max_hours:g} h stops it before its last batch, at ≈ "
                       f"${self.capped_usd:,.2f} (the rest: `resume` from its checkpoints)")
        else:
            out.append(f"{pad}at most ${self.max_usd:,.2f} if it runs the full --max-run {self.max_hours:g} h")
        if self.spot:
            out.append(f"{pad}managed spot: billed only for the spot time used, usually well below these "
                       "on-demand figures; `status` reports the real saving")
        return out

    def check_fits(self, accept_cut: bool) -> None:
        """Refuse a run estimated past --max-run unless the cut is accepted (``UsageError``)."""
        from .errors import UsageError

        if self.past_max_run and not accept_cut:
            need = math.ceil(self.estimated_hours * 1.2)
            raise UsageError(
                f"the run is estimated at {_duration(self.estimated_hours)}, past --max-run {self.max_hours:g} h, "
                f"which would stop it before its last batch: raise --max-run (e.g. --max-run {need}), or pass "
                "--accept-cut to stop there and `resume` it later"
            )


def _duration(hours: Optional[float]) -> str:
    if hours is None:
        return "?"
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.1f} h"


@lru_cache(maxsize=1)
def price_table() -> PriceTable:
    raw = json.loads(resources.files("launcher").joinpath("data/prices.json").read_text())
    instances = {
        name: InstancePrice(
            instance_type=name,
            usd_per_hour=float(v["usd_per_hour"]),
            seconds_per_batch=float(v["seconds_per_batch"]),
            seed=bool(v.get("seed", False)),
        )
        for name, v in raw["instances"].items()
    }
    return PriceTable(region=raw["region"], as_of=raw["as_of"], source=raw["source"], instances=instances)


def estimate(
    instance_type: str,
    *,
    instance_count: int = 1,
    max_run_s: int,
    num_batches: Optional[int] = None,
    batch_size: Optional[int] = None,
    spot: bool = True,
) -> CostEstimate:
    from .gpus import gpu_table

    table = price_table()
    price = table.get(instance_type)
    hourly = price.usd_per_hour * instance_count if price else None
    ranks = gpu_table().ranks(instance_type, instance_count)
    est_hours = None
    if price and num_batches:
        scale = (batch_size or REFERENCE_BATCH_SIZE) / REFERENCE_BATCH_SIZE / (ranks or instance_count)
        est_hours = num_batches * price.seconds_per_batch * scale * VALIDATION_OVERHEAD / 3600
    return CostEstimate(
        instance_type=instance_type,
        instance_count=instance_count,
        usd_per_hour=hourly,
        max_hours=max_run_s / 3600,
        estimated_hours=est_hours,
        spot=spot,
        table=table,
        ranks=ranks,
    )
