"""Named sets of training options (``genrnn train --preset NAME``).

A preset is a JSON file of flat options, the same names as the command-line
flags with ``_`` for ``-`` (``hidden_size``, ``lr``, ``time``...). Built-in
presets live in ``genrnn/presets/``; ``--preset`` also takes a path to a file
of one's own. Options given explicitly override the preset's::

    genrnn train tinyshakespeare --preset cpu-10m --time 20m

Each built-in preset says in its ``description`` what it was measured on; the
figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List

from .config import option_names, parse_duration
from .errors import GenrnnError

_KEYS = {"description", "options"}


def list_presets() -> List[Dict[str, str]]:
    """Name and description of every built-in preset, sorted by name."""
    out = []
    for entry in sorted(resources.files("genrnn").joinpath("presets").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            name = entry.name[: -len(".json")]
            out.append({"name": name, "description": _parse(entry.read_text(encoding="utf-8"), name)["description"]})
    return out


def load_preset(name_or_path: str) -> Dict[str, Any]:
    """The options of a built-in preset or of a JSON file, checked."""
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise GenrnnError(f"cannot read preset {path}: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise GenrnnError(f"preset {path} is not UTF-8 text") from None
        return _parse(text, str(path))["options"]
    entry = resources.files("genrnn").joinpath("presets", f"{name_or_path}.json")
    if not entry.is_file():
        known = ", ".join(p["name"] for p in list_presets())
        raise GenrnnError(f"unknown preset {name_or_path!r}; built in: {known} (or give a path to a .json file)")
    return _parse(entry.read_text(encoding="utf-8"), name_or_path)["options"]


def _parse(text: str, where: str) -> Dict[str, Any]:
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise GenrnnError(f"preset {where} is not valid JSON: {e}") from None
    if not isinstance(d, dict) or not isinstance(d.get("options"), dict) or set(d) - _KEYS:
        raise GenrnnError(f"preset {where} must be a JSON object with \"options\" (and \"description\")")
    names = option_names()
    options = dict(d["options"])
    for key in options:
        if key not in names:
            raise GenrnnError(f"preset {where}: unknown option {key!r}")
    if isinstance(options.get("time"), str):
        options["time"] = parse_duration(options["time"])
    return {"description": str(d.get("description", "")), "options": options}
