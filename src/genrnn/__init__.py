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

from .api import TrainedModel, load, train  # noqa: E402

__all__ = ["GenrnnError", "TrainedModel", "__version__", "load", "train"]
