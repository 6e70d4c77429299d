"""The trained model as the job's artifact, loadable without the training code's internals.

The model directory (``/opt/ml/model`` in a SageMaker job, ``<output>/model`` locally) holds

- ``model.pt``: ``{"model_state_dict", "model_args", "n_classes", "step", "weights",
  "best_val_PER", "best_val_loss"}`` with the reference's parameter names (no ``_orig_mod.``
  prefix); ``weights`` is ``best`` (the best validation step's) or ``final``; with
  ``save_final_model`` the last step's weights also go to ``final_model.pt``;
- ``config.yaml``: the full training config (reference format, every key);
- ``sessions.json``: the session names, in day-index order (day layer ``N`` is session ``N``).

``load_model(path)`` needs only :mod:`trainer.model`, :mod:`trainer.config` and torch. It also
loads checkpoints of other trainers: the NEJM reference's (``model_state_dict`` with
``_orig_mod.`` prefixes and ``day_weights.N``) and the lab fork's (day layers stacked in one
tensor, often bidirectional), with their ``args.yaml`` in the same folder (it gives
``model.patch_size`` / ``patch_stride``, which the weights do not tell; every other size is
read from the weights). A file that is none of these fails with one line (:class:`ModelFileError`).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .checkpoint import MODEL_STATE, save_atomic, write_atomic
from .config import ConfigError, TrainConfig, config_from_dict, dump_config
from .model import GRUDecoder, clean_state_dict

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.yaml"
SESSIONS_FILE = "sessions.json"
REFERENCE_CHECKPOINT = "best_checkpoint"  # the reference's and the fork's checkpoint file name
REFERENCE_CONFIG_FILE = "args.yaml"  # their config, written next to the checkpoint


class ModelFileError(ValueError):
    """A model file that cannot be loaded, in one line naming the file."""


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
    write_atomic(model_dir / CONFIG_FILE, dump_config(cfg).encode())
    write_atomic(model_dir / SESSIONS_FILE, (json.dumps(list(cfg.dataset.sessions), indent=1) + "\n").encode())
    log.info("model written to %s", path)
    return path


def load_model(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> TrainedModel:
    """Load a model in eval mode: our ``model.pt`` (or a model directory holding it), one of our
    training checkpoints, or a reference / lab-fork checkpoint (a file, or a folder holding
    ``best_checkpoint``) with its ``args.yaml`` beside it."""
    file = _model_file(Path(path))
    payload = _read(file, device)
    state = _state_dict(payload, file)
    raw_cfg = _config_source(payload, file.parent)
    cfg = _config(raw_cfg, file)
    args = payload["model_args"] if "model_args" in payload else infer_model_args(state, raw_cfg, file)
    model = GRUDecoder(**args)
    _load_weights(model, state, file)
    model.to(device).eval()
    sessions_file = file.parent / SESSIONS_FILE
    if sessions_file.exists():
        sessions = json.loads(sessions_file.read_text())
    else:
        sessions = list(((raw_cfg or {}).get("dataset") or {}).get("sessions") or [])
    info = {k: v for k, v in payload.items() if k not in (MODEL_STATE, "model_args") and not isinstance(v, dict)}
    return TrainedModel(model=model, config=cfg, sessions=sessions, info=info)


def _model_file(path: Path) -> Path:
    if not path.is_dir():
        return path
    for name in (MODEL_FILE, REFERENCE_CHECKPOINT):
        if (path / name).is_file():
            return path / name
    return path / MODEL_FILE  # torch.load raises FileNotFoundError naming it


def _read(file: Path, device) -> dict:
    try:
        payload = torch.load(file, map_location=device, weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as e:  # a damaged or foreign file: torch raises many types
        detail = (str(e).splitlines() or [""])[0][:200]
        raise ModelFileError(f"{file}: not a readable torch file ({type(e).__name__}: {detail})") from None
    if not isinstance(payload, dict):
        raise ModelFileError(f"{file}: holds a {type(payload).__name__}, not a model or checkpoint dict")
    return payload


def _state_dict(payload: dict, file: Path) -> dict[str, torch.Tensor]:
    state = payload.get(MODEL_STATE, payload)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{file}: holds no model state dict ('{MODEL_STATE}')")
    return clean_state_dict(state)


def _config_source(payload: dict, directory: Path) -> Optional[dict]:
    """The training config as a raw dict: ours (config.yaml), the reference's/fork's
    (args.yaml), or the one our training checkpoints carry; None if there is none."""
    import yaml

    for name in (CONFIG_FILE, REFERENCE_CONFIG_FILE):
        if (directory / name).is_file():
            try:
                raw = yaml.safe_load((directory / name).read_text())
            except yaml.YAMLError as e:
                raise ModelFileError(f"{directory / name}: not valid YAML ({getattr(e, 'problem', e)})") from None
            return raw if isinstance(raw, dict) else None
    if isinstance(payload.get("config"), str):  # our periodic training checkpoints
        raw = yaml.safe_load(payload["config"])
        return raw if isinstance(raw, dict) else None
    return None


def _config(raw: Optional[dict], file: Path) -> Optional[TrainConfig]:
    if raw is None:
        return None
    try:
        return config_from_dict(raw)
    except ConfigError as e:  # the weights still load; the caller decides whether it needs the config
        log.warning("%s: its training config does not validate here (%s)", file, str(e).splitlines()[0])
        return None


_GRU_LAYER = re.compile(r"^gru\.weight_hh_l(\d+)$")


def infer_model_args(state: dict[str, torch.Tensor], raw_cfg: Optional[dict], file: Path) -> dict[str, Any]:
    """GRUDecoder arguments of a checkpoint without ``model_args``: sizes from the weights,
    patching from its training config."""
    needed = ("day_weights.0", "day_biases.0", "gru.weight_ih_l0", "gru.weight_hh_l0", "out.weight")
    missing = [k for k in needed if k not in state]
    if missing:
        raise ModelFileError(f"{file}: not a GRU decoder checkpoint (no {', '.join(missing)})")
    model_cfg = (raw_cfg or {}).get("model")
    if not isinstance(model_cfg, dict) or "patch_size" not in model_cfg or "patch_stride" not in model_cfg:
        raise ModelFileError(
            f"{file}: has no model_args, and no {CONFIG_FILE} or {REFERENCE_CONFIG_FILE} with model.patch_size "
            "and model.patch_stride beside it (the weights do not tell the patching)"
        )
    neural_dim = state["day_weights.0"].shape[-1]
    patch_size, patch_stride = int(model_cfg["patch_size"]), int(model_cfg["patch_stride"])
    input_size = state["gru.weight_ih_l0"].shape[1]
    if input_size != neural_dim * max(patch_size, 1):
        raise ModelFileError(
            f"{file}: the GRU takes {input_size} inputs, but {neural_dim} features x model.patch_size "
            f"{patch_size} from its config make {neural_dim * max(patch_size, 1)}"
        )
    dropout = (model_cfg.get("input_network") or {}).get("input_layer_dropout", 0.0)
    return {
        "neural_dim": neural_dim,
        "n_units": state["gru.weight_hh_l0"].shape[1],
        "n_days": sum(1 for k in state if re.fullmatch(r"day_weights\.\d+", k)),
        "n_classes": state["out.weight"].shape[0],
        "rnn_dropout": float(model_cfg.get("rnn_dropout", 0.0)),
        "input_dropout": float(dropout),
        "n_layers": sum(1 for k in state if _GRU_LAYER.match(k)),
        "patch_size": patch_size,
        "patch_stride": patch_stride,
        "bidirectional": "gru.weight_hh_l0_reverse" in state,
    }


def _load_weights(model: GRUDecoder, state: dict[str, torch.Tensor], file: Path) -> None:
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{name} {keys[:3]}{'…' if len(keys) > 3 else ''}"
                 for name, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", sorted(shapes)))
                 if keys]
        raise ModelFileError(f"{file}: weights do not fit its model_args ({'; '.join(parts)})")
    model.load_state_dict(state)
