"""Terminal output shared by the commands: tables, confirmation, the program name."""

from __future__ import annotations

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
