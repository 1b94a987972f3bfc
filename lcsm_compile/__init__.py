"""lcsm-compile: exact, near-linear autoregressive inference for long-convolution sequence models.

Public API (see README.md and docs/):

* ``torch.compile(model, backend="lcsm")`` - the backend (:class:`LcsmBackend`), found by name.
* :func:`session` - a streaming session (prefill + one-position steps) of an unmodified model.
* :func:`generate` - exact autoregressive generation (greedy or sampled) on a session.
* :func:`explain` - what the compiler found and refused (:class:`Explanation`).
* :func:`export` / :func:`load` - the streaming programs as one file, loaded without the model's code.
* :class:`OnlineConv` - the exact online long-convolution engine (relaxed tiling).
* :class:`LcsmError`, :class:`UnsupportedModelError`, :class:`SessionError`.

The package is layered, data flowing one way (docs/architecture.md):
``capture/ -> passes/ -> pipeline (lower, plan) -> codegen/ -> runtime/``, with ``api`` and
``backend`` the entry points on top.
"""

from .api import explain, generate, session
from .artifact import Artifact, export, load
from .backend import LcsmBackend
from .errors import ArtifactError, LcsmError, SessionError, UnsupportedModelError
from .report import Explanation
from .runtime import OnlineConv, Session

__version__ = "0.1.0"

__all__ = [
    "Artifact",
    "ArtifactError",
    "Explanation",
    "LcsmBackend",
    "LcsmError",
    "OnlineConv",
    "Session",
    "SessionError",
    "UnsupportedModelError",
    "explain",
    "export",
    "generate",
    "load",
    "session",
    "__version__",
]
