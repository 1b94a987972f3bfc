"""Factories for the ``lcsm explain/inspect MODULE:FACTORY`` tests (tests/test_cli.py).

``make`` returns ``(model, example_input)`` as the command line expects; the others are wrong
on purpose (each must give one line and exit status 2).
"""

import torch

from lcsm_compile.models import HyenaLM


def make():
    """A small Hyena LM (2 layers: 2 long and 2 short convolutions) and an 8-token prompt."""
    torch.manual_seed(0)
    model = HyenaLM(vocab=32, d_model=16, n_layers=2, max_len=256)
    return model, torch.randint(0, 32, (1, 8))


def returns_three():
    model, x = make()
    return model, x, None


def returns_no_tensor():
    model, _ = make()
    return model, [1, 2, 3]


def raises():
    raise RuntimeError("factory broke\nsecond line")


not_callable = 42


class _Circular(torch.nn.Module):
    """A circular FFT convolution (n = L: output t sees the future): refused."""

    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.randn(4, 64))

    def forward(self, x):
        L = x.shape[1]
        u = x.transpose(1, 2)
        y = torch.fft.irfft(torch.fft.rfft(u, n=L) * torch.fft.rfft(self.k[:, :L], n=L), n=L)
        return y.transpose(1, 2)


def circular():
    torch.manual_seed(0)
    return _Circular(), torch.randn(1, 8, 4)
