"""Local mode: the very same training job on this machine, without an AWS account.

It builds the request the cloud path would submit (against placeholder stack outputs),
serves the data through a local S3 endpoint (moto) so the trainer's S3 streaming path is
the one that runs, lays the request out as the ``/opt/ml`` tree a SageMaker container sees
under ``runs/<job>/``, and runs it in one of two ways:

- **docker** (when a Docker daemon answers and the image exists, or ``--docker``): the training
  image as SageMaker runs it, like the SageMaker SDK's local mode: ``docker run IMAGE train``
  with the tree mounted at ``/opt/ml``, only the environment a job gets (the request's
  ``Environment``, ``TRAINING_JOB_NAME``, ``TRAINING_JOB_ARN``, credentials for the local S3
  endpoint), Docker's default ``/dev/shm``, host networking to reach the local endpoint, the
  checkpoints copied in before the start and out after, Ctrl-C as ``docker stop --time 120``;
- **process** (no Docker, or ``--process``): ``python -m trainer train`` on this machine with
  the container's environment on top of this one's.

The exit status and ``output/failure`` become the job's status and FailureReason.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, TextIO

from . import jobs, launch, s3sync
from .errors import MissingSessions, UsageError
from .request import CHECKPOINT_LOCAL_PATH, LOCAL_IMAGE_TAG
from .stack import StackOutputs, placeholder_outputs

log = logging.getLogger(__name__)

LOCAL_REGION = "us-east-1"
SYNTHETIC_VERSION = 2  # bump when trainer.synthetic's output changes, to regenerate the cache
_READY = ".complete"
STOP_GRACE_S = 120  # what SageMaker gives a container between SIGTERM and SIGKILL
STOPPED_EXIT = 128 + signal.SIGTERM  # the trainer's exit status after a SIGTERM stop (checkpoint saved)
LOCAL_IMAGE = "b2t-training:local"  # `docker build -t b2t-training:local .`
OPT_ML = "/opt/ml"
AUTO, DOCKER, PROCESS = "auto", "docker", "process"


@dataclass
class LocalResult:
    job_dir: Path
    returncode: int
    metrics: dict[str, float] = field(default_factory=dict)
    stopped_by: Optional[int] = None  # the first SIGTERM/SIGINT the launcher received while it ran


# ---------------------------------------------------------------------------------------
# Data


def synthetic_data(runs_dir: Path, config: Any, out: Optional[TextIO] = None) -> Path:
    """The synthetic sessions for ``config``, generated once under ``runs/.data/``."""
    out = out or sys.stdout
    from trainer.config import DIPHONE_CLASSES
    from trainer.synthetic import SyntheticSpec, generate, session_names

    wanted = list(config.dataset.sessions)
    defaults = SyntheticSpec()
    n = max(defaults.n_sessions, len(wanted))
    spec = SyntheticSpec(
        n_sessions=n,
        n_features=config.dataset.neural_dim,
        diphones=config.dataset.n_classes == DIPHONE_CLASSES,
    )
    available = session_names(spec.n_sessions, spec.first_session)
    missing = [s for s in wanted if s not in available]
    if missing:
        raise MissingSessions(
            "the synthetic data set", missing, "pass --data DIR with session folders that hold them"
        )
    tag = f"synthetic-v{SYNTHETIC_VERSION}-{n}s-{spec.n_features}f-{'di' if spec.diphones else 'ph'}"
    root = runs_dir / ".data" / tag
    if not (root / _READY).exists():
        print(f"generating synthetic sessions once into {root} ...", file=out, flush=True)
        shutil.rmtree(root, ignore_errors=True)
        generate(root, spec)
        (root / _READY).write_text("")
    return root


# ---------------------------------------------------------------------------------------
# Local S3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalS3:
    """A moto S3 endpoint on 127.0.0.1 for the duration of a local run."""

    def __init__(self) -> None:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as e:
            raise UsageError(
                "local mode needs moto's server: pip install -e '.[local]'"
            ) from e
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # its per-request log lines
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    def __enter__(self) -> "LocalS3":
        self._server.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.stop()


def local_env(endpoint: str) -> dict[str, str]:
    """Dummy credentials and the endpoint: nothing in local mode can reach real AWS."""
    return {
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": LOCAL_REGION,
        "AWS_REGION": LOCAL_REGION,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


# ---------------------------------------------------------------------------------------
# The /opt/ml tree


def layout(job_dir: Path, request: dict[str, Any], *, in_container: bool = False) -> dict[str, Path]:
    """Write the files SageMaker puts in a container for ``request`` under ``job_dir``
    (``in_container``: for ``job_dir`` mounted at /opt/ml, else as seen from this machine)."""
    paths = {
        "config": job_dir / "input" / "config",
        "model": job_dir / "model",
        "output": job_dir / "output",
        "output_data": job_dir / "output" / "data",
        "checkpoints": job_dir / "checkpoints",
        "tensorboard": job_dir / "output" / "tensorboard",
    }
    for p in paths.values():
        p.mkdir(parents=True, exist_ok=True)
    rc = request["ResourceConfig"]
    hosts = ["algo-1"]  # one process here, whatever InstanceCount says
    files: dict[str, Any] = {
        "hyperparameters.json": request["HyperParameters"],
        "resourceconfig.json": {
            "current_host": hosts[0],
            "current_instance_type": rc["InstanceType"],
            "current_group_name": "homogeneousCluster",
            "hosts": hosts,
            "instance_groups": [
                {"instance_group_name": "homogeneousCluster", "instance_type": rc["InstanceType"], "hosts": hosts}
            ],
            "network_interface_name": "eth0",
        },
        "inputdataconfig.json": {
            c["ChannelName"]: {
                "ContentType": c.get("ContentType", ""),
                "TrainingInputMode": c.get("InputMode", "File"),
                "S3DistributionType": c["DataSource"]["S3DataSource"]["S3DataDistributionType"],
                "RecordWrapperType": "None",
            }
            for c in request["InputDataConfig"]
        },
    }
    if "CheckpointConfig" in request:
        # The container sees /opt/ml/checkpoints; a process here sees <job>/checkpoints.
        files["checkpointconfig.json"] = {
            "LocalPath": CHECKPOINT_LOCAL_PATH if in_container else str(paths["checkpoints"].resolve()),
            "S3Uri": request["CheckpointConfig"]["S3Uri"],
        }
    if "TensorBoardOutputConfig" in request:  # the container's LocalPath is <job>/output/tensorboard here
        files["tensorboardoutputconfig.json"] = {
            "LocalPath": request["TensorBoardOutputConfig"]["LocalPath"] if in_container
            else str(paths["tensorboard"].resolve()),
            "S3OutputPath": request["TensorBoardOutputConfig"]["S3OutputPath"],
        }
    for name, body in files.items():
        (paths["config"] / name).write_text(json.dumps(body, indent=2) + "\n")
    (job_dir / "request.json").write_text(json.dumps(request, indent=2) + "\n")
    return paths


def fetch_channels(s3, job_dir: Path, request: dict[str, Any]) -> None:
    """File mode: copy every input channel to ``input/data/<channel>/`` as SageMaker does."""
    for channel in request["InputDataConfig"]:
        uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
        bucket, prefix = s3sync.split_s3_url(uri)
        s3sync.download_prefix(s3, bucket, prefix, job_dir / "input" / "data" / channel["ChannelName"], progress=False)


# ---------------------------------------------------------------------------------------
# Running


@contextlib.contextmanager
def forward_signals(proc: subprocess.Popen, *, stop: Optional[list[str]] = None,
                    kill: Optional[list[str]] = None) -> Iterator[list[int]]:
    """While ``proc`` runs, SIGTERM/SIGINT sent to the launcher stop it as SageMaker's stop does:
    the first becomes one SIGTERM to ``proc`` (it saves a checkpoint and exits; SIGKILL after
    ``STOP_GRACE_S``), a second one kills it. Yields the signals received, first first.
    For a container, ``stop`` / ``kill`` are the commands that do this instead
    (``docker stop --time 120 NAME`` / ``docker kill NAME``).

    ``proc`` should run in its own session (``start_new_session=True``) so that a terminal's
    Ctrl-C reaches it only through here, once.
    """
    received: list[int] = []
    timers: list[threading.Timer] = []

    def handle(signum, _frame) -> None:
        received.append(signum)
        if len(received) > 1:
            if kill:
                subprocess.Popen(kill, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            proc.kill()
            return
        # os.write: printing from a signal handler could re-enter the stream the main loop writes to
        os.write(2, f"\nstopping the trainer (SIGTERM, up to {STOP_GRACE_S} s to save a checkpoint; "
                    "again to kill it at once) ...\n".encode())
        if stop:  # it waits up to STOP_GRACE_S itself, then kills
            subprocess.Popen(stop, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return
        proc.send_signal(signal.SIGTERM)
        timer = threading.Timer(STOP_GRACE_S, proc.kill)
        timer.daemon = True
        timer.start()
        timers.append(timer)

    try:
        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread: signals cannot be caught here
        previous = {}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for timer in timers:
            timer.cancel()


def _stream(cmd: list[str], job_dir: Path, out: TextIO, *, env: Optional[dict[str, str]] = None,
            stop: Optional[list[str]] = None, kill: Optional[list[str]] = None) -> LocalResult:
    """Run ``cmd``, its output streamed to ``out`` and kept in ``train.log``, the metrics the
    request's MetricDefinitions match collected; signals to the launcher stop it as SageMaker
    would (:func:`forward_signals`)."""
    from .request import metric_definitions

    patterns = [(d["Name"], re.compile(d["Regex"])) for d in metric_definitions()]
    result = LocalResult(job_dir=job_dir, returncode=-1)
    with open(job_dir / "train.log", "w") as logfile:
        proc = subprocess.Popen(cmd, cwd=job_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, start_new_session=True)  # signals: forward_signals only
        with forward_signals(proc, stop=stop, kill=kill) as received:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                out.flush()
                logfile.write(line)
                for name, rx in patterns:
                    m = rx.search(line)
                    if m:
                        result.metrics[name] = float(m.group(1))
            result.returncode = proc.wait()
        result.stopped_by = received[0] if received else None
    return result


def run_trainer(job_dir: Path, env: dict[str, str], out: Optional[TextIO] = None) -> LocalResult:
    """Process mode: ``python -m trainer train`` in the laid-out tree (``B2T_OPT_ML`` in ``env``)."""
    project_root = Path(__file__).resolve().parents[1]
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(project_root), env.get("PYTHONPATH", "")]))}
    return _stream([sys.executable, "-m", "trainer", "train"], job_dir, out or sys.stdout, env=env)


# ---------------------------------------------------------------------------------------
# Docker mode


def docker_answers(timeout_s: float = 20) -> Optional[str]:
    """None when a Docker daemon answers, else why not (one line)."""
    try:
        proc = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True,
                              text=True, timeout=timeout_s)
    except FileNotFoundError:
        return "no docker command"
    except subprocess.TimeoutExpired:
        return f"the Docker daemon did not answer within {timeout_s:.0f} s"
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return f"no Docker daemon answers ({lines[-1] if lines else f'exit {proc.returncode}'})"
    return None


def image_exists(image: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0


def pick_runtime(requested: str, image: str) -> tuple[str, str]:
    """``(docker|process, why)``: ``--docker`` / ``--process`` decide; otherwise Docker when it
    answers and ``image`` exists."""
    if requested == PROCESS:
        return PROCESS, "--process"
    problem = docker_answers()
    if problem is None and not image_exists(image):
        problem = f"Docker answers but there is no image {image} (build it: docker build -t {image} .)"
    if requested == DOCKER:
        if problem:
            raise UsageError(f"--docker: {problem}")
        return DOCKER, "--docker"
    return (PROCESS, f"{problem}: running the trainer as a process instead") if problem else (DOCKER, "Docker answers")


def job_env(request: dict[str, Any], job_name: str, endpoint: str) -> dict[str, str]:
    """Only what a SageMaker job's container gets: the request's Environment, the job's name and
    ARN, and (in place of the execution role) credentials for the local S3 endpoint."""
    region = request.get("Environment", {}).get("AWS_REGION", LOCAL_REGION)
    return {
        **request.get("Environment", {}),
        "TRAINING_JOB_NAME": job_name,
        "TRAINING_JOB_ARN": f"arn:aws:sagemaker:{region}:000000000000:training-job/{job_name}",
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def docker_run_command(image: str, job_dir: Path, env: dict[str, str], *, name: str, checkpoints: Path,
                       args: tuple[str, ...] = ("train",), extra: tuple[str, ...] = ()) -> list[str]:
    """``docker run IMAGE train`` as SageMaker starts a job: the job's tree at /opt/ml (its
    checkpoints from ``checkpoints``), only ``env``, Docker's default /dev/shm, host networking."""
    job_dir = job_dir.resolve()
    cmd = ["docker", "run", "--rm", "--name", name, "--network", "host"]
    if os.getuid() != 0:  # files in the mounted tree stay the caller's
        cmd += ["--user", f"{os.getuid()}:{os.getgid()}"]
    for sub in ("input", "model", "output"):
        cmd += ["-v", f"{job_dir / sub}:{OPT_ML}/{sub}"]
    cmd += ["-v", f"{checkpoints.resolve()}:{CHECKPOINT_LOCAL_PATH}"]
    for key in sorted(env):
        cmd += ["-e", key]  # the value comes from docker's own environment, not the command line
    return [*cmd, *extra, image, *args]


def run_container(image: str, job_dir: Path, env: dict[str, str], out: Optional[TextIO] = None,
                  *, name: Optional[str] = None) -> LocalResult:
    """Docker mode: the checkpoints copied in, ``docker run IMAGE train``, the checkpoints copied out
    (also after a stop), Ctrl-C as ``docker stop --time 120``."""
    import tempfile

    name = name or job_dir.name
    kept = job_dir / "checkpoints"
    kept.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="b2t-ckpt-") as staged:
        staged_dir = Path(staged)
        shutil.copytree(kept, staged_dir, dirs_exist_ok=True)
        cmd = docker_run_command(image, job_dir, env, name=name, checkpoints=staged_dir)
        try:
            return _stream(cmd, job_dir, out or sys.stdout, env={**os.environ, **env},
                           stop=["docker", "stop", "--time", str(STOP_GRACE_S), name], kill=["docker", "kill", name])
        finally:
            shutil.copytree(staged_dir, kept, dirs_exist_ok=True)


def run_local(
    opts: launch.StartOptions,
    loaded: launch.LoadedConfig,
    *,
    runs_dir: Path,
    data_dir: Optional[Path] = None,
    dry_run: bool = False,
    runtime: str = AUTO,
    image: str = LOCAL_IMAGE,
    out: Optional[TextIO] = None,
    ranks: int = 1,
) -> int:
    out = out or sys.stdout
    check_ranks(ranks, loaded.config)
    outputs: StackOutputs = placeholder_outputs(LOCAL_REGION)
    # No image runs here, so no ECR lookup: the request names a placeholder tag.
    plan = launch.plan(opts, loaded, outputs, image_tag=opts.image_tag or LOCAL_IMAGE_TAG)
    request = plan.request
    job_dir = Path(runs_dir) / plan.job_name
    print("\n".join(launch.summary_lines(plan, cost=False)), file=out)
    print(f"local:       {job_dir}/ as /opt/ml; data served from a local S3 endpoint; no cost", file=out)
    if ranks > 1:
        print(f"ranks:       {ranks} on the CPU (torchrun, gloo), each on its share of every global batch of "
              f"{loaded.config.dataset.batch_size}", file=out)
    if not dry_run:
        runtime, why = pick_runtime(runtime, image)
        print(f"runs in:     {f'the image {image} (docker)' if runtime == DOCKER else 'a process on this machine'}"
              f" - {why}", file=out, flush=True)
    if dry_run:
        print("\nCreateTrainingJob request (dry run: nothing run):", file=out)
        print(json.dumps(request, indent=2), file=out)
        return 0

    if data_dir is not None:
        if not Path(data_dir).is_dir():
            raise UsageError(f"--data {data_dir} is not a folder")
        source = Path(data_dir)
    else:
        source = synthetic_data(Path(runs_dir), loaded.config, out)

    with LocalS3() as s3server:
        paths = prepare_job(s3server.url, plan, source, job_dir, in_container=runtime == DOCKER, out=out)
        ranks_env: dict[str, str] = {}
        if ranks > 1:  # the container entry starts torchrun with this many ranks
            from trainer.torchrun import NPROC_ENV

            ranks_env[NPROC_ENV] = str(ranks)
        started = time.monotonic()
        if runtime == DOCKER:
            env = {**job_env(request, plan.job_name, s3server.url), **ranks_env}
            print(f"\n$ docker run --network host -v {job_dir}/...:/opt/ml/... {image} train", file=out, flush=True)
            result = run_container(image, job_dir, env, out)
        else:
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
            env.update(local_env(s3server.url))
            env.update(job_env(request, plan.job_name, s3server.url))
            env.update(ranks_env)
            env.update(B2T_OPT_ML=str(job_dir.resolve()))
            print(f"\n$ B2T_OPT_ML={job_dir} python -m trainer train", file=out, flush=True)
            result = run_trainer(job_dir, env, out)

    return report(plan.job_name, paths, result, time.monotonic() - started, out)


def check_ranks(ranks: int, config: Any) -> None:
    from trainer.config import ConfigError

    if ranks < 1:
        raise UsageError("--ranks must be at least 1")
    if ranks > config.dataset.batch_size:
        raise ConfigError("dataset.batch_size", f"{config.dataset.batch_size} is less than --ranks {ranks}: "
                          "each rank needs at least one trial of every batch")


def prepare_job(endpoint: str, plan: launch.Plan, source: Path, job_dir: Path, *, in_container: bool,
                out: Optional[TextIO] = None) -> dict[str, Path]:
    """What SageMaker does before a job starts, against the local S3 endpoint at ``endpoint``:
    the data from ``source`` and the config uploaded where the request says, the ``/opt/ml``
    tree for the request laid out under ``job_dir``, and its input channels copied in."""
    from .aws import Aws

    request = plan.request
    aws = Aws(region=LOCAL_REGION, endpoint_url=endpoint, credentials=("local", "local"))
    existing = {b["Name"] for b in aws.s3.list_buckets().get("Buckets", [])}
    for bucket in {plan.outputs.data_bucket, plan.outputs.output_bucket} - existing:
        aws.s3.create_bucket(Bucket=bucket)
    data_url = request["HyperParameters"]["data_url"]
    bucket, prefix = s3sync.split_s3_url(data_url)
    print(f"serving {source} as {data_url} on {endpoint}", file=out or sys.stdout, flush=True)
    s3sync.upload_dir(aws.s3, source, bucket, prefix)
    s3sync.put_sidecars(aws.s3, source, bucket, prefix, _indexes(source))  # as `launcher upload` leaves the data
    jobs.check_sessions(aws, data_url, list(plan.loaded.config.dataset.sessions))
    launch.upload_channel(aws, plan)
    paths = layout(job_dir, request, in_container=in_container)
    fetch_channels(aws.s3, job_dir, request)
    return paths


def _indexes(source: Path) -> dict:
    """The trial index of each session file under ``source`` that has one; a damaged file gets
    none here and is reported by the trainer, naming the file and trial."""
    from trainer.data.errors import DataError
    from trainer.data.index import build_index

    found = {}
    for path in s3sync.session_files(source)[0]:
        try:
            found[path] = build_index(str(path), str(path))
        except DataError:
            continue
    return found


def report(job: str, paths: dict[str, Path], result: LocalResult, seconds: float, out: TextIO) -> int:
    failure = paths["output"] / "failure"
    print("", file=out)
    if result.stopped_by is not None:  # the exit status says which signal stopped us, whatever the timing
        saved = "; its checkpoints are in" if result.returncode == STOPPED_EXIT else "; killed before it saved; checkpoints in"
        print(f"{job}: Stopped ({signal.Signals(result.stopped_by).name}) after {seconds:.0f} s{saved} "
              f"{paths['checkpoints']}", file=out)
        return 128 + result.stopped_by
    if result.returncode == STOPPED_EXIT:
        print(f"{job}: Stopped after {seconds:.0f} s; its checkpoints are in {paths['checkpoints']}", file=out)
        return 1
    if result.returncode != 0 or failure.exists():
        reason = failure.read_text().strip()[:1024] if failure.exists() else f"exit code {result.returncode}"
        print(f"{job}: Failed after {seconds:.0f} s: {reason}", file=out)
        print(f"log: {result.job_dir / 'train.log'}", file=out)
        return 1
    print(f"{job}: Completed in {seconds:.0f} s", file=out)
    model_files = sorted(p for p in paths["model"].rglob("*") if p.is_file())
    print(f"model:   {paths['model']}/ ({', '.join(p.name for p in model_files) or 'empty'})", file=out)
    metric_files = sorted(p for p in paths["output_data"].rglob("metrics*") if p.is_file())
    shown = ", ".join(str(p) for p in metric_files) or str(paths["output_data"])
    print(f"metrics: {shown}", file=out)
    curves = paths["model"] / "curves.png"
    if curves.exists():
        print(f"curves:  {curves}", file=out)
    events = sorted(paths["tensorboard"].rglob("events.out.tfevents.*"))
    if events:
        print(f"tensorboard: {len(events)} event file(s); tensorboard --logdir {paths['tensorboard']}", file=out)
    if result.metrics:
        print("last:    " + " ".join(f"{k}={v:g}" for k, v in result.metrics.items()), file=out)
    print(f"log:     {result.job_dir / 'train.log'}", file=out)
    return 0
