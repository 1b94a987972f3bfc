"""Inputs the compiler makes for itself: the capture input and the probe inputs.

One function makes every probe (verification, global checks, folding, shape recording):
:func:`probe_input`. Ids are drawn from the example's own values (so embeddings stay in
range); continuous inputs are standard normal, drawn in fp64 and cast (the same numbers
whatever the dtype).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

__all__ = ["unwrap_model", "input_kind_of", "capture_input", "probe_input"]


def unwrap_model(model: Any) -> Any:
    """The plain module behind a ``torch.compile`` result (``_orig_mod``), else ``model``."""
    while hasattr(model, "_orig_mod"):
        model = model._orig_mod
    return model


def input_kind_of(x: torch.Tensor) -> str:
    """``"ids"`` for integer ``[B, L]`` inputs, ``"cont"`` for ``[B, L, Din]`` (or other) inputs."""
    return "ids" if not (x.is_floating_point() or x.is_complex()) else "cont"


def capture_input(x: torch.Tensor, Lc: int = 11, static_batch: bool = False) -> torch.Tensor:
    """The example tiled/cut to ``B >= 2`` rows (``static_batch``: its own ``B`` rows) and length
    ``Lc`` (an odd prime by default, so that no size of the model coincides with ``L`` or
    ``2L`` and gets unified/specialized)."""
    B, L = x.shape[0], x.shape[1]
    Bc = B if static_batch else max(B, 2)
    if Bc == Lc:
        Lc += 2
    if L == 0:  # an empty example: zeros of the right kind (its values are never used)
        x = torch.zeros((B, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
        L = 1
    if Bc != B:
        x = x.repeat(*([-(-Bc // B)] + [1] * (x.dim() - 1)))[:Bc]
    if Lc != L:
        x = x.repeat(*([1, -(-Lc // L)] + [1] * (x.dim() - 2)))[:, :Lc]
    return x.contiguous()


def probe_input(example: torch.Tensor, L: int, seed: int, batch: Optional[int] = None,
                time_dim: int = 1) -> torch.Tensor:
    """A probe input like ``example`` with length ``L`` (and ``batch`` rows when given):
    random ids drawn from the example's values, or ``randn`` in the example's dtype."""
    g = torch.Generator().manual_seed(seed)
    shape = list(example.shape)
    shape[time_dim] = L
    if batch is not None:
        shape[0] = batch
    if input_kind_of(example) == "ids":
        flat = example.reshape(-1)
        if flat.numel() == 0:
            return torch.zeros(shape, dtype=example.dtype, device=example.device)
        idx = torch.randint(0, flat.numel(), shape, generator=g)
        return flat[idx].to(example.device)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(example.dtype).to(example.device)
