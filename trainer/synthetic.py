"""Synthetic t15 data: the real HDF5 layout, with neural features that really encode phonemes.

Layout, as in the released t15 copy-task files (``<root>/<session>/data_train.hdf5``,
``data_val.hdf5``): one group ``trial_NNNN`` per trial holding

- ``input_features``: float32 [T, 512], T 20 ms bins;
- ``seq_class_ids``: int32 [500], the phoneme (or diphone) ids, zero padded;
- ``transcription``: int32 [500], the sentence's character codes, zero padded;

and the attributes ``n_time_steps``, ``seq_len``, ``block_num``, ``trial_num``,
``session`` and ``sentence_label``. With diphone targets (``--diphones``) the layout is the lab
fork's ``hdf5_data_diphone_encoded``: ``seq_class_ids`` holds ``prev * 41 + cur``, the first
phoneme of a sentence as ``cur`` alone (``SyntheticSpec.diphone_first_prev = 40`` writes the
older ``40 * 41 + cur`` instead), and each trial also carries the phoneme targets
``seq_class_ids_phoneme`` [500] with attribute ``seq_len_phoneme``.

Learnable: each phoneme has a fixed spatial pattern over the 512 features that is
active for the bins the phoneme is "spoken"; every session sees the patterns through
its own gain and offset (what the day-specific input layers must undo), plus noise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from .config import DIPHONE_CLASSES, PHONEME_CLASSES

log = logging.getLogger(__name__)

PHONEMES = (
    "BLANK AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH UW V W Y Z ZH"
).split() + ["|"]
SILENCE = PHONEMES.index("|")  # 40, the word boundary class
MAX_SEQ_ELEMENTS = 500
# With diphone targets the phoneme-level labels ride along, under the fork's names.
PHONEME_IDS = "seq_class_ids_phoneme"
PHONEME_SEQ_LEN = "seq_len_phoneme"

# A small lexicon in ARPAbet (stress marks dropped, as in the t15 labels).
LEXICON = {
    "i": "AY", "you": "Y UW", "we": "W IY", "they": "DH EY", "it": "IH T", "the": "DH AH",
    "a": "AH", "is": "IH Z", "am": "AE M", "are": "AA R", "was": "W AH Z", "have": "HH AE V",
    "want": "W AA N T", "need": "N IY D", "like": "L AY K", "see": "S IY", "go": "G OW",
    "get": "G EH T", "some": "S AH M", "more": "M AO R", "water": "W AO T ER", "coffee": "K AA F IY",
    "food": "F UW D", "help": "HH EH L P", "please": "P L IY Z", "now": "N AW", "here": "HH IH R",
    "there": "DH EH R", "home": "HH OW M", "good": "G UH D", "very": "V EH R IY", "thank": "TH AE NG K",
    "family": "F AE M AH L IY", "doctor": "D AA K T ER", "nurse": "N ER S", "bed": "B EH D",
    "chair": "CH EH R", "outside": "AW T S AY D", "today": "T AH D EY", "tomorrow": "T AH M AA R OW",
    "music": "M Y UW Z IH K", "phone": "F OW N", "call": "K AO L", "my": "M AY", "your": "Y AO R",
    "wife": "W AY F", "son": "S AH N", "daughter": "D AO T ER", "hot": "HH AA T", "cold": "K OW L D",
    "tired": "T AY ER D", "happy": "HH AE P IY", "feel": "F IY L", "think": "TH IH NG K",
    "yes": "Y EH S", "no": "N OW", "read": "R IY D", "book": "B UH K", "pleasure": "P L EH ZH ER",
    "join": "JH OY N", "this": "DH IH S", "that": "DH AE T", "with": "W IH DH", "to": "T UW",
}


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. Defaults give a small, quickly learnable demo set."""

    n_sessions: int = 4
    train_trials: int = 96
    val_trials: int = 24
    n_features: int = 512
    diphones: bool = False
    diphone_first_prev: int = 0  # the first phoneme's diphone: 0 -> cur alone (the fork's), 40 -> 40 * 41 + cur
    seed: int = 0
    min_words: int = 2
    max_words: int = 5
    bins_per_phoneme: tuple[int, int] = (6, 11)  # 120-220 ms per phoneme
    lead_bins: tuple[int, int] = (10, 30)  # silence before and after speech
    signal: float = 1.5
    noise_std: float = 1.0
    first_session: str = "2023-08-11"
    trials_per_block: int = 40


def session_names(n: int, first: str = "2023-08-11") -> list[str]:
    """``t15.YYYY.MM.DD`` names, two days apart, like the real recording days."""
    start = dt.date.fromisoformat(first)
    return [f"t15.{(start + dt.timedelta(days=2 * i)).strftime('%Y.%m.%d')}" for i in range(n)]


def phonemes_of(sentence: str) -> list[int]:
    """Phoneme ids of a sentence, a word boundary (40) after each word, as in the t15 labels."""
    ids: list[int] = []
    for word in sentence.split():
        ids.extend(PHONEMES.index(p) for p in LEXICON[word].split())
        ids.append(SILENCE)
    return ids


def to_diphones(phonemes: Sequence[int], first_prev: int = 0) -> list[int]:
    """Diphone ids ``prev * 41 + cur``; the first phoneme is ``first_prev * 41 + cur``
    (``cur`` alone with the default 0, as in the lab fork's files)."""
    prev = first_prev
    out = []
    for p in phonemes:
        out.append(prev * PHONEME_CLASSES + p)
        prev = p
    return out


class _World:
    """The fixed 'brain': one spatial pattern per phoneme and one gain/offset per session."""

    def __init__(self, spec: SyntheticSpec):
        rng = np.random.default_rng(spec.seed)
        self.patterns = rng.standard_normal((PHONEME_CLASSES, spec.n_features)).astype(np.float32)
        self.patterns[0] = 0.0  # blank is never spoken
        self.patterns[SILENCE] *= 0.3
        self.gains = rng.uniform(0.6, 1.4, (spec.n_sessions, spec.n_features)).astype(np.float32)
        self.offsets = rng.normal(0.0, 0.5, (spec.n_sessions, spec.n_features)).astype(np.float32)
        self.words = sorted(LEXICON)


def _trial(world: _World, spec: SyntheticSpec, day: int, rng: np.random.Generator):
    words = rng.choice(world.words, size=int(rng.integers(spec.min_words, spec.max_words + 1)))
    sentence = " ".join(words)
    phonemes = phonemes_of(sentence)
    durations = rng.integers(spec.bins_per_phoneme[0], spec.bins_per_phoneme[1] + 1, size=len(phonemes))
    lead, tail = rng.integers(spec.lead_bins[0], spec.lead_bins[1] + 1, size=2)
    n_bins = int(lead + durations.sum() + tail)
    clean = np.zeros((n_bins, spec.n_features), dtype=np.float32)
    t = int(lead)
    for p, d in zip(phonemes, durations):
        # A smooth rise and fall within the phoneme, like a firing-rate envelope.
        envelope = np.sin(np.linspace(0.15, np.pi - 0.15, int(d), dtype=np.float32))[:, None]
        clean[t : t + d] = envelope * world.patterns[p] * spec.signal
        t += int(d)
    noise = rng.standard_normal((n_bins, spec.n_features)).astype(np.float32) * spec.noise_std
    features = (clean * world.gains[day] + world.offsets[day] + noise).astype(np.float32)
    labels = to_diphones(phonemes, spec.diphone_first_prev) if spec.diphones else phonemes
    return features, labels, sentence, phonemes


def _padded(values: Sequence[int]) -> np.ndarray:
    out = np.zeros(MAX_SEQ_ELEMENTS, dtype=np.int32)
    out[: len(values)] = values
    return out


def write_session_file(path: Path, session: str, trials: list, first_block: int, per_block: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with h5py.File(tmp, "w") as f:
        for i, (features, labels, sentence, phonemes) in enumerate(trials):
            g = f.create_group(f"trial_{i:04d}")
            g.create_dataset("input_features", data=features)
            g.create_dataset("seq_class_ids", data=_padded(labels))
            if labels is not phonemes:  # diphone targets: the phoneme-level sequence rides along
                g.create_dataset(PHONEME_IDS, data=_padded(phonemes))
                g.attrs[PHONEME_SEQ_LEN] = len(phonemes)
            g.create_dataset("transcription", data=_padded([ord(c) for c in sentence]))
            g.attrs["n_time_steps"] = features.shape[0]
            g.attrs["seq_len"] = len(labels)
            g.attrs["block_num"] = first_block + i // per_block
            g.attrs["trial_num"] = i % per_block
            g.attrs["session"] = session
            g.attrs["sentence_label"] = sentence
    tmp.replace(path)


def generate(root: Path | str, spec: SyntheticSpec = SyntheticSpec(), names: Sequence[str] | None = None) -> list[str]:
    """Write ``<root>/<session>/data_{train,val}.hdf5`` for every session; returns the session names
    (``names`` when given, one per session, e.g. a config's real session list)."""
    root = Path(root)
    world = _World(spec)
    if names is not None and len(names) != spec.n_sessions:
        raise ValueError(f"{len(names)} session names for {spec.n_sessions} sessions")
    names = list(names) if names is not None else session_names(spec.n_sessions, spec.first_session)
    for day, session in enumerate(names):
        rng = np.random.default_rng([spec.seed, day])
        train = [_trial(world, spec, day, rng) for _ in range(spec.train_trials)]
        val = [_trial(world, spec, day, rng) for _ in range(spec.val_trials)]
        n_train_blocks = -(-spec.train_trials // spec.trials_per_block)
        write_session_file(root / session / "data_train.hdf5", session, train, 1, spec.trials_per_block)
        if spec.val_trials:
            write_session_file(
                root / session / "data_val.hdf5", session, val, 1 + n_train_blocks, spec.trials_per_block
            )
        log.info("wrote %s (%d train, %d val trials)", session, spec.train_trials, spec.val_trials)
    return names


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trainer.synthetic",
        description="Write synthetic t15-format HDF5 sessions that a decoder can learn.",
    )
    p.add_argument("--out", required=True, help="folder to write the session folders into")
    p.add_argument("--sessions", type=int, default=SyntheticSpec.n_sessions)
    p.add_argument("--train-trials", "--trials-per-session", type=int, default=SyntheticSpec.train_trials,
                   help="training trials per session")
    p.add_argument("--val-trials", type=int, default=SyntheticSpec.val_trials, help="validation trials per session")
    p.add_argument("--features", type=int, default=SyntheticSpec.n_features, help="features per bin (t15: 512)")
    p.add_argument("--diphones", "--diphone", action="store_true", help=f"diphone targets ({DIPHONE_CLASSES} classes)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for flag, value, least in (("--sessions", args.sessions, 1), ("--train-trials", args.train_trials, 1),
                               ("--val-trials", args.val_trials, 0), ("--features", args.features, 1)):
        if value < least:
            p.error(f"{flag} must be at least {least}, got {value}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = SyntheticSpec(
        n_sessions=args.sessions,
        train_trials=args.train_trials,
        val_trials=args.val_trials,
        n_features=args.features,
        diphones=args.diphones,
        seed=args.seed,
    )
    try:
        names = generate(args.out, spec)
    except OSError as e:
        from .__main__ import os_error_line

        print(f"error: cannot write the data set: {os_error_line(e)}", file=sys.stderr)
        return 1
    print(" ".join(names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
