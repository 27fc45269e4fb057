"""Importer fuzzing: valid models, mutated (flipped bytes, truncation, attribute values, shapes,
dtypes, opsets, op types, wiring, weight values), compiled one by one in a worker process. Every
outcome must be a compiled artifact that survives a save/load round trip, or a ToolchainError:
never another exception, a hang (each example has WALL_S seconds) or a crash of the process.
Damaged and forged .sfn files get the same treatment from the artifact loader (in-process: it is
pure Python).

FUZZ_EXAMPLES sets the number of examples (default 60; `make fuzz` runs 2000), FUZZ_SEED the
seed (default 0: the suite is deterministic). Run this file as a script with `worker` to get the
worker: it reads one JSON request per line on stdin and answers one JSON line.
"""
from __future__ import annotations

import copy
import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
FUZZ_SEED = int(os.environ.get("FUZZ_SEED", "0"))
WALL_S = 30.0       # per example, compile included; a normal compile here takes < 0.2 s
START_S = 120.0     # the worker's imports (torch, onnxruntime)
ROOT = Path(__file__).resolve().parents[1]

INTS = [0, 1, 2, 3, -1, -2, 7, 255, 2 ** 16, 2 ** 31 - 1, -2 ** 31, 2 ** 40, 2 ** 62, -2 ** 63]
FLOATS = [0.0, -1.0, 0.5, 1e-30, 1e30, float("inf"), float("-inf"), float("nan")]
OPS = ["Relu", "Clip", "Add", "Sub", "Mul", "Div", "Gemm", "MatMul", "Conv", "AveragePool",
       "MaxPool", "GlobalAveragePool", "ReduceMean", "Flatten", "Reshape", "Squeeze", "Unsqueeze",
       "Transpose", "Concat", "Softmax", "LogSoftmax", "Identity", "Dropout", "BatchNormalization",
       "Einsum", "Loop", "If", "Shape", "ConstantOfShape", "Expand", "Tile", "Pad", "Range",
       "Sigmoid", "Tanh", "Cast", "Gather", "Slice", "Split", "LSTM", "NoSuchOp", ""]


# --- the worker ---------------------------------------------------------------------------------
def _compile_one(request: dict) -> dict:
    """Compile one model; classify the outcome (a ToolchainError is a refusal, not a failure)."""
    import traceback

    from sim.artifact import load, save
    from toolchain.compiler import compile_onnx
    from toolchain.errors import ToolchainError

    calib = np.load(request["calib"]) if request.get("calib") else None
    try:
        result = compile_onnx(request["path"], calib=calib)
        out = request["path"] + ".sfn"
        save(result.artifact, out)
        load(out)
        os.unlink(out)
        return {"outcome": "compiled"}
    except ToolchainError as exc:
        return {"outcome": "refused", "error": type(exc).__name__, "message": str(exc)}
    except Exception as exc:  # the finding: anything else
        return {"outcome": "bug", "error": type(exc).__name__, "message": str(exc)[:500],
                "traceback": traceback.format_exc()}


def _serve() -> None:
    """Answer requests on the original stdout; fd 1 goes to stderr so library prints cannot
    corrupt the replies."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    import torch
    torch.set_num_threads(1)
    import toolchain.compiler  # noqa: F401  (import before announcing readiness)
    replies.write('{"ready": true}\n')
    replies.flush()
    for line in sys.stdin:
        replies.write(json.dumps(_compile_one(json.loads(line))) + "\n")
        replies.flush()


class Worker:
    """One worker process; `ask` (and `compile`, its request for this file's worker) returns its
    reply or raises AssertionError for a hang or a crash (and starts a fresh worker for the next
    example). `command` runs the worker: one JSON request per line on stdin, one JSON reply per
    line on stdout, after a first line {"ready": true}."""

    def __init__(self, log: Path, command: tuple[str, ...] = (sys.executable, __file__, "worker")):
        self.log = log
        self.command = command
        self.proc = None

    def _start(self):
        with open(self.log, "w") as stderr:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(self.command, cwd=ROOT, text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=stderr)
        assert json.loads(self._reply(START_S)) == {"ready": True}

    def _reply(self, wait: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], wait)
        if not ready:
            self.stop()
            raise AssertionError(f"hang: no answer within {wait:g} s")
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self._close()
            tail = self.log.read_text()[-2000:]
            raise AssertionError(f"crash: the worker died with exit code {code}\n{tail}")
        return line

    def ask(self, request: dict, wait: float | None = None) -> dict:
        """The reply to `request` within `wait` seconds (default: WALL_S, read at call time)."""
        if self.proc is None:
            self._start()
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._reply(WALL_S if wait is None else wait))

    def compile(self, path: Path, calib: str | None) -> dict:
        return self.ask({"path": str(path), "calib": calib})

    def stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self._close()

    def _close(self):
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.proc = None


# --- seeds and mutations ------------------------------------------------------------------------
class Case:
    """One mutated model; its repr (what hypothesis prints for a failure) stays short."""

    def __init__(self, seed_name: str, data: bytes, calib: str | None = None, how: str = "seed"):
        self.seed_name, self.data, self.calib, self.how = seed_name, data, calib, how

    def __repr__(self):
        return f"Case({self.seed_name!r}, {self.how!r}, {len(self.data)} bytes)"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """Valid models (as unmutated Cases) covering every converter family, a final Softmax,
    clip-floor activations, constant folding and an E/I RNN cell."""
    import torch

    import nets
    from exporters.rnn.export import export_rnn_onnx
    from exporters.rnn.model import EIRNN
    d = tmp_path_factory.mktemp("seeds")
    out = [Case(n, nets.onnx_path(n).read_bytes()) for n in sorted(nets.NETS)]
    out.append(Case("digits", (ROOT / "toolchain/data/digits_cnn_clipfloor.onnx").read_bytes()))
    out.append(Case("shape_arith", _shape_arith_model().SerializeToString()))
    torch.manual_seed(0)
    cell = export_rnn_onnx(EIRNN(6, 2, n_units=8, seed=0), d / "rnn.onnx", check=False)
    trials = np.random.default_rng(0).uniform(0, 1, (4, 12, 6)).astype(np.float32)
    np.save(d / "trials.npy", trials)
    out.append(Case("rnn", Path(cell).read_bytes(), str(d / "trials.npy")))
    return out


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    w = Worker(tmp_path_factory.mktemp("worker") / "stderr.txt")
    yield w
    w.stop()


def _shape_arith_model() -> onnx.ModelProto:
    """Conv → Relu → Reshape to (batch, -1) with the shape computed in the graph (Shape, Gather,
    Unsqueeze, Concat, a Constant) → MatMul → Softmax: the constant-folding path."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 2, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(64, 3)).astype(np.float32), "m"),
             numpy_helper.from_array(np.array([0], np.int64), "zero")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Shape", ["r"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "zero"], ["n"], name="batch", axis=0),
             helper.make_node("Constant", [], ["rest"], name="rest",
                              value=numpy_helper.from_array(np.array([-1], np.int64))),
             helper.make_node("Concat", ["n", "rest"], ["target"], name="target", axis=0),
             helper.make_node("Reshape", ["r", "target"], ["flat"], name="flatten"),
             helper.make_node("MatMul", ["flat", "m"], ["z"], name="dense"),
             helper.make_node("Softmax", ["z"], ["y"], name="softmax", axis=-1)]
    graph = helper.make_graph(
        nodes, "shape_arith", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _value(draw, kind):
    if kind == "int":
        return draw(st.sampled_from(INTS) | st.integers(-10, 10))
    return draw(st.sampled_from(FLOATS) | st.floats(-10, 10))


def _mutate_attribute(draw, model):
    nodes = [n for n in model.graph.node if n.attribute]
    if not nodes:
        return
    node = draw(st.sampled_from(nodes))
    a = node.attribute[draw(st.integers(0, len(node.attribute) - 1))]
    T = onnx.AttributeProto
    if a.type == T.INT:
        a.i = _value(draw, "int")
    elif a.type == T.FLOAT:
        a.f = _value(draw, "float")
    elif a.type == T.INTS:
        a.ints[:] = draw(st.lists(st.sampled_from(INTS) | st.integers(-4, 8), max_size=6))
    elif a.type == T.FLOATS:
        a.floats[:] = [_value(draw, "float") for _ in range(draw(st.integers(0, 4)))]
    elif a.type == T.STRING:
        a.s = draw(st.sampled_from([b"", b"SAME_UPPER", b"VALID", b"\xff\xfe", b"NOTSET"]))
    elif a.type == T.TENSOR:
        a.t.dims[:] = draw(st.lists(st.sampled_from(INTS[:8]) | st.integers(0, 6), max_size=4))
    if draw(st.booleans()):  # retype the attribute as well
        a.type = draw(st.sampled_from([T.INT, T.FLOAT, T.INTS, T.STRING, T.TENSOR, T.GRAPH]))


def _mutate_shape(draw, model):
    g = model.graph
    values = list(g.input) + list(g.output) + list(g.value_info)
    if draw(st.booleans()) or not g.initializer:
        v = draw(st.sampled_from(values))
        dims = v.type.tensor_type.shape.dim
        if dims and draw(st.booleans()):
            d = dims[draw(st.integers(0, len(dims) - 1))]
            d.dim_value = draw(st.sampled_from(INTS) | st.integers(0, 64))
        else:
            v.type.tensor_type.shape.dim.add().dim_value = draw(st.integers(0, 64))
    else:
        t = draw(st.sampled_from(list(g.initializer)))
        t.dims[:] = draw(st.lists(st.sampled_from(INTS) | st.integers(0, 64), max_size=5))


def _mutate_dtype(draw, model):
    g = model.graph
    dtype = draw(st.integers(0, 30))
    if draw(st.booleans()) and g.initializer:
        draw(st.sampled_from(list(g.initializer))).data_type = dtype
    else:
        v = draw(st.sampled_from(list(g.input) + list(g.output) + list(g.value_info)))
        v.type.tensor_type.elem_type = dtype


def _mutate_graph(draw, model):
    g = model.graph
    names = sorted({n for node in g.node for n in list(node.input) + list(node.output)} |
                   {v.name for v in g.input} | {"", "ghost"})
    node = draw(st.sampled_from(list(g.node)))
    what = draw(st.sampled_from(["op", "rewire", "drop", "duplicate", "domain", "output"]))
    if what == "op":
        node.op_type = draw(st.sampled_from(OPS))
    elif what == "rewire" and node.input:
        node.input[draw(st.integers(0, len(node.input) - 1))] = draw(st.sampled_from(names))
    elif what == "drop":
        g.node.remove(node)
    elif what == "duplicate":
        g.node.insert(draw(st.integers(0, len(g.node))), node)
    elif what == "domain":
        node.domain = draw(st.sampled_from(["com.acme", "ai.onnx.ml", "ai.onnx"]))
    elif what == "output" and node.output:
        node.output[0] = draw(st.sampled_from(names))


def _mutate_model(draw, model):
    what = draw(st.sampled_from(["opset", "ir", "metadata"]))
    if what == "opset":
        model.opset_import[0].version = draw(st.sampled_from(INTS) | st.integers(7, 23))
    elif what == "ir":
        model.ir_version = draw(st.sampled_from(INTS) | st.integers(1, 12))
    else:
        onnx.helper.set_model_props(model, {draw(st.sampled_from(
            ["sfn.levels", "sfn.kind", "sfn.alpha", "sfn.activation", "sfn.n_exc"])):
            draw(st.sampled_from(["", "0", "-3", "1e9", "nan", "ei_rnn_cell", "tanh", "x"]))})


def _mutate_values(draw, model):
    """Non-finite, huge or zero weights."""
    from onnx import numpy_helper
    tensors = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    if not tensors:
        return
    t = draw(st.sampled_from(tensors))
    try:
        value = numpy_helper.to_array(t).copy()
    except ValueError:  # an earlier step broke its dims
        return
    flat = value.reshape(-1)
    new = draw(st.sampled_from(FLOATS))
    if draw(st.booleans()) and flat.size:
        flat[draw(st.integers(0, flat.size - 1))] = new
    else:
        flat[:] = new
    t.CopyFrom(numpy_helper.from_array(value, t.name))


STRUCTURAL = [_mutate_attribute, _mutate_shape, _mutate_dtype, _mutate_graph, _mutate_model,
              _mutate_values]


@st.composite
def mutated(draw, seeds):
    """A Case: one seed model, mutated at the byte level or in 1 to 3 structural steps."""
    origin = draw(st.sampled_from(seeds))
    name, data, calib = origin.seed_name, origin.data, origin.calib
    if draw(st.integers(0, 2)) == 0:  # byte level
        data = bytearray(data)
        kind = draw(st.sampled_from(["flip", "truncate", "splice"]))
        if kind == "flip":
            for _ in range(draw(st.integers(1, 8))):
                data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            data = data[:draw(st.integers(0, len(data) - 1))]
        else:
            a, b = sorted(draw(st.integers(0, len(data))) for _ in range(2))
            data = data[:a] + data[b:] + data[a:b]
        return Case(name, bytes(data), calib, f"{kind} bytes")
    model = onnx.load_from_string(data)
    steps = draw(st.lists(st.sampled_from(STRUCTURAL), min_size=1, max_size=3))
    for mutate in steps:
        mutate(draw, model)
    return Case(name, model.SerializeToString(), calib, " + ".join(m.__name__[8:] for m in steps))


JSON_VALUES = st.sampled_from([None, 0, -1, 2 ** 40, -2 ** 63, 1.5, float("nan"), "", "conv", [],
                                [1], [[]], {}, {"a": 1}, True])


@st.composite
def mutated_artifact(draw, origin: Case):
    """An .sfn file with flipped, cut or inserted bytes, or a forged manifest (values replaced,
    content hash recomputed so that only the loader's own checks stand in the way)."""
    from test_hostile import _forged, _members, _zip
    data = origin.data
    if draw(st.booleans()):
        blob = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(blob) - 1))
            kind = draw(st.sampled_from(["flip", "cut", "insert"]))
            if kind == "flip":
                blob[i] ^= draw(st.integers(1, 255))
            elif kind == "cut":
                del blob[i:i + draw(st.integers(1, 64))]
            else:
                blob[i:i] = draw(st.binary(min_size=1, max_size=8))
        return Case(origin.seed_name, bytes(blob), how="damaged bytes")

    def edit(manifest, members):
        for _ in range(draw(st.integers(1, 3))):
            obj = manifest
            while isinstance(obj, (dict, list)) and obj and draw(st.integers(0, 3)):
                key = draw(st.sampled_from(sorted(obj) if isinstance(obj, dict)
                                           else range(len(obj))))
                if not isinstance(obj[key], (dict, list)) or not obj[key]:
                    obj[key] = copy.deepcopy(draw(JSON_VALUES))
                    break
                obj = obj[key]
    return Case(origin.seed_name, _zip(_forged(_members(data), edit)), how="forged manifest")


# --- the tests ----------------------------------------------------------------------------------
def test_mutated_models_compile_or_raise_toolchain_errors(seeds, worker, tmp_path_factory):
    d = tmp_path_factory.mktemp("cases")
    counts: dict[str, int] = {}

    @seed(FUZZ_SEED)
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=mutated(seeds))
    def check(case):
        path = d / f"case{sum(counts.values()):05d}.onnx"
        path.write_bytes(case.data)
        start = time.monotonic()
        reply = worker.compile(path, case.calib)
        counts[reply["outcome"]] = counts.get(reply["outcome"], 0) + 1
        assert reply["outcome"] != "bug", f"{case} (kept as {path}): {reply['traceback']}"
        assert time.monotonic() - start < WALL_S
        path.unlink()

    check()
    print(f"fuzz: {sum(counts.values())} cases, {counts}")
    assert counts["compiled"] > 0 and counts["refused"] > 0  # the mutations reach both outcomes


@pytest.mark.parametrize("behaviour,found", [
    ("import os; os._exit(7)", "crash: the worker died with exit code 7"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", "exit code -11"),
    ("import time; time.sleep(60)", "hang: no answer within 1 s")])
def test_the_harness_reports_crashes_and_hangs(tmp_path, monkeypatch, behaviour, found):
    """A stand-in worker that answers ready, then dies or stalls on its first request."""
    monkeypatch.setattr(sys.modules[__name__], "WALL_S", 1.0)
    code = f"import sys; print('{{\"ready\": true}}', flush=True); sys.stdin.readline(); {behaviour}"
    worker = Worker(tmp_path / "stderr.txt", (sys.executable, "-c", code))
    with pytest.raises(AssertionError, match=re.escape(found)):
        worker.compile(tmp_path / "m.onnx", None)
    assert worker.proc is None


def test_mutated_artifacts_load_or_raise_toolchain_errors(tmp_path):
    """sim.artifact.load on damaged and forged files: a loaded artifact or a ToolchainError."""
    import nets
    from sim import artifact
    from toolchain.errors import ToolchainError
    origin = Case("mlp.sfn", artifact.to_bytes(nets.compiled("mlp")[0].artifact))
    path = tmp_path / "a.sfn"

    @seed(FUZZ_SEED)
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=mutated_artifact(origin))
    def check(case):
        path.write_bytes(case.data)
        try:
            artifact.load(path)
        except ToolchainError:
            pass

    check()


if __name__ == "__main__" and sys.argv[1:] == ["worker"]:
    _serve()
