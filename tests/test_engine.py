"""The online engine equals the full causal convolution, step by step.

Tolerances: fp64 engine vs fp64 golden: 1e-10 relative to max |y|; fp32 engine vs the fp64
golden of the same (fp32-representable) inputs: 1e-4 relative to max |y|; bf16/fp16 inputs
(computed in fp32, outputs cast back): 1e-2 relative.
"""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from lcsm_compile import OnlineConv, SessionError
from lcsm_compile.runtime.cost_model import choose_plan
from lcsm_compile.codegen.tiles import direct_tile, fft_tile
from lcsm_compile.ops import causal_conv_direct, causal_conv_fft

TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def run_stream(eng, u, P):
    """Prefill P positions, step the rest: [B, C, L] outputs."""
    ys = [eng.prefill(u[..., :P])]
    for t in range(P, u.shape[-1]):
        ys.append(eng.step(u[..., t])[..., None])
    return torch.cat(ys, -1)


def golden(u, k):
    return causal_conv_fft(u.double(), k.double())


def assert_close(y, ref, dtype):
    scale = ref.abs().max().clamp_min(1e-30)
    err = (y.double() - ref).abs().max()
    assert err <= TOL[dtype] * scale, f"max error {err:.3g} vs scale {scale:.3g} (tol {TOL[dtype]})"


@pytest.mark.parametrize("L", [1, 2, 7, 37, 100, 257])
@pytest.mark.parametrize("P", [0, 1, 17, 32])
@pytest.mark.parametrize("block,fft_from", [(1, 1), (1, 1 << 20), (4, 8), (16, 16), (None, None)])
@pytest.mark.parametrize("kernels", ["auto", "torch"])
def test_engine_matches_fft_conv_fp64(L, P, block, fft_from, kernels):
    P = min(P, L)
    B, C = 2, 3
    u = torch.randn(B, C, L, dtype=torch.float64)
    k = torch.randn(C, L, dtype=torch.float64)
    eng = OnlineConv(k, max_len=L, batch_size=B, block=block, fft_from=fft_from, kernels=kernels)
    assert_close(run_stream(eng, u, P), golden(u, k), torch.float64)


def test_fft_conv_matches_definition():
    u, k = torch.randn(2, 3, 33, dtype=torch.float64), torch.randn(3, 40, dtype=torch.float64)
    assert torch.allclose(causal_conv_fft(u, k), causal_conv_direct(u, k), atol=1e-12)


@pytest.mark.parametrize("C", [1, 5, 64, 1024])
@pytest.mark.parametrize("B", [1, 3])
def test_channels_and_batch_fp32(C, B):
    L, P = 150, 37
    u = torch.randn(B, C, L)
    k = torch.randn(C, L) * torch.exp(-torch.arange(L) / 40.0)
    eng = OnlineConv(k, max_len=L, batch_size=B)
    assert_close(run_stream(eng, u, P), golden(u, k), torch.float32)


@pytest.mark.slow
def test_long_sequence_fp32():
    L, C = 5000, 4
    u = torch.randn(1, C, L)
    k = torch.randn(C, L) / L ** 0.5
    eng = OnlineConv(k, max_len=L, batch_size=1)
    assert_close(run_stream(eng, u, 0), golden(u, k), torch.float32)


def test_long_sequence_fp64_with_prompt():
    L, C, P = 5000, 2, 1000
    u = torch.randn(1, C, L, dtype=torch.float64)
    k = torch.randn(C, L, dtype=torch.float64)
    eng = OnlineConv(k, max_len=L, batch_size=1, block=8, fft_from=32)
    assert_close(run_stream(eng, u, P), golden(u, k), torch.float64)


@pytest.mark.parametrize("K", [1, 5, 64, 300])
def test_filter_length_differs_from_max_len(K):
    L = 100
    u = torch.randn(1, 3, L, dtype=torch.float64)
    k = torch.randn(3, K, dtype=torch.float64)
    eng = OnlineConv(k, max_len=L, block=4, fft_from=8)
    kz = torch.zeros(3, L, dtype=torch.float64)
    kz[:, : min(K, L)] = k[:, :L]
    assert_close(run_stream(eng, u, 10), golden(u, kz), torch.float64)


def test_max_len_beyond_generated_length():
    """The state may be larger than what is generated: outputs are the same."""
    u = torch.randn(2, 3, 40, dtype=torch.float64)
    k = torch.randn(3, 512, dtype=torch.float64)
    eng = OnlineConv(k, max_len=512, batch_size=2, block=2, fft_from=4)
    assert_close(run_stream(eng, u, 5), golden(u, k[:, :40]), torch.float64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    L, C = 80, 6
    u = torch.randn(2, C, L).to(dtype)
    k = torch.randn(C, L) * 0.1
    eng = OnlineConv(k, max_len=L, batch_size=2, dtype=dtype)
    y = run_stream(eng, u, 9)
    assert y.dtype == dtype
    assert_close(y, golden(u.float(), k), dtype)


@settings(max_examples=40, deadline=None)
@given(L=st.integers(1, 200), P=st.integers(0, 200), C=st.integers(1, 9), K=st.integers(1, 260),
       block=st.sampled_from([1, 2, 4, 8, 16, 64, None]), fft_from=st.sampled_from([1, 2, 4, 16, 1 << 20]),
       B=st.integers(1, 3))
def test_property_engine_equals_conv(L, P, C, K, block, fft_from, B):
    P = min(P, L)
    g = torch.Generator().manual_seed(L * 1000 + P)
    u = torch.randn(B, C, L, dtype=torch.float64, generator=g)
    k = torch.randn(C, K, dtype=torch.float64, generator=g)
    eng = OnlineConv(k, max_len=L, batch_size=B, block=block, fft_from=fft_from)
    kz = torch.zeros(C, L, dtype=torch.float64)
    kz[:, : min(K, L)] = k[:, :L]
    assert_close(run_stream(eng, u, P), golden(u, kz), torch.float64)


def test_group_members_step_separately():
    """diag() per member (cross-layer use) then one advance() equals step() on all channels."""
    L, C = 70, 6
    u = torch.randn(1, C, L, dtype=torch.float64)
    k = torch.randn(C, L, dtype=torch.float64)
    eng = OnlineConv(k, max_len=L, block=4, fft_from=8)
    eng.prefill(u[..., :3])
    ys = []
    for t in range(3, L):
        a = eng.diag(u[:, :2, t], slice(0, 2))
        b = eng.diag(u[:, 2:, t], slice(2, 6))
        eng.advance()
        ys.append(torch.cat([a, b], -1))
    assert_close(torch.stack(ys, -1), golden(u, k)[..., 3:], torch.float64)


@pytest.mark.parametrize("kernels", ["auto", "torch"])
def test_state_dict_round_trip(kernels):
    L, C = 90, 3
    u = torch.randn(2, C, L, dtype=torch.float64)
    k = torch.randn(C, L, dtype=torch.float64)
    ref = golden(u, k)
    eng = OnlineConv(k, max_len=L, batch_size=2, block=8, fft_from=4, kernels=kernels)
    eng.prefill(u[..., :11])
    for t in range(11, 30):
        eng.step(u[..., t])
    state = eng.state_dict()
    fresh = OnlineConv(k, max_len=L, batch_size=2, block=8, fft_from=4, kernels=kernels)
    fresh.load_state_dict(state)
    assert fresh.position == 30
    ys = [fresh.step(u[..., t]) for t in range(30, L)]
    assert_close(torch.stack(ys, -1), ref[..., 30:], torch.float64)
    # the original engine carries on identically
    ys2 = [eng.step(u[..., t]) for t in range(30, L)]
    assert torch.equal(torch.stack(ys, -1), torch.stack(ys2, -1))


def test_reset():
    u = torch.randn(1, 2, 20, dtype=torch.float64)
    k = torch.randn(2, 20, dtype=torch.float64)
    eng = OnlineConv(k, max_len=20, block=2, fft_from=2)
    run_stream(eng, u, 3)
    eng.reset()
    assert eng.position == 0
    assert_close(run_stream(eng, u, 0), golden(u, k), torch.float64)


def test_errors_leave_state_usable():
    L, C = 12, 2
    u = torch.randn(1, C, L, dtype=torch.float64)
    k = torch.randn(C, L, dtype=torch.float64)
    eng = OnlineConv(k, max_len=L, block=2, fft_from=2)
    eng.prefill(u[..., :2])
    with pytest.raises(SessionError, match=r"\[1, 2\]"):
        eng.step(torch.zeros(1, 3, dtype=torch.float64))
    with pytest.raises(SessionError, match="dtype"):
        eng.step(torch.zeros(1, C, dtype=torch.float32))
    with pytest.raises(SessionError, match="position 0"):
        eng.prefill(u[..., :2])
    with pytest.raises(SessionError, match="meta|device"):
        eng.step(torch.zeros(1, C, dtype=torch.float64, device="meta"))
    ys = [eng.step(u[..., t]) for t in range(2, L)]
    assert_close(torch.stack(ys, -1), golden(u, k)[..., 2:], torch.float64)
    with pytest.raises(SessionError, match="past max_len"):
        eng.step(u[..., 0])
    assert eng.position == L
    with pytest.raises(SessionError):
        OnlineConv(torch.zeros(3), max_len=4)
    with pytest.raises(SessionError):
        OnlineConv(torch.zeros(2, 3, dtype=torch.int64), max_len=4)
    with pytest.raises(SessionError, match="past max_len"):
        OnlineConv(k, max_len=4).prefill(u[..., :5])


def test_primitives_agree():
    """Direct (Toeplitz) and FFT tiles compute the same tile."""
    U, B, C = 8, 2, 3
    k = torch.randn(C, 2 * U, dtype=torch.float64)
    a = torch.randn(B, C, U, dtype=torch.float64)
    i = torch.arange(U)
    T = k[:, U + i[:, None] - i[None, :]]
    o1 = torch.zeros(B, C, U, dtype=torch.float64)
    o2 = torch.zeros(B, C, U, dtype=torch.float64)
    direct_tile(a, T, o1, U)
    fft_tile(a, torch.fft.rfft(k, n=2 * U), o2, U)
    want = torch.stack([sum(a[..., m] * k[:, U + t - m] for m in range(U)) for t in range(U)], -1)
    assert torch.allclose(o1, want) and torch.allclose(o2, want)


def test_cost_model_plan_is_valid():
    plan = choose_plan(1, 16, torch.float32, torch.device("cpu"), 1024)
    assert plan.block & (plan.block - 1) == 0 and plan.block >= 1
    assert plan.fft_from >= 1
    assert any(k.startswith("fft[") for k in plan.measured)
    assert any(k.startswith("block[") for k in plan.measured)


def test_rollback_of_half_done_step():
    """A group member's diag() followed by an error: rollback() restores the state exactly."""
    L, C = 40, 4
    u = torch.randn(1, C, L, dtype=torch.float64)
    k = torch.randn(C, L, dtype=torch.float64)
    eng = OnlineConv(k, max_len=L, block=8, fft_from=4)
    eng.prefill(u[..., :3])
    for t in range(3, 13):
        eng.step(u[..., t])
    eng.diag(torch.randn(1, 2, dtype=torch.float64), slice(0, 2))  # first member ran, then a failure
    eng.rollback()
    ys = [eng.step(u[..., t]) for t in range(13, L)]
    assert_close(torch.stack(ys, -1), golden(u, k)[..., 13:], torch.float64)


def test_fft_tile_in_channel_chunks():
    """Large tiles are transformed in channel chunks (cache-sized); the result is the same."""
    U, B, C = 2048, 2, 300  # 4 MiB / (B * 2U * 8 bytes) = 64 channels per chunk: 5 chunks, the last partial
    k = torch.randn(C, 2 * U, dtype=torch.float64)
    a = torch.randn(B, C, U, dtype=torch.float64)
    spec = torch.fft.rfft(k, n=2 * U)
    out = torch.zeros(B, C, U - 5, dtype=torch.float64)
    fft_tile(a, spec, out, U)
    want = torch.fft.irfft(torch.fft.rfft(a, n=2 * U) * spec, n=2 * U)[..., U:2 * U - 5]
    assert torch.allclose(out, want, atol=1e-9)


# ---------------------------------------------------------------- delayed tiles (bounded step latency)

from lcsm_compile.runtime import schedule  # noqa: E402


def _kz(k, L):
    kz = torch.zeros(k.shape[0], L, dtype=k.dtype)
    kz[:, : min(k.shape[1], L)] = k[:, :L]
    return kz


@pytest.mark.parametrize("L", [1, 2, 7, 37, 100, 257])
@pytest.mark.parametrize("P", [0, 1, 17])
@pytest.mark.parametrize("block,fft_from,delay_from", [(1, 1, 1), (1, 1 << 20, 2), (2, 4, 4), (4, 8, 16),
                                                       (4, 1 << 20, 4), (16, 16, 16)])
@pytest.mark.parametrize("kernels", ["auto", "torch"])
@pytest.mark.parametrize("chunk_flops", [None, 1.0])
def test_delayed_engine_matches_fft_conv_fp64(L, P, block, fft_from, delay_from, kernels, chunk_flops):
    """Delayed tiles, whole (default chunks at this size) or in row chunks (chunk_flops=1: as many
    chunks as rows allow, rectangles across the batch boundary), on both kernel paths."""
    P = min(P, L)
    B, C = 2, 3
    u = torch.randn(B, C, L, dtype=torch.float64)
    k = torch.randn(C, L, dtype=torch.float64)
    eng = OnlineConv(k, max_len=L, batch_size=B, block=block, fft_from=fft_from, kernels=kernels,
                     delay_from=delay_from, chunk_flops=chunk_flops)
    assert eng.delay_from == delay_from and eng.plan.delay_from == delay_from
    assert_close(run_stream(eng, u, P), golden(u, k), torch.float64)


@settings(max_examples=40, deadline=None)
@given(L=st.integers(1, 300), P=st.integers(0, 300), C=st.integers(1, 5), K=st.integers(1, 320),
       block=st.sampled_from([1, 2, 4, 8, 16]), mult=st.sampled_from([1, 2, 4, 32]),
       fft_from=st.sampled_from([1, 4, 16, 1 << 20]), B=st.integers(1, 3),
       chunk=st.sampled_from([None, 1.0, 300.0]), kernels=st.sampled_from(["auto", "torch"]))
def test_property_delayed_engine_equals_conv(L, P, C, K, block, mult, fft_from, B, chunk, kernels):
    P = min(P, L)
    g = torch.Generator().manual_seed(L * 1000 + P)
    u = torch.randn(B, C, L, dtype=torch.float64, generator=g)
    k = torch.randn(C, K, dtype=torch.float64, generator=g)
    eng = OnlineConv(k, max_len=L, batch_size=B, block=block, fft_from=fft_from, delay_from=block * mult,
                     chunk_flops=chunk, kernels=kernels)
    assert_close(run_stream(eng, u, P), golden(u, _kz(k, L)), torch.float64)


@pytest.mark.parametrize("C,B", [(64, 3), (5, 4)])
def test_delayed_channels_and_batch_fp32(C, B):
    L, P = 300, 37
    u = torch.randn(B, C, L)
    k = torch.randn(C, L) * torch.exp(-torch.arange(L) / 40.0)
    eng = OnlineConv(k, max_len=L, batch_size=B, block=4, delay_from=8, chunk_flops=1e4)
    assert_close(run_stream(eng, u, P), golden(u, k), torch.float32)


def test_engine_runs_the_schedule():
    """What advance() runs at each step is schedule.step_work of that step, also after a state load."""
    L, P, B, C = 300, 5, 2, 3
    k = torch.randn(C, L, dtype=torch.float64)
    u = torch.randn(B, C, L, dtype=torch.float64)
    eng = OnlineConv(k, max_len=L, batch_size=B, block=2, fft_from=32, delay_from=16, chunk_flops=1.0)
    ran = []
    run_work = eng._run_work
    eng._run_work = lambda w: (ran.append((eng.position - 1, w)), run_work(w))
    eng.prefill(u[..., :P])
    for t in range(P, 150):
        eng.step(u[..., t])
    fresh = OnlineConv(k, max_len=L, batch_size=B, block=2, fft_from=32, delay_from=16, chunk_flops=1.0)
    fresh.load_state_dict(eng.state_dict())
    run_fresh = fresh._run_work
    fresh._run_work = lambda w: (ran.append((fresh.position - 1, w)), run_fresh(w))
    for t in range(150, L):
        fresh.step(u[..., t])
    want = [(t, w) for t in range(P, L) for w in schedule.step_work(t, P, L, 2, 16, B * C, 1.0, 32)]
    assert ran == want
    assert any(w.delayed and w.r1 - w.r0 < B * C for _, w in ran)


def _pending_position(P, L, block, D, rows, chunk):
    """A step position with a delayed tile half done: some of its chunks ran, some are due."""
    for t in range(P, L):
        for w in schedule.step_work(t, P, L, block, D, rows, chunk):
            if w.delayed and 0 < w.r0 and w.r1 < rows:
                later = [v for tt in range(t + 1, L) for v in schedule.step_work(tt, P, L, block, D, rows, chunk)
                         if v.delayed and (v.level, v.s0) == (w.level, w.s0)]
                assert later and later[0].r0 == w.r1  # the rest of the tile is still to come
                return t + 1
    raise AssertionError("no chunked delayed tile")


@pytest.mark.parametrize("kernels", ["auto", "torch"])
@pytest.mark.parametrize("fft_from", [16, 1 << 20])
def test_state_dict_round_trip_in_a_pending_delayed_tile(kernels, fft_from):
    L, B, C, P = 300, 2, 3, 11
    opts = dict(max_len=L, batch_size=B, block=2, fft_from=fft_from, kernels=kernels, delay_from=16, chunk_flops=1.0)
    u = torch.randn(B, C, L, dtype=torch.float64)
    k = torch.randn(C, L, dtype=torch.float64)
    ref = golden(u, k)
    pos = _pending_position(P, L, 2, 16, B * C, 1.0)
    eng = OnlineConv(k, **opts)
    eng.prefill(u[..., :P])
    for t in range(P, pos):
        eng.step(u[..., t])
    assert eng.position == pos
    state = eng.state_dict()
    assert state["schedule"]["delay_from"] == 16
    fresh = OnlineConv(k, **opts)
    fresh.load_state_dict(state)
    ys = [fresh.step(u[..., t]) for t in range(pos, L)]
    assert_close(torch.stack(ys, -1), ref[..., pos:], torch.float64)
    ys2 = [eng.step(u[..., t]) for t in range(pos, L)]
    assert torch.equal(torch.stack(ys, -1), torch.stack(ys2, -1))
    # every position of one run: save, load into a fresh engine, continue one step, compare bitwise
    a = OnlineConv(k, **opts)
    a.prefill(u[..., :P])
    for t in range(P, 120):
        s = a.state_dict()
        b = OnlineConv(k, **opts)
        b.load_state_dict(s)
        assert torch.equal(a.step(u[..., t]), b.step(u[..., t]))


def test_state_dict_of_another_schedule_is_refused():
    k = torch.randn(3, 64, dtype=torch.float64)
    eng = OnlineConv(k, max_len=64, block=2, fft_from=4, delay_from=4)
    eng.prefill(torch.randn(1, 3, 5, dtype=torch.float64))
    state = eng.state_dict()
    other = OnlineConv(k, max_len=64, block=2, fft_from=4, delay_from=8)
    with pytest.raises(SessionError, match="delay_from"):
        other.load_state_dict(state)
    legacy = {key: v for key, v in state.items() if key != "schedule"}  # states without the key still load
    OnlineConv(k, max_len=64, block=2, fft_from=4, delay_from=4).load_state_dict(legacy)


@pytest.mark.parametrize("kernels", ["auto", "torch"])
def test_rollback_and_reset_with_delayed_tiles(kernels):
    L, C, B = 200, 4, 2
    u = torch.randn(B, C, L, dtype=torch.float64)
    k = torch.randn(C, L, dtype=torch.float64)
    eng = OnlineConv(k, max_len=L, batch_size=B, block=4, fft_from=16, delay_from=8, chunk_flops=1.0, kernels=kernels)
    eng.prefill(u[..., :3])
    pos = _pending_position(3, L, 4, 8, B * C, 1.0)
    for t in range(3, pos):
        eng.step(u[..., t])
    eng.diag(torch.randn(B, 2, dtype=torch.float64), slice(0, 2))  # a member ran, then a failure
    eng.rollback()
    ys = [eng.step(u[..., t]) for t in range(pos, L)]
    assert_close(torch.stack(ys, -1), golden(u, k)[..., pos:], torch.float64)
    eng.reset()
    assert_close(run_stream(eng, u, 0), golden(u, k), torch.float64)


def test_group_members_step_separately_with_delays():
    L, C = 150, 6
    u = torch.randn(2, C, L, dtype=torch.float64)
    k = torch.randn(C, L, dtype=torch.float64)
    eng = OnlineConv(k, max_len=L, batch_size=2, block=4, fft_from=8, delay_from=8, chunk_flops=1.0)
    eng.prefill(u[..., :3])
    ys = []
    for t in range(3, L):
        a = eng.diag(u[:, :2, t], slice(0, 2))
        b = eng.diag(u[:, 2:, t], slice(2, 6))
        eng.advance()
        ys.append(torch.cat([a, b], -1))
    assert_close(torch.stack(ys, -1), golden(u, k)[..., 3:], torch.float64)


def test_default_delay_from_and_undelayed_option():
    k = torch.randn(64, 512)
    eng = OnlineConv(k, max_len=512, batch_size=2, block=4, fft_from=32)
    assert eng.delay_from == schedule.default_delay_from(2 * 64, 4, 32) == eng.plan.delay_from
    assert "delay_from" in repr(eng) and "delay_from" in eng.plan.describe()
    whole = OnlineConv(k, max_len=512, batch_size=2, block=4, fft_from=32, delay_from=512)
    assert not schedule.delayed_levels(512, 0, 4, whole.delay_from)
    assert whole.flops_per_step() == schedule.tiling_flops(512, 64, 4, 32, 2, 512)["total"] / 512
    for bad in (3, 2, 0):  # not a power of two >= block
        with pytest.raises(SessionError, match="delay_from"):
            OnlineConv(k, max_len=512, block=4, fft_from=32, delay_from=bad)


@pytest.mark.parametrize("o", [1, 2, 3])
def test_tile_primitives_with_output_offsets(o):
    """Direct (Toeplitz), FFT and native direct tiles with lags o*U + i - m (delayed: o = 2, 3)."""
    from lcsm_compile.codegen import kernels_for
    U, B, C, L = 16, 2, 3, 80
    k = torch.randn(C, L, dtype=torch.float64)
    hist = torch.randn(B, C, L, dtype=torch.float64)
    s0 = 5
    t0 = s0 + o * U
    n = min(U, L - t0)
    a = hist[..., s0:s0 + U]
    want = torch.stack([sum(a[..., m] * k[:, o * U + i - m] for m in range(U)) for i in range(n)], -1)
    kseg = k[:, (o - 1) * U:(o + 1) * U]
    i = torch.arange(U)
    T = kseg[:, U + i[:, None] - i[None, :]]
    o1 = torch.zeros(B, C, n, dtype=torch.float64)
    direct_tile(a, T, o1, U)
    o2 = torch.zeros(B, C, n, dtype=torch.float64)
    fft_tile(a, torch.fft.rfft(kseg, n=2 * U), o2, U)
    assert torch.allclose(o1, want) and torch.allclose(o2, want)
    nk, _ = kernels_for(torch.float64, torch.device("cpu"))
    if nk is not None:
        acc = torch.zeros(B, C, L, dtype=torch.float64)
        nk.direct_tile(hist.data_ptr(), acc.data_ptr(), k.data_ptr(), s0, t0, U, n, B, C, L, L)
        assert torch.allclose(acc[..., t0:t0 + n], want)
        if o == 2:  # both delayed output blocks in one call (n = 2U)
            acc.zero_()
            nk.direct_tile(hist.data_ptr(), acc.data_ptr(), k.data_ptr(), s0, t0, U, 2 * U, B, C, L, L)
            want2 = torch.stack([sum(a[..., m] * k[:, 2 * U + i - m] for m in range(U)) for i in range(2 * U)], -1)
            assert torch.allclose(acc[..., t0:t0 + 2 * U], want2)


def test_fft_tile_shares_the_forward_transform():
    U, B, C = 32, 2, 5
    a = torch.randn(B, C, U, dtype=torch.float64)
    specs = [torch.fft.rfft(torch.randn(C, 2 * U, dtype=torch.float64), n=2 * U) for _ in range(2)]
    outs = [torch.zeros(B, C, U, dtype=torch.float64), torch.zeros(B, C, U - 3, dtype=torch.float64)]
    fft_tile(a, specs, outs, U)
    for spec, out in zip(specs, outs):
        ref = torch.zeros_like(out)
        fft_tile(a, spec, ref, U)
        assert torch.allclose(out, ref, atol=1e-12)
