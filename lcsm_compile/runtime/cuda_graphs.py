"""The compiled step on CUDA: the per-token work replayed as CUDA graphs, one per red-cell row.

A step of the online engine is two kinds of work (``passes.step_graph.split_tile_work``):

* the **body**: the model's position-wise ops, the red cells of every long convolution
  (``lcsm::online_diag``) and the short convolutions' ring steps (``lcsm::ring_step``). Its
  kernels take the same arguments at every position except one: the red-cell step's row in
  its block, ``r = position - block start`` (``r < block``). The ring step's Triton kernel
  reads the position from a device tensor. So the body is captured once per ``r`` (per tuple
  of rows, one per group) and replayed: at most ``block`` graphs, captured in the first block
  of steps, one launch per token after that;
* the **tile work** (``lcsm::online_advance``): which tiles and chunks run, and where, is the
  schedule's function of the position. It is launched from the host after the replay,
  asynchronously on the same stream (most positions launch nothing; a block boundary a few
  tiles), never captured.

No host synchronisation per token: the position lives in a host tensor (``meta``) for the
schedule and in a device tensor for the kernels; the caller synchronises when it reads an
output (the sampled id). A row's first step runs the body uncompiled-by-graph (it is the real
step, and it warms up Triton and cuBLAS), then captures its graph for the next time.

Not captured, with the reason kept in :attr:`CudaGraphStep.reason` (and logged once): a body
holding an op that reads the position on the host (``HOST_POSITION_OPS``: KV-cache attention,
modal recurrences), a ring step that runs its torch twin (the position read on the host), a
capture that fails. Those programs run the same compiled body without graphs.
"""

from __future__ import annotations

import logging
import operator
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.fx as fx

from ..passes.step_graph import AttrRef, split_tile_work

__all__ = ["CudaGraphStep", "MAX_GRAPHS"]

log = logging.getLogger("lcsm_compile")


def _resolve(gm: fx.GraphModule, target: str) -> Any:
    """The attribute ``target`` (dotted) of ``gm``."""
    return operator.attrgetter(target)(gm)

#: at most this many graphs per program (one per red-cell row: the block size, 16-128)
MAX_GRAPHS = 512


class CudaGraphStep:
    """``step(x_t, pos)`` of a one-graph step program on CUDA (module doc).

    ``compile_body(gm) -> callable`` compiles the body (Inductor: ``InductorStep``; identity
    to replay the graph's own kernels). Outputs are fresh tensors on every call (copies of the
    graph's static outputs), never overwritten by a later step."""

    def __init__(self, step_gm: fx.GraphModule, compile_body: Callable[[fx.GraphModule], Callable]):
        body_gm, calls, blockers = split_tile_work(step_gm)
        self.body_gm = body_gm
        self.body = compile_body(body_gm)
        self.advances = [(op, tuple(_resolve(step_gm, a.name) if isinstance(a, AttrRef) else a for a in args))
                         for op, args in calls]
        self.reason: Optional[str] = "; ".join(f"{n}: {why}" for n, why in blockers) or None
        self._metas: List[Any] = []
        self._check_body()
        self.graphs: Dict[Tuple[int, ...], torch.cuda.CUDAGraph] = {}
        self._outs: Dict[Tuple[int, ...], list] = {}
        self._pool = None
        self._x: Optional[torch.Tensor] = None
        self._pos: Optional[torch.Tensor] = None
        self.replays = 0

    def _check_body(self) -> None:
        """The rows that key the graphs (each red-cell op's ``meta``: host tensors) and the ring
        steps' kernels (only the Triton one reads the position on the device)."""
        from .state_ops import ring_triton
        metas: Dict[int, Any] = {}
        why = []
        ops = torch.ops.lcsm
        for n in self.body_gm.graph.nodes:
            if n.op != "call_function":
                continue
            if n.target is ops.online_diag.default:
                meta = _resolve(self.body_gm, n.args[4].target)
                if meta.device.type != "cpu":
                    why.append(f"{n.name}: its meta is not a host tensor")
                else:
                    metas[id(meta)] = meta.numpy()
            elif n.target is ops.ring_step.default:
                buf, w = (_resolve(self.body_gm, a.target) for a in n.args[1:3])
                b = n.args[3]
                bias = None if b is None else _resolve(self.body_gm, b.target)
                if buf.device.type != "cuda":
                    why.append(f"{n.name}: state not on CUDA")
                elif ring_triton(buf, w, bias) is None:
                    why.append(f"{n.name}: the ring step runs its torch twin (it reads the position on the host)")
        if why:
            self.reason = "; ".join(([self.reason] if self.reason else []) + why)
        self._metas = list(metas.values())

    def _key(self) -> Tuple[int, ...]:
        return tuple(int(m[0] - m[2]) for m in self._metas)

    def __call__(self, x_t: torch.Tensor, pos: torch.Tensor):
        key = self._key() if self.reason is None else None
        g = None if key is None else self.graphs.get(key)
        if g is not None:
            self._x.copy_(x_t)
            self._pos.copy_(pos)
            g.replay()
            self.replays += 1
            outs = [o.clone() for o in self._outs[key]]
        else:
            outs = list(self.body(x_t, pos))
            if key is not None and len(self.graphs) < MAX_GRAPHS:
                self._capture(key, x_t, pos)
        for op, args in self.advances:
            op(*args)
        return outs

    def _capture(self, key: Tuple[int, ...], x_t: torch.Tensor, pos: torch.Tensor) -> None:
        """Record the body for this row (nothing runs: the kernels are recorded, the state is
        not touched); a failure turns graphs off for this program, with the reason."""
        if self._x is None:
            self._x = x_t.clone(memory_format=torch.contiguous_format)
            self._pos = pos.clone()
            self._pool = torch.cuda.graph_pool_handle()
        g = torch.cuda.CUDAGraph()
        try:
            torch.cuda.synchronize()
            with torch.cuda.graph(g, pool=self._pool):
                outs = list(self.body(self._x, self._pos))
        except Exception as e:  # noqa: BLE001 - graphs are an optimisation: say why and run without
            self.reason = f"capture failed: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            log.warning("lcsm: CUDA graph capture of the step failed (%s); running the step without graphs",
                        self.reason)
            torch.cuda.synchronize()
            return
        self.graphs[key] = g
        self._outs[key] = outs

    @property
    def note(self) -> str:
        """One line: whether graphs replay, how many are captured, or why not."""
        if self.reason is not None:
            return f"CUDA graphs off: {self.reason}"
        return f"CUDA graphs: {len(self.graphs)} captured (one per red-cell row), {self.replays} replays"
