"""Benchmark: training batches from local disk vs from S3 through our data layer vs the seed's pattern.

One run, side by side on this machine:

- a synthetic t15 dataset of realistic shape (several sessions, T 200-1500 bins, 512
  float32 features, a few hundred MB), written once under ``bench/.cache/`` and reused;
- a local S3 endpoint: moto in server mode (``bench/s3server.py``, ranged GETs served
  without moto's whole-object copy) behind ``bench/s3proxy.py`` (20 ms first-byte latency,
  80 MB/s per connection), each in its own process;
- (1) local disk through ``trainer.data``, (2) S3 through ``trainer.data``, (3) the seed's
  pattern: every batch reopens each session file through s3fs + h5py (s3fs defaults);
- steady-state batches/s (batch 64 from 4 sessions, several DataLoader workers) over the
  same batch numbers for (1) and (2), after (2) has every object cached; time to first
  batch; ranged GETs and bytes served by the endpoint; the endpoint's own per-request cost.

Last line: ``s3_over_local=… bytes_over_dataset=… seed_over_local=… first_batch_s3_over_local=…``
(goal: s3_over_local >= 0.97 and bytes_over_dataset <= 1.05).

    python bench/stream.py                 # defaults: ~5 min on 2 cores
    python bench/stream.py --windows 4 --seed-batches 2   # quicker
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.s3proxy import remote_call  # noqa: E402
from trainer.config import TrainConfig, load_config  # noqa: E402
from trainer.data import check_data, make_loaders  # noqa: E402
from trainer.data.dataset import TRAIN, Catalog  # noqa: E402
from trainer.data.loaders import build_spec  # noqa: E402
from trainer.data.sampling import TrainRule  # noqa: E402
from trainer.data.storage import ObjectCache  # noqa: E402
from trainer.synthetic import SyntheticSpec, generate  # noqa: E402

log = logging.getLogger("bench.stream")
BUCKET = "b2t-bench"
PREFIX = "t15/hdf5_data_final"
MB = 1 << 20


# ---------------------------------------------------------------------------------------
# The dataset and the endpoint


def dataset(cache: Path, sessions: int, train_trials: int, val_trials: int) -> Path:
    spec = SyntheticSpec(n_sessions=sessions, train_trials=train_trials, val_trials=val_trials, min_words=5,
                         max_words=30, bins_per_phoneme=(6, 11), lead_bins=(60, 100), seed=11)
    root = cache / f"data-{sessions}x{train_trials}+{val_trials}"
    done = root / ".complete"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        t = time.perf_counter()
        log.info("writing the synthetic dataset to %s (once)", root)
        generate(root, spec)
        done.write_text(json.dumps(asdict(spec)))
        log.info("written in %.0f s", time.perf_counter() - t)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Endpoint:
    """moto (patched ranges) and the proxy, each in a subprocess of its own."""

    def __init__(self, latency_ms: float, rate_mb: float):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        port = _free_port()
        self.moto = subprocess.Popen([sys.executable, str(ROOT / "bench/s3server.py"), "--port", str(port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        self.moto_url = self.moto.stdout.readline().strip()
        self.proxy = subprocess.Popen([sys.executable, str(ROOT / "bench/s3proxy.py"), "--upstream", self.moto_url,
                                       "--latency-ms", str(latency_ms), "--rate-mb", str(rate_mb)],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        self.url = self.proxy.stdout.readline().strip()
        if not self.moto_url or not self.url:
            self.stop()
            raise RuntimeError("the moto server or the proxy did not start")

    def stats(self) -> dict:
        return remote_call(self.url, "stats")["stats"]

    def reset(self) -> None:
        remote_call(self.url, "reset", "POST")

    def stop(self) -> None:
        for p in (self.proxy, self.moto):
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


def s3_client(url: str):
    import boto3

    return boto3.client("s3", endpoint_url=url, region_name="us-east-1")


def upload(endpoint: Endpoint, root: Path) -> str:
    from boto3.s3.transfer import TransferConfig

    client = s3_client(endpoint.moto_url)
    client.create_bucket(Bucket=BUCKET)
    config = TransferConfig(multipart_threshold=8 * MB, multipart_chunksize=8 * MB)  # as `aws s3 sync` does
    for path in sorted(root.rglob("*.hdf5")):
        client.upload_file(str(path), BUCKET, f"{PREFIX}/{path.relative_to(root).as_posix()}", Config=config)
    return f"s3://{BUCKET}/{PREFIX}"


def request_cost_ms(url: str, key: str, size: int, n: int = 40) -> float:
    """Median time of a 1 KiB ranged GET at a random offset of a large object."""
    client = s3_client(url)
    rng = random.Random(0)
    times = []
    for _ in range(n):
        a = rng.randrange(0, size - 1024)
        t = time.perf_counter()
        client.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={a}-{a + 1023}")["Body"].read()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


# ---------------------------------------------------------------------------------------
# Runs


@dataclass
class Run:
    name: str
    first_batch_s: float
    arrivals: list  # seconds from make_loaders() to each batch
    range_gets: int = 0
    body_bytes: int = 0


def bench_cfg(url: str, cache_dir: Path, *, endpoint: Optional[str], workers: int, sessions: list[str]) -> TrainConfig:
    items = [f"dataset.dataset_dir={url}", "dataset.batch_size=64", "dataset.days_per_batch=4",
             f"dataset.num_dataloader_workers={workers}", "num_training_batches=1000000",
             f"dataset.sessions={sessions}", f"dataset.dataset_probability_val={[1] * len(sessions)}",
             f"dataset.storage.disk_cache_dir={cache_dir}"]
    if endpoint:
        items.append(f"dataset.storage.endpoint_url={endpoint}")
    return load_config(None, items)


class Stream:
    """A train loader being consumed: first-batch time, then batches on demand."""

    def __init__(self, name: str, cfg: TrainConfig):
        spec = build_spec(cfg)
        self.name, self._cache, self._objects = name, ObjectCache(spec.storage), list(spec.files.values())
        t0 = time.perf_counter()
        self._it = iter(make_loaders(cfg)[0])
        next(self._it)
        self.first_batch_s = time.perf_counter() - t0
        self.position = 1

    def all_cached(self) -> bool:
        return all(self._cache.cached_path(o) for o in self._objects)

    def take(self, n: int) -> list[float]:
        """Arrival times of the next n batches."""
        times = []
        for _ in range(n):
            next(self._it)
            times.append(time.perf_counter())
        self.position += n
        return times

    def close(self) -> None:
        del self._it  # shuts the workers down


def race(streams: list[Stream], seconds: float, settle: float = 3.0) -> dict[str, int]:
    """Consume every stream at once, each from its own thread, for ``seconds``; count the
    batches each delivered after ``settle`` (queued batches arrive first and are not counted).
    Whatever else loads the machine loads all streams alike, so the counts' ratio is the
    ratio of their throughputs even on a noisy host."""
    stop = threading.Event()
    arrivals: dict[str, list[float]] = {s.name: [] for s in streams}

    def consume(stream: Stream) -> None:
        while not stop.is_set():
            arrivals[stream.name].extend(stream.take(1))

    threads = [threading.Thread(target=consume, args=(s,)) for s in streams]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return {name: sum(1 for a in times if t0 + settle <= a <= t0 + seconds) for name, times in arrivals.items()}


class SeedPattern(torch.utils.data.Dataset):
    """The seed's S3 dataset: each batch opens every session file it needs through s3fs
    (default block size and read-ahead) and reads the trials with h5py over it."""

    def __init__(self, url: str, endpoint: str, sessions: list[str], keys: dict[int, list[str]], rule: TrainRule):
        self.url, self.endpoint, self.sessions, self.keys, self.rule = url, endpoint, sessions, keys, rule
        self._fs = None

    def __len__(self) -> int:
        return 1_000_000

    def __getitem__(self, i: int) -> dict:
        import h5py
        import s3fs

        if self._fs is None:
            self._fs = s3fs.S3FileSystem(endpoint_url=self.endpoint)
        plan = self.rule.plan(i, lambda d: range(len(self.keys[d])))
        feats, labels, texts = [], [], []
        for day, positions in plan:
            path = f"{self.url}/{self.sessions[day]}/data_train.hdf5"
            with self._fs.open(path, "rb") as raw, h5py.File(raw, "r") as f:
                for p in positions:
                    g = f[self.keys[day][p]]
                    feats.append(torch.from_numpy(g["input_features"][:]))
                    labels.append(torch.from_numpy(g["seq_class_ids"][:]))
                    texts.append(torch.from_numpy(g["transcription"][:]))
                    _ = [g.attrs[a] for a in ("n_time_steps", "seq_len", "block_num", "trial_num")]
        return {"input_features": torch.nn.utils.rnn.pad_sequence(feats, batch_first=True),
                "seq_class_ids": torch.stack(labels), "transcriptions": torch.stack(texts)}


def _no_gc(_worker: int) -> None:
    # h5py over an s3fs file can deadlock when the collector runs on s3fs's I/O thread
    # (h5py issue #2019); the seed's pattern is measured with the collector off.
    gc.disable()


def run_seed(url: str, endpoint: Endpoint, local_root: Path, sessions: list[str], workers: int, n: int) -> Run:
    cfg = bench_cfg(str(local_root), Path(tempfile.mkdtemp()), endpoint=None, workers=0, sessions=sessions)
    catalog = Catalog(build_spec(cfg))
    keys = {d: [t.key for t in catalog.index(d, TRAIN).trials] for d in range(len(sessions))}
    rule = TrainRule.create(cfg.dataset.seed, len(sessions), 4, 64)
    ds = SeedPattern(url, endpoint.url, sessions, keys, rule)
    endpoint.reset()
    gc.disable()
    t0 = time.perf_counter()
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers, worker_init_fn=_no_gc)
    run = Run("seed pattern", 0.0, [])
    for _, _batch in zip(range(n), loader):
        run.arrivals.append(time.perf_counter() - t0)
        log.info("seed pattern: batch %d after %.1f s", len(run.arrivals), run.arrivals[-1])
    gc.enable()
    run.first_batch_s = run.arrivals[0]
    s = endpoint.stats()
    run.range_gets, run.body_bytes = s["range_gets"], s["body_bytes"]
    return run


# ---------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--cache", type=Path, default=ROOT / "bench/.cache")
    p.add_argument("--sessions", type=int, default=6)
    p.add_argument("--train-trials", type=int, default=60)
    p.add_argument("--val-trials", type=int, default=15)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--windows", type=int, default=6, help="steady-state windows per loader (median counts)")
    p.add_argument("--window", type=int, default=24, help="batches per window")
    p.add_argument("--races", type=int, default=4, help="side-by-side races (their total gives s3_over_local)")
    p.add_argument("--race-s", type=float, default=30.0, help="seconds per race")
    p.add_argument("--seed-batches", type=int, default=4, help="batches of the (slow) seed pattern; 0 skips it")
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--rate-mb", type=float, default=80.0)
    p.add_argument("--fault-rate", type=float, default=0.0,
                   help="fraction of requests the proxy fails (503, reset, truncated body) while our S3 loader fetches")
    args = p.parse_args(argv)
    # Only local endpoints are ever contacted: dummy credentials, no profile, no instance metadata.
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(key, None)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message="This DataLoader will create")  # more workers than cores: on purpose
    logging.getLogger("trainer.data.storage").setLevel(logging.WARNING)

    root = dataset(args.cache, args.sessions, args.train_trials, args.val_trials)
    sessions = sorted(p.name for p in root.iterdir() if p.is_dir())
    summary = check_data(bench_cfg(str(root), args.cache / "unused", endpoint=None, workers=0, sessions=sessions))
    dataset_bytes = summary.total_bytes
    t_min = min(s.min_time_steps for s in summary.sessions)
    t_max = max(s.max_time_steps for s in summary.sessions)
    log.info("dataset: %d sessions, %d+%d trials, T %d-%d, %.0f MB", len(sessions), summary.n_train, summary.n_val,
             t_min, t_max, dataset_bytes / MB)

    endpoint = Endpoint(args.latency_ms, args.rate_mb)
    runs_dir = Path(tempfile.mkdtemp(prefix="b2t-bench-"))
    try:
        url = upload(endpoint, root)
        big = max(root.rglob("data_train.hdf5"), key=lambda q: q.stat().st_size)
        big_key = f"{PREFIX}/{big.relative_to(root).as_posix()}"
        cost_moto = request_cost_ms(endpoint.moto_url, big_key, big.stat().st_size)
        cost_proxy = request_cost_ms(endpoint.url, big_key, big.stat().st_size)
        log.info("endpoint: 1 KiB ranged GET of a %.0f MB object: %.1f ms at moto, %.1f ms through the proxy",
                 big.stat().st_size / MB, cost_moto, cost_proxy)

        # (2) S3 until every object is cached, then (1) local up to the same batch
        endpoint.reset()
        remote_call(endpoint.url, f"config?fault_rate={args.fault_rate}", "POST")
        s3 = Stream("S3", bench_cfg(url, runs_dir / "s3", endpoint=endpoint.url, workers=args.workers,
                                    sessions=sessions))
        while not s3.all_cached():
            s3.take(1)
        s3.take(2 * args.workers + 2)  # what workers had started before the last fetch finished
        warm = s3.position
        stats = endpoint.stats()
        remote_call(endpoint.url, "config?fault_rate=0", "POST")
        s3_gets, s3_bytes = stats["range_gets"], stats["body_bytes"]
        if args.fault_rate:
            log.info("faults injected while fetching: %s", stats["faults"])
        local = Stream("local", bench_cfg(str(root), runs_dir / "local", endpoint=None, workers=args.workers,
                                          sessions=sessions))
        local.take(warm - local.position)
        log.info("first batch: local %.2f s, S3 %.2f s; every object cached by batch %d (%d ranged GETs, %.0f MB)",
                 local.first_batch_s, s3.first_batch_s, warm, s3_gets, s3_bytes / MB)

        # Steady state in alternating windows over the same batch numbers, so that the load of
        # whatever else runs on this machine hits both alike. A window's first batches were
        # made while the loader waited (its prefetch queue): only the rest are timed.
        queued = 2 * args.workers
        pairs = []
        for w in range(args.windows):
            rates = {}
            for stream in ((local, s3) if w % 2 == 0 else (s3, local)):
                times = stream.take(args.window)
                rates[stream.name] = (args.window - queued) / (times[-1] - times[queued - 1])
            pairs.append(rates)
            log.info("window %d: local %.2f, S3 %.2f batches/s", w + 1, rates["local"], rates["S3"])
        races = []
        for r in range(args.races):
            counts = race([local, s3] if r % 2 == 0 else [s3, local], args.race_s)
            races.append(counts)
            log.info("race %d (%.0f s, both at once): local %d, S3 %d batches", r + 1, args.race_s,
                     counts["local"], counts["S3"])
        local.close()
        s3.close()
        seed = run_seed(url, endpoint, root, sessions, args.workers, args.seed_batches) if args.seed_batches else None
    finally:
        endpoint.stop()
        shutil.rmtree(runs_dir, ignore_errors=True)

    local_rate = statistics.median(p["local"] for p in pairs)
    s3_rate = statistics.median(p["S3"] for p in pairs)
    s3_over_local = sum(c["S3"] for c in races) / sum(c["local"] for c in races)
    seed_rate = len(seed.arrivals) / seed.arrivals[-1] if seed else float("nan")
    local_first, s3_first = local.first_batch_s, s3.first_batch_s

    rows = [
        ("local disk, trainer.data", local_rate, local_first, 0, 0),
        ("S3, trainer.data", s3_rate, s3_first, s3_gets, s3_bytes),
    ]
    if seed:
        rows.append(("S3, seed pattern", seed_rate, seed.first_batch_s, seed.range_gets / len(seed.arrivals),
                     seed.body_bytes / len(seed.arrivals)))
    print()
    print(f"dataset: {len(sessions)} sessions, {summary.n_train} train + {summary.n_val} val trials, T {t_min}-{t_max}, "
          f"{dataset_bytes / MB:.0f} MB; batch 64 from 4 sessions, {args.workers} workers")
    print(f"endpoint: {args.latency_ms:.0f} ms first-byte latency, {args.rate_mb:.0f} MB/s per connection; "
          f"1 KiB ranged GET {cost_moto:.1f} ms at moto (patched ranges), {cost_proxy:.1f} ms through the proxy")
    per_window = ", ".join(f"{p['S3'] / p['local']:.2f}" for p in pairs)
    per_race = ", ".join(f"{c['S3']}/{c['local']}" for c in races)
    print(f"steady state from batch {warm}: batches/s = median of {args.windows} alternating windows of "
          f"{args.window} batches (S3/local per window: {per_window});")
    print(f"  s3_over_local = S3/local batches delivered in {args.races} races of {args.race_s:.0f} s with both "
          f"loaders running at once ({per_race})")
    print(f"{'':28} {'batches/s':>10} {'1st batch s':>12} {'GETs':>10} {'MB from S3':>12}")
    for name, rate, first, gets, nbytes in rows:
        print(f"{name:28} {rate:>10.3f} {first:>12.2f} {gets:>10.0f} {nbytes / MB:>12.1f}")
    print("(seed pattern: GETs and MB per batch; ours: per run, which fetches every object)")
    result = {
        "s3_over_local": s3_over_local,
        "bytes_over_dataset": s3_bytes / dataset_bytes,
        "seed_over_local": seed_rate / local_rate,
        "first_batch_s3_over_local": s3_first / local_first,
    }
    (args.cache / "stream-result.json").write_text(
        json.dumps({**result, "rows": rows, "windows": pairs, "races": races}, indent=1))
    print(" ".join(f"{k}={v:#.3g}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
