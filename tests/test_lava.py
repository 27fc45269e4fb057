"""sim.lava: fixed_pt equals sim.cpu bit for bit, floating_pt within its documented tolerance,
failures end every Lava process, unmappable nodes are refused before anything starts."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

import nets
from lava_helpers import assert_failed_cleanly, assert_same, lava_children
import sim.cpu
import sim.lava
from sim.artifact import Artifact
from sim.ir import Add, Dense, Input, Neuron, Node, Readout
from sim.lava import graph, hardware
from toolchain.errors import SimulationError, UnsupportedOpError

pytestmark = pytest.mark.lava

ROOT = Path(__file__).resolve().parents[1]
N_SAMPLES = 120


def _small_artifact(adaptive: bool = False, decay: int = 4096, bias: int = 3,
                    weight_exp: int = 0, threshold: int = 16) -> Artifact:
    """Input(4) → Dense → SFN neuron (uniform or adaptive, signed levels, optional leak) →
    Dense → uniform neuron → Dense → Readout, with fixed random integer weights."""
    rng = np.random.default_rng(7)
    hidden = Neuron("h", ("d1",), (6,), threshold=np.full(6, threshold), bias=np.full(6, bias),
                    lo=-7, hi=7, decay=decay)
    if adaptive:
        hidden.fire = "adaptive"
        hidden.thresholds = np.sort(rng.integers(-300, 300, (6, 3)), axis=1)
        hidden.payload = np.array([-3, -1, 2, 5])
    nodes = [
        Input("x", (), (4,), inv_scale=100.0, lo=-128, hi=127),
        Dense("d1", ("x",), (6,), weight=rng.integers(-60, 60, (6, 4)) * 2,
              weight_exp=weight_exp),
        hidden,
        Dense("d2", ("h",), (5,), weight=rng.integers(-60, 60, (5, 6)) * 2),
        Neuron("g", ("d2",), (5,), threshold=np.arange(5, 10), bias=np.arange(-2, 3), lo=0,
               hi=15, decay=decay),
        Dense("d3", ("g",), (3,), weight=rng.integers(-60, 60, (3, 5)) * 2),
        Readout("y", ("d3",), (3,), scale=np.array([0.5, 0.25, 1.0], np.float32),
                bias=np.array([1, -2, 0])),
    ]
    return Artifact(nodes, "x", "y")


def _small_inputs(n: int = 150) -> np.ndarray:
    return np.random.default_rng(3).uniform(-1.3, 1.3, (n, 4)).astype(np.float32)


@pytest.mark.parametrize("name", sorted(nets.NETS))
def test_fixed_pt_equals_cpu_and_floating_pt_within_tolerance(name):
    """Every test network: fixed_pt output, accumulator and statistics (synops included) equal
    sim.cpu's; no neuron saturates, so floating_pt is exact too (its documented tolerance)."""
    compiled, _, test_x = nets.compiled(name)
    art, x = compiled.artifact, test_x[:N_SAMPLES]
    reference = sim.cpu.run(art, x)
    assert sum(st.synops for st in reference.stats.values()) > 0
    assert sum(st.saturations for st in reference.stats.values()) == 0
    assert_same(sim.lava.run(art, x, timeout=120), reference)
    assert_same(sim.lava.run(art, x, tag="floating_pt", timeout=120), reference)


@pytest.mark.parametrize("name,binary", [("residual", False), ("concat", True)])
def test_multi_timestep_equals_cpu(name, binary):
    """T = 4: neurons keep state across a sample's steps, reset by subtraction, restart every
    4 steps at their layer's offset; graded and binary spikes."""
    compiled, _, test_x = nets.compiled(name)
    x = test_x[:N_SAMPLES]
    reference = sim.cpu.run(compiled.artifact, x, timesteps=4, binary=binary)
    assert_same(sim.lava.run(compiled.artifact, x, timesteps=4, binary=binary, timeout=120),
                 reference)


@pytest.mark.parametrize("adaptive,decay,timesteps,binary", [
    (True, 4096, 1, False), (False, 1500, 1, False), (False, 1500, 3, False),
    (False, 4096, 3, True)])
def test_adaptive_leak_and_signed_neurons_equal_cpu(adaptive, decay, timesteps, binary):
    """Fire functions the test networks do not use: adaptive payload tables, leak, signed levels,
    in both tags (no saturation here)."""
    art, x = _small_artifact(adaptive, decay), _small_inputs()
    reference = sim.cpu.run(art, x, timesteps=timesteps, binary=binary)
    for tag in sim.lava.TAGS:
        assert_same(sim.lava.run(art, x, timesteps=timesteps, binary=binary, tag=tag,
                                  timeout=120), reference)


def test_floating_pt_differs_only_where_fixed_pt_saturates():
    """The documented tolerance, both ways: fixed_pt clips v at ±(2²³−1) like sim.cpu and counts
    it; floating_pt does not clip, so exactly the samples whose neurons saturate differ."""
    art = _small_artifact(weight_exp=9, threshold=2 ** 21, bias=0)  # V_MAX / θ < hi: a clip shows
    x = _small_inputs()
    reference = sim.cpu.run(art, x)
    fixed = sim.lava.run(art, x, timeout=120)
    floating = sim.lava.run(art, x, tag="floating_pt", timeout=120)
    assert_same(fixed, reference)
    assert reference.stats["h"].saturations > 0
    assert floating.stats["h"].saturations == reference.stats["h"].saturations
    per_sample = [sim.cpu.run(art, x[i:i + 1]).stats["h"].saturations for i in range(len(x))]
    saturated = np.array(per_sample) > 0
    assert 0 < saturated.sum() < len(x)
    differs = np.any(floating.accumulator != fixed.accumulator, axis=1)
    np.testing.assert_array_equal(differs & ~saturated, False)
    assert differs.any()


def test_progress_reports_every_sample():
    compiled, calib_x, test_x = nets.compiled("mlp")
    x = np.concatenate([test_x, calib_x])[:300]  # two run() calls of 256 and 44 samples
    seen = []
    result = sim.lava.run(compiled.artifact, x, progress=seen.append, timeout=120)
    assert seen == [256, 44]
    assert_same(result, sim.cpu.run(compiled.artifact, x))


def _inject(monkeypatch, node_name: str, step: int, hang: bool = False):
    """Make the fixed_pt neuron-layer model of `node_name` raise (or hang) at Lava step `step`;
    the forked Lava processes inherit the patched class."""
    from sim.lava.procs import models

    run_spk = models.PySFNNeuronLayerFixed.run_spk

    def failing(self):
        if self.proc_params["name"] == node_name and self.time_step == step:
            if hang:
                time.sleep(3600)
            raise ValueError(f"injected failure in {node_name} at step {step}")
        run_spk(self)

    monkeypatch.setattr(models.PySFNNeuronLayerFixed, "run_spk", failing)


def test_failing_process_model_raises_its_error_and_ends_every_process(monkeypatch,
                                                                         shared_memory_names):
    compiled, _, test_x = nets.compiled("residual")
    art, x = compiled.artifact, test_x[:50]
    _inject(monkeypatch, "/Relu_output_0", step=5)  # a layer in the middle: consumers block
    start = time.monotonic()
    with pytest.raises(SimulationError) as info:
        sim.lava.run(art, x, timeout=60)
    elapsed = time.monotonic() - start
    assert "'/Relu_output_0'" in str(info.value)
    assert_failed_cleanly(info, elapsed, "injected failure in /Relu_output_0 at step 5",
                          shared_memory_names)
    monkeypatch.undo()
    assert_same(sim.lava.run(art, x, timeout=60), sim.cpu.run(art, x))


def test_hanging_process_model_is_ended_at_the_time_limit(monkeypatch, shared_memory_names):
    compiled, _, test_x = nets.compiled("mlp")
    art, x = compiled.artifact, test_x[:50]
    _inject(monkeypatch, "/net/net.3/Relu_output_0", step=3, hang=True)
    start = time.monotonic()
    with pytest.raises(SimulationError, match="did not finish within 4 s"):
        sim.lava.run(art, x, timeout=4)
    assert time.monotonic() - start < 4 + 6  # the limit plus ending the processes
    assert lava_children() == []
    assert not [n for n in shared_memory_names if os.path.exists(f"/dev/shm/{n}")]


@dataclass
class Mystery(Node):
    """A node kind no backend maps (stands for any future kind sim.lava does not know)."""
    kind: ClassVar[str] = "mystery"
    role: ClassVar[str] = "synapse"


def test_unmapped_node_is_refused_before_lava_starts(monkeypatch):
    art = _small_artifact()
    art.nodes.insert(2, Mystery("odd one", ("d1",), (6,)))
    art.nodes[3].inputs = ("odd one",)

    def must_not_start():
        raise AssertionError("Lava was started for an unmappable artifact")

    monkeypatch.setattr(sim.lava.runner, "load_lava", must_not_start)
    with pytest.raises(UnsupportedOpError, match=r"node 'odd one' \(mystery\) has no Lava mapping"):
        sim.lava.run(art, _small_inputs(10))
    integrator = _small_artifact()
    integrator.nodes[2].reset = "none"  # a recurrent network's leaky integrator
    with pytest.raises(UnsupportedOpError, match=r"node 'h' \(neuron\): reset 'none'"):
        sim.lava.run(integrator, _small_inputs(10))


def test_plan_timing_and_refusals():
    """Latency = neuron layers on the longest path; shallower inputs are delayed to line up."""
    p = graph.plan(nets.compiled("residual")[0].artifact)
    stages = {s.node.name: s for s in p.stages}
    assert p.latency == 4 and p.num_steps(10) == 14
    add = stages["/Relu_output_0"]  # reads the branch (offset 2) and the stem (offset 1)
    assert (add.offset, add.delays) == (2, [1, 0])
    assert graph.plan(_small_artifact(), timesteps=3).num_steps(10) == 32
    with pytest.raises(SimulationError, match="T = 1 only"):
        graph.plan(_small_artifact(adaptive=True), timesteps=2)


def test_hardware_cases():
    art = nets.compiled("maxpool_cnn")[0].artifact
    cases = {n.kind: hardware.hardware_case(n) for n in art.nodes}
    assert cases == {"input": "host", "conv": "chip-synapse", "neuron": "microcode",
                     "maxpool": "microcode", "reshape": "chip-synapse", "dense": "chip-synapse",
                     "readout": "host"}
    # θ = 2^k with b + θ//2 a multiple of θ: exact as weight-exponent shift + graded ReLU
    chip = Neuron("n", ("d",), (2,), threshold=np.array([16, 4]), bias=np.array([8, -2]))
    assert hardware.hardware_case(chip) == "chip-neuron"
    assert hardware.hardware_case(chip, timesteps=4) == "microcode"
    assert hardware.hardware_case(chip, feeding=Add("d", ("a", "b"), (2,))) == "microcode"
    chip.bias = np.array([8, -1])
    assert hardware.hardware_case(chip) == "microcode"
    assert hardware.hardware_case(Mystery("m", ("d",), (2,))) == "unmapped"
    assert set(hardware.HARDWARE_CASES) == {"host", "chip-synapse", "chip-neuron", "microcode",
                                            "unmapped"}


def test_import_is_cheap_and_shim_is_scoped():
    """`import sim.lava` loads no Lava (no fork start method); the 3.11 shim patches
    dataclasses only while Lava's var_model module imports."""
    code = ("import sys, dataclasses, multiprocessing as mp; import sim.lava; "
            "assert not [m for m in sys.modules if m.split('.')[0] == 'lava'], 'lava imported'; "
            "assert mp.get_start_method(allow_none=True) is None; "
            "get_field = dataclasses._get_field; "
            "from sim.lava.compat import load_lava; load_lava(); "
            "assert dataclasses._get_field is get_field; "
            "import lava.magma.compiler.var_model as vm; "
            "assert vm.CoreEncoder().x == vm.ByteEncoder(); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(nets.NETS))
def test_fixed_pt_equals_cpu_many_samples(name):
    compiled, calib_x, test_x = nets.compiled(name)
    x = np.concatenate([test_x, calib_x] * 3)
    assert_same(sim.lava.run(compiled.artifact, x, timeout=600),
                 sim.cpu.run(compiled.artifact, x))
