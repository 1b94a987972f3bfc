"""Diagonal state-space models whose kernels go through ``opt_einsum.contract`` (S4D / H3 flavour).

The SSM kernels of the public S4/H3 code bases are Vandermonde products written with
``opt_einsum.contract``; these models do the same, in both spellings users write
(``from opt_einsum import contract`` as a module global, and ``oe.contract`` on the module).

* :class:`S4DLM` - a stack of S4D blocks: the diagonal kernel
  ``K[h, l] = 2 Re(sum_n C'[h, n] exp(dt[h] A[h, n] l))`` with ``C' = C (exp(dt A) - 1) / A``
  (zero-order hold), the Vandermonde factor built over ``torch.arange(L)`` and reduced with
  ``contract('hn,hnl->hl', ...)``; FFT conv with ``n = 2L``, skip ``D``, GELU, output Linear,
  pre-LayerNorm residual; ids in, logits out.
* :class:`H3LM` - H3 blocks: q, k, v projections, ``y = diag_ssm(shift_ssm(k) * v) * q``. The
  shift SSM has a fixed ``N``-dim state whose transition is the shift matrix ``S`` and input
  vector ``e_0``, so its kernel is ``K[h, l] = sum_n C[h, n] (S^l e_0)[n]``: the first ``N``
  taps ``C``, then zeros. Block 1 writes it the H3 way (``C[:, :min(N, L)]``, ``F.pad`` to
  ``L`` when ``N < L``: a python branch on ``L``), block 2 as a contraction with the powers
  ``S^l e_0`` (one-hot columns built for ``l < L`` from ``arange(L)``,
  ``oe.contract('hn,nl->hl', ...)``: no branch). Both SSMs are long FFT convs with ``n = 2L``.
* :class:`BidirectionalS4DLM` - NEGATIVE: an S4D whose layer applies a two-sided kernel (the
  forward kernel padded on the right plus a second kernel flipped and padded on the left, one
  FFT of size ``2L``): outputs see future inputs, so it must be refused as non-causal.

Without ``opt_einsum`` installed (it is in the ``dev`` extra) the same math runs through
``torch.einsum``.
"""

from __future__ import annotations

import math
import types

import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    import opt_einsum as oe
    from opt_einsum import contract
except ImportError:  # pragma: no cover - the dev extra installs opt_einsum
    oe = types.SimpleNamespace(contract=torch.einsum)
    contract = torch.einsum

VOCAB = 24
WIDTH = 16
STATE = 8


# ----------------------------------------------------------------------------- kernels
class DiagonalSSMKernel(nn.Module):
    """S4D kernel generator: ``channels`` independent diagonal SSMs of ``state`` complex modes.

    ``A = -exp(log_decay) + i * freq`` (S4D-Lin init), ``dt = exp(log_dt)``; the kernel of
    length ``L`` is ``2 Re(contract('hn,hnl->hl', C (exp(dt A) - 1) / A, exp(dt A l)))``.
    """

    def __init__(self, channels: int, state: int = STATE, dt_range=(1e-2, 1e-1), copies: int = 1):
        super().__init__()
        H = channels * copies
        lo, hi = math.log(dt_range[0]), math.log(dt_range[1])
        self.log_dt = nn.Parameter(torch.rand(H) * (hi - lo) + lo)
        self.log_decay = nn.Parameter(torch.log(0.5 * torch.ones(H, state)))
        self.freq = nn.Parameter(math.pi * torch.arange(state, dtype=torch.float32).expand(H, state).clone())
        self.C = nn.Parameter(torch.randn(H, state, 2) * 0.7)

    def forward(self, L: int) -> torch.Tensor:  # -> [H, L]
        dt = self.log_dt.exp()
        A = torch.complex(-self.log_decay.exp(), self.freq)  # [H, N]
        dtA = A * dt.unsqueeze(-1)
        coef = torch.view_as_complex(self.C) * (torch.exp(dtA) - 1.0) / A  # ZOH
        steps = torch.arange(L, device=dt.device, dtype=dt.dtype)
        vander = torch.exp(dtA.unsqueeze(-1) * steps)  # [H, N, L]
        return 2.0 * contract("hn,hnl->hl", coef, vander).real


class ShiftSSMKernel(nn.Module):
    """H3 shift-SSM kernel: state ``N``, ``A`` = the shift matrix ``S``, ``B = e_0``, learned ``C``.

    ``K[h, l] = sum_n C[h, n] (S^l e_0)[n] = C[h, l]`` for ``l < N``, 0 after. Two spellings:
    ``"taps"`` (the H3 code: the first ``N`` taps cut at ``min(N, L)``, zero padded to ``L``
    when ``N < L``) and ``"powers"`` (the one-hot columns ``S^l e_0`` for ``l < L`` built from
    ``arange(L)`` and contracted with ``oe.contract``: no branch on ``L``).
    """

    def __init__(self, channels: int, state: int = 4, spelling: str = "taps"):
        super().__init__()
        self.state = state
        self.spelling = spelling
        self.C = nn.Parameter(torch.randn(channels, state) * 0.5)

    def forward(self, L: int) -> torch.Tensor:  # -> [H, L]
        if self.spelling == "powers":
            n = torch.arange(self.state, device=self.C.device)
            l = torch.arange(L, device=self.C.device)
            powers = (n.unsqueeze(-1) == l).to(self.C.dtype)  # S^l e_0, one column per position
            return oe.contract("hn,nl->hl", self.C, powers)
        k = self.C[:, :min(self.state, L)]
        if self.state < L:
            k = F.pad(k, (0, L - self.state))
        return k


def causal_fftconv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``u`` [B, H, L] (time last), ``k`` [H, L]: causal convolution by FFT of size 2L."""
    L = u.shape[-1]
    n = 2 * L
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)  # LONG CONV
    return y[..., :L]


# ----------------------------------------------------------------------------- S4D
class S4DBlock(nn.Module):
    """Pre-norm residual block: LayerNorm -> S4D conv (+ D u) -> GELU -> Linear."""

    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.kernel = DiagonalSSMKernel(d)
        self.D = nn.Parameter(torch.randn(d))
        self.out = nn.Linear(d, d)

    def forward(self, x):  # [B, L, d]
        u = self.norm(x).transpose(-1, -2)  # [B, d, L]
        k = self.kernel(u.shape[-1])
        y = causal_fftconv(u, k) + u * self.D.unsqueeze(-1)
        y = F.gelu(y).transpose(-1, -2)
        return x + self.out(y)


class S4DLM(nn.Module):
    def __init__(self, vocab: int = VOCAB, d: int = WIDTH, depth: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(S4DBlock(d) for _ in range(depth))
        self.norm_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, ids):
        h = self.embed(ids)
        for blk in self.blocks:
            h = blk(h)
        return self.lm_head(self.norm_f(h))


# ----------------------------------------------------------------------------- H3
class H3Mixer(nn.Module):
    """``y = out(diag_ssm(shift_ssm(k) * v) * q)`` over ``[B, L, d]``."""

    def __init__(self, d: int, shift_state: int = 4, spelling: str = "taps"):
        super().__init__()
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.shift = ShiftSSMKernel(d, shift_state, spelling)
        self.diag = DiagonalSSMKernel(d)
        self.D = nn.Parameter(torch.randn(d) * 0.5)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x):
        L = x.shape[1]
        q, k, v = (p(x).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))  # [B, d, L]
        k = causal_fftconv(k, self.shift(L))  # shift SSM
        kv = k * v
        y = causal_fftconv(kv, self.diag(L)) + kv * self.D.unsqueeze(-1)  # diagonal SSM
        return self.out_proj((y * q).transpose(1, 2))


class H3LM(nn.Module):
    """Pre-norm H3 blocks; the shift kernel is spelled ``"taps"`` in the first block and
    ``"powers"`` in the second (the same math, see :class:`ShiftSSMKernel`)."""

    def __init__(self, vocab: int = VOCAB, d: int = WIDTH, spellings=("taps", "powers")):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in spellings)
        self.mixers = nn.ModuleList(H3Mixer(d, spelling=sp) for sp in spellings)
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        x = self.tok(ids)
        for norm, mixer in zip(self.norms, self.mixers):
            x = x + mixer(norm(x))
        return self.head(self.ln_f(x))


# ----------------------------------------------------------------------------- negative
class BidirectionalS4DLM(nn.Module):
    """NEGATIVE: S4 ``bidirectional=True``: two kernels, the second one applied backwards."""

    def __init__(self, vocab: int = VOCAB, d: int = WIDTH):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.norm = nn.LayerNorm(d)
        self.kernel = DiagonalSSMKernel(d, copies=2)
        self.D = nn.Parameter(torch.randn(d))
        self.out = nn.Linear(d, d)
        self.lm_head = nn.Linear(d, vocab)

    def forward(self, ids):
        x = self.embed(ids)
        u = self.norm(x).transpose(-1, -2)  # [B, d, L]
        L = u.shape[-1]
        k_fwd, k_bwd = self.kernel(L).chunk(2, dim=0)
        k = F.pad(k_fwd, (0, L)) + F.pad(k_bwd.flip(-1), (L, 0))  # TWO-SIDED kernel of 2L taps
        n = 2 * L
        y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :L]  # NON-CAUSAL
        y = F.gelu(y + u * self.D.unsqueeze(-1)).transpose(-1, -2)
        return self.lm_head(x + self.out(y))


def _builder(cls, seed):
    def build():
        torch.manual_seed(seed)
        return cls().eval()

    build.__name__ = f"build_{cls.__name__}"
    return build


build_s4d = _builder(S4DLM, 3101)
build_h3 = _builder(H3LM, 3102)
build_bidirectional = _builder(BidirectionalS4DLM, 3103)
