"""Error classes of lcsm-compile.

Every error the package raises on purpose derives from :class:`LcsmError`, so a caller can
catch them all with one ``except``.
"""

from __future__ import annotations


class LcsmError(Exception):
    """Base class of every error raised on purpose by lcsm-compile."""


class UnsupportedModelError(LcsmError, ValueError):
    """The model (or one op in it) cannot be streamed exactly.

    Args:
        reason: why the op cannot be streamed (e.g. "circular FFT convolution: n = L").
        op: the offending op, as printed in the captured graph (e.g. ``aten._fft_c2r``).
        source: the user's source location, ``file:line`` (from the node's stack trace).
    """

    def __init__(self, reason: str, op: str | None = None, source: str | None = None):
        self.reason = reason
        self.op = op
        self.source = source
        parts = []
        if op:
            parts.append(f"op {op}")
        if source:
            parts.append(f"at {source}")
        where = (" (" + ", ".join(parts) + ")") if parts else ""
        super().__init__(f"{reason}{where}")


class SessionError(LcsmError, ValueError):
    """Wrong use of a streaming session or engine (shape, dtype, device, past max_len, ...).

    The object that raised it is left unchanged and usable. ``max_supported``: where the error
    is a ``max_len`` past the model's longest length, that length (else None).
    """

    def __init__(self, message: str, max_supported: int | None = None):
        super().__init__(message)
        self.max_supported = max_supported


class ArtifactError(LcsmError, ValueError):
    """An exported artifact cannot be written or read: not an artifact, truncated or corrupted,
    another format version, or a program ``torch.export`` cannot export or load."""
