"""Which trials make up each batch: the reference's rules, as pure functions.

Train (reference ``create_batch_index_train``): each batch takes ``days_per_batch`` distinct
sessions (``must_include_days`` always, the rest drawn without replacement), draws
``ceil(batch_size / days_per_batch)`` trials from each with replacement, then drops the
last trial of a randomly drawn session until ``batch_size`` remain.

Unlike the reference, which draws every batch from one global RNG stream at start-up,
batch ``i`` uses its own generator seeded with ``(seed, i)``: the batch depends only on the
seed, its number and the data, so a run resumed at batch ``i`` sees exactly the batches an
uninterrupted run would, and the sessions of any future batch are known without reading
any data (they are drawn first), which is what the prefetcher uses.

Data-parallel training (torchrun): ``batch_size`` stays the global batch; rank ``r`` of
``W`` trains on its contiguous share of each global batch (:func:`rank_share`), so the
day-grouped layout, and which trials make up batch ``i``, do not depend on ``W``.

Validation (reference ``create_batch_index_test``): every trial once, session by session,
in batches of up to ``batch_size`` from one session each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

# One batch: [(day, [trial positions in that day's file, in batch order]), ...]
Plan = list[tuple[int, list[int]]]


@dataclass(frozen=True)
class TrainRule:
    seed: int
    n_days: int
    days_per_batch: int
    batch_size: int
    must_include_days: tuple[int, ...] = ()

    @classmethod
    def create(cls, seed: int, n_days: int, days_per_batch: int, batch_size: int,
               must_include_days: Optional[Sequence[int]] = None) -> "TrainRule":
        must = tuple(d + n_days if d < 0 else d for d in (must_include_days or ()))
        if days_per_batch > n_days:
            raise ValueError(f"days_per_batch {days_per_batch} is more than the {n_days} sessions")
        if len(must) > days_per_batch or len(set(must)) != len(must) or not all(0 <= d < n_days for d in must):
            raise ValueError(f"must_include_days {list(must_include_days or ())} is not valid for {n_days} sessions")
        return cls(seed, n_days, days_per_batch, batch_size, must)

    def _days(self, rng: np.random.Generator) -> list[int]:
        if self.must_include_days:
            rest = [d for d in range(self.n_days) if d not in self.must_include_days]
            drawn = rng.choice(rest, size=self.days_per_batch - len(self.must_include_days), replace=False)
            return [*self.must_include_days, *(int(d) for d in drawn)]
        return [int(d) for d in rng.choice(self.n_days, size=self.days_per_batch, replace=False)]

    def days(self, batch: int) -> list[int]:
        """The sessions batch ``batch`` draws from, without reading any data."""
        return self._days(self._rng(batch))

    def plan(self, batch: int, trials_of: Callable[[int], Sequence[int]]) -> Plan:
        """Batch ``batch``: ``trials_of(day)`` gives that session's usable trial positions."""
        rng = self._rng(batch)
        days = self._days(rng)
        per_day = math.ceil(self.batch_size / self.days_per_batch)
        chosen: dict[int, list[int]] = {}
        for d in days:
            pool = trials_of(d)
            if len(pool) == 0:
                raise ValueError(f"session {d} has no training trials")
            chosen[d] = [int(pool[i]) for i in rng.integers(0, len(pool), size=per_day)]
        for _ in range(per_day * len(days) - self.batch_size):
            chosen[days[int(rng.integers(0, len(days)))]].pop()
        return [(d, chosen[d]) for d in days]

    def _rng(self, batch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, batch])


def rank_share(plan: Plan, rank: int, world_size: int) -> Plan:
    """Rank ``rank``'s part of a global batch: trials ``[rank*B//W, (rank+1)*B//W)`` in batch
    order (shares differ by at most one trial), still grouped by day."""
    flat = [(day, p) for day, positions in plan for p in positions]
    lo, hi = rank * len(flat) // world_size, (rank + 1) * len(flat) // world_size
    share: Plan = []
    for day, p in flat[lo:hi]:
        if share and share[-1][0] == day:
            share[-1][1].append(p)
        else:
            share.append((day, [p]))
    return share


def validation_plan(trials_per_day: Sequence[tuple[int, Sequence[int]]], batch_size: int) -> list[Plan]:
    """Every trial once: ``[(day, positions)]`` in order, cut into batches of one day each."""
    batches: list[Plan] = []
    for day, positions in trials_per_day:
        for start in range(0, len(positions), batch_size):
            batches.append([(day, [int(p) for p in positions[start : start + batch_size]])])
    return batches
