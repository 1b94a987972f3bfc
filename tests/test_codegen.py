"""Native CPU kernels (lcsm_compile.codegen): each equals its torch reference, the capability
check falls back with a reason, and the engine gives the same results on either path.

Tolerances: fp64 kernels vs torch references 1e-12 relative; fp32 1e-5 relative (a fused
multiply-add rounds once where torch may round twice).
"""

import pytest
import torch

from lcsm_compile import OnlineConv
from lcsm_compile.codegen import kernels_for, native, red_cells
from lcsm_compile.codegen.tiles import direct_tile
from lcsm_compile.ops import causal_conv_direct

from ._golden import assert_golden

NK = {dt: kernels_for(dt, torch.device("cpu"))[0] for dt in (torch.float32, torch.float64)}
needs_native = pytest.mark.skipif(NK[torch.float32] is None, reason="no working C compiler here")
RTOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def close(a, b, dtype):
    scale = b.abs().max().clamp_min(1e-30)
    assert (a - b).abs().max() <= RTOL[dtype] * scale


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("block,B,C,c0,n,r", [(8, 1, 5, 0, 5, 0), (8, 3, 70, 3, 64, 5), (32, 2, 130, 0, 130, 31),
                                              (1, 1, 1, 0, 1, 0), (16, 2, 9, 4, 5, 15)])
def test_red_step_equals_reference(dtype, block, B, C, c0, n, r):
    """The native step (pull form) returns what the torch reference (push form) returns for a
    block whose rows 0..r-1 were stepped before; it records u and leaves blk_acc alone."""
    nk = NK[dtype]
    hist = torch.randn(block, B, C, dtype=dtype)        # rows < r: the block's earlier inputs
    acc = torch.randn(block, B, C, dtype=dtype)         # the tiles' contributions
    kb = torch.randn(block, 1, C, dtype=dtype)
    u = torch.randn(B, n, dtype=dtype)
    sl = slice(c0, c0 + n)
    h2, a2 = hist.clone(), acc.clone()
    for s_ in range(r):  # the reference's state after steps 0..r-1
        a2[s_:, :, sl].addcmul_(h2[s_, :, sl], kb[: block - s_, :, sl])
    want = red_cells.red_step_reference(u, h2[r, :, sl], a2[r:, :, sl], kb[: block - r, :, sl], a2[r, :, sl])
    acc0 = acc.clone()
    params = red_cells.red_step_params(hist, acc, kb, c0, n)
    y = torch.empty(B, n, dtype=dtype)
    nk.red_step(params.data_ptr(), u.data_ptr(), y.data_ptr(), r)
    close(y, want, dtype)
    assert torch.equal(acc, acc0)
    assert torch.equal(hist, h2)  # u recorded exactly in row r; nothing else touched


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,C,L,start,n", [(1, 1024, 300, 17, 64), (2, 70, 129, 64, 65), (3, 5, 40, 0, 1),
                                           (1, 130, 4096, 4000, 96)])
def test_block_transposes_equal_reference(dtype, B, C, L, start, n):
    nk = NK[dtype]
    block = n
    state = torch.randn(B, C, L, dtype=dtype)
    stage = torch.empty(B, C, block, dtype=dtype)
    blk, blk_ref = torch.zeros(block, B, C, dtype=dtype), torch.zeros(block, B, C, dtype=dtype)
    nk.load_block(state.data_ptr(), blk.data_ptr(), start, n, B, C, L)
    red_cells.load_block_reference(state, blk_ref, stage, start, n)
    assert torch.equal(blk, blk_ref)
    src = torch.randn(block, B, C, dtype=dtype)
    s1, s2 = state.clone(), state.clone()
    nk.flush_block(src.data_ptr(), s1.data_ptr(), start, n, B, C, L)
    red_cells.flush_block_reference(src, s2, stage, start, n)
    assert torch.equal(s1, s2)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("U,n", [(1, 1), (2, 2), (8, 8), (16, 11), (32, 32), (64, 40), (128, 128)])
def test_native_direct_tile_equals_toeplitz(dtype, U, n):
    B, C, L = 2, 67, 3 * U + 5
    s0 = 3
    t0 = s0 + U
    hist = torch.randn(B, C, L, dtype=dtype)
    acc = torch.randn(B, C, L, dtype=dtype)
    k = torch.randn(C, L, dtype=dtype)
    acc0 = acc.clone()
    want = acc.clone()
    i = torch.arange(U)
    T = k[:, U + i[:, None] - i[None, :]].contiguous()
    direct_tile(hist[..., s0:s0 + U], T, want[..., t0:t0 + n], U)
    NK[dtype].direct_tile(hist.data_ptr(), acc.data_ptr(), k.data_ptr(), s0, t0, U, n, B, C, L, L)
    assert not torch.equal(acc, acc0)  # the tile wrote its outputs ...
    assert torch.equal(acc[..., :t0], acc0[..., :t0]) and torch.equal(acc[..., t0 + n:], acc0[..., t0 + n:])
    err = (acc - want).abs().max()  # ... equal to the Toeplitz reference, and nothing else
    assert err <= RTOL[dtype] * want.abs().max(), f"max error {err:.3g}"


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,C,K,with_bias", [(1, 1, 1, True), (2, 7, 3, True), (3, 70, 4, False), (1, 33, 2, True)])
def test_native_ring_step_equals_reference_and_the_convolution(dtype, B, C, K, with_bias):
    """The ring-buffer step (native and twin) over a sequence equals the short convolution,
    and a retried position (written twice) changes nothing."""
    from lcsm_compile.codegen.ring import ring_step_reference
    from lcsm_compile.ops import causal_short_conv

    g = torch.Generator().manual_seed(K * 100 + C)
    T = 3 * K + 5
    u = torch.randn(B, C, T, generator=g, dtype=dtype)
    w = torch.randn(C, K, generator=g, dtype=dtype)
    bias = torch.randn(C, generator=g, dtype=dtype) if with_bias else None
    bn, bt = torch.zeros(B, C, K, dtype=dtype), torch.zeros(B, C, K, dtype=dtype)
    yn, yt = [], []
    nk = NK[dtype]
    for t in range(T):
        if t == K + 1:  # a retried position: first with other values, then the real ones
            junk = torch.empty(B, C, dtype=dtype)
            nk.ring_step(bn.data_ptr(), w.data_ptr(), None if bias is None else bias.data_ptr(),
                         torch.randn(B, C, generator=g, dtype=dtype).data_ptr(), junk.data_ptr(), B, C, K, t)
        y = torch.empty(B, C, dtype=dtype)
        ut = u[..., t].contiguous()
        nk.ring_step(bn.data_ptr(), w.data_ptr(), None if bias is None else bias.data_ptr(), ut.data_ptr(),
                     y.data_ptr(), B, C, K, t)
        yn.append(y)
        yt.append(ring_step_reference(ut, bt, w, bias, t))
    ref = causal_short_conv(u, w, bias)
    close(torch.stack(yn, -1), ref, dtype)
    close(torch.stack(yt, -1), ref, dtype)
    assert torch.equal(bn, bt)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_engine_native_equals_torch_path(dtype):
    L, P, B, C = 700, 13, 2, 37
    u = torch.randn(B, C, L, dtype=dtype)
    k = torch.randn(C, L, dtype=dtype) / 10
    outs = {}
    for kern in ("auto", "torch"):
        eng = OnlineConv(k, max_len=L, batch_size=B, block=16, fft_from=64, kernels=kern)
        assert (eng._nk is not None) == (kern == "auto")
        ys = [eng.prefill(u[..., :P])] + [eng.step(u[..., t])[..., None] for t in range(P, L)]
        outs[kern] = torch.cat(ys, -1)
    close(outs["auto"], outs["torch"], dtype)
    # golden vs twin vs native: the native kernels are no less accurate than their torch twins
    assert_golden(outs["auto"], outs["torch"], causal_conv_direct(u.double(), k.double()), what=str(dtype))
    assert "native" in OnlineConv(k, max_len=L, batch_size=B, kernels="auto").kernel_note
    assert "kernels='torch'" in OnlineConv(k, max_len=L, batch_size=B, kernels="torch").kernel_note


@needs_native
def test_returned_outputs_are_never_overwritten():
    """Fused steps hand out rows of a per-block buffer: held outputs survive later steps,
    block changes, a rollback and a reset."""
    L, C = 80, 6
    u = torch.randn(1, C, L)
    k = torch.randn(C, L)
    eng = OnlineConv(k, max_len=L, block=8, fft_from=4)
    eng.prefill(u[..., :3])
    held = [eng.step(u[..., t]) for t in range(3, 20)]
    copies = [y.clone() for y in held]
    eng.diag(torch.randn(1, C))
    eng.rollback()
    held += [eng.step(u[..., t]) for t in range(20, 40)]
    copies += [y.clone() for y in held[len(copies):]]
    eng.reset()
    eng.prefill(u[..., :5])
    for t in range(5, L):
        eng.step(u[..., t])
    assert all(torch.equal(a, b) for a, b in zip(held, copies))


def test_capability_check_falls_back_with_a_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("LCSM_NATIVE_KERNELS", "0")
    assert kernels_for(torch.float32, torch.device("cpu")) == (None, "turned off by LCSM_NATIVE_KERNELS=0")
    eng = OnlineConv(torch.randn(3, 20), max_len=20, block=4, fft_from=8)
    assert eng._nk is None and "LCSM_NATIVE_KERNELS=0" in eng.kernel_note
    monkeypatch.delenv("LCSM_NATIVE_KERNELS")
    assert kernels_for(torch.bfloat16, torch.device("cpu"))[0] is None
    assert "fp32/fp64" in kernels_for(torch.bfloat16, torch.device("cpu"))[1]
    # a source the compiler rejects: None, and the compiler's message as the reason
    monkeypatch.setenv("LCSM_CACHE_DIR", str(tmp_path))
    ok, why = native.available("this is not C;", "broken_for_test")
    assert not ok and ("error" in why or "C compiler" in why)


def test_kernel_sources_go_to_the_cache_dir(monkeypatch, tmp_path):
    if native.compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("LCSM_CACHE_DIR", str(tmp_path))
    lib = native.load_library("int lcsm_answer(void) { return 42; }\n", "answer_for_test")
    assert lib is not None and lib.lcsm_answer() == 42
    assert any(p.suffix == ".c" for p in tmp_path.iterdir()) and any(p.suffix == ".so" for p in tmp_path.iterdir())


def test_engine_rejects_unknown_kernels():
    from lcsm_compile import SessionError
    with pytest.raises(SessionError, match="kernels"):
        OnlineConv(torch.randn(2, 8), max_len=8, kernels="triton")


def test_huge_page_hint_is_harmless():
    t = torch.empty(3 << 20)
    native.advise_huge_pages(t)  # True where Linux takes the hint; never an error
    t.zero_()
    assert float(t.abs().sum()) == 0.0
    assert native.advise_huge_pages(torch.empty(10)) is False  # smaller than one huge page


@pytest.mark.parametrize("kernels", ["auto", "torch"])
def test_outputs_are_never_overwritten(kernels):
    """Every step's output is a new tensor: views kept across many later steps (and blocks)
    keep their values, and no two outputs share memory."""
    L, C = 200, 5
    u = torch.randn(1, C, L)
    eng = OnlineConv(torch.randn(C, L), max_len=L, block=8, fft_from=4, kernels=kernels)
    eng.prefill(u[..., :1])
    outs = [eng.step(u[..., t]) for t in range(1, 20)]
    views = [o.reshape(-1)[1:] for o in outs]
    copies = [v.clone() for v in views]
    for t in range(20, L):
        eng.step(u[..., t])
    assert all(torch.equal(a, b) for a, b in zip(views, copies))
    assert len({o.untyped_storage().data_ptr() for o in outs}) == len(outs)
