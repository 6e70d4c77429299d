"""``python -m trainer.evaluate``: decode a split with a trained model, PER per session, CSV of predictions.

    python -m trainer.evaluate --model runs/demo/model --data data/synthetic [--split val] [--out preds.csv]

``--model`` is a model directory (``model.pt`` + ``config.yaml`` + ``sessions.json``) or its
``model.pt``. The last line is ``per=<overall PER> trials=<n>``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from .config import ConfigError, config_from_dict
from .environment import add_common_arguments, with_data_url
from .metrics import phoneme_string
from .validation import ValResult, evaluate

log = logging.getLogger(__name__)

CSV_COLUMNS = ("session", "block", "trial", "edit_distance", "n_phonemes", "predicted", "target", "transcription")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m trainer.evaluate",
        description="Decode a split with a trained model: PER per session and a CSV of predictions.",
        epilog="example: python -m trainer.evaluate --model runs/demo/model --data runs/synthetic",
    )
    p.add_argument("--model", required=True, help="model directory or model.pt written by training")
    p.add_argument("--data", required=True, help="dataset location: a directory, file:// or s3:// URL")
    p.add_argument("--split", default="val", choices=["val"], help="which split to decode (data_val.hdf5)")
    p.add_argument("--out", default="predictions_val.csv", help="CSV to write (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    add_common_arguments(p)
    return p.parse_args(argv)


def write_csv(path: Path, result: ValResult, sessions: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for t in result.trials:
            writer.writerow([sessions[t.day], t.block, t.trial, t.edit_distance, len(t.target),
                             phoneme_string(t.decoded), phoneme_string(t.target), t.transcription])


def run(args: argparse.Namespace) -> ValResult:
    from .data import DataError, make_loaders
    from .export import load_model

    try:
        trained = load_model(args.model, device=args.device)
    except FileNotFoundError as e:
        raise ConfigError("--model", f"no trained model at {args.model} ({e.filename})") from None
    except ConfigError:
        raise
    except Exception as e:  # torch.load and load_state_dict raise many types; all mean "not our model"
        detail = (str(e).splitlines() or [""])[0][:200]
        raise ConfigError(
            "--model", f"{args.model} is not a model written by training ({type(e).__name__}: {detail})"
        ) from None
    if trained.config is None:
        raise ConfigError("--model", f"{args.model} has no config.yaml next to model.pt")
    cfg = config_from_dict(with_data_url(trained.config, args.data).model_dump(), args.overrides)
    _, val_loader = make_loaders(cfg)
    if val_loader is None:
        raise DataError(f"{args.data}: no validation trials for the model's sessions")
    result = evaluate(trained.model, val_loader, cfg, torch.device(args.device), keep_trials=True)
    write_csv(Path(args.out), result, trained.sessions)
    for day, per in result.per_day.items():
        n = sum(1 for t in result.trials if t.day == day)
        print(f"{trained.sessions[day]} PER {per:.4f} ({n} trials)")
    if result.der is not None:
        print(f"DER {result.der:.4f} (diphone error rate)")
    print(f"predictions: {args.out}")
    print(f"per={result.per:.4f} trials={len(result.trials)}", flush=True)
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .__main__ import EXIT_CONFIG, EXIT_DATA, EXIT_FAILED, configure_logging, os_error_line
    from .data import DataError

    args = parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging()
    try:
        run(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except DataError as e:
        print(f"data error: {e}", file=sys.stderr)
        return EXIT_DATA
    except OSError as e:  # e.g. --out in a folder that cannot be created
        print(f"file error: {os_error_line(e)}", file=sys.stderr)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
