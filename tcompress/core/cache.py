"""The cache folder: converted models and compiled kernels."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Where converted models and built kernels are cached: $TCOMPRESS_CACHE, else ~/.cache/tcompress."""
    env = os.environ.get("TCOMPRESS_CACHE")
    return Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tcompress"
