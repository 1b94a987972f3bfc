"""Test-wide settings: private kernel caches, deterministic seeds, the repo on sys.path."""

import os
import sys
import tempfile

_cache = tempfile.mkdtemp(prefix="lcsm-test-cache-")
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(_cache, "inductor"))
os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(_cache, "triton"))
os.environ.setdefault("LCSM_CACHE_DIR", os.path.join(_cache, "lcsm"))
# compiled CPU steps with Inductor's Python wrapper in the suite (the C++ wrapper, the product
# default, adds ~20 s to each of the suite's many first compiles); tests/test_cpu_ops.py turns
# it on where it is the subject
os.environ.setdefault("LCSM_CPP_WRAPPER", "0")

_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _root not in sys.path:
    sys.path.insert(0, _root)

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    config.addinivalue_line("markers", "full_forward_inductor: keep the backend's Inductor full forward on")


@pytest.fixture(autouse=True)
def _no_full_forward_inductor(request):
    """The backend compiles a graph's full forward with Inductor from its second call (4-35 s a
    compile): tests that are not about it run the full forward op by op (the default of the
    ``inductor`` option is switched off for them; an explicit option still wins). Tests named
    ``*inductor*`` or marked ``full_forward_inductor`` keep the product default."""
    from lcsm_compile.options import BACKEND_OPTIONS

    keep = "inductor" in request.node.name or request.node.get_closest_marker("full_forward_inductor")
    old = BACKEND_OPTIONS["inductor"]
    if not keep:
        BACKEND_OPTIONS["inductor"] = False
    yield
    BACKEND_OPTIONS["inductor"] = old
