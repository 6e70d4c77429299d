"""Watching a job against moto: status, list and logs on a long log, and exit codes by how a job ended.

moto gaps filled on its backend objects (the HTTP path stays real): a job is Completed the
moment it is created, so the state, start time and final metrics are set on moto's job object;
moto replaces MetricDefinitions by a canned entry, so nothing here relies on them.
"""

from __future__ import annotations

import datetime as dt

import pytest

from trainer.config import DEMO_CONFIG

from tests.launcher.conftest import put_log

pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse")

N_TRAIN = 2727  # train lines for steps 0..2726, a validation every 10 steps: 273 val lines, 3,000 in all
BEST_STEP = 2000
SEC_PER_BATCH, VAL_SECONDS = 0.5, 20.0
STARTED_AGO = dt.timedelta(hours=2)


def flat(out: str) -> str:
    return " ".join(out.split())


def metric_lines() -> list[str]:
    lines = []
    for i in range(N_TRAIN):
        lines.append(f"METRIC step={i} train_loss={4.0 / (1 + i / 100):.6g} lr=0.004 lr_day=0.005 grad_norm=1.5 "
                     f"sec_per_batch={SEC_PER_BATCH}")
        if i % 10 == 0:
            per = 0.2 + abs(i - BEST_STEP) / 10000  # lowest at BEST_STEP, rising after it
            lines.append(f"METRIC step={i} val_loss=1.0 val_PER={per:.6g} best_val_PER={per:.6g} "
                         f"val_seconds={VAL_SECONDS}")
    return lines


@pytest.fixture
def submit(deployed, cli):
    names = iter(range(1, 100))

    def run(*extra: str) -> str:
        # Own names: two default names made in the same second would collide (names are never reused).
        code, out, err = cli("start", "--config", DEMO_CONFIG, "-y", "--job-name", f"watch-{next(names)}", *extra)
        assert code == 0, err
        return next(line.split()[1] for line in out.splitlines() if line.startswith("submitted "))

    return run


@pytest.fixture
def long_running_job(deployed, submit) -> str:
    """A spot job 2 h into a 5,000-batch run, restarted once (two log streams), 3,000 METRIC lines."""
    job = submit("--num-training-batches", "5000")
    fake = deployed.training_job(job)
    now = dt.datetime.now(dt.timezone.utc)
    fake.training_job_status, fake.secondary_status = "InProgress", "Training"
    fake.training_start_time, fake.training_end_time = now - STARTED_AGO, None
    fake.final_metric_data_list = []
    lines = metric_lines()
    assert len(lines) == 3000
    start_ms = int((now - STARTED_AGO).timestamp() * 1000)
    put_log(deployed, job, lines[:1500], first_ms=start_ms, stream_suffix="1764400000", step_ms=100)
    put_log(deployed, job, lines[1500:], first_ms=start_ms + 100 * 1500 + 60_000, stream_suffix="1764407000",
            step_ms=100)  # after a spot restart
    return job


def test_status_shows_the_newest_metrics_step_eta_and_cost(long_running_job, cli):
    code, out, _ = cli("status", long_running_job)
    text = flat(out)
    assert code == 0
    assert "state: InProgress (Training)" in text and "(managed spot)" in text
    assert "step: 2727 / 5000 (55%)" in text
    newest_loss = f"{4.0 / (1 + 2726 / 100):.4g}"
    assert f"train (newest): step 2726: train_loss={newest_loss} lr=0.004 grad_norm=1.5 sec_per_batch=0.5" in text
    assert "val (newest): step 2720: val_loss=1 val_PER=0.272 val_seconds=20" in text
    assert "best val PER: 0.2 at step 2000" in text
    # 2,273 batches × 0.5 s + 57 validations (every 40 batches in demo.yaml, and after the last) × 20 s
    assert "ETA: 37m56s (at 0.5 s/batch, validations included)" in text
    assert "elapsed: 2h00m" in text
    # 2 h at $1.515/h so far; (2 h + 37m56s) × $1.515/h projected; spot bills less
    assert "cost: at most $3.03 so far; projected at most $3.99 at the ETA" in text
    assert "checkpoints: s3://" in text and f"/checkpoints/{long_running_job}/" in text
    assert f"/jobs/{long_running_job}/tensorboard/" in text


def test_list_is_a_table_with_state_instance_cost_and_best_per(deployed, long_running_job, submit, cli):
    finished = submit("--on-demand", "--set", "lr_max=0.004")
    fake = deployed.training_job(finished)
    fake.training_time_in_seconds = fake.billable_time_in_seconds = 600
    fake.final_metric_data_list = [{"MetricName": "best_val_PER", "Value": 0.125, "Timestamp": fake.creation_time},
                                   {"MetricName": "val_PER", "Value": 0.15, "Timestamp": fake.creation_time}]
    fake.training_start_time = fake.creation_time = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=5)
    code, out, _ = cli("list")
    assert code == 0
    header, _, first, second, *_ = out.splitlines()
    assert header.split() == ["JOB", "STATE", "INSTANCE", "SPOT", "STARTED", "DURATION", "COST", "BEST", "PER",
                              "CONFIG"]
    assert first.split()[:3] == [finished, "Completed", "ml.g5.2xlarge"]  # newest first
    assert first.split()[6:] == ["10m00s", "$0.25", "0.125", "demo.yaml"]
    assert second.split()[:4] == [long_running_job, "InProgress", "ml.g5.2xlarge", "spot"]
    assert second.split()[6:9] == ["2h00m", "≤$3.03", "0.2"]

    code, out, _ = cli("list", "--state", "Completed")
    assert finished in out and long_running_job not in out


def test_logs_tail_prints_the_newest_lines_with_timestamps(long_running_job, cli):
    code, out, _ = cli("logs", long_running_job, "--tail", "3")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3
    expected = metric_lines()[-3:]
    for line, message in zip(lines, expected):
        stamp, text = line.split("  ", 1)
        dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S")
        assert text == message


def test_logs_tail_then_follow_shows_each_line_once(deployed, submit, cli):
    job = submit()
    put_log(deployed, job, ["a", "b", "c"], step_ms=1)
    code, out, _ = cli("logs", job, "--tail", "2", "--follow", "--poll", "0", "--no-timestamps")
    assert code == 0 and out.splitlines() == ["b", "c", f"-- {job}: Completed"]


def test_logs_since_leaves_out_older_lines(deployed, submit, cli):
    job = submit()
    now = dt.datetime.now(dt.timezone.utc)
    put_log(deployed, job, ["old"], first_ms=int((now - dt.timedelta(hours=3)).timestamp() * 1000), stream_suffix="1")
    put_log(deployed, job, ["new"], first_ms=int((now - dt.timedelta(minutes=5)).timestamp() * 1000), stream_suffix="2")
    code, out, _ = cli("logs", job, "--since", "1h", "--no-timestamps")
    assert code == 0 and out.splitlines() == ["new"]
    code, _, err = cli("logs", job, "--since", "yesterday")
    assert code == 2 and "--since 'yesterday'" in err


def test_logs_follow_on_a_failed_job_exits_non_zero(deployed, submit, cli):
    job = submit()
    fake = deployed.training_job(job)
    fake.training_job_status, fake.failure_reason = "Failed", "data error: s3://x/t15.2023.08.11/data_train.hdf5 truncated"
    put_log(deployed, job, ["training", "data error: truncated"])
    code, out, _ = cli("logs", job, "--follow", "--poll", "0", "--no-timestamps")
    assert code == 1
    assert out.splitlines() == ["training", "data error: truncated",
                                f"-- {job}: Failed: data error: s3://x/t15.2023.08.11/data_train.hdf5 truncated"]
    code, _, err = cli("logs", job)
    assert code == 1 and f"-- {job}: Failed" in err
