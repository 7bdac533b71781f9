"""Settings for the whole test session."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_autotune_cache(tmp_path_factory):
    """The autotuner (``algo="auto"`` on a GPU) writes its cache under a temporary directory, never the
    user's ~/.cache/gpuconv, and is off unless a test turns it on (tests/gpu/test_gpu_autotune.py,
    tests/test_autotune.py): otherwise every GPU test of ``auto`` would first time each candidate, and
    what ``auto`` runs would depend on those timings."""
    mp = pytest.MonkeyPatch()
    mp.setenv("GPUCONV_CACHE_DIR", str(tmp_path_factory.mktemp("gpuconv-cache")))
    mp.setenv("GPUCONV_AUTOTUNE", "0")
    yield
    mp.undo()
