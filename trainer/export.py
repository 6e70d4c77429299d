"""The trained model as the job's artifact, loadable without the training code's internals.

The model directory (``/opt/ml/model`` in a SageMaker job, ``<output>/model`` locally) holds

- ``model.pt``: ``{"model_state_dict", "model_args", "n_classes", "step", "weights",
  "best_val_PER", "best_val_loss"}`` with the reference's parameter names (no ``_orig_mod.``
  prefix); ``weights`` is ``best`` (the best validation step's) or ``final``; with
  ``save_final_model`` the last step's weights also go to ``final_model.pt``;
- ``config.yaml``: the full training config (reference format, every key);
- ``sessions.json``: the session names, in day-index order (day layer ``N`` is session ``N``).

``load_model(path)`` needs only :mod:`trainer.model`, :mod:`trainer.config` and torch.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .checkpoint import MODEL_STATE, save_atomic
from .config import TrainConfig, config_from_dict, dump_config
from .model import GRUDecoder, clean_state_dict

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.yaml"
SESSIONS_FILE = "sessions.json"


@dataclass
class TrainedModel:
    model: GRUDecoder
    config: Optional[TrainConfig]
    sessions: list[str]
    info: dict[str, Any] = field(default_factory=dict)


def model_args(model: GRUDecoder) -> dict[str, Any]:
    return {
        "neural_dim": model.neural_dim,
        "n_units": model.n_units,
        "n_days": model.n_days,
        "n_classes": model.n_classes,
        "rnn_dropout": model.gru.dropout,
        "input_dropout": model.day_layer_dropout.p,
        "n_layers": model.n_layers,
        "patch_size": model.patch_size,
        "patch_stride": model.patch_stride,
        "bidirectional": model.bidirectional,
    }


def export_model(
    model_dir: Path,
    model: GRUDecoder,
    state_dict: dict[str, torch.Tensor],
    cfg: TrainConfig,
    *,
    file_name: str = MODEL_FILE,
    **info: Any,
) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    payload = {MODEL_STATE: clean_state_dict(state_dict), "model_args": model_args(model), **info}
    path = model_dir / file_name
    save_atomic(payload, path)
    (model_dir / CONFIG_FILE).write_text(dump_config(cfg))
    (model_dir / SESSIONS_FILE).write_text(json.dumps(list(cfg.dataset.sessions), indent=1) + "\n")
    log.info("model written to %s", path)
    return path


def load_model(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> TrainedModel:
    """Load ``model.pt`` (or a model directory holding it) in eval mode."""
    path = Path(path)
    directory, file = (path, path / MODEL_FILE) if path.is_dir() else (path.parent, path)
    payload = torch.load(file, map_location=device, weights_only=False)
    model = GRUDecoder(**payload["model_args"])
    model.load_state_dict(clean_state_dict(payload[MODEL_STATE]))
    model.to(device).eval()
    cfg = None
    if (directory / CONFIG_FILE).exists():
        import yaml

        cfg = config_from_dict(yaml.safe_load((directory / CONFIG_FILE).read_text()))
    sessions_file = directory / SESSIONS_FILE
    sessions = json.loads(sessions_file.read_text()) if sessions_file.exists() else (
        list(cfg.dataset.sessions) if cfg else []
    )
    info = {k: v for k, v in payload.items() if k not in (MODEL_STATE, "model_args")}
    return TrainedModel(model=model, config=cfg, sessions=sessions, info=info)
