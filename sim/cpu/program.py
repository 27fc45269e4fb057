"""An artifact compiled for sim.cpu's batched runner: one operation per node, in graph order.

What does not depend on the data is decided once, when the program is built: which values are
non-negative, a bound on every value the graph proves one for (inputs and neurons by their
levels, products and sums from those), hence the dtype each product is exact in, the weights
cast to it, which dense/conv/add adds its neuron's offset (`fusions`), which products run in
int8 (torch_ops: the CPU's exact class) and whether their neuron fires inside the kernel, which
values are emitted as uint8 for an int8 reader, and the fire constants. A bound the graph
cannot prove (a product whose static bound is too loose for float32) is measured on the data
when a reader needs it. Inside a step values are exact integers held as torch tensors (numpy
arrays on the int64 and numpy paths) in uint8, float32 or float64 wherever a bound proves that
exact (sim.kernels); the driver converts what it keeps to int64. A value is dropped after its
last reader.

A feed-forward run of T > 1 steps (or of binary spikes) runs layer by layer (`Program.steps`):
every node over all T steps at once, the stateful neurons in float (kernels.StatePlan).

Each kind with a fast form has a builder here, registered by kind (`@builds`); any other kind
runs its own int64 `evaluate` (sim.ops), so a new kind runs in sim.cpu before it has a fast
form. `mode`: "once" (T = 1, graded, feed-forward: no neuron keeps a state), "trials" (a
recurrent trial: only the leaky neurons, reset "none", keep theirs; every other neuron starts
afresh each step) or "state" (T > 1 or binary spikes: every neuron keeps its state). Where a
neuron starts afresh, the one-pass multi-threshold neuron applies.
"""
from __future__ import annotations

import math
import operator
import weakref

import numpy as np

from sim import driver, kernels, ops, semantics
from sim.artifact import Artifact
from sim.cpu import fused, ort_ops, torch_ops
from sim.cpu.kernels import (Fire, FirePlan, StatePlan, conv2d_exact, dense_exact,
                             encode_input_exact, encode_input_u8, sum_pool_exact)
from sim.cpu.weights import Weights
from sim.driver import as_int
from sim.ops.base import batched, edits
from sim.results import LayerStats

BUILDERS: dict = {}


def builds(*kinds: str):
    """Register `fn(program, node) -> op` as the fast form of the given kinds."""
    def register(fn):
        for kind in kinds:
            BUILDERS[kind] = fn
        return fn
    return register


class Run(driver.Step):
    """One program step: the Step every node's `evaluate` reads, plus the values made so far
    (numpy arrays or torch tensors of exact integers), their bounds (static ones seeded, others
    measured once when asked), which products added their neuron's offset and per-step nonzero
    counts (per position, and totals). In the layer-major form (Program.steps) values hold all T steps stacked
    (T·B rows, step-major) or, for `steady` ones that no neuron precedes, the B rows every step
    shares; `reps` is T there (1 in a plain step)."""
    __slots__ = ("values", "bounds", "biased", "counts", "totals", "steady", "reps", "layered",
                 "done", "rules")

    def bound(self, name: str) -> float:
        b = self.bounds.get(name)
        if b is None:
            b = self.bounds[name] = self._derived(name)
        return b

    def _derived(self, name: str) -> float:
        """The bound a node's kept rule (Program.derived) gives from its inputs' bounds where
        they are known this step (no pass over the data), else max |value|."""
        rule = self.rules.get(name)
        if rule is not None and all(self._known(i) for i in rule[1]):
            return rule[0]([self.bound(i) for i in rule[1]])
        b = fused.measure(self.values[name])
        return kernels.max_abs(_np(self.values[name])) if b is None else b

    def _known(self, name: str) -> bool:
        """Whether a bound for `name` is found this step or follows from found ones."""
        if name in self.bounds:
            return True
        rule = self.rules.get(name)
        return rule is not None and all(self._known(i) for i in rule[1])

    def nonzero(self, name: str) -> np.ndarray:
        """A value's nonzero_counts per position (what a windowed synapse needs), computed
        once for all who count it."""
        c = self.counts.get(name)
        if c is None:
            c = self.counts[name] = kernels.nonzero_counts(_np(self.values[name]))
        return c

    def spikes(self, name: str) -> int:
        """A value's nonzero entries in all, computed once: the sum of its per-position counts
        when a windowed synapse made them, else one count of the comparison's booleans
        (several times faster than the per-position counts)."""
        n = self.totals.get(name)
        if n is None:
            c = self.counts.get(name)
            n = self.totals[name] = int(c.sum()) if c is not None else \
                int(np.count_nonzero(_np(self.values[name]) != 0))
        return n

    def rows(self, names, reader: str) -> list:
        """The values of `names` as the node `reader` reads them: the steady ones repeated over
        the T steps when the reader's own value is stacked (it mixes both, or it is a neuron
        reading steady values)."""
        ins = [self.values[i] for i in names]
        if self.reps > 1 and reader not in self.steady and any(i in self.steady for i in names):
            ins = [_repeat(v, self.reps) if i in self.steady else v for i, v in zip(names, ins)]
        return ins


def _np(v) -> np.ndarray:
    return v if isinstance(v, np.ndarray) else torch_ops.numpy(v)


def _repeat(v, reps: int):
    """v's rows repeated `reps` times, step-major (the same B samples at every step)."""
    if isinstance(v, np.ndarray):
        return np.concatenate([v] * reps)
    return v.repeat((reps,) + (1,) * (v.ndim - 1))


class Program:
    """The operations of one artifact in one mode (module docstring); `keep`: nodes whose values
    the caller reads after a step (never fused away)."""

    def __init__(self, art: Artifact, keep, mode: str, use_torch: bool):
        self.use_torch = use_torch
        self.afresh = mode in ("once", "trials")
        self.fused = fusions(art, keep) if self.afresh else {}
        self.static: dict[str, float] = {}
        self.rules: dict[str, tuple] = {}     # bounds found at run time: Run.bound
        self.nonneg = ops.nonnegative(art.nodes)
        self.fires: dict[str, Fire] = {}
        self.biased: set[str] = set()     # products that add their neuron's offset, statically
        self.u8: set[str] = set()         # values an int8 product reads: emitted as uint8
        self.output = art.output
        self.shapes = {n.name: tuple(n.shape) for n in art.nodes}
        self.ops = [BUILDERS.get(node.kind, _generic)(self, node) for node in art.nodes]
        # layer-major runs (`steps`): the values no stateful neuron precedes are the same at
        # every step
        self.steady = set()
        for node in art.nodes:
            if node.kind != "neuron" and node.role != "edge" and \
                    all(i in self.steady for i in node.inputs):
                self.steady.add(node.name)
        # a value is dropped after its last reader's operation (a large network's activations
        # are not all held at once), except what the driver reads after the step: the readout's
        # input, recorded nodes, and the sources of recurrent edges (next step's `previous`)
        last: dict[str, int] = {}
        for i, node in enumerate(art.nodes):
            for name in node.inputs:
                last[name] = i
        kept = set(keep) | {art.output} | {getattr(n, "source", None) for n in art.nodes}
        self.frees: list[list[str]] = [[] for _ in art.nodes]
        for name, i in last.items():
            if name not in kept:
                self.frees[i].append(name)

    def _run(self, s: driver.Step, reps: int = 1, layered: bool = False) -> Run:
        r = Run(s.x, s.previous, s.state, s.binary, s.count, s.stats)
        r.values, r.bounds, r.biased, r.done = {}, dict(self.static), set(), set()
        r.rules = self.rules
        r.counts, r.totals = {}, {}
        r.steady, r.reps, r.layered = (self.steady if layered else ()), reps, layered
        for op, free in zip(self.ops, self.frees):
            op(r)
            for name in free:
                r.values.pop(name, None)
        return r

    def step(self, s: driver.Step) -> dict[str, np.ndarray]:
        """Every node once for the timestep `s`: {node: its value as a numpy array}."""
        return {k: _np(v) for k, v in self._run(s).values.items()}

    def steps(self, s: driver.Step, timesteps: int, keep) -> tuple[np.ndarray, dict]:
        """A feed-forward run of `timesteps` steps on the same input, layer by layer: each node
        runs all steps at once (a product over T·B rows; a stateful neuron steps through its
        T slices), so a layer's input over every step is known before it runs. Returns the
        readout accumulator summed over the steps (int64) and the kept values, each summed
        over the steps."""
        r = self._run(s, timesteps, True)

        def summed(name):
            v = as_int(_np(r.values[name]))
            if name in r.steady:
                return v * timesteps
            return v.reshape((timesteps, -1) + v.shape[1:]).sum(axis=0)
        return summed(self.output), {k: summed(k) for k in keep}

    def fire(self, node) -> Fire:
        if node.name not in self.fires:
            self.fires[node.name] = Fire(batched(node.bias), batched(node.threshold), node.lo,
                                         node.hi)
        return self.fires[node.name]

    def derived(self, node, rule, kept: bool = False) -> None:
        """A static bound for `node` by `rule(input bounds)` when every input has one; else,
        for a rule that keeps its inputs' bound (`kept`: a value's entries moved, copied or
        compared, never summed), the rule, for a step to apply to the bounds it finds
        (Run.bound) instead of a pass over the data. A summing rule's bound would be looser
        than the value's own and push its readers to wider dtypes: that value is measured."""
        if all(i in self.static for i in node.inputs):
            self.static[node.name] = rule([self.static[i] for i in node.inputs])
        elif kept:
            self.rules[node.name] = (rule, tuple(node.inputs))


def _generic(p: Program, node):
    """Any kind without a fast form: its own int64 evaluation."""
    name, srcs = node.name, node.inputs

    def op(r):
        r.values[name] = node.evaluate([as_int(_np(v)) for v in r.rows(srcs, name)], r)
    return op


@builds("input")
def _input(p: Program, node):
    name, inv, lo, hi = node.name, node.inv_scale, node.lo, node.hi
    p.static[name] = float(max(abs(lo), abs(hi)))
    u8 = lo >= 0 and hi <= 255

    def op(r):
        if u8 and name in p.u8:       # an int8 product reads it
            r.values[name], clipped = encode_input_u8(r.x, inv, lo, hi)
        else:
            r.values[name], clipped = encode_input_exact(r.x, inv, lo, hi)
        # a layer-major run encodes once for all its steps: the reference clips every step
        r.stats[name].clipped += clipped * (r.reps if name in r.steady else 1)
    return op


def one_pass(node) -> bool:
    """The T = 1 multi-threshold neuron (semantics.fire_once) applies to this neuron node when
    it starts afresh (no state kept from an earlier step)."""
    return node.fire == "uniform" and node.reset == "subtract" \
        and node.decay == semantics.LEAK_ONE and node.start == "half"


@builds("neuron")
def _neuron(p: Program, node):
    name, src, lo, hi = node.name, node.inputs[0], node.lo, node.hi
    if node.fire == "adaptive":
        return _table(p, node)
    # in a trial, one_pass picks the neurons with reset "subtract": the ones whose state the
    # driver drops after every step (a leaky neuron, reset "none", keeps its own)
    if not (p.afresh and one_pass(node)):
        return _stateful(p, node)
    fire, use_torch = p.fire(node), p.use_torch
    p.static[name] = fire.levels
    # the fire's plan made here when its input's bound (so its form) is static; a product
    # whose dtype and bias wait for the data has no static bound
    plan = FirePlan(fire, p.static[src], src in p.biased) if src in p.static else None

    def op(r):       # the one-pass neuron, in floats
        if name in r.done:          # fired inside its int8 product (`fired` in _product)
            return
        fp = plan or FirePlan(fire, r.bound(src), src in r.biased)
        out, sat = fp.run(r.values[src], use_torch, name in p.u8)
        r.values[name] = out
        if sat or r.count:
            count_neuron(r.stats[name], _np(out), sat, lo, hi, r.count,
                         (lambda: r.spikes(name)) if r.count else None)
    return op


# a table neuron runs as one gather when its lookup table has at most this many entries
TABLE_ENTRIES = 2 ** 24


def table_bands(thresholds: np.ndarray, payload: np.ndarray):
    """A table neuron's payloads as one lookup table: its distinct threshold rows r laid in
    consecutive bands, row r's band holding payload[#{k : v ≥ t_rk}] for v from
    l_r = max(t_r0 − 1, −V_MAX) to h_r = min(t_rK−1, V_MAX) (below l_r + 1 the count is 0, from
    h_r on it is the one at h_r, and the 24-bit saturation clips to within ±V_MAX, so clamping
    the state to [l_r, h_r] keeps every payload). Returns (table int64, start − l per row, l per
    row, h per row, the row of each neuron), or None when the table exceeds TABLE_ENTRIES."""
    t = np.asarray(thresholds, np.int64)
    k = t.shape[-1]
    distinct, row = np.unique(t.reshape(-1, k), axis=0, return_inverse=True)
    low = np.maximum(distinct[:, 0] - 1, -semantics.V_MAX)
    high = np.minimum(distinct[:, -1], semantics.V_MAX)
    width = high - low + 1
    if int(width.sum()) > TABLE_ENTRIES:
        return None
    start = np.concatenate([[0], np.cumsum(width)[:-1]])
    pay = np.asarray(payload, np.int64)
    table = np.concatenate([pay[np.searchsorted(d, np.arange(lo, hi + 1), side="right")]
                            for d, lo, hi in zip(distinct, low, high)])
    return table, start - low, low, high, row.reshape(t.shape[:-1])


def _table(p: Program, node):
    """A table neuron (adaptive fire: n = payload[#{k : sat(I + b) ≥ t_k}], T = 1 only, no
    state kept) as one gather from table_bands' table:
    table[clamp(I, l − b, h − b) + b + start − l] per neuron, the index an exact integer in
    float32 when the input and those per-neuron bounds are below 2²⁴, else in float64, the
    table in the narrowest integer dtype (a smaller table is a faster gather) and its payloads
    made float32, or uint8 for an int8 reader. A table over TABLE_ENTRIES entries, or an input no float holds exactly,
    takes the int64 definition."""
    generic = _generic(p, node)
    bands = table_bands(batched(node.thresholds), node.payload) if p.use_torch else None
    if bands is None:
        return generic
    table, start, low, high, row = bands
    name, src = node.name, node.inputs[0]
    plo, phi = int(table.min()), int(table.max())
    p.static[name] = float(max(abs(plo), abs(phi)))
    shape = (1,) + tuple(node.shape)
    bias = np.broadcast_to(np.asarray(batched(node.bias), np.int64), shape)
    bias_max = float(np.abs(bias).max(initial=0))
    row = np.broadcast_to(row, shape)
    params = [low[row] - bias, high[row] - bias, start[row] + bias]
    # float32 when the clamp's bounds and the offset are: the index, their exact sum, lies in
    # [0, table.size) ⊂ [0, 2²⁴]
    small = max(float(np.abs(a).max(initial=0)) for a in params) < kernels.F32_EXACT
    consts: dict = {}

    def const(dtype):
        if dtype not in consts:
            consts[dtype] = [torch_ops.tensor(np.ascontiguousarray(a, dtype)) for a in params]
        return consts[dtype]
    bias64 = torch_ops.tensor(np.ascontiguousarray(bias, np.float64))
    narrow = table.astype(fused.narrowest(table))
    lut = torch_ops.tensor(narrow)      # the same memory as the kernel's table
    one_pass = fused.TableKernel(narrow, start, low, high, row, node.shape, bias) \
        if fused.available() else None

    def op(r):
        bound = r.bound(src)
        x = r.values[src]
        dtype = np.float32 if small and bound < kernels.F32_EXACT else \
            np.float64 if bound + bias_max + table.size < kernels.F64_EXACT else None
        if dtype is None:
            return generic(r)
        sat = 0
        if bound + bias_max > semantics.V_MAX:
            sat = torch_ops.count_over(x, bias64, semantics.V_MAX)
        out_dtype = np.uint8 if name in p.u8 and plo >= 0 and phi <= 255 else np.float32
        out = one_pass(x, dtype, out_dtype) if one_pass is not None and fused.worth(x) \
            else None
        out = torch_ops.tensor(out) if out is not None else \
            torch_ops.table(torch_ops.tensor(x, dtype), *const(dtype), lut, out_dtype)
        r.values[name] = out
        if sat or r.count:
            count_neuron(r.stats[name], _np(out), sat, plo, phi, r.count,
                         (lambda: r.spikes(name)) if r.count else None)
    return op


def _stateful(p: Program, node):
    """A neuron that keeps its state from step to step (T > 1, binary spikes): the uniform fire
    with reset by subtraction and any leak in float arithmetic (kernels.StatePlan) when torch
    is there, stepping through the T slices of a layer-major run; anything else (adaptive,
    reset "none", or an input no float dtype holds) its own int64 evaluation."""
    generic = _generic(p, node)
    if not p.use_torch or node.fire != "uniform" or node.reset != "subtract":
        return generic
    name, src = node.name, node.inputs[0]
    plans: dict = {}

    p.static[name] = float(max(abs(node.lo), abs(node.hi)))    # the payload q·K: |q·K| ≤ it

    def op(r):
        if not r.layered:
            # a step of the driver's loop (a recurrent trial) keeps the state in its dict:
            # int64, as defined
            return generic(r)
        key = (r.binary, r.bound(src))
        plan = plans.get(key)
        if plan is None:
            plan = plans[key] = StatePlan(node, r.binary, key[1])
        if plan.dtype is None:
            return generic(r)
        reps = 1 if src in r.steady else r.reps
        out, sat = plan.run(r.values[src], r.reps, reps, name in p.u8)
        r.values[name] = out
        r.stats[name].saturations += sat
        if r.count:
            o = _np(out)
            r.stats[name].spikes += r.spikes(name)
            r.stats[name].payload += int(np.abs(o.astype(np.int64) if o.dtype == np.uint8
                                                else o).sum(dtype=np.float64))
    return op


@builds("readout")
def _readout(p: Program, node):
    name, src = node.name, node.inputs[0]
    p.derived(node, lambda b: b[0])

    def op(r):
        r.values[name] = r.values[src]
    return op


# batches below INT8_MIN_ROWS rows run the float kernel: oneDNN's int8 kernels cost more per
# call, which a single sample of a small layer does not repay; a layer of INT8_ONE_ROW_MACS
# multiply-accumulates per sample or more runs in int8 from one row (its prepacked weights:
# the float kernel reorders its weights every call)
INT8_MIN_ROWS = 2
INT8_ONE_ROW_MACS = 2 ** 19


@builds("dense", "conv")
def _product(p: Program, node):
    """Exact float products, or int8 ones where they apply (module docstring)."""
    name, src, dense = node.name, node.inputs[0], node.connectivity == "full"
    w, use_torch = Weights(node), p.use_torch
    neuron = p.fused.get(name)
    fire = p.fire(neuron) if neuron is not None else None
    bx = p.static.get(src)
    fixed = None
    nonneg = src in p.nonneg
    if bx is not None and w.sums(nonneg)[0] * bx < kernels.F32_EXACT:
        fixed = w.exact(bx, None, fire, nonneg)
        p.static[name] = fixed[1]
        if fixed[2] is not None:
            p.biased.add(name)
    # a non-negative payload within the CPU's exact int8 class (torch_ops.Int8.usable), a
    # float32 result: oneDNN's u8·s8 product, its input emitted as uint8 by its producer
    int8 = use_torch and nonneg and w.int8() is not None
    static8 = int8 and fixed is not None and fixed[0].dtype == np.float32 and \
        w.int8().usable(bx)
    # an 8-bit payload times 8-bit weights outside that class (pixels into a dense layer, on
    # a CPU without VNNI): onnxruntime's exact u8·u8 product (sim.cpu.ort_ops), its int32
    # accumulator exact in float32 under the static float32 bound
    wide = None
    if dense and use_torch and nonneg and not static8 and fixed is not None and \
            fixed[0].dtype == np.float32 and bx <= 255 and \
            node.weight.shape[1] <= ort_ops.MAX_FAN_IN and ort_ops.usable():
        m = torch_ops.mantissas(node.weight, node.weight_exp)
        if m is not None:
            wide = (ort_ops.WideDense(m[0]), 2.0 ** m[1])
            p.u8.add(src)
    if static8:
        p.u8.add(src)
    min_rows = 1 if node.macs() >= INT8_ONE_ROW_MACS else INT8_MIN_ROWS
    per_input = node.weight.shape[0] // (1 if dense else node.groups)
    out_hw = node.shape[-2:]
    biases: dict = {}
    # the neuron this product alone feeds fired inside the int8 kernel, its uint8 payloads
    # straight out (torch_ops.fired: exact under fire_fits, without saturation, levels within
    # [0, 255], θ and offset per channel)
    fired = None
    if static8 and neuron is not None and fixed[2] is not None:
        theta, offset = _channelwise(fire.theta, node.shape), _channelwise(fire.offset, node.shape)
        if theta is not None and offset is not None and fire.lo >= 0 and fire.hi <= 255 and \
                not FirePlan(fire, fixed[1], biased=True).saturate and \
                torch_ops.fire_fits(w.onesided * bx, fire.offset_max, fire.theta_max):
            fired = torch_ops.fired(w.int8(), theta, offset)
    nname = neuron.name if neuron is not None else None

    def op(r):
        x = r.values[src]
        if fired is not None and x.shape[0] >= min_rows:
            n = torch_ops.product_fire_int8(x, w.int8(), fired, fire.lo, fire.hi)
            if n is not None:
                # the product's value is the neuron's: nobody else reads it (fusions)
                r.values[name] = r.values[nname] = n
                r.done.add(nname)
                if r.count:
                    count_neuron(r.stats[nname], _np(n), 0, fire.lo, fire.hi, True,
                                 lambda: r.spikes(nname))
                    _count_product(r, node, name, src, x, dense, per_input)
                return
        wf, bound, bias = fixed if fixed is not None else \
            w.exact(r.bound(src), _np(x), fire, nonneg)
        if wf is None:
            r.values[name] = node.evaluate([as_int(_np(x))], r)
            return
        out = None
        if int8 and wf.dtype == np.float32 and x.shape[0] >= min_rows and \
                w.int8().usable(r.bound(src)):
            if bias is not None and id(bias) not in biases:
                biases[id(bias)] = torch_ops.tensor(np.asarray(bias, np.float32).reshape(-1))
            out = torch_ops.product_int8(x, w.int8(), None if bias is None else biases[id(bias)])
        if out is None and wide is not None and x.shape[0] >= min_rows:
            out = torch_ops.scaled(wide[0](_np(x).reshape(x.shape[0], -1),
                                           torch_ops.threads()), wide[1], bias)
        if out is None and use_torch:
            out = torch_ops.dense(x, wf, wf.dtype, bias) if dense else \
                torch_ops.conv2d(x, wf, node.stride, node.pads, node.dilation, node.groups,
                                 wf.dtype, bias)
        if out is None:
            out = dense_exact(_np(x), wf, False, bias) if dense else \
                conv2d_exact(_np(x), wf, node.stride, node.pads, node.dilation, node.groups,
                             out_hw, False, bias)
        if w.floor:     # a negative exponent: the contract's right shift of the accumulator
            if isinstance(out, np.ndarray):
                np.floor(out, out=out)
            else:
                out.floor_()
        r.values[name] = out
        r.bounds[name] = bound
        if bias is not None:
            r.biased.add(name)
        if r.count:
            _count_product(r, node, name, src, x, dense, per_input)
    return op


def _count_product(r: Run, node, name: str, src: str, x, dense: bool, per_input: int) -> None:
    """A dense or conv node's synaptic operations on its input x (T times a steady one)."""
    reps = r.reps if src in r.steady else 1
    if dense:
        r.stats[name].synops += r.spikes(src) * per_input * reps
    else:
        r.stats[name].synops += node.window_synops(_np(x), r.nonzero(src)) * reps


def _channelwise(param: np.ndarray, shape) -> np.ndarray | None:
    """A batched neuron parameter as one value per channel (C,), or None when it varies
    within a channel."""
    full = np.broadcast_to(np.asarray(param)[0], tuple(shape)).reshape(shape[0], -1)
    return full[:, 0].copy() if (full == full[:, :1]).all() else None


# the inner dimension from which a stacked float32 matrix product goes to onnxruntime (the
# measurement: docs/performance.md, "Transformer kinds")
ORT_MATMUL_INNER = 16


@builds("product", "matmul")
def _activation_product(p: Program, node):
    """A product of two activations, elementwise with broadcasting or a batched matrix
    product, in float arithmetic on exact integers (torch_ops.product): the dtype from a bound
    on its partial sums plus the rounding's half (K·max|a|·max|b| for a matrix product), static
    when both inputs have one; a product no float holds exactly takes the int64 definition."""
    name, srcs, shift = node.name, node.inputs, int(node.shift)
    matmul = node.kind == "matmul"
    inner = float(node.inner) if matmul else 1.0
    half = 2.0 ** (shift - 1) if shift else 0.0
    generic = _generic(p, node)
    if not p.use_torch:
        return generic
    p.derived(node, node.magnitude)

    def op(r):
        bounds = [r.bound(i) for i in srcs]
        dtype = kernels.exact_dtype(inner * bounds[0] * bounds[1] + half)
        a, b = r.rows(srcs, name)
        out = None
        # a float32 product of stacked small matrices with an inner dimension of 16 or more
        # (attention's ·V): onnxruntime's MatMul (ort_ops.matmul), faster there than torch's
        # bmm; with fewer (Q·Kᵀ's head width) torch's strided bmm is the faster
        if matmul and dtype is np.float32 and a.shape[:-2] == b.shape[:-2] and \
                a.shape[-1] >= ORT_MATMUL_INNER and fused.worth(a) and ort_ops.matmul_usable():
            out = torch_ops.tensor(ort_ops.matmul(_np(a), _np(b), shift, torch_ops.threads()))
        if out is None and dtype is not None:
            out = torch_ops.product(a, b, dtype, shift, matmul)
        if out is None:
            return generic(r)
        r.values[name] = out
        r.bounds[name] = node.magnitude(bounds)
        if r.count:
            r.stats[name].synops += torch_ops.product_ops(a, b, matmul)
    return op


@builds("sumpool")
def _sumpool(p: Program, node):
    name, src, use_torch = node.name, node.inputs[0], p.use_torch
    taps = math.prod(node.kernel)
    p.derived(node, lambda b: b[0] * taps)

    def op(r):
        bound = r.bound(src) * taps
        dtype = kernels.exact_dtype(bound) or np.int64
        x = r.values[src]
        out = None
        if use_torch and dtype is not np.int64:
            out = torch_ops.sum_pool(x, node.kernel, node.stride, node.pads, node.shape[-2:],
                                     dtype)
        if out is None:
            xn = _np(x)
            out = sum_pool_exact(xn if dtype is not np.int64 else as_int(xn), node.kernel,
                                 node.stride, node.pads, node.shape[-2:], dtype)
        r.values[name] = out
        r.bounds[name] = bound
        if r.count:
            reps = r.reps if src in r.steady else 1
            r.stats[name].synops += node.window_synops(_np(x), r.nonzero(src)) * reps
    return op


@builds("maxpool")
def _maxpool(p: Program, node):
    name, src, use_torch = node.name, node.inputs[0], p.use_torch
    p.derived(node, lambda b: b[0], kept=True)
    nonneg = src in p.nonneg

    def op(r):
        x = r.values[src]
        out = torch_ops.max_pool(x, node.kernel, node.stride, node.pads, node.dilation,
                                 node.shape[-2:], nonneg) if use_torch else None
        r.values[name] = out if out is not None else kernels.max_pool(
            _np(x), node.kernel, node.stride, node.pads, node.dilation, node.shape[-2:])
    return op


@builds("add")
def _add(p: Program, node):
    name, srcs, use_torch = node.name, node.inputs, p.use_torch
    gains = [np.asarray(g, dtype=np.int64) for g in node.gains]
    peaks = [float(np.abs(g).max(initial=0)) * 2.0 ** int(e) for g, e in zip(gains, node.exps)]
    floors = [int(e) < 0 for e in node.exps]    # right-shift gains: each term floored
    if len(srcs) == 1 and int(node.exps[0]) == 0 and np.all(gains[0] == 1) and \
            name not in p.fused:
        return _identity(p, node)
    # the terms' products before the shift must be exact: Σ|g|·bound_i, unshifted
    unshifted = [float(np.abs(g).max(initial=0)) * max(1.0, 2.0 ** int(e))
                 for g, e in zip(gains, node.exps)]
    scaled: dict = {}         # dtype → the gains · 2^exp in it
    # the one-pass neuron this sum alone feeds: its offset (in the form its fire takes it, as
    # Weights.exact adds it to a product) joins the sum when both are exact in the same dtype
    neuron = p.fused.get(name)
    fire = p.fire(neuron) if neuron is not None else None
    offsets: dict = {}

    def forms(bound: float, exact: float):
        """(dtype, bound, offset or None) for a sum bounded by `bound` whose partial sums
        reach `exact`."""
        dtype = kernels.exact_dtype(max(bound, exact))
        if fire is None or dtype is None:
            return dtype, bound, None
        vbound = bound + fire.offset_max
        if fire.dtype(vbound) is not dtype or kernels.exact_dtype(max(vbound, exact)) \
                is not dtype:       # the neuron's plan takes the sum in its own dtype
            return dtype, bound, None
        key = (dtype, Fire.reciprocal(vbound, dtype))
        if key not in offsets:
            offsets[key] = fire.cast(dtype, key[1])[0]
        return dtype, vbound, offsets[key]

    static = static_raw = None     # the forms and the sum's bound (before any offset)
    if all(i in p.static for i in srcs):
        bounds = [p.static[i] for i in srcs]
        static_raw = sum(pk * b for pk, b in zip(peaks, bounds))
        static = forms(static_raw, max(u * b for u, b in zip(unshifted, bounds)))
        p.static[name] = static[1]
        if static[2] is not None:
            p.biased.add(name)

    # a sum whose unshifted products need float64 (a right-shift gain on a large current)
    # but stay below 2³¹ runs in int32, its result in the float dtype of its own bound
    int32 = [(np.asarray(g, np.int64) << max(int(e), 0)).astype(np.int32)[None]
             for g, e in zip(gains, node.exps)] \
        if all(np.abs(g).max(initial=0) * 2.0 ** max(int(e), 0) < 2 ** 31
               for g, e in zip(gains, node.exps)) else None
    shifts = [max(-int(e), 0) for e in node.exps]
    # one or two terms in one pass (sim.cpu.fused), the one-pass neuron this sum alone feeds
    # fired in the same pass (its plan for the sum's own bound: the offset not added first)
    one_pass: dict = {}       # None or (plan dtype, multiplying form) → fused.SumKernel
    plans: dict = {}          # the sum's bound → the neuron's plan (one kept)
    nname = neuron.name if neuron is not None else None
    u8 = neuron is not None and nname in p.u8 and fire.lo >= 0 and fire.hi <= 255

    def count_synops(r):       # one operation per nonzero input (T times a steady one)
        r.stats[name].synops += sum(r.spikes(i) * (r.reps if i in r.steady else 1)
                                    for i in srcs)

    def in_one_pass(r, ins, dtype, bound, raw) -> bool:
        if not (use_torch and dtype is not None and len(ins) <= 2 and fused.worth(ins[0])):
            return False
        if fire is not None:
            plan = plans.get(raw)
            if plan is None:
                plans.clear()
                plan = plans[raw] = FirePlan(fire, raw)
            if plan.dtype is None:
                return False
            key = (plan.dtype, plan.reciprocal)
            if key not in one_pass:
                one_pass[key] = fused.SumKernel(node.shape, gains, node.exps, plan)
            done = one_pass[key](ins, u8=u8)
            if done is None:
                return False
            r.values[name] = r.values[nname] = torch_ops.tensor(done[0])
            r.done.add(nname)    # the sum's value is the neuron's: nobody else reads it
            if done[1] or r.count:
                count_neuron(r.stats[nname], done[0], done[1], fire.lo, fire.hi, r.count,
                             (lambda: r.spikes(nname)) if r.count else None)
        else:
            if None not in one_pass:
                one_pass[None] = fused.SumKernel(node.shape, gains, node.exps)
            # the sum's own bound decides its dtype: the partial sums are exact in the
            # kernel's float64 whatever that is
            done = one_pass[None](ins, kernels.exact_dtype(bound))
            if done is None:
                return False
            r.values[name] = torch_ops.tensor(done[0])
            r.bounds[name] = done[1]     # the sum's max |·|: tighter than its proven bound
        if r.count:
            count_synops(r)
        return True

    def op(r):
        raw = static_raw if static else sum(pk * r.bound(i) for pk, i in zip(peaks, srcs))
        dtype, bound, offset = static or forms(
            raw, max(u * r.bound(i) for u, i in zip(unshifted, srcs)))
        ins = r.rows(srcs, name)
        if in_one_pass(r, ins, dtype, bound, raw):
            return
        if use_torch and dtype is not np.float32 and int32 is not None and \
                bound < kernels.F32_EXACT and \
                max(u * r.bound(i) for u, i in zip(unshifted, srcs)) < 2 ** 31 and \
                sum(u * r.bound(i) for u, i in zip(unshifted, srcs)) < 2 ** 31:
            total = torch_ops.add_terms_int32(list(zip(ins, int32, shifts)), np.float32)
            if total is not None:
                r.values[name] = total
                r.bounds[name] = bound
                if r.count:
                    count_synops(r)
                return
        if dtype is None:
            r.values[name] = node.evaluate([as_int(_np(i)) for i in ins], r)
            return
        if dtype not in scaled:
            scaled[dtype] = [(g * 2.0 ** int(e)).astype(dtype)[None]
                             for g, e in zip(gains, node.exps)]
        total = torch_ops.add_terms(list(zip(ins, scaled[dtype], floors)), dtype, offset) \
            if use_torch else None
        if total is None:
            for g, xi, fl in zip(scaled[dtype], ins, floors):
                term = np.multiply(g, _np(xi), dtype=dtype)
                if fl:
                    np.floor(term, out=term)
                total = term if total is None else np.add(total, term, out=total)
            if offset is not None:
                total += offset
        r.values[name] = total
        r.bounds[name] = bound
        if offset is not None:
            r.biased.add(name)
        if r.count:
            count_synops(r)
    return op


def _identity(p: Program, node):
    """An add of one term with gain 1: its input's value itself (a view, as an index map's)."""
    name, src = node.name, node.inputs[0]
    p.derived(node, lambda b: b[0], kept=True)

    def op(r):
        r.values[name] = r.values[src]
        if src in r.bounds:
            r.bounds[name] = r.bounds[src]
        if r.count:
            r.stats[name].synops += r.spikes(src) * \
                (r.reps if src in r.steady else 1)
    return op


@builds("concat")
def _concat(p: Program, node):
    name, srcs, axis = node.name, node.inputs, node.axis + 1
    p.derived(node, max, kept=True)

    def op(r):
        ins = r.rows(srcs, name)
        mixed = len({str(i.dtype) for i in ins}) > 1
        # inputs of mixed dtypes (a class token held as integers beside float tokens) join
        # in the float dtype their bound is exact in, not in int64
        common = kernels.exact_dtype(max(r.bound(i) for i in srcs)) \
            if p.use_torch and mixed else None
        if common is not None:
            r.values[name] = torch_ops.cat([torch_ops.tensor(i, common) for i in ins], axis)
        elif p.use_torch and all(not isinstance(i, np.ndarray) for i in ins) and not mixed:
            r.values[name] = torch_ops.cat(ins, axis)
        else:
            ins = [_np(i) for i in ins]
            if len({i.dtype for i in ins}) > 1:
                ins = [as_int(i) for i in ins] \
                    if any(np.issubdtype(i.dtype, np.integer) for i in ins) \
                    else [i.astype(np.float64, copy=False) for i in ins]
            r.values[name] = np.concatenate(ins, axis=axis)
    return op


@builds("reshape", "transpose")
def _index(p: Program, node):
    """Index maps of one input: the value's bound unchanged, its dtype kept."""
    name, src = node.name, node.inputs[0]
    p.derived(node, lambda b: b[0], kept=True)
    perm = (0,) + tuple(q + 1 for q in node.perm) if node.kind == "transpose" else None

    def op(r):
        x = r.values[src]
        if isinstance(x, np.ndarray):
            r.values[name] = node.apply([x], False)[0]
        else:
            r.values[name] = x.permute(perm) if perm else \
                x.reshape((x.shape[0],) + tuple(node.shape))
    return op


@builds("select")
def _select(p: Program, node):
    """A constant gather on the float array as it is (its dtype kept, no int64 round trip); it
    copies values or writes 0, so its input's bound holds."""
    name, src = node.name, node.inputs[0]
    p.derived(node, lambda b: b[0], kept=True)
    shape, source = tuple(node.shape), p.shapes.get(src)
    if p.use_torch and source is not None and _broadcasts(node.table, source, shape):
        def expand(r):      # a broadcast (a row statistic sent back along its row): a view
            x = r.values[src]
            if isinstance(x, np.ndarray):
                r.values[name] = np.broadcast_to(x, (len(x),) + shape)
            else:
                r.values[name] = x.expand((x.shape[0],) + shape)
        return expand

    def op(r):
        r.values[name] = node.apply([_np(r.values[src])], False)[0]
    return op


def _broadcasts(table: np.ndarray, source: tuple, shape: tuple) -> bool:
    """Whether a select's table reads its (source-shaped) input broadcast to `shape` by
    numpy's rules at equal rank: each output element the input element at its index with
    the input's axes of 1 held at 0."""
    if len(source) != len(shape) or any(a not in (1, b) for a, b in zip(source, shape)) or \
            table.size != math.prod(shape):
        return False
    want = np.broadcast_to(np.arange(math.prod(source)).reshape(source), shape)
    return bool(np.array_equal(np.asarray(table).reshape(shape), want))


def fusions(art, keep) -> dict:
    """{dense/conv/add node: the one-pass neuron that is its only reader} for nodes whose value
    nobody else sees (not kept, recorded, read by a delay or the readout): these add the
    neuron's offset inside their product or sum and the neuron skips that pass."""
    readers: dict[str, int] = {}
    kinds = {n.name: n.kind for n in art.nodes}
    for n in art.nodes:
        for i in n.inputs:
            readers[i] = readers.get(i, 0) + 1
        source = getattr(n, "source", None)
        if source is not None:
            readers[source] = readers.get(source, 0) + 2
    out = {}
    for n in art.nodes:
        if n.kind == "neuron" and one_pass(n):
            src = n.inputs[0]
            if readers.get(src) == 1 and src not in keep and src != art.output \
                    and BUILDERS.get(kinds[src]) in (_product, _add):
                out[src] = n
    return out


def count_neuron(st: LayerStats, out: np.ndarray, sat: int, lo: int, hi: int, count: bool,
                 spikes=None):
    """LayerStats.add_spikes for a float array of payloads: saturations always, spikes and
    payload when counting. `spikes()`: out's nonzero entries (Run.spikes), shared with the
    synapses that count the same spikes."""
    if not np.issubdtype(out.dtype, np.floating):
        st.add_spikes(out, sat, count)
        return
    st.saturations += sat
    if not count:
        return
    # count_nonzero of a whole float array is ~10× slower than of the comparison's
    # booleans; the payload, a sum of exact integers, is summed in float64 (exact < 2⁵³)
    st.spikes += spikes() if spikes else int(np.count_nonzero(out != 0))
    mag = out if lo >= 0 else np.abs(out)
    if out[:1].size * float(max(abs(lo), abs(hi))) < kernels.F32_EXACT:
        # per-sample sums are exact in the array's own dtype: sum those, then them in float64
        st.payload += int(mag.sum(axis=tuple(range(1, out.ndim))).sum(dtype=np.float64))
    else:
        st.payload += int(mag.sum(dtype=np.float64))


PROGRAMS: dict[tuple, tuple] = {}


def _signature(art: Artifact) -> list:
    """The objects a program was built from: the node list, every node and every field value
    (compared by identity: a node or parameter replaced by another object rebuilds the program;
    artifact arrays are not changed in place)."""
    return [art.nodes, art.input, art.output] + \
        [v for n in art.nodes for v in (n, *vars(n).values())]


def program(art: Artifact, keep, mode: str, use_torch: bool) -> Program:
    """The program for `art` in `mode`, made once and reused while the artifact holds the very
    same objects."""
    return cached(PROGRAMS, (id(art), frozenset(keep), mode, use_torch, torch_ops.int8_state()),
                  art, lambda: Program(art, keep, mode, use_torch))


class _Entry:
    """What `cached` keeps: the artifact (weakly), the objects the value was built from, the
    value, and the edit count (sim.ops.base.edits) at its last full comparison."""
    __slots__ = ("art", "signature", "nodes", "value", "edits")

    def __init__(self, art, signature: list, value, edits: int):
        self.art, self.signature, self.value, self.edits = art, signature, value, edits
        self.nodes = signature[0][:]


def cached(store: dict, key: tuple, art: Artifact, build):
    """store[key]'s object, made by `build()` for `art` and reused while the artifact holds the
    very same objects (the entry keeps them alive, so their ids cannot be reused while it
    stands; it goes when the artifact does). While no node or artifact field was assigned
    since the last comparison (sim.ops.base.edits), the node list alone is compared."""
    hit = store.get(key)
    now = edits()
    if hit is not None and hit.art() is art:
        nodes = art.nodes
        if hit.edits == now and len(hit.nodes) == len(nodes) \
                and all(map(operator.is_, hit.nodes, nodes)):
            return hit.value
        sig = _signature(art)
        if len(hit.signature) == len(sig) and all(map(operator.is_, hit.signature, sig)):
            hit.edits = now
            return hit.value
    sig = _signature(art)
    built = build()
    store[key] = _Entry(weakref.ref(art, lambda _r, k=key: store.pop(k, None)), sig, built, now)
    return built
