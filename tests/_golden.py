"""The one golden test helper: fp64 golden vs eager vs ours (the FlexAttention test pattern).

A rewrite is right when its error against an fp64 golden is within a stated multiple of the
error the model's own eager computation makes against the same golden, plus a small
tolerance (both relative to the golden's largest magnitude):

    err(ours, golden) <= FACTOR * err(eager, golden) + tol

so ours may not be much worse than eager, whatever the dtype, and an exact eager (err 0: the
model computes in fp64, or casts to fp32 itself) still leaves room for a different but correct
summation order. Used by the backend, teacher-forcing and kernel tests.
"""

from __future__ import annotations

import copy
from typing import List, Optional, Sequence, Union

import torch

from lcsm_compile.capture import flatten_output

FACTOR = 4.0
#: the tolerance per dtype of "ours" (relative to max |golden|)
TOL = {torch.float64: 1e-10, torch.float32: 2e-6, torch.bfloat16: 2e-2, torch.float16: 2e-2}

Tensors = Union[torch.Tensor, Sequence[torch.Tensor]]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / max |b|`` in fp64."""
    b64 = b.double()
    return ((a.double() - b64).abs().max() / b64.abs().max().clamp_min(1e-30)).item()


def tensors(out) -> List[torch.Tensor]:
    """The tensor leaves of a model output, in order."""
    return [t for t in flatten_output(out)[0] if isinstance(t, torch.Tensor)]


def golden_forward(model: torch.nn.Module, x: torch.Tensor) -> Optional[List[torch.Tensor]]:
    """The model's outputs computed in fp64 (a deep copy; ids stay ids), or None for a model
    that cannot run in fp64 (its forward fixes a dtype itself)."""
    m = copy.deepcopy(model).double()
    xx = x.double() if x.is_floating_point() else x
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # tensors the forward creates itself
    try:
        with torch.no_grad():
            return tensors(m(xx))
    except RuntimeError:  # e.g. "mat1 and mat2 must have the same dtype": fp32 fixed in forward
        return None
    finally:
        torch.set_default_dtype(old)


def assert_golden(ours: Tensors, eager: Tensors, golden: Optional[Tensors], *, factor: float = FACTOR,
                  tol: Optional[float] = None, what: str = "") -> List[tuple]:
    """Assert ``err(ours) <= factor * err(eager) + tol`` for each floating-point output (module
    doc); ``tol`` defaults to :data:`TOL` of ours' dtype. Without a golden (None), eager is the
    reference: ``err(ours, eager) <= tol``. Returns ``[(err_ours, err_eager)]``."""
    if golden is None:
        golden = eager
    ours, eager, golden = ([t] if isinstance(t, torch.Tensor) else list(t) for t in (ours, eager, golden))
    assert len(ours) == len(eager) == len(golden), (what, len(ours), len(eager), len(golden))
    res = []
    for i, (o, e, g) in enumerate(zip(ours, eager, golden)):
        assert o.shape == e.shape == g.shape, (what, i, o.shape, e.shape, g.shape)
        if not g.is_floating_point():
            assert torch.equal(o, e), (what, i)
            continue
        t = TOL[o.dtype] if tol is None else tol
        eo, ee = rel_err(o, g), rel_err(e, g)
        assert eo <= factor * ee + t, f"{what} output {i}: ours {eo:.2e} vs golden, eager {ee:.2e} (factor {factor}, tol {t:.0e})"
        res.append((eo, ee))
    return res
