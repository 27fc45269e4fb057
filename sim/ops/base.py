"""What every node kind shares: the record (name, inputs, per-sample output shape), its
serialization, the traits the kind groups are derived from, and the default behaviour each kind
module overrides.

A node kind is one module of this package (`sim/ops/<kind>.py`) holding one `Node` subclass,
registered with `@register`: its fields, its docstring equation, `check` (what a simulator relies
on), `evaluate` (its exact integer evaluation: the contract), `emit` (the reference ONNX),
`macs` (operation counts) and its traits below. Everything that treats kinds as groups — the
mapper, the energy report, the Lava planner, the quantizer's sign rule — reads traits, never a
list of kind names.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np

from sim import kernels, semantics
from sim.errors import SimulationError, UnsupportedOpError

# What a node may hold, checked when an artifact is loaded or saved (Node.check, one module per
# kind; sim.artifact for the whole graph), so that a loaded artifact is one both backends run
# the same way, in bounded time and memory:
PAYLOAD_MIN, PAYLOAD_MAX = -2 ** 23, 2 ** 23 - 1       # levels and payloads: signed 24 bits
STATE_EDGE = semantics.V_MAX + 1                        # biases, table thresholds: the state ±1
THRESHOLD_MAX = 2 ** 23 - 1                             # uniform thresholds θ in [1, 2²³)
WEIGHT_MIN, WEIGHT_MAX = -2 ** 15, 2 ** 15 - 1          # stored weight mantissas (int16)
GAIN_LIMIT = 2 ** 23                                    # |integer gains| of an Add
MAX_RANK = 16                                           # axes of a per-sample shape
MAX_NODE_ELEMENTS = 2 ** 22    # per-sample elements of one node (the importer's activation cap)
MAX_WINDOW_OPS = 2 ** 34       # multiply-accumulates (or window taps) of one window node
VALUE_LIMIT = 2 ** 40          # |value| any node can reach in one step (magnitude bound): the
#                                sums of T ≤ 4096 steps stay exact in int64 and float64

# Every assignment to a field of a node or an artifact counts here (`counted_setattr`): what a
# runtime built from an artifact (sim.cpu.program.cached) trusts its last full comparison of
# the artifact's objects for as long as the count stands still.
_EDITS = [0]


def edits() -> int:
    """Assignments to node and artifact fields so far in this process."""
    return _EDITS[0]


def counted_setattr(obj, name: str, value) -> None:
    """object.__setattr__, counted in `edits()`."""
    _EDITS[0] += 1
    object.__setattr__(obj, name, value)


# roles: what a node is to the runtimes
SOURCE, SYNAPSE, INDEX, NEURON, SINK, EDGE = "source", "synapse", "index", "neuron", "sink", "edge"

# how a node reaches Loihi 2 (docs/hardware.md); `Node.hardware_case` picks one
HOST = "host"
CHIP_SYNAPSE = "chip-synapse"
CHIP_NEURON = "chip-neuron"
MICROCODE = "microcode"
UNMAPPED = "unmapped"
HARDWARE_CASES = {
    HOST: "runs on the host, off the neurocores (input encoding, float readout)",
    CHIP_SYNAPSE: "a chip-supported Lava connection (Dense/Sparse/Conv; index maps fold into "
                  "its connectivity)",
    CHIP_NEURON: "exact with chip-supported Lava processes: 1/θ as a shift in the incoming "
                 "connection's weight exponent, then graded ReLU neurons",
    MICROCODE: "needs a NeuroCore microcode neuron model (Intel's lava-loihi)",
    UNMAPPED: "a node kind sim.lava does not know",
}


@dataclass
class Node:
    """A node of the SFN graph: `name`, the names of its `inputs` (in order) and its per-sample
    output `shape` (no batch axis). Channel-wise parameters broadcast against `shape`."""
    name: str
    inputs: tuple[str, ...]
    shape: tuple[int, ...]

    kind: ClassVar[str] = ""
    # source (the input encoder) | synapse (an integer map) | index (moves values, no
    # arithmetic) | neuron (fires) | sink (the readout) | edge (a recurrent delay)
    role: ClassVar[str] = ""
    # mapping traits (toolchain/mapping): how its synapses are stored — "full" (a weight
    # matrix), "window" (kernel windows over (C, H, W)) or None (no synapses of its own) —
    # whether its output is a new integer current that must become compartments of its own to
    # feed another weighted map (a relay), whether it sums its inputs into the same
    # compartments (dendritic accumulation), and which compartments it needs itself
    connectivity: ClassVar[str | None] = None
    new_current: ClassVar[bool] = False
    sums_inputs: ClassVar[bool] = False
    compartment: ClassVar[str | None] = None
    # sign: its output is ≥ 0 whenever every input is ≥ 0
    keeps_sign: ClassVar[bool] = False
    # its output does not depend on the data (a constant): on a core a bias, no synapses
    fixed: ClassVar[bool] = False
    # how it reaches Loihi 2 by default (`hardware_case` refines it)
    hardware: ClassVar[str] = UNMAPPED
    # what `apply` counts as synaptic operations, for a backend that counts them its own way
    # (sim.cpu's graph engine): "" none; "outputs" each nonzero input times the node's outputs
    # (a weight matrix's rows); "window" each nonzero input times the outputs its window
    # reaches times the output channels per input channel (`window_synops`); "inputs" each
    # nonzero input once; "pairs" each output's pair of nonzero operands; "inner" the nonzero
    # pairs a_mk·b_kn of a matrix product. None: not declared (such a backend leaves counting
    # to the kind's own evaluation). A neuron's spikes and payload follow from its role.
    synops: ClassVar[str | None] = None
    # the Lava/Loihi 2 primitive closest to the kind where the case alone does not say it
    # (docs/hardware.md); "" where the case says all
    primitive: ClassVar[str] = ""
    # the dtype each array field is stored with in an artifact
    array_dtypes: ClassVar[dict[str, type]] = {}
    # how many inputs it reads: an int, or None for one or more
    arity: ClassVar[int | None] = 1

    __setattr__ = counted_setattr

    # --- serialization --------------------------------------------------------------------
    def params(self) -> dict:
        """JSON-able scalar parameters (everything that is not an array)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("name", "inputs", "shape") or isinstance(value, np.ndarray):
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if isinstance(getattr(self, f.name), np.ndarray)}

    def describe(self) -> str:
        """One line for `toolchain inspect`."""
        p = ", ".join(f"{k}={v}" for k, v in self.params().items() if v not in (None, [], ""))
        a = ", ".join(f"{k}{list(v.shape)}" for k, v in self.arrays().items())
        return f"{self.kind}({', '.join(x for x in (p, a) if x)})"

    # --- the contract ---------------------------------------------------------------------
    def check(self, inputs: list[tuple[int, ...]]) -> str | None:
        """What is inconsistent about this node given its inputs' shapes, or None: the
        parameters a simulator relies on (ranks, lengths, ranges, broadcasting, the output shape
        they imply). Subclasses add their own checks in `_check`."""
        shape = tuple(self.shape)
        if (not shape and self.role != SINK) or \
                any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in shape):
            return f"shape {shape} is not a tuple of positive sizes"
        if len(shape) > MAX_RANK or math.prod(shape) > MAX_NODE_ELEMENTS:
            return f"shape {shape} is over the limits of {MAX_RANK} axes and " \
                   f"{MAX_NODE_ELEMENTS:,} elements per sample"
        if not isinstance(self.inputs, tuple) or \
                not all(isinstance(i, str) for i in self.inputs):
            return f"inputs {self.inputs!r} are not node names"
        if self.arity is not None and len(inputs) != self.arity:
            return f"{len(inputs)} inputs, a {self.kind} node reads {self.arity}"
        if self.arity is None and not inputs:
            return f"a {self.kind} node reads one input or more"
        return self._check([tuple(i) for i in inputs])

    def _check(self, inputs: list[tuple[int, ...]]) -> str | None:
        return None

    def apply(self, ins: list[np.ndarray], count: bool) -> tuple[np.ndarray, int]:
        """Synapse and index kinds: the exact integer value (int64, (B, *shape)) for integer
        inputs (B, *input shape), and the synaptic operations it took (0 unless `count`)."""
        raise SimulationError(f"node {self.name!r}: a {self.kind} node defines no integer "
                              "evaluation")

    def evaluate(self, ins: list[np.ndarray], step) -> np.ndarray:
        """This node's value in one timestep of the contract (int64, (B, *shape)). `step` holds
        what a timestep shares (sim.reference.Step): the batch, last step's values, the
        neurons' state, the per-node statistics. Synapse and index kinds apply their map."""
        out, synops = self.apply(ins, step.count)
        step.stats[self.name].synops += synops
        return out

    def magnitude(self, inputs: list[float]) -> float:
        """An upper bound on |value| in one step given upper bounds on its inputs' (float64;
        what `sim.artifact` checks against VALUE_LIMIT). Default: the largest input's (index
        maps, maxima, the readout)."""
        return max(inputs, default=0.0)

    def value_range(self, ranges: list[tuple[int, int]]) -> tuple[int, int]:
        """A bound [lo, hi] on the integers this node emits, given its inputs' ranges (interval
        arithmetic; exact for neurons and index maps, a worst case for sums)."""
        return (min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else (0, 0)

    def macs(self) -> int:
        """Multiply-accumulates of one evaluation in the float network (0: none)."""
        return 0

    def mantissas(self) -> np.ndarray | None:
        """The integer weight or gain mantissas it stores on a core, if any (width checks)."""
        return None

    def emit(self, b, ins: list[str]) -> str:
        """Write this node into the reference ONNX (sim.emit.Builder `b`: `b.op`,
        `b.const`) reading the tensors `ins`; return the output tensor's name."""
        raise UnsupportedOpError(f"node {self.name!r}: a {self.kind} node has no reference ONNX "
                                 "form")

    def hardware_case(self, timesteps: int = 1, binary: bool = False,
                      feeding: "Node | None" = None) -> str:
        """One of HARDWARE_CASES: how this node would reach Loihi 2 (docs/hardware.md)."""
        return self.hardware


KINDS: dict[str, type[Node]] = {}


def register(cls: type[Node]) -> type[Node]:
    """Class decorator: add a node kind to KINDS (its `kind` must be new)."""
    if not cls.kind or cls.kind in KINDS:
        raise ValueError(f"node kind {cls.kind!r} is empty or registered twice")
    KINDS[cls.kind] = cls
    return cls


# --- helpers the kind modules share ----------------------------------------------------------
def window_out(size: int, k: int, s: int, p0: int, p1: int, d: int) -> int:
    return (size + p0 + p1 - d * (k - 1) - 1) // s + 1


def broadcasts(a: np.ndarray | None, shape: tuple[int, ...]) -> bool:
    try:
        return a is not None and np.broadcast_shapes(np.shape(a), shape) == tuple(shape)
    except ValueError:
        return False


def int_pairs(*pairs) -> bool:
    """Each (value, n): a tuple of n ints."""
    return all(isinstance(t, (tuple, list)) and len(t) == n and all(is_int(i) for i in t)
               for t, n in pairs)


def batched(param: np.ndarray) -> np.ndarray:
    """Channel-wise parameter → shape broadcastable against a (B, *shape) batch."""
    return np.asarray(param)[None]


_FANOUT: dict = {}


class Windowed(Node):
    """Shared by the kinds that read kernel windows over a (C, H, W) input (convolution, sum and
    max pooling): the window geometry, its check, and each input pixel's fan-out."""
    connectivity: ClassVar[str | None] = "window"

    def window(self) -> tuple:
        """(groups, C_in/groups, kh, kw, stride, pads, dilation)."""
        c = self.shape[0]
        kh, kw = self.kernel
        return c, 1, kh, kw, self.stride, self.pads, getattr(self, "dilation", (1, 1))

    def _check_window(self, x: tuple[int, ...], kernel, channels: int,
                      taps_per_channel: int = 1) -> str | None:
        shape = tuple(self.shape)
        if len(x) != 3 or len(shape) != 3:
            return f"input {x} and output {shape} must be (C, H, W)"
        dil = getattr(self, "dilation", (1, 1))
        if not int_pairs((kernel, 2), (self.stride, 2), (dil, 2), (self.pads, 4)) \
                or min(*kernel, *self.stride, *dil) < 1 or min(self.pads) < 0:
            return "kernel/stride/dilation must be positive pairs and pads four sizes ≥ 0"
        padded = x[0] * (x[1] + self.pads[0] + self.pads[2]) * (x[2] + self.pads[1] + self.pads[3])
        if padded > 4 * MAX_NODE_ELEMENTS:
            return f"pads {self.pads} make a padded input of {padded:,} elements, over " \
                   f"{4 * MAX_NODE_ELEMENTS:,}"
        hw = tuple(window_out(x[1 + a], kernel[a], self.stride[a], self.pads[a],
                              self.pads[a + 2], dil[a]) for a in range(2))
        if shape != (channels,) + hw:
            return f"output shape {shape}, its parameters give {(channels,) + hw}"
        ops = math.prod(shape) * kernel[0] * kernel[1] * taps_per_channel
        if ops > MAX_WINDOW_OPS:
            return f"{ops:,} window operations per sample, over {MAX_WINDOW_OPS:,}"
        return None

    def fanout(self, in_hw) -> np.ndarray:
        """F[h, w]: how many output positions input pixel (h, w) reaches (cached)."""
        _, _, kh, kw, stride, pads, dilation = self.window()
        key = (tuple(in_hw), (kh, kw), stride, pads, dilation, tuple(self.shape[-2:]))
        if key not in _FANOUT:
            _FANOUT[key] = kernels.fanout_map(in_hw, (kh, kw), stride, pads, dilation,
                                              self.shape[-2:])
        return _FANOUT[key]

    def window_synops(self, x: np.ndarray, counts: np.ndarray | None = None) -> int:
        """Synaptic operations on input x: every nonzero input times the outputs it reaches
        times the output channels each input channel feeds. `counts`: x's nonzero counts per
        position (sim.kernels.nonzero_counts), when the caller has them."""
        groups = self.window()[0]
        return kernels.window_synops(x, self.fanout(x.shape[-2:]), self.shape[0] // groups,
                                     counts)


def is_int(v) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def int_in(v, lo: int, hi: int) -> bool:
    """An integer (not a bool) in [lo, hi]."""
    return is_int(v) and lo <= v <= hi


def check_ints(field: str, a, lo: int, hi: int) -> str | None:
    """None if `a` is an array of integers in [lo, hi], else what is wrong with field `field`.
    Integer dtypes qualify, bools do not; a float array qualifies when every value is a finite
    integer (what a compiler may hand in before the artifact stores the field as an integer
    dtype, which the loader checks)."""
    if not isinstance(a, np.ndarray):
        return f"{field} is a {type(a).__name__}, not an array"
    if a.dtype.kind not in "iuf":
        return f"{field} has dtype {a.dtype}, not integers"
    if a.size == 0:
        return None
    if a.dtype.kind == "f":
        finite = np.isfinite(a)
        if not finite.all() or np.any(a != np.floor(a)):
            return f"{field} holds values that are not finite integers"
    top, bottom = a.max(), a.min()
    if bottom < lo or top > hi:
        return f"{field} ranges over [{bottom}, {top}], outside [{lo}, {hi}]"
    return None


def check_floats(field: str, a) -> str | None:
    """None if `a` is a float array whose values are finite as float32 (what the readout
    computes in), else what is wrong with field `field`."""
    if not isinstance(a, np.ndarray):
        return f"{field} is a {type(a).__name__}, not an array"
    if a.dtype.kind not in "fiu":
        return f"{field} has dtype {a.dtype}, not floats"
    with np.errstate(over="ignore", invalid="ignore"):
        finite = np.isfinite(a.astype(np.float32))
    if not finite.all():
        return f"{field} has {int(np.count_nonzero(~finite))} NaN or infinite entries " \
               "(as float32)"
    return None


def shifted_magnitude(bound: float, exp: int) -> float:
    """A bound on |semantics.shift(a, exp)| for |a| ≤ bound: bound·2^exp, rounded up for a right
    shift (its floor moves a negative value away from zero)."""
    return bound * 2.0 ** float(exp) if exp >= 0 else float(math.ceil(bound * 2.0 ** float(exp)))


def rounded_magnitude(bound: float, shift: int) -> float:
    """A bound on |round_half_up(a / 2^shift)| for |a| ≤ bound (the product kinds)."""
    return bound if shift == 0 else float(math.ceil(bound / 2.0 ** float(shift))) + 1.0


def weighted_magnitude(weight: np.ndarray, exp: int, axes: tuple[int, ...], inp: float) -> float:
    """A bound on |shift(Σ w·x, exp)| over outputs for |x| ≤ inp (float64, no integer overflow)."""
    rows = np.abs(weight.astype(np.float64)).sum(axis=axes) if weight.size else np.zeros(1)
    return shifted_magnitude(float(rows.max(initial=0.0)) * inp, exp)
