"""Settings for the whole test session."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_autotune_cache(tmp_path_factory):
    """The autotuner (``algo="auto"`` on a GPU) writes its cache under a temporary directory, never the
    user's ~/.cache/gpuconv."""
    mp = pytest.MonkeyPatch()
    mp.setenv("GPUCONV_CACHE_DIR", str(tmp_path_factory.mktemp("gpuconv-cache")))
    yield
    mp.undo()
