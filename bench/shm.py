"""Benchmark: training batches/s with Docker's default 64 MB /dev/shm vs a large one.

The same loaders (batch 64 from 4 sessions, trials of ~1,100-1,500 bins with 512 float32
features, so one batch is ~190 MB; 2 DataLoader workers; data on local disk) run in child
processes that each see their own /dev/shm: a fresh tmpfs mounted in a private mount namespace
(``unshare``; as root, else in a user namespace), 64 MB for one and 8 GB for the other. With
64 MB the loaders pass batches in memfds (or, without
memfd_create, through the workers' pipes); with 8 GB through /dev/shm
(trainer/data/transport.py logs which). Children alternate, several rounds, so load from other
processes on the machine affects both alike; batches/s is the total over the rounds.

Last line: ``shm64_over_large=… batches_per_s_64mb=… batches_per_s_large=… transport_64mb=… transport_large=…``
(goal: shm64_over_large >= 0.9)

    python bench/shm.py              # ~3 min on 2 cores
    python bench/shm.py --rounds 1 --batches 4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CACHE = ROOT / "bench" / ".cache"
SIZES = {"64mb": "64m", "large": "8g"}


def dataset() -> Path:
    from trainer.synthetic import SyntheticSpec, generate

    spec = SyntheticSpec(n_sessions=4, train_trials=32, val_trials=4, min_words=30, max_words=34,
                         lead_bins=(60, 100), seed=3)
    root = CACHE / "shm-data-4x32"
    if not (root / ".complete").exists():
        shutil.rmtree(root, ignore_errors=True)
        generate(root, spec)
        (root / ".complete").write_text("")
    return root


def child(data: Path, batches: int, workers: int) -> dict:
    """In the namespace: time ``batches`` training batches after the first (workers warm)."""
    import logging

    from trainer.config import load_config
    from trainer.data import make_loaders
    from trainer.data import transport

    chosen = {}

    class Grab(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            if msg.startswith("batches travel by "):
                chosen["mode"] = msg.split()[3]

    logging.getLogger("trainer.data").addHandler(Grab())
    logging.getLogger("trainer.data").setLevel(logging.INFO)
    sessions = sorted(p.name for p in data.iterdir() if p.is_dir())
    cfg = load_config(None, [f"dataset.dataset_dir={data}", f"dataset.sessions=[{', '.join(sessions)}]",
                             "dataset.dataset_probability_val=[1, 1, 1, 1]", "dataset.batch_size=64",
                             "dataset.days_per_batch=4", f"dataset.num_dataloader_workers={workers}",
                             f"num_training_batches={batches + 1}", "gpu_number=cpu"])
    train, _ = make_loaders(cfg)
    it = iter(train)
    first = next(it)
    nbytes = first["input_features"].numel() * 4
    t = time.perf_counter()
    n = 0
    for batch in it:
        n += 1
        del batch
    seconds = time.perf_counter() - t
    return {"batches": n, "seconds": seconds, "mode": chosen.get("mode", "?"), "batch_mb": nbytes / 2**20,
            "shm_mb": (transport.shm_free() or 0) / 2**20}


def in_namespace(size: str, args: list[str]) -> dict:
    mount = f"mount -t tmpfs -o size={size} tmpfs /dev/shm && exec {sys.executable} {Path(__file__).resolve()} " + " ".join(args)
    prefix = ["unshare", "--mount", "--propagation", "private"] if os.geteuid() == 0 else \
        ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]
    proc = subprocess.run([*prefix, "sh", "-c", mount], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"bench/shm.py: the child with /dev/shm={size} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", type=int, default=8, help="timed batches per child (after a first one)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(Path(args.child), args.batches, args.workers)))
        return 0
    if shutil.which("unshare") is None:
        raise SystemExit("bench/shm.py needs unshare (util-linux) to give each child its own /dev/shm")
    data = dataset()
    child_args = ["--child", str(data), "--batches", str(args.batches), "--workers", str(args.workers)]
    totals = {k: {"batches": 0, "seconds": 0.0} for k in SIZES}
    modes = {}
    for r in range(args.rounds):
        for key in (SIZES if r % 2 == 0 else reversed(list(SIZES))):
            res = in_namespace(SIZES[key], child_args)
            totals[key]["batches"] += res["batches"]
            totals[key]["seconds"] += res["seconds"]
            modes[key] = res["mode"]
            print(f"round {r + 1} /dev/shm {SIZES[key]:>4}: {res['batches'] / res['seconds']:.2f} batches/s by "
                  f"{res['mode']} (batch {res['batch_mb']:.0f} MB, {res['shm_mb']:.0f} MB free)", flush=True)
    rate = {k: v["batches"] / v["seconds"] for k, v in totals.items()}
    print(f"shm64_over_large={rate['64mb'] / rate['large']:.3f} batches_per_s_64mb={rate['64mb']:.2f} "
          f"batches_per_s_large={rate['large']:.2f} transport_64mb={modes['64mb']} transport_large={modes['large']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
