"""Trace a model once at the ATen level on fake tensors.

The forward runs under ``FakeTensorMode`` (parameters and buffers are swapped for fake tensors
for the duration; no weight or activation memory is touched, and models whose
parameters live on the meta device work too) with a ``TorchDispatchMode`` recorder above it that
sees every ATen op after autograd and composite decomposition. Temporary forward hooks attribute
each op to the innermost module that ran it. The model is left exactly as it was: training flags,
hooks and parameters are restored even when the forward fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import operator
import re
import sys
import threading
import types
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch._ops import HigherOrderOperator
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, _pop_mode_temporarily

from ..errors import (
    ExampleInputsWarning,
    InternalError,
    InvalidArgumentError,
    TraceError,
    user_stacklevel,
)
from ..gcpause import paused_gc
from ..progress import OFF, Progress
from ..torch_range import release
from . import repeats as _repeats
from . import source
from .decisions import (
    DATA_DEPENDENT,
    Decision,
    decides,
    replayed,
    result_copy,
    snapshot,
    without_data,
)
from .frame_stack import call_in_fresh_chunk
from .method_caches import clear_method_caches
from .op_numbers import constant_value, op_numbers
from .output_leaves import output_leaves
from .real_budget import ALLOWANCE, ALLOWANCE_PER_OP, op_work
from .records import Node, Ref, Refs, Replay, Value, result_leaves  # noqa: F401  (Ref: for the rules)
from .repeats import CHECK as CHECK_REPEATS
from .repeats import Repeater, Repeats, RepeatsInvalid, differences
from .shape_repeats import ShapeRepeater, ShapeReplays
from .shape_repeats import differences as shape_differences
from .size_watch import (
    PASS_THROUGH_FORWARDS,
    CodeSaw,
    SizeInt,
    SizeLeaf,
    SizeWatch,
    leaves,
    reads_values,
)
from .standin import _IS_META, FUSED_PATH_MODULES, META, MetaResults, StandIn, on_meta
from .traceable import traceable_paths
from .walk import ModelWalk


@dataclass(frozen=True)
class FailedOp:
    """Where a trace failed: the op's index, name, non-tensor arguments, input shapes, module,
    and how many times that op had run in that module before."""

    index: int
    op: str
    args: tuple
    input_shapes: list
    module: str
    occurrence: int


@dataclass
class OpGraph:
    values: list[Value] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    params: dict[str, int] = field(default_factory=dict)  # canonical param name -> value
    buffers: dict[str, int] = field(default_factory=dict)  # canonical buffer name -> value
    aliases: dict[str, str] = field(default_factory=dict)  # tied name -> canonical name
    # Every module call in order: (module name, value indices of its tensor outputs). Unlike
    # the ATen op sequence, which may branch on shapes, this sequence is the model's own.
    module_calls: list[tuple[str, list[int]]] = field(default_factory=list)
    real: bool = False  # traced on real tensors (data-dependent shapes), not fake ones
    mode: str = "fake"  # a TraceMode: "real", "meta" or "fake"
    # What the model's code read of sizes and values, and the ops of calls it passed integers
    # to (size_watch.py): what a plan must leave alone to need no second trace.
    code_saw: CodeSaw | None = None
    # Tensors the forward stored as plain module attributes (a hook-computed weight):
    # qualified name -> value index. The model gets its own tensors back after the trace.
    attribute_tensors: dict[str, int] = field(default_factory=dict)
    # Where each of ``outputs`` is in what the model returned: its key path
    # (``torch.utils._pytree.keystr``: ``[0]``, ``['logits']``).
    output_paths: list[str] = field(default_factory=list)
    # Calls whose results the data decided (a real trace's nonzero, NMS, .item() ...), with the
    # inputs that decided: a trace of the pruned shapes replays them (decisions.py).
    decisions: list[Decision] = field(default_factory=list)
    # A real trace was tried first and ran past its budget of work: so would one of the plan's
    # shapes, and its checks skip it (see ``trace``'s ``real_over_budget``).
    real_over_budget: bool = False
    # The values of the small constants the ops read (tensors made outside the traced ops,
    # ``tensor(128)``): value index -> ``op_numbers.constant_value``.
    constants: dict[int, tuple] = field(default_factory=dict)
    # [start, stop) of the nodes of each higher-order op's eager implementation (torch's
    # code, which reads no tensor value: see _RecorderBase._higher_order)
    higher_order_spans: list[tuple[int, int]] = field(default_factory=list)
    # Module calls whose ops were taken from an earlier call of a module like it (repeats.py),
    # and what each was renamed from: the rules map them as they mapped the first call.
    replayed: int = 0
    replays: list[Replay] = field(default_factory=list)
    # the qualified names of the modules whose calls were replayed (a shape trace replays
    # theirs: shape_repeats.py)
    replayed_modules: frozenset[str] = frozenset()
    # (value, dim) of each size the model returns as a number (``return y, h.shape[1]``), as
    # the code took it from a traced tensor: an output like its tensors, kept.
    output_sizes: list[tuple[int, int]] = field(default_factory=list)
    # (path, value) of every integer the model returns: a trace of a plan must return them
    # too (a number computed from a size the plan prunes, ``int(h.shape[1])``, would not).
    output_numbers: list[tuple[str, int]] = field(default_factory=list)
    # The module calls the trace saw run (not a replayed layer's inner ones), in the order
    # they returned: (module name, which of its calls, counted from 0, how many ops were
    # recorded when it started, and when it returned); a plan's shape trace may stop after
    # one (:class:`TraceStop`).
    call_spans: list[tuple[str, int, int, int]] = field(default_factory=list)

    def module_label(self, module: str) -> str:
        return module if module else "<root>"


@dataclass
class ShapeTrace:
    """What checking a plan needs of a trace: every op with its module and the shapes of its
    results, the shapes every module call returns and the shapes of the model's outputs. No
    arguments and no value graph: recording costs about half of a full trace's."""

    ops: list[tuple[Any, str, list[tuple]]] = field(default_factory=list)  # op, module, shapes
    module_calls: list[tuple[str, list[tuple]]] = field(default_factory=list)
    outputs: list[tuple] = field(default_factory=list)
    real: bool = False
    mode: str = "fake"
    # Ops that failed and went on with what a ``guide`` gave (see trace_as), with their
    # errors, in order.
    recovered: list[tuple[FailedOp, str]] = field(default_factory=list)
    # The numbers ops computed with (``op_numbers``): op index -> its numbers, where any.
    numbers: dict[int, tuple] = field(default_factory=dict)
    output_numbers: list[tuple[str, int]] = field(default_factory=list)  # (see OpGraph's)
    replayed: int = 0  # module calls whose records were taken from an earlier one's
    # The call after which the trace stopped (a TraceStop's), or None: it ran whole
    stopped_after: tuple[str, int] | None = None


@dataclass
class TraceStop:
    """Where a plan's shape trace may stop: after the module call ``after`` ((module name,
    which of its calls)), where the calls ``closed`` each returned tensors only (or None)
    and left the attributes of their modules, and the plain objects those hold, as they
    were: what their code computed from sizes stays inside them. Where one did not, the
    trace runs whole (``broken``)."""

    after: tuple[str, int]
    closed: frozenset[tuple[str, int]]
    broken: bool = False


class _StopTrace(BaseException):
    """Raised where a shape trace stops (a BaseException: a model's ``except Exception``
    does not take it for its own)."""


def normalize_inputs(example_inputs) -> tuple[tuple, dict]:
    """A tensor or a named tuple (one input: a PackedSequence), a tuple/list of positional
    inputs, a mapping of keyword inputs (a dict, or what a tokenizer or processor returns:
    transformers' BatchEncoding and BatchFeature are mappings, not dicts), or one object
    holding tensors (torch_geometric's Data: ``model(data)``)."""
    if isinstance(example_inputs, torch.Tensor) or hasattr(type(example_inputs), "_fields"):
        return (example_inputs,), {}  # (a named tuple is one value: a PackedSequence)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    if isinstance(example_inputs, Mapping):
        keywords = dict(example_inputs)
        named = [k for k in keywords if not isinstance(k, str)]
        if named:
            raise InvalidArgumentError(
                "example_inputs as a mapping are keyword inputs, whose names are strings, "
                f"not {named[0]!r}"
            )
        return (), keywords
    if _object_holds_tensors(example_inputs):
        return (example_inputs,), {}  # (an object holding tensors: a graph's Data, a batch)
    raise InvalidArgumentError(
        "example_inputs must be a tensor, a tuple/list of positional inputs, a mapping (a "
        "dict, a tokenizer's output) of keyword inputs or one object holding tensors, not "
        f"{type(example_inputs).__name__}"
    )


def _packing_hint(exc: Exception, args: tuple, kwargs: dict, stack: list[str]) -> str:
    """How to give a dict or a tuple as the one input it is, where the model's own forward
    refused the example inputs unpacked as keywords or as positional inputs."""
    if not isinstance(exc, TypeError) or any(stack):  # (the root's call, not a module's)
        return ""
    text = str(exc)
    if kwargs and "unexpected keyword argument" in text:
        return (
            " (a mapping given as example_inputs is keyword inputs; to give the model one dict "
            "as its one input, pass (inputs,))"
        )
    if len(args) > 1 and "positional argument" in text:
        return (
            " (a tuple or list given as example_inputs is positional inputs; to give the model "
            "one list or tuple as its one input, pass (inputs,))"
        )
    return ""


def _object_holds_tensors(obj, depth: int = 0) -> bool:
    """Whether ``obj`` (no module) holds a tensor: in its attributes, or in the mappings,
    lists and tuples among them, a few levels down."""
    if isinstance(obj, torch.Tensor):
        return True
    if depth > 3 or isinstance(obj, (str, bytes, int, float, complex, torch.nn.Module)):
        return False
    if isinstance(obj, Mapping):
        return any(_object_holds_tensors(v, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return any(_object_holds_tensors(v, depth + 1) for v in obj)
    attributes = getattr(obj, "__dict__", None)
    return type(attributes) is dict and any(
        _object_holds_tensors(v, depth + 1) for v in attributes.values()
    )


class _EagerMode(TorchDispatchMode):
    """A dispatch mode whose ``__torch_dispatch__`` is called as it is: torch otherwise wraps it
    so that ``torch.compile`` skips it, a wrapper that cost a third of the recording time
    (the traces here are eager)."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False


_WRITES: dict = {}  # op -> (position, name) of each argument it writes in place


def written_tensors(func, args, kwargs, kind=torch.Tensor):
    """The tensors ``func`` writes in place (its schema's mutable arguments, out= included);
    ``kind``: what stands for a tensor in ``args`` (a recorded node's are Refs)."""
    spec = _WRITES.get(func)
    if spec is None:
        schema = getattr(func, "_schema", None)
        arguments = schema.arguments if schema is not None else ()
        spec = _WRITES[func] = tuple(
            (i, a.name)
            for i, a in enumerate(arguments)
            if a.alias_info is not None and a.alias_info.is_write
        )
    for i, name in spec:
        x = args[i] if i < len(args) else kwargs.get(name)
        if isinstance(x, kind):
            yield x
        elif isinstance(x, (list, tuple)):
            yield from (t for t in x if isinstance(t, kind))


class SavedParameters:
    """The parameters' memory where the ops run write in place (an embedding's ``max_norm``
    renormalising the rows it looks up): each storage saved whole before its first write
    (``before(func, args, kwargs)``; whole, so every view of it is covered) and put back by
    ``restore()``: what runs on the model's own memory leaves it as it was."""

    def __init__(self, params) -> None:
        self.protected = {
            s.data_ptr(): s for s in (p.untyped_storage() for p in params if p.numel())
        }
        self.saved: dict[int, tuple[torch.UntypedStorage, torch.UntypedStorage]] = {}

    def before(self, func, args, kwargs) -> None:
        if not _WRITES.get(func, True):  # (an op known to write nothing)
            return
        for t in written_tensors(func, args, kwargs):
            address = t.untyped_storage().data_ptr()
            storage = self.protected.get(address)
            if storage is not None and address not in self.saved:
                self.saved[address] = (storage, storage.clone())

    def restore(self) -> None:
        for storage, copy in self.saved.values():
            storage.copy_(copy)
        self.saved.clear()


_NATIVE_MHA = torch.ops.aten._native_multi_head_attention.default
_NEED_WEIGHTS = 10  # need_weights' position in its schema


def _as_device_kernels_return(func, args, kwargs, out):
    """``out`` as the CPU and CUDA kernels return it where a meta kernel differs:
    nn.MultiheadAttention's fused op not asked for weights gives none (None to Python) there,
    and an empty tensor on meta and fake tensors, which the module would return (a trace
    would see the module return one more tensor than the model does)."""
    if func is not _NATIVE_MHA or type(out) is not tuple or out[1] is None:
        return out
    need = kwargs.get("need_weights", args[_NEED_WEIGHTS] if len(args) > _NEED_WEIGHTS else True)
    return out if need else (out[0], None)


class _RecorderBase(_EagerMode):
    """What both recorders share: the module stack, the work budget of a real trace, and the
    record of a failing op."""

    supports_higher_order_operators = True

    def _higher_order(self, func, args, kwargs):
        """A higher-order op (flex_attention) as the ATen ops of its eager implementation,
        recorded one by one, so that the rules see what it computes."""
        dense = _dense_higher_order(func)
        if dense is None:
            raise NotImplementedError(
                f"There was no rule registered for HigherOrderOperator {func.name()} and mode "
                f"{self}"
            )
        start = self.recorded_count()
        with self:
            out = dense(*args, **kwargs)
        if isinstance(self.graph, OpGraph):
            self.graph.higher_order_spans.append((start, self.recorded_count()))
        return out

    def __init__(self, graph, module_stack: list[str]) -> None:
        super().__init__()
        self.graph = graph
        self.module_stack = module_stack
        self.failed_at: FailedOp | None = None
        # Real tracing only: the nominal seconds of work left before the trace gives up, and
        # what each op adds to them (real_budget.py; None: no budget).
        self.work_left: float | None = None
        self.budget_per_op = 0.0
        self.work_done = 0.0  # (nominal seconds of the real ops run so far: repeats.py)
        self.aborted = False
        # Meta tracing: tensors from outside the trace are put on meta, factories build there;
        # ``meta_results`` remembers the results of meta kernels (set for a meta trace).
        self.meta = False
        self.meta_results: MetaResults | None = None
        self._meta_of: dict[int, torch.Tensor] = {}
        # Fake runs (a fake trace, a meta trace's device-sensitive calls): the device the
        # trace runs as. Tensors the model's code makes or moves elsewhere (``x.cuda()``, a
        # ``zeros(..., device="cuda")``, a constant kept on a GPU) are made there instead.
        self.stand_in: torch.device | None = None
        self._stand_in_of: dict[int, torch.Tensor] = {}
        # Shape traces: what stands for a failing op, so that the forward goes on (trace_as).
        self.guide = None
        self.stood_in = False  # the last op's results are a stand-in's
        # Real traces: the data's decisions are recorded (a graph's), or replayed (the
        # original's, by op, module and occurrence, in a trace of the pruned shapes).
        self.decisions: list[Decision] | None = None
        self.replay: dict | None = None
        self._occurrences: dict = {}
        self.failed_by_data = False  # the failing op is a decision of the data
        # Real traces run on the parameters' own memory: what an op writes into one is put
        # back when the trace ends (tracing never changes the model).
        self.parameters: SavedParameters | None = None
        # A replayed module runs its real ops unrecorded (repeats.py): no module call is noted
        self.suspended = False

    def _recorded(self) -> list[tuple[Any, str]]:
        """(op, module) of every op recorded so far."""
        raise NotImplementedError

    def recorded_count(self) -> int:
        """How many ops were recorded so far."""
        return len(self.graph.nodes if isinstance(self.graph, OpGraph) else self.graph.ops)

    def _run(self, func, args, kwargs) -> tuple[Any, list[torch.Tensor] | tuple | None]:
        """Run the op: what it returned and its tensor results (None: it has none). A failing
        op is described in ``failed_at`` before re-raising."""
        if self.work_left is not None and self.work_left < 0:
            self.aborted = True
            raise _OverBudget  # real ops cost more than fake ones would: trace on fake tensors
        pending = original = None
        if self.decisions is not None or self.replay is not None:
            args, kwargs, pending, original = self._decision(func, args, kwargs)
        try:
            if self.meta:
                args, kwargs = self._on_meta(func, args, kwargs)
                replay = original and without_data(args, kwargs, original, META)
                if replay and replay[0] == "result":
                    out = replay[1]
                else:
                    if replay:
                        args, kwargs = replay[1]
                    out = self.meta_results.run(func, args, kwargs)
            else:
                if self.stand_in is not None:
                    args, kwargs = self._on_stand_in(func, args, kwargs)
                if self.parameters is not None:
                    self.parameters.before(func, args, kwargs)
                out = func(*args, **kwargs)
            out = _as_device_kernels_return(func, args, kwargs, out)
        except Exception as exc:
            module = self.module_stack[-1] if self.module_stack else ""
            done = self._recorded()
            occurrence = sum(1 for op, m in done if m == module and op is func)
            self.failed_at = _failed_op(len(done), func, args, kwargs, module, occurrence)
            # (a size the data decides; the value of an .item() a fake tensor may know, when
            # it is of a constant)
            self.failed_by_data = decides(func, args, kwargs, ("sizes",))
            stand_ins = None
            if self.guide is not None and not self.failed_by_data:
                if not isinstance(exc, DATA_DEPENDENT):
                    stand_ins = self.guide.failed(self.failed_at, func, args, kwargs)
            if not stand_ins or len(stand_ins) != 1:
                raise
            out = stand_ins[0][1]
            self.graph.recovered.append((self.failed_at, f"{type(exc).__name__}: {exc}"))
            self.failed_at, self.stood_in = None, True
        if isinstance(out, torch.Tensor):
            leaves = (out,)
        else:
            leaves = [t for t in result_leaves(out) if isinstance(t, torch.Tensor)]
        if pending is not None:
            node = self.recorded_count() if leaves else None
            *fields, line, values = pending
            self.decisions.append(
                Decision(
                    *fields, result=result_copy(func, out), node=node, line=line, values=values
                )
            )
        if self.work_left is not None:  # (an op with tensor results stands for a fake one)
            work = op_work(func, args, leaves or ())
            self.work_done += work
            self.work_left += (self.budget_per_op if leaves else 0.0) - work
        if not leaves:
            return out, None
        return out, leaves

    def _decision(self, func, args, kwargs):
        """For a call the data decides: its arguments (on real tensors, with the original's
        deciding inputs replayed), what to record of it, and the original's decision to replay
        (None for any other call)."""
        if not decides(func, args, kwargs):
            return args, kwargs, None, None
        module = self.module_stack[-1] if self.module_stack else ""
        line = source.here()
        occurrence = self._occurrences.get((func, module, line), 0)
        self._occurrences[(func, module, line)] = occurrence + 1
        original = None
        if self.replay is not None:
            original = self.replay.get((func, module, line, occurrence))
            if original is not None and not self.meta:
                args, kwargs = replayed(args, kwargs, original)
        if self.decisions is None:
            return args, kwargs, None, original
        *snap, values = snapshot(func, args, kwargs, self.value_index)
        return args, kwargs, (func, module, occurrence, *snap, line, values), original

    def _on_meta(self, func, args, kwargs):
        """Arguments with every tensor on meta, and a factory's device meta."""
        args = tuple([self._meta_arg(a) for a in args])
        if kwargs:
            kwargs = {k: self._meta_arg(v) for k, v in kwargs.items()}
        if _takes_device(func):
            kwargs = dict(kwargs, device=META)
        return args, kwargs

    def _on_stand_in(self, func, args, kwargs):
        """Arguments of a fake run with every tensor on the stand-in device, and a factory's or
        a copy's device that one."""
        if _takes_device(func):
            device = kwargs.get("device")
            if device is not None and torch.device(device).type != self.stand_in.type:
                kwargs = dict(kwargs, device=self.stand_in)
        if any(_foreign(a, self.stand_in) for a in args) or any(
            _foreign(v, self.stand_in) for v in kwargs.values()
        ):
            args = tuple([self._stand_in_arg(a) for a in args])
            kwargs = {k: self._stand_in_arg(v) for k, v in kwargs.items()}
        return args, kwargs

    def _stand_in_arg(self, x):
        if isinstance(x, torch.Tensor):
            if x.device.type == self.stand_in.type:
                return x
            s = self._stand_in_of.get(id(x))
            if s is None:  # (the fake mode below the recorder makes it)
                s = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=self.stand_in)
                self._stand_in_of[id(x)] = s
                self.alias(s, x)
            return s
        if type(x) is list or type(x) is tuple:
            return type(x)([self._stand_in_arg(item) for item in x])
        return x

    def _meta_arg(self, x):
        if isinstance(x, torch.Tensor):
            if _IS_META(x):
                return x
            m = self._meta_of.get(id(x))
            if m is None:
                m = self._meta_of[id(x)] = on_meta(x)
                self.keep(x)
            return m
        if type(x) is list or type(x) is tuple:
            try:
                if all(map(_IS_META, x)):  # (a stack's meta tensors: one C-level pass)
                    return type(x)(x)
            except TypeError:  # (the getter's, on what is no tensor)
                pass
            return type(x)([self._meta_arg(item) for item in x])
        return x

    def keep(self, t: torch.Tensor) -> None:
        """Keep ``t`` alive for the trace (ids must stay unique)."""
        raise NotImplementedError

    def alias(self, t: torch.Tensor, original: torch.Tensor) -> None:
        """``t`` stands for ``original`` from now on (a meta tensor's fake copy, and back)."""
        raise NotImplementedError


class _Recorder(_RecorderBase):
    def __init__(self, graph: OpGraph, module_stack: list[str]) -> None:
        super().__init__(graph, module_stack)
        self.value_of: dict[int, int] = {}
        self.refs = Refs()
        self.keep_alive: list[torch.Tensor] = []  # ids must stay unique while tracing

    def _recorded(self) -> list[tuple[Any, str]]:
        return [(n.op, n.module) for n in self.graph.nodes]

    def add_value(self, t: torch.Tensor, kind: str, name: str | None = None, producer=None) -> int:
        index = len(self.graph.values)
        self.graph.values.append(Value(index, tuple(t.shape), t.dtype, kind, name, producer))
        self.value_of[id(t)] = index
        self.keep_alive.append(t)
        return index

    def value_index(self, t: torch.Tensor) -> int | None:
        """The value ``t`` is, if the trace knows it."""
        return self.value_of.get(id(t))

    def lookup(self, t: torch.Tensor) -> int:
        index = self.value_of.get(id(t))
        if index is None:
            index = self.add_value(t, "constant")
            value = constant_value(t)
            if value is not None:
                self.graph.constants[index] = value
        return index

    def keep(self, t: torch.Tensor) -> None:
        self.keep_alive.append(t)

    def alias(self, t: torch.Tensor, original: torch.Tensor) -> None:
        self.value_of[id(t)] = self.lookup(original)
        self.keep_alive.append(t)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if isinstance(func, HigherOrderOperator):
            return self._higher_order(func, args, kwargs)
        out, out_leaves = self._run(func, args, kwargs)
        if out_leaves is None:
            return out
        inputs: list[int] = []
        ref_args = self._refs(args, inputs)
        ref_kwargs = {k: self._refs(v, inputs) for k, v in kwargs.items()} if kwargs else {}
        node_index = len(self.graph.nodes)
        outputs = []
        values = self.graph.values
        for t in out_leaves:
            known = self.value_of.get(id(t))
            if known is not None and known in inputs and values[known].shape == tuple(t.shape):
                outputs.append(known)  # in-place / out= result: the same tensor, same indices
            else:
                outputs.append(self.add_value(t, "op", producer=node_index))
        module = self.module_stack[-1] if self.module_stack else ""
        self.graph.nodes.append(
            Node(node_index, func, ref_args, ref_kwargs, inputs, outputs, module, source.here())
        )
        return out

    def module_outputs(self, output) -> list[int]:
        """The tensors a module call returned (their value indices). One no op made (a
        memoised result, such as transformers' lru-cached position embeddings, computed by
        an earlier trace or forward) is a constant: whether a call recomputes it or not, both
        traces of the model report the same outputs."""
        return [self.lookup(t) for t in pytree.tree_leaves(output) if isinstance(t, torch.Tensor)]

    def model_output(self, t: torch.Tensor) -> None:
        self.graph.outputs.append(self.lookup(t))

    def _refs(self, x, inputs: list[int]):
        """``x`` with every tensor replaced by its :class:`Ref` (appended to ``inputs``);
        lists, tuples and dicts are walked (what ATen arguments hold)."""
        if isinstance(x, torch.Tensor):
            ref = self.lookup(x)
            inputs.append(ref)
            return self.refs[ref]
        kind = type(x)
        if kind is list or kind is tuple:
            if x and all(map(isinstance, x, _TENSOR_TYPES)):  # (a cat's or stack's: one pass)
                indices = list(map(self.value_of.get, map(id, x)))
                if None in indices:  # (constants among them)
                    indices = [self.lookup(t) for t in x]
                inputs.extend(indices)
                return kind(map(self.refs.__getitem__, indices))
            return kind([self._refs(item, inputs) for item in x])
        if kind is dict:
            return {k: self._refs(v, inputs) for k, v in x.items()}
        return x


# (``all(map(isinstance, items, _TENSOR_TYPES))``: whether every item is a tensor, in C)
_TENSOR_TYPES = itertools.repeat(torch.Tensor)


def _failed_op(index: int, func, args, kwargs, module: str, occurrence: int) -> FailedOp:
    """The index the op would have had, its name, its non-tensor arguments, its input shapes."""
    plain = pytree.tree_map(lambda x: None if isinstance(x, torch.Tensor) else x, args)
    shapes = [
        tuple(t.shape) for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
    ]
    return FailedOp(index, str(func), plain, shapes, module, occurrence)


class _ShapeRecorder(_RecorderBase):
    """Records a :class:`ShapeTrace`: the ops and their result shapes, nothing else."""

    def __init__(self, graph: ShapeTrace, module_stack: list[str]) -> None:
        super().__init__(graph, module_stack)
        # Tensors a full trace would know (inputs, parameters, buffers, op arguments and
        # results), kept alive so that ids stay unique: module calls report the same ones.
        self.known: dict[int, torch.Tensor] = {}

    def _recorded(self) -> list[tuple[Any, str]]:
        return [(op, module) for op, module, _ in self.graph.ops]

    def add_value(self, t: torch.Tensor, kind: str, name: str | None = None) -> None:
        self.known[id(t)] = t

    def keep(self, t: torch.Tensor) -> None:
        self.known.setdefault(id(t), t)

    def alias(self, t: torch.Tensor, original: torch.Tensor) -> None:
        self.known[id(t)] = t

    def module_outputs(self, output) -> list[tuple]:
        return [tuple(t.shape) for t in pytree.tree_leaves(output) if isinstance(t, torch.Tensor)]

    def model_output(self, t: torch.Tensor) -> None:
        self.graph.outputs.append(tuple(t.shape))

    def _constant(self, x):
        """The values of a small tensor the trace meets for the first time (a constant, as a
        graph trace would record it), else None."""
        if isinstance(x, torch.Tensor) and id(x) not in self.known:
            return constant_value(x)
        return None

    def _note(self, items) -> None:
        known = self.known
        if len(items) > 8 and all(map(isinstance, items, _TENSOR_TYPES)):  # (a stack's: one pass)
            known.update(zip(map(id, items), items))
            return
        for x in items:  # ATen arguments: tensors, and lists of them (one level, mostly)
            if isinstance(x, torch.Tensor):
                known[id(x)] = x
            elif type(x) is list or type(x) is tuple:
                self._note(x)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if isinstance(func, HigherOrderOperator):
            return self._higher_order(func, args, kwargs)
        # (before the op runs: on meta, running it keeps its arguments, constants too, known)
        numbers = op_numbers(func, args, kwargs, self._constant)
        out, out_leaves = self._run(func, args, kwargs)
        if out_leaves is None:
            return out
        module = self.module_stack[-1] if self.module_stack else ""
        if numbers:
            self.graph.numbers[len(self.graph.ops)] = numbers
        self._note(args)
        if kwargs:
            self._note(list(kwargs.values()))
        shapes = [tuple(t.shape) for t in out_leaves]
        if self.guide is not None and not self.stood_in:
            planned = self.guide.ran(len(self.graph.ops), func, module, shapes, out)
            if planned is not None:  # results of other shapes than planned: the planned ones
                out = planned
                out_leaves = [t for t in result_leaves(out) if isinstance(t, torch.Tensor)]
                shapes = [tuple(t.shape) for t in out_leaves]
        self.stood_in = False
        known = self.known
        for t in out_leaves:
            known[id(t)] = t
        self.graph.ops.append((func, module, shapes))
        return out


class _GuidedCalls(TorchFunctionMode):
    """A shape trace's ``guide`` for torch functions that fail before any of their ops ran
    (a composite such as reshape checks its sizes first): the ops it gives are recorded in
    their place, and the last one's results returned."""

    def __init__(self, recorder: _ShapeRecorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        recorder = self.recorder
        done, failed_op = recorder.recorded_count(), recorder.failed_at
        try:
            out = func(*args, **kwargs)
            if recorder.guide.events and reads_values(func, args, out):
                # Past a stand-in the data is not the model's: what the code reads of it
                # (tokens per expert) may steer it anywhere; the failures found so far stand.
                recorder.guide.lost = True
            return out
        except Exception as exc:
            if (
                isinstance(exc, (_OverBudget, *DATA_DEPENDENT))
                or recorder.aborted
                or recorder.recorded_count() != done
                or recorder.failed_at is not failed_op  # an op failed: it was not stood in for
            ):
                raise
            module = recorder.module_stack[-1] if recorder.module_stack else ""
            failed = FailedOp(done, "", None, None, module, 0)  # no op ran
            with _pop_mode_temporarily() as top:  # the stand-ins are made, not recorded
                if top is not recorder:
                    raise
                stand_ins = recorder.guide.failed(failed, func, args, kwargs)
            if not stand_ins:
                raise
            for op, results in stand_ins:
                leaves = [t for t in result_leaves(results) if isinstance(t, torch.Tensor)]
                recorder._note(leaves)
                recorder.graph.ops.append((op, module, [tuple(t.shape) for t in leaves]))
            recorder.graph.recovered.append((failed, f"{type(exc).__name__}: {exc}"))
            return stand_ins[-1][1]


class _OverBudget(Exception):
    """A trace on real tensors ran past its budget of work (real_budget.py). (A model's code
    may catch it: the recorder's ``aborted`` flag says what happened either way.)"""


def _foreign(x, device: torch.device) -> bool:
    """A tensor (or a list of them, one level) off ``device``."""
    if isinstance(x, torch.Tensor):
        return x.device.type != device.type
    if type(x) is list or type(x) is tuple:
        return any(isinstance(t, torch.Tensor) and t.device.type != device.type for t in x)
    return False


@functools.cache
def _takes_device(func) -> bool:
    """Whether an op has a keyword-only ``device`` argument: a factory (zeros, arange, ...),
    or a copy (_to_copy) whose device a meta trace keeps on meta."""
    return any(a.name == "device" and a.kwarg_only for a in func._schema.arguments)


# torch 2.11 and 2.12 divide by the key's or value's head count in scaled_dot_product_attention
# with enable_gqa: zero heads there is a SIGFPE that kills the process (later torches return).
# A pruned candidate the plan validator traces can have zero key or value heads, so during a
# trace on those versions the call raises instead, as a failed op of the trace.
_ATTENTION_DIVIDES_BY_HEADS = (release(torch.__version__) or (0, 0)) < (2, 13)


@contextlib.contextmanager
def _attention_refusing_zero_heads():
    if not _ATTENTION_DIVIDES_BY_HEADS:
        yield
        return
    functional = torch.nn.functional
    original = functional.scaled_dot_product_attention

    @functools.wraps(original)
    def checked(query, key, value, *args, **kwargs):
        gqa = kwargs.get("enable_gqa", args[4] if len(args) > 4 else False)
        if gqa and min(key.shape[-3:-2] or (1,)) * min(value.shape[-3:-2] or (1,)) == 0:
            raise RuntimeError(
                "scaled_dot_product_attention with enable_gqa needs key and value heads, got "
                f"key {tuple(key.shape)} and value {tuple(value.shape)}"
            )
        return original(query, key, value, *args, **kwargs)

    functional.scaled_dot_product_attention = checked
    try:
        yield
    finally:
        functional.scaled_dot_product_attention = original


@contextlib.contextmanager
def _module_scopes(
    modules: list[tuple[str, torch.nn.Module]],
    stack: list[str],
    recorder,
    ticks,
    stop: TraceStop | None = None,
):
    """Keep ``stack`` at the names of the modules running, and record every call's outputs.
    Two global hooks, not two per module: registering 3,000 hooks and removing them again
    took 14 ms per trace at 128 Llama layers."""
    names = {id(module): name for name, module in modules}
    calls = recorder.graph.module_calls
    graph = recorder.graph
    spans = graph.call_spans if isinstance(graph, OpGraph) else None
    occurrences: dict[str, int] = {}  # calls so far, per module name
    running: list[tuple[int, int]] = []  # (which call of its module, ops when it started)
    stop_states: dict[tuple[str, int], tuple] = {}  # a TraceStop's closed calls: their state

    def push(module, args):  # must return None: a value would replace the module's inputs
        name = names.get(id(module))
        if name is not None and not recorder.suspended:
            stack.append(name)
            occurrence = occurrences.get(name, 0)
            occurrences[name] = occurrence + 1
            running.append((occurrence, recorder.recorded_count()))
            if stop is not None and (name, occurrence) in stop.closed:
                stop_states[(name, occurrence)] = _state_of(module)

    def pop(module, args, output):  # must return None: a value would replace the output
        if id(module) in names and not recorder.suspended:
            ticks.update(1)
            name = stack.pop()
            calls.append((name, recorder.module_outputs(output)))
            occurrence, start = running.pop()
            if spans is not None:
                spans.append((name, occurrence, start, recorder.recorded_count()))
            elif stop is not None:
                _call_returned(stop, (name, occurrence), output, stop_states)

    with global_module_hooks(push, pop):
        yield


def _state_of(module: torch.nn.Module) -> tuple:
    """The attributes of ``module`` and its descendants, and the states of the plain objects
    they hold (a config): what :func:`_call_returned` compares."""
    modules = dict(module.named_modules(remove_duplicate=False))
    return (
        [(m, tuple(vars(m).items())) for m in modules.values()],
        [(obj, tuple(state.items())) for _, _, obj, state in _repeats._held_objects(modules)],
    )


def _call_returned(stop: TraceStop, call: tuple[str, int], output, states: dict) -> None:
    """A module call returned in a shape trace: is it one that must be closed, and is it? Is
    it where the trace stops?"""
    if call in stop.closed:
        modules, objects = states.pop(call)
        closed = (
            all(type(x) in _TENSOR_RESULTS or x is None for x in pytree.tree_leaves(output))
            and all(_repeats._unchanged(tuple(vars(m).items()), was) for m, was in modules)
            and all(
                (now := _repeats._state(obj)) is not None
                and _repeats._unchanged(tuple(now.items()), was)
                for obj, was in objects
            )
        )
        stop.broken = stop.broken or not closed
    if call == stop.after and not stop.broken:
        raise _StopTrace


_TENSOR_RESULTS = (torch.Tensor, torch.nn.Parameter, FakeTensor)


@contextlib.contextmanager
def global_module_hooks(before, after):
    """``before(module, args)`` and ``after(module, args, output)`` around every module call,
    for the duration (each returns None, or, as a module's own hooks may, what replaces the
    call's inputs or its output). Global hooks run before a module's own, so anything a
    module's own hooks do falls inside the scope they open."""
    handles = [
        torch.nn.modules.module.register_module_forward_pre_hook(before),
        torch.nn.modules.module.register_module_forward_hook(after),
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def eager_forwards():
    """For the duration, code that ``torch.compile`` compiled runs as the Python it is (a
    compiled model, a compiled module or function inside one): a trace must see its ops
    and the sizes its code reads, and compiling under a trace's modes takes seconds and
    warns about the trace's own code. (A compiled model's wrapper warns that global module
    hooks, the trace's, fire for it too: they do, and the trace expects it.)"""
    # (Nothing is compiled where torch._dynamo was never imported: then it is not imported
    # here either, which takes a second and, inside a trace, runs torch code of its own.)
    compiling = "torch._dynamo" in sys.modules
    set_stance = getattr(torch.compiler, "set_stance", None) if compiling else None
    # flex_attention compiles a wrapper of its op on every eager call; compiled under the
    # trace's stance it fails ever after ("marked as skipped"). Its debug switch calls the op
    # as it is: the trace follows its eager implementation (see _dense_higher_order).
    flex = sys.modules.get("torch.nn.attention.flex_attention")
    if flex is None and compiling:  # (cheap once dynamo is: the model may import it as it runs)
        import torch.nn.attention.flex_attention as flex
    direct = getattr(flex, "_FLEX_ATTENTION_DISABLE_COMPILE_DEBUG", None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Using `torch\.compile\(module\)` when")
        try:
            if direct is not None:
                flex._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG = True
            with set_stance("force_eager") if set_stance is not None else contextlib.nullcontext():
                yield
        finally:
            if direct is not None:
                flex._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG = direct
            if not compiling and "torch._dynamo" in sys.modules:
                # The model imported it as it ran (flex_attention does), and what it compiled
                # under the trace's modes fails when called again: nothing else was compiled.
                torch._dynamo.reset()


@contextlib.contextmanager
def _eval_mode(
    model: torch.nn.Module, modules: list[tuple[str, torch.nn.Module]], training: bool = False
):
    """``model.eval()`` for the duration (``training``: ``model.train()``); every module's
    flag is put back after."""
    flags = [(m, m.training) for _, m in modules if m.training != training]
    try:
        if flags:
            model.train(training)
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def _swapped_tensors(
    modules: list[tuple[str, torch.nn.Module]], fakes: dict[int, torch.Tensor], computed=None
):
    """Put fake tensors in place of the model's own, and put back exactly what was there.

    Module attributes that hold tensors, themselves or in a list, tuple or dict, are put back
    too (in place for a list or dict), and those the forward added are removed: a forward may
    keep what it computes (the older ``weight_norm`` and ``spectral_norm`` set
    ``module.weight`` in a forward pre-hook; torchvision's anchor generator replaces its cell
    anchors with copies of the input's dtype and device), and the trace's own tensors (meta,
    fake) must not stay in the model. ``computed``: a dict that receives, by qualified name,
    each attribute the forward set to a tensor, before it is put back.
    (``torch.func.functional_call`` restores the wrong tensor when one module is registered
    under two names, so the swap is done here, once per unique module.)"""
    saved = []
    # (name, the module's __dict__, its keys, its values, its tensors, its containers of
    # tensors): most modules' attributes are what they were after a forward, which
    # ``_unchanged`` tells at C speed
    attributes = []
    # Plain objects modules hold (a diffusion scheduler, a helper), by id: (their __dict__,
    # its keys, its values, its tensors). Their tensors are put back too: a forward that moves
    # them (``self.sigmas = self.sigmas.to(x.device)``) would leave the trace's meta or fake
    # tensors in the model.
    objects: dict[int, tuple] = {}
    for name, module in modules:
        state = vars(module)
        tensors, containers = {}, {}
        for k in state.keys() - _MODULE_INTERNALS:
            v = state[k]
            if type(v) in _SCALARS:
                continue  # (most attributes: sizes, flags, names)
            if isinstance(v, torch.Tensor):
                tensors[k] = v
            elif _holds_tensors(v):
                containers[k] = (v, _contents(v))
            elif id(v) not in objects and (held := _attributes_of(v)) is not None:
                kept = {a: t for a, t in held.items() if isinstance(t, torch.Tensor)}
                objects[id(v)] = (held, tuple(held), tuple(held.values()), kept)
        attributes.append((name, state, tuple(state), tuple(state.values()), tensors, containers))
    try:
        for _, module in modules:
            for store in (module._parameters, module._buffers):
                for key, t in store.items():
                    if t is not None and id(t) in fakes:
                        saved.append((store, key, t))
                        store[key] = fakes[id(t)]
        yield
    finally:
        for store, key, t in reversed(saved):
            store[key] = t
        for held, keys, values, kept in objects.values():
            if not _unchanged(held, keys, values):
                _put_back_attributes("", held, frozenset(keys), kept, None)
        for name, state, keys, values, tensors, containers in attributes:
            if not _unchanged(state, keys, values):
                _put_back_attributes(name, state, frozenset(keys), tensors, computed)
            for key, (value, items) in containers.items():
                state[key] = value
                now = _contents(value)
                if items is None or (len(now) == len(items) and all(map(operator.is_, now, items))):
                    continue
                if type(value) is list:
                    value[:] = items
                else:
                    value.clear()
                    value.update(zip(items[::2], items[1::2]))


@contextlib.contextmanager
def _replays_and_swapped(repeater: Repeater | None, modules, fakes, computed):
    """``_swapped_tensors`` inside the repeater's forwards (its wrappers are part of what the
    swap finds and leaves; the repeater removes them after)."""
    with repeater.forwards() if repeater is not None else contextlib.nullcontext():
        with _swapped_tensors(modules, fakes, computed):
            yield


_NOT_PLAIN = (torch.nn.Module, torch.Tensor, type, types.ModuleType, types.FunctionType,
              types.MethodType, types.BuiltinFunctionType, functools.partial)  # fmt: skip


# Builtin values without a ``__dict__`` (most module attributes: sizes, flags, names): told
# at once, not by the AttributeError of reading one (12 -> 5 ms a trace at 1,700 modules).
_NO_DICT = frozenset(
    {int, float, bool, str, bytes, complex, type(None), tuple, list, dict, set, frozenset}
    | {torch.dtype, torch.device, torch.Size, torch.memory_format, torch.layout}
)


# Values that neither are nor hold a tensor, nor have attributes of their own.
_SCALARS = _NO_DICT - {tuple, list, dict}


def _attributes_of(value) -> dict | None:
    """The ``__dict__`` of an instance of a class with attributes of its own, which is no
    module, tensor, class, function or Python module (else None), read past the class's own
    ``__getattribute__`` (a config's is a spy while the graph is traced)."""
    if type(value) in _NO_DICT or isinstance(value, _NOT_PLAIN):
        return None
    try:
        held = object.__getattribute__(value, "__dict__")
    except AttributeError:
        return None
    return held if type(held) is dict else None


def _unchanged(state: dict, keys: tuple, values: tuple) -> bool:
    """Whether ``state`` holds the same objects under the same keys, in order."""
    return (
        len(state) == len(keys)
        and all(map(operator.is_, state.values(), values))
        and all(map(operator.eq, state, keys))
    )


def _put_back_attributes(name: str, state: dict, keys: frozenset, tensors: dict, computed) -> None:
    """A module's (or an object's) tensor attributes as they were before the forward, and the
    tensors (or containers of tensors) it added removed; ``computed`` receives what it set."""
    for key, value in list(state.items()):
        if isinstance(value, torch.Tensor):
            if tensors.get(key) is value:
                continue
            if computed is not None:
                computed[f"{name}.{key}" if name else key] = value
            if key in tensors:
                state[key] = tensors[key]
                continue
        elif key in keys or not _holds_tensors(value):
            continue
        del state[key]  # a tensor, or tensors in a container, the forward added


_STORES = frozenset({"_parameters", "_buffers", "_modules"})
# What every module's __dict__ holds (its stores, hook dicts, flags): no tensor attribute.
_MODULE_INTERNALS = frozenset(vars(torch.nn.Module())) | _STORES


def _holds_tensors(value) -> bool:
    """A list, tuple or dict with a tensor among its items."""
    if type(value) is list or type(value) is tuple:
        return any(isinstance(x, torch.Tensor) for x in value)
    if type(value) is dict:
        return any(isinstance(x, torch.Tensor) for x in value.values())
    return False


def _contents(value) -> list | None:
    """The items of a list, or the keys and values of a dict, in order (None: neither)."""
    if type(value) is list:
        return list(value)
    if type(value) is dict:
        return [x for item in value.items() for x in item]
    return None


def _on_meta(tensors) -> bool:
    return any(t.device.type == "meta" for t in tensors)


class TraceMode(str, Enum):
    """What the forward of a trace runs on (every mode records the same ops wherever shapes do
    not depend on data)."""

    REAL = "real"  # the model's own tensors: small models, and shapes that depend on data
    META = "meta"  # meta tensors standing in for CPU ones (standin.py)
    FAKE = "fake"  # FakeTensorMode


CPU = torch.device("cpu")

# A model whose parameters and buffers take at most this many bytes is traced on real tensors
# first: a small model's real ops cost microseconds, far less than the Python dispatch of fake
# tensors (about 0.2-0.5 ms per op). The real trace gives up, and the fake one runs instead, as
# soon as its ops have done more work than a fake trace of as many ops would cost: work
# estimated from shapes, the same on any machine (real_budget.py).
REAL_TRACE_MAX_BYTES = 1 << 30
REAL_BUDGET = (ALLOWANCE, ALLOWANCE_PER_OP)  # nominal seconds: fixed, and per op


def trace(
    model: torch.nn.Module,
    example_inputs,
    *,
    shapes: dict[str, tuple] | None = None,
    shapes_only: bool = False,
    allow_meta: bool = True,
    walk: ModelWalk | None = None,
    trace_device: torch.device | str = CPU,
    meta_results: MetaResults | None = None,
    progress: Progress = OFF,
    stage: str = "trace",
    real_decides: bool = False,
    guide=None,
    replay: list[Decision] | None = None,
    real_over_budget: bool = False,
    training: bool = False,
    repeats=None,
    shape_replays: ShapeReplays | None = None,
    stop: TraceStop | None = None,
) -> OpGraph | ShapeTrace:
    """Record the ATen graph of ``model`` on ``example_inputs`` (in eval mode; ``training``:
    in training mode).

    ``shapes`` optionally replaces the shape of named parameters/buffers (the plan validator
    traces the pruned shapes this way without touching any weight); ``shapes_only`` records a
    :class:`ShapeTrace` (what checking a plan needs) instead of a graph. ``walk``: the model's
    :class:`ModelWalk`, when the caller has one. ``trace_device``: the device the forward runs
    as (the CPU): tensors anywhere else (on a GPU, on meta) are stood in for by meta or fake
    tensors that look like tensors of it, because ATen dispatches by device (cuDNN batch norm,
    fused attention kernels, cuDNN recurrent layers) and the graph must not depend on where
    the weights live; ``"meta"`` traces a meta model as it is. ``meta_results``: the memo of
    meta kernels' results to use (one per dependency graph: its traces repeat the same ops).
    ``progress`` shows a bar named ``stage`` over the model's module calls when the trace
    takes seconds. ``stop``: where an unguided shape trace may stop (a :class:`TraceStop`:
    its ``stopped_after`` says whether it did).

    A small model with real weights (``REAL_TRACE_MAX_BYTES``) on the trace device is traced
    on real tensors first, within a budget of work (``real_budget``). Traced as the CPU, a
    model is traced next on meta tensors standing in for CPU ones (``standin``;
    ``allow_meta=False`` skips this), which records the ops a fake trace would at about half
    its cost; whatever fails there, on
    fake tensors of the trace device. A model whose shapes depend on data (masking edges of a
    graph, say) cannot run on fake tensors; it is traced again on real ones, where they are:
    its own parameters, copies of its buffers and inputs, zero-filled tensors for replaced
    shapes (on a GPU its ops are the GPU's: the device-specific ones have rules of their
    own). ``real_decides``: a failure of the real trace is final (the model was traced on real
    tensors before, so its kernels, not the more lenient meta ones, say whether these shapes
    run). A meta trace that stops at a decision of the data (a ``nonzero``, NMS) goes on real
    tensors at once: a fake trace would stop there too.

    ``guide`` (shape traces): stands for ops that fail and keeps results on a plan, so that
    the forward goes on (see :func:`trace_as`); it guides the traces whose failure would be
    the one reported. ``replay``: the decisions of the data a real trace of the model recorded
    (``OpGraph.decisions``), replayed so that the data decides every size as it did there
    (decisions.py): on meta tensors first (each decision returns the original's result), and
    where that fails on real tensors (each decision is given the original's inputs).
    ``real_over_budget``: the model's graph was traced so (its real trace ran past the
    budget): no budgeted real trace is tried, and the fake trace decides, as for a large
    model.

    ``repeats``: the model's :class:`~depgraph_ext.graph.repeats.Repeats`, its ``spy`` the
    attribute spy of the graph trace (``dependency.attribute_reads``'s recording): a real or
    meta trace replays the layers that repeat. ``shape_replays``: a meta shape trace unguided
    replays the calls the graph's trace replayed (shape_repeats.py).
    """
    walk = walk or ModelWalk.of(model)  # one walk of the model for all the trace's uses
    stand_in = torch.device(trace_device)
    common = dict(
        shapes=shapes,
        shapes_only=shapes_only,
        walk=walk,
        bar=(progress, stage),
        stand_in=stand_in,
        meta_results=meta_results or MetaResults(),
        training=training,
        stop=stop,
    )
    if replay:
        # A trace of pruned shapes on real tensors computes on values no model would (weights
        # zero-filled or borrowed): past a decision replayed, a kernel that reads values as
        # positions (RoI pooling of the boxes computed so) may fail, or crash the process
        # (torchvision's roi_align on NaN boxes). On meta tensors nothing reads a value.
        if allow_meta and _meta_stands_in(walk, example_inputs, stand_in):
            try:
                return _shapes_with_replays(
                    model, example_inputs, shape_replays, replay=replay, guide=guide, **common
                )
            except TraceError:
                pass  # a decision met with other shapes, or an op that reads data
        return trace_as(model, example_inputs, TraceMode.REAL, replay=replay, guide=guide, **common)
    families = None
    if repeats is not None and not shapes_only and guide is None and repeats.ready():
        families = repeats
    cheap = not real_over_budget and _real_is_cheap(
        [*walk.params.values(), *walk.buffers.values()], example_inputs, stand_in
    )
    real_error: TraceError | None = None  # the model's own tensors failed: a real failure
    over_budget = False
    if cheap:
        try:
            if families is not None:
                return _with_repeats(model, example_inputs, TraceMode.REAL, families, common)
            return trace_as(
                model, example_inputs, TraceMode.REAL, budget=REAL_BUDGET, guide=guide, **common
            )
        except _OverBudget:
            over_budget = True  # the meta or fake trace is cheaper
        except TraceError as exc:
            if real_decides:
                # The model ran on its own kernels before and fails with these shapes: meta
                # and fake kernels check less (index_add's take any source shape), so a
                # trace on them could pass a plan the model cannot run.
                raise
            real_error = exc
    by_data: TraceError | None = None  # a trace stopped at a decision of the data
    if allow_meta and _meta_stands_in(walk, example_inputs, stand_in):
        try:
            if families is not None:
                graph = _with_repeats(model, example_inputs, TraceMode.META, families, common)
            elif shapes_only:
                graph = _shapes_with_replays(
                    model, example_inputs, shape_replays, guide=guide, **common
                )
            else:
                graph = trace_as(model, example_inputs, TraceMode.META, **common)
            return _noting(_warn_real_failed(graph, real_error), over_budget)
        except TraceError as exc:
            # the fake trace decides (and its error, if any, is the one reported); at a
            # decision of the data it would stop too
            if exc.by_data and real_error is None:
                by_data = exc
    if by_data is None:
        # (A meta trace's failure is never the one reported: the others are guided.)
        reported = real_error is None and not cheap
        try:
            if families is not None:
                graph = _with_repeats(model, example_inputs, TraceMode.FAKE, families, common)
            else:
                graph = trace_as(
                    model,
                    example_inputs,
                    TraceMode.FAKE,
                    guide=guide if reported else None,
                    **common,
                )
            return _noting(_warn_real_failed(graph, real_error), over_budget)
        except TraceError as exc:
            if real_error is not None:
                # The real ops failed first: that is what the model does with these shapes.
                # Meta and fake kernels may refuse what the CPU runs (aten._grouped_mm's meta
                # kernel wants bfloat16, the CPU one takes float32), and their error would
                # blame an op the plan never touched.
                raise real_error from exc
            if cheap and not exc.by_data:
                # A fake kernel may refuse what the real one runs: a small model's real trace,
                # unbudgeted, decides (its error is reported if it fails too).
                return trace_as(model, example_inputs, TraceMode.REAL, guide=guide, **common)
            if not exc.by_data:
                raise
            by_data = exc
    if _on_meta(walk.params.values()) or _on_meta(walk.buffers.values()):
        raise TraceError(
            f"{by_data}; the model's shapes depend on data, which needs real weights, and its "
            "weights are on the meta device"
        ) from by_data
    return trace_as(model, example_inputs, TraceMode.REAL, guide=guide, **common)


def _shapes_with_replays(model, example_inputs, replays, **common) -> ShapeTrace:
    """A meta shape trace, replaying ``replays``' modules where unguided (checked against one
    without replays in check mode)."""
    if replays is None or common.get("guide") is not None or not replays.replayed:
        return trace_as(model, example_inputs, TraceMode.META, **common)
    with TRACE_LOCK, replays.spying() as spy:  # (the spy patches the modules' classes)
        if not getattr(spy, "known", True):  # (a class that refuses a spy: no replays)
            return trace_as(model, example_inputs, TraceMode.META, **common)
        replays = dataclasses.replace(replays, spy=spy)
        shapes = trace_as(model, example_inputs, TraceMode.META, shape_replays=replays, **common)
    if CHECK_REPEATS and shapes.replayed:
        whole = trace_as(model, example_inputs, TraceMode.META, **common)
        found = shape_differences(shapes, whole)
        if found:
            raise InternalError(
                f"internal error: replaying {shapes.replayed} module calls changed the trace of "
                f"a plan's shapes: {'; '.join(found[:5])}"
            )
    return shapes


def _with_repeats(model, example_inputs, mode: TraceMode, families: Repeats, common) -> OpGraph:
    """A real (budgeted) or meta trace replaying ``families``' siblings (again without, where
    a template's inner tensors were used after its call); checked against one without
    replays in check mode."""
    budget = REAL_BUDGET if mode is TraceMode.REAL else None
    try:
        graph = trace_as(model, example_inputs, mode, repeats=families, budget=budget, **common)
    except (RepeatsInvalid, TraceError) as exc:
        # (a real trace's siblings returned zeros, which a value read or a kernel took amiss:
        # their ops are run; a template's tensors used after its call: no replays)
        speculated = exc.speculation if isinstance(exc, RepeatsInvalid) else families.speculated
        if not speculated or mode is not TraceMode.REAL:
            if isinstance(exc, TraceError):
                raise
            return trace_as(model, example_inputs, mode, budget=budget, **common)
        try:
            graph = trace_as(
                model,
                example_inputs,
                mode,
                repeats=families,
                budget=budget,
                speculate=False,
                **common,
            )
        except RepeatsInvalid:
            return trace_as(model, example_inputs, mode, budget=budget, **common)
    if CHECK_REPEATS and graph.replayed:
        spy = families.spy
        known = {id(m) for _, m in common["walk"].modules}  # (not modules the forward makes)
        reads = {r for r in spy.names if r[0] in known}
        spy.names.clear()
        whole = trace_as(model, example_inputs, mode, **common)
        found = differences(graph, whole)
        if {r for r in spy.names if r[0] in known} != reads:
            found.append(
                f"attribute reads only with replays: {sorted(reads - spy.names)[:5]}, "
                f"only without: {sorted(spy.names - reads)[:5]}"
            )
        if found:
            raise InternalError(
                f"internal error: replaying {graph.replayed} module calls changed the graph: "
                + "; ".join(found[:5])
            )
    return graph


def _warn_real_failed(graph, real_error: TraceError | None):
    """``graph``, having warned that the model's own kernels refused the example inputs (a
    graph's trace: a plan's shape traces say nothing to the user)."""
    if real_error is not None and isinstance(graph, OpGraph):
        warnings.warn(
            f"{str(real_error).replace('the model could not run', 'the model does not run', 1)}"
            f"; it was traced on {TraceMode(graph.mode).value} tensors instead, whose kernels "
            "check less. The prune follows the shapes it saw: if the model runs on such inputs "
            "elsewhere (a "
            "kernel this machine lacks for the dtype), nothing is amiss; otherwise check the "
            "inputs' dtype, device and values",
            ExampleInputsWarning,
            stacklevel=user_stacklevel(),
        )
    return graph


def _noting(graph, over_budget: bool):
    """``graph``, noting that a real trace of the model ran past its budget first."""
    if over_budget and isinstance(graph, OpGraph):
        graph.real_over_budget = True
    return graph


def _real_is_cheap(tensors, example_inputs, trace_device: torch.device) -> bool:
    """Real weights (no meta, no fake tensors), all on the trace device, of at most
    ``REAL_TRACE_MAX_BYTES`` in all."""
    total = 0
    for t in tensors:
        if t.device.type != trace_device.type or isinstance(t, FakeTensor):
            return False
        total += t.numel() * t.element_size()
    if total > REAL_TRACE_MAX_BYTES:
        return False
    args, kwargs = normalize_inputs(example_inputs)
    leaves = [*args, *kwargs.values()]
    return not any(
        isinstance(t, torch.Tensor)
        and (t.device.type != trace_device.type or isinstance(t, FakeTensor))
        for t in leaves
    )


def _meta_stands_in(walk: ModelWalk, example_inputs, stand_in: torch.device) -> bool:
    """Traced as the CPU, with no fake tensor among the model's or the inputs' and no module
    with a fused path a meta trace would miss (``standin.FUSED_PATH_MODULES``): a meta trace
    can stand in for a fake one, wherever the tensors live."""
    if stand_in.type != "cpu":
        return False
    if any(isinstance(m, FUSED_PATH_MODULES) for _, m in walk.modules):
        return False
    tensors = [*walk.params.values(), *walk.buffers.values()]
    inputs = [t for t in pytree.tree_leaves(example_inputs) if isinstance(t, torch.Tensor)]
    return not any(isinstance(t, FakeTensor) for t in tensors + inputs)


class _Placeholders:
    """What one trace's forward runs on in place of the model's tensors and its inputs.

    REAL: parameters as they are (or, for replaced shapes in a budgeted trace, views of their
    memory), buffers and inputs copied (the model's code may change them in place), wherever
    they are. META: meta tensors of the same layout. FAKE: fake tensors of the trace device
    (``stand_in``), made from the tensors on it and standing in for the others: ops dispatch by
    device (on meta, attention decomposes into matmuls with an explicit repeat of the
    key/value heads; on a GPU, batch norm is cuDNN's), so the graph and the plan of a model
    would otherwise depend on where its weights live."""

    def __init__(
        self, mode: TraceMode, shapes, fake_mode, stand_in: torch.device | None, budgeted: bool
    ) -> None:
        self.mode, self.shapes, self.fake_mode = mode, shapes, fake_mode
        self.stand_in, self.budgeted = stand_in, budgeted

    def _moved(self, t: torch.Tensor) -> bool:
        return self.stand_in is not None and t.device.type != self.stand_in.type

    def _on_stand_in(self, t: torch.Tensor, shape=None) -> torch.Tensor:
        with self.fake_mode:
            if shape is not None:
                f = torch.zeros(shape, dtype=t.dtype, device=self.stand_in)
            else:
                f = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=self.stand_in)
        return f.requires_grad_() if t.requires_grad else f

    def tensor(self, t: torch.Tensor, name: str) -> torch.Tensor:
        """A parameter's or buffer's placeholder (``name``: its state_dict name)."""
        shape = self.shapes.get(name) if self.shapes is not None else None
        if self.mode is TraceMode.META:
            return on_meta(t, shape)
        if shape is not None:
            if self._moved(t):
                return self._on_stand_in(t, shape)
            # A real trace runs on detached parameters, and a pruned one must too: kernels
            # differ by whether a weight needs its gradient (an embedding bag's
            # forward-only kernel), and the two traces are compared op by op.
            grad = t.requires_grad and self.mode is not TraceMode.REAL
            if self.budgeted and isinstance(t, torch.nn.Parameter):
                smaller = _leading_view(t, shape)
                if smaller is not None:
                    return smaller.requires_grad_() if grad else smaller.detach()
            with self.fake_mode:  # a tensor of the new shape on the tensor's own device
                z = torch.zeros(shape, dtype=t.dtype, device=t.device)
            return z.requires_grad_() if grad else z
        if self.mode is TraceMode.REAL:
            return t.detach() if isinstance(t, torch.nn.Parameter) else t.clone()
        return self._on_stand_in(t) if self._moved(t) else self.fake_mode.from_tensor(t)

    def input(self, x):
        """An input leaf's placeholder (anything but a tensor is passed as it is)."""
        if not isinstance(x, torch.Tensor):
            return x
        if self.mode is TraceMode.META:
            return on_meta(x)
        if self.mode is TraceMode.REAL:
            return x.clone()
        if self._moved(x) or (self.stand_in is not None and self.stand_in.type == "meta"):
            # A model wholly on meta traced as it is takes its inputs there too: the fake
            # tensors of torch 2.11 refuse an op mixing meta and CPU ones (an embedding's
            # CPU ids), later ones let meta win, as the model's real meta kernels do.
            return self._on_stand_in(x)
        return self.fake_mode.from_tensor(x)


def _dense_higher_order(func):
    """The eager implementation of a higher-order op the trace follows through (None: one
    it does not)."""
    if func.name() != "flex_attention":
        return None
    from torch._higher_order_ops.flex_attention import sdpa_dense

    return sdpa_dense


# torch's refusal of a dispatch mode that takes no higher-order ops (flex_attention, cond ...)
_HIGHER_ORDER = re.compile(r"no rule registered for HigherOrderOperator (\w+)")


# (Under inference mode, and on tensors made under it, torch hands a dispatch mode composite
# ops whole: aten.linear where the rules know aten.addmm. The placeholders of a trace are
# made outside it, from the inputs whatever mode made them.)
# Tracing patches process-wide state for its duration (module classes' attribute lookup,
# global module hooks, torch's compile stance): two threads tracing at once would undo each
# other's patches, and leave a class patched for good. One trace at a time; a thread may
# nest them (a graph's trace inside its spies, the training mode's inside a graph).
TRACE_LOCK = threading.RLock()


def one_trace_at_a_time(function):
    """``function``, each call of it holding :data:`TRACE_LOCK`."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with TRACE_LOCK:
            return function(*args, **kwargs)

    return wrapper


@one_trace_at_a_time
@torch.inference_mode(False)
def trace_as(
    model: torch.nn.Module,
    example_inputs,
    mode: TraceMode | str,
    *,
    shapes=None,
    shapes_only: bool = False,
    walk: ModelWalk | None = None,
    bar: tuple[Progress, str] = (OFF, "trace"),
    stand_in: torch.device = CPU,
    meta_results: MetaResults | None = None,
    budget: tuple[float, float] | None = None,
    guide=None,
    replay: list[Decision] | None = None,
    training: bool = False,
    repeats: Repeats | None = None,
    speculate: bool = True,
    shape_replays: ShapeReplays | None = None,
    stop: TraceStop | None = None,
) -> OpGraph | ShapeTrace:
    """One trace in one mode, no fallback (:func:`trace` picks the mode); ``budget``: the time
    a real trace may take, as (a fixed allowance, an allowance per op), or unlimited. A real
    trace records the decisions of the data (a graph's) or replays ``replay``'s.

    ``guide`` (shape traces only), so that one trace finds every op that fails rather than the
    first: ``guide.start(trace)`` is called first; ``guide.failed(failed_op, op, args,
    kwargs)``, with what failed (a :class:`FailedOp`; its ``op`` is empty for a torch function
    that failed before any of its ops ran), gives the ops that stand for it, each with its
    results, or None to fail there (an op stands for itself; a function, for the ops it would
    have run), and the forward goes on with the last one's results; ``guide.ran(index, op,
    module, shapes, results)`` gives other results for an op that ran (or None). A trace some
    of whose ops failed (``recovered`` of the :class:`ShapeTrace`) still raises a TraceError
    for the first of them, its ``partial`` the whole trace."""
    mode = TraceMode(mode)
    walk = walk or ModelWalk.of(model)
    meta_results = meta_results or MetaResults()
    if stop is not None:  # (shape traces only, unguided: a copy, whose ``broken`` is this one's)
        stop = dataclasses.replace(stop) if shapes_only and guide is None else None
    args, kwargs = normalize_inputs(example_inputs)
    params, buffers, modules = walk.params, walk.buffers, walk.modules
    stack: list[str] = []
    if shapes_only:
        graph = ShapeTrace(real=mode is TraceMode.REAL, mode=mode)
        recorder = _ShapeRecorder(graph, stack)
        if guide is not None:
            recorder.guide = guide
            guide.start(graph)
    else:
        graph = OpGraph(aliases=walk.aliases, real=mode is TraceMode.REAL, mode=mode)
        recorder = _Recorder(graph, stack)
    fake_mode = (
        FakeTensorMode(allow_non_fake_inputs=True)
        if mode is TraceMode.FAKE
        else contextlib.nullcontext()
    )
    if mode is TraceMode.META:
        recorder.meta, recorder.meta_results = True, meta_results
    if replay and mode is not TraceMode.FAKE:
        recorder.replay = {d.key: d for d in replay}
    if mode is TraceMode.REAL and not shapes_only:
        recorder.decisions = graph.decisions
    if mode is TraceMode.REAL:
        recorder.parameters = SavedParameters(params.values())
    stand_in_mode = StandIn(CPU, recorder) if mode is TraceMode.META else contextlib.nullcontext()
    # (A torch function mode takes modules' fused paths away: a model with one is not watched,
    # its plans always traced again, and its shape traces are guided only where the trace had
    # no fused paths either.)
    fused = any(isinstance(m, FUSED_PATH_MODULES) for _, m in modules)
    watch = (
        SizeWatch(
            recorder,
            frozenset(n for n, m in modules if type(m).forward in PASS_THROUGH_FORWARDS),
        )
        if not shapes_only and not fused
        else None
    )
    guided = guide is not None and shapes_only and (mode is TraceMode.META or not fused)
    guided_calls = _GuidedCalls(recorder) if guided else contextlib.nullcontext()
    if mode is not TraceMode.REAL:
        recorder.stand_in = stand_in if mode is TraceMode.FAKE else CPU
    repeater = None
    if repeats is not None and not shapes_only and not replay:
        repeater = Repeater(
            repeats, graph, recorder, watch, {id(m): n for n, m in modules}, speculate
        )
        if repeater.speculative:
            watch.on_value_read = repeater.value_read
    elif shape_replays is not None and shapes_only and guide is None and mode is TraceMode.META:
        repeater = ShapeRepeater(shape_replays, graph, recorder, modules)
    placeholders = _Placeholders(
        mode,
        shapes,
        fake_mode,
        stand_in if mode is TraceMode.FAKE else None,
        budgeted=mode is TraceMode.REAL and budget is not None,
    )
    # The trace makes many small objects and no garbage cycles: the collector only costs time.
    # Real ops of a small model run fastest on one thread (and do not spin against other
    # processes for the cores). The random numbers a forward draws (dropout in training mode,
    # ViLT's patch sampling) come from the caller's generators, which are put back after: a
    # prune leaves the caller's random stream where it was.
    with (
        _random_state_kept(params.values()),
        paused_gc(),
        _threads(1 if placeholders.budgeted else None),
        _fake_errors_unlogged(),
        traceable_paths(modules),
        unfused_transformer_layers(modules),
    ):
        try:
            # (results the model's methods cached before the trace are not what the trace
            # must see, and what they cache during it must not stay: method_caches.py)
            clear_method_caches(m for _, m in modules)
            fake_params = {n: placeholders.tensor(p, n) for n, p in params.items()}
            fake_buffers = {n: placeholders.tensor(b, n) for n, b in buffers.items()}
            fakes = {
                id(t): fake_params.get(n, fake_buffers.get(n))
                for n, t in (params | buffers).items()
            }
            fake_args = pytree.tree_map(placeholders.input, args)
            fake_kwargs = pytree.tree_map(placeholders.input, kwargs)
            _register_values(
                graph, recorder, fake_params, fake_buffers, fake_args, fake_kwargs, shapes_only
            )
            if isinstance(repeater, Repeater):
                repeater.tensors_of_values = {
                    graph.params[n]: t for n, t in fake_params.items()
                } | {graph.buffers[n]: t for n, t in fake_buffers.items()}
                repeater.names_of_tensors = {
                    id(t): n for n, t in (fake_params | fake_buffers).items()
                }
            progress, stage = bar
            set_attributes: dict[str, torch.Tensor] = {}
            if budget is not None:  # counted from the forward: preparing tensors is not the model's
                recorder.work_left, recorder.budget_per_op = budget
            with (
                _eval_mode(model, modules, training),
                eager_forwards(),
                torch.no_grad(),
                progress.bar(stage, total=len(modules), unit="module") as ticks,
                _module_scopes(modules, stack, recorder, ticks, stop),
            ):
                with (
                    fake_mode,
                    recorder,
                    stand_in_mode,
                    _attention_refusing_zero_heads(),
                    watch or contextlib.nullcontext(),
                    guided_calls,
                ):
                    with _replays_and_swapped(repeater, modules, fakes, set_attributes):
                        out = call_in_fresh_chunk(model, *fake_args, **fake_kwargs)
        except (InvalidArgumentError, RepeatsInvalid):
            raise
        except _StopTrace:
            graph.stopped_after = stop.after
        except Exception as exc:
            if shapes_only and graph.recovered:
                raise _recovered_error(graph) from exc  # the first failure is the news
            if recorder.aborted:
                raise _OverBudget from exc  # the model's code caught it and failed otherwise
            where = [f"in module {stack[-1] or '<root>'}"] if stack else []
            if recorder.failed_at is not None:
                where.append(f"op {recorder.failed_at.op}")
            if (line := source.raised_at(exc)) is not None:
                where.append(f"at {source.describe(line)}")
            where = f" ({', '.join(where)})" if where else ""
            higher = (
                _HIGHER_ORDER.search(str(exc)) if isinstance(exc, NotImplementedError) else None
            )
            if higher is not None:  # (torch's refusal, not the model's: say what it is)
                name = higher.group(1)
                message = (
                    f"the model calls torch's higher-order op {name}{where}, which runs "
                    "functions of the model's inside one op: the trace follows flex_attention's "
                    f"but not {name}'s yet"
                )
            else:
                message = (
                    f"the model could not run on the example inputs{where}: "
                    f"{type(exc).__name__}: {exc}" + _packing_hint(exc, args, kwargs, stack)
                )
            error = TraceError(message)
            error.failed_at = recorder.failed_at  # the op that raised, when one did
            error.module = stack[-1] if stack else None  # the innermost module running
            error.ops_done = recorder.recorded_count()  # ops recorded before the failure
            error.partial = graph if shapes_only else None  # what ran before it, by shape
            # it stopped at a decision of the data (a fake or meta kernel cannot say its size)
            error.by_data = isinstance(exc, DATA_DEPENDENT) or (
                mode is TraceMode.META and recorder.failed_by_data
            )
            raise error from exc
        finally:
            if recorder.parameters is not None:
                recorder.parameters.restore()
            clear_method_caches(m for _, m in modules)
            _check_untouched(modules, params, buffers)
    if shapes_only and graph.recovered:
        raise _recovered_error(graph)
    if recorder.aborted:
        raise _OverBudget  # the model's code caught it and went on
    if shapes_only and graph.stopped_after is not None:
        if repeater is not None:
            graph.replayed = repeater.replayed
        return graph  # (what the model's code does past the stop is not traced)
    if not shapes_only:
        graph.attribute_tensors = {
            name: recorder.value_of[id(t)]
            for name, t in set_attributes.items()
            if id(t) in recorder.value_of
        }
    for path, leaf in output_leaves(out, leaves_with_paths):
        if isinstance(leaf, torch.Tensor):
            recorder.model_output(leaf)
            if not shapes_only:
                graph.output_paths.append(path)
        elif isinstance(leaf, int) and not isinstance(leaf, bool):
            graph.output_numbers.append((path, int.__int__(leaf)))  # (no read of a SizeInt)
            if type(leaf) is SizeInt and not shapes_only:
                graph.output_sizes += [
                    (x.value, x.dim) for x in leaves(leaf) if type(x) is SizeLeaf
                ]
    if isinstance(repeater, Repeater):
        repeater.finish()
        graph.replayed = repeater.replayed
        graph.replayed_modules = frozenset(repeater.replayed_modules)
    elif repeater is not None:
        graph.replayed = repeater.replayed
    if watch is not None:
        watch.saw.clock = None  # (the recorder's: it holds every tensor of the trace)
        watch.saw.live = False
        graph.code_saw = watch.saw
    return graph


def _recovered_error(graph: ShapeTrace) -> TraceError:
    """The error of a shape trace some of whose ops failed and were stood in for: the first."""
    failed, message = graph.recovered[0]
    error = TraceError(
        f"the model could not run on the example inputs (in module {failed.module or '<root>'})"
        f": {message}"
    )
    error.failed_at, error.module, error.ops_done = failed, failed.module, failed.index
    error.partial = graph
    error.by_data = False  # a decision of the data is never stood in for
    return error


# Modules whose fast path (torch.backends.mha) is one fused op for a whole layer, with no rule:
# in a trace they run their Python code instead.
UNFUSED_IN_TRACES = (torch.nn.TransformerEncoderLayer, torch.nn.TransformerEncoder)


@contextlib.contextmanager
def unfused_transformer_layers(modules: list[tuple[str, torch.nn.Module]]):
    """While an nn.TransformerEncoder(Layer) runs, its fast path is off: it runs its Python
    code (attention through nn.MultiheadAttention's), the same function as the fused op, as
    ops the rules know. The pruned model takes its fast path again; both ask the same of the
    shapes (heads x head dim = embed dim). (Only these: nn.MultiheadAttention alone keeps its
    fused op, which has a rule.) ``verify=True``'s forwards run the same way: its checks
    swap a planned tensor while a module holding it runs, and the fused op reads the weights
    of modules it never calls."""
    layers = {id(m) for _, m in modules if isinstance(m, UNFUSED_IN_TRACES)}
    if not layers:
        yield
        return
    mha = torch.backends.mha
    enabled = mha.get_fastpath_enabled()
    saved: list[bool] = []

    def enter(module, args):
        if id(module) in layers:
            saved.append(mha.get_fastpath_enabled())
            mha.set_fastpath_enabled(False)

    def leave(module, args, output):
        if id(module) in layers and saved:
            mha.set_fastpath_enabled(saved.pop())

    try:
        with global_module_hooks(enter, leave):
            yield
    finally:
        mha.set_fastpath_enabled(enabled)  # (a layer that raised left it off)


@contextlib.contextmanager
def _fake_errors_unlogged():
    """Fake tensors log each op that raises with its traceback; a trace that fails (a
    validation trace finding a fixed size, say) reports its error as a TraceError instead."""
    logger = logging.getLogger("torch._subclasses.fake_tensor")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def fresh_copies(tree):
    """``tree`` with every tensor cloned (the model's inputs for a forward that may write
    them in place)."""
    return pytree.tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, tree)


def output_tensors(out) -> list[torch.Tensor]:
    """The tensors a model returned, as a trace records them (:mod:`output_leaves`)."""
    return [t for _, t in output_leaves(out, leaves_with_paths) if isinstance(t, torch.Tensor)]


def leaves_with_paths(tree) -> list[tuple[str, Any]]:
    """The leaves of ``tree`` in ``pytree.tree_leaves`` order, each with its key path as
    ``pytree.keystr`` writes it (``[0]``, ``['logits']``). A node type registered without key
    paths (diffusers' outputs, by the older registration) is keyed by its flattening's
    context where that names each child (a mapping's keys), else by position."""
    try:
        return [(pytree.keystr(p), leaf) for p, leaf in pytree.tree_flatten_with_path(tree)[0]]
    except ValueError:
        pass
    out: list[tuple[str, Any]] = []

    def walk(node, path: str) -> None:
        if pytree.tree_is_leaf(node):
            out.append((path, node))
            return
        children, context = pytree.SUPPORTED_NODES[pytree._get_node_type(node)].flatten_fn(node)
        names = context if isinstance(context, (list, tuple)) else ()
        for i, child in enumerate(children):
            walk(child, f"{path}[{names[i]!r}]" if len(names) == len(children) else f"{path}[{i}]")

    walk(tree, "")
    return out


def _register_values(
    graph, recorder, fake_params, fake_buffers, fake_args, fake_kwargs, shapes_only: bool
) -> None:
    """The placeholders the trace starts from: parameters and buffers by name, inputs by their
    argument path (a shape trace only needs to know them)."""
    if shapes_only:
        for t in (
            *fake_params.values(),
            *fake_buffers.values(),
            *pytree.tree_leaves((fake_args, fake_kwargs)),
        ):
            if isinstance(t, torch.Tensor):
                recorder.add_value(t, "")
        return
    for name, p in fake_params.items():
        graph.params[name] = recorder.add_value(p, "param", name)
    for name, b in fake_buffers.items():
        graph.buffers[name] = recorder.add_value(b, "buffer", name)
    for path, leaf in leaves_with_paths((fake_args, fake_kwargs)):
        if isinstance(leaf, torch.Tensor):
            graph.inputs.append(recorder.add_value(leaf, "input", path))


def _random_state_kept(tensors):
    """``torch.random.fork_rng`` over the CPU's generator and those of the GPUs the tensors
    are on (none where CUDA never started: fake ``cuda`` tensors of a machine without one)."""
    devices = []
    if torch.cuda.is_initialized():
        devices = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})
    return torch.random.fork_rng(devices=devices)


@contextlib.contextmanager
def _threads(count: int | None):
    """torch's intra-op threads set to ``count`` for the duration (None: left as they are)."""
    before = torch.get_num_threads()
    if count is not None and count != before:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _leading_view(t: torch.Tensor, shape) -> torch.Tensor | None:
    """A contiguous tensor of ``shape`` over the first elements of ``t``'s memory (None when
    ``t`` is not strided and contiguous, or too small). A budgeted real trace of pruned shapes
    runs on these instead of fresh zeros: neither holds the pruned weights' values, and
    zero-filling new memory for every pruned weight costs its page faults.
    Parameters only: such a trace runs on the parameters themselves anyway, while buffers,
    which some models update in their forward, are copies."""
    numel = 1
    for s in shape:
        numel *= s
    if t.layout != torch.strided or not t.is_contiguous() or numel > t.numel():
        return None
    return t.detach().reshape(-1)[:numel].view(shape)


def _check_untouched(
    modules: list[tuple[str, torch.nn.Module]], params: dict, buffers: dict
) -> None:
    """Every module must hold exactly the tensors the model held before tracing."""
    before = {id(t) for t in params.values()} | {id(t) for t in buffers.values()}
    for _, module in modules:
        for store in (module._parameters, module._buffers):
            for t in store.values():
                if t is not None and id(t) not in before:
                    raise RuntimeError(
                        "internal error: tracing did not restore the model's tensors"
                    )
