"""Options: one set of names for ``session``, ``generate``, ``explain`` and the backend.

``torch.compile(model, backend="lcsm", options={...})`` and the keyword arguments of the entry
points take the same names; an unknown name is an error that lists the valid ones.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, Optional

__all__ = ["SESSION_OPTIONS", "BACKEND_OPTIONS", "check_options", "KERNELS", "DEBUG_DIR_ENV",
           "resolve_debug_dir"]

#: the environment variable that gives ``debug_dir`` its default
DEBUG_DIR_ENV = "LCSM_DEBUG_DIR"

#: the ``kernels`` values: "auto" (Triton on CUDA, native C on the CPU, else torch ops), "torch"
#: (the torch twins), "native" (the C kernels, CPU), "triton" (the emitted Triton kernels: CUDA,
#: or the CPU under TRITON_INTERPRET=1); see lcsm_compile.codegen.select_kernels
KERNELS = ("auto", "torch", "native", "triton")

#: options of ``session``/``generate`` with their defaults
SESSION_OPTIONS: Dict[str, Any] = {
    "kernels": "auto",          # "auto" | "torch" | "native" | "triton" (KERNELS)
    "compile_step": "auto",     # compile the step program with Inductor: True | False | "auto" (long sessions)
    "debug_dir": None,          # write each compiler stage's graph there (None: $LCSM_DEBUG_DIR)
    "engine": "online",         # "online" | "lazy" | "eager" | "none" (benchmark baselines)
    "engine_options": None,     # e.g. {"block": 16}
    "threads": 1,               # intra-op threads of a step (None: torch's setting), restored after
    "modal": "auto",            # "auto": verified modal filters stream as recurrences; False: all online
    "memory_check": True,       # refuse a session whose predicted peak does not fit in memory (docs/memory.md)
}

#: options of ``torch.compile(..., backend="lcsm", options=...)``
BACKEND_OPTIONS: Dict[str, Any] = {
    "fallback": "eager",        # how graphs that are not rewritten run: "eager" | "inductor"
    "verbose": False,           # log every graph's decision at INFO
    "debug_dir": None,
    "stream": True,             # calls that extend the previous call's input run only the new positions
    "inductor": True,           # the full forward of a rewritten graph is compiled by Inductor (lcsm ops extern)
    # the sessions of streamed calls: max_len caps them (None: grow by doubling), the rest as for
    # session()
    "max_len": None, "kernels": "auto", "compile_step": False, "engine": "online", "engine_options": None,
    "threads": 1, "modal": "auto", "memory_check": True,
}


def check_options(options: Dict[str, Any], allowed: Iterable[str], where: str) -> None:
    """Raise ``TypeError`` naming the unknown options and the valid ones."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"{where}: unknown option(s) {unknown}; valid options: {sorted(allowed)}")


def resolve_debug_dir(value: Any = None) -> Optional[str]:
    """The ``debug_dir`` to use: ``value`` when given (a path), ``$LCSM_DEBUG_DIR`` when
    ``value`` is None (unset or empty: no dumps), and no dumps for ``False`` or ``""`` (turns
    the environment variable off for one call)."""
    if value is None:
        return os.environ.get(DEBUG_DIR_ENV) or None
    if value is False or value == "":
        return None
    return os.fspath(value)
