"""The decoder matches the public reference model: parameters, checkpoint format, forward pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.checkpoint import CheckpointError, load_into, read_model_state
from trainer.config import REFERENCE_CONFIG, load_config
from trainer.model import GRUDecoder, build_model, count_parameters, model_for, output_lengths


class ReferenceLayout(nn.Module):
    """Written from the NEJM paper's / repository's description of its GRU decoder, not its code:
    per-day affine layer (ParameterLists, bias [1, D]) stacked per trial and applied with an
    einsum, softsign, patches built by sliding a window over time (patch-major, then time
    within the patch, then features), a batch-first GRU started from a learnable h0, a linear head."""

    def __init__(self, D, units, days, classes, layers, patch, stride):
        super().__init__()
        self.patch, self.stride, self.layers, self.units = patch, stride, layers, units
        self.day_weights = nn.ParameterList([nn.Parameter(torch.randn(D, D) * 0.1 + torch.eye(D)) for _ in range(days)])
        self.day_biases = nn.ParameterList([nn.Parameter(torch.randn(1, D) * 0.1) for _ in range(days)])
        self.gru = nn.GRU(D * max(patch, 1), units, layers, batch_first=True)
        self.out = nn.Linear(units, classes)
        self.h0 = nn.Parameter(torch.randn(1, 1, units))

    def forward(self, x, day_idx):
        w = torch.stack([self.day_weights[int(d)] for d in day_idx])
        b = torch.stack([self.day_biases[int(d)] for d in day_idx])  # [B, 1, D]
        x = nn.functional.softsign(torch.einsum("btd,bdk->btk", x, w) + b)
        if self.patch > 0:
            starts = range(0, x.shape[1] - self.patch + 1, self.stride)
            x = torch.stack([x[:, s : s + self.patch, :].reshape(x.shape[0], -1) for s in starts], dim=1)
        h = self.h0.expand(self.layers, x.shape[0], self.units).contiguous()
        return self.out(self.gru(x, h)[0])


def reference_parameter_count(D, units, days, classes, layers, patch):
    day = days * (D * D + D)
    gru = 0
    for layer in range(layers):
        inp = D * max(patch, 1) if layer == 0 else units
        gru += 3 * units * (inp + units) + 2 * 3 * units
    return day + gru + units * classes + classes + units


def test_parameter_count_equals_reference():
    cfg = load_config(REFERENCE_CONFIG)
    model = model_for(cfg)
    assert count_parameters(model) == reference_parameter_count(512, 768, 45, 41, 5, 14)
    small = ReferenceLayout(6, 8, 3, 41, 2, 4, 2)
    ours = GRUDecoder(neural_dim=6, n_units=8, n_days=3, n_classes=41, n_layers=2, patch_size=4, patch_stride=2)
    assert count_parameters(ours) == count_parameters(small) == reference_parameter_count(6, 8, 3, 41, 2, 4)
    assert sorted(n for n, _ in ours.named_parameters()) == sorted(n for n, _ in small.named_parameters())


def test_reference_initialisation():
    model = GRUDecoder(neural_dim=5, n_units=8, n_days=2, n_classes=41, n_layers=2)
    assert torch.equal(model.day_weights[1], torch.eye(5))
    assert model.day_biases[0].shape == (1, 5) and not model.day_biases[0].any()
    w = model.gru.weight_hh_l1.detach()  # orthogonal_ on the stacked [3U, U] matrix: orthonormal columns
    assert torch.allclose(w.T @ w, torch.eye(8), atol=1e-5)


@pytest.mark.parametrize("patch,stride", [(4, 2), (5, 5), (0, 0)])
def test_reference_checkpoint_loads_and_forward_matches(tmp_path, patch, stride):
    torch.manual_seed(0)
    D, U, days, C, L = 12, 16, 3, 41, 2
    ref = ReferenceLayout(D, U, days, C, L, patch, stride).eval()
    state = {"_orig_mod." + k: v for k, v in ref.state_dict().items()}  # saved from a compiled model
    assert state["_orig_mod.day_biases.0"].shape == (1, D)
    path = tmp_path / "best_checkpoint"
    torch.save({"model_state_dict": state, "optimizer_state_dict": {}, "val_PER": 0.2, "val_loss": 1.0}, path)

    model = GRUDecoder(neural_dim=D, n_units=U, n_days=days, n_classes=C, n_layers=L, patch_size=patch,
                       patch_stride=stride)
    load_into(model, read_model_state(str(path)), str(path))
    model.eval()
    x = torch.randn(5, 37, D)
    days_idx = torch.tensor([2, 0, 2, 1, 0])
    with torch.no_grad():
        expected, got = ref(x, days_idx), model(x, days_idx)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)


def test_mismatched_checkpoint_is_one_line(tmp_path):
    ref = ReferenceLayout(4, 8, 2, 41, 1, 0, 0)
    torch.save({"model_state_dict": ref.state_dict()}, tmp_path / "c.pt")
    model = GRUDecoder(neural_dim=4, n_units=8, n_days=3, n_classes=41, n_layers=1)
    with pytest.raises(CheckpointError, match="^init_checkpoint_path: .*missing"):
        load_into(model, read_model_state(str(tmp_path / "c.pt")), "c.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_model_state(str(tmp_path / "nope.pt"))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_model_state(str(tmp_path / "junk.pt"))


def test_output_lengths_match_patch_count():
    model = GRUDecoder(neural_dim=3, n_units=4, n_days=1, n_classes=41, n_layers=1, patch_size=14, patch_stride=4)
    for T in (14, 15, 17, 18, 100):
        out = model(torch.zeros(1, T, 3), torch.tensor([0]))
        assert out.shape[1] == int(output_lengths(torch.tensor([T]), 14, 4)[0])


def test_autocast_forward_and_backward():
    """The AMP path (bf16 on CPU here; bf16/fp16 on CUDA in a job) gives the fp32 loss and gradients
    to bf16's precision (exact values: tests/trainer/test_bite_maths.py)."""
    from trainer.augment import transform
    from trainer.validation import ctc_loss

    cfg = load_config(REFERENCE_CONFIG, ["model.n_units=8", "model.n_layers=1", "model.patch_size=4",
                                         "model.patch_stride=2", "dataset.data_transforms.static_gain_std=0.1",
                                         "dataset.data_transforms.random_walk_std=0.1"])
    torch.manual_seed(0)
    model = build_model(cfg.model, n_days=3, n_classes=41)
    x, n = torch.randn(4, 40, 512), torch.tensor([40, 38, 30, 35])
    labels, label_lens = torch.randint(1, 41, (4, 6)), torch.tensor([6, 5, 4, 6])

    def loss_and_grad(dtype):
        model.zero_grad()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            xt, nt = transform(x, n, cfg.dataset.data_transforms, train=True,
                               generator=torch.Generator().manual_seed(0))
            logits = model(xt, torch.tensor([2, 0, 2, 1]))
            loss = ctc_loss(logits, labels, output_lengths(nt, 4, 2), label_lens)
        loss.backward()
        return loss, model.day_weights[1].grad.clone()

    (loss32, grad32), (loss16, grad16) = loss_and_grad(None), loss_and_grad(torch.bfloat16)
    assert loss16.dtype == torch.float32 and loss32.item() > 1
    assert loss16.item() == pytest.approx(loss32.item(), rel=2e-2)
    assert torch.nn.functional.cosine_similarity(grad16.flatten(), grad32.flatten(), dim=0) > 0.8  # measured 0.88
