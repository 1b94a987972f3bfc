"""Offline export and load (issue #9 of the brief, items 1-2): ``lcsm_compile.export`` writes one
file; ``lcsm_compile.load`` reads it in a process that never imports the model's code, and its
sessions give bitwise the outputs of a live session with the same options."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

import lcsm_compile
from examples import idioms as zoo
from lcsm_compile import ArtifactError, SessionError
from lcsm_compile.capture import flatten_output

ROOT = Path(__file__).resolve().parent.parent


class _TinyLM(torch.nn.Module):
    """Defined here, so a subprocess that loads the artifact cannot have imported it: embedding,
    a short causal conv, an explicit long filter by FFT, a tuple output."""

    def __init__(self, vocab=24, d=8, n=96):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, d)
        self.short = torch.nn.Conv1d(d, d, 3, groups=d, padding=2)
        self.k = torch.nn.Parameter(torch.randn(d, n) * 0.1)
        self.head = torch.nn.Linear(d, vocab)

    def forward(self, ids):
        L = ids.shape[1]
        u = self.emb(ids).transpose(1, 2)
        u = self.short(u)[..., :L]
        y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(self.k[:, :L], n=2 * L), n=2 * L)[..., :L]
        h = (y + u).transpose(1, 2)
        return self.head(torch.nn.functional.gelu(h)), h


def _teacher(sess, x, P):
    outs = [[t for t in flatten_output(sess.prefill(x[:, :P]))[0] if isinstance(t, torch.Tensor)]]
    for t in range(P, x.shape[1]):
        outs.append([v for v in flatten_output(sess.step(x[:, t:t + 1]))[0] if isinstance(v, torch.Tensor)])
    return [torch.cat([o[i] for o in outs], 1) for i in range(len(outs[0]))]


def test_loads_in_a_process_without_the_models_code(tmp_path):
    torch.manual_seed(0)
    model = _TinyLM().eval()
    ids = torch.randint(0, 24, (2, 7))
    path = str(tmp_path / "tiny.lcsm")
    lcsm_compile.export(model, ids, max_len=96, path=path, batch_sizes=[1, 2])
    want = lcsm_compile.generate(model, ids, 50, max_len=96)
    torch.save(ids, tmp_path / "ids.pt")
    code = textwrap.dedent(f"""
        import sys, torch, lcsm_compile
        art = lcsm_compile.load({path!r})
        ids = torch.load({str(tmp_path / 'ids.pt')!r})
        out = art.generate(ids, 50)
        torch.save(out, {str(tmp_path / 'out.pt')!r})
        leaked = [m for m in sys.modules if m.startswith(("tests", "examples"))]
        print("LEAKED", leaked)
        sess = art.session(batch_size=1)
        y = sess.prefill(ids[:1])
        print("STRUCT", type(y).__name__, len(y), tuple(y[0].shape))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=""))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "LEAKED []" in r.stdout
    assert "STRUCT tuple 2 (1, 7, 24)" in r.stdout
    assert torch.equal(torch.load(tmp_path / "out.pt"), want)


@pytest.mark.parametrize("name,B,P", [("safari_hyena_o2", 2, 5), ("striped_hyena_modal", 1, 1),
                                      ("hyenadna_cont", 3, 9), ("out_nested_namedtuple", 2, 4),
                                      ("evo2_multirange", 1, 3), ("h3_shift_fixed_taps", 2, 2)])
def test_sessions_are_bitwise_a_live_session(name, B, P, tmp_path):
    """Teacher forcing through a loaded session equals a live session with the same schedule,
    bitwise, over zoo models with short convs, modal filters, continuous inputs, nested
    outputs, a graph that changes with the length; prompt of 1 (stepped from position 0)."""
    e = zoo.get(name)
    model = e.build()
    x = e.make_input(B, 40)
    path = str(tmp_path / "m.lcsm")
    lcsm_compile.export(model, x[:, :max(P, 2)], max_len=48, path=path)
    art = lcsm_compile.load(path)
    cfg = art.doc["programs"][str(B)]["groups"]
    live = lcsm_compile.session(model, x[:, :max(P, 2)], max_len=48)
    assert [eng.config for eng in live.program.engines] == cfg
    got, want = _teacher(art.session(batch_size=B), x, P), _teacher(live, x, P)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and torch.equal(g, w), ((g - w).abs().amax(dim=tuple(i for i in range(g.dim()) if i != 1)) if g.is_floating_point() else None)
    # the structure comes back: same kind of container at the top
    y = art.session(batch_size=B).prefill(x[:, :P])
    ref = live.program.lowered.out_spec.unflatten(want)
    assert isinstance(y, torch.Tensor) == isinstance(ref, torch.Tensor)
    if isinstance(ref, tuple):
        assert isinstance(y, tuple) and len(y) == len(ref)


def test_state_dict_reset_and_wrong_use(tmp_path):
    torch.manual_seed(1)
    model = _TinyLM().eval()
    ids = torch.randint(0, 24, (1, 40))
    path = str(tmp_path / "m.lcsm")
    lcsm_compile.export(model, ids[:, :4], max_len=64, path=path)
    art = lcsm_compile.load(path)
    a = art.session()
    full = _teacher(a, ids, 4)
    a.reset()
    first = _teacher(a, ids[:, :20], 4)
    state = a.state_dict()
    b = art.session()
    b.load_state_dict(state)
    rest = [[t for t in b.step(ids[:, t:t + 1])] for t in range(20, 40)]
    got = torch.cat([first[0]] + [r[0] for r in rest], 1)
    assert torch.equal(got, full[0])
    with pytest.raises(SessionError, match="batch sizes"):
        art.session(batch_size=3)
    with pytest.raises(SessionError, match="max_len"):
        art.generate(ids[:, :30], 40)
    assert "long conv" in str(art.explain()) and "_TinyLM" in str(art.explain())


def test_bad_files_are_clear_errors(tmp_path):
    torch.manual_seed(2)
    model = _TinyLM().eval()
    ids = torch.randint(0, 24, (1, 5))
    good = str(tmp_path / "good.lcsm")
    lcsm_compile.export(model, ids, max_len=32, path=good)
    data = Path(good).read_bytes()
    cases = {}
    cases["missing"] = (str(tmp_path / "nope.lcsm"), "no such file")
    p = tmp_path / "truncated.lcsm"
    p.write_bytes(data[: len(data) // 2])
    cases["truncated"] = (str(p), "")
    p = tmp_path / "garbage.lcsm"
    p.write_bytes(os.urandom(4096))
    cases["garbage"] = (str(p), "not an lcsm artifact")
    p = tmp_path / "plainzip.lcsm"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("hello.txt", "hi")
    cases["kind"] = (str(p), "no lcsm.json")

    def rewrite(name, fn):
        q = tmp_path / name
        with zipfile.ZipFile(good) as src, zipfile.ZipFile(q, "w") as dst:
            for item in src.namelist():
                blob = src.read(item)
                if item == "lcsm.json":
                    blob = json.dumps(fn(json.loads(blob))).encode()
                dst.writestr(item, blob)
        return str(q)

    cases["version"] = (rewrite("v.lcsm", lambda d: {**d, "version": 99}), "format version 99")
    cases["format"] = (rewrite("f.lcsm", lambda d: {**d, "format": "other"}), "not an lcsm artifact")
    for what, (path, says) in cases.items():
        with pytest.raises(ArtifactError) as ei:
            lcsm_compile.load(path)
        assert says in str(ei.value), (what, str(ei.value))


def test_aot_step_program_streams_like_the_plain_one(tmp_path, monkeypatch):
    """``export(..., aot=True)``: the step program compiled by AOTInductor (the lcsm ops called
    from the shared library) streams like the plain loaded program (to float rounding: Inductor
    fuses); ``load(aot=False)`` ignores it; a package for another platform falls back with the
    reason, and ``aot=True`` makes that an error; an artifact without one refuses ``aot=True``."""
    torch.manual_seed(0)
    model = _TinyLM(n=48).eval()
    x = torch.randint(0, 24, (1, 30))
    path = str(tmp_path / "aot.lcsm")
    lcsm_compile.export(model, x[:, :4], max_len=48, path=path, aot=True)
    fast, plain = lcsm_compile.load(path), lcsm_compile.load(path, aot=False)
    sf, sp = fast.session(1), plain.session(1)
    assert "AOTInductor" in sf.kernel_note and "AOTInductor" not in sp.kernel_note
    assert "AOTInductor step program: b1_step.aoti.pt2" in str(fast.explain())
    got, want = _teacher(sf, x, 5), _teacher(sp, x, 5)
    with torch.no_grad():
        ref = model(x)
    for g, w, r in zip(got, want, ref):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)
    from lcsm_compile import artifact

    monkeypatch.setattr(artifact, "_platform", lambda: "Other-arch")
    other = lcsm_compile.load(path)
    assert "AOTInductor" not in other.session(1).kernel_note
    with pytest.raises(ArtifactError, match="built on Linux"):
        lcsm_compile.load(path, aot=True)
    monkeypatch.undo()
    bare = str(tmp_path / "bare.lcsm")
    lcsm_compile.export(model, x[:, :4], max_len=48, path=bare)
    with pytest.raises(ArtifactError, match="exported without aot=True"):
        lcsm_compile.load(bare, aot=True)
