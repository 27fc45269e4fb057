"""sim.lava lanes: every Lava timestep carries B samples side by side (sim.lava.graph). The
result equals sim.cpu bit for bit for every B (the last group partly padding), at T > 1, in
both tags; a failing model in lanes mode still ends every Lava process with a SimulationError."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import nets
import sim.cpu
import sim.lava
from lava_helpers import assert_failed_cleanly, assert_same, lava_children
from sim.lava import graph, runner
from test_lava import _inject, _small_artifact, _small_inputs
from toolchain.errors import SimulationError

pytestmark = pytest.mark.lava

MODELS = Path(__file__).resolve().parents[1] / "toolchain" / "data"

LANES = (1, 4, 7)
N = 23  # a multiple of none of LANES but 1: the last group is partly padding


def _steps_taken(monkeypatch) -> list[int]:
    """Record the step counts of every guarded run() call."""
    taken, advance = [], runner.GuardedRun.advance

    def recording(self, steps):
        taken.append(steps)
        advance(self, steps)

    monkeypatch.setattr(runner.GuardedRun, "advance", recording)
    return taken


@pytest.mark.parametrize("name", sorted(nets.NETS))
def test_lanes_equal_cpu(name, monkeypatch):
    """Every test network with 1, 4 and 7 lanes: output, accumulator, every statistic equal
    sim.cpu's, in ⌈N/B⌉ + latency Lava steps."""
    compiled, _, test_x = nets.compiled(name)
    art, x = compiled.artifact, test_x[:N]
    reference = sim.cpu.run(art, x)
    latency = graph.plan(art).latency
    taken = _steps_taken(monkeypatch)
    for lanes in LANES:
        taken.clear()
        assert_same(sim.lava.run(art, x, lanes=lanes, timeout=120), reference)
        assert taken == [-(-N // lanes) + latency]


@pytest.fixture(scope="module")
def digits():
    from exporters.digits import load_digits_split
    from toolchain.compiler import compile_onnx

    x_train, _, x_test, _ = load_digits_split()
    return compile_onnx(MODELS / "digits_cnn_relu.onnx", calib=x_train).artifact, x_test


def test_digits_cnn_lanes_equal_cpu(digits):
    art, x_test = digits
    x = x_test[:45]
    reference = sim.cpu.run(art, x)
    for lanes in LANES:
        assert_same(sim.lava.run(art, x, lanes=lanes, timeout=120), reference)


@pytest.mark.parametrize("name,binary,lanes", [("residual", False, 7), ("concat", True, 4)])
def test_multi_timestep_lanes_equal_cpu(name, binary, lanes):
    """T = 4 with lanes: every lane keeps its state across its sample's 4 steps."""
    compiled, _, test_x = nets.compiled(name)
    x = test_x[:N]
    reference = sim.cpu.run(compiled.artifact, x, timesteps=4, binary=binary)
    assert_same(sim.lava.run(compiled.artifact, x, timesteps=4, binary=binary, lanes=lanes,
                             timeout=120), reference)


@pytest.mark.parametrize("adaptive,decay,timesteps,binary", [
    (True, 4096, 1, False), (False, 1500, 3, False)])
def test_adaptive_leak_and_signed_neurons_in_lanes_both_tags(adaptive, decay, timesteps,
                                                              binary):
    art, x = _small_artifact(adaptive, decay), _small_inputs(N)
    reference = sim.cpu.run(art, x, timesteps=timesteps, binary=binary)
    for tag in sim.lava.TAGS:
        assert_same(sim.lava.run(art, x, timesteps=timesteps, binary=binary, tag=tag, lanes=4,
                                 timeout=120), reference)


def test_floating_pt_lanes_keep_saturation_per_sample():
    """The floating_pt tolerance with lanes: only samples that saturate in fixed_pt differ."""
    art = _small_artifact(weight_exp=9, threshold=2 ** 21, bias=0)
    x = _small_inputs(40)
    fixed = sim.lava.run(art, x, lanes=7, timeout=120)
    floating = sim.lava.run(art, x, tag="floating_pt", lanes=7, timeout=120)
    assert_same(fixed, sim.cpu.run(art, x))
    saturated = np.array([sim.cpu.run(art, x[i:i + 1]).stats["h"].saturations > 0
                          for i in range(len(x))])
    differs = np.any(floating.accumulator != fixed.accumulator, axis=1)
    np.testing.assert_array_equal(differs & ~saturated, False)
    assert floating.stats["h"].saturations == fixed.stats["h"].saturations > 0


def test_progress_counts_samples_in_groups():
    compiled, calib_x, test_x = nets.compiled("mlp")
    x = np.concatenate([test_x, calib_x])[:300]
    seen = []
    result = sim.lava.run(compiled.artifact, x, lanes=7, progress=seen.append, timeout=120)
    assert seen == [259, 41]  # ⌈256/7⌉ = 37 groups of 7 per run() call
    assert_same(result, sim.cpu.run(compiled.artifact, x))


def test_choose_lanes():
    p = graph.plan(nets.compiled("maxpool_cnn")[0].artifact)
    assert graph.choose_lanes(p, 1000) == graph.DEFAULT_LANES
    assert graph.choose_lanes(p, 10) == 10
    assert graph.choose_lanes(p, 10, 4) == 4
    assert graph.choose_lanes(p, 3, 4) == 3
    cap = graph.MESSAGE_BYTES // (8 * p.widest())
    assert graph.choose_lanes(p, 10 ** 6, 10 ** 6) == cap
    for bad in (0, -2, 2.5, True):
        with pytest.raises(SimulationError, match="lanes must be an integer"):
            graph.choose_lanes(p, 10, bad)


def test_bad_lanes_refused_before_lava_starts(monkeypatch):
    def must_not_start():
        raise AssertionError("Lava was started")

    monkeypatch.setattr(runner, "load_lava", must_not_start)
    with pytest.raises(SimulationError, match="lanes must be an integer"):
        sim.lava.run(_small_artifact(), _small_inputs(10), lanes=0)


def test_failing_model_in_lanes_mode_ends_every_process(monkeypatch, shared_memory_names):
    """A middle layer raises at step 3 of a 4-lane run: SimulationError with the model's text
    well within the guard, no Lava child left, every shared-memory segment unlinked."""
    compiled, _, test_x = nets.compiled("residual")
    art, x = compiled.artifact, test_x[:N]
    _inject(monkeypatch, "/Relu_output_0", step=3)
    start = time.monotonic()
    with pytest.raises(SimulationError) as info:
        sim.lava.run(art, x, lanes=4, timeout=60)
    elapsed = time.monotonic() - start
    assert_failed_cleanly(info, elapsed, "injected failure in /Relu_output_0 at step 3",
                          shared_memory_names)


def test_hanging_model_in_lanes_mode_is_ended_at_the_limit(monkeypatch, shared_memory_names):
    compiled, _, test_x = nets.compiled("mlp")
    _inject(monkeypatch, "/net/net.3/Relu_output_0", step=3, hang=True)
    start = time.monotonic()
    with pytest.raises(SimulationError, match="did not finish within 4 s"):
        sim.lava.run(compiled.artifact, test_x[:N], lanes=7, timeout=4)
    assert time.monotonic() - start < 4 + 6
    assert lava_children() == []
    assert not [n for n in shared_memory_names if os.path.exists(f"/dev/shm/{n}")]


def test_cli_lanes_equals_cpu(tmp_path):
    from toolchain.cli import main

    compiled, _, test = nets.compiled("maxpool_cnn")
    compiled.save(tmp_path / "m.sfn")
    np.save(tmp_path / "x.npy", test[:N])
    for backend, extra in (("cpu", []), ("lava", ["--lanes", "5"])):
        r = CliRunner().invoke(main, ["run", str(tmp_path / "m.sfn"), "--input",
                                      str(tmp_path / "x.npy"), "--output",
                                      str(tmp_path / f"{backend}.npy"), "--backend", backend,
                                      "--timeout", "120", *extra])
        assert r.exit_code == 0, r.output
    assert np.array_equal(np.load(tmp_path / "cpu.npy"), np.load(tmp_path / "lava.npy"))
    r = CliRunner().invoke(main, ["run", str(tmp_path / "m.sfn"), "--input",
                                  str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"),
                                  "--backend", "lava", "--lanes", "0"])
    assert r.exit_code != 0 and "--lanes" in r.output


def test_lanes_is_the_trial_batch_of_a_recurrent_artifact(monkeypatch):
    from test_lava_rnn import _compiled, _trials

    art, _ = _compiled("relu", True)
    x = _trials(n=7, steps=6)
    taken = _steps_taken(monkeypatch)
    assert_same(sim.lava.run(art, x, lanes=3, timeout=120), sim.cpu.run(art, x))
    assert taken == [3 * 6 + 1]  # ⌈7/3⌉ groups of 6 steps, plus the sink's step


@pytest.mark.slow
@pytest.mark.parametrize("lanes", (3, 64))
def test_lanes_many_samples(lanes, digits):
    art, x_test = digits
    x = np.concatenate([x_test] * 3)
    assert_same(sim.lava.run(art, x, lanes=lanes, timeout=600), sim.cpu.run(art, x))
