"""Data-parallel training under torchrun: two CPU ranks (gloo) on tiny synthetic data."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer import checkpoint as ckpt
from trainer.__main__ import EXIT_STOPPED, main
from trainer.config import ConfigError
from trainer.data.sampling import rank_share
from trainer.distributed import Ranks, loss_weight
from trainer.environment import ROOT_ENV
from trainer.export import load_model
from trainer.torchrun import NPROC_ENV, layout_from_resources, rank_environment, torchrun_command
from trainer.train import RANK_RNG_STATES

from tests.trainer.trainer_helpers import opt_ml, run_until_step, set_args, tiny_overrides

REPO = Path(__file__).resolve().parents[2]
N = 24  # batches of the kill/resume runs: long enough to stop in the middle
LONG = dict(num_training_batches=N, lr_decay_steps=N, lr_decay_steps_day=N, batches_per_save=3,
            batches_per_val_step=7, save_final_model="true")
# Item 2: no dropout, no augmentation; 5 trials over 2 ranks: shares of 2 and 3.
PLAIN = {"model.rnn_dropout": 0, "model.input_network.input_layer_dropout": 0,
         "dataset.data_transforms.white_noise_std": 0, "dataset.data_transforms.constant_offset_std": 0,
         "dataset.data_transforms.random_walk_std": 0, "dataset.data_transforms.static_gain_std": 0,
         "dataset.data_transforms.random_cut": 0, "dataset.batch_size": 5, "num_training_batches": 4,
         "lr_warmup_steps": 0, "lr_warmup_steps_day": 0, "lr_decay_steps": 4, "lr_decay_steps_day": 4,
         "batches_per_save": 4, "batches_per_val_step": 100}


def _env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SM_", ROOT_ENV, "B2T_")) and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return env


def _torchrun(out: Path, overrides: list[str], ranks: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
            "-m", "trainer", "--output", str(out), *set_args(overrides)]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def straight(tiny_data, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """An uninterrupted two-rank run of N batches."""
    out = tmp_path_factory.mktemp("straight") / "run"
    return out, _run(_torchrun(out, tiny_overrides(tiny_data, **LONG)))


def test_rank_shares_cover_the_global_batch_in_order():
    plan = [(2, [5, 1, 1]), (0, [3, 4])]
    shares = [rank_share(plan, r, 2) for r in range(2)]
    assert shares == [[(2, [5, 1])], [(2, [1]), (0, [3, 4])]]
    assert [rank_share(plan, r, 3) for r in range(3)] == [[(2, [5])], [(2, [1, 1])], [(0, [3, 4])]]
    # each rank's mean loss weighted by its share: the ranks' average is the global mean
    ranks = [Ranks(rank=r, world_size=2) for r in range(2)]
    assert sum(loss_weight(n, 5, r) for n, r in zip((2, 3), ranks)) / 2 == pytest.approx(1.0)


def test_two_ranks_write_one_checkpoint_set_and_one_model(straight):
    out, proc = straight
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "data parallel: 2 ranks" in proc.stderr
    # rank 0 alone writes: each metric line once, one metrics file, one log, one set of checkpoints
    steps = [int(m) for m in re.findall(r"^METRIC step=(\d+) train_loss", proc.stdout, re.M)]
    assert steps == list(range(N))
    records = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(N))
    assert {p.name for p in out.iterdir()} - {"tensorboard"} == {  # .trainer.lock: rank 0's output-folder lock
        ".trainer.lock", "checkpoints", "metrics.jsonl", "model", "training_log", "val_logits.npz", "val_metrics.json"}
    if (out / "tensorboard").exists():  # with tensorboardX installed: one writer
        assert len(list((out / "tensorboard").iterdir())) == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "best_checkpoint.pt", "checkpoint_00000022.pt", f"checkpoint_{N:08d}.pt"]  # keep_last_checkpoints: 2
    assert {p.name for p in (out / "model").iterdir()} - {"curves.png"} == {
        "config.yaml", "final_model.pt", "model.pt", "sessions.json"}
    assert load_model(out / "model").info["weights"] == "best"
    state = torch.load(ckpt.periodic_path(out / "checkpoints", N), weights_only=False)
    assert len(state[RANK_RNG_STATES]) == 2  # every rank's noise streams, for an exact resume
    assert proc.stdout.count("done: completed") == 1


def test_two_ranks_with_half_batches_match_one_process_with_the_full_batch(tiny_data, tmp_path):
    overrides = tiny_overrides(tiny_data, **PLAIN)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["--output", str(one), *set_args(overrides)]) == 0
    proc = _run(_torchrun(two, overrides))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(ckpt.periodic_path(one / "checkpoints", 4), weights_only=False)[ckpt.MODEL_STATE]
    b = torch.load(ckpt.periodic_path(two / "checkpoints", 4), weights_only=False)[ckpt.MODEL_STATE]
    moved = max(float((a[k] - torch.eye(8)).abs().max()) for k in a if k.startswith("day_weights"))
    assert moved > 1e-3  # training changed the weights: the match means something
    diff = {k: float((a[k] - b[k]).abs().max()) for k in a}
    assert max(diff.values()) <= 1e-5, sorted(diff.items(), key=lambda kv: -kv[1])[:3]


def _kill_tree(proc: subprocess.Popen, sig: int) -> None:
    """torchrun starts its ranks in sessions of their own: signal the agent and every rank (its children)."""
    ranks = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    for pid in [proc.pid, *map(int, ranks)]:
        os.kill(pid, sig)


def _run_until(cmd: list[str], after_step: int, stop) -> tuple[int, int]:
    """Start ``cmd``; once batch ``after_step`` is logged, ``stop(proc)``; (exit status, last step seen)."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    last = run_until_step(proc, after_step, stop)
    return proc.wait(timeout=300), last


def test_two_ranks_killed_and_resumed_end_equal_to_an_uninterrupted_run(straight, tiny_data, tmp_path):
    straight_out, straight_proc = straight
    assert straight_proc.returncode == 0
    out = tmp_path / "resumed"
    cmd = _torchrun(out, tiny_overrides(tiny_data, **LONG))

    # SIGKILL to the agent and both ranks (a lost machine): no chance to save
    code, killed_at = _run_until(cmd, 4, lambda p: _kill_tree(p, signal.SIGKILL))
    assert code == -signal.SIGKILL and killed_at < N - 1
    before = ckpt.load_latest(out / "checkpoints")
    assert before is not None and before[1][ckpt.STEP] <= killed_at + 1

    # SIGTERM to torchrun only (a spot stop): it reaches both ranks, which stop at one batch and save once
    code, stopped_after = _run_until(cmd, 12, lambda p: p.send_signal(signal.SIGTERM))
    assert code != 0 and stopped_after < N - 1
    saved = ckpt.load_latest(out / "checkpoints")
    assert saved is not None and stopped_after + 1 <= saved[1][ckpt.STEP] < N
    log = (out / "training_log").read_text()
    assert log.count("stop requested: saved") == 1 and "resuming from" in log

    finish = _run(cmd)
    assert finish.returncode == 0, finish.stderr[-3000:]
    assert f"resuming from {out / 'checkpoints'}/checkpoint_{saved[1][ckpt.STEP]:08d}.pt" in finish.stderr

    a = torch.load(ckpt.periodic_path(straight_out / "checkpoints", N), weights_only=False)
    b = torch.load(ckpt.periodic_path(out / "checkpoints", N), weights_only=False)
    for key, value in a[ckpt.MODEL_STATE].items():
        assert torch.equal(value, b[ckpt.MODEL_STATE][key]), key
    for sa, sb in zip(a[ckpt.OPTIMIZER_STATE]["state"].values(), b[ckpt.OPTIMIZER_STATE]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a[ckpt.PROGRESS] == b[ckpt.PROGRESS]
    for ra, rb in zip(a[RANK_RNG_STATES], b[RANK_RNG_STATES]):
        assert ra["augment"].equal(rb["augment"]) and ra["torch"].equal(rb["torch"])
    final_a = load_model(straight_out / "model" / "final_model.pt").model.state_dict()
    final_b = load_model(out / "model" / "final_model.pt").model.state_dict()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


# ---------------------------------------------------------------------------------------
# The container entry: torchrun from resourceconfig.json


def test_layout_from_the_resource_config():
    resources = {"current_host": "algo-2", "hosts": ["algo-1", "algo-2", "algo-3"], "network_interface_name": "eth0"}
    layout = layout_from_resources(resources, gpus=4, env={})
    assert (layout.nnodes, layout.node_rank, layout.nproc_per_node, layout.world_size) == (3, 1, 4, 12)
    assert (layout.master_addr, layout.master_port) == ("algo-1", 29500)
    cmd = torchrun_command(layout, python="python")
    assert cmd == ["python", "-m", "torch.distributed.run", "--nproc-per-node=4", "--nnodes=3", "--node-rank=1",
                   "--master-addr=algo-1", "--master-port=29500", "-m", "trainer"]
    assert rank_environment(layout, {})["NCCL_SOCKET_IFNAME"] == "eth0"
    # one host without GPUs: one rank, no torchrun; CPU ranks on request (local mode)
    one = layout_from_resources({"current_host": "algo-1", "hosts": ["algo-1"]}, gpus=0, env={})
    assert one.world_size == 1
    cpu = layout_from_resources({"current_host": "algo-1", "hosts": ["algo-1"]}, gpus=0, env={NPROC_ENV: "2"})
    assert "--standalone" in torchrun_command(cpu) and cpu.world_size == 2
    with pytest.raises(ConfigError, match="current_host 'algo-9' is not among hosts"):
        layout_from_resources({"current_host": "algo-9", "hosts": ["algo-1"]}, gpus=1, env={})
    with pytest.raises(ConfigError, match="B2T_NPROC_PER_NODE: must be a positive integer"):
        layout_from_resources({}, gpus=0, env={NPROC_ENV: "two"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _container(root: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainer"], cwd=REPO, env={**_env(), ROOT_ENV: str(root), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _container_hp(data: Path, **extra) -> dict:
    overrides = tiny_overrides(data, **extra)[1:]  # the data comes as data_url
    return {"config_file": "train.yaml", "data_url": str(data), "overrides": json.dumps(overrides)}


def test_two_hosts_train_together_and_write_one_model(tiny_data, tmp_path):
    """Two /opt/ml trees naming algo-1 and algo-2 (as two containers on one network would see):
    each entry starts torchrun for its node; rank 0 on algo-1 writes the model and checkpoints."""
    hp = _container_hp(tiny_data, num_training_batches=6, batches_per_val_step=3)
    config = (REPO / "trainer" / "configs" / "demo.yaml").read_text()
    roots = [opt_ml(tmp_path / host, hp, config, host=host, hosts=("algo-1", "algo-2")) for host in ("algo-1", "algo-2")]
    port = str(_free_port())
    procs = [_container(root, B2T_MASTER_ADDR="127.0.0.1", B2T_MASTER_PORT=port) for root in roots]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    first, second = roots
    assert "data parallel: 2 ranks" in results[0][1]
    assert {p.name for p in (first / "model").iterdir()} >= {"model.pt", "config.yaml", "sessions.json"}
    assert (first / "checkpoints" / "checkpoint_00000006.pt").exists()
    assert (first / "output" / "data" / "metrics.jsonl").exists()
    assert not (second / "model").exists() or not any((second / "model").iterdir())
    assert not (second / "checkpoints").exists() or not any((second / "checkpoints").iterdir())
    assert "METRIC step=" not in results[1][0]
    assert not (first / "output" / "failure").exists() and not (second / "output" / "failure").exists()


def test_container_with_two_ranks_stops_on_sigterm_with_one_checkpoint(tiny_data, tmp_path):
    hp = _container_hp(tiny_data, **LONG)
    root = opt_ml(tmp_path / "ml", hp, (REPO / "trainer" / "configs" / "demo.yaml").read_text())
    proc = subprocess.Popen([sys.executable, "-m", "trainer"], cwd=REPO,
                            env={**_env(), ROOT_ENV: str(root), NPROC_ENV: "2"},
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stopped_after = run_until_step(proc, 8, lambda p: p.send_signal(signal.SIGTERM))  # as SageMaker stops PID 1
    assert proc.wait(timeout=300) == EXIT_STOPPED and stopped_after < N - 1
    saved = ckpt.load_latest(root / "checkpoints")
    assert saved is not None and stopped_after + 1 <= saved[1][ckpt.STEP] < N
    assert (root / "output" / "data" / "training_log").read_text().count("stop requested: saved") == 1
    assert not (root / "output" / "failure").exists() and not list((root / "model").glob("*.pt"))


def test_the_ranks_of_a_host_share_the_data_caches_memory_tier(tmp_path):
    """Two ranks started by one agent (here: this process) name the same /dev/shm folder, so an
    object one of them fetched is found by the other; outside torchrun each process owns its own."""
    code = "from trainer.data.storage import memory_tier_dir; print(memory_tier_dir(%r))" % str(tmp_path)

    def memory_dir(**env: str) -> str:
        return subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**_env(), **env}, capture_output=True,
                              text=True, check=True).stdout.strip()

    ranks = [memory_dir(TORCHELASTIC_RUN_ID="job", LOCAL_RANK=str(r)) for r in (0, 1)]
    assert ranks[0] == ranks[1] and ranks[0].endswith(f"-{os.getpid()}-" + ranks[0].rsplit("-", 1)[1])
    assert memory_dir() != memory_dir()
