"""A bidirectional decoder's size and outputs; the day layer's dropout, computed by hand."""

from __future__ import annotations

import torch
from torch import nn

from trainer.config import REFERENCE_CONFIG, load_config
from trainer.model import build_model, count_parameters


def _model(**model_keys):
    base = {"model.n_input_features": 6, "dataset.neural_dim": 6, "model.n_units": 8, "model.n_layers": 2,
            "model.patch_size": 2, "model.patch_stride": 1, "model.rnn_dropout": 0.0,
            "model.input_network.input_layer_dropout": 0.0}
    base.update(model_keys)
    cfg = load_config(REFERENCE_CONFIG, [f"{k}={v}" for k, v in base.items()])
    torch.manual_seed(0)
    return build_model(cfg.model, n_days=2, n_classes=41)


def test_bidirectional_parameter_count():
    # day layers 2 x (6x6 + 6) = 84; h0 8.
    # one direction: GRU 3*8*(12+8) + 6*8 = 528 (patch of 2 x 6 features) and 3*8*(8+8) + 48 = 432; head 8*41 + 41 = 369
    assert count_parameters(_model()) == 84 + 528 + 432 + 369 + 8
    # both: each layer twice, the second layer reads 2*8 features, the head 16: 2*528, 2*(3*8*(16+8)+48), 16*41+41
    assert count_parameters(_model(**{"model.bidirectional": "true"})) == 84 + 1056 + 1248 + 697 + 8


def test_bidirectional_outputs_see_the_future():
    x = torch.randn(2, 9, 6)
    days = torch.tensor([0, 1])
    later = x.clone()
    later[:, -1] += 1.0  # only the last bin changes
    for bidirectional, first_frame_changes in (("false", False), ("true", True)):
        model = _model(**{"model.bidirectional": bidirectional}).eval()
        with torch.no_grad():
            a, b = model(x, days), model(later, days)
        assert a.shape == (2, 8, 41)
        assert (not torch.allclose(a[:, 0], b[:, 0])) == first_frame_changes, bidirectional
        assert not torch.allclose(a[:, -1], b[:, -1])


def test_day_layer_dropout_is_applied_in_training_only():
    model = _model(**{"model.input_network.input_layer_dropout": 0.5, "model.n_layers": 1, "model.patch_size": 0,
                      "model.patch_stride": 0})
    with torch.no_grad():
        for w in model.day_weights:
            w.add_(0.1 * torch.randn_like(w))
    x, days = torch.randn(3, 5, 6), torch.tensor([1, 0, 1])

    def by_hand(seed):  # softsign(x W_day + b_day), dropout p=0.5, GRU from h0, linear head
        torch.manual_seed(seed)
        w = torch.stack([model.day_weights[int(d)] for d in days])
        b = torch.stack([model.day_biases[int(d)] for d in days])
        h = nn.functional.dropout(nn.functional.softsign(torch.bmm(x, w) + b), 0.5, training=True)
        out, _ = model.gru(h, model.h0.expand(1, 3, 8).contiguous())
        return model.out(out)

    model.train()
    with torch.no_grad():
        torch.manual_seed(1)
        got1 = model(x, days)
        torch.manual_seed(2)
        got2 = model(x, days)
        assert torch.allclose(got1, by_hand(1), atol=1e-6) and torch.allclose(got2, by_hand(2), atol=1e-6)
        assert not torch.allclose(got1, got2)
        model.eval()
        assert torch.equal(model(x, days), model(x, days))


def test_patches_of_one_bin_with_a_stride_subsample_time():
    from trainer.model import GRUDecoder

    torch.manual_seed(0)
    strided = GRUDecoder(neural_dim=6, n_units=8, n_days=1, n_classes=41, n_layers=1, patch_size=1, patch_stride=2)
    plain = GRUDecoder(neural_dim=6, n_units=8, n_days=1, n_classes=41, n_layers=1)
    plain.load_state_dict(strided.state_dict())
    x, day = torch.randn(2, 9, 6), torch.tensor([0, 0])
    with torch.no_grad():
        got = strided.eval()(x, day)
        assert got.shape == (2, 5, 41) and int(strided.output_lengths(torch.tensor([9]))[0]) == 5
        assert torch.allclose(got, plain.eval()(x[:, ::2], day), atol=1e-6)


def test_the_decoder_has_no_recurrent_dropout_unless_asked():
    from trainer.model import GRUDecoder

    torch.manual_seed(0)
    model = GRUDecoder(neural_dim=6, n_units=8, n_days=1, n_classes=41, n_layers=2).train()
    x, day = torch.randn(2, 5, 6), torch.tensor([0, 0])
    with torch.no_grad():
        trained = model(x, day)
        assert torch.equal(trained, model(x, day))  # training mode, yet deterministic
        assert torch.allclose(trained, model.eval()(x, day))  # and what evaluation gives
