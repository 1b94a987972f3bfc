"""Source attribution: which line of the user's code made a node (or raised an error).

One implementation for every report: :func:`user_source` (``file:line``), :func:`user_code`
(that line's text), :func:`op_name` (``aten._fft_c2r``), :func:`source_of_exception`. A frame
is the user's unless it is inside torch, the standard library's ``contextlib``/``functools``
or FX-generated code; frames inside ``lcsm_compile`` count only for the package's own demo
models (:mod:`lcsm_compile.models`), so ``explain`` on those prints their lines too.
"""

from __future__ import annotations

import os
import re
from typing import List, Optional

import torch
import torch.fx as fx

__all__ = ["op_name", "user_frames", "user_source", "user_code", "source_of_exception", "format_location"]

_PKG = os.sep + "lcsm_compile" + os.sep
_INTERNAL = (os.sep + "torch" + os.sep, "<eval_with_key>", os.sep + "contextlib.py", os.sep + "functools.py")
_USER_IN_PKG = (_PKG + "models.py",)
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)')
_EXC_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def _is_user_file(path: str) -> bool:
    if any(s in path for s in _INTERNAL):
        return False
    return _PKG not in path or path.endswith(_USER_IN_PKG)


def format_location(path: str, line: int) -> str:
    """``file:line``, the file relative to the working directory when it is below it."""
    rel = os.path.relpath(path) if os.path.isabs(path) else path
    return f"{path if rel.startswith('..') else rel}:{line}"


def op_name(node: fx.Node) -> str:
    """``aten._fft_c2r`` style name of a call_function node (its overload dropped)."""
    t = node.target
    if isinstance(t, torch._ops.OpOverload):
        return f"{t.namespace}.{t._schema.name.split('::')[-1]}"
    if isinstance(t, torch._ops.OpOverloadPacket):
        return f"{t._qualified_op_name.replace('::', '.')}"
    return getattr(t, "__name__", str(t))


def user_frames(node: fx.Node) -> List[tuple]:
    """The frames of the node's stack trace that are user code: ``(file, line, func, code)``."""
    st = node.meta.get("stack_trace") or ""
    frames = [(f, int(ln), fn, code.strip()) for f, ln, fn, code in _FRAME.findall(st)]
    return [fr for fr in frames if _is_user_file(fr[0])]


def user_source(node: fx.Node) -> Optional[str]:
    """``file:line`` of the innermost user frame that produced ``node`` (None if unknown)."""
    fr = user_frames(node)
    return format_location(fr[-1][0], fr[-1][1]) if fr else None


def user_code(node: fx.Node) -> Optional[str]:
    """The source text of the innermost user frame (one line); where that frame is inside a
    helper function (not ``forward``), the caller follows: ``... (in mix, called from f.py:50)``."""
    fr = user_frames(node)
    if not fr:
        return None
    text = fr[-1][3]
    if len(fr) >= 2 and fr[-1][2] != "forward":
        text += f"  (in {fr[-1][2]}, called from {format_location(fr[-2][0], fr[-2][1])})"
    return text


def source_of_exception(e: BaseException) -> Optional[str]:
    """``file:line`` of the last user frame named in an exception's message or traceback."""
    hits = [(f, int(ln)) for f, ln in _EXC_FRAME.findall(str(e)) if _is_user_file(f)]
    tb = e.__traceback__
    if not hits:
        while tb is not None:
            f = tb.tb_frame.f_code.co_filename
            if _is_user_file(f):
                hits.append((f, tb.tb_lineno))
            tb = tb.tb_next
    return format_location(*hits[-1]) if hits else None
