"""The lab fork's diphone trainer as it stands: its config, composite loss, alpha schedule,
PER rule and checkpoints (https://github.com/ekim339/brain-to-text-sagemaker, see data/README.md).

The fork's rules are restated here from its behaviour, independently of our implementation:
- composite loss L = alpha * CTC(phonemes) + (1 - alpha) * CTC(diphones), the phoneme logits
  being the log-sum-exp of the 41 diphone logits ending in each phoneme (ids p, p + 41, ...);
- alpha = min(start + (batch // interval) * step, end) with the schedule, else fixed;
- PER: softmax over 1681, sum the probabilities over the previous phoneme, argmax over 41,
  merge repeats, drop blanks; compared with ``seq_class_ids_phoneme`` as stored;
- DER: argmax over 1681, merge repeats, drop blanks, compared with the diphone targets.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from trainer.__main__ import main
from trainer.config import ConfigError, config_from_dict, load_config, read_config_file
from trainer.export import ModelFileError, load_model
from trainer.metrics import PERCounter, edit_distance, greedy_decode, greedy_decode_diphones
from trainer.model import GRUDecoder
from trainer.synthetic import SyntheticSpec, generate
from trainer.train import setup_model
from trainer.validation import composite_alpha, composite_loss, evaluate, phoneme_targets

FORK_YAML = Path(__file__).parent / "data" / "fork_rnn_args_diphone_sagemaker.yaml"
FORK_BLOB = "ee89a908090b2322fb44ec59e1165cf00cd6a7d9"  # git blob of the file at the fork's a0ed019
FORK_KEYS = ("use_composite_loss", "composite_loss_alpha", "use_alpha_schedule", "alpha_schedule_start",
             "alpha_schedule_end", "alpha_schedule_step_size", "alpha_schedule_step_interval")
P = 41  # phonemes, blank 0


def d(prev: int, cur: int) -> int:
    return prev * P + cur


# ---------------------------------------------------------------------------------------
# 1. The fork's YAML as published: dry run, and a few batches on synthetic diphone data


def test_fork_yaml_is_the_published_file():
    blob = subprocess.run(["git", "hash-object", str(FORK_YAML)], capture_output=True, text=True, check=True)
    assert blob.stdout.strip() == FORK_BLOB


def test_fork_yaml_loads_with_its_keys():
    raw = read_config_file(FORK_YAML)
    cfg = load_config(FORK_YAML)
    for key in FORK_KEYS:
        assert getattr(cfg, key) == raw[key], key
    assert cfg.model.bidirectional is True and cfg.n_classes == 1681 and cfg.epsilon == 1e-8
    assert composite_alpha(cfg, 0) is None  # published with the composite loss off


@pytest.fixture(scope="module")
def fork_data(tmp_path_factory) -> Path:
    """45 synthetic diphone sessions named as in the fork's YAML, 512 features, fork encoding."""
    root = tmp_path_factory.mktemp("fork_diphone")
    sessions = read_config_file(FORK_YAML)["dataset"]["sessions"]
    spec = SyntheticSpec(n_sessions=len(sessions), train_trials=3, val_trials=1, diphones=True, min_words=1,
                         max_words=2, bins_per_phoneme=(3, 4), lead_bins=(10, 12), seed=3)
    generate(root, spec, names=sessions)
    return root


def test_synthetic_writes_the_fork_encoding(fork_data):
    with h5py.File(next(fork_data.glob("*/data_train.hdf5")), "r") as f:
        g = f["trial_0000"]
        n = int(g.attrs["seq_len"])
        diphones, phonemes = g["seq_class_ids"][:n], g["seq_class_ids_phoneme"][: int(g.attrs["seq_len_phoneme"])]
    assert diphones[0] == phonemes[0] < P  # the first phoneme alone
    assert diphones[1:].tolist() == [d(a, b) for a, b in zip(phonemes[:-1], phonemes[1:])]


def test_fork_yaml_as_published_passes_dry_run(fork_data, tmp_path, capsys):
    assert main(["--config", str(FORK_YAML), "--data", str(fork_data), "--output", str(tmp_path), "--dry-run"]) == 0
    assert "dry run: config and data OK (135 train, 45 validation trials)" in capsys.readouterr().out


def test_fork_yaml_trains_a_few_batches_with_scheduled_alpha(fork_data, tmp_path, capsys):
    # The published file; only the model's size and the run's length shrink, and the composite
    # loss with its schedule is switched on (the file has it off), stepping every 2 batches.
    small = ["model.n_units=16", "model.n_layers=2", "dataset.batch_size=8", "dataset.num_dataloader_workers=0",
             "num_training_batches=5", "batches_per_train_log=1", "batches_per_val_step=4",
             "use_composite_loss=true", "use_alpha_schedule=true", "alpha_schedule_step_interval=2"]
    out = tmp_path / "run"
    args = ["--config", str(FORK_YAML), "--data", str(fork_data), "--output", str(out)]
    assert main([*args, *[a for s in small for a in ("--set", s)]]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [0, 1, 2, 3, 4]
    assert [r["alpha"] for r in train] == pytest.approx([0.0, 0.0, 0.1, 0.1, 0.2])
    assert all(np.isfinite(r["train_loss"]) for r in train)
    val = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in val] == [0, 4]
    assert all(0 <= r["val_PER"] and 0 <= r["val_DER"] and np.isfinite(r["val_loss"]) for r in val)
    trained = load_model(out / "model")
    assert trained.model.bidirectional and trained.model.out.out_features == 1681
    assert trained.config.use_composite_loss and len(trained.sessions) == 45
    from trainer.evaluate import main as evaluate_main

    assert evaluate_main(["--model", str(out / "model"), "--data", str(fork_data), "--out", str(tmp_path / "p.csv"),
                          "--set", "dataset.num_dataloader_workers=0"]) == 0
    printed = capsys.readouterr().out
    assert "DER " in printed and "trials=41" in printed.splitlines()[-1]


# ---------------------------------------------------------------------------------------
# 2. Composite loss and alpha schedule


def fork_phoneme_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """The fork's marginalisation: log-sum-exp over ids i, i + 41, ... per phoneme i, then log-softmax."""
    phoneme_logits = torch.stack([torch.logsumexp(logits[..., i::P], dim=-1) for i in range(P)], dim=-1)
    return phoneme_logits.log_softmax(-1)


def mean_ctc(log_probs, targets, input_lengths, target_lengths) -> torch.Tensor:
    return F.ctc_loss(log_probs.permute(1, 0, 2), targets, input_lengths, target_lengths, reduction="none").mean()


@pytest.fixture
def fixed_batch():
    logits = torch.randn(2, 12, P * P, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 3
    phonemes = torch.tensor([[3, 7, 40, 0], [5, 5, 9, 40]])
    diphones = torch.tensor([[3, d(3, 7), d(7, 40), 0], [5, d(5, 5), d(5, 9), d(9, 40)]])
    return logits, torch.tensor([12, 10]), diphones, phonemes, torch.tensor([3, 4])


def test_composite_loss_is_the_forks_weighted_sum(fixed_batch):
    logits, lengths, diphones, phonemes, label_lens = fixed_batch
    diphone_ctc = mean_ctc(logits.log_softmax(-1), diphones, lengths, label_lens)
    phoneme_ctc = mean_ctc(fork_phoneme_log_probs(logits), phonemes, lengths, label_lens)
    assert abs(float(diphone_ctc - phoneme_ctc)) > 1  # the two terms differ, so the weights matter

    def ours(alpha):
        return float(composite_loss(logits, lengths, diphones, label_lens, phonemes, label_lens, alpha))

    assert ours(0.0) == pytest.approx(float(diphone_ctc), rel=1e-6)
    assert ours(1.0) == pytest.approx(float(phoneme_ctc), rel=1e-6)
    for alpha in (0.25, 0.6):
        assert ours(alpha) == pytest.approx(float(alpha * phoneme_ctc + (1 - alpha) * diphone_ctc), rel=1e-6)


def test_alpha_schedule_gives_the_forks_values():
    cfg = load_config(FORK_YAML, ["use_composite_loss=true", "use_alpha_schedule=true"])
    # the fork's table for start 0.0, end 0.6, step 0.1 every 3000 batches (ALPHA_SCHEDULE_SUMMARY.md)
    expected = {0: 0.0, 2999: 0.0, 3000: 0.1, 5999: 0.1, 6000: 0.2, 9000: 0.3, 12000: 0.4, 15000: 0.5,
                17999: 0.5, 18000: 0.6, 149999: 0.6}
    assert {s: composite_alpha(cfg, s) for s in expected} == pytest.approx(expected)
    fixed = load_config(FORK_YAML, ["use_composite_loss=true"])
    assert [composite_alpha(fixed, s) for s in (0, 3000, 10**5)] == [0.6, 0.6, 0.6]


@pytest.mark.parametrize("override,key", [
    ("dataset.n_classes=41", "use_composite_loss"),
    ("alpha_schedule_start=0.9", "alpha_schedule_start"),
])
def test_composite_config_mistakes_name_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(FORK_YAML, ["use_composite_loss=true", "use_alpha_schedule=true", override])
    assert info.value.key == key and "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------
# 3. PER and DER on hand-made diphone paths


def frames(*spec: dict[int, float]) -> np.ndarray:
    """[T, 1681] logits: each frame the log of the given probabilities, the rest spread evenly."""
    out = np.empty((len(spec), P * P))
    for t, probs in enumerate(spec):
        rest = (1.0 - sum(probs.values())) / (P * P - len(probs))
        row = np.full(P * P, rest)
        for c, p in probs.items():
            row[c] = p
        out[t] = np.log(row)
    return out


BLANK = {0: 0.9}
# Trial A: the first phoneme AH (3) in both encodings on consecutive frames (a repeat without
# a blank: one AH), AH again after a blank (a second AH), B (7) twice (one B), then a frame
# whose best diphone ends in '|' (40) but whose phoneme sums favour AE (2): 0.25 + 0.25 > 0.30.
TRIAL_A = frames(BLANK, {3: 0.9}, {d(40, 3): 0.9}, BLANK, {d(3, 3): 0.9}, {d(3, 7): 0.9}, {d(3, 7): 0.9},
                 {d(7, 40): 0.30, d(1, 2): 0.25, d(5, 2): 0.25}, BLANK)
TRIAL_A_DIPHONES = [3, d(3, 3), d(3, 7), d(7, 2)]  # fork encoding
TRIAL_A_PHONEMES = [3, 3, 7, 2]  # seq_class_ids_phoneme
# Trial B: old encoding of the first phoneme (40 * 41 + 9), AA (1) twice with a blank between.
TRIAL_B = frames({d(40, 9): 0.9}, {d(9, 1): 0.9}, BLANK, {d(9, 1): 0.9}, {d(1, 40): 0.9})
TRIAL_B_DIPHONES = [d(40, 9), d(9, 1), d(1, 40)]  # no phoneme field: targets are id % 41 = [9, 1, 40]


def fork_decode_phonemes(logits: np.ndarray) -> list[int]:
    """The fork trainer's PER decoding, restated: softmax, sum over ids i::41, argmax, merge, drop blanks."""
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    phoneme_probs = np.stack([probs[:, i::P].sum(-1) for i in range(P)], axis=-1)
    path = np.argmax(phoneme_probs, -1).tolist()
    merged = [p for t, p in enumerate(path) if t == 0 or p != path[t - 1]]
    return [p for p in merged if p != 0]


def test_decoding_hand_made_paths():
    assert greedy_decode(TRIAL_A, len(TRIAL_A), 1681).tolist() == [3, 3, 7, 2]
    assert greedy_decode(TRIAL_B, len(TRIAL_B), 1681).tolist() == [9, 1, 1, 40]
    assert greedy_decode_diphones(TRIAL_A, len(TRIAL_A)).tolist() == [3, d(40, 3), d(3, 3), d(3, 7), d(7, 40)]
    assert greedy_decode_diphones(TRIAL_B, len(TRIAL_B)).tolist() == [d(40, 9), d(9, 1), d(9, 1), d(1, 40)]
    # the rule replaced: id % 41 of the 1681-way argmax, which ends trial A in '|' not AE
    assert [p % P for p in greedy_decode_diphones(TRIAL_A, len(TRIAL_A))] != [3, 3, 7, 2]


def test_decoding_matches_the_fork_rule_on_random_logits():
    rng = np.random.default_rng(0)
    for _ in range(300):
        logits = rng.normal(size=(int(rng.integers(1, 20)), P * P)) * rng.uniform(0.5, 4)
        assert greedy_decode(logits, len(logits), 1681).tolist() == fork_decode_phonemes(logits)


class FixedLogits(torch.nn.Module):
    """Stands in for a model: returns the next prepared [B, T, 1681] logits."""

    def __init__(self, logits: list[torch.Tensor]):
        super().__init__()
        self.queue = list(logits)

    def forward(self, x, day_idx):
        return self.queue.pop(0)


def batch(day: int, logits: np.ndarray, diphones: list[int], phonemes: list[int] | None) -> dict:
    out = {
        "input_features": torch.zeros(1, len(logits), 512),
        "seq_class_ids": torch.tensor([diphones]),
        "n_time_steps": torch.tensor([len(logits)]),
        "phone_seq_lens": torch.tensor([len(diphones)]),
        "day_indicies": torch.tensor([day]),
        "block_nums": torch.tensor([1]),
        "trial_nums": torch.tensor([0]),
        "transcriptions": torch.zeros(1, 4, dtype=torch.int32),
    }
    if phonemes is not None:
        out["seq_class_ids_phoneme"] = torch.tensor([phonemes])
        out["phone_seq_lens_phoneme"] = torch.tensor([len(phonemes)])
    return out


def test_per_and_der_follow_the_fork_trainer():
    cfg = load_config(FORK_YAML, ["model.patch_size=0", "dataset.dataset_probability_val=None"])
    batches = [batch(1, TRIAL_A, TRIAL_A_DIPHONES, TRIAL_A_PHONEMES), batch(2, TRIAL_B, TRIAL_B_DIPHONES, None)]
    model = FixedLogits([torch.tensor(TRIAL_A[None], dtype=torch.float32), torch.tensor(TRIAL_B[None], dtype=torch.float32)])
    result = evaluate(model, batches, cfg, torch.device("cpu"), keep_trials=True)
    # A: decoded [3, 3, 7, 2] vs [3, 3, 7, 2]: 0 edits of 4. B: [9, 1, 1, 40] vs [9, 1, 40]: 1 of 3.
    assert [t.target.tolist() for t in result.trials] == [[3, 3, 7, 2], [9, 1, 40]]
    assert [t.edit_distance for t in result.trials] == [0, 1]
    assert result.per == pytest.approx(1 / 7) and result.per_day == pytest.approx({1: 0.0, 2: 1 / 3})
    # DER: A [3, 1643, 126, 130, 327] vs [3, 126, 130, 289]: 2 edits; B [1649, 370, 370, 81] vs [1649, 370, 81]: 1.
    assert result.der == pytest.approx(3 / 7) and result.der_day == pytest.approx({1: 0.5, 2: 1 / 3})
    # the fork's PER from its restated rule, trial by trial
    fork = PERCounter()
    fork.add(1, fork_decode_phonemes(TRIAL_A), TRIAL_A_PHONEMES)
    fork.add(2, fork_decode_phonemes(TRIAL_B), [9, 1, 40])
    assert result.per == fork.total
    assert edit_distance([3, d(40, 3), d(3, 3), d(3, 7), d(7, 40)], TRIAL_A_DIPHONES) == 2


def test_phoneme_targets_read_both_first_phoneme_encodings():
    diphones = torch.tensor([[3, d(3, 7), d(7, 40), 0], [d(40, 3), d(3, 7), d(7, 40), 0], [d(40, 5), d(5, 0), 0, 0]])
    targets, lengths = phoneme_targets({"seq_class_ids": diphones, "phone_seq_lens": torch.tensor([3, 3, 2])}, 1681)
    assert lengths.tolist() == [3, 3, 1]  # a diphone ending in the blank carries no phoneme
    assert targets.tolist() == [[3, 7, 40, 0], [3, 7, 40, 0], [5, 0, 0, 0]]
    stored = {"seq_class_ids": diphones, "phone_seq_lens": torch.tensor([3, 3, 2]),
              "seq_class_ids_phoneme": torch.tensor([[9, 9]]), "phone_seq_lens_phoneme": torch.tensor([2])}
    assert phoneme_targets(stored, 1681)[0].tolist() == [[9, 9]]  # the file's own field wins


def test_loader_reads_the_phoneme_field(fork_data):
    from trainer.data import make_loaders

    cfg = load_config(FORK_YAML, [f"dataset.dataset_dir={fork_data}", "dataset.num_dataloader_workers=0",
                                  "num_training_batches=1"])
    train_loader, _ = make_loaders(cfg)
    b = next(iter(train_loader))
    derived, derived_lens = phoneme_targets({k: v for k, v in b.items() if "phoneme" not in k}, 1681)
    assert torch.equal(b["phone_seq_lens_phoneme"], derived_lens)
    assert torch.equal(b["seq_class_ids_phoneme"][:, : derived.shape[1]], derived)


# ---------------------------------------------------------------------------------------
# 4. Checkpoints laid out like the fork's (and the reference's)

SMALL = dict(neural_dim=6, n_units=8, n_days=3, n_classes=P * P, n_layers=2, patch_size=3, patch_stride=2)


def fork_state(seed: int = 1) -> dict[str, torch.Tensor]:
    """A bidirectional diphone model's weights in the fork's layout (torch.compile prefix, stacked days)."""
    g = torch.Generator().manual_seed(seed)
    n, dim, units = SMALL["n_days"], SMALL["neural_dim"], SMALL["n_units"]
    gru = torch.nn.GRU(dim * SMALL["patch_size"], units, SMALL["n_layers"], batch_first=True, bidirectional=True)
    state = {f"gru.{k}": torch.randn(v.shape, generator=g) * 0.3 for k, v in gru.state_dict().items()}
    state.update({
        "day_weights": torch.eye(dim).repeat(n, 1, 1) + 0.1 * torch.randn(n, dim, dim, generator=g),
        "day_biases": 0.1 * torch.randn(n, dim, generator=g),
        "out.weight": torch.randn(P * P, 2 * units, generator=g),
        "out.bias": torch.randn(P * P, generator=g),
        "h0": torch.randn(1, 1, units, generator=g),
    })
    return {f"_orig_mod.{k}": v for k, v in state.items()}


def fork_forward(state: dict[str, torch.Tensor], x: torch.Tensor, days: torch.Tensor) -> torch.Tensor:
    """The fork's forward pass, restated: per-trial day matrix, softsign, patches, GRU, head."""
    s = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
    h = F.softsign(torch.einsum("btd,bdk->btk", x, s["day_weights"][days]) + s["day_biases"][days].unsqueeze(1))
    patches = h.unfold(1, SMALL["patch_size"], SMALL["patch_stride"])  # [B, P, D, size]
    h = patches.permute(0, 1, 3, 2).reshape(x.shape[0], patches.shape[1], -1)
    gru = torch.nn.GRU(h.shape[-1], SMALL["n_units"], SMALL["n_layers"], batch_first=True, bidirectional=True)
    gru.load_state_dict({k[4:]: v for k, v in s.items() if k.startswith("gru.")})
    h0 = s["h0"].expand(2 * SMALL["n_layers"], x.shape[0], SMALL["n_units"]).contiguous()
    return gru(h, h0)[0] @ s["out.weight"].T + s["out.bias"]


def fork_args_yaml() -> dict:
    raw = read_config_file(FORK_YAML)
    raw["model"].update(n_input_features=6, n_units=8, n_layers=2, patch_size=3, patch_stride=2)
    raw["dataset"].update(neural_dim=6, sessions=["s0", "s1", "s2"], dataset_probability_val=None, days_per_batch=2)
    return raw


@pytest.fixture
def fork_checkpoint(tmp_path) -> Path:
    """``checkpoint/best_checkpoint`` and ``args.yaml`` as the fork's trainer writes them."""
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    torch.save({"model_state_dict": fork_state(), "optimizer_state_dict": {}, "scheduler_state_dict": {},
                "val_PER": 0.3, "val_loss": 1.5}, folder / "best_checkpoint")
    (folder / "args.yaml").write_text(yaml.safe_dump(fork_args_yaml()))
    return folder / "best_checkpoint"


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(2)
    return torch.randn(3, 17, 6, generator=g), torch.tensor([2, 0, 2])


def test_load_model_reads_a_fork_checkpoint(fork_checkpoint, inputs):
    expected = fork_forward(fork_state(), *inputs)
    for path in (fork_checkpoint, fork_checkpoint.parent):
        trained = load_model(path)
        assert trained.model.bidirectional and trained.sessions == ["s0", "s1", "s2"]
        assert trained.info["val_PER"] == 0.3 and trained.config.model.bidirectional
        with torch.no_grad():
            torch.testing.assert_close(trained.model(*inputs), expected, rtol=1e-5, atol=1e-5)


def test_init_from_a_fork_checkpoint(fork_checkpoint, inputs):
    cfg = config_from_dict(fork_args_yaml(), ["init_from_checkpoint=true", f"init_checkpoint_path={fork_checkpoint}"])
    model = setup_model(cfg, init_weights=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(*inputs), fork_forward(fork_state(), *inputs), rtol=1e-5, atol=1e-5)


def test_load_model_reads_a_reference_checkpoint(tmp_path, inputs):
    """The NEJM reference's layout: day_weights.N / day_biases.N [1, D], compile prefix, args.yaml."""
    torch.manual_seed(4)
    model = GRUDecoder(**{**SMALL, "n_classes": P})
    state = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    torch.save({"model_state_dict": state, "optimizer_state_dict": {}, "val_PER": 0.2}, tmp_path / "best_checkpoint")
    raw = fork_args_yaml()
    for key in FORK_KEYS:
        raw.pop(key)
    raw["model"].pop("bidirectional")
    raw["dataset"]["n_classes"] = P
    (tmp_path / "args.yaml").write_text(yaml.safe_dump(raw))
    trained = load_model(tmp_path / "best_checkpoint")
    with torch.no_grad():
        assert torch.equal(trained.model.eval()(*inputs), model.eval()(*inputs))
    assert not trained.model.bidirectional and trained.model.n_classes == P


def test_load_model_anything_else_is_one_line(tmp_path, fork_checkpoint):
    cases = {}
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    cases["junk.pt"] = "not a readable torch file"
    torch.save([1, 2], tmp_path / "list.pt")
    cases["list.pt"] = "holds a list"
    torch.save({"model_state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    cases["other.pt"] = "not a GRU decoder checkpoint"
    for name, reason in cases.items():
        with pytest.raises(ModelFileError, match=reason) as info:
            load_model(tmp_path / name)
        assert "\n" not in str(info.value) and name in str(info.value)
    (fork_checkpoint.parent / "args.yaml").unlink()  # the patching is unknown without it
    with pytest.raises(ModelFileError, match="model.patch_stride beside it"):
        load_model(fork_checkpoint)


# ---------------------------------------------------------------------------------------
# Several config mistakes at once: every one named, one line each, up to a limit


def test_every_wrong_key_is_named(capsys, tmp_path):
    bad = ["dataset.batch_size=-1", "composite_loss_alpha=1.5", "model.bogus=1", "alpha_schedule_step_interval=0",
           "gpu_number=[1]"]
    with pytest.raises(ConfigError) as info:
        load_config(FORK_YAML, bad)
    lines = str(info.value).splitlines()
    assert sorted(line.split(": ")[0] for line in lines) == ["alpha_schedule_step_interval", "composite_loss_alpha",
                                                             "dataset.batch_size", "gpu_number", "model.bogus"]
    assert "composite_loss_alpha: Input should be less than or equal to 1 (got 1.5)" in lines
    with pytest.raises(ConfigError) as info:
        load_config(FORK_YAML, [f"unknown_{i}=1" for i in range(13)])
    lines = str(info.value).splitlines()
    assert len(lines) == 11 and lines[0] == "unknown_0: unknown key" and lines[-1] == "... and 3 more problems"
    args = ["--config", str(FORK_YAML), "--data", str(tmp_path), "--output", str(tmp_path / "o"), "--dry-run"]
    assert main([*args, *[a for s in bad for a in ("--set", s)]]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("config error: ") and len(err) == 5 and "Traceback" not in "".join(err)


def test_phoneme_field_without_its_length_names_the_trial(tmp_path):
    from trainer.data import DataError, check_data

    spec = SyntheticSpec(n_sessions=1, train_trials=2, val_trials=0, n_features=8, diphones=True, seed=1)
    names = generate(tmp_path, spec)
    path = tmp_path / names[0] / "data_train.hdf5"
    with h5py.File(path, "a") as f:
        del f["trial_0001"].attrs["seq_len_phoneme"]
    cfg = load_config(FORK_YAML, [f"dataset.dataset_dir={tmp_path}", f"dataset.sessions=[{names[0]}]",
                                  "dataset.dataset_probability_val=None", "dataset.days_per_batch=1",
                                  "dataset.neural_dim=8", "model.n_input_features=8"])
    with pytest.raises(DataError, match="trial_0001: has 'seq_class_ids_phoneme' but no attribute 'seq_len_phoneme'"):
        check_data(cfg)
