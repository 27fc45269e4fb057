"""Forged artifacts: well-formed `.sfn` files (content hash right, canonical bytes) whose fields
are nonsense. The hash proves consistency, not sanity, so the loader checks every field against
the contract (sim/ops/<kind>.py `_check`, sim/artifact.py for the graph, meta and record).

A property test forges artifacts the way an attacker with this repository would: mutate one
field of a valid artifact (wrong types, NaN/Inf, huge and negative numbers, huge shapes, meta
and record entries) and serialize it with the project's own writer (`sim.artifact.to_bytes`,
its validation switched off), or re-store one array member with another dtype and recompute the
hash. Every forgery must be refused at load with an ArtifactError naming what is wrong, or run
bit-identically on sim.cpu and sim.reference (and, on a few, sim.lava) within WALL_S seconds in
a worker process. Run this file as a script with `worker` to get the worker.

FORGE_EXAMPLES (default 150) and FUZZ_SEED set size and seed.
"""
from __future__ import annotations

import copy
import io
import json
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, seed, settings
from hypothesis import strategies as st

FORGE_EXAMPLES = int(os.environ.get("FORGE_EXAMPLES", "150"))
FUZZ_SEED = int(os.environ.get("FUZZ_SEED", "0"))
WALL_S = 60.0
LAVA_EXAMPLES = 4

NAN, INF = float("nan"), float("inf")
VALUES = [None, True, False, "abc", "", [], {}, [1, "a"], [[1]], 0, 1, -1, 2, 7, 4095, 4096,
          4097, 4095.5, 2 ** 15, 2 ** 23 - 1, 2 ** 23, -2 ** 23 - 1, 2 ** 31, 2 ** 40, 2 ** 62,
          -2 ** 63, 10 ** 6, 10 ** 7, 10 ** 19, 1e-45, 0.5, -0.0, 1e38, 3.4e39, 1e300, NAN, INF,
          -INF]
SHAPES = [(), (0,), (-1,), (1,), (2,), (50_000, 50_000), (2 ** 31,), (1,) * 40, ("a",), (1.5,),
          (3, 3), (2, 6, 6)]
META_KEYS = ["timesteps", "target", "placement", "source", "rnn", "notes", "levels", "fire"]
DTYPES = ["<f8", "<f4", "|i1", "<i4", "|b1", ">i8", "<U3", "<c8", "<u8"]


# --- the valid artifacts the forgeries start from -----------------------------------------------
def feed_forward():
    """Every feed-forward kind: input, conv, uniform and adaptive neurons, max and sum pooling,
    concat, transpose, reshape, dense, add, readout with softmax."""
    from sim.artifact import Artifact
    from sim.ir import (Add, Concat, Conv, Dense, Input, MaxPool, Neuron, Readout, Reshape,
                        SumPool, Transpose)
    rng = np.random.default_rng(0)

    def w(*shape):
        return rng.integers(-20, 21, shape).astype(np.int16)

    zeros = np.zeros((4, 1, 1), np.int64)
    nodes = [
        Input("x", (), (2, 6, 6), inv_scale=8.0, lo=0, hi=15),
        Conv("c1", ("x",), (4, 6, 6), weight=w(4, 2, 3, 3), weight_exp=1, pads=(1, 1, 1, 1)),
        Neuron("n1", ("c1",), (4, 6, 6), threshold=np.full((4, 1, 1), 40),
               bias=rng.integers(-5, 6, (4, 1, 1)), lo=0, hi=7),
        MaxPool("mp", ("n1",), (4, 3, 3), kernel=(2, 2), stride=(2, 2)),
        SumPool("sp", ("n1",), (4, 3, 3), kernel=(2, 2), stride=(2, 2)),
        Neuron("n2", ("sp",), (4, 3, 3), threshold=np.full((4, 1, 1), 3), bias=zeros, lo=0,
               hi=7),
        Concat("cat", ("mp", "n2"), (8, 3, 3), axis=0),
        Transpose("tr", ("cat",), (3, 3, 8), perm=(1, 2, 0)),
        Reshape("flat", ("tr",), (72,)),
        Dense("d1", ("flat",), (10,), weight=w(10, 72)),
        Dense("d2", ("flat",), (10,), weight=w(10, 72), weight_exp=2),
        Add("sum", ("d1", "d2"), (10,), gains=np.stack([np.ones(10, np.int64),
                                                         np.full(10, 3, np.int64)]),
            exps=(0, 1)),
        Neuron("n3", ("sum",), (10,), threshold=np.ones(10, np.int64),
               bias=np.zeros(10, np.int64), lo=0, hi=4, fire="adaptive",
               thresholds=np.tile(np.array([-50, 0, 100, 400]), (10, 1)),
               payload=np.arange(5)),
        Dense("d3", ("n3",), (3,), weight=w(3, 10)),
        Readout("y", ("d3",), (3,), scale=np.array([0.5, 0.25, 0.125], np.float32),
                bias=np.array([1, 0, -1]), softmax="softmax"),
    ]
    meta = {"timesteps": 1, "target": "loihi2", "levels": 7, "notes": ["hand-made"],
            "source": {"file": "none", "opset": 17, "sha256": "0" * 64}}
    return Artifact(nodes, "x", "y", meta, {"n1/act_scale": np.linspace(0.1, 0.4, 4)})


def recurrent():
    """A recurrent cell: delays of a leaky integrator and of a synapse node, signed levels."""
    from sim.artifact import Artifact
    from sim.ir import Add, Delay, Dense, Input, Neuron, Readout
    rng = np.random.default_rng(1)

    def w(o, i):
        return rng.integers(-30, 31, (o, i)).astype(np.int16)

    nodes = [
        Input("u", (), (3,), inv_scale=20.0, lo=-64, hi=63),
        Delay("h_prev", (), (5,), source="h"),
        Delay("s_prev", (), (5,), source="a"),
        Dense("a", ("u",), (5,), weight=w(5, 3)),
        Dense("r", ("h_prev",), (5,), weight=w(5, 5)),
        Add("in", ("a", "r", "s_prev"), (5,), gains=np.ones((3, 5), np.int64), exps=(0, 0, 1)),
        Neuron("h", ("in",), (5,), threshold=np.full(5, 16), bias=np.arange(-2, 3), lo=-15,
               hi=15, decay=1200, reset="none"),
        Dense("o", ("h",), (2,), weight=w(2, 5)),
        Readout("y", ("o",), (2,), scale=np.array([0.5, 0.125], np.float32),
                bias=np.array([3, -1])),
    ]
    return Artifact(nodes, "u", "y", {"timesteps": 1, "rnn": {"task": "cddm"}}, {})


def products():
    """Products of activations: attention's two MatMuls, an elementwise Product broadcast
    against a Constant."""
    from sim.artifact import Artifact
    from sim.ir import Constant, Input, MatMul, Neuron, Product, Readout, Reshape, Transpose
    one = np.ones((1, 1, 1), np.int64)
    nodes = [Input("x", (), (2, 4, 3), inv_scale=8.0, lo=-127, hi=127),
             Neuron("q", ("x",), (2, 4, 3), threshold=4 * one, bias=0 * one, lo=-15, hi=15),
             Transpose("qt", ("q",), (2, 3, 4), perm=(0, 2, 1)),
             MatMul("s", ("q", "qt"), (2, 4, 4), inner=3, shift=2),
             Neuron("w", ("s",), (2, 4, 4), threshold=8 * one, bias=0 * one, lo=0, hi=15),
             MatMul("o", ("w", "q"), (2, 4, 3), inner=4, shift=3),
             Constant("c", ("x",), (1, 1, 3), value=np.array([[[2, -1, 3]]])),
             Product("p", ("o", "c"), (2, 4, 3), shift=1),
             Neuron("h", ("p",), (2, 4, 3), threshold=6 * one, bias=one, lo=-15, hi=15),
             Reshape("f", ("h",), (24,)),
             Readout("y", ("f",), (24,), scale=np.full(24, 0.1, np.float32),
                     bias=np.zeros(24, np.int64))]
    return Artifact(nodes, "x", "y", {"timesteps": 1}, {})


def inputs(art) -> np.ndarray:
    """A few samples (trials for a recurrent artifact), with values far outside the encoder's
    range among them."""
    rng = np.random.default_rng(3)
    lead = (4, 7) if art.recurrent else (5,)
    x = rng.uniform(-2.0, 4.0, lead + tuple(art.input_shape)).astype(np.float32)
    x.reshape(-1)[:3] = [1e30, -1e30, 3e38]
    return x


# --- forging --------------------------------------------------------------------------------------
def _write_unchecked(art) -> bytes:
    """The project's writer with its validation switched off: what an attacker can produce."""
    from sim import artifact
    check = artifact.Artifact.validate
    artifact.Artifact.validate = lambda self: None
    try:
        return artifact.to_bytes(art)
    finally:
        artifact.Artifact.validate = check


def _rehash(data: bytes, edit) -> bytes:
    """The archive with `edit(manifest, members)` applied and the content hash recomputed."""
    from sim.artifact import _digest
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(members.pop("manifest.json"))
    manifest.pop("content_sha256")
    edit(manifest, members)
    manifest["content_sha256"] = _digest(manifest, members)
    members["manifest.json"] = json.dumps(manifest, sort_keys=True, indent=1).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, members[name])
    return buf.getvalue()


def _array_values(draw, current):
    """A replacement for an array field: extreme values in its shape, another shape, another
    dtype, or one element changed."""
    how = draw(st.sampled_from(["fill", "one", "shape", "dtype"]))
    base = np.asarray(current) if isinstance(current, np.ndarray) else np.zeros(3)
    v = draw(st.sampled_from([x for x in VALUES if isinstance(x, (int, float))
                              and not isinstance(x, bool)]))
    if how == "fill":
        if isinstance(v, float) or abs(v) >= 2 ** 63:
            return np.full(base.shape, float(v))
        return np.full(base.shape, v, np.int64)
    if how == "one":
        out = base.astype(np.float64 if isinstance(v, float) else base.dtype).copy()
        if out.size and not (out.dtype.kind in "iu" and abs(v) >= 2 ** 63):
            out.reshape(-1)[draw(st.integers(0, out.size - 1))] = v
        return out
    if how == "shape":
        shape = draw(st.sampled_from([(0,), (1,), (7,), (2, 2), base.shape + (2,), (10 ** 6,)]))
        return np.ones(shape, base.dtype)
    return base.astype(draw(st.sampled_from(["float64", "bool", "int8", "complex64", "U3"])))


class Forgery(tuple):
    """(base name, how, forged bytes or None where the writer itself cannot write it); its repr
    (what hypothesis prints for a failure) leaves the bytes out."""

    def __repr__(self):
        return f"Forgery({self[0]!r}, {self[1]!r}, {None if self[2] is None else len(self[2])})"


@st.composite
def forgery(draw, bases):
    """A Forgery of one of `bases`."""
    from dataclasses import fields
    name = draw(st.sampled_from(sorted(bases)))
    art = copy.deepcopy(bases[name])
    target = draw(st.sampled_from(["node", "node", "node", "meta", "record", "dtype"]))
    how = target
    if target == "node":
        k = draw(st.integers(0, len(art.nodes) - 1))
        node = art.nodes[k]
        field = draw(st.sampled_from([f.name for f in fields(node)]))
        current, was = getattr(node, field), node.name
        if field == "shape":
            value = draw(st.sampled_from(SHAPES))
        elif isinstance(current, np.ndarray) or field in type(node).array_dtypes:
            value = _array_values(draw, current)
        elif isinstance(current, tuple) and field != "inputs":
            value = draw(st.sampled_from([(), (1,), (0, 0), (-1, 2), (2 ** 40, 1), ("a", 1),
                                          (1, 1, 1, 1), (10 ** 6, 10 ** 6), (1.5, 2)]))
        else:
            value = draw(st.sampled_from(VALUES))
        setattr(node, field, value)
        how = f"{was}.{field} = {value!r}"[:120]
    elif target == "meta":
        key, value = draw(st.sampled_from(META_KEYS)), draw(st.sampled_from(VALUES))
        art.meta[key] = value
        how = f"meta[{key!r}] = {value!r}"
    elif target == "record":
        value = draw(st.sampled_from([np.array(["x"]), np.array([NAN, INF]), np.array([True]),
                                      np.array([1 + 2j]), np.zeros((0,)), np.int64(3)]))
        art.record[draw(st.sampled_from(["n1/act_scale", "new"]))] = value
        how = f"record = {value!r}"
    try:
        data = _write_unchecked(art)
    except (TypeError, ValueError, OverflowError, AttributeError, KeyError, IndexError):
        return Forgery((name, how, None))  # not writable as a .sfn: nothing to load
    if target == "dtype":
        dtype = draw(st.sampled_from(DTYPES))
        pick = draw(st.integers(0, 10 ** 6))

        def edit(manifest, members):
            entries = [e for r in manifest["nodes"] for e in r["arrays"].values()] + \
                list(manifest["record"].values())
            entry = entries[pick % len(entries)]
            value = np.load(io.BytesIO(members[entry["member"]]))
            with np.errstate(all="ignore"):
                value = value.astype(dtype)
            buf = io.BytesIO()
            np.save(buf, value, allow_pickle=False)
            members[entry["member"]] = buf.getvalue()
            entry["dtype"] = value.dtype.str
        data = _rehash(data, edit)
        how = f"an array member stored as {dtype}"
    return Forgery((name, how, data))


def _names(art, how: str) -> set[str]:
    """What a refusal may name: the mutated node, the nodes reading it, the field, meta or the
    record."""
    node = how.split(".", 1)[0]
    out = {node, how.split(" = ")[0].rsplit(".", 1)[-1], "meta", "record", "field"}
    out |= {n.name for n in art.nodes if node in n.inputs or getattr(n, "source", None) == node}
    return out


# --- the worker: runs a loaded forgery on the backends -------------------------------------------
def _same(a, b) -> bool:
    return (a.output.tobytes() == b.output.tobytes() and
            a.accumulator.tobytes() == b.accumulator.tobytes() and
            {k: vars(v) for k, v in a.stats.items()} == {k: vars(v) for k, v in b.stats.items()})


def _outcome(fn):
    from toolchain.errors import ToolchainError
    try:
        return fn()
    except ToolchainError as exc:
        return type(exc).__name__


def _run_one(request: dict) -> dict:
    """Run the artifact at request["path"] on sim.reference and sim.cpu (mode "cpu") or on
    sim.cpu and sim.lava (mode "lava"); both must refuse alike or agree bit for bit."""
    import traceback

    import sim.cpu
    import sim.lava
    import sim.reference
    from sim.artifact import load
    try:
        art = load(request["path"])
        x, steps = inputs(art), int(art.meta.get("timesteps", 1))
        first = sim.reference.run if request["mode"] == "cpu" else sim.cpu.run
        second = sim.cpu.run if request["mode"] == "cpu" else \
            (lambda a, x, timesteps: sim.lava.run(a, x, timesteps=timesteps, timeout=WALL_S))
        a = _outcome(lambda: first(art, x, timesteps=steps))
        b = _outcome(lambda: second(art, x, timesteps=steps))
        if isinstance(a, str) or isinstance(b, str):
            return {"outcome": "refused alike" if a == b else f"differs: {a} / {b}"}
        return {"outcome": "same" if _same(a, b) else "differs"}
    except Exception as exc:  # noqa: BLE001 - the finding
        return {"outcome": "bug", "error": f"{type(exc).__name__}: {exc}"[:500],
                "traceback": traceback.format_exc()}


def _serve() -> None:
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    import sim.cpu  # noqa: F401  (imported before announcing readiness)
    replies.write('{"ready": true}\n')
    replies.flush()
    for line in sys.stdin:
        replies.write(json.dumps(_run_one(json.loads(line))) + "\n")
        replies.flush()


@pytest.fixture(scope="module")
def bases():
    out = {"feed_forward": feed_forward(), "recurrent": recurrent(), "products": products()}
    for art in out.values():
        art.validate()
    return out


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    from test_fuzz import Worker
    w = Worker(tmp_path_factory.mktemp("forge") / "stderr.txt",
               (sys.executable, __file__, "worker"))
    yield w
    w.stop()


def _check_forgery(case, bases, tmp_path, worker, mode: str) -> str:
    """Load the forgery; a refusal must name what is wrong, an artifact that loads must run
    alike on both backends of `mode`. Returns the outcome: unwritable, refused or ran."""
    from sim.artifact import load
    from toolchain.errors import ArtifactError
    name, how, data = case
    if data is None:
        return "unwritable"
    path = tmp_path / "forged.sfn"
    path.write_bytes(data)
    start = time.monotonic()
    try:
        load(path)
    except ArtifactError as exc:
        assert time.monotonic() - start < WALL_S
        message = str(exc)
        assert message.startswith(str(path)), message
        assert any(n in message for n in _names(bases[name], how)), (how, message)
        return "refused"
    reply = worker.ask({"path": str(path), "mode": mode}, WALL_S * 3)
    assert reply["outcome"] in ("same", "refused alike"), (how, reply)
    return f"ran: {reply['outcome']}"


@settings(max_examples=FORGE_EXAMPLES, deadline=None, derandomize=False,
          suppress_health_check=list(HealthCheck))
@seed(FUZZ_SEED)
@given(data=st.data())
def test_forged_artifacts_are_refused_or_run_identically(data, bases, tmp_path_factory, worker):
    case = data.draw(forgery(bases))
    event(_check_forgery(case, bases, tmp_path_factory.mktemp("f", numbered=True), worker,
                         "cpu"))


# the extremes the checks let through, on the feed-forward base: (node, field, value)
BOUNDARY = [
    ("n1", "threshold", np.full((4, 1, 1), 2 ** 23 - 1)),
    ("n1", "bias", np.full((4, 1, 1), 2 ** 23)),
    ("n2", "hi", 2 ** 23 - 1),
    ("x", "inv_scale", 1e30),
    ("n3", "payload", np.array([-2 ** 23, 0, 5, 2 ** 22, 2 ** 23 - 1])),
    ("sum", "gains", np.stack([np.full(10, 2 ** 23), np.full(10, -2 ** 23)])),
]


@pytest.mark.slow
@pytest.mark.lava
@pytest.mark.parametrize("node,field,value", BOUNDARY, ids=[f"{n}.{f}" for n, f, _ in BOUNDARY])
def test_extreme_artifacts_that_load_run_identically_on_lava(bases, tmp_path, worker, node, field,
                                                            value):
    art = copy.deepcopy(bases["feed_forward"])
    setattr(art.node(node), field, value)
    case = Forgery(("feed_forward", f"{node}.{field}", _write_unchecked(art)))
    assert _check_forgery(case, bases, tmp_path, worker, "lava") == "ran: same"


if __name__ == "__main__" and sys.argv[1:] == ["worker"]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import sim  # noqa: F401,E402  (before numpy's BLAS loads, see sim/__init__.py)
    _serve()
