"""What the conditioned and captioning benchmarks share: where the data is,
fresh run folders, and ``--option KEY=VALUE`` parsing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

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


def checked_options(pairs: Sequence[str], preset: str, reserved: Sequence[str]) -> Optional[Dict[str, Any]]:
    """``--option`` pairs parsed and checked against genrnn now (with the
    preset), so a misspelt option fails before the first training run; None
    after printing the error."""
    import sys

    from genrnn.config import RunConfig, override
    from genrnn.errors import GenrnnError
    from genrnn.presets import load_preset

    options = parse_options(pairs)
    for key in reserved:
        if key in options:
            print(f"--option {key} is set by the benchmark itself (use --designs / --time)", file=sys.stderr)
            return None
    try:
        loaded = {k: v for k, v in load_preset(preset).items() if k != "time"} if preset else {}
        override(RunConfig(), **{**loaded, **options}).validate()
    except GenrnnError as e:
        print(f"genrnn: error: {e}", file=sys.stderr)
        return None
    return options
