"""capture: one aten graph, symbolic length, the user's tensors, the user's output structure."""

import copy
import math

import sympy
import torch
import torch.nn as nn

from lcsm_compile.capture import capture_model, flatten_output
from lcsm_compile.passes.common import user_source

from ._frontend_models import FFTConvCF, FFTConvCL, PosEmb, ids

TOL = 1e-4  # fp32, relative to the largest output


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def test_capture_is_length_generic_and_uses_user_tensors():
    m = FFTConvCF().eval()
    before = copy.deepcopy(m.state_dict())
    cap = capture_model(m, ids(1, 5, 11))  # B=1, L=5: grown to B>=2 for the capture
    assert cap.error is None and cap.symbolic
    phs = list(cap.gm.graph.find_nodes(op="placeholder"))
    assert len(phs) == 1
    assert isinstance(cap.time_symbol, sympy.Symbol) and isinstance(cap.batch_symbol, sympy.Symbol)
    # parameters are get_attr nodes that ARE the user's tensors
    attrs = [n for n in cap.gm.graph.nodes if n.op == "get_attr"]
    assert any(getattr(cap.gm, n.target) is m.k for n in attrs)
    # any length, any batch (1, 2, odd, non power of two)
    for B, L in [(1, 1), (3, 2), (2, 7), (1, 33)]:
        x = ids(B, L, 11, seed=L)
        (y,) = cap.gm(x)
        assert rel(y, m(x)) < TOL
    # the user's module is untouched
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k])


def test_capture_keeps_stack_traces():
    cap = capture_model(FFTConvCF().eval(), ids(2, 6, 11))
    srcs = {user_source(n) for n in cap.gm.graph.nodes if n.op == "call_function"}
    assert any(s and "_frontend_models.py" in s for s in srcs)


def test_capture_continuous_input_and_casts():
    m = FFTConvCL().eval()
    x = torch.randn(2, 9, 3)
    cap = capture_model(m, x)
    assert cap.input_kind == "cont" and cap.error is None
    for L in (2, 5, 12):
        xi = torch.randn(2, L, 3)
        assert rel(cap.gm(xi)[0], m(xi)) < TOL


def test_out_spec_rebuilds_dict_with_non_tensor_entry():
    m = PosEmb().eval()
    cap = capture_model(m, ids(2, 6, 10))
    x = ids(2, 9, 10)
    out = cap.out_spec.unflatten(list(cap.gm(x)))
    ref = m(x)
    assert set(out) == {"logits", "hidden", "name"} and out["name"] == "posemb"
    assert rel(out["logits"], ref["logits"]) < TOL
    assert cap.out_spec.logits_index() == 0


def test_flatten_output_dataclass_and_object():
    import dataclasses

    @dataclasses.dataclass
    class Out:
        logits: torch.Tensor
        extra: tuple
        note: str = "x"

    leaves, spec = flatten_output(Out(torch.ones(1), (torch.zeros(2),), "n"))
    assert sum(spec.is_tensor) == 2
    o = spec.unflatten([torch.full((1,), 3.0), torch.zeros(2)])
    assert isinstance(o, Out) and o.note == "n" and o.logits.item() == 3.0


class Caching(nn.Module):
    """Caches a positional table on self in forward (python attribute)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.table = None

    def forward(self, x):
        L = x.shape[1]
        if self.table is None or self.table.shape[0] != L:
            self.table = torch.sin(torch.arange(L, dtype=x.dtype))[:, None]
        return self.lin(x) + self.table


def test_capture_does_not_mutate_module_state():
    m = Caching().eval()
    cap = capture_model(m, torch.randn(2, 5, 3))
    assert m.table is None  # the trace ran on a copy
    x = torch.randn(2, 8, 3)
    assert rel(cap.gm(x)[0], m(x)) < TOL


class ItemBreak(nn.Module):
    """``.item()`` on a parameter: a dynamo graph break; captured by the make_fx fallback."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.scale = nn.Parameter(torch.tensor(0.3))

    def forward(self, x):
        s = math.exp(self.scale.item())
        return self.lin(x) * s


def test_graph_break_falls_back_to_one_graph():
    m = ItemBreak().eval()
    cap = capture_model(m, torch.randn(2, 5, 3))
    assert cap.error is None and cap.symbolic
    x = torch.randn(3, 7, 3)
    assert rel(cap.gm(x)[0], m(x)) < TOL


class Specialized(nn.Module):
    def forward(self, x):
        for _ in range(x.shape[1]):  # a python loop over L: the length becomes a constant
            x = x * 0.5
        return x


def test_specialized_length_is_reported():
    cap = capture_model(Specialized(), torch.randn(2, 6, 3))
    assert cap.error is not None and "specialized" in cap.error[0]


class Regrow(nn.Module):
    """A positions buffer cached on the module and regrown in forward when too short."""

    def __init__(self):
        super().__init__()
        self.register_buffer("t", torch.arange(16.0), persistent=False)
        self.w = nn.Parameter(torch.randn(3, 1))

    def forward(self, x):  # [B, L, 3]
        L = x.shape[1]
        if self.t.shape[-1] < L:
            self.t = torch.arange(float(L))
        k = self.w * torch.exp(-self.t[:L] / 4.0)  # [3, L]
        u = x.transpose(1, 2)
        y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)[..., :L]
        return y.transpose(1, 2)


def test_max_len_recaptures_past_a_cached_buffer():
    from lcsm_compile.pipeline import lower
    m = Regrow()
    m(torch.randn(1, 20, 3))  # the buffer now has 20 positions
    short = lower(m, torch.randn(1, 6, 3))
    assert short.valid_range[1] == 20 and short.streamable
    low = lower(m, torch.randn(1, 6, 3), max_len=40)
    assert low.valid_range[1] is None and low.streamable and len(low.long_convs) == 1
    for L in (3, 30):
        x = torch.randn(2, L, 3)
        assert rel(low(x), m(x)) < TOL


def test_symbolic_bit_length_is_exact_and_its_shift_count_provably_nonnegative():
    """``(2L - 1).bit_length()`` under capture: the value of ``int.bit_length`` at every length,
    and ``b < 0`` decidable without a guard (torch < 2.13 checks the count of ``1 << b``; an
    undecidable ``ceil(log2(.)) < 0`` broke the capture there, seen on the GPU machine's 2.11)."""
    from torch._dynamo.source import ConstantSource
    from torch.fx.experimental.symbolic_shapes import ShapeEnv, statically_known_true

    from lcsm_compile.capture.symbolic import symbolic_bit_length

    with symbolic_bit_length():
        for L in (2, 3, 7, 8, 9, 1000, 4097):  # (0 and 1 specialize)
            env = ShapeEnv()
            n = env.create_symintnode(env.create_symbol(L, ConstantSource(f"L{L}")), hint=L)
            assert isinstance(n, torch.SymInt)
            b = (2 * n - 1).bit_length()
            assert isinstance(b, torch.SymInt) and b.node.hint == (2 * L - 1).bit_length()
            assert statically_known_true(b >= 0)
            assert (b.node.expr < 0) == sympy.false  # what torch < 2.13's lshift evaluates

    def f(t):
        return t.new_zeros(1 << (2 * t.shape[1] - 1).bit_length())

    torch._dynamo.reset()
    for L in (13, 40):
        xd = torch.randn(2, L)
        torch._dynamo.mark_dynamic(xd, 1)
        with symbolic_bit_length():
            out = torch.compile(f, backend="eager", fullgraph=True, dynamic=True)(xd)
        assert out.shape[0] == 1 << (2 * L - 1).bit_length()
