"""What the conditioned and captioning benchmarks share: where the data is,
fresh run folders, and ``--option KEY=VALUE`` parsing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Sequence

# option names whose genrnn train flag is not --<name with dashes>
CLI_FLAGS = {"num_layers": "--layers", "type": "--model"}


def shared_data() -> Path:
    return Path(os.environ.get("GENRNN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def fresh_dir(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``... if a run is already there (genrnn never overwrites a run)."""
    n, out = 1, path
    while out.exists():
        n += 1
        out = path.with_name(f"{path.name}-{n}")
    return out


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(pairs: Sequence[str]) -> Dict[str, Any]:
    options: Dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--option wants KEY=VALUE, got {pair!r}")
        options[key.strip().replace("-", "_")] = parse_value(value)
    return options
