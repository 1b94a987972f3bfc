"""Test-wide settings: private kernel caches, deterministic seeds, the repo on sys.path."""

import os
import sys
import tempfile

_cache = tempfile.mkdtemp(prefix="lcsm-test-cache-")
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(_cache, "inductor"))
os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(_cache, "triton"))
os.environ.setdefault("LCSM_CACHE_DIR", os.path.join(_cache, "lcsm"))

_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _root not in sys.path:
    sys.path.insert(0, _root)

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
