"""What every backend returns and checks: per-node statistics, the run's result, the input checks
made before any run (shared by sim.reference, sim.cpu and sim.lava)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sim import semantics
from sim.artifact import Artifact
from sim.errors import ShapeError, SimulationError


@dataclass
class LayerStats:
    """Totals over all samples and timesteps of one node."""
    spikes: int = 0          # nonzero payloads emitted (neurons)
    payload: int = 0         # Σ|payload| emitted (neurons)
    synops: int = 0          # synaptic operations: nonzero input × fan-out (synapses)
    saturations: int = 0     # 24-bit state clips (neurons)
    neurons: int = 0         # neurons per sample
    clipped: int = 0         # input elements the encoder clipped to its levels (the input)

    def add_spikes(self, out: np.ndarray, saturations: int, count: bool) -> None:
        """Count a neuron's integer payloads: saturations always (never silent), spikes and
        payload only when counting."""
        self.saturations += saturations
        if count:
            self.spikes += int(np.count_nonzero(out))
            self.payload += int(np.abs(out).sum())


@dataclass
class SimResult:
    """What a run returns, the same from every backend.

    The readout rule (shared by the API, the CLI and both simulators): `output` is what the
    ONNX model outputs — the dequantized readout, with the model's final Softmax/LogSoftmax
    applied when it ended in one (float64, returned as float32); `logits` is the dequantized
    readout y = float32(A + T·b) · float32(scale / T) before it; `accumulator` is the integer A.
    For a model without a final softmax, `output` is `logits`. Bit-exactness between backends
    is equality of `accumulator` (and so of `logits` and `output`)."""
    logits: np.ndarray                    # float32 (N, *output_shape), the readout before softmax
    accumulator: np.ndarray               # int64 (N, *output_shape), Σ_t readout accumulator
    stats: dict[str, LayerStats] = field(default_factory=dict)
    samples: int = 0
    timesteps: int = 1
    # integer values of the nodes asked for with run(record=...): (N, *shape), summed over the
    # steps of a feed-forward run, or (N, T, *shape) per step of a recurrent one
    recorded: dict[str, np.ndarray] = field(default_factory=dict)
    softmax: str = ""                     # the readout's final softmax: "", softmax, logsoftmax

    @property
    def output(self) -> np.ndarray:
        """What the ONNX model outputs: `logits`, through the final softmax if it had one."""
        return apply_softmax(self.logits, self.softmax)


def apply_softmax(logits: np.ndarray, softmax: str) -> np.ndarray:
    if softmax in ("softmax", "logsoftmax"):
        return semantics.softmax(logits, log=softmax == "logsoftmax")
    return logits


def as_float32(x: np.ndarray, what: str = "input") -> tuple[np.ndarray, str | None]:
    """x as float32, the precision the input encoder computes in, and a note when it was cast:
    float32 stays as it is; another float dtype (float16, float64) is cast — a value beyond
    float32's range (±3.4·10³⁸) is a ShapeError, not an infinity —; any other dtype is a
    ShapeError. The CLI prints the note; the Python API casts without one."""
    x = np.asarray(x)
    if x.dtype == np.float32:
        return x, None
    if not np.issubdtype(x.dtype, np.floating):
        raise ShapeError(f"{what}: dtype {x.dtype}; inputs must be float32 (other float dtypes "
                         "are cast to it)")
    with np.errstate(over="ignore"):
        y = x.astype(np.float32)
    over = int(np.count_nonzero(np.isfinite(x) & ~np.isfinite(y)))
    if over:
        raise ShapeError(f"{what}: {over} {x.dtype} values lie beyond float32's range "
                         "(±3.4e38); the input encoder computes in float32")
    return y, f"{what} is {x.dtype}: cast to float32, the precision the input encoder " \
              "computes in"


def check_input(art: Artifact, x: np.ndarray) -> np.ndarray:
    """x must be finite floats of shape (N, *input_shape), or (N, T, *input_shape) for a
    recurrent artifact; anything else is a ShapeError naming both shapes. Float dtypes other
    than float32 are cast to it (`as_float32`)."""
    x = np.asarray(x)
    expect = tuple(art.input_shape)
    recurrent = art.recurrent
    lead = 2 if recurrent else 1
    if x.ndim != len(expect) + lead or x.shape[lead:] != expect:
        want = "(N, T, " if recurrent else "(N, "
        raise ShapeError(f"input has shape {tuple(x.shape)}, the model expects {want}"
                         f"{', '.join(map(str, expect))})")
    if x.dtype.kind != "f":
        raise ShapeError(f"input dtype is {x.dtype}, expected a float array")
    if not np.isfinite(x).all():
        raise ShapeError(f"input contains {int(np.count_nonzero(~np.isfinite(x)))} NaN/Inf values")
    return x if x.dtype == np.float32 else as_float32(x)[0]


def prepare_run(art: Artifact, x: np.ndarray, timesteps: int) -> tuple[np.ndarray,
                                                                        dict[str, LayerStats]]:
    """The checks every backend makes before a run, and empty per-node statistics."""
    x = check_input(art, x)
    if timesteps < 1:
        raise SimulationError(f"timesteps must be ≥ 1, got {timesteps}")
    if timesteps > 1 and any(getattr(n, "fire", "") == "adaptive" for n in art.nodes):
        raise SimulationError("adaptive fire functions are defined for T = 1 only")
    return x, {n.name: LayerStats(neurons=math.prod(n.shape) if n.role == "neuron" else 0)
               for n in art.nodes}
