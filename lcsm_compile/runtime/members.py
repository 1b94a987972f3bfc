"""Members: the stateful objects a streaming program's slots are bound to.

* :class:`LongMember`: one ``lcsm::long_conv`` of the model, a channel slice of its group's
  engine (:class:`~lcsm_compile.runtime.engine.OnlineConv`, or a baseline engine);
* :class:`ShortMember`: one ``lcsm::short_conv``, a ring buffer of its last ``K - 1`` inputs.

Each has ``prefill(u)`` and ``step(u)`` (the slots of the prefill and step programs); a short
member's new window is pending until ``commit()`` (``rollback()`` drops it), so a step that
fails half-way leaves the state as it was.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..ops import short_conv

__all__ = ["LongMember", "ShortMember"]


class LongMember:
    """One long convolution: ``u [*lead, C, L]`` through channels ``sl`` of a group engine."""

    def __init__(self, name: str, engine, sl: slice, lead: tuple, C: int):
        self.name, self.engine, self.sl, self.lead, self.C = name, engine, sl, lead, C
        self.batch = math.prod(lead) if lead else 1

    def prefill(self, u: torch.Tensor) -> torch.Tensor:
        P = u.shape[-1]
        y = self.engine.prefill_member(u.reshape(self.batch, self.C, P), self.sl)
        return y.reshape(u.shape)

    def step(self, u: torch.Tensor) -> torch.Tensor:
        y = self.engine.diag(u.reshape(self.batch, self.C), self.sl)
        return y.reshape(u.shape)


class ShortMember:
    """One short causal depthwise convolution as a ring buffer of its last ``K - 1`` inputs."""

    def __init__(self, name: str, w: torch.Tensor, bias: Optional[torch.Tensor], lead: tuple, C: int,
                 dtype: torch.dtype, device: torch.device):
        self.name, self.lead, self.C = name, lead, C
        self.batch = math.prod(lead) if lead else 1
        self.w = w.to(device=device, dtype=dtype)          # [C, K]
        self.bias = None if bias is None else bias.to(device=device, dtype=dtype)
        self.K = self.w.shape[-1]
        self.buf = torch.zeros(self.batch, C, self.K - 1, dtype=dtype, device=device)
        self._pending: Optional[torch.Tensor] = None

    def prefill(self, u: torch.Tensor) -> torch.Tensor:
        P = u.shape[-1]
        u3 = u.reshape(self.batch, self.C, P)
        # an empty prompt: no outputs, the window stays as it is (the op cannot reshape 0 elements)
        y = short_conv(u3, self.w, self.bias) if P > 0 else u3.clone()
        tail = torch.cat([self.buf, u3], -1)[..., -(self.K - 1):] if self.K > 1 else self.buf
        self._pending = tail
        return y.reshape(u.shape)

    def step(self, u: torch.Tensor) -> torch.Tensor:
        u3 = u.reshape(self.batch, self.C, 1)
        window = torch.cat([self.buf, u3], -1)                      # [B, C, K]
        y = (window * self.w).sum(-1, keepdim=True)
        if self.bias is not None:
            y = y + self.bias[:, None]
        self._pending = window[..., 1:]
        return y.reshape(u.shape)

    def commit(self) -> None:
        if self._pending is not None:
            self.buf.copy_(self._pending)
            self._pending = None

    def rollback(self) -> None:
        self._pending = None

    def reset(self) -> None:
        self.buf.zero_()
        self._pending = None
