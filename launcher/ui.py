"""Terminal output shared by the commands: tables, key/value blocks, times, durations, money,
confirmation, the program name. Every table and figure the commands print is formatted here."""

from __future__ import annotations

import datetime as dt
import os
import sys
from typing import Optional, Sequence, TextIO


def prog() -> str:
    """How the user invoked us, for the next-command hints."""
    return "b2t" if os.path.basename(sys.argv[0] or "") == "b2t" else "python -m launcher"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(str(c))) for w, c in zip(widths, row)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*(str(c) for c in row)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def when(value: Optional[dt.datetime]) -> str:
    """A time in UTC, to the second; ``-`` when unknown."""
    if not value:
        return "-"
    if isinstance(value, str):
        return value
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def log_time(ms: int) -> str:
    """A log event's timestamp (milliseconds since the epoch), in UTC."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: Optional[float]) -> str:
    """``1h02m``, ``4m05s``, ``12s``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


def money(usd: Optional[float]) -> str:
    if usd is None:
        return "-"
    return f"${usd:,.2f}" if usd >= 0.01 or usd == 0 else "<$0.01"


def number(value: Optional[float], fmt: str = ".4g") -> str:
    return "-" if value is None else format(value, fmt)


def key_values(rows: Sequence[tuple[str, str]]) -> str:
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k + ':':<{width + 1}} {v}" for k, v in rows)


def confirm(question: str, stream: Optional[TextIO] = None) -> bool:
    """Ask a yes/no question on the terminal; no answer (EOF) means no.

    Without a terminal to ask on it refuses (``UsageError``) rather than read a piped answer.
    """
    from .errors import UsageError

    stream = stream or sys.stdin  # looked up now: sys.stdin may have been replaced since import
    try:
        interactive = stream.isatty()
    except (AttributeError, ValueError):
        interactive = False
    if not interactive:
        raise UsageError("stdin is not a terminal, so there is no one to confirm: pass -y to submit without asking")
    print(f"{question} [y/N] ", end="", flush=True)
    try:
        answer = stream.readline()
    except KeyboardInterrupt:
        print()  # end the prompt's line before the CLI says "interrupted"
        raise
    except (OSError, ValueError):
        return False
    return answer.strip().lower() in ("y", "yes")
