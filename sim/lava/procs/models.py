"""ProcessModels of the SFN Processes: `fixed_pt` (held to the integer contract: the neuron calls
sim.semantics, the chains call sim.cpu's kernels) and `floating_pt` (float64 neuron arithmetic).

floating_pt computes the neuron in float64 without the hardware's 24-bit state: v is never
clipped (a would-be clip is still counted in `saturations`) and the fire function divides in
float, q = clip(floor(v / (K·θ)), lo_q, hi_q). Every value here is an integer below 2⁵³, where
float64 addition, the leak's product and the floor of a quotient are exact, so floating_pt equals
fixed_pt bit for bit whenever fixed_pt reports no saturation; a sample in which a neuron
saturates may differ (docs/hardware.md, tests/test_lava.py). Payloads travel as float64
between floating_pt processes and enter the (integer) synapse chains as the integers they are.
The recurrent cell (sim.lava.cell) does the same for its neurons; there a saturating leaky
integrator carries the difference on through the rest of its trial (never into another trial).

Never call torch here: Lava forks these models (docs/lava.md).
"""
from __future__ import annotations

from collections import deque

import numpy as np

from sim import semantics
from sim.lava.compat import load_lava
from sim.lava.graph import MAX_INPUTS
from sim.lava.cell import STATS, Cell
from sim.lava.procs.process import (AccumulatorSink, InputEncoder, ReadoutStage, RecurrentCell,
                                     SFNNeuronLayer, SpikeSource, TrialSink)

load_lava()

from lava.magma.core.decorator import implements, requires, tag  # noqa: E402
from lava.magma.core.model.py.model import PyLoihiProcessModel  # noqa: E402
from lava.magma.core.model.py.ports import PyInPort, PyOutPort  # noqa: E402
from lava.magma.core.model.py.type import LavaPyType  # noqa: E402
from lava.magma.core.resources import CPU  # noqa: E402
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol  # noqa: E402

INT = np.int64
FLOAT = np.float64


STAGE_BLAS_THREADS = 1  # BLAS threads in each stage process (the stages already run in parallel)


def _limit_blas_threads() -> None:
    """Give this Lava process STAGE_BLAS_THREADS BLAS threads. Models are built in the forked
    child, so the host process keeps its own setting. With one process per layer, a BLAS pool
    per process oversubscribes the cores (measured on 2 cores with 64 lanes: 2–3× slower)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # comes with scikit-learn; without it the BLAS default stays
        return
    threadpool_limits(limits=STAGE_BLAS_THREADS, user_api="blas")


def _in_ports(dtype):
    """Class decorator: the stage in-ports in_0 … in_{MAX_INPUTS-1} carrying `dtype` payloads."""
    def add(cls):
        for k in range(MAX_INPUTS):
            setattr(cls, f"in_{k}", LavaPyType(PyInPort.VEC_DENSE, dtype))
        return cls
    return add


class _SourceModel(PyLoihiProcessModel):
    payload_type = INT
    samples = LavaPyType(np.ndarray, np.float32)
    valid = LavaPyType(np.ndarray, INT)
    inv_scale = LavaPyType(np.ndarray, np.float32)
    lo = LavaPyType(np.ndarray, INT)
    hi = LavaPyType(np.ndarray, INT)
    timesteps = LavaPyType(np.ndarray, INT)
    clip = LavaPyType(np.ndarray, INT)
    clipped = LavaPyType(np.ndarray, INT)

    def run_spk(self):
        step = (self.time_step - 1) // int(self.timesteps[0])
        row = step % len(self.samples)
        rows = int(self.valid[row])
        args = (self.samples[row][:rows], self.inv_scale[0], int(self.lo[0]), int(self.hi[0]))
        if self.clip[0]:
            encoded, clipped = semantics.encode_input_counted(*args)
        else:   # the InputEncoder behind clips and counts
            encoded, clipped = semantics.encode_input_bounded(*args), 0
        if step < len(self.samples):  # the pipeline's drain repeats rows: counted once
            self.clipped[0] += clipped
        spikes = np.zeros(self.samples.shape[1:], self.payload_type)
        spikes[:rows] = encoded
        self.s_out.send(spikes)


@implements(proc=SpikeSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySpikeSourceFixed(_SourceModel):
    s_out = LavaPyType(PyOutPort.VEC_DENSE, INT)


@implements(proc=SpikeSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PySpikeSourceFloat(_SourceModel):
    payload_type = FLOAT
    s_out = LavaPyType(PyOutPort.VEC_DENSE, FLOAT)


class _StageModel(PyLoihiProcessModel):
    """Receiving side shared by neuron layers and the readout: in-port k's data is held
    `delays[k]` steps so every input of a step belongs to the same encoder step u. Messages are
    (B, *shape) batches of B lanes; in a run of N samples group g = u // T holds samples
    g·B … g·B + rows − 1; in an open stream (samples None) every lane is a sample."""
    payload_type = INT

    def __init__(self, proc_params):
        super().__init__(proc_params)
        _limit_blas_threads()
        self.chain = proc_params["chain"]
        self.lanes = int(proc_params["lanes"])
        samples = proc_params["samples"]
        self.samples = None if samples is None else int(samples)
        self.groups = None if samples is None else -(-self.samples // self.lanes)
        self.fifos = [deque(np.zeros((self.lanes,) + shape, self.payload_type)
                            for _ in range(delay))
                      for shape, delay in zip(proc_params["input_shapes"], proc_params["delays"])]

    def receive(self) -> list[np.ndarray]:
        """This step's chain sources, aligned, as (B, *shape) batches."""
        inputs = []
        for k, fifo in enumerate(self.fifos):
            fifo.append(getattr(self, f"in_{k}").recv())
            inputs.append(fifo.popleft())
        return inputs

    def encoder_step(self) -> int:
        """u: the encoder step whose data arrives now (negative while the pipeline fills)."""
        return self.time_step - 1 - int(self.offset[0])

    def group(self, u: int) -> int:
        """The group of samples of encoder step u ≥ 0 (cyclic, like the source's rows)."""
        return (u // int(self.timesteps[0])) % self.groups

    def rows(self, u: int) -> int:
        """Valid lanes of encoder step u: B, fewer in the last group of a run, 0 while the
        pipeline fills (u < 0)."""
        if u < 0:
            return 0
        if self.samples is None:
            return self.lanes
        return min(self.lanes, self.samples - self.group(u) * self.lanes)

    def counts(self, u: int) -> bool:
        """Statistics cover the ⌈N/B⌉·T steps of a run's samples, not the pipeline's drain
        (every step of an open stream)."""
        return self.groups is None or u < self.groups * int(self.timesteps[0])

    def current(self, inputs: list[np.ndarray], rows: int, counted: bool) -> np.ndarray:
        """The chain's output on the valid rows; its synops added to the statistics."""
        batch = [x[:rows].astype(INT, copy=False) for x in inputs]
        current, synops = self.chain.evaluate(batch, counted)
        if counted:
            self.synops[:len(synops)] += synops
        return current


class _NeuronLayerModel(_StageModel):
    lo = LavaPyType(np.ndarray, INT)
    hi = LavaPyType(np.ndarray, INT)
    adaptive = LavaPyType(np.ndarray, INT)
    thresholds = LavaPyType(np.ndarray, INT)
    payload = LavaPyType(np.ndarray, INT)
    decay = LavaPyType(np.ndarray, INT)
    start_zero = LavaPyType(np.ndarray, INT)
    binary = LavaPyType(np.ndarray, INT)
    timesteps = LavaPyType(np.ndarray, INT)
    offset = LavaPyType(np.ndarray, INT)
    spikes = LavaPyType(np.ndarray, INT)
    payload_total = LavaPyType(np.ndarray, INT)
    saturations = LavaPyType(np.ndarray, INT)
    synops = LavaPyType(np.ndarray, INT)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.out = np.zeros((self.lanes,) + tuple(proc_params["shape"]), self.payload_type)

    def run_spk(self):
        self.s_out.send(self.out)  # last step's payload: one step of delay, like Lava's Dense
        inputs = self.receive()
        u = self.encoder_step()
        rows = self.rows(u)
        if rows == 0:
            return
        counted = self.counts(u)
        out, saturations = self.fire(self.current(inputs, rows, counted), rows,
                                     u % int(self.timesteps[0]) == 0)
        if rows < self.lanes:  # padding lanes of the last group stay zero
            self.out = np.zeros_like(self.out)
        self.out[:rows] = out
        if counted:
            self.spikes[0] += np.count_nonzero(out)
            self.payload_total[0] += int(np.abs(out).sum())
            self.saturations[0] += saturations

    def fire(self, current: np.ndarray, rows: int, first_step: bool) -> tuple[np.ndarray, int]:
        """Payload (rows, *shape) and saturation count of this step for lanes [0, rows)."""
        raise NotImplementedError

    def neuron_fields(self) -> dict:
        """The neuron's parameters, from its Vars, as semantics.neuron_step takes them."""
        return dict(bias=self.bias[None], threshold=self.threshold[None], lo=int(self.lo[0]),
                    hi=int(self.hi[0]), fire="adaptive" if self.adaptive[0] else "uniform",
                    thresholds=self.thresholds[None], payload=self.payload,
                    decay=int(self.decay[0]),
                    start="zero" if self.start_zero[0] else "half")


@implements(proc=SFNNeuronLayer, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
@_in_ports(INT)
class PySFNNeuronLayerFixed(_NeuronLayerModel):
    """Bit-accurate SFN neuron: every equation is a sim.semantics call."""
    v = LavaPyType(np.ndarray, INT, precision=semantics.STATE_BITS)
    bias = LavaPyType(np.ndarray, INT)
    threshold = LavaPyType(np.ndarray, INT)
    s_out = LavaPyType(PyOutPort.VEC_DENSE, INT)

    def fire(self, current, rows, first_step):
        # T = 1: v restarts every step, so the residual state is never kept (sim.cpu's pass)
        keep = int(self.timesteps[0]) > 1
        out, v, saturations = semantics.neuron_step(
            current, None if first_step else self.v[:rows], binary=bool(self.binary[0]),
            keep=keep, **self.neuron_fields())
        if keep and v is not None:
            self.v[:rows] = v
        return out, saturations


@implements(proc=SFNNeuronLayer, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
@_in_ports(FLOAT)
class PySFNNeuronLayerFloat(_NeuronLayerModel):
    """Float64 SFN neuron without the 24-bit state clip (tolerance: module docstring)."""
    payload_type = FLOAT
    v = LavaPyType(np.ndarray, FLOAT)
    bias = LavaPyType(np.ndarray, FLOAT)
    threshold = LavaPyType(np.ndarray, FLOAT)
    s_out = LavaPyType(PyOutPort.VEC_DENSE, FLOAT)

    def fire(self, current, rows, first_step):
        out, v, saturations = semantics.neuron_step_float(
            current, None if first_step else self.v[:rows], binary=bool(self.binary[0]),
            **self.neuron_fields())
        if v is not None:
            self.v[:rows] = v
        return out, saturations


class _ReadoutModel(_StageModel):
    """The running accumulator A of the current step's lanes, sent every step (ReadoutStage)."""
    timesteps = LavaPyType(np.ndarray, INT)
    offset = LavaPyType(np.ndarray, INT)
    synops = LavaPyType(np.ndarray, INT)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.out_shape = tuple(proc_params["out_shape"])
        self.accumulator = np.zeros((self.lanes,) + tuple(proc_params["shape"]),
                                    self.payload_type)

    def run_spk(self):
        inputs = self.receive()
        u = self.encoder_step()
        rows = self.rows(u)
        if rows == 0:
            self.s_out.send(np.zeros(self.out_shape, self.payload_type))
            return
        current = self.current(inputs, rows, self.counts(u))
        if u % int(self.timesteps[0]) == 0:
            self.accumulator[:] = 0
        self.accumulator[:rows] += current
        self.s_out.send(self.accumulator.reshape(self.out_shape))


@implements(proc=ReadoutStage, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
@_in_ports(INT)
class PyReadoutStageFixed(_ReadoutModel):
    s_out = LavaPyType(PyOutPort.VEC_DENSE, INT)


@implements(proc=ReadoutStage, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
@_in_ports(FLOAT)
class PyReadoutStageFloat(_ReadoutModel):
    payload_type = FLOAT
    s_out = LavaPyType(PyOutPort.VEC_DENSE, FLOAT)


class _EncoderModel(PyLoihiProcessModel):
    """n = encode(x) (or clip of given integers) of this step's valid lanes, sent the same step;
    the elements the clip changes counted in `clipped` (InputEncoder)."""
    payload_type = INT
    clipped = LavaPyType(np.ndarray, INT)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.lanes = int(proc_params["lanes"])
        self.shape = (self.lanes,) + tuple(proc_params["sample_shape"])
        self.inv_scale = np.float32(proc_params["inv_scale"])
        self.lo, self.hi = int(proc_params["lo"]), int(proc_params["hi"])
        self.encoded = bool(proc_params["encoded"])
        self.timesteps = int(proc_params["timesteps"])
        samples = proc_params["samples"]
        self.samples = None if samples is None else int(samples)
        self.groups = None if samples is None else -(-self.samples // self.lanes)

    def rows(self, u: int) -> tuple[int, bool]:
        """The valid lanes of encoder step u, and whether the step is one of the samples' (not
        the pipeline's drain, which repeats groups)."""
        if self.samples is None:
            return self.lanes, True
        g = u // self.timesteps
        return min(self.lanes, self.samples - (g % self.groups) * self.lanes), g < self.groups

    def run_spk(self):
        x = np.asarray(self.a_in.recv()).reshape(self.shape)
        rows, counted = self.rows(self.time_step - 1)
        if self.encoded:
            n, clipped = semantics.clip_encoded(np.rint(x[:rows]), self.lo, self.hi)
        else:
            n, clipped = semantics.encode_input_counted(x[:rows], self.inv_scale, self.lo,
                                                        self.hi)
        if counted:
            self.clipped[0] += clipped
        out = np.zeros(self.shape, self.payload_type)   # padding lanes: zeros
        out[:rows] = n
        self.s_out.send(out)


@implements(proc=InputEncoder, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyInputEncoderFixed(_EncoderModel):
    a_in = LavaPyType(PyInPort.VEC_DENSE, FLOAT)
    s_out = LavaPyType(PyOutPort.VEC_DENSE, INT)


@implements(proc=InputEncoder, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyInputEncoderFloat(_EncoderModel):
    payload_type = FLOAT
    a_in = LavaPyType(PyInPort.VEC_DENSE, FLOAT)
    s_out = LavaPyType(PyOutPort.VEC_DENSE, FLOAT)


class _AccumulatorSinkModel(PyLoihiProcessModel):
    """Keeps each group's accumulator at its last timestep; sends all N once (AccumulatorSink)."""
    payload_type = INT

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.lanes = int(proc_params["lanes"])
        self.samples = int(proc_params["samples"])
        self.timesteps = int(proc_params["timesteps"])
        self.latency = int(proc_params["latency"])
        self.groups = -(-self.samples // self.lanes)
        self.accumulator = np.zeros((self.samples,) + tuple(proc_params["shape"]),
                                    self.payload_type)

    def run_spk(self):
        data = self.a_in.recv()
        u = self.time_step - 1 - self.latency
        if u < 0 or u >= self.groups * self.timesteps or u % self.timesteps != self.timesteps - 1:
            return
        first = (u // self.timesteps) * self.lanes
        rows = min(self.lanes, self.samples - first)
        self.accumulator[first:first + rows] = data[:rows]
        if u == self.groups * self.timesteps - 1:
            self.result.send(self.accumulator)


@implements(proc=AccumulatorSink, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyAccumulatorSinkFixed(_AccumulatorSinkModel):
    a_in = LavaPyType(PyInPort.VEC_DENSE, INT)
    result = LavaPyType(PyOutPort.VEC_DENSE, INT)


@implements(proc=AccumulatorSink, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyAccumulatorSinkFloat(_AccumulatorSinkModel):
    payload_type = FLOAT
    a_in = LavaPyType(PyInPort.VEC_DENSE, FLOAT)
    result = LavaPyType(PyOutPort.VEC_DENSE, FLOAT)


class _TrialSchedule(PyLoihiProcessModel):
    """Trial bookkeeping of a recurrent artifact (sim.lava.recurrent): N trials in groups of B
    side by side, the groups back to back, T Lava steps each; trial step u of the whole run is
    step u mod T of group u // T."""

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.trials = int(proc_params["trials"])
        self.batch = int(proc_params["batch"])
        self.trial_steps = int(proc_params["trial_steps"])
        self.groups = -(-self.trials // self.batch)

    def locate(self, u: int) -> tuple[int, int, int] | None:
        """(group, step in the trial, valid rows) of trial step u; None outside the run."""
        if u < 0 or u >= self.groups * self.trial_steps:
            return None
        group, t = divmod(u, self.trial_steps)
        return group, t, min(self.batch, self.trials - group * self.batch)


class _CellModel(_TrialSchedule):
    """Sends last step's readout input (one step of delay, so the sink works in parallel), then
    computes trial step u = t − 1 on the group's valid rows (padding rows are never evaluated,
    so the statistics count real trials only). The recurrent loop closes inside the process:
    a Delay reads the previous Lava step's values, exactly one trial step back."""
    payload_type = INT
    floating = False
    synops = LavaPyType(np.ndarray, INT)
    spikes = LavaPyType(np.ndarray, INT)
    payload_total = LavaPyType(np.ndarray, INT)
    saturations = LavaPyType(np.ndarray, INT)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.cell = Cell(proc_params["nodes"], proc_params["input"], proc_params["feed"],
                         proc_params["readout"], floating=self.floating)
        self.out = np.zeros((self.batch,) + tuple(proc_params["output_shape"]), self.payload_type)

    def run_spk(self):
        self.s_out.send(self.out)
        inputs = self.u_in.recv()
        where = self.locate(self.time_step - 1)
        if where is None:
            return
        _, t, rows = where
        if t == 0:
            self.cell.reset()
        out = self.cell.step(inputs[:rows])
        self.out = np.zeros_like(self.out)
        self.out[:rows] = out
        for k, name in enumerate(STATS):  # the totals so far, read once after the run
            getattr(self, name)[:] = self.cell.stats[k]


@implements(proc=RecurrentCell, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyRecurrentCellFixed(_CellModel):
    """Bit-accurate cell: synapses through sim.cpu's kernels, neurons through sim.semantics."""
    u_in = LavaPyType(PyInPort.VEC_DENSE, INT)
    s_out = LavaPyType(PyOutPort.VEC_DENSE, INT)


@implements(proc=RecurrentCell, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyRecurrentCellFloat(_CellModel):
    """float64 neurons without the 24-bit state clip (tolerance: module docstring)."""
    payload_type = FLOAT
    floating = True
    u_in = LavaPyType(PyInPort.VEC_DENSE, FLOAT)
    s_out = LavaPyType(PyOutPort.VEC_DENSE, FLOAT)


class _TrialSinkModel(_TrialSchedule):
    payload_type = INT

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.accumulator = np.zeros((self.trials, self.trial_steps) + tuple(proc_params["shape"]),
                                    self.payload_type)

    def run_spk(self):
        data = self.a_in.recv()
        u = self.time_step - 2  # the cell sends trial step u one Lava step after computing it
        where = self.locate(u)
        if where is None:
            return
        group, t, rows = where
        self.accumulator[group * self.batch:group * self.batch + rows, t] = data[:rows]
        if u == self.groups * self.trial_steps - 1:
            self.result.send(self.accumulator)


@implements(proc=TrialSink, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyTrialSinkFixed(_TrialSinkModel):
    a_in = LavaPyType(PyInPort.VEC_DENSE, INT)
    result = LavaPyType(PyOutPort.VEC_DENSE, INT)


@implements(proc=TrialSink, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyTrialSinkFloat(_TrialSinkModel):
    payload_type = FLOAT
    a_in = LavaPyType(PyInPort.VEC_DENSE, FLOAT)
    result = LavaPyType(PyOutPort.VEC_DENSE, FLOAT)
