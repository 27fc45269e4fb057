"""sim.lava.Network: the artifact as one hierarchical Lava Process wired between Lava's own
RingBuffer source and sink in a user-built graph, run with the user's run configuration, equals
sim.cpu bit for bit; its latency is what it says; `import sim.lava` makes Lava importable on 3.11.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nets
import sim.cpu
import sim.lava
from toolchain.errors import UnsupportedOpError

pytestmark = pytest.mark.lava
ROOT = Path(__file__).resolve().parents[1]


def _user_graph(net, x, tag, clipped=None):
    """RingBuffer → net → RingBuffer, built and run the way a Lava user would; returns the
    sink's recorded data (*out.shape, steps); `clipped` (a list) gets the encoder's count."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source

    steps = net.num_steps(len(x))
    source = Source(data=net.feed(x))
    sink = Sink(shape=net.out.shape, buffer=steps)
    source.s_out.connect(net.inp)
    net.out.connect(sink.a_in)
    sink.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag=tag))
    try:
        if clipped is not None:
            clipped.append(int(net.procs.encoder.clipped.get()[0]))
        return sink.data.get()
    finally:
        sink.stop()


@pytest.mark.parametrize("tag,encoded,timesteps,binary,lanes", [
    ("fixed_pt", True, 1, False, None),        # int32 RingBuffer: the encoder's integers
    ("floating_pt", False, 1, False, None),    # float samples, encoded inside the Network
    ("fixed_pt", True, 3, True, 4),            # T = 3 binary spikes, 4 lanes side by side
    ("floating_pt", False, 2, False, 3),
])
def test_ring_buffer_network_ring_buffer_equals_cpu(tag, encoded, timesteps, binary, lanes):
    compiled, _, test_x = nets.compiled("avgpool_cnn")
    art, x = compiled.artifact, test_x[:10]
    net = sim.lava.Network(art, timesteps=timesteps, binary=binary, lanes=lanes,
                           encoded=encoded)
    assert net.latency == 2 and net.inp.shape == ((lanes,) if lanes else ()) + art.input_shape
    data = _user_graph(net, x, tag)
    reference = sim.cpu.run(art, x, timesteps=timesteps, binary=binary)
    accumulator = net.collect(data, len(x))
    np.testing.assert_array_equal(accumulator, reference.accumulator)
    np.testing.assert_array_equal(net.readout(accumulator), reference.output)
    assert np.abs(reference.accumulator).sum() > 0


def test_latency_is_where_the_first_result_appears():
    """One sample per step at T = 1: out carries zeros for `latency` steps, then sample k's
    accumulator at step k + 1 + latency (sink column k + latency)."""
    compiled, _, test_x = nets.compiled("mlp")
    art, x = compiled.artifact, test_x[:6]
    net = sim.lava.Network(art, encoded=True)
    data = np.moveaxis(_user_graph(net, x, "fixed_pt"), -1, 0)
    reference = sim.cpu.run(art, x).accumulator
    assert net.latency == 2 and len(data) == len(x) + 2
    np.testing.assert_array_equal(data[:net.latency], 0)
    np.testing.assert_array_equal(data[net.latency:], reference)


@pytest.mark.parametrize("tag,encoded,timesteps,lanes", [
    ("fixed_pt", True, 1, 4),          # integers one past the levels: the encoder clips them
    ("floating_pt", False, 2, None),
])
def test_the_encoder_counts_what_it_clips_as_sim_cpu_does(tag, encoded, timesteps, lanes):
    compiled, _, test_x = nets.compiled("mlp")
    art, x = compiled.artifact, test_x[:7].copy()
    x[:2] *= 50.0
    x[2] = -1e30
    reference = sim.cpu.run(art, x, timesteps=timesteps)
    assert reference.stats[art.input].clipped > 0
    net = sim.lava.Network(art, timesteps=timesteps, lanes=lanes, encoded=encoded,
                           samples=len(x))
    clipped = []
    data = _user_graph(net, x, tag, clipped)
    np.testing.assert_array_equal(net.collect(data, len(x)), reference.accumulator)
    assert clipped == [reference.stats[art.input].clipped]


def test_recurrent_artifact_is_not_a_network():
    from test_lava_rnn import _handmade
    with pytest.raises(UnsupportedOpError, match="not a Network"):
        sim.lava.Network(_handmade())


def test_lava_imports_after_import_sim_lava_with_no_other_call():
    """On Python 3.11 Lava's var_model fails to import without the shim; `import sim.lava`
    installs it (importing no Lava, choosing no start method) and Lava then imports directly."""
    code = ("import sys, multiprocessing as mp, dataclasses, numpy as np; get_field = dataclasses._get_field; "
            "import sim.lava; "
            "assert not [m for m in sys.modules if m.split('.')[0] == 'lava'], 'lava imported'; "
            "assert mp.get_start_method(allow_none=True) is None; "
            "from lava.proc.dense.process import Dense; "
            "assert dataclasses._get_field is get_field; "
            "assert mp.get_start_method() == 'fork'; "
            "print(Dense(weights=np.ones((2, 3))).weights.shape)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "(2, 3)", out.stderr
