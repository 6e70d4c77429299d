"""Benchmark: what a user waits for, training batches from S3 through our data layer vs local disk.

One run, on this machine, for each dataset size (default: 6 sessions of 60+15 trials,
668 MB, and 45 sessions of 10+3 trials, 899 MB, the real release's session count):

- a synthetic t15 dataset of realistic shape (T 200-1500 bins, 512 float32 features),
  written once under ``bench/.cache/`` and reused;
- a local S3 endpoint: moto in server mode (``bench/s3server.py``, ranged GETs served
  without moto's whole-object copy) behind ``bench/s3proxy.py`` (20 ms first-byte latency,
  80 MB/s per connection), each in its own process;
- the files uploaded as ``python -m launcher upload`` sends them: each with its trial-index
  sidecar (``--no-sidecars``: without, as ``aws s3 sync`` leaves them; the first batch then
  waits for whole files);
- rounds alternating local disk and a cold S3 start (empty cache), in alternating order, so
  that the load of whatever else runs here hits both alike: each is ``make_loaders`` from
  scratch (listing included; for local disk, its files indexed from scratch too), batch 0,
  the validation pass the trainer runs after batch 0, then training batches up to 150
  (batch 64 from 4 sessions, 4 DataLoader workers, no model step); then a restart: S3 again
  on the cache the last cold round left (a resumed or restarted run on the same machine or
  volume), against local disk again on its cached indexes.

The endpoint (moto and the proxy, Python processes) runs on the same cores as the loader,
which a real S3 endpoint does not: the CPU seconds it took per cold S3 run are printed
beside the figures, as what the S3 runs paid here that they would not pay against S3.

Per size: ``cold_s3_over_local`` = local time / S3 time for the whole run (summed over
rounds), ``first_batch_s3_over_local``, ``bytes_over_dataset`` (bytes the endpoint sent in a
cold run / dataset size), ``restart_s3_over_local`` and ``restart_bytes_over_dataset``.
Last line: the worst of each over the sizes (goals: cold_s3_over_local >= 0.97,
first_batch_s3_over_local <= 1.5, bytes_over_dataset <= 1.01, restart_bytes_over_dataset <= 0.01).

    python bench/stream.py                      # defaults: ~15 min on 2 busy cores
    python bench/stream.py --sizes 6x60+15 --rounds 1   # quicker
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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

    def __init__(self, latency_ms: float, rate_mb: float, nice: int = 0):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        port = _free_port()
        lower = (lambda: os.nice(nice)) if nice else None
        self.moto = subprocess.Popen([sys.executable, str(ROOT / "bench/s3server.py"), "--port", str(port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                                     preexec_fn=lower)
        self.moto_url = self.moto.stdout.readline().strip()
        self.proxy = subprocess.Popen([sys.executable, str(ROOT / "bench/s3proxy.py"), "--upstream", self.moto_url,
                                       "--latency-ms", str(latency_ms), "--rate-mb", str(rate_mb)],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                                      preexec_fn=lower)
        self.url = self.proxy.stdout.readline().strip()
        if not self.moto_url or not self.url:
            self.stop()
            raise RuntimeError("the moto server or the proxy did not start")

    def stats(self) -> dict:
        return remote_call(self.url, "stats")["stats"]

    def cpu_s(self) -> float:
        """CPU seconds the endpoint's processes (moto, the proxy) have used so far: on this
        machine they share the cores with the loader, as a real S3 endpoint does not."""
        total = 0.0
        for p in (self.moto, self.proxy):
            with open(f"/proc/{p.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

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


def upload(endpoint: Endpoint, root: Path, prefix: str = PREFIX, sidecars: bool = True) -> str:
    """Each file as `aws s3 sync` sends it (8 MB multipart); with ``sidecars``, its trial index
    beside it, as ``python -m launcher upload`` writes it (trainer/data/sidecar.py)."""
    from boto3.s3.transfer import TransferConfig

    from trainer.data.index import build_index
    from trainer.data.sidecar import SUFFIX, put_sidecar

    client = s3_client(endpoint.moto_url)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    config = TransferConfig(multipart_threshold=8 * MB, multipart_chunksize=8 * MB)
    for path in sorted(root.rglob("*.hdf5")):
        key = f"{prefix}/{path.relative_to(root).as_posix()}"
        client.upload_file(str(path), BUCKET, key, Config=config)
        if sidecars:
            put_sidecar(client, BUCKET, key, build_index(str(path), str(path)))
        else:
            client.delete_object(Bucket=BUCKET, Key=key + SUFFIX)
    return f"s3://{BUCKET}/{prefix}"


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


@dataclass
class Timed:
    first_s: float  # make_loaders() to batch 0
    val_s: float  # the validation pass after batch 0
    total_s: float  # make_loaders() to the last batch
    body_bytes: int = 0  # sent by the endpoint (S3 runs)
    endpoint_cpu_s: float = 0.0  # CPU the endpoint used meanwhile (S3 runs)


def timed_run(cfg: TrainConfig, batches: int, endpoint: Optional[Endpoint]) -> Timed:
    """What a user waits for: loaders from scratch, batch 0, validation, then up to ``batches``."""
    if endpoint:
        endpoint.reset()
        cpu0 = endpoint.cpu_s()
    t0 = time.perf_counter()
    train, val = make_loaders(cfg)
    it = iter(train)
    next(it)
    first = time.perf_counter()
    if val is not None:
        for _ in val:
            pass
    after_val = time.perf_counter()
    for _ in range(batches - 1):
        next(it)
    total = time.perf_counter() - t0
    del it, train, val  # shuts the workers down
    if endpoint is None:
        return Timed(first - t0, after_val - first, total)
    return Timed(first - t0, after_val - first, total, endpoint.stats()["body_bytes"], endpoint.cpu_s() - cpu0)


def cpu_busy() -> tuple[int, int]:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)


def bench_size(size: str, args, endpoint: Endpoint, runs_dir: Path) -> dict:
    n, rest = size.split("x")
    train_trials, val_trials = (int(x) for x in rest.split("+"))
    root = dataset(args.cache, int(n), train_trials, val_trials)
    sessions = sorted(p.name for p in root.iterdir() if p.is_dir())
    summary = check_data(bench_cfg(str(root), args.cache / "unused", endpoint=None, workers=0, sessions=sessions))
    dataset_bytes = summary.total_bytes
    url = upload(endpoint, root, f"{PREFIX}/{size}", sidecars=args.sidecars)
    log.info("%s: %d sessions, %d+%d trials, %.0f MB", size, len(sessions), summary.n_train, summary.n_val,
             dataset_bytes / MB)

    def local(cache_dir: Path) -> Timed:  # the cache holds the local files' trial indexes
        return timed_run(bench_cfg(str(root), cache_dir, endpoint=None, workers=args.workers,
                                   sessions=sessions), args.batches, None)

    def s3(cache_dir: Path) -> Timed:
        return timed_run(bench_cfg(url, cache_dir, endpoint=endpoint.url, workers=args.workers, sessions=sessions),
                         args.batches, endpoint)

    cold: dict[str, list[Timed]] = {"local": [], "s3": []}
    for r in range(args.rounds):
        for kind in (("local", "s3") if r % 2 == 0 else ("s3", "local")):
            t = local(runs_dir / f"{size}-local-{r}") if kind == "local" else s3(runs_dir / f"{size}-{r}")
            cold[kind].append(t)
            log.info("%s round %d %s: first batch %.2f s, validation %.2f s, %d batches %.2f s, %.0f MB from S3, "
                     "endpoint CPU %.1f s", size, r + 1, kind, t.first_s, t.val_s, args.batches, t.total_s,
                     t.body_bytes / MB, t.endpoint_cpu_s)
    warm: dict[str, list[Timed]] = {"local": [], "s3": []}
    for kind in ("s3", "local"):
        t = local(runs_dir / f"{size}-local-{args.rounds - 1}") if kind == "local" else \
            s3(runs_dir / f"{size}-{args.rounds - 1}")
        warm[kind].append(t)
        log.info("%s restart %s: first batch %.2f s, %d batches %.2f s, %.2f MB from S3", size, kind, t.first_s,
                 args.batches, t.total_s, t.body_bytes / MB)

    def total(runs: list[Timed], attr: str) -> float:
        return sum(getattr(t, attr) for t in runs)

    return {
        "sessions": len(sessions),
        "dataset_mb": dataset_bytes / MB,
        "local_s": [t.total_s for t in cold["local"]],
        "s3_s": [t.total_s for t in cold["s3"]],
        "local_first_s": [t.first_s for t in cold["local"]],
        "s3_first_s": [t.first_s for t in cold["s3"]],
        "cold_s3_over_local": total(cold["local"], "total_s") / total(cold["s3"], "total_s"),
        "first_batch_s3_over_local": total(cold["s3"], "first_s") / total(cold["local"], "first_s"),
        "bytes_over_dataset": max(t.body_bytes for t in cold["s3"]) / dataset_bytes,
        "restart_s3_over_local": total(warm["local"], "total_s") / total(warm["s3"], "total_s"),
        "restart_bytes_over_dataset": warm["s3"][0].body_bytes / dataset_bytes,
        "endpoint_cpu_s": [t.endpoint_cpu_s for t in cold["s3"]],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--cache", type=Path, default=ROOT / "bench/.cache")
    p.add_argument("--sizes", default="6x60+15,45x10+3", help="datasets: SESSIONSxTRAIN+VAL trials, comma-separated")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--batches", type=int, default=150)
    p.add_argument("--rounds", type=int, default=2, help="cold rounds per size, each local + S3 in alternating order")
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--rate-mb", type=float, default=80.0)
    p.add_argument("--endpoint-nice", type=int, default=0, metavar="N",
                   help="run moto and the proxy at this nice level (19: they take only the CPU the loader leaves, "
                        "closer to a remote endpoint, which takes none)")
    p.add_argument("--no-sidecars", dest="sidecars", action="store_false",
                   help="upload without trial-index sidecars (data synced by other means than `launcher upload`)")
    p.add_argument("--seed-batches", type=int, default=0,
                   help="also time this many batches of the seed's pattern (s3fs + h5py per batch) on the first size")
    args = p.parse_args(argv)
    # Only local endpoints are ever contacted: dummy credentials, no profile, no instance metadata.
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(key, None)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message="This DataLoader will create")  # more workers than cores: on purpose
    logging.getLogger("trainer.data.storage").setLevel(logging.WARNING)

    endpoint = Endpoint(args.latency_ms, args.rate_mb, args.endpoint_nice)
    runs_dir = Path(tempfile.mkdtemp(prefix="b2t-bench-"))
    load0, busy0 = os.getloadavg()[0], cpu_busy()
    results = []
    seed = None
    try:
        for size in args.sizes.split(","):
            results.append(bench_size(size, args, endpoint, runs_dir))
            if args.seed_batches and seed is None:
                n, rest = size.split("x")
                root = dataset(args.cache, int(n), *(int(x) for x in rest.split("+")))
                sessions = sorted(q.name for q in root.iterdir() if q.is_dir())
                seed = run_seed(f"s3://{BUCKET}/{PREFIX}/{size}", endpoint, root, sessions, args.workers,
                                args.seed_batches)
    finally:
        endpoint.stop()
        shutil.rmtree(runs_dir, ignore_errors=True)
    busy1 = cpu_busy()
    busy = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])

    print()
    print(f"endpoint: {args.latency_ms:.0f} ms first-byte latency, {args.rate_mb:.0f} MB/s per connection, "
          f"nice {args.endpoint_nice}; batch 64 from "
          f"4 sessions, {args.workers} workers, {args.batches} batches + the validation pass after batch 0; "
          f"machine: {os.cpu_count()} cores, load average {load0:.1f} at start / {os.getloadavg()[0]:.1f} at end, "
          f"{busy:.0%} busy")
    keys = ("cold_s3_over_local", "first_batch_s3_over_local", "bytes_over_dataset", "restart_s3_over_local",
            "restart_bytes_over_dataset")
    for r in results:
        runs = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(r["local_s"], r["s3_s"]))
        firsts = ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(r["local_first_s"], r["s3_first_s"]))
        cpu = ", ".join(f"{c:.1f}" for c in r["endpoint_cpu_s"])
        print(f"{r['sessions']} sessions, {r['dataset_mb']:.0f} MB: local/S3 s per cold run {runs}; first batch {firsts}; "
              f"CPU s the endpoint (moto + proxy, on these same cores) took per cold S3 run: {cpu}")
    if seed:
        print(f"seed pattern (reopen each file through s3fs + h5py every batch): "
              f"{len(seed.arrivals) / seed.arrivals[-1]:.3f} batches/s, {seed.body_bytes / len(seed.arrivals) / MB:.0f} MB "
              f"and {seed.range_gets / len(seed.arrivals):.0f} GETs per batch")
    for r in results:
        print(f"sessions={r['sessions']} " + " ".join(f"{k}={r[k]:#.3g}" for k in keys))
    worst = {k: (min if k.endswith("over_local") and not k.startswith("first") else max)(r[k] for r in results)
             for k in keys}
    (args.cache / "stream-result.json").write_text(json.dumps({"results": results, "worst": worst, "busy": busy},
                                                              indent=1))
    print(" ".join(f"{k}={v:#.3g}" for k, v in worst.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
