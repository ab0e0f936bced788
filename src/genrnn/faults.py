"""Crash points for the fault tests: ``GENRNN_FAULT=NAME:N`` makes the process
kill itself with SIGKILL the N-th time it reaches ``point(NAME)``.

The kill soak (``benchmarks/kill_soak.py``, ``tests/test_faults.py``) uses it
to land ``kill -9`` inside a training step (``step``), inside validation
(``eval``) and inside a checkpoint write, after the bytes are written and
before the rename (``write``), instead of hoping a timer hits them. Unset, as
always outside those tests, ``point`` is one comparison.
"""

from __future__ import annotations

import os
import signal
from typing import Dict, Optional, Tuple

POINTS = ("step", "eval", "write")


def _parse(spec: Optional[str]) -> Optional[Tuple[str, int]]:
    if not spec:
        return None
    name, _, n = spec.partition(":")
    if name not in POINTS or not n.isdigit() or int(n) < 1:
        raise ValueError(f"GENRNN_FAULT={spec!r}: expected NAME:N with NAME one of {', '.join(POINTS)} and N >= 1")
    return name, int(n)


_FAULT = _parse(os.environ.get("GENRNN_FAULT"))
_seen: Dict[str, int] = {}


def point(name: str) -> None:
    """Die here (SIGKILL, no cleanup) if this is the crash point asked for."""
    if _FAULT is None or _FAULT[0] != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == _FAULT[1]:
        os.kill(os.getpid(), signal.SIGKILL)
