"""The model's output structure: flatten it to tensor leaves, rebuild it, find the logits.

* :func:`flatten_output` / :class:`OutSpec`: a model output (tensor, tuple/list/dict,
  namedtuple, dataclass, an object with ``.logits``, nested in any order) as tensor leaves plus
  what is needed to rebuild it; non-tensor leaves pass through unchanged. Containers pytree
  knows (tuple, list, dict, namedtuple, registered classes) stay pytree nodes; a dataclass, an
  object with ``.logits`` (``__dict__`` attributes) and an unregistered dict/list/tuple subclass
  become an :class:`_Obj` node, at any depth, and are rebuilt as their own class. A namedtuple
  whose class is made inside ``forward`` (a new class each call) is rebuilt as the class of the
  call that was flattened: same fields, ``.logits`` and ``[i]`` work.
* :func:`find_logits`: THE logits finder (used by sessions, ``generate``, ``OutSpec`` and the
  CLI): the ``.logits`` / ``"logits"`` entry found depth-first (a node's own entry before its
  children's), else the first floating-point tensor with the time dim (dim 1; of ``length``
  positions when given): a per-sequence ``[B]`` tensor is skipped.
"""

from __future__ import annotations

import dataclasses
from typing import Any, List, Optional, Tuple

import torch
import torch.utils._pytree as pytree

__all__ = ["OutSpec", "flatten_output", "find_logits"]

#: the time dim of every model output (``[B, L, ...]``)
TIME_DIM = 1


class _Obj:
    """A container pytree does not know, as a pytree node: ``kind`` is ``"dataclass"``,
    ``"attrs"`` (an object with ``.logits``, rebuilt from its ``__dict__``), ``"dict"`` or
    ``"seq"`` (an unregistered dict / list / tuple subclass); ``keys`` names ``values``."""

    __slots__ = ("cls", "kind", "keys", "values")

    def __init__(self, cls: type, kind: str, keys: Optional[tuple], values: list):
        self.cls, self.kind, self.keys, self.values = cls, kind, keys, list(values)

    def children(self) -> List[Tuple[Any, Any]]:
        keys = self.keys if self.keys is not None else [None] * len(self.values)
        return list(zip(keys, self.values))

    def rebuild(self) -> Any:
        """The original class with ``values`` (already rebuilt)."""
        cls, values = self.cls, self.values
        if self.kind == "dataclass":
            fields = dict(zip(self.keys, values))
            init = {f.name: fields[f.name] for f in dataclasses.fields(cls) if f.init}
            try:
                obj = cls(**init)
                for k, v in fields.items():
                    if k not in init:
                        object.__setattr__(obj, k, v)
                return obj
            except Exception:  # noqa: BLE001 - a validating constructor: set the fields directly
                obj = cls.__new__(cls)
                for k, v in fields.items():
                    object.__setattr__(obj, k, v)
                return obj
        if self.kind == "attrs":
            obj = cls.__new__(cls)
            obj.__dict__.update(zip(self.keys, values))
            return obj
        if self.kind == "dict":
            try:
                return cls(zip(self.keys, values))
            except Exception:  # noqa: BLE001
                return dict(zip(self.keys, values))
        try:
            return cls(values)
        except Exception:  # noqa: BLE001
            return tuple(values) if issubclass(cls, tuple) else list(values)


def _obj_flatten(o: _Obj):
    return list(o.values), (o.cls, o.kind, o.keys)


def _obj_unflatten(values, context) -> _Obj:
    cls, kind, keys = context
    return _Obj(cls, kind, keys, list(values))


def _obj_flatten_with_keys(o: _Obj):
    if o.keys is None:
        keyed = [(pytree.SequenceKey(i), v) for i, v in enumerate(o.values)]
    elif o.kind == "dict":
        keyed = [(pytree.MappingKey(k), v) for k, v in zip(o.keys, o.values)]
    else:
        keyed = [(pytree.GetAttrKey(k), v) for k, v in zip(o.keys, o.values)]
    return keyed, (o.cls, o.kind, o.keys)


if _Obj not in pytree.SUPPORTED_NODES:
    pytree.register_pytree_node(_Obj, _obj_flatten, _obj_unflatten,
                                serialized_type_name=f"{__name__}._Obj",
                                flatten_with_keys_fn=_obj_flatten_with_keys)


def _is_obj(x: Any) -> bool:
    return isinstance(x, _Obj)


def _leaf_to_tree(x: Any) -> Any:
    """A pytree leaf as a tree: a dataclass / object with ``.logits`` / unregistered container
    becomes an :class:`_Obj` (its entries converted too); anything else stays a leaf."""
    if isinstance(x, torch.Tensor) or isinstance(x, type):
        return x
    if dataclasses.is_dataclass(x):
        names = tuple(f.name for f in dataclasses.fields(x))
        return _Obj(type(x), "dataclass", names, [_to_tree(getattr(x, n)) for n in names])
    if isinstance(x, dict):  # a dict subclass pytree does not know
        return _Obj(type(x), "dict", tuple(x.keys()), [_to_tree(v) for v in x.values()])
    if isinstance(x, (list, tuple)):
        return _Obj(type(x), "seq", None, [_to_tree(v) for v in x])
    if hasattr(x, "__dict__") and hasattr(x, "logits"):
        d = vars(x)
        return _Obj(type(x), "attrs", tuple(d.keys()), [_to_tree(v) for v in d.values()])
    return x


def _to_tree(x: Any) -> Any:
    """The output as a pure pytree (see the module doc)."""
    return pytree.tree_map(_leaf_to_tree, x)


def _from_tree(t: Any) -> Any:
    """Inverse of :func:`_to_tree`: every :class:`_Obj` back to its class (innermost first)."""
    def back(x):
        if isinstance(x, _Obj):
            return _Obj(x.cls, x.kind, x.keys, [_from_tree(v) for v in x.values]).rebuild()
        return x

    return pytree.tree_map(back, t, is_leaf=_is_obj)


@dataclasses.dataclass
class OutSpec:
    """How to rebuild the model's output from the graph's tensor outputs.

    ``treespec``: pytree spec of the output (dataclasses, objects with ``.logits`` and
    unregistered containers are :class:`_Obj` nodes, at any depth); ``is_tensor[i]``: whether
    leaf ``i`` comes from the graph; ``consts[i]``: the non-tensor leaf values, passed through;
    ``cls``: the class of the output itself when it is such an object, else None
    (informational).
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
        return _from_tree(pytree.tree_unflatten(leaves, self.treespec))

    def logits_index(self, floating: Optional[List[bool]] = None) -> int:
        """Index (among the tensor outputs) of the logits :func:`find_logits` picks (all tensor
        outputs taken as ``[B, L, ...]``; floating-point unless ``floating[i]`` says not);
        0 when it finds none."""
        n = self.num_tensors
        marks = [torch.empty((1, 1), dtype=torch.float32 if floating is None or floating[i] else torch.long)
                 for i in range(n)]
        lg = find_logits(self.unflatten(marks))
        return next((i for i, m in enumerate(marks) if m is lg), 0)


def flatten_output(out: Any) -> Tuple[List[Any], OutSpec]:
    """Flatten a model output into leaves and an :class:`OutSpec`."""
    tree = _to_tree(out)
    leaves, spec = pytree.tree_flatten(tree)
    is_t = [isinstance(x, torch.Tensor) for x in leaves]
    consts = [None if t else x for x, t in zip(leaves, is_t)]
    return leaves, OutSpec(spec, is_t, consts, tree.cls if isinstance(tree, _Obj) else None)


def _children(x: Any) -> Optional[List[Tuple[Any, Any]]]:
    """``[(key, child)]`` of a node of a converted tree (key None for positions), or None for
    a leaf."""
    if isinstance(x, _Obj):
        return x.children()
    if isinstance(x, tuple) and hasattr(type(x), "_fields"):  # namedtuple / structseq
        fields = list(getattr(type(x), "_fields", ()))
        return [(fields[i] if i < len(fields) else None, v) for i, v in enumerate(x)]
    if isinstance(x, dict):
        return list(x.items())
    if isinstance(x, (tuple, list)):
        return [(None, v) for v in x]
    node = pytree.SUPPORTED_NODES.get(type(x))
    if node is None:
        return None
    if node.flatten_with_keys_fn is not None:
        keyed, _ = node.flatten_with_keys_fn(x)
        return [(getattr(k, "key", getattr(k, "name", None)), v) for k, v in keyed]
    return [(None, v) for v in node.flatten_fn(x)[0]]


def find_logits(out: Any, length: Optional[int] = None) -> Optional[torch.Tensor]:
    """The logits of a model output (module doc), or None when it holds none.

    ``length``: the number of positions the output covers (when known): the fallback tensor
    must have it in its time dim.
    """
    tree = _to_tree(out)
    stack = [tree]
    while stack:  # the "logits" entry, depth-first: a node's own entry before its children's
        kids = _children(stack.pop())
        if not kids:
            continue
        for k, v in kids:
            if k == "logits" and isinstance(v, torch.Tensor):
                return v
        stack.extend(reversed([v for _, v in kids]))
    for t in pytree.tree_leaves(tree):  # else the first floating-point tensor with the time dim
        if (isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() > TIME_DIM
                and (length is None or t.shape[TIME_DIM] == length)):
            return t
    return None
