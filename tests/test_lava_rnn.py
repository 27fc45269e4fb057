"""sim.lava on recurrent networks (E/I RNN cells from exporters.rnn): fixed_pt equals sim.cpu bit
for bit on whole trials, floating_pt within its tolerance, state resets between trials, failures
inside the cell process end every Lava process."""
from __future__ import annotations

import copy
import os
import time
from functools import lru_cache

import numpy as np
import pytest

import sim.cpu
import sim.lava
from lava_helpers import assert_failed_cleanly, assert_same, lava_children
from sim.artifact import Artifact
from sim.ir import Add, Concat, Delay, Dense, Input, Neuron, Node, Readout
from sim.lava import hardware, recurrent
from toolchain.errors import ShapeError, SimulationError, UnsupportedOpError

pytestmark = pytest.mark.lava

VARIANTS = {"relu": True, "sigmoid": False, "tanh": False}  # activation → Dale's law


@lru_cache(maxsize=None)
def _compiled(activation: str, dale: bool, units: int = 24, task: str = "go_nogo",
              steps: int = 30, seed: int = 1):
    """An untrained E/I RNN cell, exported and compiled with its task's inputs as calibration."""
    import tempfile

    from exporters.rnn.export import export_rnn_onnx
    from exporters.rnn.model import EIRNN
    from toolchain.tasks import make_task
    from toolchain.compiler import compile_onnx

    data = make_task(task, T=steps)
    model = EIRNN(data.n_inputs, data.n_outputs, n_units=units, activation=activation, dale=dale,
                  seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{activation}.onnx")
        export_rnn_onnx(model, path, task=data)
        art = compile_onnx(path, calib=data.inputs).artifact
    assert art.recurrent
    return art, data


def _trials(n: int = 11, steps: int = 25, inputs: int = 3, seed: int = 5) -> np.ndarray:
    """Random trials (n, steps, inputs) in [0, 1], each trial with its own input scale."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.2, 1.0, (n, 1, 1))
    return (rng.uniform(0, 1, (n, steps, inputs)) * scale).astype(np.float32)


@pytest.mark.parametrize("per_channel", [pytest.param(False, marks=pytest.mark.slow), True],
                         ids=["per-layer", "per-unit"])     # per-layer: make test-all
def test_shipped_tanh_cell_equals_cpu_either_scale(per_channel):
    """A trained 100-unit tanh cell with Dale's law, both activation-scale choices: per unit the
    leaky thresholds differ unit by unit (they absorb the gain rounding); fixed_pt is sim.cpu."""
    from toolchain.tasks import make_task
    from toolchain.compiler import compile_onnx
    path = os.path.join(os.path.dirname(__file__), "data", "rnn", "cddm_tanh_dale.onnx")
    art = compile_onnx(path, per_channel=per_channel).artifact
    assert art.meta["rnn"]["per_channel"] == per_channel
    if per_channel:
        assert len(np.unique(art.node("y").threshold)) > 3
    x = make_task("cddm").inputs[::60]
    assert_same(sim.lava.run(art, x, timeout=300), sim.cpu.run(art, x))


@pytest.mark.parametrize("activation", sorted(VARIANTS))
def test_trials_equal_cpu(activation):
    """Whole trials, 11 of them: fixed_pt in groups of 4 side by side (the last padded) and
    floating_pt all side by side equal sim.cpu: per-step output, accumulator, every statistic."""
    art, _ = _compiled(activation, VARIANTS[activation])
    x = _trials()
    reference = sim.cpu.run(art, x)
    assert reference.output.shape == (11, 25, 1)
    assert sum(st.synops for st in reference.stats.values()) > 0
    assert sum(st.saturations for st in reference.stats.values()) == 0
    assert np.abs(reference.accumulator).max() > 0
    seen = []
    fixed = sim.lava.run(art, x, batch=4, progress=seen.append, timeout=120)
    assert seen == [4, 4, 3]  # one report per group of trials
    assert_same(fixed, reference)
    assert_same(sim.lava.run(art, x, tag="floating_pt", timeout=120), reference)


def _handmade() -> Artifact:
    """A recurrent graph the exporter does not make: delays of a later neuron, of a synapse
    node, of the input and of the readout; a leaky neuron that resets by subtraction (fresh each
    step), integrators with and without leak, signed levels, a concat."""
    rng = np.random.default_rng(2)

    def w(o, i):
        return rng.integers(-40, 40, (o, i)).astype(np.int16)

    nodes = [
        Input("x", (), (3,), inv_scale=100.0, lo=-128, hi=127),
        Delay("d_h", (), (5,), source="h"),
        Delay("d_s", (), (4,), source="sum"),
        Delay("d_x", (), (3,), source="x"),
        Delay("d_y", (), (2,), source="y"),
        Dense("a", ("x",), (4,), weight=w(4, 3)),
        Dense("r", ("d_h",), (4,), weight=w(4, 5)),
        Dense("ax", ("d_x",), (4,), weight=w(4, 3), weight_exp=1),
        Dense("ay", ("d_y",), (4,), weight=w(4, 2)),
        Add("sum", ("a", "r", "ax", "ay"), (4,), gains=np.ones((4, 4), np.int64),
            exps=(0, 0, 0, 0)),
        Add("sum2", ("sum", "d_s"), (4,), gains=np.array([[1] * 4, [-1, 1, -1, 1]]), exps=(0, 1)),
        Neuron("g", ("sum2",), (4,), threshold=np.full(4, 64), bias=np.arange(-2, 2), lo=-7,
               hi=7, decay=1500),
        Dense("hd", ("g",), (5,), weight=w(5, 4)),
        Neuron("h", ("hd",), (5,), threshold=np.full(5, 8), bias=np.zeros(5, np.int64), lo=-20,
               hi=20, reset="none"),
        Neuron("k", ("hd",), (5,), threshold=np.arange(4, 9), bias=np.ones(5, np.int64), lo=0,
               hi=15, decay=700, reset="none"),
        Concat("c", ("h", "k"), (10,), axis=0),
        Dense("o", ("c",), (2,), weight=w(2, 10)),
        Readout("y", ("o",), (2,), scale=np.array([0.5, 0.125], np.float32),
                bias=np.array([3, -1])),
    ]
    art = Artifact(nodes, "x", "y")
    art.validate()
    return art


def test_handmade_recurrent_graph_equals_cpu():
    art = _handmade()
    x = np.random.default_rng(4).uniform(-1.5, 1.5, (9, 17, 3)).astype(np.float32)
    reference = sim.cpu.run(art, x)
    assert sum(st.saturations for st in reference.stats.values()) == 0
    assert all(reference.stats[n].spikes > 0 for n in ("g", "h", "k"))
    for tag in sim.lava.TAGS:
        assert_same(sim.lava.run(art, x, tag=tag, batch=4, timeout=120), reference)


def test_state_resets_between_trials():
    """Trials a and b run together — back to back in one row (batch 1) or side by side — give
    the rows each gives alone; the leaky state and the delay restart at every trial."""
    art, _ = _compiled("relu", True)
    x = _trials(2, steps=20, seed=11)
    a, b = (sim.lava.run(art, x[i:i + 1], timeout=120) for i in range(2))
    # b run straight after a without a reset would differ: the carried state matters
    carried = sim.cpu.run(art, x.reshape(1, 40, 3)).accumulator[:, 20:]
    assert not np.array_equal(carried, b.accumulator)
    for batch in (1, 2):
        both = sim.lava.run(art, x, batch=batch, timeout=120)
        np.testing.assert_array_equal(both.accumulator, np.concatenate([a.accumulator,
                                                                        b.accumulator]))
        np.testing.assert_array_equal(both.output, np.concatenate([a.output, b.output]))
        for name, st in both.stats.items():
            for field in ("spikes", "payload", "synops", "saturations"):
                assert getattr(st, field) == getattr(a.stats[name], field) + \
                    getattr(b.stats[name], field)
    assert_same(both, sim.cpu.run(art, x))


def _saturating(art):
    """The relu cell with y's input shifted up and θ raised so that V_MAX/θ < hi: trials with
    strong input clip the leaky state (fixed_pt) where floating_pt keeps it."""
    art = copy.deepcopy(art)
    art.node("y/in").exps = (12,)
    y = art.node("y")
    y.threshold = y.threshold * 2048
    return art


def test_floating_pt_differs_only_in_saturating_trials():
    art = _saturating(_compiled("relu", True)[0])
    x = _trials(12, steps=20, seed=3)
    x *= np.linspace(0.02, 1.0, 12)[:, None, None].astype(np.float32)
    reference = sim.cpu.run(art, x)
    fixed = sim.lava.run(art, x, timeout=120)
    floating = sim.lava.run(art, x, tag="floating_pt", timeout=120)
    assert_same(fixed, reference)
    saturated = np.array([sim.cpu.run(art, x[i:i + 1]).stats["y"].saturations > 0
                          for i in range(len(x))])
    assert 0 < saturated.sum() < len(x)
    assert floating.stats["y"].saturations > 0
    differs = np.any(floating.accumulator != fixed.accumulator, axis=(1, 2))
    np.testing.assert_array_equal(differs & ~saturated, False)
    assert differs.any()


@pytest.mark.parametrize("hang", [False, True])
def test_failure_in_cell_ends_every_process(monkeypatch, hang, shared_memory_names):
    """An exception (or a hang) inside the recurrent cell's model, mid-trial, with the sink
    waiting on it: a SimulationError with the model's own message (or the time limit), no Lava
    process left, no shared memory left, and the next run is exact again."""
    from sim.lava.procs import models

    names = shared_memory_names
    run_spk = models.PyRecurrentCellFixed.run_spk

    def failing(self):
        if self.time_step == 37:  # group 1 (batch 4), trial step 11
            if hang:
                time.sleep(3600)
            raise ValueError("injected failure in the cell at step 37")
        run_spk(self)

    monkeypatch.setattr(models.PyRecurrentCellFixed, "run_spk", failing)
    art, _ = _compiled("tanh", False)
    x = _trials()
    start = time.monotonic()
    with pytest.raises(SimulationError) as info:
        sim.lava.run(art, x, batch=4, timeout=4 if hang else 60)
    elapsed = time.monotonic() - start
    if hang:
        assert "did not finish within 4 s" in str(info.value)
        assert elapsed < 4 + 6
        assert lava_children() == []
        assert names and not [n for n in names if os.path.exists(f"/dev/shm/{n}")]
    else:
        assert "'cell'" in str(info.value)
        assert_failed_cleanly(info, elapsed, "injected failure in the cell at step 37", names)
    monkeypatch.undo()
    if not hang:
        assert_same(sim.lava.run(art, x, batch=4, timeout=60), sim.cpu.run(art, x))


class Mystery(Node):
    kind = "mystery"
    role = "synapse"


def test_refusals_and_edge_cases(monkeypatch):
    """Checked before Lava starts: unmappable kinds, feed-forward-shaped inputs, bad tags and
    batches; no trials returns sim.cpu's empty result."""
    art, _ = _compiled("relu", True)
    with pytest.raises(ShapeError, match=r"expects \(N, T, 3\)"):
        sim.lava.run(art, np.zeros((4, 3), np.float32))
    empty = np.zeros((0, 7, 3), np.float32)
    assert_same(sim.lava.run(art, empty), sim.cpu.run(art, empty))

    def must_not_start():
        raise AssertionError("Lava was started")

    monkeypatch.setattr(recurrent, "load_lava", must_not_start)
    with pytest.raises(SimulationError, match="unknown Lava tag"):
        sim.lava.run(art, _trials(2), tag="fast")
    with pytest.raises(SimulationError, match="batch must be ≥ 1"):
        sim.lava.run(art, _trials(2), batch=0)
    with pytest.raises(SimulationError, match="at least one step"):
        sim.lava.run(art, np.zeros((2, 0, 3), np.float32))
    odd = copy.deepcopy(art)
    y = odd.nodes.index(odd.node("y"))
    odd.nodes.insert(y, Mystery("odd one", ("y/in",), odd.node("y").shape))
    odd.node("y").inputs = ("odd one",)
    with pytest.raises(UnsupportedOpError, match=r"node 'odd one' \(mystery\) has no Lava"):
        sim.lava.run(odd, _trials(2))


def test_schedule_and_hardware_cases():
    """B trials side by side, ⌈N/B⌉·T + 1 Lava steps, one message ≤ 1 MiB; a delay is a
    connection, the leaky integrator needs microcode."""
    art, _ = _compiled("relu", True)
    p = recurrent.plan(art, trials=11, trial_steps=25, batch=4)
    assert (p.batch, p.groups, p.num_steps, p.group_ends()) == (4, 3, 76, [26, 51, 76])
    assert [n.kind for n in p.nodes][0] == "delay" and p.feed == "o"
    assert recurrent.plan(art, 5000, 10).batch == recurrent.DEFAULT_BATCH
    assert recurrent.trial_batch(art, 10) == 10
    x = _trials(11)
    order = recurrent.step_major(p, x)
    assert order.shape == (75, 4, 3)
    np.testing.assert_array_equal(order[25 + 7, 2], x[4 + 2, 7])  # group 1, step 7, row 2
    np.testing.assert_array_equal(order[50:, 3], 0)  # padding of the last group
    cases = {n.name: hardware.hardware_case(n, feeding=art.node(n.inputs[0]) if n.inputs else None)
             for n in art.nodes}
    assert cases["y_prev"] == cases["z_rec"] == cases["z"] == "chip-synapse"
    assert cases["y"] == cases["f"] == "microcode"
    assert cases["u"] == cases["o/readout"] == "host"


@pytest.mark.slow
def test_cddm_sized_network_equals_cpu():
    """100 units, 6 inputs, 2 outputs, T = 300, 98 trials (the CDDM analysis grid)."""
    from toolchain.tasks import CDDM_ANALYSIS_COHERENCES, make_task

    art, _ = _compiled("relu", True, units=100, task="cddm", steps=300, seed=0)
    x = make_task("cddm", T=300, coherences=CDDM_ANALYSIS_COHERENCES).inputs
    assert_same(sim.lava.run(art, x, timeout=600), sim.cpu.run(art, x))
