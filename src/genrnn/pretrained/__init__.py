"""Models that ship inside the package, by name: ``--init-from english``,
``genrnn sample english``, ``genrnn.load("english")``.

Each is an ordinary run folder (``config.json`` and ``model.safetensors``)
under this package, so it loads, samples and serves like any run
(``checkpoint.load_run`` is the one place that resolves the names). A folder
of the same name that exists where the command runs wins over the built-in:
a path the user typed is never shadowed. The README's "Start from a trained
model" section is the model card (data, steps, validation figure).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Union

HERE = Path(__file__).resolve().parent

MODELS: Dict[str, str] = {
    "english": "a 2x256 character LSTM trained on War and Peace, Alice in Wonderland and tiny Shakespeare",
}


def resolve(run: Union[str, Path]) -> Path:
    """The run folder that ``run`` names: a built-in model's folder for one of
    :data:`MODELS` (unless a folder of that name exists), else ``run`` itself."""
    path = Path(run)
    if str(run) in MODELS and not path.exists():
        return HERE / str(run)
    return path
