"""Offline artifacts: :func:`export` a model's streaming programs to one file, :func:`load` it in
a process that never imports the model's code.

    lcsm_compile.export(model, prompt, max_len=8192, path="model.lcsm")
    art = lcsm_compile.load("model.lcsm")          # imports only lcsm_compile (and torch)
    sess = art.session(batch_size=1); ids = art.generate(prompt_ids, max_new_tokens=64)

The file is a zip (stored, not compressed) holding:

* ``lcsm.json``: format name and version, the lcsm_compile and torch versions, dtype, device,
  ``max_len``, input kind and feature shape, vocabulary size, the output structure (as JSON:
  tuples, lists, dicts and namedtuples rebuilt as such, other objects as
  :class:`LoadedOutput`), the session options, and per exported batch size: the programs'
  files and input names, the state tensors (shape, dtype: allocated as zeros per session), the
  groups' schedules, the length range of the prefill program;
* ``tensors.safetensors``: every constant the programs read (weights, folded filters, the
  engine's zero-padded filters ``k``, short-conv weights), each memory block stored once even
  when several programs or batch sizes use it, with each input's shape, stride and offset in
  it (the same memory layout, so the same kernels and bitwise the same results);
* ``b<B>_step.pt2``, ``b<B>_prefill.pt2`` (and ``b<B>_prefill_upto<N>.pt2`` for models whose
  graph changes with the length): ``torch.export`` programs of the step and prefill programs
  with every tensor lifted to an input and the ``lcsm::`` ops kept as nodes (the stateful ops
  mutate their state inputs in place). Loading them needs the ops registered: ``load``
  imports ``lcsm_compile``, which registers them.

The tile spectra are not stored: the ops rebuild the engine of a state from ``k`` and the
schedule (``config``) the first time they see it, exactly as a live session computes them,
so a loaded session's outputs are bitwise those of a live session with the same options on
the same machine.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import warnings
import zipfile
from collections import namedtuple
from typing import Any, Dict, List, Optional

import torch
import torch.fx as fx

from .capture import find_logits
from .codegen import STEP_CODES, select_kernels
from .errors import ArtifactError, SessionError
from .ops import compute_dtype
from .options import SESSION_OPTIONS, check_options
from .passes.step_graph import lift_attributes, state_attr
from .runtime import state_ops as _state_ops  # noqa: F401 - the lcsm ops' implementations
from .runtime.session import Session

__all__ = ["export", "load", "Artifact", "LoadedOutput", "FORMAT", "VERSION"]

FORMAT = "lcsm-artifact"
VERSION = 1


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("lcsm-compile")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "unknown"


# ------------------------------------------------------------------------------ output structure

class LoadedOutput(dict):
    """An object output of the model (a dataclass, an object with ``.logits``) as loaded from an
    artifact: its fields by name (``out.logits``, ``out["logits"]``) and by position
    (``out[0]``), like a Hugging Face ``ModelOutput``; ``type_name`` is the model's class name."""

    def __init__(self, type_name: str, fields: Dict[str, Any]):
        super().__init__(fields)
        self.type_name = type_name

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, int):
            return list(self.values())[key]
        return super().__getitem__(key)


def _structure(out: Any, index: Dict[int, int]) -> Any:
    """The JSON form of a model output whose tensors are the markers in ``index``."""
    if isinstance(out, torch.Tensor):
        return {"t": "tensor", "i": index[id(out)]}
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        return {"t": "namedtuple", "name": type(out).__name__, "k": list(out._fields),
                "c": [_structure(v, index) for v in out]}
    if isinstance(out, (tuple, list)):
        return {"t": "tuple" if isinstance(out, tuple) else "list", "c": [_structure(v, index) for v in out]}
    if isinstance(out, dict):
        return {"t": "dict", "k": [str(k) for k in out], "c": [_structure(v, index) for v in out.values()]}
    import dataclasses

    if dataclasses.is_dataclass(out) or hasattr(out, "__dict__"):
        d = ({f.name: getattr(out, f.name) for f in dataclasses.fields(out)} if dataclasses.is_dataclass(out)
             else dict(vars(out)))
        return {"t": "object", "name": type(out).__name__, "k": list(d),
                "c": [_structure(v, index) for v in d.values()]}
    try:
        json.dumps(out)
        return {"t": "const", "v": out}
    except TypeError:
        return {"t": "const", "v": repr(out)}


def _rebuild(node: dict, tensors: List[torch.Tensor]) -> Any:
    t = node["t"]
    if t == "tensor":
        return tensors[node["i"]]
    if t == "const":
        return node["v"]
    kids = [_rebuild(c, tensors) for c in node["c"]]
    if t == "tuple":
        return tuple(kids)
    if t == "list":
        return kids
    if t == "dict":
        return dict(zip(node["k"], kids))
    if t == "namedtuple":
        return namedtuple(node["name"], node["k"])(*kids)
    return LoadedOutput(node["name"], dict(zip(node["k"], kids)))


class _Spec:
    """What a session needs of an output spec: ``unflatten`` (and ``num_tensors``)."""

    def __init__(self, tree: dict, n: int):
        self.tree, self.num_tensors = tree, n

    def unflatten(self, tensors) -> Any:
        return _rebuild(self.tree, list(tensors))


# ------------------------------------------------------------------------------ export

def _resolve(gm: fx.GraphModule, target: str) -> torch.Tensor:
    obj: Any = gm
    for p in target.split("."):
        obj = getattr(obj, p)
    return obj


def _state_names(prog: Any) -> set:
    """The attribute names of a program's state tensors (:func:`state_attr` of its groups and
    short convolutions)."""
    names = {state_attr(f"g{i}", f) for i in range(len(prog.engines))
             for f in ("hist", "acc", "blk_hist", "blk_acc", "meta")}
    names |= {state_attr(n, "modal_state") for n in getattr(prog, "modal", {})}  # modal recurrences
    names |= {state_attr(n, f) for n in getattr(prog, "attention", {}) for f in ("kcache", "vcache")}  # KV caches
    return names | {state_attr(n, "buf") for n in prog.shorts}


def _batched(example: torch.Tensor, B: int) -> torch.Tensor:
    idx = torch.arange(B, device=example.device) % example.shape[0]
    return example.index_select(0, idx)


def export(model: Any, example: torch.Tensor, max_len: int = 8192, path: str = "model.lcsm",
           batch_sizes: Optional[List[int]] = None, progress: bool = False, aot: bool = False,
           **options: Any) -> str:
    """Write ``model``'s streaming programs as one artifact file (module doc); returns ``path``.

    Args:
        model: the model (plain or ``torch.compile``-d), as for :func:`lcsm_compile.session`.
        example: a prompt-shaped input ([B, P] ids or [B, P, Din], P >= 1).
        max_len: the most positions a session of the artifact can hold.
        path: the file to write.
        batch_sizes: the batch sizes ``load(path).session(batch_size=...)`` will accept
            (default: the example's); one set of programs per batch size, constants shared.
        aot: also compile each batch size's step program ahead of time with AOTInductor
            (``torch._inductor.aoti_compile_and_package``: a shared library for this machine's
            platform and torch version, stored beside the plain program; the ``lcsm::`` ops
            stay calls into this package's implementations). :func:`load` runs it where it
            loads, else the plain program. Outputs equal the plain program's to float
            rounding (Inductor fuses and reorders), not bitwise. Where AOTInductor fails on a
            program, a warning names why and the artifact holds the plain program only.
        options: session options (``kernels``, ``engine_options``, ``threads``,
            ``compile_step``: applied when the artifact is loaded).
    Raises:
        UnsupportedModelError: the model cannot be streamed exactly.
        ArtifactError: ``torch.export`` could not export a program (the reason is named).
    """
    from . import api

    check_options(options, SESSION_OPTIONS, "export")
    if options.get("engine", "online") != "online":
        raise SessionError("export writes the online engine's programs (engine='online')")
    if not isinstance(example, torch.Tensor) or example.dim() < 2 or example.shape[1] < 1:
        raise SessionError("example must be a [B, P] or [B, P, Din] tensor with P >= 1")
    batch_sizes = sorted({int(b) for b in (batch_sizes or [example.shape[0]])})
    tensors: Dict[str, torch.Tensor] = {}
    stored: Dict[tuple, str] = {}

    keep: List[torch.Tensor] = []  # the originals stay alive: no other tensor reuses their addresses

    def store(t: torch.Tensor) -> dict:
        """A constant as (its whole storage, stored once, + shape, stride, offset): the programs
        get the same memory layout back (a transposed weight stays transposed: the same BLAS
        path, bitwise the same results)."""
        st = t.untyped_storage()
        key = (st.data_ptr(), t.dtype)
        if key not in stored:
            keep.append(t)
            stored[key] = f"t{len(stored)}"
            n = st.nbytes() // t.element_size()
            flat = torch.empty(0, dtype=t.dtype, device=t.device).set_(st, 0, (n,), (1,))
            tensors[stored[key]] = flat.detach().cpu().clone()
        return {"tensor": stored[key], "shape": list(t.shape), "stride": list(t.stride()),
                "offset": int(t.storage_offset())}

    files: Dict[str, bytes] = {}
    programs: Dict[str, Any] = {}
    meta: Dict[str, Any] = {}
    it = batch_sizes
    if progress:
        from tqdm import tqdm

        it = tqdm(batch_sizes, desc="lcsm export", unit="batch")
    for B in it:
        ex = _batched(example, B)
        sess = api.session(model, ex, max_len=max_len, **{**options, "compile_step": False})
        prog = sess.program
        state_names = _state_names(prog)
        entry: Dict[str, Any] = {"state": {}, "programs": {}, "valid_range": list(prog.lowered.valid_range[:1]) +
                                 [prog.lowered.valid_range[1]], "groups": [e.config for e in prog.engines],
                                 "short_prefills": []}
        P = max(2, min(ex.shape[1], max_len - 1), prog.lowered.valid_range[0])
        P = min(P, prog.lowered.valid_range[1] or P, max_len)
        prompt = _batched(probe_prompt(ex, P), B)
        x_t = prompt[:, :1].contiguous()
        pos = torch.zeros(1, dtype=torch.long, device=ex.device)
        jobs = [("step", prog.step_gm, (x_t, pos), None)]
        lo = max(2, prog.lowered.valid_range[0])
        hi = min(prog.lowered.valid_range[1] or max_len, max_len)
        jobs.append(("prefill", prog.prefill_gm, (prompt[:, :max(lo, min(P, hi))].contiguous(),), (lo, hi)))
        g1 = next((g for h, g in prog.short_prefills if h >= 1), None)
        if g1 is None and prog.lowered.valid_range[0] <= 1:
            g1 = prog.prefill_gm
        if g1 is not None:  # a static program for one-position prompts (export specializes size 1)
            jobs.append(("prefill_len1", g1, (prompt[:, :1].contiguous(),), (1, 1)))
        for short_hi, g in prog.short_prefills:
            slo = 2
            if short_hi >= slo:
                jobs.append((f"prefill_upto{short_hi}", g, (prompt[:, :min(P, short_hi)].contiguous(),),
                             (slo, short_hi)))
                entry["short_prefills"].append([short_hi, f"prefill_upto{short_hi}"])
        for name, gm, args, rng in jobs:
            lifted, names = lift_attributes(gm)
            vals = [_resolve(gm, n) for n in names]
            dyn = None
            if rng is not None and rng[1] > rng[0]:
                L = torch.export.Dim(f"L_{name}", min=rng[0], max=rng[1])
                dyn = ({1: L},) + (None,) * len(vals)
            elif rng is not None:
                dyn = None
            try:
                ep = torch.export.export(lifted, (*args, *vals), dynamic_shapes=dyn, strict=False)
            except Exception as e:  # noqa: BLE001
                raise ArtifactError(f"torch.export could not export the {name} program (batch {B}): "
                                    f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e
            if aot and name == "step":
                data, why = _aot_package(ep)
                if data is not None:
                    files[f"b{B}_step.aoti.pt2"] = data
                    entry["aot"] = {"file": f"b{B}_step.aoti.pt2", "platform": _platform(), "torch": torch.__version__}
                else:
                    warnings.warn(f"lcsm export: AOTInductor could not compile the step program (batch {B}): {why}; "
                                  f"the artifact holds the plain program", stacklevel=2)
                    entry["aot"] = {"error": why}
            try:  # the example inputs (every weight and state tensor: lifted) need not be in the file
                ep.example_inputs = None
            except Exception:  # noqa: BLE001 - an older torch without the setter: they stay
                pass
            buf = io.BytesIO()
            torch.export.save(ep, buf)
            fname = f"b{B}_{name}.pt2"
            files[fname] = buf.getvalue()
            inputs = []
            for n, v in zip(names, vals):
                if n in state_names:
                    entry["state"][n] = {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                    inputs.append({"state": n})
                else:
                    inputs.append(store(v))
            entry["programs"][name] = {"file": fname, "inputs": inputs,
                                       "range": list(rng) if rng is not None else None}
        programs[str(B)] = entry
        if not meta:
            with torch.no_grad():
                out = sess.prefill(ex)
            from .capture import flatten_output

            leaves, spec = flatten_output(out)
            tens = [v for v in leaves if isinstance(v, torch.Tensor)]
            index = {id(t): i for i, t in enumerate(tens)}
            lg = find_logits(out, ex.shape[1])
            time_dims = sess._output_time_dims(len(tens))
            explanation = str(api.explain(model, ex))
            meta = {
                "outputs": _structure(out, index), "num_outputs": len(tens),
                "empty_outputs": [{"shape": [0 if d == td else s for d, s in enumerate(t.shape)],
                                   "dtype": str(t.dtype).replace("torch.", "")}
                                  for t, td in zip(tens, time_dims)],
                "vocab": int(lg.shape[-1]) if lg is not None and sess.input_kind == "ids" else None,
                "input_kind": sess.input_kind, "feature_shape": list(ex.shape[2:]),
                "input_dtype": str(ex.dtype).replace("torch.", ""), "device": str(ex.device),
                "model": type(getattr(model, "_orig_mod", model)).__name__, "explain": explanation,
            }
        del sess, prog
    doc = {"format": FORMAT, "version": VERSION, "lcsm_compile": _version(), "torch": torch.__version__,
           "max_len": int(max_len), "batch_sizes": batch_sizes,
           "options": {k: v for k, v in options.items() if k != "debug_dir"},
           "programs": programs, **meta}
    from safetensors.torch import save as st_save

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("lcsm.json", json.dumps(doc, indent=1, default=str))
        z.writestr("tensors.safetensors", st_save(tensors) if tensors else b"")
        for fname, data in files.items():
            z.writestr(fname, data)
    return path


def _platform() -> str:
    import platform

    return f"{platform.system()}-{platform.machine()}"


def _aot_package(ep: Any) -> tuple:
    """``(bytes of the AOTInductor package of ep, None)`` or ``(None, why)``."""
    try:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="lcsm_aot_") as d:
            out = os.path.join(d, "step.pt2")
            torch._inductor.aoti_compile_and_package(ep, package_path=out)
            with open(out, "rb") as f:
                return f.read(), None
    except Exception as e:  # noqa: BLE001 - any compiler failure: the plain program remains
        msg = str(e).strip().splitlines()
        return None, f"{type(e).__name__}: {msg[0] if msg else ''}"


def probe_prompt(ex: torch.Tensor, P: int) -> torch.Tensor:
    """An input like ``ex`` of ``P`` positions (its own positions repeated: valid ids)."""
    idx = torch.arange(P, device=ex.device) % ex.shape[1]
    return ex.index_select(1, idx).contiguous()


# ------------------------------------------------------------------------------ load

class _Lowered:
    """What a :class:`~lcsm_compile.Session` reads of a lowered graph, from the artifact."""

    def __init__(self, input_kind: str, out_spec: _Spec, valid_range: tuple):
        self.input_kind, self.out_spec, self.valid_range = input_kind, out_spec, valid_range
        self.analysis = None
        self.time_dim = 1


class _Note:
    def __init__(self, note: str):
        self.kernel_note = note


class LoadedProgram:
    """The programs of one batch size of an artifact, with their state (zeros at first): the
    interface of :class:`lcsm_compile.runtime.program.StreamProgram` that a session drives."""

    engine_kind = "online"

    def __init__(self, art: "Artifact", B: int):
        entry = art.doc["programs"][str(B)]
        self.art, self.batch_size, self.max_len = art, B, art.max_len
        self.lowered = _Lowered(art.doc["input_kind"], art.spec, tuple(entry["valid_range"]))
        self.state: Dict[str, torch.Tensor] = {}
        for name, s in entry["state"].items():
            dt = getattr(torch, s["dtype"])
            self.state[name] = torch.zeros(s["shape"], dtype=dt, device=art.device)
        self.metas = []
        notes = []
        for g in range(len(entry["groups"])):
            m = self.state[f"g{g}_meta"]
            m[3] = secrets.randbits(62) + 1
            # the red cells' kernels: the exported ``kernels`` option where it runs here, else "auto"
            cd = compute_dtype(self.state[f"g{g}_hist"].dtype)
            try:
                choice = select_kernels(art.doc.get("options", {}).get("kernels", "auto"), cd, art.device)
            except SessionError:
                choice = select_kernels("auto", cd, art.device)
            m[4] = STEP_CODES[choice.impl]
            self.metas.append(m)
            notes.append(choice.note)
        self.longs = {}
        self.shorts = {n[: -len("_buf")]: None for n in self.state if n.endswith("_buf")}
        self.engines = [_Note(f"loaded artifact: {note}") for note in notes]
        self._progs = {k: art._program(B, k) for k in entry["programs"]}
        runner, self.aot_note = art._aot_step(B)
        if runner is not None:
            self._progs["step"] = runner
            notes = [f"{n}; step program compiled ahead of time (AOTInductor)" for n in notes]
            self.engines = [_Note(f"loaded artifact: {note}") for note in notes]
        self._args = {k: self._inputs(v["inputs"]) for k, v in entry["programs"].items()}
        self._ranges = {k: v["range"] for k, v in entry["programs"].items()}
        self._short = sorted((hi, name) for hi, name in entry["short_prefills"])

    def _inputs(self, spec: list) -> List[torch.Tensor]:
        return [self.state[s["state"]] if "state" in s else
                torch.as_strided(self.art.tensors[s["tensor"]], s["shape"], s["stride"], s["offset"]) for s in spec]

    def _run(self, name: str, *args) -> List[torch.Tensor]:
        return list(self._progs[name](*args, *self._args[name]))

    def _positions(self) -> List[int]:
        return [int(m[0]) for m in self.metas]

    def reset(self) -> None:
        for n, t in self.state.items():
            if n.endswith("_meta"):
                t[:3] = 0
            else:
                t.zero_()

    def prefill(self, x: torch.Tensor) -> List[torch.Tensor]:
        """As :meth:`StreamProgram.prefill`: the prefill program that takes ``P`` positions;
        a prompt between the ranges of the short and the long program: the longest short
        prefill, then steps; a prompt no program takes: steps from position 0."""
        P = x.shape[1]
        name = next((n for hi, n in self._short if P <= hi), "prefill")
        if P == 1 and "prefill_len1" in self._progs:
            name = "prefill_len1"
        lo, hi = self._ranges[name]
        try:
            if lo <= P <= hi:
                return self._run(name, x)
            first, start = None, 0
            if self._short and P > self._short[-1][0]:
                start, short = self._short[-1]
                first = self._run(short, x[:, :start].contiguous())
            return self._prefill_then_steps(x, start, first)
        except BaseException:
            self.reset()
            raise

    def _prefill_then_steps(self, x: torch.Tensor, start: int, first: Optional[list]) -> List[torch.Tensor]:
        outs = [first] if first is not None else []
        pos = torch.zeros(1, dtype=torch.long, device=x.device)
        for t in range(start, x.shape[1]):
            pos.fill_(t)
            outs.append(self.step(x[:, t:t + 1].contiguous(), pos))
        return [torch.cat([o[i] for o in outs], 1) for i in range(len(outs[0]))]

    def step(self, x_t: torch.Tensor, pos: torch.Tensor) -> List[torch.Tensor]:
        try:
            return self._run("step", x_t, pos)
        except BaseException:
            if any(p != int(pos) for p in self._positions()):
                self.reset()
                err = SessionError("a step failed inside the tile work; the state was reset to position 0")
                err.state_reset = True
                raise err from None
            raise

    def empty_outputs(self, x: torch.Tensor) -> List[torch.Tensor]:
        B = x.shape[0]
        return [torch.empty([B] + e["shape"][1:], dtype=getattr(torch, e["dtype"]), device=x.device)
                for e in self.art.doc["empty_outputs"]]

    def state_dict(self) -> dict:
        return {"tensors": {n: t.clone() for n, t in self.state.items()}}

    def load_state_dict(self, state: dict) -> None:
        src = state.get("tensors", {})
        if set(src) != set(self.state):
            raise SessionError("state does not belong to this artifact's programs")
        for n, t in self.state.items():
            if n.endswith("_meta"):
                t[:3] = src[n][:3]  # keep this state's own id
            else:
                t.copy_(src[n])


class ArtifactSession(Session):
    """A :class:`~lcsm_compile.Session` over a loaded artifact's programs."""

    def _empty_outputs(self, x: torch.Tensor) -> Any:
        return self._out_spec.unflatten(self.program.empty_outputs(x))

    def __repr__(self) -> str:
        return (f"ArtifactSession(position={self.position}, max_len={self.max_len}, batch={self.batch_size}, "
                f"model={self.program.art.doc.get('model')}, kernels={self.kernel_note!r})")


class Artifact:
    """A loaded artifact (:func:`load`): ``session(batch_size=...)``, ``generate(...)``,
    ``explain()``; ``doc`` is its metadata (``lcsm.json``)."""

    def __init__(self, path: str, doc: dict, tensors: Dict[str, torch.Tensor], files: Dict[str, bytes]):
        self.path, self.doc, self.tensors, self._files = path, doc, tensors, files
        self.max_len = int(doc["max_len"])
        self.device = torch.device(doc.get("device", "cpu"))
        self.spec = _Spec(doc["outputs"], int(doc["num_outputs"]))
        self._loaded: Dict[tuple, Any] = {}
        #: ``load(..., aot=)``: None (the AOTInductor step programs where they load), True, False
        self.aot: Optional[bool] = None

    def _aot_step(self, B: int) -> tuple:
        """``(the AOTInductor-compiled step program of batch B, note)`` or ``(None, why not)``;
        with ``load(..., aot=True)`` a missing or failing package is an :class:`ArtifactError`."""
        if self.aot is False:
            return None, "aot=False"
        info = self.doc["programs"][str(B)].get("aot") or {}
        why = None
        if "file" not in info:
            why = info.get("error") and f"AOTInductor failed at export: {info['error']}" or \
                "exported without aot=True"
        elif info.get("platform") != _platform() or info.get("torch") != torch.__version__:
            why = (f"the AOTInductor package was built on {info.get('platform')} with torch {info.get('torch')}, "
                   f"this is {_platform()} with torch {torch.__version__}")
        key = (B, "aot")
        if why is None and key not in self._loaded:
            try:
                import hashlib

                from .codegen.native import cache_dir

                data = self._files[info["file"]]
                d = os.path.join(cache_dir(), "aoti")
                os.makedirs(d, exist_ok=True)
                f = os.path.join(d, hashlib.sha256(data).hexdigest()[:24] + ".pt2")
                if not os.path.exists(f):
                    tmp = f"{f}.{os.getpid()}.tmp"
                    with open(tmp, "wb") as fh:
                        fh.write(data)
                    os.replace(tmp, f)
                self._loaded[key] = torch._inductor.aoti_load_package(f)
            except Exception as e:  # noqa: BLE001
                msg = str(e).strip().splitlines()
                why = f"the AOTInductor package does not load here ({type(e).__name__}: {msg[0] if msg else ''})"
        if why is not None:
            if self.aot:
                raise ArtifactError(f"{self.path}: aot=True but {why}")
            return None, why
        return self._loaded[key], "step program compiled ahead of time (AOTInductor)"

    def _program(self, B: int, name: str) -> Any:
        key = (B, name)
        if key not in self._loaded:
            fname = self.doc["programs"][str(B)]["programs"][name]["file"]
            try:
                ep = torch.export.load(io.BytesIO(self._files[fname]))
            except Exception as e:  # noqa: BLE001
                raise ArtifactError(f"{self.path}: program {fname} does not load: {type(e).__name__}: "
                                    f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e
            self._loaded[key] = ep.module()
        return self._loaded[key]

    @property
    def batch_sizes(self) -> List[int]:
        return list(self.doc["batch_sizes"])

    def session(self, batch_size: Optional[int] = None, threads: Optional[int] = None) -> ArtifactSession:
        """A streaming session on the artifact's programs (fresh state)."""
        B = int(batch_size if batch_size is not None else self.batch_sizes[0])
        if B not in self.batch_sizes:
            raise SessionError(f"{self.path} was exported for batch sizes {self.batch_sizes}, not {B}: export "
                               f"again with batch_sizes=[..., {B}]")
        prog = LoadedProgram(self, B)
        kind = self.doc["input_kind"]
        feat = tuple(self.doc["feature_shape"])
        dt = torch.long if kind == "ids" else getattr(torch, self.doc["input_dtype"])
        example = torch.zeros((B, 1) + feat, dtype=dt, device=self.device)
        th = threads if threads is not None else self.doc.get("options", {}).get("threads", 1)
        return ArtifactSession(prog, example, threads=th)

    def generate(self, ids: torch.Tensor, max_new_tokens: int, **kwargs: Any) -> torch.LongTensor:
        """:func:`lcsm_compile.generate` on a new session of the artifact (same arguments)."""
        from .api import generate_on

        if self.doc["input_kind"] != "ids":
            raise SessionError("generate needs a model of token ids; this artifact takes continuous inputs")
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point():
            raise SessionError(f"ids must be an integer [B, P] tensor, got {getattr(ids, 'shape', type(ids))}")
        if ids.shape[1] + int(max_new_tokens) > self.max_len:
            raise SessionError(f"{ids.shape[1]} + {max_new_tokens} positions pass the artifact's "
                               f"max_len={self.max_len}")
        return generate_on(self.session(batch_size=ids.shape[0]), ids, max_new_tokens, **kwargs)

    def explain(self) -> "ArtifactExplanation":
        """What the compiler found in the model (recorded at export) and what the file holds."""
        return ArtifactExplanation(self)

    def __repr__(self) -> str:
        d = self.doc
        return (f"Artifact({self.path!r}, model={d.get('model')}, max_len={self.max_len}, "
                f"batch_sizes={self.batch_sizes}, input={d['input_kind']}, lcsm_compile={d['lcsm_compile']}, "
                f"torch={d['torch']})")


class ArtifactExplanation:
    """``str()``: the export-time explanation of the model plus the artifact's contents."""

    def __init__(self, art: Artifact):
        self.artifact = art
        self.text = art.doc.get("explain", "")

    def __str__(self) -> str:
        d = self.artifact.doc
        lines = [f"lcsm artifact {self.artifact.path}: format {d['format']} v{d['version']}, written by "
                 f"lcsm_compile {d['lcsm_compile']} with torch {d['torch']}",
                 f"  model {d.get('model')}, input {d['input_kind']}, max_len {d['max_len']}, batch sizes "
                 f"{d['batch_sizes']}, vocab {d.get('vocab')}, device {d.get('device')}"]
        for B, e in d["programs"].items():
            lines.append(f"  batch {B}: programs {sorted(e['programs'])}, {len(e['state'])} state tensors, "
                         f"group schedules (block, fft_from, delay_from, chunk_flops, kernels code) {e['groups']}")
            aot = e.get("aot")
            if aot:
                lines.append(f"    AOTInductor step program: {aot['file']} ({aot['platform']}, torch {aot['torch']})"
                             if "file" in aot else f"    AOTInductor step program: none ({aot.get('error')})")
        return "\n".join(lines) + "\n\n" + self.text

    __repr__ = __str__


def load(path: str, aot: Optional[bool] = None) -> Artifact:
    """Read an artifact written by :func:`export` (module doc).

    ``aot``: run the step programs compiled ahead of time (``export(..., aot=True)``) where
    the artifact has them for this platform and torch version (None, the default), always
    (True: an :class:`ArtifactError` where they are missing or do not load), or never (False).

    Raises:
        ArtifactError: the file is missing, not an artifact, truncated or corrupted, of another
            format version, or written for a torch this one cannot read.
    """
    try:
        z = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise ArtifactError(f"{path}: not an lcsm artifact (not a readable zip file: {e})") from None
    with z:
        try:
            names = set(z.namelist())
            if "lcsm.json" not in names:
                raise ArtifactError(f"{path}: not an lcsm artifact (no lcsm.json inside)")
            doc = json.loads(z.read("lcsm.json"))
            if doc.get("format") != FORMAT:
                raise ArtifactError(f"{path}: not an lcsm artifact (format {doc.get('format')!r})")
            if doc.get("version") != VERSION:
                raise ArtifactError(f"{path}: artifact format version {doc.get('version')}, this lcsm_compile "
                                    f"reads version {VERSION}: export it again with this version")
            files = {n: z.read(n) for n in names if n.endswith(".pt2")}
            raw = z.read("tensors.safetensors")
        except ArtifactError:
            raise
        except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as e:
            raise ArtifactError(f"{path}: the artifact is truncated or corrupted ({type(e).__name__}: {e})") from None
    tensors: Dict[str, torch.Tensor] = {}
    if raw:
        from safetensors.torch import load as st_load

        try:
            tensors = st_load(raw)
        except Exception as e:  # noqa: BLE001
            raise ArtifactError(f"{path}: its tensors are corrupted ({type(e).__name__}: {e})") from None
    for B, e in doc.get("programs", {}).items():
        for name, p in e["programs"].items():
            if p["file"] not in files:
                raise ArtifactError(f"{path}: the artifact is truncated (program {p['file']} missing)")
    art = Artifact(path, doc, tensors, files)
    art.aot = aot
    art.session(batch_size=art.batch_sizes[0])  # loads every program of one batch size: errors show now
    return art
