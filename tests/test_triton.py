"""The emitted Triton kernels (lcsm_compile.codegen.triton), on the CPU under the interpreter.

``TRITON_INTERPRET=1`` runs Triton kernels on CPU tensors (numpy, one program after another):
each kernel is checked against its torch twin (fp32, fp64, bf16 inputs with fp32 sums, odd
channel counts, batch 1 and 3, with the block sizes the GPU uses and the interpreter's), the
engine on Triton against the fp64 convolution, two example models teacher-forced with
``kernels="triton"`` against their full forward, and the step program compiled fullgraph. The
capability checks, the fallbacks and the emitted files are checked without the interpreter.
Sizes are tiny: the interpreter costs milliseconds per kernel op.

The tests marked ``gpu`` compile the kernels for a real GPU and skip without CUDA.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lcsm_compile
from lcsm_compile import OnlineConv, SessionError
from lcsm_compile.codegen import KERNEL_CODES, select_kernels
from lcsm_compile.codegen import triton as tr
from lcsm_compile.codegen.ring import ring_step_reference
from lcsm_compile.codegen.tiles import direct_tile
from lcsm_compile.models import HyenaLM
from lcsm_compile.ops import causal_conv_direct
from lcsm_compile.runtime.engine import red_step

from ._frontend_models import FFTConvCF
from ._golden import assert_golden, golden_forward, rel_err, tensors

pytest.importorskip("triton")

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


@pytest.fixture
def interp(monkeypatch):
    """Triton's interpreter for this test (read when ``@triton.jit`` decorates: the emitted
    module is loaded once per interpreter flag)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield


def _kernels(dtype, blocks):
    tk, why = tr.triton_kernels_for(dtype, CPU)
    assert tk is not None, why
    return tr.TritonKernels(dtype, "cpu", blocks=blocks)


def _close(a, b, dtype, what=""):
    assert rel_err(a, b) <= TOL[dtype], (what, rel_err(a, b))


# ------------------------------------------------------------------------------ kernels vs twins

F32, F64, BF16 = torch.float32, torch.float64, torch.bfloat16


@pytest.mark.parametrize("dtype,udtype,B,C,c0,n,blocks", [
    (F32, F32, 1, 13, 3, 7, "interpret"), (F64, F64, 3, 61, 5, 49, "gpu"),  # gpu blocks: 2 programs
    (F32, BF16, 3, 13, 3, 7, "interpret"), (F32, BF16, 1, 61, 5, 49, "gpu"), (F64, F64, 3, 13, 0, 13, "interpret"),
], ids=["fp32-b1", "fp64-b3-gpu", "bf16in-b3", "bf16in-b1-gpu", "fp64-b3-whole"])
def test_red_step_equals_its_twin(interp, blocks, dtype, udtype, B, C, c0, n):
    """One member's red cells (channels c0 .. c0+n of an odd group) at block rows r = 0 and 5:
    the output and the recorded input equal the torch twin's; bf16 inputs are summed in the
    fp32 state and compared with the fp32 twin on the same (upcast) inputs."""
    tk = _kernels(dtype, blocks)
    block = 8
    bh, ba, kb = (torch.randn(block, B, C, dtype=dtype), torch.randn(block, B, C, dtype=dtype),
                  torch.randn(block, 1, C, dtype=dtype))
    for r in (0, 5):
        u = torch.randn(B, 2 * n, dtype=dtype).to(udtype)[:, ::2]  # a strided input: made contiguous
        bh_t, bh_r = bh.clone(), bh.clone()
        y = red_step(u, bh_t, ba, kb, r, c0, tk)
        ref = red_step(u.to(dtype), bh_r, ba, kb, r, c0, None)  # the torch twin, in the state dtype
        assert y.dtype == udtype and y.shape == (B, n)
        assert torch.equal(bh_t, bh_r)  # only row r of the member's channels changed, to u
        if udtype == torch.bfloat16:
            assert torch.equal(y, ref.to(udtype)) or rel_err(y, ref) <= 8e-3  # one bf16 rounding of the sum
        else:
            _close(y, ref, dtype, f"r={r}")


def _toeplitz(k, lag0, n, U):
    i, m = torch.arange(n), torch.arange(U)
    return k[:, lag0 + i[:, None] - m[None, :]]  # [C, n, U]: the twin's precomputed block


@pytest.mark.parametrize("dtype,B,U,o,n,rect,blocks", [
    (F32, 1, 4, 1, 4, None, "interpret"), (F64, 3, 8, 1, 5, None, "gpu"), (F32, 3, 8, 2, 16, None, "interpret"),
    (F64, 1, 32, 2, 64, None, "gpu"),  # gpu blocks: 2 x 3 programs
    (F32, 3, 32, 2, 64, None, "gpu"), (F32, 3, 4, 2, 8, (1, 2, 3, 10), "interpret"),
    (F64, 3, 8, 2, 12, (0, 3, 2, 5), "gpu"),
], ids=["U4-b1", "U8-partial-b3-gpu", "U8-delayed-b3", "U32-delayed-b1-gpu", "U32-delayed-b3-gpu",
        "rect-one-batch", "rect-channels-gpu"])
def test_direct_tile_equals_its_twin(interp, blocks, dtype, U, o, n, rect, B):
    """One direct tile (immediate o = 1, or both output blocks of a delayed tile, o = 2, n = 2U)
    on all rows or a rectangle of rows of an odd group, against the Toeplitz product."""
    tk = _kernels(dtype, blocks)
    C = 11
    s0 = 2 * U
    t0 = s0 + o * U
    L = t0 + n + 3
    hist, acc, k = torch.randn(B, C, L, dtype=dtype), torch.randn(B, C, L, dtype=dtype), torch.randn(C, L, dtype=dtype)
    b0, b1, c0, c1 = rect or (0, B, 0, C)
    want = acc.clone()
    direct_tile(hist[b0:b1, c0:c1, s0:s0 + U], _toeplitz(k[c0:c1], o * U, n, U), want[b0:b1, c0:c1, t0:t0 + n], U)
    tk.direct_tile(hist, acc, k, s0, t0, U, n, b0, b1, c0, c1)
    _close(acc, want, dtype)
    outside = torch.ones_like(acc, dtype=torch.bool)
    outside[b0:b1, c0:c1, t0:t0 + n] = False
    assert torch.equal(acc[outside], want[outside])  # nothing else written


@pytest.mark.parametrize("dtype,B,C,K,bias,blocks", [
    (F32, 1, 5, 1, True, "interpret"), (F64, 3, 13, 3, True, "gpu"), (BF16, 3, 7, 4, False, "interpret"),
    (F32, 3, 401, 3, True, "gpu"), (BF16, 1, 13, 3, True, "gpu"),  # gpu blocks: 2 programs
], ids=["fp32-K1-b1", "fp64-K3-b3-gpu", "bf16-K4-b3", "fp32-K3-b3-gpu-2programs", "bf16-K3-b1-gpu"])
def test_ring_step_equals_its_twin(interp, blocks, dtype, B, C, K, bias):
    """Ring-buffer steps over 2K + 2 positions (the window wraps): outputs and the buffer equal
    the torch twin's; the position is read on the device from ``pos``. bf16 buffers are summed
    in fp32 and compared with the fp32 twin on the same values."""
    cd = torch.float64 if dtype == torch.float64 else torch.float32
    tk = _kernels(cd, blocks)
    w = torch.randn(C, K).to(dtype)
    b = torch.randn(C).to(dtype) if bias else None
    buf, buf_r = torch.zeros(B, C, K, dtype=dtype), torch.zeros(B, C, K, dtype=cd)
    pos = torch.zeros(1, dtype=torch.long)
    for t in range(2 * K + 2):
        u = torch.randn(B, C).to(dtype)
        pos.fill_(t)
        y = tk.ring_step(u, buf, w, b, pos)
        ref = ring_step_reference(u.to(cd), buf_r, w.to(cd), None if b is None else b.to(cd), t)
        assert y.dtype == dtype
        assert torch.equal(buf.to(cd), buf_r)
        if dtype == torch.bfloat16:
            assert rel_err(y, ref) <= 8e-3, t
        else:
            _close(y, ref, dtype, f"t={t}")


# ------------------------------------------------------------------------------ the engine

@pytest.mark.parametrize("dtype,kdtype", [(torch.float32, torch.float32), (torch.float64, torch.float64),
                                          (torch.bfloat16, torch.float32)], ids=["fp32", "fp64", "bf16-in"])
def test_engine_on_triton_equals_the_torch_path_and_the_convolution(interp, dtype, kdtype):
    """The engine with every kind of work (red cells, immediate and delayed direct tiles on
    Triton, FFT tiles, delayed chunks of rows) against its torch path and the fp64 definition;
    a state saved halfway resumes on a fresh Triton engine."""
    L, P, B, C = 48, 3, 3, 5
    k = (torch.randn(C, L) / 4).to(kdtype)
    u = torch.randn(B, C, L, dtype=kdtype).to(dtype)
    opts = dict(max_len=L, batch_size=B, dtype=dtype, block=4, fft_from=16, delay_from=8, chunk_flops=1.0)
    outs = {}
    for kern in ("triton", "torch"):
        eng = OnlineConv(k, kernels=kern, **opts)
        ys = [eng.prefill(u[..., :P])]
        for t in range(P, L):
            if kern == "triton" and t == 29:  # mid-block, a delayed tile pending: resume elsewhere
                state = eng.state_dict()
                eng = OnlineConv(k, kernels=kern, **opts)
                eng.load_state_dict(state)
            ys.append(eng.step(u[..., t])[..., None])
        outs[kern] = torch.cat(ys, -1)
        assert (eng._tk is not None) == (kern == "triton") and eng._nk is None
    assert "Triton" in OnlineConv(k, kernels="triton", **opts).kernel_note
    ref = causal_conv_direct(u.double(), k.double())
    if dtype == torch.bfloat16:  # bf16 outputs: one rounding of the same fp32 sums
        assert rel_err(outs["triton"], outs["torch"]) <= 8e-3
    else:
        assert_golden(outs["triton"], outs["torch"], ref, what=str(dtype))


# ------------------------------------------------------------------------------ models

def _teacher_force(sess, x, P):
    outs = [tensors(sess.prefill(x[:, :P]))]
    for t in range(P, x.shape[1]):
        outs.append(tensors(sess.step(x[:, t:t + 1])))
    return [torch.cat([o[i] for o in outs], 1) for i in range(len(outs[0]))]


def _spy(monkeypatch):
    calls = {"red_step": 0, "direct_tile": 0, "ring_step": 0}
    for name in calls:
        orig = getattr(tr.TritonKernels, name)

        def wrapped(self, *a, _orig=orig, _name=name, **kw):
            calls[_name] += 1
            return _orig(self, *a, **kw)

        monkeypatch.setattr(tr.TritonKernels, name, wrapped)
    return calls


@pytest.mark.parametrize("build,B,P,rings", [
    (lambda: HyenaLM(vocab=11, d_model=8, n_layers=2, max_len=64), 3, 0, True),
    (lambda: FFTConvCF(vocab=11, d=5, max_len=64), 1, 5, False),
], ids=["hyena-b3-p0", "fftconv-b1-p5"])
def test_models_teacher_forced_on_triton_equal_the_forward(interp, monkeypatch, build, B, P, rings):
    """Prefill + steps of a session with ``kernels="triton"`` (red cells, direct tiles, and the
    ring steps of the short convolutions, all Triton: checked by a spy) equal the model's full
    forward at every position (immediate and delayed direct tiles, FFT tiles and delayed chunks
    of rows all run within the 30 positions); ``lcsm inspect``'s report lists the emitted file."""
    from lcsm_compile.inspection import inspect_report

    torch.manual_seed(0)
    model = build().eval()
    x = torch.randint(0, 11, (B, 30))
    with torch.no_grad():
        ref = tensors(model(x))
    sess = lcsm_compile.session(model, x[:, :max(P, 1)], max_len=32, kernels="triton", compile_step=False,
                                engine_options={"block": 4, "fft_from": 16, "delay_from": 8, "chunk_flops": 1.0})
    assert "Triton" in sess.kernel_note and sess.program.engines
    assert all(e._tk is not None for e in sess.program.engines)
    calls = _spy(monkeypatch)
    with torch.no_grad():
        got = _teacher_force(sess, x, P)
    assert calls["red_step"] and calls["direct_tile"] and bool(calls["ring_step"]) == rings, calls
    assert_golden(got, ref, golden_forward(model, x), what="triton session")
    rep = inspect_report(sess)
    assert "kernels: emitted Triton kernels" in rep
    line = next(li for li in rep.splitlines() if li.startswith("kernel source (Triton"))
    assert any(p.strip().endswith(".py") and "lcsm_triton_f32-" in p and os.path.exists(p.strip())
               for p in line.split("ring step): ", 1)[1].split(","))


def test_step_program_compiles_fullgraph_with_triton_kernels(interp):
    """The step program on Triton kernels stays one graph of ``lcsm`` ops: it compiles with
    ``fullgraph=True`` (the kernels run inside the ops) and streams like the eager program."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = HyenaLM(vocab=16, d_model=8, n_layers=1, max_len=32).eval()
    x = torch.randint(0, 16, (2, 13))
    with torch.no_grad():
        ref = tensors(model(x))
    sess = lcsm_compile.session(model, x[:, :4], max_len=16, kernels="triton", compile_step=False,
                                engine_options={"block": 4, "fft_from": 8})
    prog = sess.program
    fn = torch.compile(prog.step_gm, backend="aot_eager", fullgraph=True, dynamic=False)
    pos = torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        outs = [list(prog.prefill(x[:, :4]))]
        for t in range(4, x.shape[1]):
            pos.fill_(t)
            outs.append(list(fn(x[:, t:t + 1].contiguous(), pos)))
    got = [torch.cat([o[i] for o in outs], 1) for i in range(len(outs[0]))]
    assert_golden(got, ref, golden_forward(model, x), what="compiled triton step")
    torch._dynamo.reset()


# ------------------------------------------------------------------------------ selection, fallbacks

def test_auto_never_picks_the_interpreter_and_cuda_falls_back_with_a_reason(interp):
    """"auto": native C (or torch) on the CPU even under TRITON_INTERPRET=1; on a CUDA device
    it picks Triton, else falls back to torch ops naming why."""
    assert select_kernels("auto", torch.float32, CPU).impl in ("native", "torch")
    assert select_kernels("triton", torch.float32, CPU).impl == "triton"
    if not torch.cuda.is_available():
        ch = select_kernels("auto", torch.float32, torch.device("cuda"))
        assert ch.impl == "torch" and "Triton: CUDA is not available" in ch.note


def test_triton_on_the_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    tk, why = tr.triton_kernels_for(torch.float32, CPU)
    assert tk is None and "TRITON_INTERPRET=1" in why
    with pytest.raises(SessionError, match="kernels='triton' is not available: .*TRITON_INTERPRET=1"):
        select_kernels("triton", torch.float32, CPU)
    with pytest.raises(SessionError, match="kernels='triton' is not available"):
        OnlineConv(torch.randn(3, 8), max_len=8, kernels="triton")
    model = HyenaLM(vocab=16, d_model=8, n_layers=1, max_len=32).eval()
    with pytest.raises(SessionError, match="kernels='triton' is not available"):  # before any lowering
        lcsm_compile.session(model, torch.zeros(1, 2, dtype=torch.long), max_len=8, kernels="triton")
    with pytest.raises(SessionError, match="'auto', 'torch', 'native', 'triton'"):
        lcsm_compile.session(model, torch.zeros(1, 2, dtype=torch.long), max_len=8, kernels="cuda")


def test_capability_checks_name_the_reason(interp, monkeypatch):
    assert "fp32/fp64" in tr.triton_kernels_for(torch.bfloat16, CPU)[1]
    monkeypatch.setenv("LCSM_TRITON_KERNELS", "0")
    assert tr.triton_kernels_for(torch.float32, CPU) == (None, "turned off by LCSM_TRITON_KERNELS=0")
    monkeypatch.delenv("LCSM_TRITON_KERNELS")
    monkeypatch.setattr(tr, "triton_version", lambda: None)
    assert tr.triton_kernels_for(torch.float32, CPU) == (None, "Triton is not installed (pip install triton)")
    monkeypatch.setenv("LCSM_NATIVE_KERNELS", "0")
    with pytest.raises(SessionError, match="kernels='native' is not available: turned off by LCSM_NATIVE_KERNELS=0"):
        OnlineConv(torch.randn(3, 8), max_len=8, kernels="native")
    eng = OnlineConv(torch.randn(3, 8), max_len=8, kernels="auto")  # auto falls back, says why
    assert eng._nk is None and eng._tk is None and "LCSM_NATIVE_KERNELS=0" in eng.kernel_note


def test_a_failing_self_check_falls_back(interp, monkeypatch):
    """A kernel that does not equal its twin on the self-check is not used: None and why."""
    monkeypatch.setattr(tr, "_checked", {})
    monkeypatch.setattr(tr, "_self_check", lambda tk, device: "Triton self-check: red step differs from its torch twin")
    tk, why = tr.triton_kernels_for(torch.float32, CPU)
    assert tk is None and "red step differs" in why


def test_config_encodes_the_kernels_and_an_adopted_state_keeps_streaming(interp, monkeypatch):
    """``config[4]`` is the kernels code (0 auto, 1 torch, 2 native, 3 triton): an engine rebuilt
    from ``k`` + ``config`` (an exported program's state) runs Triton again, and where Triton
    cannot run it falls back to "auto" instead of failing."""
    from lcsm_compile.runtime import state_ops

    L, C = 16, 3
    k, u = torch.randn(C, L), torch.randn(1, C, L)
    eng = OnlineConv(k, max_len=L, kernels="triton", block=4, fft_from=8)
    assert eng.config[4] == KERNEL_CODES["triton"] == 3 and int(eng.meta[4]) == 2
    assert OnlineConv(k, max_len=L, kernels="torch").config[4] == 1  # the old meaning kept
    y0 = [eng.step(u[..., t]) for t in range(6)]
    st = {n: t.clone() for n, t in eng.state_tensors().items()}
    st["meta"][3] = 12345  # no live engine owns this state
    adopted = state_ops.engine_for(st["hist"], st["acc"], st["blk_hist"], st["blk_acc"], st["meta"], eng.k, eng.config)
    assert adopted._tk is not None and adopted.position == 6
    monkeypatch.delenv("TRITON_INTERPRET")
    st2 = {n: t.clone() for n, t in eng.state_tensors().items()}
    st2["meta"][3] = 54321
    fallback = state_ops.engine_for(st2["hist"], st2["acc"], st2["blk_hist"], st2["blk_acc"], st2["meta"], eng.k,
                                    eng.config)
    assert fallback._tk is None and fallback.position == 6
    ref = causal_conv_direct(u.double(), k.double())
    assert rel_err(torch.stack(y0, -1), ref[..., :6]) <= 1e-5


# ------------------------------------------------------------------------------ emission

def test_sources_are_emitted_to_the_cache_hashed_and_loaded_per_interpreter_flag(monkeypatch, tmp_path):
    """Each template's notation block opens its kernel in the emitted file; the file name is the
    content hash (the same source is not written again); the module is imported once per
    interpreter flag (``@triton.jit`` reads it when it decorates); inspect lists the file."""
    monkeypatch.setenv("LCSM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tr, "_emitted", {})
    assert tr.emitted_sources() == []
    path = tr.emit(torch.float32)
    assert Path(path).parent == tmp_path and Path(path).name.startswith("lcsm_triton_f32-")
    text = Path(path).read_text()
    for name in tr.TEMPLATES:
        assert f"# lcsm_{name}_f32:" in text and f"def lcsm_{name}_f32(" in text
    assert "Parallelisation:" in text and "tl.float32" in text and "${" not in text
    mtime = os.stat(path).st_mtime_ns
    assert tr.emit(torch.float32) == path and os.stat(path).st_mtime_ns == mtime
    assert tr.emit(torch.float64) != path
    assert path in tr.emitted_sources()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    jit = tr._load(torch.float32)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    interp_mod = tr._load(torch.float32)
    assert jit is not interp_mod and jit.__file__ == interp_mod.__file__ == path
    assert type(interp_mod.lcsm_red_step_f32).__name__ == "InterpretedFunction"
    assert type(jit.lcsm_red_step_f32).__name__ == "JITFunction"


def test_kernels_compile_for_a_cuda_target(monkeypatch):
    """Without a GPU, the emitted kernels still go through Triton's whole CUDA pipeline (TTIR,
    TTGIR, LLVM IR, PTX, and a cubin from the ptxas bundled with Triton) for sm_90 with the
    GPU block sizes: fp32 state, bf16 inputs (the conversions in registers), int64 positions."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, said out loud (no warning)
    mod = tr._load(torch.float32)
    ints = lambda *names: {a: "i32" for a in names}  # noqa: E731
    jobs = [
        (mod.lcsm_red_step_f32, {"u_ptr": "*bf16", "y_ptr": "*bf16", "hist_ptr": "*fp32", "acc_ptr": "*fp32",
                                 "kb_ptr": "*fp32", **ints("r", "B", "C", "c0", "n")},
         {"BLOCK_Q": tr.RED_BLOCK["gpu"], "BLOCK_S": 16}),
        (mod.lcsm_direct_tile_f32, {"hist_ptr": "*fp32", "acc_ptr": "*fp32", "k_ptr": "*fp32",
                                    **ints("s0", "t0", "U", "n", "b0", "c0", "nb", "nc", "C", "L", "K")},
         {"BLOCK_R": tr.TILE_ELEMS["gpu"] // (32 * 32), "BLOCK_I": 32, "BLOCK_M": 32}),
        (mod.lcsm_ring_step_f32, {"buf_ptr": "*bf16", "w_ptr": "*bf16", "bias_ptr": "*bf16", "u_ptr": "*bf16",
                                  "y_ptr": "*bf16", "pos_ptr": "*i64", **ints("B", "C", "K")},
         {"HAS_BIAS": True, "BLOCK_Q": tr.TILE_ELEMS["gpu"] // 4, "BLOCK_K": 4}),
    ]
    for fn, sig, const in jobs:
        k = triton.compile(ASTSource(fn, signature={**sig, **{c: "constexpr" for c in const}}, constexprs=const),
                           target=GPUTarget("cuda", 90, 32))
        assert "cubin" in k.asm and len(k.asm["cubin"]) > 0 and ".entry " + fn.__name__ in k.asm["ptx"]


# ------------------------------------------------------------------------------ GPU (skipped without CUDA)

@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gpu_compiled_kernels_equal_their_twins(dtype, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    dev = torch.device("cuda")
    ch = select_kernels("auto", dtype, dev)
    assert ch.impl == "triton", ch.note
    L, P, B, C = 700, 13, 3, 37
    k = (torch.randn(C, L, dtype=dtype) / 10).to(dev)
    u = torch.randn(B, C, L, dtype=dtype, device=dev)
    outs = {}
    for kern in ("auto", "torch"):
        eng = OnlineConv(k, max_len=L, batch_size=B, block=16, fft_from=64, kernels=kern)
        ys = [eng.prefill(u[..., :P])] + [eng.step(u[..., t])[..., None] for t in range(P, L)]
        outs[kern] = torch.cat(ys, -1)
    assert_golden(outs["auto"].cpu(), outs["torch"].cpu(), causal_conv_direct(u.double().cpu(), k.double().cpu()))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_gpu_compiled_step_teacher_forcing(mode, monkeypatch):
    """The step program on CUDA (Triton kernels, state on the device) compiled with Inductor;
    ``mode="reduce-overhead"`` asks for CUDA graphs. Whether Inductor actually captures a graph
    here (the engine's position lives in a CPU tensor) is not asserted: only exactness."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    torch._dynamo.reset()
    dev = torch.device("cuda")
    model = HyenaLM(vocab=48, d_model=32, n_layers=2, max_len=256).eval().to(dev)
    x = torch.randint(0, 48, (3, 200), device=dev)
    with torch.no_grad():
        ref = [t.cpu() for t in tensors(model(x))]
    sess = lcsm_compile.session(model, x[:, :5], max_len=256, compile_step=False)
    assert "Triton" in sess.kernel_note
    prog = sess.program
    fn = torch.compile(prog.step_gm, fullgraph=True, dynamic=False, mode=mode)
    pos = torch.zeros(1, dtype=torch.long, device=dev)
    with torch.no_grad():
        outs = [[o.cpu() for o in prog.prefill(x[:, :5])]]
        for t in range(5, x.shape[1]):
            pos.fill_(t)
            outs.append([o.cpu() for o in fn(x[:, t:t + 1].contiguous(), pos)])
    got = [torch.cat([o[i] for o in outs], 1) for i in range(len(outs[0]))]
    assert_golden(got, ref, golden_forward(model.cpu(), x.cpu()), what=f"cuda compiled step {mode}")
    torch._dynamo.reset()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("P", [0, 7])
def test_gpu_compiled_step_replays_cuda_graphs(P, monkeypatch):
    """``compile_step=True`` on CUDA (runtime/cuda_graphs.py): the body of the step replayed as
    one CUDA graph per red-cell row (block 16: 16 graphs), the tile work launched after it;
    teacher-forced exact at every position, earlier outputs never overwritten, batch 3."""
    from lcsm_compile.runtime.cuda_graphs import CudaGraphStep
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = HyenaLM(vocab=48, d_model=32, n_layers=2, max_len=256).eval().to(dev)
    x = torch.randint(0, 48, (3, 150), device=dev)
    with torch.no_grad():
        ref = [t.cpu() for t in tensors(model(x))]
    sess = lcsm_compile.session(model, x[:, :7], max_len=256, compile_step=True, engine_options={"block": 16})
    outs = [tensors(sess.prefill(x[:, :P]))]
    for t in range(P, x.shape[1]):
        outs.append(tensors(sess.step(x[:, t:t + 1])))
    got = [torch.cat([o[i].cpu() for o in outs], 1) for i in range(len(ref))]
    assert_golden(got, ref, golden_forward(model.cpu(), x.cpu()), what=f"CUDA-graph step P={P}")
    step = sess.program.step_fn.fn
    assert isinstance(step, CudaGraphStep) and step.reason is None, step.note
    assert len(step.graphs) == 16 and step.replays == x.shape[1] - P - 16, step.note
    assert "CUDA graphs" in sess.kernel_note


@pytest.mark.gpu
@needs_cuda
def test_gpu_cuda_graphs_off_with_the_reason_for_host_position_ops(monkeypatch):
    """A modal model's recurrence reads the position on the host: no graphs, the reason kept,
    the compiled step still exact."""
    from lcsm_compile.models import StripedHyenaLM
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = StripedHyenaLM(vocab=48, d_model=32, n_layers=2).eval().to(dev)
    x = torch.randint(0, 48, (2, 40), device=dev)
    with torch.no_grad():
        ref = [t.cpu() for t in tensors(model(x))]
    sess = lcsm_compile.session(model, x[:, :5], max_len=64, compile_step=True)
    outs = [tensors(sess.prefill(x[:, :5]))] + [tensors(sess.step(x[:, t:t + 1])) for t in range(5, 40)]
    got = [torch.cat([o[i].cpu() for o in outs], 1) for i in range(len(ref))]
    assert_golden(got, ref, golden_forward(model.cpu(), x.cpu()), what="compiled modal step on CUDA")
    step = sess.program.step_fn.fn
    assert step.reason is not None and "modal_step" in step.reason and not step.graphs


def _zoo_streamable():
    sys.path.insert(0, str(ROOT))
    from examples import idioms
    return idioms.streamable()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("e", _zoo_streamable() if torch.cuda.is_available() else [], ids=lambda e: e.name)
def test_gpu_every_example_model_teacher_forced(e, monkeypatch):
    """Every streamable example model on CUDA (state on the device, kernels="auto": Triton),
    prefill of 5 and 45 steps at batch 2, equals its forward on the GPU and an fp64 golden."""
    import copy
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    dev = torch.device("cuda")
    cpu_model = e.build()
    model = copy.deepcopy(cpu_model).to(dev)
    x = e.make_input(2, 50)
    xd = x.to(dev)
    with torch.no_grad():
        ref = [t.cpu() for t in tensors(model(xd))]
    sess = lcsm_compile.session(model, xd[:, :5], max_len=64, compile_step=False)
    outs = [tensors(sess.prefill(xd[:, :5]))] + [tensors(sess.step(xd[:, t:t + 1])) for t in range(5, 50)]
    got = [torch.cat([o[i].cpu() for o in outs], 1) for i in range(len(ref))]
    assert_golden(got, ref, golden_forward(cpu_model, x), what=f"{e.name} on CUDA")


@pytest.mark.gpu
@needs_cuda
def test_gpu_benchmark_script_runs(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--quick", "--out", "gpu_quick_test"],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
