"""The SFN neuron: integrate, fire a multi-level (graded) spike, reset by subtraction."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from sim import semantics
from sim.errors import UnsupportedOpError
from sim.ops.base import (CHIP_NEURON, MICROCODE, NEURON, PAYLOAD_MAX, PAYLOAD_MIN, STATE_EDGE,
                          THRESHOLD_MAX, Node, batched, broadcasts, check_ints, int_in, register)


@register
@dataclass
class Neuron(Node):
    """SFN neuron (see sim.semantics): v ← sat(v + I + b); uniform fire
    q = clip(floor(v / (K·θ)), lo_q, hi_q), v ← v − q·K·θ, start v = (K·θ)//2; or adaptive fire
    n = payload[#{k : v ≥ t_k}]. `decay` d is the leak (v ← v + floor(d·(I + b − v)/4096) replaces
    the plain sum when d < 4096). `reset` "subtract" is the spiking neuron above; "none" keeps v
    and emits its rounded value clip(floor((v + θ//2)/θ), lo, hi) — the leaky integrator of a
    recurrent rate unit, whose state persists over a trial. `start` "half" starts a sample's
    uniform neuron at v = (K·θ)//2 (the rounding offset of the converted ANN); "zero" at v = 0
    (the membrane of a spiking network imported from NIR, toolchain.nir_io)."""
    threshold: np.ndarray = None
    bias: np.ndarray = None
    lo: int = 0
    hi: int = 1
    fire: str = "uniform"
    thresholds: np.ndarray | None = None
    payload: np.ndarray | None = None
    decay: int = 4096
    reset: str = "subtract"
    start: str = "half"
    kind: ClassVar[str] = "neuron"
    role: ClassVar[str] = NEURON
    compartment: ClassVar[str | None] = "neuron"
    hardware: ClassVar[str] = MICROCODE
    synops: ClassVar[str | None] = ""
    array_dtypes: ClassVar[dict] = {"threshold": np.int64, "bias": np.int64,
                                    "thresholds": np.int64, "payload": np.int64}

    def _check(self, inputs):
        (x,), shape = inputs, tuple(self.shape)
        if x != shape:
            return f"input {x} differs from its shape {shape}"
        if not (int_in(self.lo, PAYLOAD_MIN, PAYLOAD_MAX) and
                int_in(self.hi, PAYLOAD_MIN, PAYLOAD_MAX) and self.lo <= self.hi):
            return f"levels [{self.lo!r}, {self.hi!r}] are not integers lo ≤ hi within 24 bits"
        if self.fire not in ("uniform", "adaptive") or self.reset not in ("subtract", "none"):
            return f"fire {self.fire!r} or reset {self.reset!r} is not one of uniform/adaptive, " \
                   "subtract/none"
        if not isinstance(self.start, str) or self.start not in ("half", "zero"):
            return f"start {self.start!r} is not one of half/zero"
        if not int_in(self.decay, 0, semantics.LEAK_ONE):
            return f"decay {self.decay!r} is not an integer in [0, {semantics.LEAK_ONE}]"
        problem = check_ints("threshold", self.threshold, 1, THRESHOLD_MAX) or \
            check_ints("bias", self.bias, -STATE_EDGE, STATE_EDGE)
        if problem:
            return problem
        if not (broadcasts(self.threshold, shape) and broadcasts(self.bias, shape)):
            return f"threshold {self.threshold.shape} or bias {self.bias.shape} does not " \
                   f"broadcast to the shape {shape}"
        if self.fire == "adaptive" or self.thresholds is not None or self.payload is not None:
            t, pay = self.thresholds, self.payload
            problem = check_ints("thresholds", t, -STATE_EDGE, STATE_EDGE) or \
                check_ints("payload", pay, PAYLOAD_MIN, PAYLOAD_MAX)
            if problem:
                return problem
            if pay.ndim != 1 or t.ndim < 1 or t.shape[-1] + 1 != len(pay) or \
                    not broadcasts(t, shape + (len(pay) - 1,)):
                return "adaptive thresholds and payload table do not match"
            if np.any(np.diff(t, axis=-1) < 0):
                return "adaptive thresholds are not ascending along their last axis"
        return None

    def params(self) -> dict:
        """The scalar parameters; `start` only when it is not the default "half", so artifacts
        written before the field existed keep their canonical form."""
        out = super().params()
        if out.get("start") == "half":
            del out["start"]
        return out

    def _fields(self) -> dict:
        return dict(bias=batched(self.bias), threshold=batched(self.threshold), lo=self.lo,
                    hi=self.hi, fire=self.fire, decay=self.decay, reset=self.reset,
                    start=self.start,
                    thresholds=None if self.thresholds is None else batched(self.thresholds),
                    payload=self.payload)

    def step(self, current: np.ndarray, v: np.ndarray | None, binary: bool = False,
             keep: bool = True):
        """semantics.neuron_step for a batch (B, *shape): (payload, state, saturations)."""
        return semantics.neuron_step(current, v, binary=binary, keep=keep, **self._fields())

    def step_float(self, current: np.ndarray, v: np.ndarray | None, binary: bool = False):
        """semantics.neuron_step_float for a batch: (payload float64, state, saturations)."""
        return semantics.neuron_step_float(current, v, binary=binary, **self._fields())

    def evaluate(self, ins, step) -> np.ndarray:
        state = step.state
        v = None if state is None else state.get(self.name)
        out, v, sat = self.step(ins[0].astype(np.int64, copy=False), v, step.binary,
                                keep=state is not None)
        if state is not None and v is not None:
            state[self.name] = v
        step.stats[self.name].add_spikes(out, sat, step.count)
        return out

    def value_range(self, ranges):
        if self.fire == "adaptive" and self.payload is not None:
            return int(np.min(self.payload)), int(np.max(self.payload))
        return self.lo, self.hi

    def magnitude(self, inputs):
        return float(max(abs(v) for v in self.value_range([])))

    def emit(self, b, ins):
        if self.decay < semantics.LEAK_ONE:
            raise UnsupportedOpError(f"neuron {self.name!r}: leaky neurons have no T = 1 "
                                     "reference")
        v = b.op("Cast", [ins[0]], to=b.DOUBLE)
        offset = 0 if self.fire == "adaptive" or self.start == "zero" else self.threshold // 2
        v = b.op("Add", [v, b.const(batched(self.bias + offset), np.float64)])
        v = b.op("Clip", [v, b.const(-semantics.V_MAX, np.float64),
                          b.const(semantics.V_MAX, np.float64)])
        if self.fire == "adaptive":
            ge = b.op("GreaterOrEqual", [b.op("Unsqueeze", [v, b.const([-1], np.int64)]),
                                         b.const(batched(self.thresholds), np.float64)])
            count = b.op("ReduceSum", [b.op("Cast", [ge], to=b.INT64),
                                       b.const([-1], np.int64)], keepdims=0)
            return b.op("Gather", [b.const(self.payload, np.float32), count], axis=0)
        q = b.op("Floor", [b.op("Div", [v, b.const(batched(self.threshold), np.float64)])])
        q = b.op("Clip", [q, b.const(self.lo, np.float64), b.const(self.hi, np.float64)])
        return b.op("Cast", [q], to=b.FLOAT)

    def hardware_case(self, timesteps=1, binary=False, feeding=None) -> str:
        """CHIP_NEURON only for the T = 1 uniform neuron without leak whose thresholds are
        powers of two θ = 2^k and whose offset bias b + θ//2 = β·θ is a multiple of θ: then
        n = clip((I >> k) + β, lo, hi) exactly, the shift done by the weight exponent of the one
        connection that delivers I and the rest by graded ReLU neurons. A neuron fed by a node
        that sums several connections (each would round its own shift) is MICROCODE, as is every
        other neuron: payload tables, other thresholds, leak, reset by subtraction at T > 1,
        the leaky integrators of recurrent networks."""
        if (self.fire != "uniform" or self.decay < semantics.LEAK_ONE or timesteps > 1
                or self.start != "half"
                or binary or self.reset != "subtract"
                or (feeding is not None and feeding.sums_inputs)):
            return MICROCODE
        theta = np.asarray(self.threshold, dtype=np.int64)
        if not bool(np.all((theta > 0) & ((theta & (theta - 1)) == 0))):
            return MICROCODE
        offset_bias = np.asarray(self.bias, dtype=np.int64) + theta // 2
        return CHIP_NEURON if bool(np.all(offset_bias % theta == 0)) else MICROCODE
