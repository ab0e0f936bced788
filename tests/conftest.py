"""Shared pytest fixtures.

``shared_data`` points at the public corpora in ``../shared/data`` (beside the
project root), or at ``$GENRNN_SHARED_DATA``. Tests that need it skip with a
clear reason where it is absent, e.g. in a user's clone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("GENRNN_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = _shared_data_dir()
    if not (path / "MANIFEST.md").is_file():
        pytest.skip(f"public corpora not found at {path} (set GENRNN_SHARED_DATA to ../shared/data)")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's real cache or the network from a test."""
    monkeypatch.setenv("GENRNN_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("GENRNN_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tiny test models run fastest on one thread; on a busy 2-core machine two
    threads contend and a test can take ten times longer."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
