"""What a run reports besides METRIC lines: progress, TensorBoard event files, curves.png, honest timings."""

from __future__ import annotations

import io
import logging
import sys
import time

import pytest

from trainer.__main__ import main
from trainer.metrics import MetricsSink, read_metrics
from trainer.monitor import Monitor

from tests.trainer.trainer_helpers import set_args, tiny_overrides

SLOW_VALIDATION_S = 1.5


@pytest.fixture(scope="module")
def slow_val_run(tiny_data, tmp_path_factory):
    """A tiny run whose validation passes take an extra SLOW_VALIDATION_S seconds each."""
    from trainer import train as train_module

    real = train_module.evaluate

    def slow_evaluate(*args, **kwargs):
        time.sleep(SLOW_VALIDATION_S)
        return real(*args, **kwargs)

    out = tmp_path_factory.mktemp("monitored") / "run"
    patch = pytest.MonkeyPatch()
    patch.setattr(train_module, "evaluate", slow_evaluate)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)  # as in a job (pytest's handlers keep basicConfig from setting it)
    try:
        code = main(["--data", str(tiny_data), "--output", str(out), *set_args(tiny_overrides(tiny_data))])
    finally:
        root.setLevel(level)
        patch.undo()
    assert code == 0
    return out, (out / "training_log").read_text()


def test_sec_per_batch_counts_training_batches_only(slow_val_run):
    out, _ = slow_val_run
    records = read_metrics(out / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    # batches_per_train_log=1, validation after batches 0, 5, 10, 11: the batches right after a
    # validation would carry its SLOW_VALIDATION_S if the interval were measured wall to wall
    assert len(train) == 12 and all(r["sec_per_batch"] < SLOW_VALIDATION_S for r in train)
    assert len(val) == 4 and all(r["val_seconds"] >= SLOW_VALIDATION_S for r in val)
    assert [r["best_val_PER"] for r in val] == [min(v["val_PER"] for v in val[: i + 1]) for i in range(len(val))]


def test_job_progress_is_a_periodic_log_line(slow_val_run):
    _, log = slow_val_run
    lines = [line.split(": ", 1)[1] for line in log.splitlines() if "trainer.monitor: progress: " in line]
    assert len(lines) >= 4  # after each validation, and at the end
    assert lines[-1].startswith("progress: 12/12 batches (100%), ")
    last = lines[-1]
    assert ("batch/s" in last or "s/batch" in last) and "ETA 00:00" in last and "loss=" in last and "val_PER=" in last


def test_tensorboard_event_files_hold_every_scalar(slow_val_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = slow_val_run
    (events,) = (out / "tensorboard").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/train", "loss/val", "lr/main", "lr/day", "train/grad_norm", "time/sec_per_batch",
            "PER/val", "PER/best_val", "time/val_seconds", "PER_session/t15.2023.08.11"} <= tags
    assert [e.step for e in acc.Scalars("PER/val")] == [0, 5, 10, 11]
    val = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "val"]
    assert [e.value for e in acc.Scalars("PER/val")] == pytest.approx([r["val_PER"] for r in val])


def test_curves_png_is_written_next_to_the_model(slow_val_run):
    from PIL import Image

    out, _ = slow_val_run
    with Image.open(out / "model" / "curves.png") as image:
        assert image.format == "PNG" and image.size == (1200, 450)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_a_tqdm_bar_shows_progress_loss_and_per(tmp_path, monkeypatch):
    screen = Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    monitor = Monitor(MetricsSink(tmp_path / "metrics.jsonl", stream=io.StringIO()), total=10)
    assert monitor.interactive
    monitor.start(0)
    for step in range(1, 5):
        monitor.batch_done(step)
    monitor.emit("train", 3, {"train_loss": 2.5, "sec_per_batch": 0.1})
    monitor.emit("val", 3, {"val_loss": 2.0, "val_PER": 0.75})
    monitor.batch_done(5)
    monitor.close()
    text = screen.getvalue().split("\r")[-1]
    assert "5/10" in text and ("batch/s" in text or "s/batch" in text)
    assert "loss=2.5" in text and "val_PER=0.75" in text


def test_a_disabled_monitor_reports_nothing(tmp_path, capsys):
    monitor = Monitor(MetricsSink(tmp_path / "metrics.jsonl"), total=10, tensorboard_dir=tmp_path / "tb",
                      enabled=False)
    monitor.start(0)
    monitor.emit("train", 0, {"train_loss": 1.0})
    monitor.batch_done(1)
    monitor.close()
    assert monitor.write_curves(tmp_path / "curves.png") is None
    assert capsys.readouterr().out == "" and not (tmp_path / "metrics.jsonl").exists()
    assert not (tmp_path / "tb").exists()


def test_tensorboard_reads_the_event_files_from_s3(slow_val_run, moto_reset, monkeypatch):
    """What `tensorboard --logdir s3://…/tensorboard/` does with the files SageMaker syncs there."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = slow_val_run
    s3 = moto_reset.client("s3")
    s3.create_bucket(Bucket="out")
    for path in (out / "tensorboard").iterdir():
        s3.upload_file(str(path), "out", f"jobs/b2t-demo-1/tensorboard/{path.name}")
    # TensorBoard reads s3:// with boto3, which finds the endpoint as the launcher's clients do
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_reset.url)
    acc = EventAccumulator("s3://out/jobs/b2t-demo-1/tensorboard/")
    acc.Reload()
    assert [e.step for e in acc.Scalars("PER/val")] == [0, 5, 10, 11]


def test_without_the_optional_extras_the_run_reports_the_rest(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monitor = Monitor(MetricsSink(tmp_path / "metrics.jsonl", stream=io.StringIO()), total=2,
                      tensorboard_dir=tmp_path / "tb", interactive=False)
    monitor.start(0)
    monitor.emit("train", 0, {"train_loss": 1.0})
    monitor.batch_done(1)
    monitor.close()
    assert monitor.write_curves(tmp_path / "curves.png") is None
    assert not (tmp_path / "tb").exists() and not (tmp_path / "curves.png").exists()
    assert read_metrics(tmp_path / "metrics.jsonl")[0]["train_loss"] == 1.0
