"""`plot` on two finished local runs: one PNG, both runs side by side."""

from __future__ import annotations

import contextlib
import io

import pytest

from trainer.metrics import read_metrics

@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny finished runs of the trainer that differ in their learning rate: (runs dir, [run dirs])."""
    from trainer.__main__ import main
    from trainer.synthetic import generate

    from tests.trainer.trainer_helpers import TINY_SPEC, set_args, tiny_overrides

    root = tmp_path_factory.mktemp("plot")
    generate(root / "data", TINY_SPEC)
    runs = [root / "runs" / "b2t-lr-high", root / "runs" / "b2t-lr-low"]
    for out, lr in zip(runs, ("0.01", "0.001")):
        overrides = tiny_overrides(root / "data", num_training_batches=6, batches_per_val_step=2, lr_max=lr,
                                   lr_decay_steps=6, lr_decay_steps_day=6)
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["--data", str(root / "data"), "--output", str(out), *set_args(overrides)]) == 0
    return root / "runs", runs


def test_plot_writes_one_png_of_both_runs(two_runs, cli, tmp_path):
    from PIL import Image

    runs_dir, jobs = two_runs
    png = tmp_path / "compare.png"
    code, out, err = cli("plot", "b2t-lr-high", jobs[1], "--runs-dir", runs_dir, "-o", png)
    assert code == 0, err
    assert out.strip() == f"wrote {png} (b2t-lr-high, b2t-lr-low)"
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (1200, 450)
        assert len(image.getcolors(1 << 16) or []) > 50  # drawn lines and text, not a blank canvas


def test_plot_axes_hold_each_runs_loss_and_per_against_step(two_runs, tmp_path):
    from launcher.commands.plot import load_runs
    from trainer.curves import plot_runs

    runs_dir, jobs = two_runs
    runs = load_runs([j.name for j in jobs], runs_dir)
    fig = plot_runs(runs, tmp_path / "p.png")
    loss_ax, per_ax = fig.axes
    assert (loss_ax.get_title(), loss_ax.get_xlabel()) == ("training loss", "step")
    assert per_ax.get_title().startswith("validation PER") and per_ax.get_xlabel() == "step"
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["b2t-lr-high", "b2t-lr-low"]
    for (label, records), line in zip(runs, loss_ax.get_lines()):
        train = [r for r in records if r["kind"] == "train"]
        assert list(line.get_xdata()) == [r["step"] for r in train] == list(range(6))
        assert list(line.get_ydata()) == pytest.approx([r["train_loss"] for r in train])
    sessions = {r["session"] for r in read_metrics(jobs[0] / "metrics.jsonl")
                if r["kind"] == "val_session"}
    # per run: the overall PER line (validations after batches 0, 2, 4, 5), then one dashed line per session
    assert len(per_ax.get_lines()) == 2 * (1 + len(sessions))
    assert list(per_ax.get_lines()[0].get_xdata()) == [0, 2, 4, 5]
    assert per_ax.get_lines()[1].get_linestyle() == "--"


def test_plot_of_an_unknown_local_run_is_one_line(cli, tmp_path):
    code, _, err = cli("plot", str(tmp_path / "nothing-here.jsonl"), "--runs-dir", tmp_path, "--stack", "NoSuchStack")
    assert code != 0 and err.count("\n") == 1 and "error:" in err
