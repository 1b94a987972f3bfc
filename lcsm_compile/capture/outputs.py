"""The model's output structure: flatten it to tensor leaves, rebuild it, find the logits.

* :func:`flatten_output` / :class:`OutSpec`: a model output (tensor, tuple/list/dict,
  namedtuple, dataclass, an object with ``.logits``, nested) as tensor leaves plus what is
  needed to rebuild it; non-tensor leaves pass through unchanged.
* :func:`find_logits`: THE logits finder (used by sessions, ``generate`` and the backend): the
  ``.logits`` / ``"logits"`` entry found depth-first, else the first floating-point tensor.
"""

from __future__ import annotations

import dataclasses
from typing import Any, List, Optional, Tuple

import torch
import torch.utils._pytree as pytree

__all__ = ["OutSpec", "flatten_output", "find_logits"]


def _to_tree(x: Any) -> Tuple[Any, Optional[type]]:
    """A dataclass or an object with ``.logits`` as a dict of its fields (and its class)."""
    if isinstance(x, (torch.Tensor, tuple, list, dict)) or x is None:
        return x, None
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: getattr(x, f.name) for f in dataclasses.fields(x)}, type(x)
    if hasattr(x, "__dict__") and hasattr(x, "logits"):
        return dict(vars(x)), type(x)
    return x, None


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

    def logits_index(self, floating: Optional[List[bool]] = None) -> int:
        """Index (among the tensor outputs) of the logits: the ``logits`` entry (depth-first),
        else the first floating-point tensor (``floating[i]``, when given), else the first."""
        paths = [p for p, _ in pytree.tree_flatten_with_path(
            pytree.tree_unflatten(list(range(len(self.is_tensor))), self.treespec))[0]]
        ti = 0
        for path, is_t in zip(paths, self.is_tensor):
            if is_t and any(getattr(k, "key", getattr(k, "name", None)) == "logits" for k in path):
                return ti
            ti += is_t
        if floating:
            return next((i for i, f in enumerate(floating) if f), 0)
        return 0


def flatten_output(out: Any) -> Tuple[List[Any], OutSpec]:
    """Flatten a model output into leaves and an :class:`OutSpec`."""
    tree, cls = _to_tree(out)
    leaves, spec = pytree.tree_flatten(tree)
    is_t = [isinstance(x, torch.Tensor) for x in leaves]
    consts = [None if t else x for x, t in zip(leaves, is_t)]
    return leaves, OutSpec(spec, is_t, consts, cls)


def find_logits(out: Any) -> Optional[torch.Tensor]:
    """The logits of a model output (module doc), or None when it holds no tensor."""
    if isinstance(out, torch.Tensor):
        return out
    tree, _ = _to_tree(out)
    if tree is out and not isinstance(out, (tuple, list, dict)):
        return None
    stack = [tree]
    while stack:  # the "logits" entry, depth-first (an entry may be an object with .logits)
        x = stack.pop()
        if isinstance(x, dict):
            if isinstance(x.get("logits"), torch.Tensor):
                return x["logits"]
            stack.extend(reversed([_to_tree(v)[0] for v in x.values()]))
        elif isinstance(x, (tuple, list)):
            fields = getattr(x, "_fields", None)
            if fields and "logits" in fields and isinstance(getattr(x, "logits"), torch.Tensor):
                return x.logits
            stack.extend(reversed([_to_tree(v)[0] for v in x]))
    leaves, _ = flatten_output(out)
    tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
    return next((t for t in tensors if t.is_floating_point()), tensors[0] if tensors else None)
