"""Inside a SageMaker job: start torchrun when the job has more than one GPU or host.

SageMaker starts the image once per host. This derives the torchrun layout from the
container contract, ``<root>/input/config/resourceconfig.json`` (AWS developer guide, "How
Amazon SageMaker AI Provides Training Information", distributed training configuration:
``current_host``, ``hosts``, ``network_interface_name``), and the GPUs this host has:

- nodes: the number of ``hosts``; this node's rank: the position of ``current_host`` in it;
- the master (rendezvous) host: the first of ``hosts``, port 29500;
- processes per node: the host's GPU count (one rank per GPU, NCCL), or 1 without GPUs (gloo).

With one rank in all, the trainer runs in this process as before. Otherwise this process
runs ``python -m torch.distributed.run ... -m trainer`` and waits: it forwards SIGTERM
(a spot interruption or a stop) to torchrun, which passes it to every rank; the ranks agree
to stop at the same batch and rank 0 saves one checkpoint.

Overrides (local mode and tests): ``B2T_NPROC_PER_NODE`` (ranks per host, e.g. CPU ranks),
``B2T_MASTER_ADDR`` / ``B2T_MASTER_PORT`` (e.g. 127.0.0.1 when containers share the
host's network).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from .config import ConfigError

log = logging.getLogger(__name__)

NPROC_ENV = "B2T_NPROC_PER_NODE"
MASTER_ADDR_ENV = "B2T_MASTER_ADDR"
MASTER_PORT_ENV = "B2T_MASTER_PORT"
DEFAULT_MASTER_PORT = 29500
# torchrun waits this long for the ranks after passing on a SIGTERM before it kills them
# (TORCH_ELASTIC_SHUTDOWN_TIMEOUT; older torch versions always wait 30 s): inside SageMaker's
# 120 s between SIGTERM and SIGKILL.
SHUTDOWN_TIMEOUT_S = 100


@dataclass(frozen=True)
class Layout:
    nnodes: int
    node_rank: int
    nproc_per_node: int
    master_addr: str
    master_port: int
    network_interface: Optional[str] = None

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(name, f"must be a positive integer (got {raw!r})")
    return value


def layout_from_resources(resources: Mapping, gpus: int, env: Mapping[str, str] = os.environ) -> Layout:
    """The torchrun layout for this host from resourceconfig.json's content and its GPU count."""
    hosts = list(resources.get("hosts") or [])
    current = resources.get("current_host")
    if not hosts:
        hosts, current = [current or "algo-1"], current or "algo-1"
    if current not in hosts:
        raise ConfigError("resourceconfig.json", f"current_host {current!r} is not among hosts {hosts}")
    return Layout(
        nnodes=len(hosts),
        node_rank=hosts.index(current),
        nproc_per_node=_int_env(env, NPROC_ENV, max(gpus, 1)),
        master_addr=env.get(MASTER_ADDR_ENV) or hosts[0],
        master_port=_int_env(env, MASTER_PORT_ENV, DEFAULT_MASTER_PORT),
        network_interface=resources.get("network_interface_name"),
    )


def torchrun_command(layout: Layout, python: str = sys.executable) -> list[str]:
    cmd = [python, "-m", "torch.distributed.run", f"--nproc-per-node={layout.nproc_per_node}"]
    if layout.nnodes == 1:  # a free port on this host: nothing else needs to find it
        cmd.append("--standalone")
    else:
        cmd += [f"--nnodes={layout.nnodes}", f"--node-rank={layout.node_rank}",
                f"--master-addr={layout.master_addr}", f"--master-port={layout.master_port}"]
    return cmd + ["-m", "trainer"]


def rank_environment(layout: Layout, env: Mapping[str, str]) -> dict[str, str]:
    """The ranks' environment: NCCL and gloo talk over the job's network interface."""
    out = dict(env)
    if layout.nnodes > 1 and layout.network_interface:
        out.setdefault("NCCL_SOCKET_IFNAME", layout.network_interface)
        out.setdefault("GLOO_SOCKET_IFNAME", layout.network_interface)
    out.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_TIMEOUT_S))
    return out


def container_layout(root: Path, env: Mapping[str, str] = os.environ) -> Optional[Layout]:
    """The layout for this container, or None when it is a rank already or the job has one rank."""
    if "LOCAL_RANK" in env:  # started by torchrun
        return None
    path = root / "input" / "config" / "resourceconfig.json"
    try:
        resources = json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError as e:
        raise ConfigError(path.name, f"not valid JSON: {e}") from None
    import torch

    layout = layout_from_resources(resources, torch.cuda.device_count(), env)
    return layout if layout.world_size > 1 else None


def run_ranks(layout: Layout, env: Mapping[str, str] = os.environ) -> int:
    """Run torchrun for ``layout``, forwarding SIGTERM/SIGINT; its exit status (143 after a stop)."""
    cmd = torchrun_command(layout)
    log.info("%d host(s) × %d rank(s): this is node %d, master %s:%d; %s", layout.nnodes, layout.nproc_per_node,
             layout.node_rank, layout.master_addr, layout.master_port, " ".join(cmd))
    proc = subprocess.Popen(cmd, env=rank_environment(layout, env))
    stopped: list[int] = []

    def forward(signum, _frame) -> None:
        stopped.append(signum)
        proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopped and code != 0:
        return 128 + signal.SIGTERM  # the ranks saved a checkpoint and stopped (torchrun reports the signal)
    return code if code >= 0 else 128 - code
