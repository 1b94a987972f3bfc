"""lcsm-compile: exact, near-linear autoregressive inference for long-convolution sequence models.

Public API (see README.md and docs/):

* :func:`session` - a streaming session (prefill + one-position steps) of an unmodified model.
* :func:`generate` - exact autoregressive generation (greedy or sampled) on a session.
* :class:`OnlineConv` - the exact online long-convolution engine (relaxed tiling).
* :mod:`lcsm_compile.reference` - reference oracles (full FFT conv, lazy, eager).
* :class:`LcsmError`, :class:`UnsupportedModelError`, :class:`SessionError`.
"""

from .errors import LcsmError, SessionError, UnsupportedModelError
from .engine import OnlineConv
from .generate import generate
from .session import Session, session
from .explain import Explanation, explain

__version__ = "0.1.0"

__all__ = [
    "LcsmError",
    "OnlineConv",
    "Session",
    "SessionError",
    "UnsupportedModelError",
    "explain",
    "Explanation",
    "generate",
    "session",
    "__version__",
]
