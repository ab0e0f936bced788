"""``genrnn serve``: an OpenAI-compatible HTTP API and a web playground.

Needs the ``serve`` extra (``pip install 'genrnn[serve]'``: FastAPI, uvicorn);
``import genrnn`` never imports this package.

* :mod:`.engine`  -- one thread that owns the models and runs every active
  stream of a model as one batch (no FastAPI needed);
* :mod:`.schemas` -- the request and response bodies (pydantic);
* :mod:`.app`     -- :func:`create_app`: routes, limits, errors, streaming;
* :mod:`.server`  -- uvicorn in the foreground or in a background thread;
* ``static/``     -- the playground (plain HTML, CSS and JavaScript).
"""

from __future__ import annotations

__all__ = ["BackgroundServer", "Limits", "create_app"]


def __getattr__(name):
    # lazy, so that `genrnn.serve.engine` imports without FastAPI
    if name in ("Limits", "create_app"):
        from . import app

        return getattr(app, name)
    if name == "BackgroundServer":
        from .server import BackgroundServer

        return BackgroundServer
    raise AttributeError(f"module 'genrnn.serve' has no attribute {name!r}")
