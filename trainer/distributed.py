"""Data-parallel training under torchrun: who this process is, and the few collectives the loop needs.

``torchrun`` (``python -m torch.distributed.run``) starts one process per GPU (or per CPU
rank) with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set. Without them this is one
process and every function here is a no-op, so the single-process trainer runs exactly as
before.

The rules the loop follows (see :mod:`trainer.train`):

- the configured ``dataset.batch_size`` is the GLOBAL batch: rank ``r`` trains on its
  contiguous share of every global batch (:func:`trainer.data.sampling.rank_share`);
- each rank's CTC loss is weighted by its share of the global batch and DDP averages the
  gradients, so the update is the full-batch mean whatever the number of ranks
  (:func:`loss_weight`);
- rank 0 alone validates, writes checkpoints, metrics and the model; the others wait for
  its verdict (:func:`broadcast`);
- a stop request on any rank stops every rank at the same batch (:func:`any_rank`).

NCCL on GPUs (one device per local rank), gloo on the CPU.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
import torch.distributed as tdist

log = logging.getLogger(__name__)

# A rank waits this long for the others (rank 0 validating, writing the model).
COLLECTIVE_TIMEOUT = dt.timedelta(minutes=30)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: global rank, number of ranks, rank on this host."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def ranks_from_env(env: Mapping[str, str] = os.environ) -> Ranks:
    """The layout torchrun sets; one process when ``WORLD_SIZE`` is absent."""
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", "0"))
    except ValueError:
        raise RuntimeError(
            f"RANK/WORLD_SIZE/LOCAL_RANK must be integers (got {env.get('RANK')!r}/{env.get('WORLD_SIZE')!r}/"
            f"{env.get('LOCAL_RANK')!r})"
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise RuntimeError(f"RANK {rank} is not within WORLD_SIZE {world}")
    return Ranks(rank=rank, world_size=world, local_rank=local)


def local_rank_zero(env: Mapping[str, str] = os.environ) -> bool:
    """The one process per host that fetches data ahead of need (always true without torchrun)."""
    return env.get("LOCAL_RANK", "0") == "0"


def host_group_pid(env: Mapping[str, str] = os.environ) -> int:
    """A process id every rank of this host agrees on: torchrun's agent (the ranks' parent)
    under torchrun, else this process. Names per-host shared resources such as the data cache's
    memory tier."""
    return os.getppid() if "TORCHELASTIC_RUN_ID" in env and "LOCAL_RANK" in env else os.getpid()


# ---------------------------------------------------------------------------------------
# Start and stop


def device_for(ranks: Ranks, fallback: torch.device) -> torch.device:
    """Under torchrun on GPUs each local rank owns GPU ``LOCAL_RANK``; otherwise ``fallback``."""
    if ranks.distributed and fallback.type == "cuda":
        return torch.device(f"cuda:{ranks.local_rank}")
    return fallback


def start(ranks: Ranks, device: torch.device) -> bool:
    """Join the process group (NCCL on GPU, gloo on CPU); False when there is nothing to join."""
    if not ranks.distributed or tdist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"backend": backend, "timeout": COLLECTIVE_TIMEOUT}
    if device.type == "cuda":
        kwargs["device_id"] = device  # binds NCCL to this rank's GPU at once
    tdist.init_process_group(**kwargs)
    log.info("rank %d of %d (local rank %d): %s on %s", ranks.rank, ranks.world_size, ranks.local_rank,
             backend, device)
    if not ranks.is_main:  # one voice in the log: the other ranks report only problems
        logging.getLogger("trainer").setLevel(logging.WARNING)
    return True


def stop() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model``. Each batch holds a few sessions, so most day
    layers get no gradient on a rank: unused parameters must be found every step."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True,
    )  # the model has no buffers: its forward syncs nothing; validation uses the bare model on rank 0


# ---------------------------------------------------------------------------------------
# What the loop exchanges


def loss_weight(share_size: int, batch_size: int, ranks: Ranks) -> float:
    """Factor on this rank's mean loss so that DDP's gradient average is the global-batch mean:
    the ranks' losses are ``mean_r * n_r * W / B``; their average is ``sum of all / B``."""
    return share_size * ranks.world_size / batch_size


def any_rank(flag: bool, ranks: Ranks, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any of them."""
    if not ranks.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item() > 0)


def sum_over_ranks(value: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    if not ranks.distributed:
        return value
    total = value.detach().clone()
    tdist.all_reduce(total, op=tdist.ReduceOp.SUM)
    return total


def broadcast(obj: Any, ranks: Ranks) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; fine for checkpoints and progress records)."""
    if not ranks.distributed:
        return obj
    box = [obj if ranks.is_main else None]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any, ranks: Ranks) -> Optional[list]:
    """Every rank's ``obj`` on rank 0 (a list by rank); None on the other ranks."""
    if not ranks.distributed:
        return [obj]
    out = [None] * ranks.world_size if ranks.is_main else None
    tdist.gather_object(obj, out, dst=0)
    return out


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        tdist.barrier()

