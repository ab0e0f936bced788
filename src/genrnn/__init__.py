"""genrnn: generative recurrent networks.

Train a character- or word-level RNN/LSTM/GRU language model on any text, then
generate from it::

    import genrnn
    run = genrnn.train("tinyshakespeare", time="2m")
    print(run.generate("ROMEO:", length=300, temperature=0.8))
    run = genrnn.load("runs/tinyshakespeare-20261127-101500")
"""

__version__ = "0.1.0"

from .errors import GenrnnError  # noqa: E402

__all__ = ["GenrnnError", "TrainedModel", "__version__", "load", "train"]


def __getattr__(name):
    # `genrnn --help` and `--version` should not pay for importing torch
    if name in ("train", "load", "TrainedModel"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'genrnn' has no attribute {name!r}")
