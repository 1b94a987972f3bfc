"""Tracers: a whole model -> ONE aten-level, functional inference graph (:class:`Captured`).

:func:`capture_model` (the first stage of :func:`lcsm_compile.pipeline.lower`) traces the model
with its batch and time dims symbolic. Two tracers, the first that gives a graph generic in
``B`` and ``L`` wins:

* ``make_fx`` in symbolic mode with the parameters real (fast, no graph breaks: a python
  scalar read from a parameter just becomes a constant); the graph must come out functional;
* dynamo (``fullgraph=True``) + ``aot_autograd`` with the core aten decompositions under
  ``no_grad`` (functionalizes in-place buffer updates, keeps ``math.log2``-style size
  arithmetic symbolic).

During both, ``SymInt.bit_length`` stays symbolic and ``opt_einsum.contract`` runs plain tensor
calls as ``torch.einsum`` (:mod:`.symbolic`, :mod:`.helpers`; both undone when the trace ends).

The result ``gm`` has exactly one placeholder, the model input; parameters, buffers and tensor
constants are ``get_attr`` nodes that point at the user's own tensors (no copies); every size
is derived from the input with ``aten.sym_size.int`` nodes, so running ``gm`` at another length
recomputes everything at that length. The graph returns the tensor leaves of the model output
in pytree order; :class:`~lcsm_compile.capture.outputs.OutSpec` rebuilds the user's structure.
The user's module is not mutated: the tracers trace a deep copy (forward may cache things on
``self``); in-place buffer updates are dropped from the graph and listed in
``mutated_buffers``. Capture runs at ``L >= 2`` and ``B >= 2`` with ``B != L`` (size 1 is
specialized by torch, and equal sizes would share a symbol): a shorter example is repeated.

Failures never raise: ``Captured.error`` holds ``(reason, op, source)``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import re
import types
from typing import Any, Dict, List, Optional, Tuple

import sympy
import torch
import torch.fx as fx

from .helpers import math_attention, routed_contract
from .inputs import capture_input, input_kind_of, unwrap_model
from .outputs import OutSpec, flatten_output
from .source import source_of_exception
from .symbolic import sizes_from_input, symbolic_bit_length, symints_to_sym_size, to_expr, val

__all__ = ["Captured", "capture_model"]


# ----------------------------------------------------------------------------- result
@dataclasses.dataclass
class Captured:
    """The captured aten graph and what the passes need to know about it.

    ``gm``: the graph (None if capture failed; see ``error``). ``data_inputs``: the placeholders
    that carry the time-varying input. ``time_dims``: ``{placeholder name: time dim}``.
    ``time_symbol``: sympy Symbol of L (an Integer when the graph is static). ``batch_symbol``:
    sympy Symbol of the batch size or None. ``example_args``: real arguments of ``gm`` at the
    capture shape. ``fake_mode``: the fake mode whose shape env owns the symbols.
    ``valid_range``: ``(lo, hi)`` lengths the graph is valid for (hi None = unbounded).
    ``routed``: the ``opt_einsum.contract`` calls the trace ran as ``torch.einsum``,
    ``(equation, user's file:line or None)``, each once
    (:func:`~lcsm_compile.capture.helpers.routed_contract`); when not empty the pipeline
    checks the graph equal to the eager model.
    """

    gm: Optional[fx.GraphModule]
    data_inputs: List[fx.Node]
    time_dims: Dict[str, int]
    time_symbol: Optional[sympy.Expr]
    batch_symbol: Optional[sympy.Expr]
    example_args: List[Any]
    fake_mode: Any = None
    input_kind: str = "cont"
    out_spec: Optional[OutSpec] = None
    capture_len: int = 0
    valid_range: Tuple[int, Optional[int]] = (2, None)
    mutated_buffers: List[Tuple[str, bool]] = dataclasses.field(default_factory=list)
    error: Optional[Tuple[str, Optional[str], Optional[str]]] = None
    routed: Tuple[Tuple[str, Optional[str]], ...] = ()

    @property
    def symbolic(self) -> bool:
        return isinstance(self.time_symbol, sympy.Symbol)


_CAPTURE_LENGTHS = (11, 13)


def _first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return msg[0] if msg else type(e).__name__


def _fresh_function(fn):
    """A copy of ``fn`` with its own code object, so dynamo's cache entries stay private."""
    code = fn.__code__.replace(co_name=f"lcsm_capture_{id(fn):x}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def _drop_input_mutations(gm: fx.GraphModule, names: Dict[fx.Node, str],
                          data_inputs: List[fx.Node]) -> List[Tuple[str, bool]]:
    """Remove ``copy_`` writes into placeholders (buffer updates in forward); report them as
    ``(name, depends_on_input)``."""
    out = []
    dep = set(data_inputs)
    for n in gm.graph.nodes:
        if any(a in dep for a in n.all_input_nodes):
            dep.add(n)
    for n in list(gm.graph.nodes):
        if n.op == "call_function" and n.target in (torch.ops.aten.copy_.default,) and \
                n.args[0].op == "placeholder":
            out.append((names.get(n.args[0], n.args[0].name), n.args[1] in dep))
            n.replace_all_uses_with(n.args[0])
            gm.graph.erase_node(n)
    return out


# ----------------------------------------------------------------------------- whole model
def _state_maps(model, mcopy):
    """``id(copy tensor) -> FQN`` and ``FQN -> the user's tensor``."""
    fqn: Dict[int, str] = {}
    orig: Dict[str, torch.Tensor] = {}
    for name, t in list(mcopy.named_parameters(remove_duplicate=False)) + \
            list(mcopy.named_buffers(remove_duplicate=False)):
        fqn.setdefault(id(t), name)
    for name, t in list(model.named_parameters(remove_duplicate=False)) + \
            list(model.named_buffers(remove_duplicate=False)):
        orig.setdefault(name, t)
    return fqn, orig


def _bind_tensor(gm: fx.GraphModule, node: fx.Node, tensor: torch.Tensor, name: str) -> fx.Node:
    """Replace ``node`` (placeholder or get_attr) by a get_attr of ``tensor`` named after ``name``."""
    attr = "lcsm__" + re.sub(r"[^0-9a-zA-Z_]", "_", name)
    if not hasattr(gm, attr):
        if isinstance(tensor, torch.nn.Parameter):
            gm.register_parameter(attr, tensor)
        else:
            gm.register_buffer(attr, tensor)
    with gm.graph.inserting_before(node):
        ga = gm.graph.get_attr(attr)
    ga.meta.update({k: v for k, v in node.meta.items() if k == "val"})
    ga.meta["lcsm_origin"] = name
    node.replace_all_uses_with(ga)
    gm.graph.erase_node(node)
    return ga


def _finish(gm, data, kind, spec, xc, time_dim, mutated, fake_mode, routed=()) -> Captured:
    sizes_from_input(gm, data)
    shape = val(data).shape
    tsym = to_expr(shape[time_dim])
    bsym = to_expr(shape[0])
    vr = (2, None)
    if isinstance(tsym, sympy.Symbol) and fake_mode is not None and fake_mode.shape_env is not None:
        r = fake_mode.shape_env.var_to_range.get(tsym)
        if r is not None:
            hi = r.upper
            vr = (int(r.lower), None if (hi == sympy.oo or str(hi) == "int_oo") else int(hi))
    cap = Captured(gm, [data], {data.name: time_dim}, tsym,
                   bsym if isinstance(bsym, sympy.Symbol) else None, [xc],
                   fake_mode=fake_mode, input_kind=kind, out_spec=spec,
                   capture_len=xc.shape[time_dim], valid_range=vr,
                   mutated_buffers=mutated, routed=tuple(dict.fromkeys(routed)))
    if not isinstance(tsym, sympy.Symbol):
        cap.error = ("the sequence length was specialized to a constant while tracing", "capture", None)
    return cap


def _capture_dynamo(model, xc, kind, time_dim) -> Captured:
    """Whole-model capture with dynamo (``fullgraph=True``) + aot_autograd (see module doc)."""
    from torch._decomp import core_aten_decompositions
    from torch._dynamo.backends.common import aot_autograd

    store: Dict[str, Any] = {}

    def inference_compiler(gm, fake_args):
        store["aot"] = gm
        store["fake"] = fake_args

        def run(*args):
            outs = gm(*args)
            store["outs"] = outs
            return outs
        return run

    aot = aot_autograd(fw_compiler=inference_compiler, inference_compiler=inference_compiler,
                       decompositions=core_aten_decompositions(),
                       keep_inference_input_mutations=True)

    def outer(gm, example_inputs):
        store["dyn_ex"] = list(example_inputs)
        return aot(gm, example_inputs)

    quiet = logging.getLogger("torch._guards")  # a refused specialization logs a long ERROR
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        return _capture_dynamo_inner(model, xc, kind, time_dim, store, outer)
    finally:
        quiet.setLevel(level)


def _capture_dynamo_inner(model, xc, kind, time_dim, store, outer) -> Captured:
    from torch._guards import detect_fake_mode

    err = None
    routed: List[Tuple[str, Optional[str]]] = []
    for mark_batch in (True, False):
        store.clear()
        mcopy = copy.deepcopy(model)  # forward may cache things on self
        fqn, orig = _state_maps(model, mcopy)

        def f(inp):
            return mcopy(inp)

        xd = xc.detach().clone()
        torch._dynamo.mark_dynamic(xd, time_dim)
        if mark_batch:
            torch._dynamo.mark_dynamic(xd, 0)
        try:
            with torch.no_grad(), symbolic_bit_length(), routed_contract(mcopy) as routed:
                out = torch.compile(_fresh_function(f), backend=outer, fullgraph=True)(xd)
            err = None
            break
        except Exception as e:  # noqa: BLE001 - every capture failure becomes a refusal
            name = type(e).__name__
            if "ConstraintViolation" in name or "specialized" in str(e):
                which = "sequence length" if f"size()[{time_dim}]" in str(e) or not mark_batch else "batch size"
                err = (f"the {which} was specialized to a constant while tracing (code that depends "
                       f"on its exact value); the graph would not be valid at other lengths",
                       "capture", source_of_exception(e))
                if which == "batch size":
                    continue
            else:
                reason = _first_line(e)
                if "Unsupported" in name or "graph break" in str(e).lower() or "data-dependent" in str(e):
                    reason = "graph break while capturing the whole model: " + reason
                else:
                    reason = f"capture failed ({name}): " + reason
                err = (reason, "capture", source_of_exception(e))
            break
    if err is not None:
        return Captured(None, [], {}, None, None, [], input_kind=kind, error=err)

    gm: fx.GraphModule = store["aot"]
    dyn_ex = store["dyn_ex"]
    phs = list(gm.graph.find_nodes(op="placeholder"))
    if len(phs) != len(dyn_ex):
        return Captured(None, [], {}, None, None, [], input_kind=kind,
                        error=(f"unexpected capture: {len(phs)} graph inputs for {len(dyn_ex)} "
                               "dynamo inputs", "capture", None))
    data = None
    for p, ex in zip(phs, dyn_ex):
        if isinstance(ex, torch.Tensor) and ex is xd:
            data = p
    if data is None:  # dynamo may pass a different tensor object for the input
        for p, ex in zip(phs, dyn_ex):
            if isinstance(ex, torch.Tensor) and id(ex) not in fqn and ex.shape == xd.shape:
                data = p
                break
    if data is None:
        return Captured(None, [], {}, None, None, [], input_kind=kind,
                        error=("could not find the model input in the captured graph", "capture", None))

    # sizes from the input, parameters as get_attr to the user's tensors
    symints_to_sym_size(gm, [data], erase=True)
    names: Dict[fx.Node, str] = {}
    n_const = 0
    for p, ex in zip(phs, dyn_ex):
        if p is data or not isinstance(ex, torch.Tensor):
            continue
        name = fqn.get(id(ex))
        tensor = orig.get(name) if name is not None else None
        if tensor is None:
            tensor = ex.detach()
            name = name or f"_lcsm_const{n_const}"
            n_const += 1
        names[p] = name
        _bind_tensor(gm, p, tensor, name)
    mutated = _drop_input_mutations(gm, names, [data])

    # outputs: the tensor leaves of the model output, in pytree order
    leaves, spec = flatten_output(out)
    outs = store.get("outs")
    g = gm.graph
    out_node = next(iter(g.find_nodes(op="output")))
    graph_outs = list(out_node.args[0])
    sel = []
    for leaf in leaves:
        if not isinstance(leaf, torch.Tensor):
            continue
        j = next((i for i, o in enumerate(outs) if o is leaf), None)
        if j is None:
            j = next((i for i, o in enumerate(outs) if isinstance(o, torch.Tensor)
                      and o.shape == leaf.shape and o.dtype == leaf.dtype
                      and torch.equal(o, leaf)), None)
        if j is None:
            return Captured(None, [], {}, None, None, [], input_kind=kind, error=(
                "an output of the model is not computed by the captured graph "
                "(an input or a constant returned as is)", "capture", None))
        sel.append(graph_outs[j])
    out_node.args = (tuple(sel),)
    g.eliminate_dead_code()
    g.lint()
    gm.recompile()
    return _finish(gm, data, kind, spec, xc, time_dim, mutated, detect_fake_mode(store["fake"]), routed)


@contextlib.contextmanager
def _full_stack_traces():
    """make_fx records only the frames named ``forward`` (so a node made inside a helper
    function or ``self.mix`` points at the caller's line). For the duration of a capture its
    tracer keeps every frame from the first ``forward`` down (fx's own non-forward-only
    filter), so reports name the line that made the op. A no-op where torch lacks the hook."""
    from torch.fx.experimental import proxy_tensor
    from torch.fx.proxy import TracerBase

    cls = proxy_tensor.PythonKeyTracer
    base = getattr(TracerBase, "_filter_traceback_frames", None)
    if base is None:
        yield
        return

    def keep_all(self, summary):
        only = getattr(self, "_record_forward_stack_traces_only", False)
        self._record_forward_stack_traces_only = False
        try:
            return base(self, summary)
        finally:
            self._record_forward_stack_traces_only = only

    had = "_filter_traceback_frames" in cls.__dict__
    old = cls.__dict__.get("_filter_traceback_frames")
    cls._filter_traceback_frames = keep_all
    try:
        yield
    finally:
        if had:
            cls._filter_traceback_frames = old
        else:
            del cls._filter_traceback_frames


def _capture_make_fx(model, xc, kind, time_dim) -> Captured:
    """``make_fx`` in symbolic mode runs the forward as plain Python with the parameters REAL
    (so ``.item()`` on a parameter, a dynamo graph break, just becomes a constant); the input
    is symbolic. The graph must come out functional (no in-place ops) and generic in the
    length, else this tracer gives up (``error``) and dynamo is tried."""
    from torch._decomp import core_aten_decompositions
    from torch._guards import detect_fake_mode
    from torch.fx.experimental.proxy_tensor import make_fx

    mcopy = copy.deepcopy(model)
    fqn, orig = _state_maps(model, mcopy)
    store: Dict[str, Any] = {}

    def f(inp):
        leaves, spec = flatten_output(mcopy(inp))
        store["spec"] = spec
        return [x for x in leaves if isinstance(x, torch.Tensor)]

    try:
        with torch.no_grad(), symbolic_bit_length(), routed_contract(mcopy) as routed, \
                _full_stack_traces():
            gm = make_fx(f, tracing_mode="symbolic", decomposition_table=core_aten_decompositions(),
                         record_stack_traces=True, _allow_non_fake_inputs=True)(xc)
    except Exception as e:  # noqa: BLE001
        return Captured(None, [], {}, None, None, [], input_kind=kind, error=(
            f"capture failed ({type(e).__name__}): {_first_line(e)}", "capture", source_of_exception(e)))
    for n in gm.graph.nodes:
        t = n.target
        if isinstance(t, torch._ops.OpOverload) and t._schema.is_mutable:
            return Captured(None, [], {}, None, None, [], input_kind=kind, error=(
                f"in-place op {t} in forward (after a graph break the model is traced as plain "
                "Python, which must be functional)", "capture", None))
    data = next(iter(gm.graph.find_nodes(op="placeholder")))
    spec = store["spec"]
    # spec consts: non-tensor leaves were recorded during the trace (python values)
    for n in list(gm.graph.nodes):
        if n.op == "get_attr":
            t = getattr(gm, n.target)
            if isinstance(t, torch.Tensor):
                name = fqn.get(id(t))
                tensor = orig.get(name) if name is not None else t
                _bind_tensor(gm, n, tensor, name or str(n.target))
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return _finish(gm, data, kind, spec, xc, time_dim, [], detect_fake_mode([val(data)]), routed)


def capture_model(model: Any, example: torch.Tensor, *, time_dim: int = 1,
                  lengths: Tuple[int, ...] = None) -> Captured:
    """Capture ``model`` as one aten graph with symbolic batch and length (see module doc).

    Pure: the user's module and tensors are not modified. Never raises for a model it cannot
    capture; ``Captured.error`` says why (graph break, specialized length, ...).

    Two tracers, the first that gives a graph generic in ``B`` and ``L`` wins
    (``lengths``: the capture lengths to try, default 11 then 13):
    ``make_fx`` in symbolic mode with the parameters real (:func:`_capture_make_fx`: fast, no
    graph breaks, python scalars read from parameters become constants), then dynamo +
    aot_autograd (:func:`_capture_dynamo`: functionalizes in-place buffer updates, keeps
    ``math.log2``-style size arithmetic symbolic). Each at capture length 11, then 13.
    """
    model = unwrap_model(model)
    if not isinstance(example, torch.Tensor) or example.dim() < 2:
        return Captured(None, [], {}, None, None, [], error=(
            "the example must be a tensor [B, L] (ids) or [B, L, Din]", None, None))
    kind = input_kind_of(example)
    # a model that only runs at its example's batch (a graph dynamo compiled for one batch)
    static_batch = bool(getattr(model, "lcsm_static_batch", False))
    cap = None
    for Lc in lengths or _CAPTURE_LENGTHS:  # a second length if a size coincidence specialized the first
        xc = capture_input(example, Lc, static_batch)
        with math_attention():  # SDPA as matmuls + softmax on every device (helpers.math_attention)
            fast = _capture_make_fx(model, xc, kind, time_dim)
        if fast.gm is not None and fast.error is None and (fast.batch_symbol is not None or static_batch):
            return fast
        with math_attention():
            cap = _capture_dynamo(model, xc, kind, time_dim)
        if cap.gm is not None and cap.error is None:
            return cap
        if not (cap.error and "specialized" in cap.error[0]):
            break
    return cap
