"""sim.cpu's graph engine: a T = 1 feed-forward run as one onnxruntime call per batch.

sim.cpu's program (sim/cpu/program.py) runs one torch call or more per node from Python; a graph
of many small operations, or a small batch, pays that dispatch at every node. The graph engine
lowers the artifact once into an ONNX model of float operations on exact integers and hands a
whole batch to onnxruntime, whose executor runs it without returning to Python.

The model is the reference's (sim.emit: every kind's own `emit`, exact by the integer contract)
with faster forms wherever a static bound (every value's magnitude from the inputs' levels,
sim.ops' `magnitude`, as sim.emit.write reaches it) proves them exact:

- the one-pass neuron as clip(floor((v + b + θ//2 + ½) · fl(1/θ)), lo, hi) in float32
  (kernels.Fire.reciprocal: exact for |v| + ½ < 2²²), or floor of the float32 quotient
  (Fire.dtype), instead of the float64 division; a convolution or dense layer whose only reader
  is such a neuron adds b + θ//2 + ½ as its own bias (no shift: weight exponent ≥ 0, folded into
  the weights as the exact power of two);
- a table neuron (adaptive fire) as one gather from program.table_bands' table, the index
  clamped per neuron in float32 and the table in the narrowest integer type, instead of
  counting thresholds crossed;
- products of activations and activation matrix products in float32 when every partial sum
  plus the rounding's half stays below 2²⁴;
- sums whose terms have gain 1 without the multiplication.

onnxruntime's graph rewrites that would fold a non-power-of-two constant into a product's
weights (Conv·Mul, MatMul·scale fusions) are switched off (`UNSAFE`); every other rewrite
keeps exact integers exact (layout changes, bias folding, activation fusion into a kernel).

What it serves: `sim.cpu.run` with T = 1, graded spikes, no recurrence, and no neuron that
could saturate its 24-bit state (the saturation count is the program's). A counted run's
activity statistics are computed in the model too (`_Counts`: one output of per-node totals),
for the kinds whose counts it knows. `Lowering` says why an artifact does not qualify
(NotLowered); the runner then uses the program. The input encoder's clipped count comes from
the model's `flag` output.
"""
from __future__ import annotations

import math

import numpy as np

from sim import emit, ops, semantics
from sim.artifact import Artifact
from sim.cpu import fused, ort_ops, program
from sim.cpu.kernels import Fire, FirePlan, encode_input_exact
from sim.driver import joined
from sim.errors import SimulationError, UnsupportedOpError
from sim.kernels import F32_EXACT
from sim.ops.base import NEURON, batched
from sim.ops.dense import _accumulator
from sim.results import LayerStats, SimResult, check_input

# onnxruntime rewrites that multiply a kernel's weights by a following constant: exact only for
# powers of two, so off (the fire's fl(1/θ) would otherwise enter the weights)
UNSAFE = ["ConvMulFusion", "MatMulScaleFusion"]


class NotLowered(Exception):
    """The artifact (or a node of it) is outside what the graph engine serves."""


def _readers(art: Artifact) -> dict[str, int]:
    count: dict[str, int] = {}
    for n in art.nodes:
        for i in n.inputs:
            count[i] = count.get(i, 0) + 1
    return count


class _Builder(emit.Builder):
    """sim.emit's builder with every one-element float operand of an elementwise op made a
    constant of the node's own rank (1, …, 1): onnxruntime's kernels take a different, several
    times slower, path for a 0-d or (1,) operand than for a broadcast one of full rank.
    `rank`: the rank of the node being written (batch axis included)."""
    ELEMENTWISE = ("Add", "Sub", "Mul", "Div")

    def __init__(self):
        super().__init__()
        self._one: dict[str, np.ndarray] = {}
        self._ranked: dict[tuple[str, int], str] = {}

    def const(self, value, dtype=np.float32) -> str:
        name = super().const(value, dtype)
        a = np.asarray(value, dtype=dtype)
        if a.size == 1 and np.issubdtype(a.dtype, np.floating):
            self._one[name] = a
        return name

    def op(self, op_type, inputs, **attrs) -> str:
        if op_type in self.ELEMENTWISE:
            inputs = [self._of_rank(i) if i in self._one else i for i in inputs]
        return super().op(op_type, inputs, **attrs)

    def _of_rank(self, name: str) -> str:
        key = (name, self.rank)
        if key not in self._ranked:
            a = self._one[name]
            self._ranked[key] = super().const(a.reshape((1,) * max(self.rank, a.ndim)), a.dtype)
        return self._ranked[key]


class Lowering:
    """One artifact written as the engine's ONNX model (module docstring)."""

    def __init__(self, art: Artifact, keep=(), count: bool = False):
        if art.recurrent:
            raise NotLowered("a recurrent artifact runs trials step by step")
        self.art, self.b = art, _Builder()
        self.bound = self.b.bounds                # every node's static bound (sim.emit.write)
        self.double: set[str] = set()             # tensors held in float64 (`_wide`)
        self.nodes = {n.name: n for n in art.nodes}
        self.nonneg = ops.nonnegative(art.nodes)  # never-negative values: one-sided bounds
        self.fused = program.fusions(art, keep)   # product/add → the one-pass neuron it feeds
        self.biased: dict[str, np.ndarray] = {}   # product → fl(1/θ') of the neuron it feeds
        self.reciprocals: list[str] = []          # the fires' multiplications by fl(1/θ)
        self.encoder = None
        try:
            values = emit.write(self.b, art.nodes, self._form)
        except UnsupportedOpError as exc:
            raise NotLowered(str(exc)) from exc
        readout = art.node(art.output)
        shape = tuple(readout.shape)
        self.outputs = {"accumulator": shape, "logits": shape, "flag": None}
        b = self.b
        for name in keep:
            out = f"keep/{name}"
            b.output(out, "Identity", [values[name]])
            self.outputs[out] = tuple(self.nodes[name].shape)
        # activity counts: the model's output `counts`, entry k adding to node, field (× factor)
        self.counts = _Counts(self, values).outputs if count else []
        if self.counts:
            self.outputs["counts"] = ()
        acc = _named(b, values[readout.inputs[0]], "accumulator")
        # semantics.readout at T = 1: float32(A + b) · float32(scale), the sum rounded once as
        # the int64 sum's cast is (b exact in float32)
        bias = np.asarray(batched(readout.bias), np.int64)
        if float(np.abs(bias).max(initial=0)) >= F32_EXACT:
            raise NotLowered("a readout bias beyond float32")
        b.rank = 1 + len(shape)
        b.output("logits", "Mul", [b.op("Add", [acc, b.const(bias.astype(np.float32))]),
                                   b.const(np.asarray(batched(readout.scale), np.float64)
                                           .astype(np.float32))])
        used = {i for n in b.nodes for i in n.input}
        b.inits = [t for t in b.inits if t.name in used]
        self.model = emit.model(b, art.input_shape, self.outputs, "sfn_cpu_graph",
                                "sfn-toolchain sim.cpu graph engine",
                                {f"keep/{k}" for k in keep if k in self.double} |
                                ({"counts"} if self.counts else set()))

    def _form(self, node, ins):
        if self.bound[node.name] >= F32_EXACT or any(i in self.double for i in node.inputs):
            return _wide(self, node, ins)
        fast = FORMS.get(node.kind)
        return fast(self, node, ins) if fast else None

    def fire_plan(self, node, src: str) -> FirePlan:
        return FirePlan(Fire(batched(node.bias), batched(node.threshold), node.lo, node.hi),
                        self.bound[src])


class _Counts:
    """The activity statistics of a counted run, computed in the model as what each kind's
    `apply` counts (sim.ops; the program counts the same): a neuron's nonzero payloads and
    Σ|payload|; a dense layer's nonzero inputs (times its outputs); a convolution's or sum
    pool's nonzero inputs per position times the positions each reaches (fan-out map), times
    the output channels per input channel; an add's nonzero inputs; an elementwise product's
    pairs of nonzero operands; an activation matrix product's Σ_k (nonzero a in column k)·
    (nonzero b in row k). Kinds that count nothing (index maps, pools of maxima, constants, the
    readout) add nothing; each kind says which rule is its own (`Node.synops`); a kind that
    does not say leaves counted runs to the program (NotLowered).

    Every count is first a per-sample sum in float32 (exact: a node holds at most 2²²
    elements, a payload sum is taken in float64 where its bound passes 2²⁴), then float64;
    the per-sample columns are summed over the batch in one reduction, output `counts`, and
    `outputs` says which node and LayerStats field each entry adds to, with which factor."""

    def __init__(self, lw: Lowering, values: dict):
        self.lw, self.values, self.b = lw, values, lw.b
        self.masks: dict[str, str] = {}
        self.nonzero: dict[str, str] = {}
        self.columns: list[str] = []
        self.outputs: list[tuple[str, str, int]] = []
        for node in lw.art.nodes:
            self._node(node)
        b = self.b
        if self.columns:
            table = self.columns[0] if len(self.columns) == 1 else \
                b.op("Concat", self.columns, axis=1)
            b.output("counts", "ReduceSum", [table, b.const([0], np.int64)], keepdims=0)

    def _rank(self, name: str) -> int:
        return 1 + len(self.lw.nodes[name].shape)

    def _sample_sum(self, x: str, rank: int, double: bool = False) -> str:
        """Σ over every axis but the batch's of x (of that rank), as a (B, 1) float64 column;
        `double`: x is float64 already."""
        b = self.b
        if rank > 1:
            x = b.op("ReduceSum", [x, b.const(list(range(1, rank)), np.int64)], keepdims=0)
        return b.op("Unsqueeze", [x if double else b.op("Cast", [x], to=b.DOUBLE),
                                  b.const([1], np.int64)])

    def _mask(self, name: str) -> str:
        """1 where node `name`'s value is nonzero, else 0 (its float dtype): Sign(|v|)."""
        if name not in self.masks:
            v = self.values[name]
            self.masks[name] = self.b.op("Sign", [v if name in self.lw.nonneg else
                                                  self.b.op("Abs", [v])])
        return self.masks[name]

    def _nonzero(self, name: str) -> str:
        if name not in self.nonzero:
            self.nonzero[name] = self._sample_sum(self._mask(name), self._rank(name))
        return self.nonzero[name]

    def _add(self, column: str, node: str, field: str, factor: int = 1) -> None:
        self.columns.append(column)
        self.outputs.append((node, field, int(factor)))

    def _node(self, node) -> None:
        b, rule, name = self.b, node.synops, node.name
        if rule is None or (rule == "window" and self._rank(node.inputs[0]) < 3):
            raise NotLowered(f"counting {node.kind} {name!r} is the program's")
        if node.role == NEURON:
            self._add(self._nonzero(name), name, "spikes")
            v = self.values[name]
            double = name in self.lw.double or \
                math.prod(node.shape) * self.lw.bound[name] >= F32_EXACT
            if double and name not in self.lw.double:
                v = b.op("Cast", [v], to=b.DOUBLE)
            self._add(self._sample_sum(b.op("Abs", [v]), self._rank(name), double), name,
                      "payload")
        elif rule == "outputs":
            self._add(self._nonzero(node.inputs[0]), name, "synops", node.shape[0])
        elif rule == "window":
            src = node.inputs[0]
            rank = self._rank(src)
            per_position = b.op("ReduceSum", [self._mask(src), b.const([1], np.int64)],
                                keepdims=0)              # (B, *rest): exact in float32
            fan = node.fanout(tuple(self.lw.nodes[src].shape[-2:])).astype(np.float64)
            if fan.ndim > rank - 2:        # rest shorter than the map: its leading axes summed
                fan = fan.sum(axis=tuple(range(fan.ndim - (rank - 2))))
            weighted = b.op("Mul", [b.op("Cast", [per_position], to=b.DOUBLE),
                                    b.const(fan, np.float64)])
            self._add(self._sample_sum(weighted, rank - 1, double=True), name, "synops",
                      node.shape[0] // node.window()[0])
        elif rule == "inputs":
            for i in node.inputs:
                self._add(self._nonzero(i), name, "synops")
        elif rule == "pairs":
            both = b.op("Mul", [self._mask(i) for i in node.inputs])
            self._add(self._sample_sum(both, 1 + len(node.shape)), name, "synops")
        elif rule == "inner":
            a, c = (self._mask(i) for i in node.inputs)
            cols = b.op("ReduceSum", [a, b.const([-2], np.int64)], keepdims=0)
            rows = b.op("ReduceSum", [c, b.const([-1], np.int64)], keepdims=0)
            pairs = b.op("Mul", [b.op("Cast", [cols], to=b.DOUBLE),
                                 b.op("Cast", [rows], to=b.DOUBLE)])
            self._add(self._sample_sum(pairs, len(node.shape), double=True), name, "synops")
        elif rule:
            raise NotLowered(f"counting {node.kind} {name!r} ({rule!r}) is the program's")


def _wide(lw: Lowering, node, ins) -> str:
    """A value whose static bound float32 does not hold (a LayerNorm's sum of many features,
    say), or one computed from such a value, in float64 tensors: a whole-axis sum pool as
    ReduceSum, a sum of shifted terms, and the index maps between them (which keep the dtype);
    what comes out below 2²⁴ is cast back to float32. Anything else is left to the program."""
    b, name = lw.b, node.name
    wide_in = [i in lw.double for i in node.inputs]
    double = lambda k: ins[k] if wide_in[k] else b.op("Cast", [ins[k]], to=b.DOUBLE)
    if node.kind in ("select", "reshape", "transpose") and all(wide_in):
        lw.double.add(name)
        return node.emit(b, ins)
    axes = node.whole_axes(b.in_shapes[0]) if hasattr(node, "whole_axes") else None
    if axes:                    # a sum pool over whole rows
        out = b.op("ReduceSum", [double(0), b.const(axes, np.int64)], keepdims=1)
    elif node.kind == "add" and all(float(np.abs(g).max(initial=0)) * lw.bound[i] < 2 ** 53
                                    for g, i in zip(node.gains, node.inputs)):
        out = None
        for k, (gain, exp) in enumerate(zip(node.gains, node.exps)):
            term = b.op("Mul", [double(k), b.const(batched(gain) * 2.0 ** exp, np.float64)])
            term = b.floor_below_one(term, exp)
            out = term if out is None else b.op("Add", [out, term])
    else:
        raise NotLowered(f"{node.kind} {name!r}: values beyond float32's exact integers "
                         f"(up to {max([lw.bound[i] for i in node.inputs] + [lw.bound[name]]):.4g})")
    if lw.bound[name] >= F32_EXACT:
        lw.double.add(name)
        return out
    return b.op("Cast", [out], to=b.FLOAT)


def _named(b, tensor: str, name: str) -> str:
    """Rename the op output `tensor` to the graph output `name` everywhere (an Identity would
    cost a kernel call), or add the Identity when no op makes it (the model input)."""
    if not any(tensor in n.output for n in b.nodes):
        return b.output(name, "Identity", [tensor])
    for n in b.nodes:
        for field in (n.input, n.output):
            for i, t in enumerate(field):
                if t == tensor:
                    field[i] = name
    return name


def _input(lw: Lowering, node, ins):
    """The encoder (the reference's form), and one number that says whether the host has
    anything to do: `flag` = Σ |z − clip(z)| over the batch (z the encoded input before the
    clip) is 0 when no input was clipped and every input is finite (NaN or ∞ when one is not:
    z is then NaN or ±∞ and so is z − clip(z), whatever the clip makes of a NaN; > 0 when some
    were clipped);
    Engine.run then refuses the batch as sim.results.check_input does, or counts its clipped
    inputs."""
    b = lw.b
    if max(abs(node.lo), abs(node.hi)) >= F32_EXACT:
        raise NotLowered(f"input {node.name!r}: levels beyond float32")
    z = node.encoded(b)
    out = node.clipped(b, z)
    b.output("flag", "ReduceL1", [b.op("Sub", [z, out])], keepdims=0)
    lw.encoder = node
    return out


def _neuron(lw: Lowering, node, ins):
    """The one-pass neuron in float32 (module docstring), or the table neuron's gather."""
    if node.fire == "adaptive":
        return _table(lw, node, ins)
    if not program.one_pass(node):
        raise NotLowered(f"neuron {node.name!r} keeps a state")
    src = node.inputs[0]
    b = lw.b
    if src in lw.biased:          # its product added the offset (_weighted)
        q = b.op("Mul", [ins[0], b.const(lw.biased[src])])
        lw.reciprocals.append(q)
        return _clipped(b, q, node)
    plan = lw.fire_plan(node, src)
    if plan.saturate:
        raise NotLowered(f"neuron {node.name!r} may saturate its state (counted by the program)")
    if plan.dtype is not np.float32:
        return None
    v = b.op("Add", [ins[0], b.const(plan.offset)])
    if plan.reciprocal:
        q = b.op("Mul", [v, b.const(plan.factor)])
        lw.reciprocals.append(q)
    else:
        q = b.op("Div", [v, b.const(plan.factor)])
    return _clipped(b, q, node)


def _clipped(b, q: str, node) -> str:
    """clip(floor(q), lo, hi)."""
    return b.op("Clip", [b.op("Floor", [q]), b.const(np.float32(node.lo)),
                         b.const(np.float32(node.hi))])


def _table(lw: Lowering, node, ins):
    """payload[#{k : v ≥ t_k}] as table[clamp(I, l − b, h − b) + b + start − l]
    (program._table's gather; program.table_bands)."""
    src = node.inputs[0]
    bands = program.table_bands(batched(node.thresholds), node.payload)
    if bands is None:
        return None
    table, start, low, high, row = bands
    shape = (1,) + tuple(node.shape)
    bias = np.broadcast_to(np.asarray(batched(node.bias), np.int64), shape)
    if lw.bound[src] + float(np.abs(bias).max(initial=0)) > semantics.V_MAX:
        raise NotLowered(f"neuron {node.name!r} may saturate its state (counted by the program)")
    row = np.broadcast_to(row, shape)
    lo, hi, off = low[row] - bias, high[row] - bias, start[row] + bias
    if max(float(np.abs(a).max(initial=0)) for a in (lo, hi, off)) >= F32_EXACT or \
            lw.bound[src] >= F32_EXACT:
        return None
    b = lw.b
    v = ins[0]
    if _uniform(lo) and _uniform(hi):
        v = b.op("Clip", [v, b.const(np.float32(lo.flat[0])), b.const(np.float32(hi.flat[0]))])
    else:
        v = b.op("Max", [b.op("Min", [v, b.const(_compact(hi))]), b.const(_compact(lo))])
    offset = np.float32(off.flat[0]) if _uniform(off) else _compact(off)
    idx = b.op("Cast", [b.op("Add", [v, b.const(offset)])], to=b.INT64)
    narrow = fused.narrowest(table)
    out = b.op("Gather", [b.const(table.astype(narrow), narrow), idx], axis=0)
    return b.op("Cast", [out], to=b.FLOAT) if narrow is not np.float32 else out


def _uniform(a: np.ndarray) -> bool:
    return a.size == 0 or bool(np.all(a == a.flat[0]))


def _compact(a: np.ndarray) -> np.ndarray:
    """a (1, *shape) as float32, reduced along every axis where it does not vary (a
    per-channel array stays (1, C, 1, 1): the elementwise op broadcasts it)."""
    a = np.asarray(a)
    for axis in range(a.ndim):
        first = np.take(a, [0], axis=axis)
        if a.shape[axis] > 1 and np.array_equal(np.broadcast_to(first, a.shape), a):
            a = first
    return a.astype(np.float32)


def _weighted(lw: Lowering, node, ins, conv: bool):
    """A convolution or dense layer in float32 (every partial sum below Σ|w|·max|x| < 2²⁴, or
    below the larger one-sided sum max(Σw⁺, Σ|w⁻|)·max x for a never-negative input).

    When it alone feeds a one-pass neuron, the neuron's offset is its bias and the neuron
    multiplies by fl(1/θ') (`Lowering.biased`): with exponent e ≥ 0 the weights carry 2^e and
    v' = I + b + θ//2 over θ' = θ; with e < 0 the weights stay integers and
    v' = A + (b + θ//2)·2^−e over θ' = θ·2^−e, since floor((floor(A·2^e) + o)/θ) =
    floor((A + o·2^−e)/(θ·2^−e)) for integers o, θ — the shift's floor is never taken. Exact
    while |v'| + ½ < 2²² (kernels.Fire.reciprocal) and the neuron cannot saturate. Otherwise
    2^e goes into the weights (exact: the partial sums are multiples of 2^e below 2²⁴·2^e),
    floored after when e < 0."""
    w = node.weight.astype(np.float64)
    acc = _accumulator(node.weight, (1, 2, 3) if conv else (1,), lw.b,
                       node.inputs[0] in lw.nonneg)
    if acc >= F32_EXACT:
        return None
    exp = int(node.weight_exp)
    b = lw.b
    scale, bias = 2.0 ** exp, None
    neuron = lw.fused.get(node.name)
    if neuron is not None and neuron.fire == "uniform":
        plan = lw.fire_plan(neuron, node.name)
        up = 2 ** max(-exp, 0)
        offset = program._channelwise(plan.fire.offset * up, tuple(node.shape))
        if plan.dtype is np.float32 and not plan.saturate and offset is not None and \
                acc * 2.0 ** max(exp, 0) + float(np.abs(offset).max(initial=0)) + 0.5 \
                < 2 ** 22:
            scale = 2.0 ** max(exp, 0)
            bias = b.const((offset + 0.5).astype(np.float32))
            lw.biased[node.name] = (1.0 / (plan.fire.theta * up)).astype(np.float32)
    weight = (w * scale).astype(np.float32)
    if conv:
        out = node._conv(b, ins[0], weight, bias)
    else:
        out = b.op("Gemm", [ins[0], b.const(weight)] + ([bias] if bias else []), transB=1)
    return b.op("Floor", [out]) if exp < 0 and bias is None else out


def _conv(lw, node, ins):
    return _weighted(lw, node, ins, True)


def _dense(lw, node, ins):
    return _weighted(lw, node, ins, False)


def _product(lw: Lowering, node, ins):
    """a·b or a @ b and the rounded shift in float32 when exact (program's product)."""
    inner = float(node.inner) if node.kind == "matmul" else 1.0
    shift = int(node.shift)
    half = 2.0 ** (shift - 1) if shift else 0.0
    a, c = (lw.bound[i] for i in node.inputs)
    if inner * a * c + half >= F32_EXACT:
        return None
    b = lw.b
    p = b.op("MatMul" if node.kind == "matmul" else "Mul", list(ins))
    if not shift:
        return p
    p = b.op("Add", [p, b.const(np.float32(half))])
    return b.op("Floor", [b.op("Mul", [p, b.const(np.float32(2.0 ** -shift))])])


def _add(lw: Lowering, node, ins):
    """Σ shift(g·x, e) with the multiplication left out of gain-1, exponent-0 terms (float32:
    every unshifted term and the sum below 2²⁴)."""
    if node.magnitude([lw.bound[i] for i in node.inputs]) >= F32_EXACT or \
            any(float(np.abs(g).max(initial=0)) * lw.bound[i] >= F32_EXACT
                for g, i in zip(node.gains, node.inputs)):
        return None            # the kind's own form: terms in float64 (or refused)
    b = lw.b
    terms = []
    for g, e, x in zip(node.gains, node.exps, ins):
        g = np.asarray(batched(g))
        if e == 0 and bool(np.all(g == 1)):
            terms.append(x)
            continue
        terms.append(b.floor_below_one(b.op("Mul", [x, b.const(g * 2.0 ** e)]), e))
    out = terms[0]
    for t in terms[1:]:
        out = b.op("Add", [out, t])
    return out


def _readout(lw: Lowering, node, ins):
    return ins[0]           # the accumulator is the model's output; the driver reads out


FORMS = {"input": _input, "neuron": _neuron, "conv": _conv, "dense": _dense,
         "product": _product, "matmul": _product, "add": _add, "readout": _readout}


class Engine:
    """The lowered model of one artifact with its onnxruntime sessions (one per thread count,
    made on first use, `caller`), and what a run needs besides (`simulate`), prepared once."""

    def __init__(self, art: Artifact, keep=(), count: bool = False):
        self.art = art
        self.lowering = Lowering(art, keep, count)
        self.bytes = self.lowering.model.SerializeToString()
        self.keep = tuple(keep)
        self.names = ["accumulator", "logits", "flag"] + [f"keep/{k}" for k in self.keep] + \
            (["counts"] if self.lowering.counts else [])
        self.input_shape = tuple(art.input_shape)
        readout = art.node(art.output)
        self.softmax = readout.softmax
        self.shape = tuple(readout.shape)
        self.neurons = [(n.name, math.prod(n.shape) if n.role == "neuron" else 0)
                        for n in art.nodes]
        self.sessions = ort_ops.Sessions(self.bytes, UNSAFE)
        self.refused: NotLowered | None = None     # onnxruntime would not load the model

    def caller(self, threads: int):
        """The call that runs the model on `threads` threads: run(names, feeds, options) of
        an onnxruntime session made on first use (NotLowered where onnxruntime refuses the
        model, remembered)."""
        if self.refused is not None:
            raise self.refused
        try:
            return self.sessions.for_threads(threads)
        except Exception as exc:  # noqa: BLE001 - any refusal: the program runs it
            self.refused = NotLowered("onnxruntime refused the lowered model: "
                                      f"{_first_line(exc)}")
            raise self.refused from exc

    def run(self, x: np.ndarray, threads: int) -> tuple:
        """(accumulator int64, logits, inputs clipped, [kept values, int64], [count totals])
        of one float32 batch of finite values (a ShapeError from sim.results.check_input
        otherwise)."""
        run = self.caller(threads)
        try:
            acc, logits, flag, *rest = run(self.names, {"input": x}, None)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types
            raise SimulationError(f"the graph engine's onnxruntime run failed: "
                                  f"{_first_line(exc)}") from exc
        clipped = 0
        if flag.item() != 0:      # a non-finite input (refused here) or clipped ones (counted)
            check_input(self.art, x)
            enc = self.lowering.encoder
            clipped = encode_input_exact(x, enc.inv_scale, enc.lo, enc.hi)[1]
        kept, totals = rest[:len(self.keep)], (rest[len(self.keep)] if self.lowering.counts
                                               else ())
        return acc.astype(np.int64), logits, clipped, [v.astype(np.int64) for v in kept], totals

    def simulate(self, x: np.ndarray, threads: int, batch_size: int = 1024,
                 progress=None) -> SimResult:
        """What sim.cpu.run returns for float inputs x (checked as every backend checks them,
        sim.results.check_input: shape and dtype here, finiteness by the model), batch by batch
        through onnxruntime: the readout, the inputs clipped, the kept values in `recorded`,
        the activity counts of a counted engine."""
        if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and
                x.shape[1:] == self.input_shape and x.ndim == len(self.input_shape) + 1):
            x = check_input(self.art, x)
        stats = {name: LayerStats(neurons=k) for name, k in self.neurons}
        parts = []
        for start in range(0, len(x), batch_size):
            parts.append(self.run(x[start:start + batch_size], threads))
            if progress is not None:
                progress(len(parts[-1][0]))
        for _, _, clipped, _, totals in parts:
            stats[self.art.input].clipped += clipped
            for (node, field, factor), total in zip(self.lowering.counts, totals):
                setattr(stats[node], field, getattr(stats[node], field) + int(total) * factor)
        # one batch (the common case): its arrays themselves, no copy (driver.joined)
        empty = lambda shape, dtype: (lambda: np.zeros((0,) + tuple(shape), dtype))
        recorded = {name: joined([p[3][i] for p in parts],
                                 empty(self.lowering.nodes[name].shape, np.int64))
                    for i, name in enumerate(self.keep)}
        return SimResult(joined([p[1] for p in parts], empty(self.shape, np.float32)),
                         joined([p[0] for p in parts], empty(self.shape, np.int64)), stats,
                         len(x), 1, recorded, self.softmax)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


ENGINES: dict = {}


class _Slot:
    """An artifact's entry in ENGINES: how often it was asked for, and its engine once made."""

    def __init__(self):
        self.asked = 0
        self.engine: Engine | NotLowered | None = None


def engine(art: Artifact, keep=(), now: bool = True,
           count: bool = False) -> Engine | NotLowered | None:
    """The engine for `art` (keeping the values of `keep`, counting activity when `count`), or
    why it has none; made once per artifact (program.cached). now=False (sim.cpu.run's default
    choice): None the first time — lowering and onnxruntime's session cost more than a single
    small run gains (a compile's one check of its calibration batch, say) — and the engine from
    the second time on."""
    slot = program.cached(ENGINES, (id(art), tuple(keep), bool(count)), art, _Slot)
    slot.asked += 1
    if slot.engine is None and (now or slot.asked > 1):
        try:
            slot.engine = Engine(art, keep, count)
        except NotLowered as exc:
            slot.engine = exc
    return slot.engine
