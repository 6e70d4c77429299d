"""The reference GRU phoneme decoder (NEJM brain-to-text baseline).

Same parameters, names and initialisation as the reference ``GRUDecoder``, so its
checkpoints load directly (after dropping ``torch.compile``'s ``_orig_mod.`` prefix):

- one input layer per recording day: ``day_weights.N`` [D, D] (identity at start) and
  ``day_biases.N`` [1, D] (zeros), followed by softsign and dropout;
- optional patching: ``patch_size`` consecutive bins, every ``patch_stride`` bins, are
  concatenated into one GRU input of ``patch_size * D`` features;
- an ``n_layers`` GRU (xavier input weights, orthogonal recurrent weights) with a
  learnable initial state ``h0`` and a linear head ``out`` to ``n_classes``.

This module imports only torch and the config, so a trained model loads without the
training code (see :func:`trainer.export.load_model`).
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import nn

from .config import ModelConfig, TrainConfig

COMPILE_PREFIX = "_orig_mod."


class GRUDecoder(nn.Module):
    def __init__(
        self,
        *,
        neural_dim: int,
        n_units: int,
        n_days: int,
        n_classes: int,
        rnn_dropout: float = 0.0,
        input_dropout: float = 0.0,
        n_layers: int = 5,
        patch_size: int = 0,
        patch_stride: int = 0,
        bidirectional: bool = False,
    ):
        super().__init__()
        self.neural_dim = neural_dim
        self.n_units = n_units
        self.n_days = n_days
        self.n_classes = n_classes
        self.n_layers = n_layers
        self.patch_size = patch_size
        self.patch_stride = patch_stride
        self.bidirectional = bidirectional

        # Parameters are created in the reference's order so one seed gives the same init.
        self.day_layer_activation = nn.Softsign()
        self.day_weights = nn.ParameterList([nn.Parameter(torch.eye(neural_dim)) for _ in range(n_days)])
        self.day_biases = nn.ParameterList([nn.Parameter(torch.zeros(1, neural_dim)) for _ in range(n_days)])
        self.day_layer_dropout = nn.Dropout(input_dropout)

        input_size = neural_dim * patch_size if patch_size > 0 else neural_dim
        self.gru = nn.GRU(
            input_size=input_size,
            hidden_size=n_units,
            num_layers=n_layers,
            dropout=rnn_dropout if n_layers > 1 else 0.0,
            batch_first=True,
            bidirectional=bidirectional,
        )
        for name, param in self.gru.named_parameters():
            if "weight_hh" in name:
                nn.init.orthogonal_(param)
            if "weight_ih" in name:
                nn.init.xavier_uniform_(param)

        directions = 2 if bidirectional else 1
        self.out = nn.Linear(n_units * directions, n_classes)
        nn.init.xavier_uniform_(self.out.weight)
        self.h0 = nn.Parameter(nn.init.xavier_uniform_(torch.zeros(1, 1, n_units)))

    def day_layer(self, x: torch.Tensor, day_idx: torch.Tensor) -> torch.Tensor:
        """Each trial through its own day's affine layer.

        One matmul per distinct day in the batch (batches hold a few days) instead of
        stacking a [D, D] matrix per trial; the maths is the reference's.
        """
        parts, rows = [], []
        for day in torch.unique(day_idx).tolist():
            idx = (day_idx == day).nonzero(as_tuple=True)[0]
            parts.append(torch.matmul(x[idx], self.day_weights[day]) + self.day_biases[day])
            rows.append(idx)
        if len(parts) == 1:
            return parts[0]
        # Back to batch order; concatenating keeps autocast's output dtype (no in-place copy).
        return torch.cat(parts)[torch.argsort(torch.cat(rows))]

    def patch(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> [B, n_patches, patch_size * D], time-major inside a patch."""
        if self.patch_size <= 0:
            return x
        patches = x.unfold(1, self.patch_size, self.patch_stride)  # [B, P, D, patch_size]
        return patches.transpose(2, 3).reshape(x.shape[0], patches.shape[1], -1)

    def forward(
        self,
        x: torch.Tensor,
        day_idx: torch.Tensor,
        states: Optional[torch.Tensor] = None,
        return_state: bool = False,
    ):
        x = self.day_layer_activation(self.day_layer(x, day_idx))
        if self.day_layer_dropout.p > 0:  # as the reference: no dropout call (and no RNG draw) at 0
            x = self.day_layer_dropout(x)
        x = self.patch(x)
        if states is None:
            layers = self.n_layers * (2 if self.bidirectional else 1)
            states = self.h0.expand(layers, x.shape[0], self.n_units).contiguous()
        output, hidden = self.gru(x, states)
        logits = self.out(output)
        return (logits, hidden) if return_state else logits

    def output_lengths(self, n_time_steps: torch.Tensor) -> torch.Tensor:
        """Number of output frames per trial after patching (the CTC input lengths)."""
        return output_lengths(n_time_steps, self.patch_size, self.patch_stride)


def output_lengths(n_time_steps: torch.Tensor, patch_size: int, patch_stride: int) -> torch.Tensor:
    if patch_size <= 0:
        return n_time_steps.to(torch.int32)
    return (torch.div(n_time_steps - patch_size, patch_stride, rounding_mode="floor") + 1).to(torch.int32)


def build_model(model_cfg: ModelConfig, *, n_days: int, n_classes: int) -> GRUDecoder:
    return GRUDecoder(
        neural_dim=model_cfg.n_input_features,
        n_units=model_cfg.n_units,
        n_days=n_days,
        n_classes=n_classes,
        rnn_dropout=model_cfg.rnn_dropout,
        input_dropout=model_cfg.input_network.input_layer_dropout,
        n_layers=model_cfg.n_layers,
        patch_size=model_cfg.patch_size,
        patch_stride=model_cfg.patch_stride,
        bidirectional=model_cfg.bidirectional,
    )


def model_for(cfg: TrainConfig) -> GRUDecoder:
    return build_model(cfg.model, n_days=len(cfg.dataset.sessions), n_classes=cfg.n_classes)


def clean_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict in this model's layout: without ``torch.compile``'s ``_orig_mod.`` (or DDP's
    ``module.``) prefixes, and with the lab fork's stacked day layers (``day_weights``
    [n_days, D, D], ``day_biases`` [n_days, D]) split into ``day_weights.N`` / ``day_biases.N``."""
    out = {}
    for key, value in state.items():
        for prefix in (COMPILE_PREFIX, "module."):
            while key.startswith(prefix):
                key = key[len(prefix) :]
        out[key.replace("." + COMPILE_PREFIX, ".")] = value
    return unstack_day_layers(out)


def unstack_day_layers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The fork's ``day_weights`` [n, D, D] / ``day_biases`` [n, D] as ``day_weights.N`` [D, D] /
    ``day_biases.N`` [1, D]; any other state is returned unchanged."""
    weights, biases = state.get("day_weights"), state.get("day_biases")
    if not isinstance(weights, torch.Tensor) or weights.dim() != 3:
        return state
    out = {k: v for k, v in state.items() if k not in ("day_weights", "day_biases")}
    for day in range(weights.shape[0]):
        out[f"day_weights.{day}"] = weights[day].clone()
        if isinstance(biases, torch.Tensor):
            out[f"day_biases.{day}"] = biases[day].reshape(1, -1).clone()
    return out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
