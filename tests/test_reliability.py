"""Runs that stay trustworthy: 24-bit state saturation counted per layer (and fatal on request),
concurrent writers of one artifact, and many Lava runs in one process without leaked processes,
shared memory, file descriptors or threads — a run ended by the guard included."""
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import nets
import sim.cpu
import sim.lava
from sim import artifact, semantics
from sim.artifact import Artifact
from sim.ir import Dense, Input, Neuron, Readout
from lava_helpers import assert_same, lava_children
from test_lava import _inject, _small_artifact, _small_inputs
from toolchain.cli import main
from toolchain.errors import SimulationError

ROOT = Path(__file__).resolve().parents[1]


# --- saturation ---------------------------------------------------------------------------------
W1, W1_EXP, THETA = np.array([[127, 0], [0, 127], [1, 1]]), 16, 2 ** 20
X_SAT = np.array([[0, 0], [1, 0], [0, 1], [2, 3], [255, 255], [0.4, 0.6]], np.float32)


def _saturating_artifact() -> Artifact:
    """Input(2) → Dense ·2^16 → neuron 'hidden' (θ = 2^20) → Dense → neuron 'gate' → readout.
    'hidden' clips its 24-bit state for large inputs; 'gate' (|I| ≤ 45) never does."""
    nodes = [Input("x", (), (2,), inv_scale=1.0, lo=0, hi=255),
             Dense("d1", ("x",), (3,), weight=W1, weight_exp=W1_EXP),
             Neuron("hidden", ("d1",), (3,), threshold=np.full(3, THETA), bias=np.zeros(3, int),
                    lo=0, hi=15),
             Dense("d2", ("hidden",), (2,), weight=np.array([[1, 1, 1], [2, 0, -1]])),
             Neuron("gate", ("d2",), (2,), threshold=np.ones(2, int), bias=np.zeros(2, int),
                    lo=0, hi=15),
             Dense("d3", ("gate",), (2,), weight=np.array([[1, 0], [0, 1]])),
             Readout("y", ("d3",), (2,), scale=np.ones(2, np.float32), bias=np.zeros(2, int))]
    return Artifact(nodes, "x", "y", {"timesteps": 1})


def _expected_saturations() -> int:
    """The state equation by hand: v = W·n·2^e + b + θ//2 with n = clip(floor(x + 1/2), 0, 255),
    one clip for every |v| > 2^23 − 1."""
    n = np.clip(np.floor(X_SAT.astype(np.float64) + 0.5), 0, 255).astype(np.int64)
    v = (n @ W1.T) * 2 ** W1_EXP + THETA // 2
    return int(np.count_nonzero(np.abs(v) > semantics.V_MAX))


def test_saturations_are_counted_per_layer():
    assert _expected_saturations() == 8
    stats = sim.cpu.run(_saturating_artifact(), X_SAT).stats
    assert {name: st.saturations for name, st in stats.items() if st.neurons} == \
        {"hidden": 8, "gate": 0}


@pytest.mark.lava
def test_lava_counts_the_same_saturations():
    art = _saturating_artifact()
    assert_same(sim.lava.run(art, X_SAT, timeout=60), sim.cpu.run(art, X_SAT))


@pytest.fixture
def saturating_files(tmp_path):
    artifact.save(_saturating_artifact(), tmp_path / "sat.sfn")
    np.save(tmp_path / "x.npy", X_SAT)
    return tmp_path


def test_run_reports_saturations(saturating_files):
    d = saturating_files
    r = CliRunner().invoke(main, ["run", str(d / "sat.sfn"), "--input", str(d / "x.npy"),
                                  "--output", str(d / "y.npy"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["saturations"] == 8


def test_fail_on_saturation_cli(saturating_files):
    d = saturating_files
    out = d / "y.npy"
    r = CliRunner().invoke(main, ["run", str(d / "sat.sfn"), "--input", str(d / "x.npy"),
                                  "--output", str(out), "--fail-on-saturation"])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error:") and "Traceback" not in r.output
    assert "hidden" in r.output and re.search(r"\b8\b", r.output), r.output
    assert "gate" not in r.output
    assert not out.exists()


# --- concurrent writers -------------------------------------------------------------------------
def test_concurrent_compiles_to_one_output_leave_one_complete_file(tmp_path):
    """Four `toolchain compile` processes, two models, one output path, started together."""
    from toolchain.compiler import compile_onnx
    models = [nets.onnx_path("mlp"), nets.onnx_path("avgpool_cnn")]
    expected = {artifact.to_bytes(compile_onnx(m).artifact) for m in models}
    out = tmp_path / "m.sfn"
    procs = [subprocess.Popen([sys.executable, "-m", "toolchain.cli", "compile", str(m), "-o",
                               str(out)], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for m in models * 2]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    assert out.read_bytes() in expected
    artifact.load(out)
    assert sorted(os.listdir(tmp_path)) == ["m.sfn"]  # no temp file left


def test_readers_never_see_a_partial_artifact_while_writers_replace_it(tmp_path):
    arts = [nets.compiled("mlp")[0].artifact, nets.compiled("maxpool_cnn")[0].artifact]
    blobs = {artifact.to_bytes(a) for a in arts}
    out = tmp_path / "m.sfn"
    artifact.save(arts[0], out)
    loaded, errors = [], []

    def write(k):
        for i in range(12):
            artifact.save(arts[(i + k) % 2], out)

    def read():
        for _ in range(30):
            try:
                loaded.append(artifact.to_bytes(artifact.load(out)))
            except Exception as exc:  # noqa: BLE001  (collected, asserted below)
                errors.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(3)]
    threads += [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(loaded) == 60 and set(loaded) <= blobs
    assert out.read_bytes() in blobs
    assert sorted(os.listdir(tmp_path)) == ["m.sfn"]


# --- many Lava runs in one process --------------------------------------------------------------
def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _assert_nothing_left(shared_memory_names, fds: int, threads: int):
    assert lava_children() == []
    assert not [n for n in shared_memory_names if os.path.exists(f"/dev/shm/{n}")]
    assert _open_fds() == fds
    assert threading.active_count() == threads


@pytest.mark.lava
@pytest.mark.parametrize("runs", [8, pytest.param(50, marks=pytest.mark.slow)])
def test_consecutive_lava_runs_leak_nothing(runs, shared_memory_names):
    """After a first run (which starts Python's shared-memory resource tracker once), `runs` more
    runs leave no child process, no /dev/shm segment, no extra open file or thread."""
    art, x = _small_artifact(), _small_inputs(40)
    reference = sim.cpu.run(art, x)
    assert_same(sim.lava.run(art, x, timeout=60), reference)
    fds, threads, segments = _open_fds(), threading.active_count(), len(shared_memory_names)
    for _ in range(runs):
        assert_same(sim.lava.run(art, x, timeout=60), reference)
    assert len(shared_memory_names) == segments * (runs + 1)  # every run made its own segments
    _assert_nothing_left(shared_memory_names, fds, threads)


@pytest.mark.lava
def test_run_ended_by_the_guard_leaves_the_next_runs_working(monkeypatch, shared_memory_names):
    art, x = _small_artifact(), _small_inputs(40)
    reference = sim.cpu.run(art, x)
    assert_same(sim.lava.run(art, x, timeout=60), reference)
    fds, threads = _open_fds(), threading.active_count()
    with monkeypatch.context() as patch:
        _inject(patch, "h", step=3, hang=True)
        with pytest.raises(SimulationError, match="did not finish within 3 s"):
            sim.lava.run(art, x, timeout=3)
    _assert_nothing_left(shared_memory_names, fds, threads)
    for _ in range(3):
        assert_same(sim.lava.run(art, x, timeout=60), reference)
    _assert_nothing_left(shared_memory_names, fds, threads)
