"""Capture: a model (or one dynamo graph) -> an aten-level, functional inference graph.

Two entry points, one result type (:class:`Captured`):

* :func:`capture_model` (used by :func:`lcsm_compile.pipeline.lower`): the whole model as ONE
  graph, traced by dynamo (``fullgraph=True``) with the batch and time dims of the input marked
  dynamic, then lowered by ``aot_autograd`` with the core aten decompositions under
  ``no_grad`` (functional, inference only). The result ``gm`` has exactly one placeholder, the
  model input; parameters, buffers and tensor constants are ``get_attr`` nodes that point at
  the user's own tensors (no copies); every size is derived from the input with
  ``aten.sym_size.int`` nodes, so running ``gm`` at another length recomputes everything at
  that length. The graph returns the tensor leaves of the model output in pytree order;
  :class:`OutSpec` rebuilds the user's structure (tuple / dict / dataclass / object with
  ``.logits``; non-tensor leaves pass through). The user's module is not mutated: dynamo
  traces a deep copy (forward may cache things on ``self``); in-place buffer updates are
  dropped from the graph and listed in ``mutated_buffers``.
  Capture runs at ``L >= 2`` and ``B >= 2`` with ``B != L`` (size 1 is specialized by torch,
  and equal sizes would share a symbol): a shorter example is repeated.
* :func:`capture_aten_graph` (used by the backend): wraps the aten graph that aot_autograd
  hands to the backend's inference compiler, with the data placeholders named by the caller;
  its sizes are symbolic if dynamo made them so, else concrete (the graph is then only used
  at that shape, which dynamo guards).

Failures never raise: ``Captured.error`` holds ``(reason, op, source)``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import re
import types
from typing import Any, Dict, List, Optional, Tuple

import sympy
import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from .passes.common import to_expr, val

__all__ = ["Captured", "OutSpec", "capture_model", "capture_aten_graph", "unwrap_model",
           "flatten_output"]


# ----------------------------------------------------------------------------- output spec
@dataclasses.dataclass
class OutSpec:
    """How to rebuild the model's output from the graph's tensor outputs.

    ``treespec``: pytree spec of the output (dataclasses and plain objects are flattened through
    their fields); ``is_tensor[i]``: whether leaf ``i`` comes from the graph; ``consts[i]``: the
    non-tensor leaf values, passed through; ``cls``: the dataclass / object class, or None.
    """

    treespec: Any
    is_tensor: List[bool]
    consts: List[Any]
    cls: Optional[type] = None

    @property
    def num_tensors(self) -> int:
        return sum(self.is_tensor)

    def unflatten(self, tensors) -> Any:
        """Rebuild the user's output structure from the graph outputs (tensor leaves, in order)."""
        it = iter(tensors)
        leaves = [next(it) if t else c for t, c in zip(self.is_tensor, self.consts)]
        out = pytree.tree_unflatten(leaves, self.treespec)
        if self.cls is not None:
            if dataclasses.is_dataclass(self.cls):
                return self.cls(**out)
            obj = self.cls.__new__(self.cls)
            obj.__dict__.update(out)
            return obj
        return out

    def logits_index(self) -> int:
        """Index (among the tensor outputs) of the logits: the ``logits`` entry, else the first."""
        paths = [p for p, _ in pytree.tree_flatten_with_path(
            pytree.tree_unflatten(list(range(len(self.is_tensor))), self.treespec))[0]]
        ti = 0
        for path, is_t in zip(paths, self.is_tensor):
            if is_t and any(getattr(k, "key", getattr(k, "name", None)) == "logits" for k in path):
                return ti
            ti += is_t
        return 0


def flatten_output(out: Any) -> Tuple[List[Any], OutSpec]:
    """Flatten a model output into leaves and an :class:`OutSpec`."""
    cls = None
    tree = out
    if not isinstance(out, (torch.Tensor, tuple, list, dict)) and out is not None:
        if dataclasses.is_dataclass(out) and not isinstance(out, type):
            cls = type(out)
            tree = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
        elif hasattr(out, "__dict__") and hasattr(out, "logits"):
            cls = type(out)
            tree = dict(vars(out))
    leaves, spec = pytree.tree_flatten(tree)
    is_t = [isinstance(x, torch.Tensor) for x in leaves]
    consts = [None if t else x for x, t in zip(leaves, is_t)]
    return leaves, OutSpec(spec, is_t, consts, cls)


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
    capture_batch: int = 0
    valid_range: Tuple[int, Optional[int]] = (2, None)
    mutated_buffers: List[Tuple[str, bool]] = dataclasses.field(default_factory=list)
    error: Optional[Tuple[str, Optional[str], Optional[str]]] = None
    single_input: bool = True

    @property
    def symbolic(self) -> bool:
        return isinstance(self.time_symbol, sympy.Symbol)

    def fake_inputs(self) -> List[Any]:
        return [val(p) for p in self.gm.graph.find_nodes(op="placeholder")]


def unwrap_model(model: Any) -> Any:
    """The plain module behind a ``torch.compile`` result (``_orig_mod``), else ``model``."""
    while hasattr(model, "_orig_mod"):
        model = model._orig_mod
    return model


def input_kind_of(x: torch.Tensor) -> str:
    """``"ids"`` for integer ``[B, L]`` inputs, ``"cont"`` for ``[B, L, Din]`` (or other) inputs."""
    return "ids" if not (x.is_floating_point() or x.is_complex()) else "cont"


def _capture_input(x: torch.Tensor, Lc: int = 11) -> torch.Tensor:
    """The example tiled/cut to ``B >= 2`` rows and length ``Lc`` (an odd prime by default, so
    that no size of the model coincides with ``L`` or ``2L`` and gets unified/specialized)."""
    B, L = x.shape[0], x.shape[1]
    Bc = max(B, 2)
    if Bc == Lc:
        Lc += 2
    if Bc != B:
        x = x.repeat(*([-(-Bc // B)] + [1] * (x.dim() - 1)))[:Bc]
    if Lc != L:
        x = x.repeat(*([1, -(-Lc // L)] + [1] * (x.dim() - 2)))[:, :Lc]
    return x.contiguous()


_CAPTURE_LENGTHS = (11, 13)


def _first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return msg[0] if msg else type(e).__name__


def _user_loc_from_exc(e: BaseException) -> Optional[str]:
    """The last user ``File "...", line N`` mentioned in an exception message."""
    hits = re.findall(r'File "([^"]+)", line (\d+)', str(e))
    hits = [h for h in hits if "/torch/" not in h[0] and "/lcsm_compile/" not in h[0]]
    return f"{hits[-1][0]}:{hits[-1][1]}" if hits else None


def _fresh_function(fn):
    """A copy of ``fn`` with its own code object, so dynamo's cache entries stay private."""
    code = fn.__code__.replace(co_name=f"lcsm_capture_{id(fn):x}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def _symints_to_sym_size(gm: fx.GraphModule, prefer: List[fx.Node], erase: bool) -> bool:
    """Replace SymInt placeholders by ``aten.sym_size.int(tensor_placeholder, dim)`` nodes.

    Returns False if some SymInt placeholder is not a plain dim of a tensor placeholder.
    """
    g = gm.graph
    phs = list(g.find_nodes(op="placeholder"))
    tensors = [p for p in prefer] + [p for p in phs if isinstance(val(p), torch.Tensor) and p not in prefer]
    last = phs[-1] if phs else None
    ok = True
    for p in phs:
        v = val(p)
        if not isinstance(v, torch.SymInt):
            continue
        e = v.node.expr
        src = None
        for t in tensors:
            for d, s in enumerate(val(t).shape):
                if isinstance(s, torch.SymInt) and s.node.expr == e:
                    src = (t, d)
                    break
            if src:
                break
        if src is None:
            ok = False
            continue
        with g.inserting_after(last):
            n = g.call_function(torch.ops.aten.sym_size.int, (src[0], src[1]))
        n.meta["val"] = val(src[0]).shape[src[1]]
        last = n
        p.replace_all_uses_with(n)
        if erase:
            g.erase_node(p)
    return ok


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


class _BitLengthPatch:
    """During capture, ``SymInt.bit_length`` stays symbolic (``ceil(log2(n + 1))``) instead of
    specializing the length: ``n = 1 << (2 * L - 1).bit_length()`` is a common FFT size."""

    def __enter__(self):
        self.old = getattr(torch.SymInt, "bit_length", None)

        def bit_length(n):
            import math
            return math.ceil(torch._sym_log2(torch.sym_float(n + 1)))
        torch.SymInt.bit_length = bit_length
        return self

    def __exit__(self, *exc):
        if self.old is None:
            del torch.SymInt.bit_length
        else:
            torch.SymInt.bit_length = self.old
        return False


def _sizes_from_input(gm: fx.GraphModule, data: fx.Node) -> None:
    """Every ``sym_size`` whose value is a size of the input becomes one canonical
    ``aten.sym_size.int(input, dim)`` node placed right after the input placeholder: no size
    reads an intermediate tensor (a region's nodes would otherwise stay alive after the
    rewrite) and every later pass can use the size anywhere in the graph."""
    g = gm.graph
    dims: Dict[Any, fx.Node] = {}
    anchor = data
    for d, sz in enumerate(val(data).shape):
        if isinstance(sz, torch.SymInt) and sz.node.expr not in dims:
            with g.inserting_after(anchor):
                n = g.call_function(torch.ops.aten.sym_size.int, (data, d))
            n.meta["val"] = sz
            dims[sz.node.expr] = n
            anchor = n
    canon = set(dims.values())
    for n in list(g.nodes):
        if n.target == torch.ops.aten.sym_size.int and n not in canon:
            v = val(n)
            if isinstance(v, torch.SymInt) and v.node.expr in dims:
                n.replace_all_uses_with(dims[v.node.expr])
                g.erase_node(n)
    g.eliminate_dead_code()
    g.lint()
    gm.recompile()


def _finish(gm, data, kind, spec, xc, time_dim, mutated, fake_mode) -> Captured:
    _sizes_from_input(gm, data)
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
                   capture_len=xc.shape[time_dim], capture_batch=xc.shape[0], valid_range=vr,
                   mutated_buffers=mutated, single_input=True)
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
            with torch.no_grad(), _BitLengthPatch():
                out = torch.compile(_fresh_function(f), backend=outer, fullgraph=True)(xd)
            err = None
            break
        except Exception as e:  # noqa: BLE001 - every capture failure becomes a refusal
            name = type(e).__name__
            if "ConstraintViolation" in name or "specialized" in str(e):
                which = "sequence length" if f"size()[{time_dim}]" in str(e) or not mark_batch else "batch size"
                err = (f"the {which} was specialized to a constant while tracing (code that depends "
                       f"on its exact value); the graph would not be valid at other lengths",
                       "capture", _user_loc_from_exc(e))
                if which == "batch size":
                    continue
            else:
                reason = _first_line(e)
                if "Unsupported" in name or "graph break" in str(e).lower() or "data-dependent" in str(e):
                    reason = "graph break while capturing the whole model: " + reason
                else:
                    reason = f"capture failed ({name}): " + reason
                err = (reason, "capture", _user_loc_from_exc(e))
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
    _symints_to_sym_size(gm, [data], erase=True)
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
    return _finish(gm, data, kind, spec, xc, time_dim, mutated, detect_fake_mode(store["fake"]))


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
        with torch.no_grad(), _BitLengthPatch():
            gm = make_fx(f, tracing_mode="symbolic", decomposition_table=core_aten_decompositions(),
                         record_stack_traces=True, _allow_non_fake_inputs=True)(xc)
    except Exception as e:  # noqa: BLE001
        return Captured(None, [], {}, None, None, [], input_kind=kind, error=(
            f"capture failed ({type(e).__name__}): {_first_line(e)}", "capture", _user_loc_from_exc(e)))
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
    return _finish(gm, data, kind, spec, xc, time_dim, [], detect_fake_mode([val(data)]))


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
    cap = None
    for Lc in lengths or _CAPTURE_LENGTHS:  # a second length if a size coincidence specialized the first
        xc = _capture_input(example, Lc)
        fast = _capture_make_fx(model, xc, kind, time_dim)
        if fast.gm is not None and fast.error is None and fast.batch_symbol is not None:
            return fast
        cap = _capture_dynamo(model, xc, kind, time_dim)
        if cap.gm is not None and cap.error is None:
            return cap
        if not (cap.error and "specialized" in cap.error[0]):
            break
    return cap


# ----------------------------------------------------------------------------- one graph
def capture_aten_graph(gm: fx.GraphModule, fake_args: List[Any], real_args: List[Any],
                       data_index: List[int], time_dim: int = 1) -> Captured:
    """Wrap an aot_autograd inference graph (as the backend receives it) in a :class:`Captured`.

    ``data_index``: which placeholders carry the time-varying input(s) (their dim ``time_dim``
    is time, dim 0 batch). SymInt placeholders are kept (the calling convention does not change)
    but their uses read ``aten.sym_size.int`` of a tensor input instead.
    """
    from torch._guards import detect_fake_mode

    phs = list(gm.graph.find_nodes(op="placeholder"))
    data = [phs[i] for i in data_index]
    _symints_to_sym_size(gm, data, erase=False)
    mutated: List[Tuple[str, bool]] = []  # in-place buffer writes stay in the graph here
    gm.graph.eliminate_dead_code()
    gm.recompile()
    fake_mode = detect_fake_mode(fake_args)
    shape = val(data[0]).shape
    tsym = to_expr(shape[time_dim])
    bsym = to_expr(shape[0])
    return Captured(gm, data, {p.name: time_dim for p in data}, tsym,
                    bsym if isinstance(bsym, sympy.Symbol) else None, list(real_args),
                    fake_mode=fake_mode, capture_len=int(real_args[data_index[0]].shape[time_dim]),
                    capture_batch=int(real_args[data_index[0]].shape[0]),
                    mutated_buffers=mutated, single_input=False)
