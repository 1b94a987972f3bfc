"""Modal long convolutions at run time: the state and the ``lcsm::modal_step`` /
``lcsm::modal_prefill`` ops (schemas in :mod:`lcsm_compile.ops`).

A convolution whose filter :mod:`lcsm_compile.passes.modal` verified to be
``k[c, t] = Re(sum_n r[c, n] p[c, n] ** t)`` streams as

    x_t = p * x_{t-1} + u_t,        y_t = Re(sum_n r_n x_t[n])

per channel: ``O(C N)`` work and state per step, whatever ``max_len``. The state
(:class:`ModalState`) is ``[2, B, C, N, 2]`` fp64 (complex numbers as real pairs: safetensors,
``torch.export`` and Inductor handle real tensors everywhere), two slots by position parity:
step ``t`` reads slot ``(t - 1) % 2`` and writes slot ``t % 2``, so a step that fails later in
the model and is run again at the same position recomputes the same state (the programs'
"nothing moves before the end of a step" rule). The state is fp64 whatever the model's dtype:
with slowly decaying poles (``|p|`` up to 0.9999) an fp32 (complex64) recurrence drifted
2-3e-5 relative from the fp64 FFT convolution over 2^14-2^16 steps, fp64 stays at ~5e-14
(``benchmarks/modal.py``, docs/benchmarks.md), and the recurrence is a few thousand
multiply-adds per layer either way (the native step, :mod:`lcsm_compile.codegen.modal`).

Prefill of ``P`` positions (from position 0): the outputs by one FFT convolution (fp64, size
``>= 2P``) of the prompt with ``h[:P]`` regenerated from the poles and residues (the folded
filter is never kept), and the state at the prompt's end, ``x_{P-1} = sum_{s<P} p^(P-1-s) u_s``,
by a Vandermonde sum over chunks of the prompt (Horner across chunks): exact, ``O(B C N P)``.

Importing this module registers the implementations (:mod:`lcsm_compile.runtime.program`
imports it).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

import torch

from ..codegen.modal import modal_kernel, modal_step_reference
from ..codegen.ring import kernels_preference, prefer_kernels
from ..errors import SessionError
from ..ops import register_stateful_impl
from ..passes.modal import MODAL_STATE, ModalSlot, power_table, realize
from ..passes.step_graph import state_attr

__all__ = ["ModalState", "modal_states", "modal_step_reference", "modal_prefill_reference", "STATE_DTYPE",
           "PREFILL_CHUNK"]

#: the dtype of the recurrence's state (complex numbers as real pairs)
STATE_DTYPE = torch.float64
#: prompt positions per chunk of the prefill's state sum (memory ``O(C N chunk)``)
PREFILL_CHUNK = 1024

_C = torch.complex128


@dataclasses.dataclass
class ModalState:
    """One modal convolution's state: ``state [2, B, C, N, 2]`` (slot ``t % 2`` holds ``x_t``),
    ``poles`` / ``residues`` ``[C, N, 2]`` (fp64 real pairs of complex numbers)."""

    state: torch.Tensor
    poles: torch.Tensor
    residues: torch.Tensor

    @property
    def modes(self) -> int:
        return int(self.poles.shape[1])

    def reset(self) -> None:
        """Back to position 0 (zero state)."""
        self.state.zero_()

    def tensors(self, name: str) -> Dict[str, torch.Tensor]:
        """The program attributes of this state (:data:`~lcsm_compile.passes.modal.MODAL_STATE`)."""
        return dict(zip((state_attr(name, f) for f in MODAL_STATE), (self.state, self.poles, self.residues)))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.state, self.poles, self.residues))


def modal_states(plan, shapes: Dict[str, tuple], kernels: str = "auto") -> Dict[str, tuple]:
    """``{conv node: (ModalState, ModalSlot)}`` for the plan's modal convolutions (zero state).
    ``kernels``: "torch" runs the steps' torch twin; anything else the native step where it
    builds (:mod:`lcsm_compile.codegen.modal`)."""
    out: Dict[str, tuple] = {}
    mp = getattr(plan, "modal", None)
    if mp is None:
        return out
    for name, f in mp.filters.items():
        lead, C, dtype, device = shapes[name]
        batch = 1
        for s in lead:
            batch *= int(s)
        if f.channels != C:
            raise SessionError(f"modal filter of {name} has {f.channels} channels, its input {C}")
        poles = torch.view_as_real(f.poles.to(_C)).to(device=device, dtype=STATE_DTYPE).contiguous()
        res = torch.view_as_real(f.residues.to(_C)).to(device=device, dtype=STATE_DTYPE).contiguous()
        st = torch.zeros(2, batch, C, f.modes, 2, dtype=STATE_DTYPE, device=device)
        if kernels == "torch":
            prefer_kernels(poles, "torch")
        out[name] = (ModalState(st, poles, res), ModalSlot(batch, C))
    return out


# ----------------------------------------------------------------------------- the ops
_NATIVE_OK: Dict[tuple, Any] = {}  # (pointers, shapes, dtype) -> the native kernel, or None (torch twin)


def _native_for(u, state, poles, residues):
    """The native step for these arguments (checked once per state and input signature), or None."""
    key = (state.data_ptr(), tuple(state.shape), poles.data_ptr(), residues.data_ptr(), u.dtype, tuple(u.shape),
           u.device.type)
    hit = _NATIVE_OK.get(key, False)
    if hit is not False:
        return hit
    if u.dim() != 2 or state.dim() != 5 or u.shape[0] != state.shape[1] or u.shape[1] != state.shape[2]:
        raise SessionError(f"modal_step: input {tuple(u.shape)} does not match the state {tuple(state.shape)}")
    ok = (u.device.type == "cpu" and u.dtype in (torch.float32, torch.float64) and state.dtype == torch.float64
          and poles.dtype == residues.dtype == torch.float64 and state.is_contiguous() and poles.is_contiguous()
          and residues.is_contiguous() and kernels_preference(poles) != "torch")
    k = modal_kernel() if ok else None
    if len(_NATIVE_OK) > 4096:
        _NATIVE_OK.clear()
    _NATIVE_OK[key] = k
    return k


def _modal_step(u, state, poles, residues, pos):
    t = int(pos.item()) if pos.numel() == 1 else int(pos.reshape(-1)[0])
    k = _native_for(u, state, poles, residues)
    if k is not None:
        return k(u if u.is_contiguous() else u.contiguous(), state, poles, residues, t)
    return modal_step_reference(u, state, poles, residues, t)


def modal_prefill_reference(u: torch.Tensor, state: torch.Tensor, poles: torch.Tensor,
                            residues: torch.Tensor, chunk: int = PREFILL_CHUNK) -> torch.Tensor:
    """The prompt ``u [B, C, P]`` from position 0 (module doc): outputs ``[B, C, P]`` in ``u``'s
    dtype; ``x_{P-1}`` written into slot ``(P - 1) % 2``."""
    P = u.shape[-1]
    if P == 0:
        return u.clone()
    p = torch.view_as_complex(poles).to(_C)                # [C, N]
    r = torch.view_as_complex(residues).to(_C)
    ud = u.to(torch.float64)
    h = realize(p, r, 0, P).to(u.device)                   # [C, P] fp64
    n = 1 << (2 * P - 1).bit_length()
    y = torch.fft.irfft(torch.fft.rfft(ud, n=n) * torch.fft.rfft(h, n=n), n=n)[..., :P]
    # x_{P-1}[b, c, n] = sum_s p^(P-1-s) u[b, c, s], chunk by chunk (Horner across chunks)
    B, C = u.shape[0], u.shape[1]
    N = p.shape[-1]
    x = torch.zeros(B, C, N, dtype=_C, device=u.device)
    if N:
        T = min(chunk, P)
        table = power_table(p, T)                          # [C, N, T]: p^j
        vand = table.flip(-1)                              # p^(T-1-j)
        for s0 in range(0, P, T):
            w = min(T, P - s0)
            blk = ud[..., s0:s0 + w].to(_C)                # [B, C, w]
            if s0:
                x = x * (table[..., w - 1] * p)            # p^w
            x = x + torch.einsum("bcj,cnj->bcn", blk, vand[..., T - w:])
    torch.view_as_real(torch.view_as_complex(state)[(P - 1) & 1]).copy_(torch.view_as_real(x))
    return y.to(u.dtype)


def _modal_prefill(u, state, poles, residues):
    if u.dim() != 3 or u.shape[0] != state.shape[1] or u.shape[1] != state.shape[2]:
        raise SessionError(f"modal_prefill: input {tuple(u.shape)} does not match the state {tuple(state.shape)}")
    if u.shape[-1] > 0:
        state.zero_()
    return modal_prefill_reference(u, state, poles, residues)


for _name, _fn in (("modal_step", _modal_step), ("modal_prefill", _modal_prefill)):
    register_stateful_impl(_name, _fn)


def describe(states: Dict[str, Any], batch: Optional[int] = None) -> str:
    """One line per modal convolution: modes, channels, state bytes."""
    lines = []
    for name, st in states.items():
        s = st.state
        lines.append(f"{name}: {s.shape[3]} modes x {s.shape[2]} channels, batch {s.shape[1]}, state "
                     f"{s.numel() * s.element_size():,} bytes")
    return "\n".join(lines)
