"""Incremental calls: the compiled model streams a user's own loop over a growing prefix.

``torch.compile(model, backend="lcsm")`` hands each dynamo graph to the backend. For a graph
whose length is symbolic (dynamo makes it so from the second length it sees) with one sequence
input of time dim 1, the backend wraps its exact full forward in an :class:`IncrementalRunner`:

* it keeps one stream per input signature (batch, feature shape, dtype, device);
* a call whose input extends the previous call's input of that signature (more positions,
  the first ones identical: checked exactly, one ``torch.equal`` over the kept prefix) runs
  only the new positions through a streaming session (:func:`lcsm_compile.session` of the
  graph, made on the first extending call and reused), one step each, and returns the
  outputs for ALL positions as views of growing buffers (no O(L) copy per call);
* every other call (shorter, a different prefix, another signature, a model that does not
  stream) runs the exact full forward and becomes the new prefix to extend;
* a stream past its session's ``max_len`` starts a session twice as long, prefilled from the
  kept input (amortized O(L log L)); ``options={"max_len": N}`` caps it: longer calls run
  the full forward;
* the weights are watched (the same tensors, their version counters and data pointers, read
  each call): a change drops every stream.

Memory per stream: the kept input (``max_len`` positions), one buffer per output
(``max_len`` positions: as large as the full forward's output at that length) and the
session's state (see ``docs/sessions.md``). Returned tensors are views of the buffers:
do not modify them in place (a later call would return the modified values); ``.clone()``
them first.
"""

from __future__ import annotations

import collections
import logging
import operator
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from .errors import SessionError
from .options import SESSION_OPTIONS

log = logging.getLogger("lcsm_compile")

__all__ = ["IncrementalRunner", "stream_plan"]

#: the smallest session a stream starts with (positions)
MIN_SESSION = 256
#: streams (input signatures) kept per graph
MAX_STREAMS = 4

_VERSION = operator.attrgetter("_version")
_DATA_PTR = torch.Tensor.data_ptr  # the unbound method: 2x cheaper than a method lookup per tensor


class _GraphModel(nn.Module):
    """An aot inference graph as a model of its sequence input alone: the other tensor
    arguments (parameters, buffers) are held by reference, SymInt arguments are read from
    the input's shape."""

    #: dynamo compiled the graph for one batch: capture it at that batch (capture_model)
    lcsm_static_batch = True

    def __init__(self, gm, args: List[Any], seq_index: int, slots: List[Tuple[str, Any]]):
        super().__init__()
        self.gm = gm
        self._slots = slots
        for kind, name_or_value in slots:
            if kind == "state":
                t = args[int(name_or_value[1:])]
                if isinstance(t, nn.Parameter):
                    self.register_parameter(name_or_value, t)
                else:
                    self.register_buffer(name_or_value, t, persistent=False)

    def forward(self, x):
        args = []
        for kind, v in self._slots:
            if kind == "x":
                args.append(x)
            elif kind == "sym":
                args.append(x.shape[v])
            elif kind == "stride":
                args.append(x.stride(v))
            elif kind == "state":
                args.append(getattr(self, v))
            else:
                args.append(v)
        return tuple(self.gm(*args))


def stream_plan(fake_args: List[Any], real_args: List[Any], seq: List[Tuple[int, int]]
                ) -> Tuple[Optional[List[Tuple[str, Any]]], str]:
    """How the graph's arguments follow from its sequence input: ``(slots, "")``, or
    ``(None, why the graph's calls cannot stream)``."""
    if len(seq) != 1:
        return None, (f"{len(seq)} sequence inputs" if seq else "no sequence input")
    i, tdim = seq[0]
    if tdim != 1:
        return None, f"the sequence input's time dim is {tdim} (streamed calls need [B, L, ...] inputs)"
    fx_ = fake_args[i]
    if not isinstance(fx_, torch.Tensor):
        return None, "the sequence input is not a tensor"
    tsize = fx_.shape[1]
    if not isinstance(tsize, torch.SymInt):
        return None, ("the graph was compiled for one length (dynamo makes the length dynamic from the "
                      "second length it sees; the calls of that graph stream)")
    dims = {}
    for d, s in enumerate(fx_.shape):
        if isinstance(s, torch.SymInt):
            dims.setdefault(s.node.expr, ("sym", d))
    for d, s in enumerate(fx_.stride()):  # a view of a longer tensor: its strides may be symbols
        if isinstance(s, torch.SymInt):
            dims.setdefault(s.node.expr, ("stride", d))
    slots: List[Tuple[str, Any]] = []
    for j, (f, r) in enumerate(zip(fake_args, real_args)):
        if j == i:
            slots.append(("x", None))
        elif isinstance(f, torch.SymInt):
            d = dims.get(f.node.expr)
            if d is None:
                return None, f"graph argument {j} is a size ({f}) that is not a size of the sequence input"
            slots.append(d)
        elif isinstance(f, torch.Tensor):
            if any(isinstance(s, torch.SymInt) for s in f.shape):
                return None, f"graph argument {j} is another tensor whose size depends on the length"
            slots.append(("state", f"a{j}"))
        else:
            slots.append(("const", r))
    return slots, ""


class _Stream:
    """One input signature's stream: the kept input, the session, the output buffers."""

    __slots__ = ("x", "n", "session", "bufs", "tdims", "last")

    def __init__(self):
        self.x: Optional[torch.Tensor] = None      # [B, cap, ...]: the kept input
        self.n = 0                                 # positions the buffers hold
        self.session = None                        # None: the next extending call makes one
        self.bufs: Optional[List[Optional[torch.Tensor]]] = None
        self.tdims: List[Optional[int]] = []
        self.last: Optional[List[Any]] = None      # outputs without a time dim (latest values)

    def keep(self, x: torch.Tensor, cap: int) -> None:
        if self.x is None or self.x.shape[1] < cap or self.x.shape[0] != x.shape[0]:
            self.x = torch.empty((x.shape[0], cap) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
        self.x[:, : x.shape[1]].copy_(x)


def _capacity(L: int, cap_max: Optional[int]) -> int:
    c = MIN_SESSION
    while c < 2 * L:
        c *= 2
    return c if cap_max is None else min(c, int(cap_max))


class IncrementalRunner:
    """The backend's runner of a streamable graph (module doc). ``full(*args)`` is the graph's
    exact full forward; ``report`` the graph's :class:`~lcsm_compile.report.GraphReport`,
    whose ``streaming`` says what the calls do."""

    def __init__(self, full: Callable, gm, real_args: List[Any], seq_index: int,
                 slots: List[Tuple[str, Any]], options: Dict[str, Any], report):
        self.full = full
        self.i = seq_index
        self.report = report
        self.cap_max = options.get("max_len")
        self.session_options = {k: options[k] for k in SESSION_OPTIONS if k in options and k != "debug_dir"}
        # a stream's sessions are remade as it grows: compiling each one's step would stall the
        # user's loop for seconds at every growth, so streams compile only when asked to
        self.session_options.setdefault("compile_step", False)
        self._gm, self._slots = gm, slots
        self._state_idx = [j for j, (k, _) in enumerate(slots) if k == "state"]
        idx = self._state_idx
        #: the weights among a call's arguments, as a tuple (one C-level call)
        self._state_of: Callable[[tuple], tuple] = (
            operator.itemgetter(*idx) if len(idx) > 1 else
            (lambda a, _i=idx[0]: (a[_i],)) if idx else (lambda a: ()))
        self._model: Optional[_GraphModel] = None
        self._model_args: Optional[List[Any]] = None
        #: the weights the streams were made with: the tensors, their versions and data pointers
        self._fp: Optional[Tuple[tuple, tuple, tuple]] = None
        self.streams: "collections.OrderedDict[tuple, _Stream]" = collections.OrderedDict()
        self.disabled: Optional[str] = None
        #: the model's longest length, once a session found one (calls past it run in full)
        self.max_supported: Optional[int] = None
        #: counts of what the calls did: "full" forwards, "steps" streamed, sessions "made"
        self.stats = {"full": 0, "steps": 0, "made": 0, "grown": 0}
        report.calls = self.stats

    # ------------------------------------------------------------------ helpers
    def _same_weights(self, state: tuple) -> bool:
        """Whether the weights are the ones the streams were made with, unchanged: the same
        tensors (identity), the same version counters (an in-place change bumps them) and the
        same data pointers (``p.data = t`` keeps the version). C-level loops: for the 105
        weights of a 4 x 256 Hyena LM 20 us in a hot loop (the former ``(id, version)`` tuple:
        54 us); between steps, with the tensors out of cache, 35-100 us either way (measured
        on the shared 2-core CI machine)."""
        fp = self._fp
        return (fp is not None and all(map(operator.is_, state, fp[0]))
                and tuple(map(_VERSION, state)) == fp[1] and tuple(map(_DATA_PTR, state)) == fp[2])

    def _disable(self, why: str) -> None:
        self.disabled = why
        self.streams.clear()
        self.report.streaming = f"calls do not stream: {why}"
        log.warning("lcsm backend: calls of this graph do not stream: %s", why)

    def _full(self, args, x: Optional[torch.Tensor] = None, st: Optional[_Stream] = None):
        self.stats["full"] += 1
        out = self.full(*args)
        if st is not None and x is not None:  # the new prefix to extend
            st.keep(x, x.shape[1])
            st.n, st.bufs = x.shape[1], None
        return out

    def _new_session(self, x: torch.Tensor, cap: int):
        from .api import session as make_session

        if self._model is None:
            self._model = _GraphModel(self._gm, self._model_args, self.i, self._slots)
        self.stats["made"] += 1
        try:
            return make_session(self._model, example=x[:, :2], max_len=cap, **self.session_options)
        except SessionError as e:  # longer than the model supports: its own longest length
            hi = e.max_supported
            if hi is None or hi < x.shape[1] or hi >= cap:
                raise
            self.max_supported = hi
            return make_session(self._model, example=x[:, :2], max_len=hi, **self.session_options)

    def _start(self, st: _Stream, x: torch.Tensor, L: int):
        """(Re)start ``st`` at ``x`` (its prefill gives the outputs of all L positions)."""
        cap = _capacity(L, self.cap_max)
        if L > cap or (self.max_supported is not None and L > self.max_supported):
            return None  # past the max_len option / the model's longest length: full forwards
        if self.max_supported is not None:
            cap = min(cap, self.max_supported)
        if st.session is None or st.session.max_len < L:
            st.session = None  # drop the old state before making the new one
            st.session = self._new_session(x, cap)
        else:
            st.session.reset()
        outs = list(st.session.prefill(x))
        st.tdims = st.session._output_time_dims(len(outs))
        cap = st.session.max_len
        st.bufs, st.last = [], []
        for o, td in zip(outs, st.tdims):
            if isinstance(o, torch.Tensor) and td is not None and o.dim() > td:
                shape = list(o.shape)
                shape[td] = cap
                b = torch.empty(shape, dtype=o.dtype, device=o.device)
                b.narrow(td, 0, L).copy_(o)
                st.bufs.append(b)
                st.last.append(None)
            else:
                st.bufs.append(None)
                st.last.append(o)
        st.keep(x, cap)
        st.n = L
        return self._views(st)

    def _views(self, st: _Stream) -> List[Any]:
        return [b.narrow(td, 0, st.n) if b is not None else v
                for b, td, v in zip(st.bufs, st.tdims, st.last)]

    # ------------------------------------------------------------------ call
    def __call__(self, *args):
        x = args[self.i]
        if self.disabled is not None or not isinstance(x, torch.Tensor) or x.dim() < 2:
            return self.full(*args)
        state = self._state_of(args)
        if not self._same_weights(state):  # first call, or the weights changed: start over
            self.streams.clear()
            self._model = None
            self._fp = (state, tuple(map(_VERSION, state)), tuple(map(_DATA_PTR, state)))
            self._model_args = [None if j == self.i else a for j, a in enumerate(args)]
        key = (x.shape[0], x.shape[2:], x.dtype, x.device)
        st = self.streams.get(key)
        L = x.shape[1]
        if st is None:
            st = self.streams[key] = _Stream()
            while len(self.streams) > MAX_STREAMS:
                self.streams.popitem(last=False)
            return self._full(args, x, st)
        self.streams.move_to_end(key)
        n = st.n
        # the prefix check: exact, one memory compare of the kept positions (a loop that
        # extends its ids by torch.cat passes a new tensor every call: nothing short of a
        # compare can tell its first positions are the same)
        if L < n or L == 0 or st.x is None or (st.bufs is None and L == n) or \
                not torch.equal(x.narrow(1, 0, n), st.x.narrow(1, 0, n)):
            return self._full(args, x, st)  # not an extension (a repeat starts no session)
        try:
            if st.bufs is None or L > st.session.max_len:  # a new prefix, or past the session
                if st.bufs is not None:
                    self.stats["grown"] += 1
                out = self._start(st, x, L)
                if out is None:  # past the max_len option
                    return self._full(args, x, st)
                return out
            if L == n:
                return self._views(st)
            sess, bufs, tdims = st.session, st.bufs, st.tdims
            st.x.narrow(1, n, L - n).copy_(x.narrow(1, n, L - n))
            for t in range(n, L):
                # a compact copy of the position: a [1, 1] slice keeps the row stride of x (and
                # counts as contiguous), which a compiled step program would guard on, one
                # recompile per length
                outs = sess.step(x.narrow(1, t, 1).clone(memory_format=torch.contiguous_format))
                for j, o in enumerate(outs):
                    b = bufs[j]
                    if b is not None:
                        b.narrow(tdims[j], t, 1).copy_(o)
                    else:
                        st.last[j] = o
                self.stats["steps"] += 1
                st.n = t + 1
            return self._views(st)
        except Exception as e:  # noqa: BLE001 - never wrong: the full forward from now on
            self._disable(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            return self.full(*args)
