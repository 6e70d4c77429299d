"""End to end on tiny synthetic data: train, outputs, evaluate, resume after SIGKILL, /opt/ml."""

from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trainer import checkpoint as ckpt
from trainer.__main__ import EXIT_CONFIG, EXIT_DATA, EXIT_STOPPED, main
from trainer.config import REFERENCE_CONFIG, load_config
from trainer.environment import ROOT_ENV
from trainer.export import load_model
from trainer.metrics import metric_definitions
from trainer.train import RunPaths, amp_dtype_for, setup_model, train
from trainer.validation import ValResult

from tests.trainer.trainer_helpers import opt_ml as _opt_ml
from tests.trainer.trainer_helpers import run_until_step, set_args, tiny_overrides

REPO = Path(__file__).resolve().parents[2]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", ROOT_ENV))}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)
    return env


def test_train_evaluate_and_outputs(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--data", str(tiny_data), "--output", str(out), *set_args(tiny_overrides(tiny_data))]) == 0
    stdout = capsys.readouterr().out
    # metric lines: one train line per log step, a val line per validation; regexes match them
    lines = [line for line in stdout.splitlines() if line.startswith("METRIC step=")]
    assert sum("train_loss=" in line for line in lines) == 12
    assert [int(re.search(r"step=(\d+)", line).group(1)) for line in lines if "val_PER=" in line] == [0, 5, 10, 11]
    for d in metric_definitions():
        assert any(re.search(d["Regex"], line) for line in lines), d["Name"]
    assert "METRIC_SESSION step=0 session=t15.2023.08.11 val_PER=" in stdout
    assert "t15.2023.08.13" not in stdout.split("METRIC_SESSION")[-1]  # val probability 0: skipped
    records = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} == {"train", "val", "val_session"}
    assert (out / "training_log").exists() and (out / "val_metrics.json").exists()
    assert (out / "val_logits.npz").exists()

    # the model: best weights, config and sessions, loadable without training internals
    assert sorted(p.name for p in (out / "model").iterdir()) == [
        "config.yaml", "curves.png", "final_model.pt", "model.pt", "sessions.json"]
    trained = load_model(out / "model")
    assert trained.sessions == ["t15.2023.08.11", "t15.2023.08.13", "t15.2023.08.15"]
    assert trained.info["weights"] == "best" and trained.config.model.n_units == 16
    logits = trained.model(torch.zeros(1, 20, 8), torch.tensor([1]))
    assert logits.shape == (1, 19, 41)

    # checkpoints: the newest keep_last_checkpoints plus the best
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["best_checkpoint.pt", "checkpoint_00000011.pt", "checkpoint_00000012.pt"]

    # a second start finds the run finished and only re-exports
    assert main(["--data", str(tiny_data), "--output", str(out), *set_args(tiny_overrides(tiny_data))]) == 0
    assert "METRIC step=" not in capsys.readouterr().out

    # evaluation: PER per session and a CSV of predictions
    from trainer.evaluate import main as evaluate_main

    csv_path = tmp_path / "preds.csv"
    assert evaluate_main(["--model", str(out / "model"), "--data", str(tiny_data), "--out", str(csv_path)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1].startswith("per=") and printed[-1].endswith("trials=8")
    assert any(line.startswith("t15.2023.08.15 PER ") for line in printed)
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 8 and {r["session"] for r in rows} == {"t15.2023.08.11", "t15.2023.08.15"}
    best = json.loads((out / "val_metrics.json").read_text())
    assert float(printed[-1].split()[0].split("=")[1]) == pytest.approx(best["val_PER"], abs=1e-4)
    (tmp_path / "file").write_text("")  # --out in a folder that cannot be created: one line, exit 1
    assert evaluate_main(["--model", str(out / "model"), "--data", str(tiny_data),
                          "--out", str(tmp_path / "file" / "preds.csv")]) == 1
    assert capsys.readouterr().err.startswith(f"file error: {tmp_path / 'file'}: ")


def test_dry_run_and_data_checks(tiny_data, tmp_path, capsys):
    out = tmp_path / "dry"
    base = ["--data", str(tiny_data), "--output", str(out), *set_args(tiny_overrides(tiny_data))]
    assert main([*base, "--dry-run"]) == 0
    assert "dry run: config and data OK (36 train, 12 validation trials)" in capsys.readouterr().out
    assert not out.exists()
    # patch larger than the shortest trial (14 bins)
    assert main([*base, "--dry-run", "--set", "model.patch_size=20", "--set", "model.patch_stride=4"]) == EXIT_CONFIG
    assert capsys.readouterr().err.startswith("config error: model.patch_size: 20 bins is longer than")
    assert main(["--data", str(tmp_path / "nowhere"), "--output", str(out),
                 *set_args(tiny_overrides(tiny_data)[1:])]) == EXIT_DATA
    assert capsys.readouterr().err.startswith("data error: missing session files")


def test_early_stopping(tiny_data, tmp_path, monkeypatch):
    cfg = load_config(None, tiny_overrides(tiny_data, early_stopping="true", early_stopping_val_steps=2,
                                           batches_per_val_step=2))
    flat = ValResult(loss=1.0, per=0.5, per_day={0: 0.5})
    monkeypatch.setattr("trainer.train.evaluate", lambda *a, **k: flat)
    result = train(cfg, RunPaths(tmp_path, tmp_path / "model", tmp_path / "ck"))
    # validations after batches 0 (best), 2, 4: two without improvement -> stop after batch 4
    assert (result.status, result.step) == ("early_stopped", 5)
    assert load_model(tmp_path / "model").info["weights"] == "best"


def test_init_from_reference_checkpoint(tiny_data, tmp_path):
    cfg = load_config(None, tiny_overrides(tiny_data))
    source = setup_model(cfg, init_weights=False)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.5)
    state = {"_orig_mod." + k: v for k, v in source.state_dict().items()}
    torch.save({"model_state_dict": state, "optimizer_state_dict": {}, "val_PER": 0.3}, tmp_path / "best_checkpoint")
    cfg = load_config(None, tiny_overrides(tiny_data, init_from_checkpoint="true",
                                           init_checkpoint_path=str(tmp_path / "best_checkpoint")))
    model = setup_model(cfg, init_weights=True)
    for (name, a), b in zip(model.state_dict().items(), source.state_dict().values()):
        assert torch.equal(a, b), name


def test_amp_choice(monkeypatch):
    assert amp_dtype_for(torch.device("cpu"), True) is None
    assert amp_dtype_for(torch.device("cuda", 0), False) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp_dtype_for(torch.device("cuda", 0), True) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. T4
    assert amp_dtype_for(torch.device("cuda", 0), True) == torch.float16


# ---------------------------------------------------------------------------------------
# Kill and resume


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainer", *args], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _run_until(args: list[str], kill_after_step: int, sig: int, delay: float) -> tuple[int, int]:
    """Start training, send ``sig`` once batch ``kill_after_step`` is logged (plus ``delay`` s)."""
    def act(proc: subprocess.Popen) -> None:
        time.sleep(delay)
        proc.send_signal(sig)

    proc = _start(args)
    last = run_until_step(proc, kill_after_step, act)
    return proc.wait(timeout=120), last


def _final_state(out: Path, step: int) -> dict:
    return torch.load(ckpt.periodic_path(out / "checkpoints", step), weights_only=False)


def test_sigkill_at_random_points_then_resume_is_bit_identical(tiny_data, tmp_path):
    n = 24
    overrides = tiny_overrides(tiny_data, num_training_batches=n, lr_decay_steps=n, lr_decay_steps_day=n,
                               batches_per_save=3, batches_per_val_step=7, save_final_model="true")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert subprocess.run([sys.executable, "-m", "trainer", "--output", str(straight), *set_args(overrides)],
                          cwd=REPO, env=_env(), capture_output=True, timeout=300).returncode == 0

    rng = random.Random(1234)
    kill_points = sorted(rng.sample(range(1, n - 2), 5))
    args = ["--output", str(resumed), *set_args(overrides)]
    for point in kill_points:  # SIGKILL: no chance to save, possibly in the middle of writing a checkpoint
        code, _ = _run_until(args, point, signal.SIGKILL, delay=rng.uniform(0, 0.05))
        assert code == -signal.SIGKILL
    code, stopped_after = _run_until(args, kill_points[-1] + 1, signal.SIGTERM, delay=0)  # spot stop
    assert code == EXIT_STOPPED
    latest = ckpt.load_latest(resumed / "checkpoints")
    assert latest is not None and latest[1][ckpt.STEP] >= stopped_after + 1 - 1
    finish = subprocess.run([sys.executable, "-m", "trainer", *args], cwd=REPO, env=_env(), capture_output=True,
                            timeout=300)
    assert finish.returncode == 0, finish.stderr[-2000:]

    a, b = _final_state(straight, n), _final_state(resumed, n)
    for key, value in a[ckpt.MODEL_STATE].items():
        assert torch.equal(value, b[ckpt.MODEL_STATE][key]), key
    for sa, sb in zip(a[ckpt.OPTIMIZER_STATE]["state"].values(), b[ckpt.OPTIMIZER_STATE]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a[ckpt.PROGRESS] == b[ckpt.PROGRESS]
    assert a[ckpt.RNG_STATE]["augment"].equal(b[ckpt.RNG_STATE]["augment"])
    final_a = load_model(straight / "model" / "final_model.pt").model.state_dict()
    final_b = load_model(resumed / "model" / "final_model.pt").model.state_dict()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


# ---------------------------------------------------------------------------------------
# The SageMaker container contract


def test_emulated_opt_ml(tiny_data, tmp_path):
    overrides = tiny_overrides(tiny_data, num_training_batches=6, batches_per_val_step=3)[1:]  # data via data_url
    hp = {"config_file": "train.yaml", "data_url": str(tiny_data), "overrides": json.dumps(overrides)}
    root = _opt_ml(tmp_path / "ml", hp, (REPO / "trainer" / "configs" / "demo.yaml").read_text())
    proc = subprocess.run([sys.executable, "-m", "trainer"], cwd=REPO, env=_env(**{ROOT_ENV: str(root)}),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name for p in (root / "model").iterdir()} >= {"model.pt", "config.yaml", "sessions.json"}
    assert (root / "output" / "data" / "metrics.jsonl").exists()
    assert (root / "checkpoints" / "checkpoint_00000006.pt").exists()
    assert not (root / "output" / "failure").exists()
    assert re.search(metric_definitions(["val_PER"])[0]["Regex"], proc.stdout, re.M)

    # a bad config: non-zero exit, the reason in the failure file, one line, no traceback
    bad = _opt_ml(tmp_path / "bad", {**hp, "overrides": json.dumps(overrides + ["dataset.batch_size=-1"])},
                  REFERENCE_CONFIG.read_text())
    proc = subprocess.run([sys.executable, "-m", "trainer"], cwd=REPO, env=_env(**{ROOT_ENV: str(bad)}),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_CONFIG and "Traceback" not in proc.stderr
    reason = (bad / "output" / "failure").read_text()
    assert reason.startswith("config error: dataset.batch_size: ") and reason.count("\n") == 1


def test_diphone_targets_train_and_score_on_phonemes(tmp_path, capsys):
    from trainer.synthetic import SyntheticSpec, generate
    from tests.trainer.trainer_helpers import TINY_SPEC

    data = tmp_path / "diphone"
    generate(data, SyntheticSpec(**{**TINY_SPEC.__dict__, "diphones": True}))
    overrides = tiny_overrides(data, num_training_batches=3, batches_per_val_step=2,
                               **{"dataset.n_classes": 1681, "model.n_classes": 1681})
    out = tmp_path / "run"
    assert main(["--output", str(out), *set_args(overrides)]) == 0
    trained = load_model(out / "model")
    assert trained.model.out.out_features == 1681
    best = json.loads((out / "val_metrics.json").read_text())
    assert all(0 < p <= 40 for t in best["trials"] for p in t["target"] + t["decoded"])

    # the same output directory with a different model: one line, no traceback
    capsys.readouterr()
    assert main(["--output", str(out), *set_args(overrides), "--set", "model.n_units=8"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("training error: the checkpoint in ") and err.count("\n") == 1
