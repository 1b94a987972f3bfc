"""Members: the Python objects the slots of a baseline program are bound to.

:class:`LongMember`: one ``lcsm::long_conv`` of the model, a channel slice of its group's
baseline engine (:mod:`.baselines`), with ``prefill(u)`` and ``step(u)``. (Programs on the
online engine run their convolutions as stateful ``lcsm`` ops instead: :mod:`.program`.)
"""

from __future__ import annotations

import math
import torch

__all__ = ["LongMember"]


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
