"""Library calls a capture cannot trace, routed to torch ops while it traces.

:func:`routed_contract`: a context manager, active only while a capture traces, under which
``opt_einsum.contract(eq, *tensors)`` runs as ``torch.einsum(eq, *tensors)``. The SSM kernels
of the public S4/H3 code (S4D's Vandermonde product ``contract('hn,hnl->hl', ...)``, ...) are
written with ``opt_einsum.contract``, whose path search reads every size as a python int: the
first tracer specializes ``L`` there and dynamo breaks the graph inside ``opt_einsum``. Only
plain calls are routed: a string equation torch understands, tensor operands, and no keyword
other than ``backend`` / ``optimize`` / ``use_blas`` / ``memory_limit`` (they choose how the
same sum is computed). Anything else (``out=``, the interleaved operand/sublist form, a
``contract_expression`` object, non-tensor operands) goes to the original function.

Two ways users reach the function are covered: the attribute ``opt_einsum.contract`` (``import
opt_einsum as oe; oe.contract(...)``), and module globals bound at import time (``from
opt_einsum import contract``): every global of the model's own modules
(``sys.modules[type(m).__module__]`` for each submodule ``m``) whose value IS
``opt_einsum.contract`` is swapped too. Everything is restored when the context exits, even on
error. Without ``opt_einsum`` installed there is nothing to route.

The context yields a list that collects the calls actually routed, ``(equation, source)``
with ``source`` the user's ``file:line`` of the call (None while dynamo traces: it cannot read
frames; the node stack traces then name the call). They become ``Captured.routed``: a capture
that used the routing is checked equal to the eager model by the pipeline.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from typing import Any, Iterator, List, Optional, Tuple

import torch

from .source import _is_user_file, format_location

__all__ = ["routed_contract", "opt_einsum_contract", "ROUTER_FRAME", "route_contract_in_dynamo"]

#: the name of the routing function's frame in a node's stack trace (a routed call made it)
ROUTER_FRAME = "contract_via_einsum"

#: the keywords of ``opt_einsum.contract`` that only choose how the sum is computed
_ROUTABLE_KWARGS = ("backend", "optimize", "use_blas", "memory_limit")
#: the characters of an equation ``torch.einsum`` parses the way ``opt_einsum`` does
_EQ_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.,-> "


def opt_einsum_contract() -> Optional[Any]:
    """The original ``opt_einsum.contract`` function, or None when opt_einsum is not installed."""
    try:
        import opt_einsum
    except ImportError:
        return None
    fn = getattr(opt_einsum, "contract", None)
    return getattr(fn, "_lcsm_original", fn)


def _routable(operands: Tuple[Any, ...], kwargs: dict) -> bool:
    if len(operands) < 2 or not isinstance(operands[0], str):
        return False
    if not all(c in _EQ_CHARS for c in operands[0]):
        return False
    if not all(isinstance(t, torch.Tensor) for t in operands[1:]):
        return False
    return all(k in _ROUTABLE_KWARGS for k in kwargs)


def _call_site() -> Optional[str]:
    """``file:line`` of the innermost user frame calling the router (plain python only)."""
    f = sys._getframe(2)
    while f is not None and not _is_user_file(f.f_code.co_filename):
        f = f.f_back
    return format_location(f.f_code.co_filename, f.f_lineno) if f is not None else None


def _einsum_router(original: Any, used: List[Tuple[str, Optional[str]]]) -> Any:
    """``contract`` that runs plain tensor calls as ``torch.einsum`` (module doc)."""

    @functools.wraps(original)
    def contract_via_einsum(*operands, **kwargs):
        if _routable(operands, kwargs):
            used.append((operands[0], None if torch.compiler.is_dynamo_compiling() else _call_site()))
            return torch.einsum(operands[0], *operands[1:])
        return original(*operands, **kwargs)

    contract_via_einsum._lcsm_original = original
    assert contract_via_einsum.__code__.co_name == ROUTER_FRAME
    return contract_via_einsum


def _model_modules(model: Any) -> List[Any]:
    """The python modules that define the classes of ``model``'s submodules (deduplicated)."""
    out, seen = [], set()
    mods = model.modules() if isinstance(model, torch.nn.Module) else ()
    for m in mods:
        pm = sys.modules.get(type(m).__module__)
        if pm is not None and id(pm) not in seen:
            seen.add(id(pm))
            out.append(pm)
    return out


@contextlib.contextmanager
def routed_contract(model: Any = None) -> Iterator[List[Tuple[str, Optional[str]]]]:
    """While active, ``opt_einsum.contract`` (the attribute, and every global of ``model``'s
    modules bound to it) routes plain tensor calls to ``torch.einsum`` (module doc). Yields the
    list of the calls routed so far, ``(equation, source)``. Restores every patched name on
    exit, even on error."""
    used: List[Tuple[str, Optional[str]]] = []
    original = opt_einsum_contract()
    if original is None:
        yield used
        return
    import opt_einsum

    router = _einsum_router(original, used)
    current = opt_einsum.contract  # the original, or an outer capture's router
    patched: List[Tuple[Any, str, Any]] = []
    try:
        patched.append((opt_einsum, "contract", current))
        opt_einsum.contract = router
        for pm in _model_modules(model):
            for name, value in list(vars(pm).items()):
                if value is original or value is current:
                    patched.append((pm, name, value))
                    setattr(pm, name, router)
        yield used
    finally:
        for ns, name, value in reversed(patched):
            setattr(ns, name, value)


_DYNAMO_ROUTED = False


def route_contract_in_dynamo() -> bool:
    """Make dynamo trace plain ``opt_einsum.contract`` calls as ``torch.einsum`` (the same
    rule as :func:`routed_contract`), so ``torch.compile(model, backend="lcsm")`` sees the SSM
    kernels as one graph instead of breaking inside opt_einsum. Registered once, when the
    backend is imported (``torch.compiler.substitute_in_graph``): it applies to every
    ``torch.compile`` in the process, and changes how dynamo traces those calls, never their
    values (eager calls are untouched). Other calls run a copy of the original function, which
    dynamo traces as before. Returns whether the substitution is in place (False without
    opt_einsum or on a torch without ``substitute_in_graph``)."""
    global _DYNAMO_ROUTED
    if _DYNAMO_ROUTED:
        return True
    original = opt_einsum_contract()
    sub = getattr(torch.compiler, "substitute_in_graph", None)
    if original is None or sub is None:
        return False
    import types

    # a distinct function object: dynamo substitutes `original` only, so the fallback does not
    # recurse into the substitute
    plain = types.FunctionType(original.__code__, original.__globals__, original.__name__,
                               original.__defaults__, original.__closure__)
    plain.__kwdefaults__ = original.__kwdefaults__
    functools.update_wrapper(plain, original)

    def contract(*operands, **kwargs):
        if _routable(operands, kwargs):
            return torch.einsum(operands[0], *operands[1:])
        return plain(*operands, **kwargs)

    try:
        sub(original, skip_signature_check=True)(contract)
    except Exception:  # noqa: BLE001 - an older or newer torch that refuses it: no routing
        return False
    _DYNAMO_ROUTED = True
    return True


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """Trace ``F.scaled_dot_product_attention`` as its math on every device.

    On the CPU the core decompositions turn SDPA into two batched matmuls around a softmax
    (what :mod:`lcsm_compile.passes.match_attention` matches); on CUDA it dispatches to fused
    kernels (``_scaled_dot_product_efficient_attention``, flash, cuDNN) that no decomposition
    opens, and a hybrid model was refused there ("not known to act position by position", seen
    on an H100). Selecting the math backend while tracing gives every device the same graph
    (the math is also the exact one: no fused-kernel rounding)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # a torch without the selector: the device's default
        yield
        return
    with sdpa_kernel([SDPBackend.MATH]):
        yield
