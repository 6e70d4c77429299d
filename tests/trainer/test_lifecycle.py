"""Nothing lost: unreadable checkpoints stop the run, one trainer per output folder, failed
writes leave no temporary files and name the path and the space they needed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trainer import checkpoint as ckpt
from trainer.__main__ import EXIT_FAILED, EXIT_OK, main

from tests.trainer.trainer_helpers import set_args, tiny_overrides

ROOT = Path(__file__).resolve().parents[2]


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--output", str(out), *set_args(tiny_overrides(data)), *extra]


def test_unreadable_checkpoints_stop_the_run_and_keep_the_model(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "model").mkdir()
    (out / "model" / "model.pt").write_bytes(b"the model of the earlier run")
    for step in (4, 6):
        (out / "checkpoints" / f"checkpoint_{step:08d}.pt").write_bytes(b"\0" * 100)  # e.g. zeroed by a crash
    assert main(train_args(tiny_data, out)) == EXIT_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"training error: 2 checkpoint(s) in {out / 'checkpoints'} and none readable "
                   "(checkpoint_00000006.pt, checkpoint_00000004.pt): not starting again from step 0 over them; "
                   "restore them, or start fresh on purpose (`python -m trainer --start-fresh` moves them "
                   "aside as *.unreadable)"]
    assert (out / "model" / "model.pt").read_bytes() == b"the model of the earlier run"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint_00000004.pt", "checkpoint_00000006.pt"]


def test_start_fresh_moves_unreadable_checkpoints_aside(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint_00000006.pt").write_bytes(b"garbage")
    assert main(train_args(tiny_data, out, "--start-fresh")) == EXIT_OK
    names = {p.name for p in (out / "checkpoints").iterdir()}
    assert "checkpoint_00000006.pt.unreadable" in names and "checkpoint_00000012.pt" in names
    assert (out / "model" / "model.pt").is_file()


def test_second_trainer_on_one_output_folder_is_refused(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    with ckpt.output_lock(out):
        assert main(train_args(tiny_data, out)) == EXIT_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"training error: {out} is in use by another trainer (pid ")
    assert f"lock file {out / '.trainer.lock'}" in err[0]
    assert not (out / "metrics.jsonl").exists()


def test_lock_of_a_dead_trainer_does_not_block(tmp_path):
    out = tmp_path / "run"
    subprocess.run([sys.executable, "-c", "from pathlib import Path; from trainer.checkpoint import output_lock\n"
                    f"with output_lock(Path({str(out)!r})): pass"], check=True, cwd=ROOT)
    assert (out / ".trainer.lock").read_text().startswith("pid ")
    with ckpt.output_lock(out):
        pass


def _write_under_file_size_limit(target: Path) -> subprocess.CompletedProcess:
    """save_atomic in a child whose files may not grow past 4 KB (the kernel refuses with EFBIG)."""
    code = textwrap.dedent(f"""
        import resource, signal, sys
        from pathlib import Path
        import torch
        from trainer.checkpoint import save_atomic
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            save_atomic({{"w": torch.zeros(10000)}}, Path({str(target)!r}))
        except OSError as e:
            print(f"{{e.filename}}: {{e.strerror}}")
            sys.exit(1)
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)


def test_failed_write_leaves_no_temp_file_and_names_path_and_size(tmp_path):
    target = tmp_path / "checkpoints" / "checkpoint_00000010.pt"
    proc = _write_under_file_size_limit(target)
    assert proc.returncode == 1, proc.stderr
    line = proc.stdout.strip()
    assert line.startswith(f"{target}: File too large (writing 40.")
    assert "free on its filesystem)" in line
    assert list(target.parent.iterdir()) == []


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KB tmpfs (needs CAP_SYS_ADMIN; skipped where it cannot be mounted)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_disk_full_leaves_no_temp_file_and_says_how_much_was_needed(tiny_disk):
    import torch

    target = tiny_disk / "checkpoint_00000010.pt"
    with pytest.raises(OSError) as caught:
        ckpt.save_atomic({"w": torch.zeros(100_000)}, target)
    assert caught.value.filename == str(target)
    assert caught.value.strerror.startswith("No space left on device (writing 392.2 KB; 64.0 KB free")
    assert list(tiny_disk.iterdir()) == []


def test_disk_full_while_logging_metrics_names_the_file(tiny_disk):
    from trainer.metrics import MetricsSink

    (tiny_disk / "filler").write_bytes(b"\0" * (64 * 1024 - 4096))
    with open("/dev/null", "w") as null, pytest.raises(OSError) as caught:
        sink = MetricsSink(tiny_disk / "metrics.jsonl", stream=null)
        for step in range(1000):
            sink.emit("train", step, {"train_loss": 1.0, "lr": 0.1, "padding": float(step)})
    assert caught.value.filename == str(tiny_disk / "metrics.jsonl")
    assert caught.value.strerror == "No space left on device"
