"""sim.cpu: execute an SFN artifact on a batch, bit-exact to the integer contract.

T = 1 (default): one pass, every neuron a multi-threshold neuron. T > 1: the network runs T steps
on the same encoded input, neurons keep their state and reset by subtraction, spikes are graded
(levels per step) or binary; the readout averages the accumulator over T. Recurrent artifacts run
whole trials. Counts spikes, synaptic operations and state saturations per node. The loop is
sim.driver's; each step is the artifact's compiled program (sim.cpu.program).
"""
from __future__ import annotations

import math
import os

import numpy as np

from sim import driver
from sim.artifact import Artifact
from sim.cpu import graph, program, torch_ops
from sim.results import SimResult

# The batched runner's matrix products and convolutions go through torch's oneDNN/MKL kernels
# when torch imports and can vouch for exactness (sim/cpu/torch_ops.py), else numpy's BLAS.
# False: numpy only.
USE_TORCH = True


# a layer-major run (T > 1) holds every node's value for all T steps: batches are cut so that
# T · rows · the largest node's size stays below this many elements
LAYERED_ELEMENTS = 2 ** 25


def _step(art: Artifact):
    use_torch = USE_TORCH and torch_ops.available()

    def step(s: driver.Step, keep, trials: bool) -> dict[str, np.ndarray]:
        mode = "once" if s.state is None else "trials" if trials else "state"
        return program.program(art, keep, mode, use_torch).step(s)

    def layered(s: driver.Step, timesteps: int, keep):
        return program.program(art, keep, "state", use_torch).steps(s, timesteps, keep)
    if use_torch:
        step.layered = layered
    return step


def run(art: Artifact, x: np.ndarray, timesteps: int = 1, binary: bool = False,
        batch_size: int = 1024, count: bool = True, progress=None,
        record: tuple[str, ...] = (), threads: int | None = None,
        engine: str | None = None) -> SimResult:
    """Run `art` on float inputs x and return the readout (sim.driver.execute).

    Feed-forward networks: x is (N, *input_shape); the graph runs `timesteps` steps on the same
    encoded input and the readout averages the accumulator (T = 1: one multi-threshold pass).
    Recurrent networks (a Delay node): x is (N, T, *input_shape), one trial per row, and the
    readout is per step: output (N, T, *output_shape). `progress(n)` is called after each batch
    of n samples; `record` names nodes whose integer values are returned in
    `SimResult.recorded`. count=False skips the activity statistics (spikes, payload, SynOps:
    zero in `stats`); saturations are counted either way. The result equals
    `sim.reference.run`'s bit for bit.

    Inside a batch the values are exact integers held in float32/float64 wherever a bound proves
    that exact, with convolutions and matrix products by torch when available (USE_TORCH); the
    readout accumulator and recorded values are int64. `threads`: torch's intra-op threads
    during the run, restored after; None (the default): torch_ops.default_threads — one thread
    for a small run (below PARALLEL_MACS multiply-accumulates, or PARALLEL_NODE_MACS per node:
    a graph of many small operations), else torch's own setting, every
    core, as onnxruntime does (with OpenMP's passive wait policy, which importing `sim` before
    torch sets; without it, only the cores the machine leaves free). threads=1 leaves the other
    cores alone (docs/performance.md, "Threads").

    `engine`: "program" (the compiled program above), "graph" (sim.cpu.graph: the whole T = 1
    pass lowered once to an ONNX model of exact float operations, the activity counts
    included when counting, one onnxruntime call per batch; a ValueError saying why where it
    does not apply) or None (the default): the graph engine for a small run it serves — at
    most GRAPH_ROWS rows a batch and below GRAPH_MACS multiply-accumulates — from the
    artifact's second such run on (a single run does not repay the lowering), else the
    program. Both give the same integers and statistics.
    """
    facts = _facts(art)
    if (timesteps > 1 or binary) and not facts.recurrent:
        batch_size = min(batch_size, max(1, LAYERED_ELEMENTS // (timesteps * facts.largest)))
    macs = _macs(facts, x, timesteps)
    if threads is None and USE_TORCH and torch_ops.available():
        threads = torch_ops.default_threads(macs, facts.nodes)
    eng = _engine(art, facts, x, timesteps, binary, batch_size, count, record, engine, macs)
    if eng is not None:
        result = _simulate(eng, x, threads, batch_size, progress, engine)
        if result is not None:
            return result
    with torch_ops.session(threads if USE_TORCH else None):
        return driver.execute(art, x, _step(art), timesteps, binary, batch_size, count,
                              progress, record)


ENGINES = ("program", "graph")


# the graph engine serves a T = 1 run by default when its batches have at most GRAPH_ROWS rows
# and the run fewer than GRAPH_MACS multiply-accumulates: there per-node dispatch is what the
# program's time is made of; above, the program's int8 kernels and tables are faster than
# onnxruntime's float kernels and Gather (docs/performance.md, "Small batches: the graph
# engine")
GRAPH_ROWS = 16
GRAPH_MACS = 2 ** 26


def engine_for(art: Artifact, x, timesteps: int = 1, binary: bool = False,
               batch_size: int = 1024, count: bool = True, record: tuple[str, ...] = (),
               engine: str | None = None) -> str:
    """"graph" or "program": the engine `run` with these arguments takes once the artifact
    has run before (the first small run of an artifact takes the program); a ValueError where
    `engine` asks for one that does not apply."""
    facts = _facts(art)
    found = _engine(art, facts, x, timesteps, binary, batch_size, count, record, engine,
                    _macs(facts, x, timesteps), warm=True)
    return "program" if found is None else "graph"


def _rows(x) -> int:
    shape = np.shape(x)
    return shape[0] if shape else 0


class _Facts:
    """What every run asks of an artifact, found once per artifact (program.cached)."""

    def __init__(self, art: Artifact):
        self.macs = sum(n.macs() for n in art.nodes)       # per sample and step
        self.nodes = len(art.nodes)
        self.recurrent = art.recurrent
        self.largest = max((math.prod(n.shape) for n in art.nodes), default=1)


FACTS: dict = {}


def _facts(art: Artifact) -> _Facts:
    return program.cached(FACTS, (id(art),), art, lambda: _Facts(art))


def _macs(facts: _Facts, x, timesteps: int) -> int:
    """Multiply-accumulates of a run on x (every step of it)."""
    shape = np.shape(x)
    steps = (shape[1] if len(shape) > 1 else 1) if facts.recurrent else timesteps
    return facts.macs * (shape[0] if shape else 0) * steps


def _check_engine(engine) -> None:
    if engine not in (None, *ENGINES):
        raise ValueError(f"engine {engine!r} is not one of {ENGINES}")


def _refusal(facts: _Facts, timesteps, binary) -> str | None:
    """Why the graph engine cannot serve such a run, or None."""
    if timesteps != 1 or binary or facts.recurrent:
        return "runs T = 1 graded feed-forward passes only"
    return None


def _small(rows: int, batch_size: int, macs: float) -> bool:
    """A run the graph engine serves by default: GRAPH_ROWS and GRAPH_MACS."""
    return min(rows, batch_size) <= GRAPH_ROWS and macs < GRAPH_MACS


def _lowered(art, record, count: bool, engine, now: bool = True):
    """The graph engine for `art` keeping `record` (counting activity when `count`), or None
    (a ValueError saying why when `engine` is "graph"); now=False: not on an artifact's first
    small run (graph.engine)."""
    eng = graph.engine(art, tuple(record), now, count)
    if isinstance(eng, graph.Engine):
        return eng
    if engine == "graph":
        raise ValueError(f"the graph engine {eng}")
    return None


def _engine(art, facts, x, timesteps, binary, batch_size, count, record, engine, macs: int,
            warm: bool = False):
    """The graph engine (sim.cpu.graph) when it is asked for, or by default when it serves the
    run and the run (of `macs` multiply-accumulates) is small (`_small`); None: the program."""
    _check_engine(engine)
    if engine == "program":
        return None
    why = _refusal(facts, timesteps, binary)
    if why is not None:
        if engine == "graph":
            raise ValueError(f"the graph engine {why}")
        return None
    if engine is None and not _small(_rows(x), batch_size, macs):
        return None
    return _lowered(art, record, count, engine, now=warm or engine == "graph")


class Session:
    """Runs of one artifact with the same options, prepared once, as onnxruntime's
    InferenceSession is: `Session(art, count=False).run(x)` returns what
    `run(art, x, count=False)` returns, bit for bit, without the per-call lookups (which engine,
    the compiled program or model, the run's size). For many small calls — one sample at a
    time in a loop. The artifact must not change while a session holds it."""

    def __init__(self, art: Artifact, timesteps: int = 1, binary: bool = False,
                 batch_size: int = 1024, count: bool = True, record: tuple[str, ...] = (),
                 threads: int | None = None, engine: str | None = None):
        _check_engine(engine)
        self.art, self.engine, self.threads = art, engine, threads
        self.options = dict(timesteps=timesteps, binary=binary, batch_size=batch_size,
                            count=count, record=tuple(record))
        facts = _facts(art)
        self.macs = facts.macs       # per sample and step
        self.graph = None
        why = _refusal(facts, timesteps, binary)
        if engine == "graph" and why is not None:
            raise ValueError(f"the graph engine {why}")
        if engine != "program" and why is None:
            self.graph = _lowered(art, record, count, engine)

    def run(self, x: np.ndarray, progress=None) -> SimResult:
        """The run of `art` on x (`run`'s result)."""
        rows, batch_size = _rows(x), self.options["batch_size"]
        macs = self.macs * rows
        if self.graph is not None and (self.engine == "graph" or
                                       _small(rows, batch_size, macs)):
            threads = self.threads
            if threads is None and USE_TORCH and torch_ops.available():
                threads = torch_ops.default_threads(macs, len(self.art.nodes))
            result = _simulate(self.graph, x, threads, batch_size, progress, self.engine)
            if result is not None:
                return result
            self.graph = None
        return run(self.art, x, progress=progress, threads=self.threads, engine="program",
                   **self.options)


def _simulate(eng, x, threads, batch_size, progress, engine) -> SimResult | None:
    """The graph engine's run, or None when onnxruntime refuses its model and the program may
    run instead (the default engine; a ValueError naming why when "graph" was asked for)."""
    try:
        return eng.simulate(x, threads or _cores(), batch_size, progress)
    except graph.NotLowered as exc:
        if engine == "graph":
            raise ValueError(f"the graph engine: {exc}") from exc
        return None


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count() or 1
