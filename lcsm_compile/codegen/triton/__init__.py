"""Emitted Triton kernels: the CUDA implementation of the kernel interface.

Three kernels, each beside the torch twin it is checked against (``codegen/red_cells.py``,
``codegen/tiles.py``, ``codegen/ring.py``) and with the same contract as the native C kernel
of the same name:

* ``lcsm_red_step``: the fused per-step work of one group member (history append, accumulator
  read, the block's red cells with the diagonal term) for all its channels and batch rows in
  one launch (``red_step.py.tmpl``; twin: the torch path of
  :func:`lcsm_compile.runtime.engine.red_step`);
* ``lcsm_direct_tile``: one direct tile (small ``U``) for a rectangle of rows of the group (all
  members at once) in one launch (``direct_tile.py.tmpl``; twin
  :func:`lcsm_compile.codegen.tiles.direct_tile`);
* ``lcsm_ring_step``: the short convolution's ring-buffer step, the position read on the
  device (``ring_step.py.tmpl``; twin :func:`lcsm_compile.codegen.ring.ring_step_reference`).

Large tiles keep ``torch.fft`` (cuFFT) with precomputed filter spectra
(:func:`lcsm_compile.codegen.tiles.fft_tile`), and the once-per-block transposes run as torch
ops: the Triton path replaces the per-step and small-tile work only.

**Emission.** Each template (a ``*.py.tmpl`` file here, opening with its notation and how it is
parallelised) is rendered per compute dtype (``${S}`` = ``f32``/``f64``, ``${ACC}`` =
``tl.float32``/``tl.float64``, the dtype sums are kept in) after :data:`HEAD`; the module is
written to the kernel cache (:func:`lcsm_compile.codegen.native.cache_dir`: ``$LCSM_CACHE_DIR``,
...) as ``lcsm_triton_<S>-<hash>.py``, the hash over the rendered source, so it is reused
across processes and a change of a template makes a new file. Triton needs the source in a
real file (it reads the kernels' source with ``inspect``): the module is imported from there
with ``importlib``. ``TRITON_INTERPRET=1`` is read when ``@triton.jit`` decorates, so modules
are loaded once per (file, interpreter flag). Triton's own compile cache
(``$TRITON_CACHE_DIR``) keeps the compiled binaries.

**Capability check** (:func:`triton_kernels_for`): Triton importable; the device CUDA (or the
CPU with ``TRITON_INTERPRET=1``: the interpreter, for tests); compute dtype fp32/fp64; then a
self-check: each kernel runs once on tiny inputs and must equal its twin. Any failure gives
``(None, reason)``, and the caller falls back to the next implementation with the reason in its
``kernel_note``. Per kernel size limits: a ring step of more than :data:`MAX_RING_TAPS` taps runs
its twin.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import string
import sys
import threading
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from .. import native

__all__ = ["TEMPLATES", "HEAD", "MAX_RING_TAPS", "TILE_ELEMS", "RED_BLOCK", "TritonKernels", "triton_kernels_for",
           "interpreting", "render", "emit", "emitted_sources", "triton_version"]

#: the kernel templates, in the order they are emitted
TEMPLATES = ("red_step", "direct_tile", "ring_step")
_DIR = Path(__file__).resolve().parent
#: head of every emitted module
HEAD = '''"""Triton kernels emitted by lcsm_compile ({dtype}) from the templates {templates}
of lcsm_compile/codegen/triton/. Generated: do not edit (the file name's hash covers this text)."""
import triton
import triton.language as tl


# The combine function of the sums (tl.reduce): Triton's own add (the interpreter sums it with
# numpy), else a jit function of this module. The kernels call only builtins of triton.language:
# its jit'd helpers (tl.sum, tl.zeros, ...) are decorated once, when triton.language is imported,
# and fail under a TRITON_INTERPRET=1 set later; this module is imported once per flag.
lcsm_add = getattr(tl.standard, "_sum_combine", None)
if lcsm_add is None:
    @triton.jit
    def lcsm_add(a, b):
        return a + b
'''
#: ring steps with more taps than this run their torch twin (the whole window sits in registers)
MAX_RING_TAPS = 1024
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_ACC = {torch.float32: "tl.float32", torch.float64: "tl.float64"}

_lock = threading.Lock()
_modules: Dict[Tuple[str, bool], object] = {}
_emitted: Dict[torch.dtype, str] = {}
_checked: Dict[tuple, Tuple[Optional["TritonKernels"], str]] = {}


def triton_version() -> Optional[str]:
    """The installed Triton's version, or None when Triton is not importable."""
    try:
        import triton
    except Exception:  # noqa: BLE001 - any import failure means "no Triton"
        return None
    return getattr(triton, "__version__", "unknown")


def interpreting() -> bool:
    """Whether ``@triton.jit`` makes interpreted kernels now (``TRITON_INTERPRET=1``)."""
    try:
        from triton import knobs  # triton >= 3.4

        return bool(knobs.runtime.interpret)
    except Exception:  # noqa: BLE001 - older Triton: the environment variable itself
        return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def render(dtype: torch.dtype) -> str:
    """The emitted module for compute dtype ``dtype`` (fp32/fp64): :data:`HEAD` and every
    template rendered with ``S`` and ``ACC``."""
    subs = {"S": _SUFFIX[dtype], "ACC": _ACC[dtype]}
    parts = [HEAD.format(dtype=str(dtype).replace("torch.", ""),
                         templates=", ".join(f"{t}.py.tmpl" for t in TEMPLATES))]
    for name in TEMPLATES:
        text = (_DIR / f"{name}.py.tmpl").read_text()
        parts.append(string.Template(text).substitute(subs))
    return "\n\n".join(parts)


def emit(dtype: torch.dtype) -> str:
    """Write the module for ``dtype`` to the kernel cache (once; content-hashed name) and return
    its path."""
    src = render(dtype)
    key = hashlib.sha256(src.encode()).hexdigest()[:20]
    path = os.path.join(native.cache_dir(), f"lcsm_triton_{_SUFFIX[dtype]}-{key}.py")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(src)
        os.replace(tmp, path)  # atomic: a concurrent process never imports a partial file
    _emitted[dtype] = path
    return path


def emitted_sources() -> List[str]:
    """Paths of the emitted Triton modules: those this process emitted, else the ones the
    current templates would have in the cache (if present): what ``lcsm inspect`` lists."""
    out = []
    for dt in _SUFFIX:
        path = _emitted.get(dt)
        if path is None:
            key = hashlib.sha256(render(dt).encode()).hexdigest()[:20]
            cand = os.path.join(native.cache_dir(), f"lcsm_triton_{_SUFFIX[dt]}-{key}.py")
            path = cand if os.path.exists(cand) else None
        if path is not None and os.path.exists(path):
            out.append(path)
    return out


def _load(dtype: torch.dtype):
    """The emitted module for ``dtype``, imported from its file; one per (file, interpreter)."""
    path = emit(dtype)
    flag = interpreting()
    with _lock:
        mod = _modules.get((path, flag))
        if mod is None:
            name = f"lcsm_triton_{Path(path).stem.replace('-', '_')}_{'interp' if flag else 'jit'}"
            spec = importlib.util.spec_from_file_location(name, path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod  # inspect (Triton reads the kernels' source) finds it
            try:
                spec.loader.exec_module(mod)
            except BaseException:
                sys.modules.pop(name, None)
                raise
            _modules[(path, flag)] = mod
        return mod


def _pow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, 1 << max(0, int(n) - 1).bit_length()))


#: the most elements of one program's register tile (BLOCK_Q, BLOCK_R x BLOCK_I x BLOCK_M,
#: BLOCK_Q x BLOCK_K): on a GPU, ~32 per thread of 4 warps; under the interpreter (which runs the
#: programs one after another, each op a numpy call) few large programs are much faster
TILE_ELEMS = {"gpu": 4096, "interpret": 1 << 16}
#: red-step programs cover this many (batch row, channel) pairs (GPU: many programs in flight)
RED_BLOCK = {"gpu": 128, "interpret": 4096}


class TritonKernels:
    """The loaded Triton kernels for one compute dtype (fp32 or fp64) on one device kind.

    The launchers take the engine's tensors (contiguous, on the kernels' device) and launch one
    kernel each; nothing is synchronised and no scalar is read from the device. ``kind`` is
    ``"triton"`` (the native C kernels' object says ``"native"``). ``blocks`` picks the block
    sizes: ``"gpu"`` or ``"interpret"`` (default: by :func:`interpreting`; the tests run the GPU
    sizes under the interpreter too)."""

    kind = "triton"

    def __init__(self, dtype: torch.dtype, device_type: str, blocks: Optional[str] = None):
        import triton

        self._cdiv = triton.cdiv
        self.dtype = dtype
        self.device_type = device_type
        self.blocks = blocks or ("interpret" if interpreting() else "gpu")
        self.module = _load(dtype)
        self.source = _emitted[dtype]
        s = _SUFFIX[dtype]
        self._red = getattr(self.module, f"lcsm_red_step_{s}")
        self._tile = getattr(self.module, f"lcsm_direct_tile_{s}")
        self._ring = getattr(self.module, f"lcsm_ring_step_{s}")

    def red_step(self, u: torch.Tensor, blk_hist: torch.Tensor, blk_acc: torch.Tensor, kb: torch.Tensor,
                 r: int, c0: int) -> torch.Tensor:
        """The red cells of one member (see :func:`lcsm_compile.runtime.engine.red_step`):
        records ``u [B, n]`` in ``blk_hist[r, :, c0:c0+n]`` and returns a new ``y [B, n]`` in
        ``u``'s dtype."""
        uc = u if u.is_contiguous() else u.contiguous()
        B, n = uc.shape
        if not (0 <= r < blk_hist.shape[0] and 0 <= c0 and c0 + n <= blk_hist.shape[-1] and B == blk_hist.shape[1]):
            raise ValueError(f"red step out of bounds: row {r}, channels [{c0}, {c0 + n}), batch {B} of a "
                             f"{tuple(blk_hist.shape)} block")
        y = torch.empty((B, n), dtype=u.dtype, device=u.device)
        if B and n:
            bs = _pow2(blk_hist.shape[0], 1, 1 << 30)
            bq = _pow2(B * n, 1, max(1, min(RED_BLOCK[self.blocks], TILE_ELEMS[self.blocks] // bs)))
            self._red[(self._cdiv(B * n, bq),)](uc, y, blk_hist, blk_acc, kb, int(r), B, blk_hist.shape[-1], int(c0),
                                                n, BLOCK_Q=bq, BLOCK_S=bs)
        return y

    def direct_tile(self, hist: torch.Tensor, acc: torch.Tensor, k: torch.Tensor, s0: int, t0: int, U: int, n: int,
                    b0: int, b1: int, c0: int, c1: int) -> None:
        """``acc[b, c, t0 + i] += sum_{m < U} hist[b, c, s0 + m] * k[c, t0 - s0 + i - m]`` for
        ``i < n`` and the rows ``b0 <= b < b1``, ``c0 <= c < c1`` (one launch)."""
        nb, nc = b1 - b0, c1 - c0
        rows = nb * nc
        if rows <= 0 or n <= 0:
            return
        _, C, L = hist.shape
        if not (0 <= s0 and s0 + U <= L and 0 <= t0 and t0 + n <= L and 0 <= b0 < b1 <= hist.shape[0]
                and 0 <= c0 < c1 <= C):  # a kernel writing out of bounds corrupts memory: refuse
            raise ValueError(f"direct tile out of bounds: inputs [{s0}, {s0 + U}), outputs [{t0}, {t0 + n}), "
                             f"rows [{b0}, {b1}) x [{c0}, {c1}) of a {tuple(hist.shape)} state")
        bi, bm = _pow2(n, 1, 32), _pow2(U, 1, 32)
        br = _pow2(rows, 1, max(1, TILE_ELEMS[self.blocks] // (bi * bm)))
        self._tile[(self._cdiv(n, bi), self._cdiv(rows, br))](
            hist, acc, k, int(s0), int(t0), int(U), int(n), int(b0), int(c0), nb, nc, C, L, k.shape[-1],
            BLOCK_R=br, BLOCK_I=bi, BLOCK_M=bm)

    def ring_step(self, u: torch.Tensor, buf: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor],
                  pos: torch.Tensor) -> torch.Tensor:
        """The ring-buffer step at the position held by the one-element tensor ``pos`` (read on
        the device); ``y`` in ``u``'s dtype (see :mod:`lcsm_compile.codegen.ring`)."""
        uc = u if u.is_contiguous() else u.contiguous()
        B, C, K = buf.shape
        if pos.device != buf.device or pos.dtype != torch.int64:
            pos = pos.to(device=buf.device, dtype=torch.int64)
        y = torch.empty((B, C), dtype=u.dtype, device=u.device)
        if B and C:
            bk = _pow2(K, 1, MAX_RING_TAPS)
            bq = _pow2(B * C, 1, max(1, TILE_ELEMS[self.blocks] // bk))
            self._ring[(self._cdiv(B * C, bq),)](buf, w, uc if bias is None else bias, uc, y, pos, B, C, K,
                                                 HAS_BIAS=bias is not None, BLOCK_Q=bq, BLOCK_K=bk)
        return y


def _self_check(tk: TritonKernels, device: torch.device) -> Optional[str]:
    """Run every kernel once on tiny inputs against its twin; None if all agree, else why not."""
    from ..ring import ring_step_reference
    from ..tiles import direct_tile

    dt = tk.dtype
    tol = 1e-4 if dt == torch.float32 else 1e-10
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=dt).to(device)

    # red step: block 4, B 2, C 5, member channels 1 .. 4, r = 2
    bh, ba, kb, u = rnd(4, 2, 5), rnd(4, 2, 5), rnd(4, 1, 5), rnd(2, 3)
    bh2 = bh.clone()
    y = tk.red_step(u, bh, ba, kb, 2, 1)
    bh2[2, :, 1:4] = u
    ref = ba[2, :, 1:4] + (bh2[:3, :, 1:4] * kb[:3, :, 1:4].flip(0)).sum(0)
    if not torch.allclose(y, ref, rtol=tol, atol=tol) or not torch.equal(bh, bh2):
        return "Triton self-check: red step differs from its torch twin"
    # direct tile: U 4, offset 1, B 2, C 3, L 16
    U, s0, t0 = 4, 4, 8
    hist, acc, k = rnd(2, 3, 16), rnd(2, 3, 16), rnd(3, 16)
    acc2 = acc.clone()
    tk.direct_tile(hist, acc, k, s0, t0, U, U, 0, 2, 0, 3)
    i = torch.arange(U)
    toe = k[:, (t0 - s0) + i[:, None] - i[None, :]]
    direct_tile(hist[..., s0:s0 + U], toe, acc2[..., t0:t0 + U], U)
    if not torch.allclose(acc, acc2, rtol=tol, atol=tol):
        return "Triton self-check: direct tile differs from its torch twin"
    # ring step: B 2, C 3, K 3, with bias, position 4
    buf, w, bias, u = rnd(2, 3, 3), rnd(3, 3), rnd(3), rnd(2, 3)
    buf2 = buf.clone()
    y = tk.ring_step(u, buf, w, bias, torch.full((1,), 4, dtype=torch.int64, device=device))
    ref = ring_step_reference(u, buf2, w, bias, 4)
    if not torch.allclose(y, ref, rtol=tol, atol=tol) or not torch.equal(buf, buf2):
        return "Triton self-check: ring step differs from its torch twin"
    return None


def triton_kernels_for(dtype: torch.dtype, device) -> Tuple[Optional[TritonKernels], str]:
    """Capability check: the Triton kernels for compute dtype ``dtype`` on ``device``, or
    ``(None, reason)`` (module doc). Cached per (dtype, device, interpreter flag, Triton)."""
    device = torch.device(device)
    if triton_version() is None:
        return None, "Triton is not installed (pip install triton)"
    interp = interpreting()
    if device.type == "cpu" and not interp:
        return None, "Triton kernels run on CUDA (on the CPU only under TRITON_INTERPRET=1, the interpreter)"
    if device.type not in ("cpu", "cuda"):
        return None, f"Triton kernels run on CUDA (device {device})"
    if device.type == "cuda" and not torch.cuda.is_available():
        return None, "CUDA is not available"
    if dtype not in _SUFFIX:
        return None, f"Triton kernels keep fp32/fp64 state (compute dtype {dtype})"
    key = (dtype, str(device), interp, os.environ.get("LCSM_TRITON_KERNELS", "1"))
    hit = _checked.get(key)
    if hit is not None:
        return hit
    if os.environ.get("LCSM_TRITON_KERNELS", "1") == "0":
        res: Tuple[Optional[TritonKernels], str] = (None, "turned off by LCSM_TRITON_KERNELS=0")
    else:
        try:
            tk = TritonKernels(dtype, device.type)
            why = _self_check(tk, device)
            res = (tk, "") if why is None else (None, why)
        except Exception as e:  # noqa: BLE001 - any failure to build or run: fall back, say why
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            res = (None, f"Triton kernels failed to build or run: {type(e).__name__}: {msg}"[:400])
    _checked[key] = res
    return res
