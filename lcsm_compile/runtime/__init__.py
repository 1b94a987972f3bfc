"""Stage 5: the runtime. State for a plan, and what drives it per position.

* :mod:`.engine`: :class:`OnlineConv`, the exact online long-convolution engine (relaxed tiling);
* :mod:`.schedule`: the schedule (which pairs ``(s, t)`` a step computes), pure functions;
* :mod:`.cost_model`: the measured choice of block size and direct/FFT switch;
* :mod:`.baselines`: the engine protocol and the lazy / eager / none baselines;
* :mod:`.members`: the stateful members the programs' slots are bound to;
* :mod:`.program`: :func:`instantiate` (plan -> :class:`StreamProgram`);
* :mod:`.session`: :class:`Session`, the user-facing streaming session.
"""

from . import state_ops  # noqa: F401 - registers the lcsm ops' implementations
from .engine import OnlineConv
from .program import StreamProgram, instantiate
from .session import Session

__all__ = ["OnlineConv", "Session", "StreamProgram", "instantiate"]
