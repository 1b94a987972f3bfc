"""lcsm-compile: exact, near-linear autoregressive inference for long-convolution sequence models.

Public API (see README.md and docs/):

* :class:`OnlineConv` - the exact online long-convolution engine (relaxed tiling).
* :mod:`lcsm_compile.reference` - reference oracles (full FFT conv, lazy, eager).
* :class:`LcsmError`, :class:`UnsupportedModelError`, :class:`SessionError`.
"""

from .errors import LcsmError, SessionError, UnsupportedModelError
from .engine import OnlineConv

__version__ = "0.1.0"

__all__ = [
    "LcsmError",
    "OnlineConv",
    "SessionError",
    "UnsupportedModelError",
    "__version__",
]
